"""``manifold-langevin train``: train a classifier with CoLA, SGD or Adam and record the curves.

Wire it into a parser with [`add_train_parser`][] (it sets ``func=run_train``)::

    sub = ap.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = ap.parse_args()
    status = args.func(args)

Writes ``history.json`` (run configuration + one record per epoch), ``history.csv`` and
``history.png`` (loss and accuracy curves) to ``--out`` (default
``runs/<dataset>-<constraint>-<seed>``). The Fashion-MNIST default is the paper's E2 set-up:
an MLP 784-1000-10 trained on the first 10,000 training images with c-CoLA-ud (``h = 0.3``,
``gamma = 1``, ``r0 = 0.05``, ``r1 = 0.1``, ``tau = 0``, batch 128, 400 epochs), evaluated on
the official test set (``test``), on the other 50,000 training images (``rest``) and on both
together (``heldout``, the paper's 60,000-image evaluation set).

Checkpoints: ``--checkpoint PATH`` writes the whole training state (model, optimizer with CoLA's
noise generators, the shuffle generator and torch's global generator, the epoch counter, the
history so far) every ``--checkpoint-every N`` epochs (default 1) and after the last epoch, each
time atomically ([`save_atomic`][manifold_langevin.nn.checkpoint.save_atomic]: a killed run leaves
the previous checkpoint intact). ``--resume`` continues from it: on the same device, dtype and
thread count the final parameters and history equal those of an uninterrupted run bit for bit (only
the timings differ). Without ``--checkpoint``, ``--resume`` and ``--checkpoint-every`` use
``OUT/checkpoint.pt``. ``--resume`` when the checkpoint does not exist yet starts from scratch
(with a message), so a preemptible job can be relaunched with the same command line; an existing
checkpoint without ``--resume`` is an error (it is never overwritten by a fresh run). A
checkpoint of another configuration (dataset, constraint, optimizer, hyperparameters, model
shape, sizes, seed or dtype) is refused with a
[`CheckpointError`][manifold_langevin.errors.CheckpointError] naming each difference; ``--epochs``
may differ, so a finished run can be extended.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..nn import data
from ..nn.checkpoint import load_checkpoint, save_atomic
from ..nn.models import cnn, mlp
from ..nn.optimizers import OPTIMIZERS, make_optimizer
from ..nn.training import save_history, train
from .args import (
    device,
    int_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    radii,
)

__all__ = ["DATASET_DEFAULTS", "add_train_parser", "optimizer_name", "run_train"]

#: per-dataset defaults: hidden widths, epochs, batch size, training-set size (None: all);
#: ``quick`` overrides them for ``--quick`` (a smoke run, seconds on 2 CPU cores)
DATASET_DEFAULTS = {
    "fashion-mnist": {
        "hidden": (1000,),
        "epochs": 400,
        "batch_size": 128,
        "train_size": 10_000,
        "quick": {"hidden": (128,), "epochs": 2, "train_size": 2_000, "eval_size": 2_000},
    },
    "digits": {
        "hidden": (256,),
        "epochs": 50,
        "batch_size": 64,
        "train_size": None,
        "quick": {"epochs": 3},
    },
    "spiral": {
        "hidden": (64, 64),
        "epochs": 500,
        "batch_size": 20,
        "train_size": 100,
        "quick": {"epochs": 20},
    },
}
_CONSTRAINTS = ("circle", "orthogonal", "none")
_OPTIMIZERS = ("cola", "cola-od", "sgd", "adam")


def optimizer_name(optimizer: str, constraint: str) -> str:
    """The [`make_optimizer`][manifold_langevin.nn.optimizers.make_optimizer] name for a (method,
    constraint) pair, e.g. ``("cola", "circle") -> "cola-circle"``; SGD and Adam need ``"none"``.

    Examples:
        >>> optimizer_name("cola-od", "orthogonal"), optimizer_name("sgd", "none")
        ('cola-od-orthogonal', 'sgd')
    """
    if optimizer in ("sgd", "adam"):
        if constraint != "none":
            raise ValueError(
                f"--optimizer {optimizer} takes no constraint (got --constraint {constraint}); "
                "use --optimizer cola or cola-od for constrained training"
            )
        return optimizer
    name = optimizer if constraint == "none" else f"{optimizer}-{constraint}"
    if name not in OPTIMIZERS:
        raise ValueError(f"no optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    return name


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to an ``argparse`` subparsers object; returns its parser.

    The parser's ``func`` default is [`run_train`][].
    """
    p = subparsers.add_parser(
        "train",
        help="train a classifier (CoLA, SGD or Adam) and write its loss/accuracy curves",
        description=(
            "Train an MLP (or a small CNN) on Fashion-MNIST, sklearn's digits or a 2-D spiral "
            "and write per-epoch metrics as JSON and CSV plus a PNG of the curves. Defaults for "
            "Fashion-MNIST follow the paper's E2 (784-1000-10 MLP, 10,000 training images, "
            "c-CoLA-ud with h = 0.3, gamma = 1, r0 = 0.05, r1 = 0.1, batch 128, 400 epochs)."
        ),
    )
    p.add_argument("--dataset", choices=data.DATASETS, default="fashion-mnist")
    p.add_argument("--constraint", choices=_CONSTRAINTS, default="circle")
    p.add_argument(
        "--optimizer", choices=_OPTIMIZERS, default="cola",
        help="cola: underdamped CoLA; cola-od: overdamped (SGLD when --temperature > 0)",
    )  # fmt: skip
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--hidden", type=int_list, help="hidden widths, e.g. 1000 or 64,64")
    p.add_argument("--activation", default="relu")
    p.add_argument("--epochs", type=positive_int, help="passes over the training set")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="learning rate (CoLA: the step h)")
    p.add_argument("--friction", type=non_negative_float, help="CoLA friction gamma (underdamped)")
    p.add_argument(
        "--temperature", type=non_negative_float, default=0.0, help="CoLA temperature tau"
    )
    p.add_argument("--momentum", type=non_negative_float, help="SGD momentum (default 0.9)")
    p.add_argument(
        "--weight-decay", type=non_negative_float, default=0.0, help="SGD/Adam weight decay"
    )
    p.add_argument("--radius", type=radii, help="circle radii: r or r0,r1 (default 0.05,0.1)")
    p.add_argument("--train-size", type=positive_int, help="training examples used (first N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--data-root", type=Path, help="folder of the Fashion-MNIST IDX files")
    p.add_argument(
        "--threads", type=non_negative_int,
        help="torch CPU threads (0: torch's default; default 1 with --quick, whose small models "
        "lose more to the thread pool's barriers than they gain, else torch's default)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default runs/DATASET-CONSTRAINT-SEED)")
    p.add_argument("--quick", action="store_true", help="smoke run: seconds on 2 CPU cores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--checkpoint", type=Path,
        help="checkpoint file, written atomically (default OUT/checkpoint.pt when --resume or "
        "--checkpoint-every is given; no checkpoints otherwise)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-every", type=positive_int, metavar="N",
        help="epochs between checkpoints (default 1; the last epoch is always saved)",
    )  # fmt: skip
    p.add_argument(
        "--resume", action="store_true",
        help="continue from the checkpoint (bit-identical to an uninterrupted run); starts from "
        "scratch, with a message, when it does not exist yet",
    )  # fmt: skip
    p.set_defaults(func=run_train)
    return p


