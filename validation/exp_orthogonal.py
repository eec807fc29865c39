"""Orthogonality constraint (o-CoLA) on real data: a small CNN and a deep plain tanh network.

Part (a) -- small CNN on Fashion-MNIST: ``conv 5x5 (1 -> 16), ReLU, max-pool 2, conv 5x5
(16 -> 32), ReLU, max-pool 2, linear 1568 -> 10``, trained on the first 10,000 training images
(batch 128) and tested on the 10,000 test images. o-CoLA-ud constrains every weight but the first
layer's (the paper's rule): the second conv kernel as a ``32 x 400`` matrix and the output layer
``10 x 1568``, both wide, so with orthonormal rows. Compared with SGD (momentum 0.9) from PyTorch's
default initialisation, and with an ablation that leaves the output layer unconstrained as well
(``ocola_body``: only the second conv kernel is orthogonal; the output layer's rows then need not
have unit norm, so the logits' scale is free). The step size of each is picked from a small grid
on a validation split (train on the first 8,000, validate on the last 2,000 of the 10,000,
``--tune-epochs`` epochs; highest validation accuracy after the last tuning epoch, see
``CRITERION``).

Part (b) -- deep plain network: a tanh MLP ``784 -> 128``, ``DEPTH`` (20) hidden ``128 x 128``
layers, ``128 -> 10`` (22 linear layers), same data. Methods: SGD (momentum 0.9) from PyTorch's
default initialisation (uniform, variance ``1 / (3 fan_in)``: a gain of about ``1/sqrt(3)`` per
layer, so signals and gradients are expected to shrink geometrically with depth), SGD from the
orthogonal (QR) initialisation of the same layers o-CoLA constrains (separates the effect of the
start from that of the constraint), and o-CoLA-ud (all layers but the first orthogonal). At
several epochs we record the Frobenius norm of the loss gradient of every layer's weight on a fixed
probe batch (the first 1,024 training images), and plot it against the layer index.

Outputs (``--out``, default ``validation/results``; ``--quick`` writes to ``<out>/quick``):
``exp_orthogonal.json`` (settings, tuning, every curve and gradient profile, summaries, a
markdown ``table``, residuals, timings), ``exp_orthogonal_cnn.png`` (test loss / accuracy vs
epoch) and ``exp_orthogonal_deep.png`` (gradient norm vs layer, test accuracy vs epoch).

Run ``python -m validation.exp_orthogonal [--quick] [--seeds 3] [--epochs 10] [--part cnn|deep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import manifold_langevin as ml
from validation.exp_e2 import CRITERIA, Method, aggregate, train_run, tune
from validation.experiment_data import load_fashion_mnist

__all__ = ["CNN_METHODS", "DEEP_METHODS", "DEPTH", "main", "make_cnn", "make_deep", "run"]

DEPTH = 20  # hidden 128 x 128 layers of the deep network
WIDTH = 128
PROBE_SIZE = 1_024

CNN_METHODS = (
    Method("ocola", "o-CoLA-ud (T=0)", "cola-orthogonal", {"friction": 1.0, "temperature": 0.0},
           tune="lr", grid=(0.1, 0.3, 0.5)),
    Method("ocola_body", "o-CoLA-ud, output layer free", "cola-orthogonal-body",
           {"friction": 1.0, "temperature": 0.0}, tune="lr", grid=(0.1, 0.3, 0.5)),
    Method("sgd", "SGD, momentum 0.9", "sgd", {"momentum": 0.9}, tune="lr", grid=(0.01, 0.03, 0.1)),
)  # fmt: skip
DEEP_METHODS = (
    Method("sgd", "SGD, momentum 0.9, default init", "sgd", {"momentum": 0.9},
           tune="lr", grid=(0.01, 0.03, 0.1)),
    Method("sgd_orth_init", "SGD, momentum 0.9, orthogonal init", "sgd", {"momentum": 0.9},
           tune="lr", grid=(0.01, 0.03, 0.1), init="orthogonal"),
    Method("ocola", "o-CoLA-ud (T=0)", "cola-orthogonal", {"friction": 1.0, "temperature": 0.0},
           tune="lr", grid=(0.1, 0.3, 0.5)),
)  # fmt: skip
#: tuning criterion (see ``validation.exp_e2.tune``). "final": with "best" (highest validation
#: accuracy at any of the 3 tuning epochs, as in E2) a first full run picked h = 0.5 for the CNN's
#: o-CoLA, whose accuracy peaked and fell (0.814 -> 0.732, one rejected SHAKE step), and over 10
#: epochs it oscillated (test accuracy 0.777 +- 0.025, 3-5 rejected steps per run).
CRITERION = "final"
QUICK_GRID = {"ocola": (0.3,), "ocola_body": (0.3,), "sgd": (0.03,), "sgd_orth_init": (0.03,)}


def make_cnn(seed: int) -> nn.Sequential:
    """The part (a) CNN (input: flat 784-vectors), PyTorch's default init from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def make_deep(seed: int, depth: int = DEPTH, width: int = WIDTH) -> nn.Sequential:
    """The part (b) tanh MLP ``ml.nn.mlp``: ``784 -> width``, ``depth`` hidden
    ``width x width``, ``-> 10``; PyTorch's default init from ``seed``."""
    torch.manual_seed(seed)
    return ml.nn.mlp([784, *[width] * (depth + 1), 10], "tanh")


def grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Loss and Frobenius norm of the gradient of each weight matrix (in layer order) on
    ``(x, y)``; the model's ``.grad`` fields are left as they were."""
    saved = [p.grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    model.eval()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    norms = [float(p.grad.norm()) for p in model.parameters() if p.dim() >= 2]
    for p, g in zip(model.parameters(), saved):
        p.grad = g
    return {"loss": float(loss.detach()), "grad_norm": norms}


def split(n_train: int = 10_000, n_val: int = 2_000, n_test: int | None = None) -> dict:
    """First ``n_train`` training images (tuning: their last ``n_val`` held out), test set; as
    ``ml.nn.data.Split`` s of flat 784-vectors."""
    xtr, ytr, xte, yte = load_fashion_mnist()
    x, y = xtr[:n_train].reshape(n_train, -1), ytr[:n_train]
    xt, yt = xte.reshape(len(xte), -1), yte
    if n_test is not None:
        xt, yt = xt[:n_test], yt[:n_test]
    cut = n_train - n_val
    return {
        "train": ml.nn.data.Split(x, y),
        "eval": ml.nn.data.Split(xt, yt),
        "tune_train": ml.nn.data.Split(x[:cut], y[:cut]),
        "tune_val": ml.nn.data.Split(x[cut:], y[cut:]),
    }


def _tune_all(methods, data, epochs, model_fn, quick, log) -> tuple[dict, dict]:
    tuning, chosen = {}, {}
    for m in methods:
        t0 = time.perf_counter()
        res = tune(
            m,
            data,
            epochs,
            seed=1000,
            grid=QUICK_GRID.get(m.key) if quick else None,
            model_fn=model_fn,
            criterion=CRITERION,
        )
        res["seconds"] = time.perf_counter() - t0
        tuning[m.key] = res
        chosen[m.key] = m.with_value(res["chosen"])
        log(
            f"[tune] {m.key}: "
            + ", ".join(f"{r['value']}: acc {r['best_val_acc']:.4f}" for r in res["runs"])
            + f" -> {res['chosen']} ({res['seconds']:.0f} s)"
        )
    return tuning, chosen


def _pm(values, fmt) -> str:
    a = np.asarray(values, dtype=float)
    sd = a.std(ddof=1) if a.size > 1 else 0.0
    return f"{a.mean():{fmt}} ± {sd:{fmt}}"


def run_cnn(data, seeds, epochs, tune_epochs, quick, log) -> dict:
    """Part (a): tune, then train each method for each seed; returns the JSON-ready record."""
    tuning, chosen = _tune_all(CNN_METHODS, data, tune_epochs, make_cnn, quick, log)
    runs = {m.key: [] for m in CNN_METHODS}
    for seed in range(seeds):
        for m in CNN_METHODS:
            rec = train_run(
                m,
                chosen[m.key],
                data["train"],
                data["eval"],
                epochs,
                seed,
                range(1, epochs + 1),
                model_fn=make_cnn,
            )
            runs[m.key].append(rec)
            log(
                f"[cnn seed {seed}] {m.key}: test acc {rec['final_test_acc']:.4f}, loss "
                f"{rec['final_test_loss']:.4f}, residual {rec['max_residual']:.1e}, "
                f"{rec['seconds']:.0f} s"
            )
    return {
        "tuning": tuning,
        "chosen": chosen,
        "runs": runs,
        "summary": {k: aggregate(v) for k, v in runs.items()},
    }


def run_deep(data, seeds, epochs, tune_epochs, quick, log) -> dict:
    """Part (b): tune, train with gradient-norm probes; returns the JSON-ready record."""
    tuning, chosen = _tune_all(DEEP_METHODS, data, tune_epochs, make_deep, quick, log)
    xp, yp = data["train"].x[:PROBE_SIZE], data["train"].y[:PROBE_SIZE]
    probe_epochs = sorted({0, 1, max(1, epochs // 2), epochs})
    runs = {m.key: [] for m in DEEP_METHODS}
    for seed in range(seeds):
        for m in DEEP_METHODS:
            rec = train_run(
                m,
                chosen[m.key],
                data["train"],
                data["eval"],
                epochs,
                seed,
                range(1, epochs + 1),
                model_fn=make_deep,
                probe=lambda model: grad_norms(model, xp, yp),
                probe_epochs=probe_epochs,
            )
            runs[m.key].append(rec)
            g0 = rec["probes"][-1]["grad_norm"]
            log(
                f"[deep seed {seed}] {m.key}: test acc {rec['final_test_acc']:.4f}, grad norm "
                f"first/last layer at the end {g0[0]:.2e}/{g0[-1]:.2e}, residual "
                f"{rec['max_residual']:.1e}, {rec['seconds']:.0f} s"
            )
    profiles = {}
    for key, rs in runs.items():
        # geometric mean over seeds of each layer's gradient norm, per probe epoch
        per = {}
        for i, e in enumerate(probe_epochs):
            g = np.asarray([r["probes"][i]["grad_norm"] for r in rs])
            per[str(e)] = np.exp(np.log(np.maximum(g, 1e-30)).mean(0)).tolist()
        profiles[key] = per
    return {
        "tuning": tuning,
        "chosen": chosen,
        "runs": runs,
        "probe_epochs": probe_epochs,
        "grad_profiles_geomean": profiles,
        "summary": {k: aggregate(v) for k, v in runs.items()},
    }


def cnn_table(res: dict, labels: dict, seeds: int, epochs: int) -> str:
    rows = [
        f"| CNN method ({seeds} seeds, {epochs} epochs) | step | final test acc | "
        "best test acc | final test loss | best test loss | max residual | s / run |",
        "|" + "---|" * 8,
    ]
    for key, rs in res["runs"].items():
        rows.append(
            f"| {labels[key]} | lr={res['chosen'][key]['lr']:g} | "
            f"{_pm([r['final_test_acc'] for r in rs], '.4f')} | "
            f"{_pm([r['best_test_acc'] for r in rs], '.4f')} | "
            f"{_pm([r['final_test_loss'] for r in rs], '.4f')} | "
            f"{_pm([r['best_test_loss'] for r in rs], '.4f')} | "
            f"{res['summary'][key]['max_residual']:.1e} | "
            f"{res['summary'][key]['seconds_per_run']:.0f} |"
        )
    return "\n".join(rows)


def deep_table(res: dict, labels: dict, seeds: int, epochs: int) -> str:
    """Markdown: test accuracy and the depth profile of the gradient norms, start and end."""
    pe = res["probe_epochs"]
    rows = [
        f"| deep tanh MLP ({DEPTH} hidden layers; {seeds} seeds, {epochs} epochs) | step | "
        "final test acc | spread of hidden-layer grad norms, start | same, end | "
        "grad norm layer 2 / output layer, end | max residual |",
        "|" + "---|" * 7,
    ]
    for key, rs in res["runs"].items():
        # layers 2 .. DEPTH + 2: the hidden layers and the output layer (the input layer sees
        # the raw 784-pixel input and is never constrained)
        first = [r["probes"][0]["grad_norm"][1:] for r in rs]
        last = [r["probes"][-1]["grad_norm"][1:] for r in rs]
        rows.append(
            f"| {labels[key]} | lr={res['chosen'][key]['lr']:g} | "
            f"{_pm([r['final_test_acc'] for r in rs], '.4f')} | "
            f"{_geo([max(g) / min(g) for g in first])} | "
            f"{_geo([max(g) / min(g) for g in last])} | "
            f"{_geo([g[0] / g[-1] for g in last])} | {res['summary'][key]['max_residual']:.1e} |"
        )
    rows.append(
        f"\n(Frobenius norms of dL/dW on a fixed batch of {PROBE_SIZE} training images; spread = "
        f"max / min over layers 2-{DEPTH + 2}; geometric means over seeds; start = epoch "
        f"{pe[0]}, end = epoch {pe[-1]})"
    )
    return "\n".join(rows)


def _geo(values) -> str:
    a = np.log(np.maximum(np.asarray(values, dtype=float), 1e-30))
    return f"{np.exp(a.mean()):.2e}"


# ---------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cnn(res: dict, labels: dict, path: Path, title: str) -> None:
    """Test loss and accuracy vs epoch, mean over seeds with a +-1 std band."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (key, s) in enumerate(res["summary"].items()):
        c, ep = s["curves"], np.asarray(s["curves"]["epochs"])
        for ax, name in zip(axes, ("test_loss", "test_acc")):
            mu, sd = np.asarray(c[name]["mean"]), np.asarray(c[name]["std"])
            ax.plot(ep, mu, color=f"C{i}", marker="o", ms=3, label=labels[key])
            ax.fill_between(ep, mu - sd, mu + sd, color=f"C{i}", alpha=0.2, lw=0)
    axes[0].set(xlabel="epoch", ylabel="test loss", title="CNN: test loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy", title="CNN: test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_deep(res: dict, labels: dict, path: Path, title: str) -> None:
    """Per method: gradient norm vs layer index (log scale) at each probe epoch; plus test
    accuracy vs epoch."""
    plt = _plt()
    keys = list(res["runs"])
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.6 * (len(keys) + 1), 4.2))
    lo = min(min(v) for p in res["grad_profiles_geomean"].values() for v in p.values())
    hi = max(max(v) for p in res["grad_profiles_geomean"].values() for v in p.values())
    cmap = plt.get_cmap("viridis")
    pe = res["probe_epochs"]
    for ax, key in zip(axes, keys):
        for j, e in enumerate(pe):
            g = res["grad_profiles_geomean"][key][str(e)]
            ax.semilogy(
                np.arange(1, len(g) + 1),
                g,
                marker="o",
                ms=3,
                color=cmap(j / max(1, len(pe) - 1)),
                label=f"epoch {e}",
            )
        ax.set(
            xlabel="layer index (1 = input layer)",
            ylabel="|dL/dW| (Frobenius)",
            title=labels[key],
            ylim=(lo / 3, hi * 3),
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax = axes[-1]
    for i, key in enumerate(keys):
        c = res["summary"][key]["curves"]
        ep, mu = np.asarray(c["epochs"]), np.asarray(c["test_acc"]["mean"])
        sd = np.asarray(c["test_acc"]["std"])
        ax.plot(ep, mu, color=f"C{i}", marker="o", ms=3, label=labels[key])
        ax.fill_between(ep, mu - sd, mu + sd, color=f"C{i}", alpha=0.2, lw=0)
    ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- driver


def run(
    quick: bool = False,
    seeds: int = 3,
    epochs: int = 10,
    tune_epochs: int | None = None,
    parts=("cnn", "deep"),
    verbose: bool = True,
) -> dict:
    """Run the selected parts; returns the JSON-ready result."""
    t0 = time.perf_counter()
    log = print if verbose else (lambda *a, **k: None)
    data = split(n_train=384, n_val=128, n_test=1_000) if quick else split()
    tune_epochs = tune_epochs or (1 if quick else max(1, epochs // 3))
    out = {
        "meta": {
            "quick": quick,
            "seeds": seeds,
            "epochs": epochs,
            "tune_epochs": tune_epochs,
            "n_train": len(data["train"]),
            "n_test": len(data["eval"]),
            "n_tune_train": len(data["tune_train"]),
            "n_tune_val": len(data["tune_val"]),
            "batch": 128,
            "tuning_criterion": CRITERIA[CRITERION],
            "deep_depth": DEPTH,
            "deep_width": WIDTH,
            "probe_size": PROBE_SIZE,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
        }
    }
    tables = []
    if "cnn" in parts:
        t = time.perf_counter()
        res = run_cnn(data, seeds, epochs, tune_epochs, quick, log)
        res["seconds"] = time.perf_counter() - t
        res["labels"] = {m.key: m.label for m in CNN_METHODS}
        out["cnn"] = res
        tables.append(cnn_table(res, res["labels"], seeds, epochs))
    if "deep" in parts:
        t = time.perf_counter()
        res = run_deep(data, seeds, epochs, tune_epochs, quick, log)
        res["seconds"] = time.perf_counter() - t
        res["labels"] = {m.key: m.label for m in DEEP_METHODS}
        out["deep"] = res
        tables.append(deep_table(res, res["labels"], seeds, epochs))
    out["table"] = "\n\n".join(tables)
    out["meta"]["seconds"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m validation.exp_orthogonal [--quick] [--seeds N] ...``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run for the tests (seconds)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 3, quick 1)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 10, quick 1)")
    ap.add_argument(
        "--tune-epochs",
        type=int,
        default=None,
        help="epochs of each tuning run (default epochs // 3, quick 1)",
    )
    ap.add_argument(
        "--part",
        action="append",
        choices=("cnn", "deep"),
        help="part to run (repeatable; default both)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 10)
    parts = tuple(args.part or ("cnn", "deep"))
    result = run(
        quick=args.quick,
        seeds=seeds,
        epochs=epochs,
        tune_epochs=args.tune_epochs,
        parts=parts,
        verbose=not args.quick,
    )
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    meta = result["meta"]
    sub = f"{meta['n_train']} training images, {meta['n_test']} test images, {seeds} seed(s)"
    if "cnn" in result:
        plot_cnn(
            result["cnn"],
            result["cnn"]["labels"],
            out / "exp_orthogonal_cnn.png",
            f"CNN on Fashion-MNIST: o-CoLA-ud vs SGD; {sub}; mean ± 1 std",
        )
    if "deep" in result:
        plot_deep(
            result["deep"],
            result["deep"]["labels"],
            out / "exp_orthogonal_deep.png",
            f"{DEPTH + 2}-layer tanh MLP (width {WIDTH}) on Fashion-MNIST; {sub}; "
            "gradient norms: geometric mean over seeds",
        )
    (out / "exp_orthogonal.json").write_text(json.dumps(result, indent=1))
    if not args.quick:
        print(result["table"])
        print(f"wrote {out}/exp_orthogonal*.{{json,png}} ({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
