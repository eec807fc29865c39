"""A small, reusable training loop with per-epoch metrics, plus model and optimizer factories.

* :func:`mlp` and :func:`cnn` build the networks of the examples.
* :func:`make_optimizer` builds SGD, Adam or :class:`~manifold_langevin.optim.CoLA` by name with
  the paper's defaults (:data:`OPTIMIZERS`).
* :func:`train` runs epochs over in-memory :class:`~manifold_langevin.data.Split` s and returns
  the history: one record (a dict of floats) per epoch with the training loss/accuracy, the loss
  and accuracy of every evaluation split, timings, and for CoLA the largest constraint residual
  and the number of rejected updates. Losses and counts accumulate on the device and are read
  once per epoch: the loop itself never synchronises with the host inside an epoch.
* :func:`save_history` writes a history as JSON, CSV and a PNG of the curves.

Example:
    >>> import torch
    >>> from manifold_langevin import data
    >>> train_set, test_set = data.load("spiral", n_train=64, n_test=256, seed=0)
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = mlp([2, 32, 2], "tanh")
    >>> opt = make_optimizer("cola-circle", model, radius=1.0, seed=0)
    >>> hist = train(model, opt, train_set, {"test": test_set}, epochs=2, batch_size=16,
    ...              progress=False)
    >>> sorted(hist[-1])  # doctest: +NORMALIZE_WHITESPACE
    ['epoch', 'eval_seconds', 'lr', 'max_residual', 'n_rejected', 'seconds', 'test_acc',
     'test_loss', 'train_acc', 'train_loss']
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, batches

__all__ = [
    "ACTIVATIONS",
    "OPTIMIZERS",
    "cnn",
    "evaluate",
    "make_optimizer",
    "mlp",
    "plot_history",
    "save_history",
    "train",
]

#: activation names accepted by :func:`mlp` and :func:`cnn`
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def _activation(activation: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(activation, str):
        try:
            return ACTIVATIONS[activation.lower()]
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            ) from None
    return activation


def mlp(
    sizes: Sequence[int], activation: str | type[nn.Module] = "relu", *, bias: bool = True
) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    An activation follows every linear layer but the last (the output gives logits). The paper's
    Fashion-MNIST network (E2) is ``mlp([784, 1000, 10])``.

    Args:
        sizes: layer widths, input first (at least two).
        activation: a name from :data:`ACTIVATIONS` or an ``nn.Module`` class.
        bias: whether the linear layers have biases.

    Returns:
        an ``nn.Sequential`` of ``Linear`` and activation modules.

    Example:
        >>> mlp([4, 8, 3], "tanh")
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): Tanh()
          (2): Linear(in_features=8, out_features=3, bias=True)
        )
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two positive widths, got {sizes}")
    act = _activation(activation)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def cnn(
    in_channels: int = 1,
    n_classes: int = 10,
    image_size: int = 28,
    channels: Sequence[int] = (16, 32),
    hidden: int = 128,
    activation: str | type[nn.Module] = "relu",
) -> nn.Sequential:
    """A small convolutional classifier for ``(N, C, H, W)`` images (square, ``H = W``).

    Each entry of ``channels`` adds a 3 x 3 convolution (padding 1), the activation and a 2 x 2
    max-pool; then a hidden linear layer of ``hidden`` units and the output layer. Under the
    orthogonal constraint the kernels are ``(out, in * 9)`` matrices.

    Args:
        in_channels: input channels.
        n_classes: outputs (logits).
        image_size: input height and width.
        channels: output channels of the convolutions.
        hidden: width of the hidden linear layer.
        activation: a name from :data:`ACTIVATIONS` or an ``nn.Module`` class.

    Example:
        >>> net = cnn(image_size=8, channels=(4,), hidden=16)
        >>> tuple(net(torch.zeros(2, 1, 8, 8)).shape)
        (2, 10)
    """
    act = _activation(activation)
    layers: list[nn.Module] = []
    size, c_in = int(image_size), int(in_channels)
    for c in channels:
        if size < 2:
            raise ValueError(f"image_size {image_size} is too small for {len(channels)} poolings")
        layers += [nn.Conv2d(c_in, int(c), 3, padding=1), act(), nn.MaxPool2d(2)]
        size, c_in = size // 2, int(c)
    layers += [nn.Flatten(), nn.Linear(c_in * size * size, hidden), act()]
    layers.append(nn.Linear(hidden, n_classes))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ optimizers

#: ``name -> defaults`` of :func:`make_optimizer`. CoLA's ``lr`` is the Langevin step ``h``
#: (see :mod:`manifold_langevin.optim.cola`). ``cola-circle`` is the paper's E2 setting
#: (``h = 0.3, gamma = 1, r0 = 0.05, r1 = 0.1``); ``cola-orthogonal`` its E1 setting (``h = 0.1``,
#: momentum factor 0.9, i.e. ``gamma = -log(0.9)/0.1 = 1.054``). The overdamped (``-od``)
#: defaults ``h = 0.1`` are ours (at ``T = 0`` the unconstrained one is SGD with ``lr = h``).
OPTIMIZERS: dict[str, dict] = {
    "sgd": {"lr": 0.1, "momentum": 0.9},
    "adam": {"lr": 1e-3},
    "cola": {"lr": 0.3, "friction": 1.0, "scheme": "ud", "constraint": None},
    "cola-od": {"lr": 0.1, "scheme": "od", "constraint": None},
    "cola-circle": {"lr": 0.3, "friction": 1.0, "scheme": "ud", "constraint": "circle"},
    "cola-od-circle": {"lr": 0.1, "scheme": "od", "constraint": "circle"},
    "cola-orthogonal": {
        "lr": 0.1,
        "friction": -math.log(0.9) / 0.1,
        "scheme": "ud",
        "constraint": "orthogonal",
    },
    "cola-od-orthogonal": {"lr": 0.1, "scheme": "od", "constraint": "orthogonal"},
}


def make_optimizer(
    name: str,
    model: nn.Module,
    lr: float | None = None,
    *,
    friction: float | None = None,
    temperature: float = 0.0,
    momentum: float | None = None,
    weight_decay: float = 0.0,
    radius: float | tuple[float, float] | None = None,
    seed: int | None = None,
    **options,
) -> torch.optim.Optimizer:
    """An optimizer for ``model`` by name, with the defaults of :data:`OPTIMIZERS`.

    Constrained CoLA variants build their param groups with
    :func:`~manifold_langevin.optim.constrained_groups`, which also puts the weights on the
    constraint set (circle: clipped into ``[-r, r]``; orthogonal: QR). Build the optimizer after
    moving the model to its device: when the parameters are on an accelerator, CoLA runs with
    ``on_nonfinite="mask"`` (unless ``options`` say otherwise) so that a step never synchronises
    with the host (a non-finite update is rejected entry by entry and counted in ``n_rejected``;
    :func:`train` stops when an epoch's loss is not finite). On the CPU a host read costs nothing
    while the masking passes do (measured: a circle step of a 64-256-10 MLP takes 1.1 ms masked
    against 0.65 ms), so there CoLA keeps its default ``"raise"``.

    Args:
        name: ``"sgd"`` (momentum), ``"adam"``, ``"cola"`` (underdamped, unconstrained),
            ``"cola-od"`` (overdamped, unconstrained: SGD at ``temperature=0``, SGLD above),
            ``"cola-circle"``, ``"cola-orthogonal"``, ``"cola-od-circle"``,
            ``"cola-od-orthogonal"``.
        model: the network (its weights are modified by the constrained initialisation).
        lr: SGD/Adam learning rate, or CoLA's step ``h`` (default from :data:`OPTIMIZERS`).
        friction: CoLA's ``gamma`` (underdamped schemes).
        temperature: CoLA's ``tau`` (``0``: deterministic); must be 0 for SGD and Adam.
        momentum: SGD's momentum (default 0.9).
        weight_decay: SGD/Adam weight decay (CoLA has none: use a constraint).
        radius: circle radii, one float or ``(r0, r1)`` for the first / other layers (default
            the paper's ``(0.05, 0.1)``).
        seed: seed of CoLA's noise generators.
        **options: further keyword arguments of the optimizer class.

    Returns:
        a ``torch.optim.Optimizer``.

    Example:
        >>> net = mlp([4, 8, 2])
        >>> opt = make_optimizer("cola-circle", net, seed=0)
        >>> [(g["constraint"], g.get("radius"), g["lr"]) for g in opt.param_groups]
        [('circle', 0.05, 0.3), ('circle', 0.1, 0.3), (None, None, 0.3)]
    """
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    spec = dict(OPTIMIZERS[key])
    default_lr = spec.pop("lr")
    lr = default_lr if lr is None else float(lr)
    if key in ("sgd", "adam"):
        if temperature:
            raise ValueError(f"{name} has no temperature; use a CoLA optimizer for SGLD")
        if friction is not None or radius is not None:
            raise ValueError(f"friction and radius apply to CoLA, not {name}")
        if key == "sgd":
            mu = spec["momentum"] if momentum is None else momentum
            return torch.optim.SGD(
                model.parameters(), lr=lr, momentum=mu, weight_decay=weight_decay, **options
            )
        if momentum is not None:
            raise ValueError("momentum applies to sgd only")
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **options)

    from .optim import CoLA, constrained_groups

    if weight_decay:
        raise ValueError("CoLA has no weight decay; constrain the weights instead")
    if momentum is not None:
        raise ValueError("CoLA has no momentum argument; set friction (mu = exp(-friction * lr))")
    constraint = spec.pop("constraint")
    if constraint is None and radius is not None:
        raise ValueError(f"radius applies to the circle constraint, not {name}")
    if friction is not None:
        spec["friction"] = float(friction)
    if _model_device(model).type != "cpu":
        options.setdefault("on_nonfinite", "mask")
    if constraint is None:
        params = model.parameters()
    else:
        params = constrained_groups(model, constraint, radius)
    return CoLA(params, lr=lr, temperature=temperature, seed=seed, **spec, **options)


# -------------------------------------------------------------------------------- training


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _eval_sums(model, split: Split, loss_fn, batch_size: int) -> torch.Tensor:
    """``[sum of losses, number correct]`` on the device (no host read)."""
    total = torch.zeros(2, dtype=torch.float64, device=split.y.device)
    for x, y in batches(split, batch_size, shuffle=False):
        out = model(x)
        total[0] += loss_fn(out, y).double() * y.shape[0]
        total[1] += (out.argmax(dim=1) == y).sum()
    return total


def evaluate(
    model: nn.Module,
    split: Split,
    loss_fn: Callable = F.cross_entropy,
    batch_size: int = 4096,
) -> dict[str, float]:
    """Mean loss and accuracy of a classifier on a split (eval mode, no gradients).

    Args:
        model: maps a batch of inputs to logits ``(B, n_classes)``.
        split: the examples, on the model's device.
        loss_fn: ``loss_fn(logits, labels)``, a mean over the batch.
        batch_size: examples per forward pass.

    Returns:
        ``{"loss": ..., "acc": ...}``.
    """
    was_training = model.training
    model.eval()
    try:
        loss, correct = _eval_sums(model, split, loss_fn, batch_size).tolist()
    finally:
        model.train(was_training)
    n = max(len(split), 1)
    return {"loss": loss / n, "acc": correct / n}


def _monitor(optimizer) -> dict[str, float | None]:
    """CoLA's largest constraint residual and rejected-update count (``None`` otherwise)."""
    out: dict[str, float | None] = {"max_residual": None, "n_rejected": None}
    residuals = getattr(optimizer, "residuals", None)
    if callable(residuals):
        values = residuals().values()
        out["max_residual"] = max(values) if values else None
    n_rejected = getattr(optimizer, "n_rejected", None)
    if callable(n_rejected):
        out["n_rejected"] = n_rejected()
    return out


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_split: Split,
    eval_splits: Mapping[str, Split] | None = None,
    epochs: int = 1,
    batch_size: int = 128,
    loss_fn: Callable = F.cross_entropy,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    *,
    scheduler=None,
    eval_batch_size: int = 4096,
    callback: Callable[[dict], None] | None = None,
    start_epoch: int = 0,
) -> list[dict]:
    """Train a classifier for ``epochs`` passes over ``train_split``; returns per-epoch records.

    Each step is ``zero_grad``, forward, ``loss_fn``, ``backward``, ``optimizer.step()``. The
    training loss and accuracy are the running averages over the epoch's minibatches (with the
    weights as they were at each batch); every split of ``eval_splits`` is evaluated after the
    epoch in eval mode. Sums stay on the device and are read once per epoch. Training stops
    early (after recording the epoch) when the epoch's training loss is not finite.

    Args:
        model: maps a batch of inputs to logits ``(B, n_classes)``.
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters (create it after
            moving the model to ``device``, or before its first step).
        train_split: training examples (moved to ``device`` here).
        eval_splits: ``name -> split`` evaluated after every epoch (e.g. ``{"test": test}``).
        epochs: number of passes.
        batch_size: training minibatch size (the last batch of an epoch may be smaller).
        loss_fn: ``loss_fn(logits, labels)``, a mean over the batch (default cross-entropy).
        device: where to train (default: the model's device; the model is moved if needed).
        generator: generator of the shuffles (``None``: torch's global one).
        progress: show a tqdm bar over the batches (metrics updated once per epoch).
        scheduler: optional learning-rate scheduler, stepped after every epoch.
        eval_batch_size: examples per forward pass in evaluation.
        callback: called with each epoch's record (after the scheduler's step): the place to
            write a checkpoint (see :mod:`manifold_langevin.checkpoint`).
        start_epoch: epochs already done (when resuming from a checkpoint): runs epochs
            ``start_epoch + 1 .. epochs``. Restore the model, the optimizer, the scheduler and
            ``generator`` first; the result then equals the uninterrupted run's last records.

    Returns:
        one dict per epoch run: ``epoch`` (1-based, from ``start_epoch + 1``), ``train_loss``,
        ``train_acc``, ``<name>_loss`` and ``<name>_acc`` for every evaluation split, ``lr`` (of
        the first param group), ``seconds`` (training time of the epoch), ``eval_seconds``, and,
        when the optimizer has ``residuals()`` / ``n_rejected()`` (CoLA), ``max_residual``
        (largest constraint residual over the constrained parameters, ``None`` if there are
        none) and ``n_rejected`` (cumulative).
    """
    from tqdm.auto import tqdm

    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    if not 0 <= start_epoch <= epochs:
        raise ValueError(f"start_epoch must be in [0, epochs={epochs}], got {start_epoch}")
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    train_split = train_split.to(device)
    evals = {name: s.to(device) for name, s in (eval_splits or {}).items()}
    for name in evals:
        if name == "train":
            raise ValueError("'train' is reserved for the running training metrics")
    n_batches = math.ceil(len(train_split) / batch_size)
    history: list[dict] = []
    total = (epochs - start_epoch) * n_batches
    bar = tqdm(total=total, disable=not progress, unit="batch", leave=False)
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            record = _train_epoch(
                model, optimizer, train_split, evals, batch_size, loss_fn, generator, bar,
                eval_batch_size,
            )  # fmt: skip
            record = {"epoch": epoch, **record, **_monitor(optimizer)}
            if scheduler is not None:
                scheduler.step()
            history.append(record)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k.endswith(("_loss", "_acc"))},
                refresh=True,
            )
            if callback is not None:
                callback(record)
            if not math.isfinite(record["train_loss"]):
                break
    finally:
        bar.close()
    return history