def _splits(args, cfg: dict, quick: dict):
    """``(train, {name: eval split})`` for the chosen dataset."""
    name = args.dataset
    if name == "fashion-mnist":
        train_set, test_set = data.fashion_mnist(args.data_root, flatten=args.model == "mlp")
    elif name == "digits":
        train_set, test_set = data.digits(seed=0, flatten=args.model == "mlp")
    else:
        if args.model != "mlp":
            raise ValueError("the spiral has 2-D points: use --model mlp")
        n = cfg["train_size"] if args.train_size is None else args.train_size
        train_set, test_set = data.spirals(n_train=n, n_test=10_000, noise=0.1, seed=args.seed)
        return train_set, {"test": test_set}
    size = args.train_size if args.train_size is not None else cfg["train_size"]
    train_set, rest = data.take(train_set, len(train_set) if size is None else size)
    eval_size = quick.get("eval_size")
    if eval_size is not None:  # quick: evaluate on a slice
        rest, test_set = rest.subset(slice(0, eval_size)), test_set.subset(slice(0, eval_size))
    evals = {"test": test_set}
    if len(rest):
        evals["rest"] = rest
    return train_set, evals


def _model(args, cfg: dict, train_set: data.Split, n_classes: int) -> torch.nn.Module:
    hidden = args.hidden or cfg["hidden"]
    if args.model == "cnn":
        if train_set.x.dim() != 4:
            raise ValueError("--model cnn needs image data")
        c, size = train_set.x.shape[1], train_set.x.shape[-1]
        return cnn(c, n_classes, size, hidden=hidden[-1], activation=args.activation)
    return mlp([train_set.x.shape[1], *hidden, n_classes], args.activation)


