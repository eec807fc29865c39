"""What the sampler is compared with, side by side: a hand-written NumPy loop and OpenMM.

Each ``make_*`` function builds one contender for ``n_chains`` independent chains (molecules)
and returns ``run(n_steps)``, which advances all of them by ``n_steps`` BAOAB-type steps; the
benchmark times ``run`` (``validation.bench_sampler``, sweep ``side_by_side``).

* ``numpy_s2``: BAOAB on the sphere S^2 with the von Mises-Fisher potential
  ``U(x) = -kappa mu.x``, written as a user would without the library: NumPy arrays, the exact
  geodesic for the drift, the analytic tangent force ``kappa (mu - (mu.x) x)`` and the tangent
  projection of the noise (the floor the library must beat).
* ``ml_s2`` / ``ml_s2_implicit``: the library's ``Langevin`` on ``Sphere()`` and on the same
  sphere as ``ImplicitManifold(|x|^2 - 1)``, the potential's gradient from autograd;
  ``ml_s2_implicit_quasi``: the same with ``newton=False`` (quasi-Newton SHAKE: the constraint's
  Jacobian formed once per solve; shorter reach, see ``validation/implicit_reach.py``);
  ``ml_s2_implicit_newton3``: ``newton=3`` (Newton's matrix at the first three iterates, then
  kept); ``ml_s2_implicit_jac``: Newton's SHAKE with the constraint's Jacobian written out
  (:func:`sphere_jacobian`, ``2 x``: the ``jacobian`` argument) instead of autodiff.
* ``ml_so3`` / ``ml_stiefel_10x3``: ``Stiefel()`` 3 x 3 and 10 x 3 (exact geodesic), potential
  ``-tr(F^T X)``; ``ml_so3_general`` / ``ml_stiefel_10x3_general``: the same with the geodesic
  computed by the general formula with ``torch.linalg.matrix_exp`` for both exponentials
  (:class:`GeneralFormulaStiefel`, the library's code before the closed forms), the baseline
  of that lever measured in the same run.
* ``*_compiled``: the library's contenders with the step through ``CompiledStep`` (what
  ``sample(..., compile=True)`` runs: ``torch.compile`` of the step, its noise drawn eagerly).
* ``ml_molecule`` / ``openmm_molecule``: a chain of ``n_beads`` atoms of unit mass (amu) with
  rigid bonds of length :data:`BOND` nm between neighbours and a harmonic angle potential
  ``k/2 (theta - theta0)^2`` (``k =`` :data:`ANGLE_K` kJ/mol/rad^2, ``theta0 =``
  :data:`ANGLE_0`) on every three consecutive atoms, at 300 K with friction 1/ps and a 2 fs
  step: ``n_beads = 3`` is the rigid trimer (2 constraints), ``n_beads = 10`` the 10-bead chain
  (9 constraints, 8 angles). The library runs it through ``ImplicitManifold`` (x in R^{3 n},
  one row of ``g`` per bond) with ``Langevin`` (BAOAB); ``*_quasi`` and ``*_frozen``: the same
  with SHAKE's quasi-Newton and frozen old-point iterations (``ImplicitManifold(newton=False)``,
  ``newton="frozen"``), the kinds of iteration molecular dynamics codes use; ``*_newton3``:
  three Newton iterates, then the third one's matrix kept (``newton=3``); ``*_jac``: Newton's
  SHAKE with the bonds' Jacobian in closed form (:func:`chain_jacobian`, the ``jacobian``
  argument) instead of autodiff, and ``*_frozen_jac`` the frozen iteration with it (the
  combination a molecular dynamics code runs). OpenMM runs
  ``n_chains`` molecules in one ``System`` (no other forces) with ``LangevinMiddleIntegrator``
  and its own constraint solver (tolerance ``1e-5``) on the Reference and CPU platforms (the CPU
  platform with one thread).

The units are OpenMM's (nm, ps, amu, kJ/mol), in which a unit mass and ``tau = k_B T`` make the
two simulations the same model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

import manifold_langevin as ml
from manifold_langevin.manifolds.frames import polish, skew, sym
from manifold_langevin.sampling.compiled import CompiledStep

__all__ = [
    "ANGLE_0",
    "ANGLE_K",
    "BOND",
    "KT_300K",
    "GeneralFormulaStiefel",
    "chain_angles",
    "chain_constraint",
    "chain_jacobian",
    "make_ml_molecule",
    "make_ml_s2",
    "make_ml_stiefel",
    "make_numpy_s2",
    "make_openmm_molecule",
    "ml_molecule_sampler",
    "ml_s2_sampler",
    "openmm_available",
    "sphere_jacobian",
]

#: bond length (nm), angle stiffness (kJ/mol/rad^2) and rest angle of the molecules
BOND = 0.15
ANGLE_K = 100.0
ANGLE_0 = 1.9106332362490186  # the tetrahedral angle, acos(-1/3)
#: k_B T at 300 K in kJ/mol
KT_300K = 0.0083144626181532 * 300.0
#: the molecules' step (ps) and friction (1/ps)
MD_STEP, MD_FRICTION = 0.002, 1.0
#: the S^2 and Stiefel problems' settings
KAPPA, STEP, FRICTION, TEMPERATURE = 2.0, 0.05, 1.0, 1.0


# ---------------------------------------------------------------------------- S^2 in NumPy
def make_numpy_s2(n_chains: int, dtype=np.float64, seed: int = 0) -> Callable[[int], np.ndarray]:
    """BAOAB on S^2 (vMF potential) in plain NumPy: the loop a user writes without a library."""
    rng = np.random.default_rng(seed)
    mu = np.array([0.0, 0.0, 1.0], dtype=dtype)
    h, c1 = STEP, math.exp(-FRICTION * STEP)
    c2 = math.sqrt(TEMPERATURE * (1.0 - c1 * c1))
    x = rng.standard_normal((n_chains, 3)).astype(dtype)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = np.zeros_like(x)

    def force(x):
        return KAPPA * (mu - (x @ mu)[:, None] * x)

    def drift(x, p, t):
        w = np.sqrt(np.einsum("ij,ij->i", p, p))[:, None]
        c, s = np.cos(w * t), np.sin(w * t)
        sw = np.where(w > 0, s / np.where(w > 0, w, 1.0), t)
        return x * c + p * sw, p * c - x * (w * s)

    state = {"x": x, "p": p, "f": force(x)}

    def run(n_steps: int) -> np.ndarray:
        x, p, f = state["x"], state["p"], state["f"]
        for _ in range(n_steps):
            p = p + 0.5 * h * f
            x, p = drift(x, p, 0.5 * h)
            r = rng.standard_normal(x.shape).astype(dtype, copy=False)
            r -= np.einsum("ij,ij->i", x, r)[:, None] * x
            p = c1 * p + c2 * r
            x, p = drift(x, p, 0.5 * h)
            f = force(x)
            p = p + 0.5 * h * f
        state.update(x=x, p=p, f=f)
        return x

    return run


# ---------------------------------------------------------------------------- the library
def _sampler_run(
    sampler: ml.Langevin, x0: torch.Tensor, seed: int, compile: bool = False
) -> Callable[[int], object]:
    """``run(n_steps)`` of the sampler's step in a loop; ``compile``: the step through
    ``CompiledStep`` (what ``sample(..., compile=True)`` runs)."""
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    state = {"s": sampler.init(x0, generator=gen)}
    step = CompiledStep(sampler) if compile else sampler.step

    @torch.no_grad()
    def run(n_steps: int):
        s = state["s"]
        for _ in range(n_steps):
            s, _, _ = step(s, gen)
        state["s"] = s
        return s.x

    return run


def make_ml_s2(
    n_chains: int,
    dtype=torch.float64,
    seed: int = 0,
    implicit: bool = False,
    device="cpu",
    compile: bool = False,
    newton: bool | int | str = True,
    user_jacobian: bool = False,
) -> Callable[[int], torch.Tensor]:
    """The library's BAOAB on S^2 with the vMF potential (gradient by autograd), on ``Sphere()``
    or (``implicit=True``) on ``ImplicitManifold(|x|^2 - 1)``, ``newton`` its SHAKE iteration
    (``ImplicitManifold``'s argument), ``user_jacobian`` gives it :func:`sphere_jacobian`."""
    gen = torch.Generator().manual_seed(seed)
    sampler = ml_s2_sampler(dtype, device, implicit, newton, user_jacobian)
    x0 = torch.nn.functional.normalize(torch.randn(n_chains, 3, generator=gen, dtype=dtype), dim=-1)
    return _sampler_run(sampler, x0.to(device), seed, compile)


def ml_s2_sampler(
    dtype=torch.float64,
    device="cpu",
    implicit: bool = False,
    newton: bool | int | str = True,
    user_jacobian: bool = False,
) -> ml.Langevin:
    """The sampler of :func:`make_ml_s2`: BAOAB on S^2 with the vMF potential ``-kappa mu.x``
    (``mu`` the third axis), on ``Sphere()`` or ``ImplicitManifold(|x|^2 - 1)`` (with
    :func:`sphere_jacobian` when ``user_jacobian``)."""
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device)
    if implicit:
        manifold = ml.ImplicitManifold(
            lambda x: (x * x).sum(-1) - 1.0,
            newton=newton,
            jacobian=sphere_jacobian if user_jacobian else None,
        )
    else:
        manifold = ml.Sphere()
    return ml.Langevin(
        manifold,
        potential=lambda x: -KAPPA * (x * mu).sum(-1),
        step_size=STEP,
        friction=FRICTION,
        temperature=TEMPERATURE,
    )


