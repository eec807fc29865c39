"""E2 of the paper: does weight-constrained training overfit less? (MLP on Fashion-MNIST.)

Setting (Leimkuhler, Vlaar, Pouchon, Storkey, ICML 2021, experiment E2): an MLP
784-1000-10 with ReLU, trained with batch 128 on a small training set of 10,000 Fashion-MNIST
images (here: the *first* 10,000 images of the training file) and evaluated on the other 60,000
images (the remaining 50,000 training images plus the 10,000 test images). The paper's claim:
with the circle constraint (c-CoLA-ud, ``h = 0.3, gamma = 1, T = 0, r0 = 0.05, r1 = 0.1``) the
test loss stays flat, while SGD's rises (overfitting). The paper ran 400 epochs and 20 runs; we
run fewer (``--epochs``, ``--seeds``) to fit a CPU budget.

Methods (all from the same default PyTorch initialisation per seed; inputs in ``[0, 1]``):

* ``cola_t0`` -- c-CoLA-ud with the paper's settings (``T = 0``, as in the paper):
  ``CoLA(constrained_groups(model, "circle"), lr=0.3, friction=1.0)``. The default init already
  lies inside the radii (``|w| <= 1/sqrt(784) < 0.05``, ``1/sqrt(1000) < 0.1``), so the circle
  initialisation changes nothing (counted in the JSON).
* ``cola_t`` -- the same with a small temperature ``T > 0`` chosen from a grid. Not run by
  default (the paper's E2 used ``T = 0``; pass ``--method cola_t``): in a one-seed, 30-epoch
  pilot the chosen ``T = 1e-5`` (validation grid 1e-6, 1e-5, 1e-4) ended at test accuracy 0.816
  against 0.854 at ``T = 0``, and its step costs about 2.4x the ``T = 0`` step.
* ``cola_free`` -- the same integrator with the constraint removed (``constraint=None``): heavy
  ball with ``mu = exp(-gamma h) = 0.741`` and SGD learning rate ``h^2 (1 + mu) / 2 = 0.078``.
  This isolates the effect of the constraint from that of the step size and momentum.
* ``sgd`` -- ``torch.optim.SGD(momentum=0.9)``, learning rate chosen from a grid.
* ``adam`` -- ``torch.optim.Adam``, learning rate chosen from a grid.
* ``released`` -- the released scripts' c-CoLA-ud (``validation.released_circle``: xi rotated with
  the already-rotated w, kick with the previous point's gradient) with the paper's settings, a
  baseline for ``cola_t0``. Not run by default (``--method released``).
* ``released_exact`` / ``released_current`` -- ablations of ``released``: the same scheme with
  one of its two departures switched off (the exact rotation, which holds the radius; the kick
  with the current gradient). With both switched off it is ``cola_t0``'s map.
* ``cola_biases`` -- ``cola_t0`` with the biases on circles too (radius ``r1``; the paper leaves
  them free): the bias-handling ablation.
* ``cola_radius`` -- ``cola_t0`` with the radii ``(r0, r1)`` chosen on the validation split
  (grid in ``METHODS``) by the lowest mean validation loss over the last :data:`LAST` epochs of
  a tuning run as long as the training runs (``criterion="last_loss"``, ``tune_full``): the
  output layer's bound is the active one (about 60% of its weights sit at ``r1 = 0.1`` after
  150 epochs, 2% of the input layer's at ``r0``), so a tighter ``r1`` is the candidate.
* ``cola_friction`` -- ``cola_t0`` with the friction ``gamma`` chosen the same way (grid in
  ``METHODS``, radii and step the paper's). On a quadratic of curvature ``lam`` the released
  scheme's kick with the previous point's gradient makes the unconstrained map the heavy ball
  ``dw' = mu dw - eta lam w_prev`` (``mu = exp(-gamma h)``, ``eta = h^2 (1 + mu) / 2``), i.e.
  ``dw' = (mu + eta lam) dw - eta lam w``: the momentum raised by ``eta lam``, less damping
  along the stiff directions, so a lower friction is the candidate that would reproduce it in
  the exact scheme.
* ``cola_friction_fixed`` -- ``cola_t0`` with the friction that ``cola_friction`` chose over 150
  epochs (:data:`FRICTION_CHOSEN`) as a stated setting, for the 400-epoch horizon, over which
  tuning the grid would cost nine more 400-epoch runs.

For every circle-constrained run the bounds are recorded after every evaluation
(``bounds``: per weight the largest ``|w|``, the share of entries at the bound, and for the
released scheme the effective radius ``sqrt(w^2 + xi^2) / r``, its smallest value and
quantiles). The summary's headline is the mean test loss and accuracy over the last
:data:`LAST` epochs (each evaluated), as mean ± standard error over seeds; a run that stopped on
a non-finite training loss is left out of its method's statistics and named in the table.

Tuning (the grids are in ``METHODS``): one seed, trained on the first 8,000 of the 10,000
training images and validated on the last 2,000, for ``--tune-epochs`` epochs; the value with the
highest validation accuracy at any epoch wins (ties: lower validation loss). The untuned methods
get the same validation run for reference. The final runs then train on all 10,000 images.

The models, the training loop, the evaluation and the optimizers are the library's
(``ml.nn.mlp``, ``ml.nn.train``, ``ml.nn.evaluate``,
``ml.nn.make_optimizer``); this script adds the tuning, the evaluation schedule, the
per-seed records and the aggregation.

Outputs (``--out``, default ``validation/results``; ``--quick`` writes to ``<out>/quick``):
``exp_e2.json`` (settings, tuning tables, every curve, per-seed and aggregated summaries, a
markdown ``table``, constraint residuals, timings), ``exp_e2.png`` (test loss, test accuracy
and training loss against epochs: mean over seeds with a +-1 std band) and, when circle runs
recorded their bounds, ``exp_e2_bounds.png`` (:func:`plot_bounds`).

Threads: ``--threads`` defaults to 1. Measured on the shared 2-core machine this was written on
(load average about 3): a c-CoLA step of this MLP took 80 ms with 2 intra-op threads and 8-16 ms
with 1 (the circle update is many small elementwise kernels, each a parallel region), an SGD
epoch 4.1 s vs 0.8 s, the 60,000-image evaluation 1.9 s vs 1.3 s (``docs/performance.md``,
"Threads").

Run ``python -m validation.exp_e2 [--quick] [--seeds 3] [--epochs 50] [--method KEY ...]
[--resume]``; with ``--resume`` every finished tuning and training run is kept in
``<out>/exp_e2.progress.json`` as it ends, and a run started again with the same settings skips
them (long runs can be stopped and resumed, and seeds or methods added).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import manifold_langevin as ml
from validation.experiment_data import load_fashion_mnist
from validation.released_circle import ReleasedCircleCoLA

__all__ = [
    "METHODS",
    "Method",
    "aggregate",
    "analyze",
    "build_optimizer",
    "main",
    "make_mlp",
    "markdown_table",
    "matched_train_loss",
    "run",
    "train_run",
]

BATCH = 128
EVAL_BATCH = 10_000  # examples per forward pass of the evaluation
N_TRAIN = 10_000
N_VAL = 2_000  # the last 2,000 of the training subset, for tuning only
RADII = (0.05, 0.1)  # the paper's r0 (input layer), r1 (other layers)


@dataclass(frozen=True)
class Method:
    """A training method: optimizer ``kind``, fixed hyperparameters, an optional tuning grid.

    Attributes:
        key: short name used in the JSON.
        label: legend text.
        kind: ``"cola-circle"``, ``"cola-orthogonal"``, ``"cola-orthogonal-body"`` (output layer
            unconstrained too), ``"cola-free"``, ``"released"`` (the released scripts' c-CoLA-ud,
            ``validation.released_circle``), ``"sgd"`` or ``"adam"``.
        hyper: fixed keyword arguments of the optimizer.
        tune: name of the tuned hyperparameter (``None``: not tuned).
        grid: its candidate values.
        init: ``"default"`` (PyTorch's) or ``"orthogonal"`` (QR of the weights that o-CoLA would
            constrain, for an unconstrained optimizer started like o-CoLA).
        criterion: the tuning criterion (a key of :data:`CRITERIA`).
        tune_full: tune over the full training horizon (``epochs``) instead of
            ``tune_epochs`` (for a criterion that reads the late epochs).
    """

    key: str
    label: str
    kind: str
    hyper: dict = field(default_factory=dict)
    tune: str | None = None
    grid: tuple = ()
    init: str = "default"
    criterion: str = "best"
    tune_full: bool = False

    def with_value(self, value) -> dict:
        """The optimizer's keyword arguments with the tuned hyperparameter set to ``value``."""
        return {**self.hyper, self.tune: value} if self.tune else dict(self.hyper)