def _add_heldout(history: list[dict], n_test: int, n_rest: int) -> None:
    """The paper's evaluation set (rest of the training images + test) as a weighted mean."""
    n = n_test + n_rest
    for r in history:
        for m in ("loss", "acc"):
            r[f"heldout_{m}"] = (n_test * r[f"test_{m}"] + n_rest * r[f"rest_{m}"]) / n


#: what a ``train`` checkpoint holds: ``kind`` and ``format`` identify it
_CHECKPOINT_KIND = "manifold-langevin train"
_CHECKPOINT_FORMAT = 1
#: the hyperparameters of a param group that a resumed run must share with its checkpoint
#: (loading an optimizer's state dict would silently replace them)
_GROUP_KEYS = ("lr", "friction", "temperature", "momentum", "weight_decay", "scheme", "radius")


def _checkpoint_path(args, out: Path) -> Path | None:
    if args.checkpoint is not None:
        return args.checkpoint
    if args.resume or args.checkpoint_every is not None:
        return out / "checkpoint.pt"
    return None


def _run_config(args, name, model, optimizer, train_set, evals, hidden, batch_size) -> dict:
    """Everything a checkpoint must share with the run that resumes from it, flat and named."""
    config = {
        "dataset": args.dataset,
        "constraint": args.constraint,
        "optimizer": name,
        "model": args.model,
        "hidden": tuple(hidden),
        "activation": args.activation,
        "train_size": len(train_set),
        "batch_size": batch_size,
        "seed": args.seed,
        "dtype": args.dtype,
    }
    config.update({f"{k} size": len(s) for k, s in evals.items()})
    for i, g in enumerate(optimizer.param_groups):
        config.update({f"group {i} {k}": g[k] for k in _GROUP_KEYS if k in g})
    config.update({f"shape of {k}": tuple(v.shape) for k, v in model.state_dict().items()})
    return config