def sphere_jacobian(x: torch.Tensor) -> torch.Tensor:
    """``Dg(x) = 2 x`` of the unit sphere's constraint ``|x|^2 - 1``, ``(..., 3)`` (one row):
    the one line a user writes instead of autodiff; autograd's gradient ``x + x`` is the same
    number bit for bit."""
    return 2.0 * x


class GeneralFormulaStiefel(ml.Stiefel):
    r"""``Stiefel()`` whose geodesic takes the general formula for every shape: Edelman, Arias
    & Smith's $[T, V] e^{t\mathcal A} \binom{I}{0} e^{-tA}$ with both exponentials from
    ``torch.linalg.matrix_exp`` (no short form for square matrices, no closed forms), followed
    by the library's polish, projection and speed rescaling. A benchmark baseline only."""

    def geodesic(self, x, v, t):
        p = x.shape[-1]
        if x.shape[-2] < p:
            xt, vt = self.geodesic(x.mT, v.mT, t)
            return xt.mT, vt.mT
        a, s = skew(x.mT @ v), sym(v.mT @ v)
        eye = torch.eye(p, dtype=x.dtype, device=x.device).expand_as(a)
        block = torch.cat([torch.cat([a, -s], -1), torch.cat([eye, a], -1)], -2)
        e = torch.linalg.matrix_exp(t * block)
        r = torch.linalg.matrix_exp(-t * a)
        xv = torch.cat([x, v], -1)
        x_t = polish(xv @ (e[..., :, :p] @ r))
        v_t = xv @ (e[..., :, p:] @ r)
        v_t = v_t - x_t @ sym(x_t.mT @ v_t)
        speed0 = torch.linalg.matrix_norm(v, keepdim=True)
        speed1 = torch.linalg.matrix_norm(v_t, keepdim=True)
        return x_t, v_t * torch.where(speed1 > 0, speed0 / speed1.clamp_min(1e-300), 1.0)


