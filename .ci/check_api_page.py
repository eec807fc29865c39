"""The built API page shows what the docstrings mean: no reST roles or directives left as
literal text, equations handed to MathJax (arithmatex spans), cross-references as links.

Usage: ``python .ci/check_api_page.py SITE_DIR`` after ``mkdocs build --site-dir SITE_DIR``.
Exits 1 naming what is wrong.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

LITERAL = (":meth:", ":func:", ":class:", ":math:", ".. math::", ":mod:", ":attr:", ":data:")


def main(site: str) -> int:
    html = (Path(site) / "api" / "index.html").read_text()
    problems = [f"{role!r} appears {html.count(role)} time(s)" for role in LITERAL if role in html]
    n_math = len(re.findall(r'class="arithmatex"', html))
    if n_math < 100:
        problems.append(f"only {n_math} arithmatex spans (equations not rendered as maths)")
    n_links = len(re.findall(r'href="#manifold_langevin\.', html))
    if n_links < 200:
        problems.append(f"only {n_links} cross-reference links into the API page")
    for text in ("$$", "\\begin{aligned}"):
        # display maths must be inside arithmatex blocks, never loose in a paragraph
        loose = re.findall(r"<p>[^<]*" + re.escape(text), html)
        if loose:
            problems.append(f"{len(loose)} paragraph(s) with a literal {text!r}")
    if problems:
        print("API page check failed:\n- " + "\n- ".join(problems))
        return 1
    print(f"API page: {n_math} equations, {n_links} cross-references, no literal markup")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
