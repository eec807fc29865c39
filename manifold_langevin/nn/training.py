"""A small, reusable training loop with per-epoch metrics.

[`train`][manifold_langevin.nn.training.train] runs epochs over in-memory
[`Split`][manifold_langevin.nn.data.Split]s and returns the history: one record (a dict of
floats) per epoch with the training loss/accuracy, the loss and accuracy of every evaluation
split, timings, and for CoLA the largest constraint residual and the number of rejected updates.
Losses and counts accumulate on the device and are read once per epoch: the loop itself never
synchronises with the host inside an epoch.
[`save_history`][manifold_langevin.nn.training.save_history] writes a history as JSON, CSV and a
PNG of the curves. The networks come from [`models`][manifold_langevin.nn.models], the
optimizers from [`optimizers`][manifold_langevin.nn.optimizers].

Examples:
    >>> import torch
    >>> from manifold_langevin.nn import data, make_optimizer, mlp
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
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, batches
from .models import model_device

__all__ = ["evaluate", "plot_history", "save_history", "train"]

# -------------------------------------------------------------------------------- training


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
            write a checkpoint (see
            [`manifold_langevin.nn.checkpoint`][manifold_langevin.nn.checkpoint]).
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
    device = model_device(model) if device is None else torch.device(device)
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
        history: records from [`train`][].
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