def _train_epoch(model, optimizer, split, evals, batch_size, loss_fn, generator, bar, eval_bs):
    lr = float(optimizer.param_groups[0]["lr"])
    model.train()
    start = time.perf_counter()
    sums = torch.zeros(2, dtype=torch.float64, device=split.y.device)
    for x, y in batches(split, batch_size, generator):
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sums[0] += loss.detach().double() * y.shape[0]
            sums[1] += (out.argmax(dim=1) == y).sum()
        bar.update(1)
    train_loss, train_correct = sums.tolist()  # the epoch's one host read (waits for the device)
    seconds = time.perf_counter() - start
    n = max(len(split), 1)
    record = {"train_loss": train_loss / n, "train_acc": train_correct / n}
    start = time.perf_counter()
    model.eval()
    if evals:
        totals = torch.stack([_eval_sums(model, s, loss_fn, eval_bs) for s in evals.values()])
        for (name, s), (loss_sum, correct) in zip(evals.items(), totals.tolist()):
            record[f"{name}_loss"] = loss_sum / max(len(s), 1)
            record[f"{name}_acc"] = correct / max(len(s), 1)
    model.train()
    record.update(lr=lr, seconds=seconds, eval_seconds=time.perf_counter() - start)
    return record


# -------------------------------------------------------------------------------- output