#: the friction ``cola_friction`` chose on the validation split over 150 epochs (the committed
#: ``validation/results/e2_ablation`` run; a test checks the two agree)
FRICTION_CHOSEN = 0.0625
METHODS = (
    Method("cola_t0", "c-CoLA-ud, T=0 (paper)", "cola-circle",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0}),
    Method("cola_t", "c-CoLA-ud, T>0", "cola-circle", {"lr": 0.3, "friction": 1.0},
           tune="temperature", grid=(1e-6, 1e-5, 1e-4)),
    Method("released", "c-CoLA-ud, released scripts' scheme", "released",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0}),
    # ablations of the released scheme: one defect switched off at a time
    Method("released_exact", "released scheme, exact rotation", "released",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0, "rotation": "exact"}),
    Method("released_current", "released scheme, current gradient", "released",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0, "gradient": "current"}),
    # bias handling: the biases on circles of radius r1 too (the paper leaves them free)
    Method("cola_biases", "c-CoLA-ud, T=0, biases constrained too", "cola-circle-all",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0}),
    # the library's setting against the released scheme: radii chosen on the validation split
    # by the late validation loss (the output layer's bound is the active one)
    Method("cola_radius", "c-CoLA-ud, T=0, radii chosen on validation", "cola-circle",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0}, tune="radius",
           grid=((0.05, 0.1), (0.05, 0.07), (0.05, 0.05), (0.035, 0.05)),
           criterion="last_loss", tune_full=True),
    # the second setting: the friction chosen the same way (the released scheme's lagged kick
    # acts like extra momentum along stiff directions, i.e. less damping there)
    Method("cola_friction", "c-CoLA-ud, T=0, friction chosen on validation", "cola-circle",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0}, tune="friction",
           grid=(0.0, 0.015625, 0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0),
           criterion="last_loss", tune_full=True),
    # that friction as a stated setting, for horizons too long to tune over (the 400-epoch run)
    Method("cola_friction_fixed",
           f"c-CoLA-ud, T=0, friction {FRICTION_CHOSEN:g} (chosen on validation, 150 epochs)",
           "cola-circle", {"lr": 0.3, "friction": FRICTION_CHOSEN, "temperature": 0.0}),
    Method("cola_free", "CoLA-ud unconstrained (same h, gamma)", "cola-free",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0}),
    Method("sgd", "SGD, momentum 0.9", "sgd", {"momentum": 0.9},
           tune="lr", grid=(0.01, 0.03, 0.1, 0.3)),
    Method("adam", "Adam", "adam", {}, tune="lr", grid=(1e-4, 3e-4, 1e-3, 3e-3)),
)  # fmt: skip
#: run by default; ``cola_t`` (not the paper's setting: E2 used T = 0) and ``released`` (the
#: baseline ``validation.released_circle``) only with --method
DEFAULT_METHODS = ("cola_t0", "cola_free", "sgd", "adam")
QUICK_GRIDS = {
    "cola_t": (1e-5,),
    "sgd": (0.1,),
    "adam": (1e-3,),
    "cola_radius": ((0.05, 0.1), (0.05, 0.05)),
    "cola_friction": (0.5, 1.0),
}