def make_ml_stiefel(
    n_chains: int,
    n: int,
    p: int = 3,
    dtype=torch.float64,
    seed: int = 0,
    device="cpu",
    general: bool = False,
    compile: bool = False,
) -> Callable[[int], torch.Tensor]:
    """The library's BAOAB (exact geodesic) on V(n, p), potential ``-tr(F^T X)``
    (``general=True``: through :class:`GeneralFormulaStiefel`)."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(n, p, generator=gen, dtype=dtype).to(device)
    m = GeneralFormulaStiefel() if general else ml.Stiefel()
    sampler = ml.Langevin(
        m,
        potential=lambda x: -(x * f).sum((-2, -1)),
        step_size=STEP,
        friction=FRICTION,
        temperature=TEMPERATURE,
    )
    x0 = m.random(n_chains, n, p, dtype=dtype, generator=gen).to(device)
    return _sampler_run(sampler, x0, seed, compile)


# ---------------------------------------------------------------------------- molecules
def chain_constraint(n_beads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g(x)``: one row ``|x_{i+1} - x_i|^2 - BOND^2`` per bond of an ``n_beads`` chain,
    ``x`` of shape ``(..., 3 n_beads)``."""

    def g(x):
        a = x.unflatten(-1, (n_beads, 3))
        d = a[..., 1:, :] - a[..., :-1, :]
        return (d * d).sum(-1) - BOND * BOND

    return g


