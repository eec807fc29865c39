"""Splitting schemes as strings of sub-step letters, and their stated orders."""

from __future__ import annotations

from collections import Counter

__all__ = ["SCHEMES", "parse_scheme"]

#: The supported underdamped splittings and the weak order of their configurational averages.
SCHEMES: dict[str, int] = {"BAOAB": 2, "ABOBA": 2, "OBABO": 2}


def parse_scheme(scheme: str) -> list[tuple[str, float]]:
    """Split ``scheme`` into ``(letter, fraction of h)`` pairs.

    Each letter's total time is ``h``, shared equally between its occurrences, so ``"BAOAB"`` is
    ``B(h/2) A(h/2) O(h) A(h/2) B(h/2)``.

    Raises:
        ValueError: for letters other than A, B, O, or a letter that is missing.

    Example:
        >>> parse_scheme("BAOAB")
        [('B', 0.5), ('A', 0.5), ('O', 1.0), ('A', 0.5), ('B', 0.5)]
    """
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a string such as 'BAOAB', got {type(scheme).__name__}")
    letters = scheme.upper()
    bad = set(letters) - set("ABO")
    if bad or set(letters) != set("ABO"):
        raise ValueError(
            f"scheme {scheme!r} must be a word in the letters A, B and O using each at least once "
            f"(e.g. {', '.join(SCHEMES)})"
        )
    counts = Counter(letters)
    return [(c, 1.0 / counts[c]) for c in letters]
