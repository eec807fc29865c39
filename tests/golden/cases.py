"""Golden trajectories: fixed-seed float64 runs of every sampler scheme on every manifold of the
shared test table and of CoLA on every constraint, scheme, temperature and option.

They pin the library's behaviour bit for bit, so that code can be moved and rewritten without
changing a single number: ``python -m tests.golden.record`` writes ``trajectories.pt`` from the
current code, and ``tests/test_golden.py`` recomputes every case and compares. Only the public
API is used here, so these cases survive a reorganisation of the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import geoopt
import torch

import manifold_langevin as ml
from tests.cases import CASES

DTYPE = torch.float64
N_CHAINS = 3
N_STEPS = 12
N_COLA_STEPS = 8

#: (label, scheme keyword arguments); step sizes scale with the manifold's size below
SAMPLER_SCHEMES: list[tuple[str, dict]] = [
    ("BAOAB", {"kind": "ud", "scheme": "BAOAB"}),
    ("ABOBA", {"kind": "ud", "scheme": "ABOBA"}),
    ("OBABO", {"kind": "ud", "scheme": "OBABO"}),
    ("g-BAOAB", {"kind": "ud", "scheme": "BAOAB", "substeps": 3, "geodesic": False}),
    ("BAOAB-rattle", {"kind": "ud", "scheme": "BAOAB", "geodesic": False}),
    (
        "BAOAB-tau0.3-gamma2.5",
        {"kind": "ud", "scheme": "BAOAB", "temperature": 0.3, "friction": 2.5},
    ),
    ("BAOAB-tau0", {"kind": "ud", "scheme": "BAOAB", "temperature": 0.0}),
    ("BAOAB-gamma0", {"kind": "ud", "scheme": "BAOAB", "friction": 0.0}),
    ("euler", {"kind": "od", "scheme": "euler"}),
    ("lm", {"kind": "od", "scheme": "lm"}),
    ("lm-rattle2", {"kind": "od", "scheme": "lm", "substeps": 2}),
    ("euler-tau0.4", {"kind": "od", "scheme": "euler", "temperature": 0.4}),
]


#: the schemes also run at a step size large enough for SHAKE failures and rejections
_LARGE_STEPS = ("BAOAB", "OBABO", "g-BAOAB", "euler", "lm")


def _coefficients(shape: tuple[int, ...]) -> torch.Tensor:
    """A fixed, irregular tensor shaped like one point (the potential's linear term)."""
    n = math.prod(shape)
    c = torch.arange(1, n + 1, dtype=DTYPE)
    return (torch.sin(1.7 * c) + 0.3 * torch.cos(0.4 * c * c)).reshape(shape)


def _potential(shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``U(x) = -c.x + 0.2 sum x^4 / size`` over the event dimensions: a non-trivial force."""
    c = _coefficients(shape)
    nd = len(shape)
    dims = tuple(range(-nd, 0))

    def u(x: torch.Tensor) -> torch.Tensor:
        return -(c * x).sum(dims) + 0.2 * (x**4).sum(dims) / c.numel()

    return u


def sampler_cases() -> Iterator[tuple[str, Callable[[], dict[str, torch.Tensor]]]]:
    """``(name, run)`` for every manifold of the shared table and every scheme variant."""
    for case in CASES:
        geodesic = case.make().has_geodesic
        for label, kw in SAMPLER_SCHEMES:
            if label == "BAOAB-rattle" and not geodesic:
                continue  # the same run as BAOAB
            for big in (False, True) if label in _LARGE_STEPS else (False,):
                yield (
                    f"sampler/{case.name}/{label}/{'large' if big else 'small'}",
                    (lambda case=case, kw=kw, big=big: _run_sampler(case, dict(kw), big)),
                )


def _run_sampler(case, kw: dict, big: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    x0 = case.points(N_CHAINS, DTYPE, gen)
    manifold = case.make()
    shape = tuple(x0.shape[1:])
    kind = kw.pop("kind")
    kw.setdefault("temperature", 0.7)
    if kind == "ud":
        kw.setdefault("friction", 1.3)
        h = 0.9 if big else 0.15
        sampler = ml.Langevin(manifold, _potential(shape), step_size=h, **kw)
    else:
        h = 0.3 if big else 0.02
        sampler = ml.OverdampedLangevin(manifold, _potential(shape), step_size=h, **kw)
    noise = torch.Generator().manual_seed(99)
    state = sampler.init(x0, generator=noise)
    xs, oks, fins = [], [], []
    with torch.no_grad():
        for _ in range(N_STEPS):
            state, ok, finite = sampler.step(state, noise)
            xs.append(state.x)
            oks.append(ok)
            fins.append(finite)
    out = {
        "x": torch.stack(xs),
        "ok": torch.stack(oks),
        "finite": torch.stack(fins),
        "force": state.force,
        # the next draws pin how many normals the run consumed
        "next_normals": torch.randn(4, generator=noise, dtype=DTYPE),
    }
    if state.p is not None:
        out["p"] = state.p
    return out


def sample_loop_cases() -> Iterator[tuple[str, Callable[[], dict[str, torch.Tensor]]]]:
    """The sampling loop itself: averages, batch-means errors, residuals and failure counts."""
    for name, strict in (
        ("sphere-r2.5-d10", False),
        ("ellipse", False),
        ("stiefel-tall-6x3", True),
    ):
        case = next(c for c in CASES if c.name == name)
        yield f"sample/{name}", lambda case=case, strict=strict: _run_sample(case, strict)


def _run_sample(case, strict: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    x0 = case.points(6, DTYPE, gen)
    shape = tuple(x0.shape[1:])
    sampler = ml.Langevin(case.make(), _potential(shape), step_size=0.2, friction=0.8)
    first = (0,) * len(shape)
    obs = {"first": lambda x: x[(..., *first)], "square": lambda x: x * x}
    out = sampler.sample(
        x0,
        n_steps=60,
        burn_in=10,
        thin=2,
        n_batches=5,
        observables=obs,
        generator=torch.Generator().manual_seed(7),
        strict=strict,
        trace_draws=0,  # strict mode would also raise on these short runs' diagnostics
    )
    rec = {f"mean/{k}": v for k, v in out.means.items()}
    rec.update({f"stderr/{k}": v for k, v in out.stderrs.items()})
    rec.update({f"batch_means/{k}": v for k, v in out.batch_means.items()})
    rec["max_residual"] = torch.tensor(out.max_residual, dtype=DTYPE)
    rec["n_failures"] = torch.tensor(out.n_failures)
    rec["x"] = out.state.x
    return rec


# ------------------------------------------------------------------------------------ CoLA
def _parameters() -> dict[str, torch.Tensor]:
    """Named parameters: tall, wide and square matrices (two of each tall shape, so that they
    are stacked), a conv kernel, vectors and a scalar-like bias."""
    g = torch.Generator().manual_seed(3)
    shapes = {
        "tall_a": (6, 3),
        "tall_b": (6, 3),
        "wide": (3, 5),
        "square": (4, 4),
        "conv": (4, 2, 2, 2),
        "vec": (5,),
        "pair": (4, 2),
    }
    return {k: 0.3 * torch.randn(s, generator=g, dtype=DTYPE) for k, s in shapes.items()}


def _loss(params: list[torch.Tensor]) -> torch.Tensor:
    total = 0.0
    for p in params:
        c = _coefficients(tuple(p.shape))
        total = total + (c * p).sum() + 0.5 * (p * p * c.abs()).sum() + 0.1 * (p**4).sum()
    return total


#: (label, parameter names, group options, optimizer options)
_ELLIPSE = "ellipse"
COLA_GROUPS: list[tuple[str, tuple[str, ...], dict]] = [
    ("orthogonal", ("tall_a", "tall_b", "wide", "square", "conv"), {"constraint": "orthogonal"}),
    ("circle", ("tall_a", "wide", "vec"), {"constraint": "circle", "radius": 0.4}),
    ("sphere", ("tall_a", "wide", "vec"), {"constraint": "sphere", "radius": 1.5}),
    ("sphere-object", ("tall_a", "vec"), {"constraint": "sphere-object"}),
    ("ellipse-object", ("pair",), {"constraint": _ELLIPSE}),
    ("geoopt-parameter", ("tall_a", "vec"), {"constraint": "geoopt"}),
    ("free", ("tall_a", "vec", "conv"), {"constraint": None}),
]

COLA_VARIANTS: list[tuple[str, dict]] = [
    ("ud-tau0", {"scheme": "ud", "temperature": 0.0}),
    ("ud-tau0-nofuse", {"scheme": "ud", "temperature": 0.0, "fuse": False}),
    ("ud-tau0.01", {"scheme": "ud", "temperature": 0.01}),
    ("ud-tau0.01-geodesic", {"scheme": "ud", "temperature": 0.01, "geodesic": True}),
    ("ud-tau0.01-rattle", {"scheme": "ud", "temperature": 0.01, "geodesic": False}),
    (
        "ud-tau0-rattle-sub2",
        {"scheme": "ud", "temperature": 0.0, "geodesic": False, "substeps": 2},
    ),
    ("ud-tau0-full-kick", {"scheme": "ud", "temperature": 0.0, "first_kick": "full"}),
    ("ud-tau0.01-mask", {"scheme": "ud", "temperature": 0.01, "on_nonfinite": "mask"}),
    ("od-tau0", {"scheme": "od", "temperature": 0.0}),
    ("od-tau0.01", {"scheme": "od", "temperature": 0.01}),
    ("od-tau0.01-geodesic", {"scheme": "od", "temperature": 0.01, "geodesic": True}),
    ("od-tau0.01-mask", {"scheme": "od", "temperature": 0.01, "on_nonfinite": "mask"}),
    ("ud-large-reject", {"scheme": "ud", "temperature": 0.05, "lr": 1.4}),
    (
        "ud-large-subdivide",
        {"scheme": "ud", "temperature": 0.05, "lr": 1.4, "on_failure": "subdivide"},
    ),
    ("ud-gamma-inf", {"scheme": "ud", "temperature": 0.01, "friction": math.inf}),
]

_OPTIMIZER_KEYS = ("on_nonfinite", "on_failure")


def _group_params(label: str, names: tuple[str, ...], params: dict, opts: dict):
    """The tensors of one group, made ready for its constraint (a copy of ``params``)."""
    out = []
    for n in names:
        p = params[n].clone()
        c = opts["constraint"]
        if c == "orthogonal":
            ml.optim.orthogonal_init_(p)
        elif c == "circle":
            ml.optim.circle_init_(p, opts["radius"])
        elif c == "sphere":
            m = p.reshape(p.shape[0], -1) if p.dim() >= 2 else p
            p = (m * (opts["radius"] / m.norm(dim=-1, keepdim=True))).reshape(p.shape)
        elif c in ("sphere-object", "geoopt"):
            p = (
                p * (2.0 / p.norm(dim=-1, keepdim=True))
                if c == "sphere-object"
                else (p / p.norm(dim=-1, keepdim=True))
            )
        elif c == _ELLIPSE:
            t = torch.atan2(p[..., 1], p[..., 0])
            p = torch.stack([2 * torch.cos(t), torch.sin(t)], dim=-1)
        if c == "geoopt":
            p = geoopt.ManifoldParameter(p, manifold=geoopt.Sphere())
        else:
            p = torch.nn.Parameter(p)
        out.append(p)
    return out


def _group_constraint(opts: dict):
    c = opts["constraint"]
    if c == "sphere-object":
        return {"constraint": ml.Sphere(2.0)}
    if c == _ELLIPSE:
        return {
            "constraint": ml.ImplicitManifold(lambda x: x[..., :1] ** 2 / 4 + x[..., 1:] ** 2 - 1)
        }
    if c == "geoopt":
        return {"constraint": None}
    out = {"constraint": c}
    if "radius" in opts:
        out["radius"] = opts["radius"]
    return out


def cola_cases() -> Iterator[tuple[str, Callable[[], dict[str, torch.Tensor]]]]:
    """Every constraint group with every variant, and one optimizer holding all the groups."""
    for glabel, names, opts in COLA_GROUPS:
        for vlabel, var in COLA_VARIANTS:
            yield (
                f"cola/{glabel}/{vlabel}",
                (lambda g=(glabel, names, opts), v=var: _run_cola([g], dict(v))),
            )
    for vlabel, var in COLA_VARIANTS:
        yield f"cola/all-groups/{vlabel}", lambda v=var: _run_cola(COLA_GROUPS, dict(v))
    yield (
        "cola/all-groups/lr-schedule",
        lambda: _run_cola(COLA_GROUPS, {"scheme": "ud", "temperature": 0.01}, schedule=True),
    )


def _run_cola(groups, var: dict, schedule: bool = False) -> dict[str, torch.Tensor]:
    base = _parameters()
    lr = var.pop("lr", 0.3)
    friction = var.pop("friction", 1.1)
    opt_kw = {k: var.pop(k) for k in _OPTIMIZER_KEYS if k in var}
    param_groups, tensors = [], []
    for glabel, names, opts in groups:
        ps = _group_params(glabel, names, base, opts)
        tensors.extend(ps)
        param_groups.append({"params": ps, **_group_constraint(opts), **var})
    opt = ml.optim.CoLA(param_groups, lr=lr, friction=friction, seed=11, **opt_kw)
    out: dict[str, torch.Tensor] = {}
    for step in range(N_COLA_STEPS):
        if schedule and step == 3:
            for g in opt.param_groups:
                g["lr"] = 0.5 * g["lr"]
        opt.zero_grad()
        _loss(tensors).backward()
        opt.step()
        for i, p in enumerate(tensors):
            out[f"step{step}/param{i}"] = p.detach().clone()
    for i, p in enumerate(tensors):
        for key, value in opt.state[p].items():
            if torch.is_tensor(value):
                out[f"state/param{i}/{key}"] = value.clone()
    out["n_rejected"] = torch.tensor(opt.n_rejected())
    return out


def all_cases() -> Iterator[tuple[str, Callable[[], dict[str, torch.Tensor]]]]:
    yield from sampler_cases()
    yield from sample_loop_cases()
    yield from cola_cases()


def environment() -> dict[str, str]:
    """What decides whether numbers can be compared bit for bit: torch's build, the CPU kernels
    it dispatches to (vectorised reductions round differently per instruction set) and the bits
    of the BLAS/LAPACK calls the cases make (``linalg``: MKL picks its kernels by CPU model, not
    by the instruction set torch is told to use)."""
    return {
        "torch": str(torch.__version__),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "linalg": linalg_fingerprint(),
    }


def linalg_fingerprint() -> str:
    """A digest of the bits of batched products, solves, Cholesky factors and matrix
    exponentials of fixed float64 inputs (the BLAS/LAPACK calls of the manifolds)."""
    import hashlib

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2048, 3, 2, generator=g, dtype=torch.float64)
    spd = a @ a.mT + torch.eye(3, dtype=torch.float64)
    outs = (
        a @ b,
        torch.linalg.solve_ex(a, b)[0],
        torch.linalg.solve_ex(a[:, :2, :2], b[:, :2])[0],
        torch.linalg.cholesky(spd),
        torch.linalg.matrix_exp(a - a.mT),
        torch.linalg.qr(torch.randn(64, 6, 3, generator=g, dtype=torch.float64))[0],
    )
    digest = hashlib.sha256()
    for t in outs:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