def save_history(
    history: Sequence[Mapping],
    out: str | Path,
    *,
    meta: Mapping | None = None,
    stem: str = "history",
    title: str | None = None,
) -> dict[str, Path]:
    """Write a training history as ``<stem>.json``, ``<stem>.csv`` and ``<stem>.png`` in ``out``.

    Args:
        history: records from :func:`train`.
        out: output folder (created).
        meta: JSON-serialisable run description, stored next to the epochs in the JSON file.
        stem: file name without suffix.
        title: plot title.

    Returns:
        ``{"json": path, "csv": path, "png": path}``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{stem}.{k}" for k in ("json", "csv", "png")}
    payload = {"meta": dict(meta or {}), "epochs": [dict(r) for r in history]}
    paths["json"].write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    columns = _columns(history)
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for r in history:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    plot_history(history, paths["png"], title=title)
    return paths


def _jsonable(obj):
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _columns(history: Iterable[Mapping]) -> list[str]:
    cols: list[str] = []
    for r in history:
        cols += [k for k in r if k not in cols]
    return cols


def plot_history(history: Sequence[Mapping], path: str | Path, title: str | None = None) -> Path:
    """Plot the loss and accuracy curves of a history (one line per split) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = _columns(history)
    splits = [c[: -len("_loss")] for c in cols if c.endswith("_loss")]
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for s in splits:
            ax.plot(epochs, [r.get(f"{s}_{metric}") for r in history], label=s, marker=".")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