def _check_config(path: Path, saved: dict, config: dict) -> None:
    def show(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else "absent"

    diffs = [
        f"{k}: {show(config, k)} here, {show(saved, k)} in the checkpoint"
        for k in [*config, *(k for k in saved if k not in config)]
        if k not in config or k not in saved or config[k] != saved[k]
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was written by a different configuration; resume with the "
            "settings it was written with (or start a new run elsewhere):\n  " + "\n  ".join(diffs)
        )


def _resume(path: Path, config, model, optimizer, generator, epochs: int) -> dict:
    """Restore the training state from ``path`` (checked against ``config``); returns it."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != _CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a checkpoint of `manifold-langevin train`")
    if ckpt.get("format") != _CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {ckpt.get('format')!r}; this version reads format "
            f"{_CHECKPOINT_FORMAT}"
        )
    _check_config(path, ckpt["config"], config)
    if ckpt["epoch"] > epochs:
        raise CheckpointError(
            f"{path} holds {ckpt['epoch']} epochs, more than --epochs {epochs}; pass --epochs "
            f"{ckpt['epoch']} or more"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    generator.set_state(ckpt["shuffle_generator"])
    torch.set_rng_state(ckpt["torch_rng"])
    return ckpt


def run_train(args: argparse.Namespace) -> int:
    """Run the ``train`` subcommand; returns 0, or 1 when the training loss became non-finite."""
    cfg = dict(DATASET_DEFAULTS[args.dataset])
    quick = cfg.pop("quick") if args.quick else {}
    cfg.update({k: v for k, v in quick.items() if k != "eval_size"})
    name = optimizer_name(args.optimizer, args.constraint)
    threads = args.threads if args.threads is not None else (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)

    train_set, evals = _splits(args, cfg, quick)
    n_classes = max(train_set.n_classes, *(s.n_classes for s in evals.values()))
    torch.manual_seed(args.seed)
    model = _model(args, cfg, train_set, n_classes).to(device=device, dtype=dtype)
    optimizer = make_optimizer(
        name, model, args.lr, friction=args.friction, temperature=args.temperature,
        momentum=args.momentum, weight_decay=args.weight_decay, radius=args.radius,
        seed=args.seed,
    )  # fmt: skip
    epochs = cfg["epochs"] if args.epochs is None else args.epochs
    batch_size = cfg["batch_size"] if args.batch_size is None else args.batch_size
    out = args.out or Path("runs") / f"{args.dataset}-{args.constraint}-{args.seed}"
    generator = torch.Generator().manual_seed(args.seed)

    ckpt_path = _checkpoint_path(args, out)
    every = args.checkpoint_every or 1
    config = _run_config(
        args, name, model, optimizer, train_set, evals, args.hidden or cfg["hidden"], batch_size
    )
    history: list[dict] = []
    done, last, seconds_before = 0, epochs, 0.0
    if ckpt_path is not None and ckpt_path.exists():
        if not args.resume:
            raise CheckpointError(
                f"checkpoint {ckpt_path} exists: pass --resume to continue from it, or remove it "
                "(or choose another --checkpoint / --out) to start again"
            )
        ckpt = _resume(ckpt_path, config, model, optimizer, generator, epochs)
        history, done, seconds_before = ckpt["history"], ckpt["epoch"], ckpt["seconds"]
        print(f"resuming from {ckpt_path} after epoch {done}")
        if history and not math.isfinite(history[-1]["train_loss"]):
            # as the uninterrupted run, which stopped there
            print("the checkpoint's last epoch had a non-finite loss: not training further")
            last = done
    elif args.resume:
        print(f"no checkpoint at {ckpt_path} yet: starting from scratch")

    start = time.perf_counter()

    def record(rec: dict) -> None:
        history.append(rec)
        epoch = rec["epoch"]
        if ckpt_path is None:
            return
        if epoch % every == 0 or epoch == last or not math.isfinite(rec["train_loss"]):
            state = {
                "kind": _CHECKPOINT_KIND,
                "format": _CHECKPOINT_FORMAT,
                "config": config,
                "epoch": epoch,
                "history": history,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "shuffle_generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "seconds": seconds_before + time.perf_counter() - start,
            }
            save_atomic(state, ckpt_path)

    train(
        model, optimizer, train_set.to(device, dtype),
        {k: s.to(device, dtype) for k, s in evals.items()},
        epochs=last, batch_size=batch_size, generator=generator,
        progress=not args.no_progress, callback=record, start_epoch=done,
    )  # fmt: skip
    if "rest" in evals:
        _add_heldout(history, len(evals["test"]), len(evals["rest"]))
    group = optimizer.param_groups[0]
    meta = {
        "dataset": args.dataset,
        "constraint": args.constraint,
        "optimizer": name,
        "hyperparameters": {
            k: group[k]
            for k in ("lr", "friction", "temperature", "momentum", "weight_decay", "scheme")
            if k in group
        },
        "radii": [g["radius"] for g in optimizer.param_groups if g.get("radius") is not None],
        "model": str(model),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_size": len(train_set),
        "eval_sizes": {k: len(s) for k, s in evals.items()},
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": args.seed,
        "device": str(device),
        "dtype": args.dtype,
        "quick": bool(args.quick),
        "threads": torch.get_num_threads(),
        "seconds": seconds_before + time.perf_counter() - start,
        "resumed_from_epoch": done if done else None,
        "checkpoint": None if ckpt_path is None else str(ckpt_path),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    title = f"{args.dataset}: {name} (seed {args.seed})"
    paths = save_history(history, out, meta=meta, title=title)
    last = history[-1] if history else {}
    summary = ", ".join(
        f"{k} {v:.4f}" for k, v in last.items() if k.endswith(("_loss", "_acc", "residual"))
        if v is not None
    )  # fmt: skip
    print(f"{name} on {args.dataset}, {len(history)} epochs: {summary}")
    print(f"wrote {paths['json']}, {paths['csv'].name}, {paths['png'].name}")
    finite = all(math.isfinite(r["train_loss"]) for r in history)
    return 0 if finite else 1