# ---------------------------------------------------------------------------- building blocks


def make_mlp(seed: int, sizes=(784, 1000, 10)) -> nn.Sequential:
    """``ml.nn.mlp(sizes, "relu")`` behind an ``nn.Flatten`` (which also keeps the parameter
    names ``1.weight``, ``3.weight`` of the results), with PyTorch's default initialisation drawn
    from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), *ml.nn.mlp(sizes, "relu"))


#: :attr:`Method.kind` -> the name of ``ml.nn.make_optimizer`` that builds it
FACTORY_NAMES = {
    "cola-circle": "cola-circle",
    "cola-orthogonal": "cola-orthogonal",
    "cola-free": "cola",
    "cola-od-circle": "cola-od-circle",
    "cola-od": "cola-od",
    "sgd": "sgd",
    "adam": "adam",
}


def build_optimizer(kind: str, model: nn.Module, seed: int, **hyper) -> torch.optim.Optimizer:
    """The optimizer of a :class:`Method` for ``model``, from ``ml.nn.make_optimizer``
    (which constrains the weights in place: circle clipping with the paper's radii :data:`RADII`,
    or QR for the orthogonal constraint). ``hyper`` are its keyword arguments (``lr``,
    ``friction``, ``temperature``, ``momentum``); CoLA's noise is seeded with ``seed``.

    ``"cola-orthogonal-body"`` (o-CoLA with the output layer left unconstrained too, an ablation
    the factory has no name for) is ``CoLA`` on ``ml.optim.constrained_groups`` with a
    ``select`` that skips the last weight.

    ``"released"`` is the baseline ``ReleasedCircleCoLA`` (the released scripts' c-CoLA-ud,
    ``validation.released_circle``) on ``ml.optim.constrained_groups(model, "circle", RADII)``;
    ``hyper`` may also set its ``rotation`` and ``gradient``.
    """
    if kind == "released":
        groups = ml.optim.constrained_groups(model, "circle", radius=RADII)
        return ReleasedCircleCoLA(groups, seed=seed, **hyper)
    if kind == "cola-circle-all":
        first = next(n for n, p in model.named_parameters() if p.dim() >= 2)
        groups = ml.optim.constrained_groups(
            model, "circle", radius={first: RADII[0]}, select=lambda n, p: True
        )
        return ml.optim.CoLA(groups, seed=seed, **hyper)
    if kind == "cola-orthogonal-body":
        last = [n for n, p in model.named_parameters() if p.dim() >= 2][-1]
        groups = ml.optim.constrained_groups(
            model, "orthogonal", select=lambda n, p: p.dim() >= 2 and n != last
        )
        return ml.optim.CoLA(groups, seed=seed, **hyper)
    if kind not in FACTORY_NAMES:
        raise ValueError(f"unknown optimizer kind {kind!r}")
    name = FACTORY_NAMES[kind]
    if name.startswith("cola"):
        hyper = {**hyper, "seed": seed}
    if kind == "cola-circle":
        hyper.setdefault("radius", RADII)
    return ml.nn.make_optimizer(name, model, **hyper)


#: the summary's "last epochs" window: the mean of the evaluations in the last LAST epochs
LAST = 10


def eval_schedule(epochs: int) -> list[int]:
    """Epochs (1-based) after which the evaluation set is scored: 1-6, 8, 10, then every fifth
    epoch, and every one of the last :data:`LAST` epochs (the 60,000-image evaluation costs
    about half a c-CoLA epoch)."""
    return [
        e for e in range(1, epochs + 1) if e <= 6 or e in (8, 10) or e % 5 == 0 or e > epochs - LAST
    ]


def split_data(n_train: int = N_TRAIN, n_eval: int | None = None, n_val: int = N_VAL) -> dict:
    """The E2 split: training subset, evaluation set and the tuning split of the subset, as
    ``ml.nn.data.Split`` s of flat 784-vectors.

    ``n_eval`` limits the evaluation set (``None``: all 60,000 other images)."""
    xtr, ytr, xte, yte = load_fashion_mnist()
    x_all, y_all = torch.cat([xtr, xte]), torch.cat([ytr, yte])
    x_fit, y_fit = x_all[:n_train].reshape(n_train, -1), y_all[:n_train]
    x_ev, y_ev = x_all[n_train:].reshape(len(x_all) - n_train, -1), y_all[n_train:]
    if n_eval is not None:
        x_ev, y_ev = x_ev[:n_eval], y_ev[:n_eval]
    cut = n_train - n_val
    return {
        "train": ml.nn.data.Split(x_fit, y_fit),
        "eval": ml.nn.data.Split(x_ev, y_ev),
        "tune_train": ml.nn.data.Split(x_fit[:cut], y_fit[:cut]),
        "tune_val": ml.nn.data.Split(x_fit[cut:], y_fit[cut:]),
    }


def train_run(
    method: Method,
    hyper: dict,
    train,
    test,
    epochs: int,
    seed: int,
    eval_epochs,
    model_fn=make_mlp,
    batch: int = BATCH,
    probe=None,
    probe_epochs=(),
) -> dict:
    """Train one model with ``ml.nn.train`` and score it on ``test`` after each epoch in
    ``eval_epochs`` (``ml.nn.evaluate``, from the loop's per-epoch callback).

    ``train`` and ``test`` are ``ml.nn.data.Split`` s. ``probe(model)``, if given, is called before
    training (if ``0 in probe_epochs``) and after each epoch in ``probe_epochs``; its results are
    stored under ``"probes"``.

    Returns a record with the curves (``epochs``, ``test_loss``, ``test_acc``, per-epoch
    ``train_loss`` / ``train_acc``: the loop's running means over the epoch's minibatches), the
    largest constraint residual seen (the loop reads it after every epoch), CoLA's rejected-step
    count and the wall time (probes included). A run whose training loss is not finite stops
    after that epoch (the loop does) and records ``diverged_at``.
    """
    model = model_fn(seed)
    before = [p.detach().clone() for p in model.parameters()]
    if method.init == "orthogonal":
        # the same weights o-CoLA constrains
        ml.optim.constrained_groups(model, "orthogonal", init=True)
    elif method.init != "default":
        raise ValueError(f"unknown init {method.init!r}")
    opt = build_optimizer(method.kind, model, seed, **hyper)
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
    eval_epochs, probe_epochs = set(eval_epochs), set(probe_epochs)
    circle = method.kind in CIRCLE_KINDS
    rec = {
        "method": method.key,
        "seed": seed,
        "hyper": hyper,
        "init_entries_changed": changed,
        "epochs": [],
        "test_loss": [],
        "test_acc": [],
        "train_loss": [],
        "train_acc": [],
    }
    if circle:
        rec["bounds"] = [{"epoch": 0, **circle_bounds(model, opt)}]

    def after_epoch(record: dict) -> None:
        epoch = record["epoch"]
        if not math.isfinite(record["train_loss"]):
            rec["diverged_at"] = epoch  # the loop stops after this epoch
            return
        if epoch in eval_epochs:
            scores = ml.nn.evaluate(model, test, batch_size=EVAL_BATCH)
            rec["epochs"].append(epoch)
            rec["test_loss"].append(scores["loss"])
            rec["test_acc"].append(scores["acc"])
            if circle:
                rec["bounds"].append({"epoch": epoch, **circle_bounds(model, opt)})
        if probe is not None and epoch in probe_epochs:
            rec["probes"].append({"epoch": epoch, **probe(model)})

    t0 = time.perf_counter()
    if probe is not None:
        rec["probes"] = [{"epoch": 0, **probe(model)}] if 0 in probe_epochs else []
    history = ml.nn.train(
        model, opt, train, epochs=epochs, batch_size=batch, progress=False, callback=after_epoch,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    rec["seconds"] = time.perf_counter() - t0
    rec["train_loss"] = [r["train_loss"] for r in history]
    rec["train_acc"] = [r["train_acc"] for r in history]
    # residual and rejections are None for optimizers without constrained parameters
    rec["max_residual"] = max((r["max_residual"] or 0.0 for r in history), default=0.0)
    rec["n_rejected"] = (history[-1]["n_rejected"] or 0) if history else 0
    if method.kind in ("cola-circle", "released"):  # the weights' bounds at the end
        weights = [(n, p.detach()) for n, p in model.named_parameters() if p.dim() >= 2]
        radii = [RADII[0]] + [RADII[1]] * (len(weights) - 1)
        rec["max_abs_weight"] = {n: float(w.abs().max()) for n, w in weights}
        # how active the constraint is: share of weights within 1% of their bound
        rec["frac_at_bound"] = {
            n: float((w.abs() >= 0.99 * r).float().mean()) for (n, w), r in zip(weights, radii)
        }
    rec.update(summarize(rec))
    return rec


#: optimizer kinds whose weights lie on circles (their bounds are recorded over training)
CIRCLE_KINDS = ("cola-circle", "cola-circle-all", "cola-od-circle", "released")
#: quantiles of the effective radius over the entries of a weight, recorded by circle_bounds
RADIUS_QUANTILES = (0.01, 0.1, 0.5, 0.9)


@torch.no_grad()
def circle_bounds(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Per circle-constrained parameter: how tight its bound is, and how much of it is used.

    For every parameter of a group with a ``radius`` ``r``: ``max_abs`` (the largest ``|w|``),
    ``at_bound`` (the share of entries with ``|w| >= 0.99 r``) and the effective radius
    ``rho = sqrt(w^2 + xi^2)`` relative to ``r``: its smallest value, its quantiles
    :data:`RADIUS_QUANTILES` and ``at_own_bound`` (the share of entries with
    ``|w| >= 0.99 rho``). The library's CoLA keeps ``rho = r`` (it renormalises), so for it only
    the first two are recorded; the released scheme's ``rho`` shrinks (its ``radii()``)."""
    radii = opt.radii() if isinstance(opt, ReleasedCircleCoLA) else None
    names = {id(p): n for n, p in model.named_parameters()}
    out, i = {}, 0
    for group in opt.param_groups:
        r = group.get("radius")
        if r is None or group.get("constraint", "circle") != "circle":
            continue
        for p in group["params"]:
            w = p.detach().abs()
            entry = {
                "max_abs": float(w.max()),
                "at_bound": float((w >= 0.99 * r).float().mean()),
            }
            if radii is not None and i < len(radii):
                rho = radii[i].flatten() / r
                levels = torch.tensor(RADIUS_QUANTILES, dtype=torch.float64)
                q = torch.quantile(rho.double(), levels)
                entry.update(
                    rho_min=float(rho.min()),
                    rho_quantiles=[float(v) for v in q],
                    at_own_bound=float((w.flatten() >= 0.99 * radii[i].flatten()).float().mean()),
                )
                i += 1
            out[names[id(p)]] = entry
    return out


def summarize(rec: dict) -> dict:
    """Final and best test loss/accuracy of one run, and the rise of the test loss above its
    minimum (the overfitting signal)."""
    tl, ta = np.asarray(rec["test_loss"]), np.asarray(rec["test_acc"])
    if tl.size == 0:
        return {}
    i = int(np.argmin(tl))
    last_epoch = rec["epochs"][-1]
    window = np.asarray(rec["epochs"]) > last_epoch - LAST
    return {
        # mean (and std over the evaluations) of the last LAST epochs, the steadier number
        "last_test_loss": float(tl[window].mean()),
        "last_test_loss_sd": float(tl[window].std()),
        "last_test_acc": float(ta[window].mean()),
        "last_n_evaluations": int(window.sum()),
        "final_test_loss": float(tl[-1]),
        "best_test_loss": float(tl[i]),
        "best_test_loss_epoch": rec["epochs"][i],
        "test_loss_rise": float(tl[-1] - tl[i]),
        "final_test_acc": float(ta[-1]),
        "best_test_acc": float(ta.max()),
        "final_train_loss": rec["train_loss"][-1],
        "final_train_acc": rec["train_acc"][-1],
    }


CRITERIA = {
    "best": "highest validation accuracy at any epoch (ties: lower validation loss)",
    "final": "highest validation accuracy after the last tuning epoch (ties: lower loss)",
    "last_loss": f"lowest mean validation loss over the last {LAST} tuning epochs",
}


def _values(grid) -> list[str]:
    """Grid values in a form that compares equal before and after a JSON round trip."""
    return [json.dumps(v) for v in grid]


def tune(
    method: Method,
    data: dict,
    epochs: int,
    seed: int,
    grid=None,
    model_fn=make_mlp,
    criterion: str = "best",
    reuse: list[dict] | None = None,
) -> dict:
    """Validation runs over the method's grid (or one reference run if it is not tuned).

    ``criterion``: ``"best"`` picks the value with the highest validation accuracy at any epoch
    (what early stopping would reach), ``"final"`` the highest at the last epoch (penalises
    unstable steps whose accuracy peaks and then falls), ``"last_loss"`` the lowest mean
    validation loss over the last :data:`LAST` epochs (the statistic the summary reports on
    the evaluation set). Returns ``{"grid": [...], "runs": [...],
    "chosen": value, "criterion": ...}``; each run has the best and final validation
    accuracy/loss and CoLA's rejected-step count. ``reuse``: runs of an earlier tuning (the
    same data, seed and horizon), kept for the values they cover instead of being run again.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    values = list(grid if grid is not None else method.grid) if method.tune else [None]
    runs = []
    earlier = {json.dumps(r["value"]): r for r in reuse or ()}
    for v in values:
        if json.dumps(v) in earlier:
            runs.append(earlier[json.dumps(v)])
            continue
        hyper = method.with_value(v) if method.tune else dict(method.hyper)
        rec = train_run(
            method,
            hyper,
            data["tune_train"],
            data["tune_val"],
            epochs,
            seed,
            range(1, epochs + 1),
            model_fn=model_fn,
        )
        acc, loss = np.asarray(rec["test_acc"]), np.asarray(rec["test_loss"])
        runs.append(
            {
                "value": v,
                "best_val_acc": float(acc.max()) if acc.size else float("nan"),
                "best_val_acc_epoch": rec["epochs"][int(acc.argmax())] if acc.size else None,
                "best_val_loss": float(loss.min()) if loss.size else float("nan"),
                "final_val_acc": float(acc[-1]) if acc.size else float("nan"),
                "final_val_loss": float(loss[-1]) if loss.size else float("nan"),
                "last_val_loss": float(loss[-LAST:].mean()) if loss.size else float("nan"),
                "diverged": "diverged_at" in rec,
                "n_rejected": rec["n_rejected"],
                "seconds": rec["seconds"],
            }
        )
    ok = [r for r in runs if not r["diverged"] and math.isfinite(r["best_val_acc"])] or runs
    if criterion == "last_loss":
        ok = [r for r in ok if math.isfinite(r["last_val_loss"])] or ok
        best = min(ok, key=lambda r: r["last_val_loss"])
    else:
        which = "best" if criterion == "best" else "final"
        best = max(ok, key=lambda r: (r[f"{which}_val_acc"], -r[f"{which}_val_loss"]))
    return {
        "parameter": method.tune,
        "grid": values,
        "runs": runs,
        "chosen": best["value"],
        "criterion": CRITERIA[criterion],
    }


# ---------------------------------------------------------------------------- aggregation


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _stat(values) -> dict:
    """Mean, sample std and standard error of the mean over seeds, and the number of seeds."""
    mean, std = _mean_std(values)
    n = len(values)
    return {"mean": mean, "std": std, "sem": std / math.sqrt(n) if n else math.nan, "n": n}


SUMMARY_KEYS = (
    "last_test_loss",
    "last_test_acc",
    "final_test_loss",
    "best_test_loss",
    "test_loss_rise",
    "final_test_acc",
    "best_test_acc",
    "final_train_loss",
    "final_train_acc",
)


def aggregate(runs: list[dict]) -> dict:
    """Mean, sample std and standard error over seeds of each summary number, and the mean
    curves (runs of one method share their evaluation epochs).

    A run that stopped on a non-finite training loss (``diverged_at``) is left out of the
    statistics and the curves and listed under ``diverged`` (seed and epoch), so that its early
    numbers do not pass for a result; if every run diverged, the statistics are over all of them.
    """
    finished = [r for r in runs if "diverged_at" not in r] or runs
    out = {k: _stat([r[k] for r in finished if k in r]) for k in SUMMARY_KEYS}
    out["diverged"] = [
        {"seed": r["seed"], "epoch": r["diverged_at"]} for r in runs if "diverged_at" in r
    ]
    n = min(len(r["test_loss"]) for r in finished)
    curves = {}
    for key in ("test_loss", "test_acc"):
        a = np.asarray([r[key][:n] for r in finished])
        curves[key] = {
            "mean": a.mean(0).tolist(),
            "std": a.std(0, ddof=min(1, len(a) - 1)).tolist(),
        }
    m = min(len(r["train_loss"]) for r in finished)
    for key in ("train_loss", "train_acc"):
        a = np.asarray([r[key][:m] for r in finished])
        curves[key] = {
            "mean": a.mean(0).tolist(),
            "std": a.std(0, ddof=min(1, len(a) - 1)).tolist(),
        }
    out["curves"] = {"epochs": finished[0]["epochs"][:n], **curves}
    out["max_residual"] = max(r["max_residual"] for r in runs)
    out["n_rejected"] = sum(r["n_rejected"] for r in runs)
    out["seconds_per_run"] = float(np.mean([r["seconds"] for r in finished]))
    return out


def _pm(stat: dict, fmt: str) -> str:
    """``mean ± std`` (just the mean for a single seed, which has no spread)."""
    if stat.get("n", 2) < 2:
        return f"{stat['mean']:{fmt}}"
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}"


def matched_train_loss(runs: dict) -> dict:
    """Test loss and accuracy of each method at a common training loss.

    A method that fits the training set more slowly also overfits later, so a flat test loss
    could just mean "not trained as far". Here every run is read at the first epoch where its
    (running-mean) training loss is at or below ``level``, the largest final training loss over
    all runs that finished (so every one of them gets there), with the test numbers linearly
    interpolated between evaluation epochs. Runs that stopped on a non-finite loss
    (``diverged_at``) are left out, as in [`aggregate`][].
    """
    kept = {k: [r for r in rs if "diverged_at" not in r] for k, rs in runs.items()}
    finals = [r["train_loss"][-1] for rs in kept.values() for r in rs]
    level = max(finals) if finals else math.inf
    out = {"level": level, "methods": {}}
    for key, rs in kept.items():
        eps, tls, tas = [], [], []
        for r in rs:
            first = next((i for i, v in enumerate(r["train_loss"]) if v <= level), None)
            if first is None:  # never trained that far: left out
                continue
            e = 1 + first
            eps.append(e)
            tls.append(float(np.interp(e, r["epochs"], r["test_loss"])))
            tas.append(float(np.interp(e, r["epochs"], r["test_acc"])))
        out["methods"][key] = {
            "epoch": _stat(eps),
            "test_loss": _stat(tls),
            "test_acc": _stat(tas),
        }
    return out


def _pse(stat: dict, fmt: str) -> str:
    """``mean ± standard error`` (just the mean for a single seed)."""
    if stat.get("n", 2) < 2:
        return f"{stat['mean']:{fmt}}"
    return f"{stat['mean']:{fmt}} ± {stat['sem']:{fmt}}"


def markdown_table(
    summary: dict,
    labels: dict,
    chosen: dict,
    n_seeds: int,
    epochs: int,
    matched: dict | None = None,
) -> str:
    """The E2 summary as a markdown table: the last-epochs means as mean ± standard error over
    seeds, the other columns as mean ± std over seeds; runs that diverged are named below."""
    head = (
        f"| method ({n_seeds} seeds, {epochs} epochs) | setting | test loss, last {LAST} "
        f"epochs (± se) | test acc, last {LAST} (± se) | final test loss | best test loss | "
        "rise (final − best) | final train loss |"
    )
    rows = [head, "|" + "---|" * 8]
    notes = []
    for key, s in summary.items():
        seeds = ""
        if s.get("diverged"):
            seeds = f" ({s['last_test_loss']['n']} of {n_seeds} seeds)"
            notes += [
                f"{labels[key]}: seed {d['seed']} stopped at epoch {d['epoch']} on a "
                "non-finite training loss and is left out of its row"
                for d in s["diverged"]
            ]
        rows.append(
            f"| {labels[key]}{seeds} | {chosen[key]} | {_pse(s['last_test_loss'], '.4f')} | "
            f"{_pse(s['last_test_acc'], '.4f')} | {_pm(s['final_test_loss'], '.4f')} | "
            f"{_pm(s['best_test_loss'], '.4f')} | {_pm(s['test_loss_rise'], '.4f')} | "
            f"{_pm(s['final_train_loss'], '.3f')} |"
        )
    if notes:
        rows += [""] + [f"- {n}." for n in notes]
    if matched:
        rows += [
            "",
            f"At a matched training loss of {matched['level']:.3f} (the first epoch each run "
            "gets there):",
            "",
            "| method | epoch | test loss | test acc |",
            "|---|---|---|---|",
        ]
        for key, m in matched["methods"].items():
            rows.append(
                f"| {labels[key]} | {_pm(m['epoch'], '.1f')} | {_pm(m['test_loss'], '.4f')} | "
                f"{_pm(m['test_acc'], '.4f')} |"
            )
    return "\n".join(rows)


def analyze(result: dict) -> dict:
    """(Re)compute ``summary``, ``matched_train_loss`` and ``table`` of a result from its runs."""
    runs, methods, meta = result["runs"], result["methods"], result["meta"]
    for rs in runs.values():
        for rec in rs:  # the per-run summary from its curves (older files lack some keys)
            rec.update(summarize(rec))
    result["summary"] = {k: aggregate(v) for k, v in runs.items()}
    result["matched_train_loss"] = matched_train_loss(runs)
    labels = {k: m["label"] for k, m in methods.items()}
    settings = {k: _setting_text(m["chosen"]) for k, m in methods.items()}
    result["table"] = markdown_table(
        result["summary"],
        labels,
        settings,
        meta["seeds"],
        meta["epochs"],
        result["matched_train_loss"],
    )
    return result


def _setting_text(hyper: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hyper.items())


# ---------------------------------------------------------------------------- plotting


def plot(summary: dict, labels: dict, path: Path, title: str) -> None:
    """Test loss, test accuracy and training loss vs epoch: mean over seeds, +-1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, (key, s) in enumerate(summary.items()):
        c = s["curves"]
        color = f"C{i}"
        ep = np.asarray(c["epochs"])
        for ax, name in zip(axes[:2], ("test_loss", "test_acc")):
            mu, sd = np.asarray(c[name]["mean"]), np.asarray(c[name]["std"])
            ax.plot(ep, mu, color=color, label=labels[key])
            ax.fill_between(ep, mu - sd, mu + sd, color=color, alpha=0.2, lw=0)
        mu, sd = np.asarray(c["train_loss"]["mean"]), np.asarray(c["train_loss"]["std"])
        et = np.arange(1, len(mu) + 1)
        axes[2].plot(et, mu, color=color, label=labels[key])
        axes[2].fill_between(et, np.maximum(mu - sd, 1e-8), mu + sd, color=color, alpha=0.2, lw=0)
    axes[0].set(xlabel="epoch", ylabel="test loss (cross-entropy)", title="test loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    axes[2].set(
        xlabel="epoch", ylabel="training loss (running mean)", yscale="log", title="training loss"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bounds(result: dict, path: Path, seed: int = 0) -> bool:
    """The circle constraints over training, one seed: per weight the share of entries at the
    bound (``|w| >= 0.99 r``) and, for the released scheme, the effective radius
    ``rho / r`` (median and the 10% and 1% quantiles over the entries). Returns whether there
    was anything to plot (runs without ``bounds`` are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {
        k: next((r for r in rs if r["seed"] == seed and r.get("bounds")), None)
        for k, rs in result["runs"].items()
    }
    runs = {k: r for k, r in runs.items() if r is not None}
    if not runs:
        return False
    names = list(runs[next(iter(runs))]["bounds"][0].keys() - {"epoch"})
    names = sorted(n for n in names if n.endswith("weight"))
    labels = {k: v["label"] for k, v in result["methods"].items()}
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for i, (key, rec) in enumerate(runs.items()):
        color = f"C{i}"
        ep = [b["epoch"] for b in rec["bounds"]]
        for j, name in enumerate(names):
            at = [b[name]["at_bound"] for b in rec["bounds"]]
            axes[0, j].plot(ep, at, color=color, label=labels[key])
            if "rho_min" in rec["bounds"][-1][name]:
                pts = [(b["epoch"], b[name]) for b in rec["bounds"] if "rho_quantiles" in b[name]]
                e = [p for p, _ in pts]
                q = np.asarray([b["rho_quantiles"] for _, b in pts])
                axes[1, j].plot(e, q[:, 2], color=color, label=f"{labels[key]}: median")
                axes[1, j].plot(e, q[:, 1], color=color, ls="--", label="10% quantile")
                axes[1, j].plot(e, q[:, 0], color=color, ls=":", label="1% quantile")
    for j, name in enumerate(names):
        axes[0, j].set(
            xlabel="epoch", ylabel="share of |w| >= 0.99 r", title=f"{name}: at the bound"
        )
        axes[1, j].set(
            xlabel="epoch", ylabel="rho / r", title=f"{name}: effective radius sqrt(w^2 + xi^2)"
        )
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=7)
        axes[1, j].legend(fontsize=7)
    fig.suptitle(f"E2, seed {seed}: the circle constraints over training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- driver


def run(
    quick: bool = False,
    seeds: int = 3,
    epochs: int = 50,
    tune_epochs: int | None = None,
    methods=None,
    verbose: bool = True,
    progress: Path | None = None,
) -> dict:
    """Tune, train every method for every seed, and return the JSON-ready result.

    ``progress``: a JSON file that holds every finished tuning and training run, rewritten after
    each; a run started again with the same file and the same settings (``quick``, ``epochs``,
    ``tune_epochs``) skips what it already holds, so a long experiment can be stopped and
    resumed (more seeds or methods can be added; other settings start the file afresh)."""
    t_start = time.perf_counter()
    methods = [m for m in METHODS if m.key in (methods or DEFAULT_METHODS)]
    if quick:
        data = split_data(n_train=512, n_eval=1_000, n_val=128)
    else:
        data = split_data()
    tune_epochs = tune_epochs or (1 if quick else max(1, (epochs + 2) // 3))
    log = print if verbose else (lambda *a, **k: None)
    done = _Progress(progress, {"quick": quick, "epochs": epochs, "tune_epochs": tune_epochs})

    tuning, chosen_hyper = {}, {}
    for m in methods:
        grid = QUICK_GRIDS.get(m.key) if quick else None
        if m.key in done.tuning:
            tuning[m.key] = done.tuning[m.key]
        else:
            t0 = time.perf_counter()
            horizon = epochs if m.tune_full else tune_epochs
            tuning[m.key] = tune(m, data, horizon, seed=1000, grid=grid, criterion=m.criterion)
            tuning[m.key]["seconds"] = time.perf_counter() - t0
            done.tuning[m.key] = tuning[m.key]
            done.save()
        v = tuning[m.key]["chosen"]
        if not quick and m.tune and _values(tuning[m.key]["grid"]) != _values(m.grid):
            # the grid was changed since the tuning ran: run only its new values
            t0 = time.perf_counter()
            horizon = epochs if m.tune_full else tune_epochs
            tuning[m.key] = tune(m, data, horizon, seed=1000, criterion=m.criterion,
                                 reuse=tuning[m.key]["runs"])  # fmt: skip
            tuning[m.key]["seconds"] = time.perf_counter() - t0
            if _values([tuning[m.key]["chosen"]]) != _values([v]):  # its final runs are stale
                for key in [k for k in done.runs if k.split("/")[0] == m.key]:
                    del done.runs[key]
            done.tuning[m.key] = tuning[m.key]
            done.save()
            v = tuning[m.key]["chosen"]
        chosen_hyper[m.key] = m.with_value(v) if m.tune else dict(m.hyper)
        log(
            f"[tune] {m.key}: "
            + ", ".join(
                f"{r['value']}: acc {r['best_val_acc']:.4f} loss {r['best_val_loss']:.4f}"
                for r in tuning[m.key]["runs"]
            )
            + f" -> {v} ({tuning[m.key]['seconds']:.0f} s)"
        )

    schedule = eval_schedule(epochs)
    runs = {m.key: [] for m in methods}
    for seed in range(seeds):
        for m in methods:
            key = f"{m.key}/{seed}"
            if key in done.runs:
                runs[m.key].append(done.runs[key])
                continue
            rec = train_run(
                m, chosen_hyper[m.key], data["train"], data["eval"], epochs, seed, schedule
            )
            runs[m.key].append(rec)
            done.runs[key] = rec
            done.save()
            log(
                f"[seed {seed}] {m.key}: final test loss {rec.get('final_test_loss', 'nan'):.4f} "
                f"(best {rec.get('best_test_loss', float('nan')):.4f} at epoch "
                f"{rec.get('best_test_loss_epoch')}), acc {rec.get('final_test_acc', 0):.4f}, "
                f"residual {rec['max_residual']:.1e}, {rec['seconds']:.0f} s"
            )

    result = {
        "meta": {
            "experiment": "E2: MLP 784-1000-10 (ReLU) on Fashion-MNIST, 10k training images",
            "quick": quick,
            "seeds": seeds,
            "epochs": epochs,
            "tune_epochs": tune_epochs,
            "batch": BATCH,
            "n_train": len(data["train"]),
            "n_eval": len(data["eval"]),
            "n_tune_train": len(data["tune_train"]),
            "n_tune_val": len(data["tune_val"]),
            "train_subset": "the first n_train images of the Fashion-MNIST training file",
            "eval_set": "the other training images followed by the 10,000 test images",
            "radii": RADII,
            "eval_epochs": schedule,
            "band": "mean +- 1 sample std over seeds",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
            "seconds": time.perf_counter() - t_start,
        },
        "methods": {
            m.key: {
                "label": m.label,
                "kind": m.kind,
                "fixed": m.hyper,
                "tuned": m.tune,
                "chosen": chosen_hyper[m.key],
            }
            for m in methods
        },
        "tuning": tuning,
        "runs": runs,
    }
    return analyze(result)


class _Progress:
    """The finished runs of an experiment, kept in a JSON file (see [`run`][]'s ``progress``)."""

    def __init__(self, path: Path | None, settings: dict):
        self.path, self.settings = path, settings
        self.tuning: dict = {}
        self.runs: dict = {}
        if path is not None and path.exists():
            held = json.loads(path.read_text())
            if held.get("settings") == settings:
                self.tuning, self.runs = held["tuning"], held["runs"]

    def save(self) -> None:
        if self.path is None:
            return
        doc = {"settings": self.settings, "tuning": self.tuning, "runs": self.runs}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.path)  # whole or not at all, should the run be stopped mid-write


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m validation.exp_e2 [--quick] [--seeds N] [--epochs E] ...``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run for the tests (seconds)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 3, quick 1)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 50, quick 2)")
    ap.add_argument(
        "--tune-epochs",
        type=int,
        default=None,
        help="epochs of each tuning run (default about epochs / 3, quick 1)",
    )
    ap.add_argument(
        "--method",
        action="append",
        choices=[m.key for m in METHODS],
        help="method (repeatable; default: all but cola_t)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument(
        "--reanalyze",
        action="store_true",
        help="recompute summary, table and plot from <out>/exp_e2.json without training",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep finished runs in <out>/exp_e2.progress.json and skip them when started again",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out / "quick" if args.quick else args.out
    if args.reanalyze:
        result = analyze(json.loads((out / "exp_e2.json").read_text()))
        seeds = result["meta"]["seeds"]
    else:
        seeds = args.seeds or (1 if args.quick else 3)
        epochs = args.epochs or (2 if args.quick else 50)
        out.mkdir(parents=True, exist_ok=True)
        result = run(
            progress=out / "exp_e2.progress.json" if args.resume else None,
            quick=args.quick,
            seeds=seeds,
            epochs=epochs,
            tune_epochs=args.tune_epochs,
            methods=args.method,
            verbose=not args.quick,
        )
    out.mkdir(parents=True, exist_ok=True)
    labels = {k: v["label"] for k, v in result["methods"].items()}
    meta = result["meta"]
    plot(
        result["summary"],
        labels,
        out / "exp_e2.png",
        f"E2: MLP 784-1000-10 on Fashion-MNIST, {meta['n_train']} training images, "
        f"evaluated on {meta['n_eval']}; mean ± 1 std over {seeds} seed(s)",
    )
    plot_bounds(result, out / "exp_e2_bounds.png")
    (out / "exp_e2.json").write_text(json.dumps(result, indent=1))
    if not args.quick:
        print(result["table"])
        print(f"wrote {out / 'exp_e2.json'} and {out / 'exp_e2.png'} ({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
