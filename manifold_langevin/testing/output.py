"""Where the validation runners write their evidence (JSON and PNG files)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DEFAULT_OUT", "write_json"]

#: the default output folder of the runners, relative to the working directory (the repository
#: regenerates its committed evidence with ``--out validation/results``)
DEFAULT_OUT = Path("manifold-langevin-results")


def write_json(path: Path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` (folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path
