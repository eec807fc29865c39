"""The scheme registry: every named scheme, the dynamics it discretises and its stated order.

This table is the one place where an order is declared: the integrators set their ``order``
attribute from it, and the validation runners
([`manifold_langevin.testing`][manifold_langevin.testing]) and the tests read it for their
bias allowances, Richardson extrapolations and expected slopes. The orders are the weak orders
of configurational (stationary) averages on curved constraint sets, as measured by the
weak-order study.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["SCHEMES", "Scheme", "parse_scheme", "scheme_order"]


@dataclass(frozen=True)
class Scheme:
    """One named scheme.

    Attributes:
        name: the registry key (what ``scheme=`` takes, or a label such as ``"g-BAOAB"``).
        dynamics: ``"underdamped"`` or ``"overdamped"``.
        order: weak order of configurational averages on a curved constraint set.
        word: the sub-step word of an underdamped scheme (``None`` for overdamped ones).
        options: the integrator options that make this scheme out of its word (``g-BAOAB`` is
            BAOAB with RATTLE A steps: ``{"geodesic": False}``, with ``substeps`` chosen by the
            caller).
        description: one line for tables and documentation.
    """

    name: str
    dynamics: str
    order: int
    word: str | None = None
    options: dict = field(default_factory=dict)
    description: str = ""


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("BAOAB", "underdamped", 2, "BAOAB",
               description="B(h/2) A(h/2) O(h) A(h/2) B(h/2); exact geodesic A steps"),
        Scheme("ABOBA", "underdamped", 2, "ABOBA",
               description="A(h/2) B(h/2) O(h) B(h/2) A(h/2)"),
        Scheme("OBABO", "underdamped", 2, "OBABO",
               description="O(h/2) B(h/2) A(h) B(h/2) O(h/2)"),
        Scheme("g-BAOAB", "underdamped", 2, "BAOAB", {"geodesic": False},
               description="BAOAB with K RATTLE sub-steps per A step (geodesics off)"),
        Scheme("euler", "overdamped", 1,
               description="projected Euler-Maruyama (SHAKE onto the set)"),
        Scheme("lm", "overdamped", 1,
               description="the constrained BAOAB limit (second order in flat space only)"),
    )
}  # fmt: skip
"""Every named scheme, by name: its dynamics, declared weak order, sub-step word and options."""


def scheme_order(name: str) -> int:
    """The declared weak order of scheme ``name``; an underdamped word that is not in the
    registry (any word in A, B and O) is only known to be consistent, order 1."""
    entry = SCHEMES.get(name)
    return entry.order if entry is not None else 1


def parse_scheme(scheme: str) -> list[tuple[str, float]]:
    """Split ``scheme`` into ``(letter, fraction of h)`` pairs.

    Each letter's total time is ``h``, shared equally between its occurrences, so ``"BAOAB"`` is
    ``B(h/2) A(h/2) O(h) A(h/2) B(h/2)``.

    Raises:
        ValueError: for letters other than A, B, O, or a letter that is missing.

    Examples:
        >>> parse_scheme("BAOAB")
        [('B', 0.5), ('A', 0.5), ('O', 1.0), ('A', 0.5), ('B', 0.5)]
    """
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a string such as 'BAOAB', got {type(scheme).__name__}")
    letters = scheme.upper()
    bad = set(letters) - set("ABO")
    if bad or set(letters) != set("ABO"):
        words = ", ".join(s.word for s in SCHEMES.values() if s.word and s.name == s.word)
        raise ValueError(
            f"scheme {scheme!r} must be a word in the letters A, B and O using each at least once "
            f"(e.g. {words})"
        )
    counts = Counter(letters)
    return [(c, 1.0 / counts[c]) for c in letters]