def chain_jacobian(n_beads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``Dg(x)`` of :func:`chain_constraint` in closed form, ``(..., n_beads - 1, 3 n_beads)``:
    row ``k`` is ``-2 d_k`` at bead ``k`` and ``2 d_k`` at bead ``k + 1``, ``d_k`` the bond
    vector (what a molecular dynamics user writes instead of autodiff)."""

    def jac(x):
        rows = torch.arange(n_beads - 1, device=x.device)
        a = x.unflatten(-1, (n_beads, 3))
        d2 = 2.0 * (a[..., 1:, :] - a[..., :-1, :])
        out = x.new_zeros(*x.shape[:-1], n_beads - 1, n_beads, 3)
        out[..., rows, rows, :] = -d2
        out[..., rows, rows + 1, :] = d2
        return out.flatten(-2)

    return jac


def chain_angles(x: torch.Tensor, n_beads: int) -> torch.Tensor:
    """The ``n_beads - 2`` bond angles of each chain, ``(..., n_beads - 2)``."""
    a = x.unflatten(-1, (n_beads, 3))
    u = a[..., :-2, :] - a[..., 1:-1, :]
    v = a[..., 2:, :] - a[..., 1:-1, :]
    cos = (u * v).sum(-1) / torch.sqrt((u * u).sum(-1) * (v * v).sum(-1))
    return torch.acos(cos.clamp(-1.0, 1.0))


def _chain_positions(n_chains: int, n_beads: int, rng: np.random.Generator) -> np.ndarray:
    """Zig-zag chains at the rest angle with their bonds exact, randomly rotated and spread out
    (``(n_chains, n_beads, 3)``, nm)."""
    half = 0.5 * ANGLE_0
    base = np.zeros((n_beads, 3))
    for i in range(1, n_beads):
        sign = 1.0 if i % 2 else -1.0
        base[i] = base[i - 1] + BOND * np.array([math.sin(half), sign * math.cos(half), 0.0])
    base -= base.mean(0)
    q, r = np.linalg.qr(rng.standard_normal((n_chains, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    side = math.ceil(n_chains ** (1 / 3))
    grid = np.stack(np.unravel_index(np.arange(n_chains), (side,) * 3), -1) * (BOND * n_beads)
    return np.einsum("cij,bj->cbi", q, base) + grid[:, None, :]


def make_ml_molecule(
    n_chains: int,
    n_beads: int,
    dtype=torch.float64,
    seed: int = 0,
    device="cpu",
    compile: bool = False,
    newton: bool | int | str = True,
    user_jacobian: bool = False,
    scheme: str = "BAOAB",
) -> Callable[[int], torch.Tensor]:
    """The molecule through ``ImplicitManifold`` and ``Langevin`` (BAOAB, or ``scheme``), one
    chain per molecule; ``newton`` is the SHAKE iteration (``ImplicitManifold``'s argument),
    ``user_jacobian`` gives it the closed-form :func:`chain_jacobian`."""
    sampler, x0 = ml_molecule_sampler(
        n_chains, n_beads, dtype, seed, device, newton, user_jacobian, scheme
    )
    return _sampler_run(sampler, x0, seed, compile)


def ml_molecule_sampler(
    n_chains: int,
    n_beads: int,
    dtype=torch.float64,
    seed: int = 0,
    device="cpu",
    newton: bool | int | str = True,
    user_jacobian: bool = False,
    scheme: str = "BAOAB",
) -> tuple[ml.Langevin, torch.Tensor]:
    """``(sampler, x0)`` of :func:`make_ml_molecule`: the sampler and the start positions
    ``(n_chains, 3 n_beads)``."""
    pos = _chain_positions(n_chains, n_beads, np.random.default_rng(seed))
    x0 = torch.tensor(pos.reshape(n_chains, 3 * n_beads), dtype=dtype, device=device)
    jacobian = chain_jacobian(n_beads) if user_jacobian else None
    manifold = ml.ImplicitManifold(chain_constraint(n_beads), newton=newton, jacobian=jacobian)

    def potential(x):
        return 0.5 * ANGLE_K * ((chain_angles(x, n_beads) - ANGLE_0) ** 2).sum(-1)

    sampler = ml.Langevin(
        manifold,
        potential=potential,
        step_size=MD_STEP,
        friction=MD_FRICTION,
        temperature=KT_300K,
        scheme=scheme,
    )
    return sampler, x0


def openmm_available() -> str | None:
    """``None`` if OpenMM imports, else why not (the benchmark says so and skips it)."""
    try:
        import openmm  # noqa: F401
    except ImportError as exc:
        return f"openmm is not installed ({exc}); pip install 'manifold-langevin[peers]'"
    return None


def make_openmm_molecule(
    n_chains: int, n_beads: int, platform: str = "Reference", seed: int = 0
) -> Callable[[int], np.ndarray]:
    """``n_chains`` molecules in one OpenMM ``System`` (harmonic angles, rigid bonds as
    constraints, no other forces), ``LangevinMiddleIntegrator`` at 300 K, friction 1/ps,
    2 fs; ``platform`` ``"Reference"`` or ``"CPU"`` (one thread)."""
    import openmm
    from openmm import unit

    pos = _chain_positions(n_chains, n_beads, np.random.default_rng(seed))
    system = openmm.System()
    angles = openmm.HarmonicAngleForce()
    for c in range(n_chains):
        first = c * n_beads
        for _ in range(n_beads):
            system.addParticle(1.0)
        for i in range(n_beads - 1):
            system.addConstraint(first + i, first + i + 1, BOND)
        for i in range(n_beads - 2):
            angles.addAngle(first + i, first + i + 1, first + i + 2, ANGLE_0, ANGLE_K)
    system.addForce(angles)
    integrator = openmm.LangevinMiddleIntegrator(
        300.0 * unit.kelvin, MD_FRICTION / unit.picosecond, MD_STEP * unit.picoseconds
    )
    integrator.setRandomNumberSeed(seed + 1)
    integrator.setConstraintTolerance(1e-5)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": "1"} if platform == "CPU" else {}
    context = openmm.Context(system, integrator, plat, props)
    context.setPositions(pos.reshape(-1, 3) * unit.nanometer)
    context.setVelocitiesToTemperature(300.0 * unit.kelvin, seed + 2)

    def run(n_steps: int) -> np.ndarray:
        integrator.step(n_steps)
        state = context.getState(getPositions=True)
        return state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)

    return run
