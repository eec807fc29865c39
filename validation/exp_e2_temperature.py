"""E2 at temperature > 0: c-CoLA-ud on a temperature grid, c-CoLA-od against SGLD and SGD, with
calibration, for point estimates and for the average of the predictions over the last epochs.

The paper's reduced E2 (Fashion-MNIST, the same 10,000 training images, the other 60,000 as the
evaluation set; MLP 784-1000-10; batch 128; circle radii ``r0 = 0.05``, ``r1 = 0.1``; biases
free; 150 epochs), the split, initialisations, data order and training loop of
``validation.exp_e2``. The loss is the mean cross-entropy over a batch, an estimate of the mean
over the ``N = 10,000`` training images, so the measure ``exp(-L / tau)`` at ``tau = 1 / N =
1e-4`` is the Bayesian posterior of the network under a flat prior on the constraint set
(``tau < 1e-4``: a "cold" posterior).

Methods (``METHODS``; the same seeds for all):

* ``ud_t0``, ``ud_t1e-6``, ``ud_t1e-5``, ``ud_t1e-4``: c-CoLA-ud (``h = 0.3``, ``gamma = 1``) at
  temperatures 0 (the paper's E2), 1e-6, 1e-5 and 1e-4.
* ``od_t0``, ``od_t1e-4``: c-CoLA-od, projected Euler-Maruyama on the circles with step
  ``h = 0.3`` (the long-run learning rate of the underdamped scheme's heavy ball,
  ``h^2 (1 + mu) / (2 (1 - mu))`` with ``mu = exp(-gamma h)``): constrained SGD and constrained
  SGLD.
* ``sgld_t1e-4``, ``sgd``: the same overdamped scheme with no constraint (SGLD and plain SGD with
  learning rate ``h``).

Scores on the evaluation set at every evaluated epoch: loss (negative log-likelihood), accuracy
and expected calibration error (15 confidence bins, ``ml.nn.calibration_scores``). The point
estimate's scores are the means over the evaluations of the last ``LAST`` epochs; the
*prediction average* is the mean of the softmax predictions of those ``LAST`` evaluations (the
Monte Carlo posterior predictive of a sampler, one sample per epoch; ``ml.nn.PredictiveAverage``),
scored once. Mean ± standard error over seeds.

Run ``python -m validation.exp_e2_temperature [--quick] [--seeds 3] [--epochs 150] [--jobs 2]
[--resume] [--method KEY ...]``; writes ``exp_e2_temperature.json`` and
``exp_e2_temperature.png`` to ``--out`` (default ``validation/results/e2_temperature``). With
``--resume`` every finished run is kept in ``exp_e2_temperature.progress.json`` and skipped when
started again; ``--jobs`` runs that many (method, seed) runs at once, one CPU thread each.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

import manifold_langevin as ml
from validation import exp_e2
from validation.exp_e2 import LAST, Method

__all__ = ["METHODS", "main", "point_scores", "run", "run_one", "summarize_runs"]

#: the overdamped step (see the module docstring)
H_OD = 0.3
N_BINS = 15

METHODS = (
    Method("ud_t0", "c-CoLA-ud, T=0", "cola-circle",
           {"lr": 0.3, "friction": 1.0, "temperature": 0.0}),
    Method("ud_t1e-6", "c-CoLA-ud, T=1e-6", "cola-circle",
           {"lr": 0.3, "friction": 1.0, "temperature": 1e-6}),
    Method("ud_t1e-5", "c-CoLA-ud, T=1e-5", "cola-circle",
           {"lr": 0.3, "friction": 1.0, "temperature": 1e-5}),
    Method("ud_t1e-4", "c-CoLA-ud, T=1e-4", "cola-circle",
           {"lr": 0.3, "friction": 1.0, "temperature": 1e-4}),
    Method("od_t0", "c-CoLA-od, T=0 (constrained SGD)", "cola-od-circle",
           {"lr": H_OD, "temperature": 0.0}),
    Method("od_t1e-4", "c-CoLA-od, T=1e-4 (constrained SGLD)", "cola-od-circle",
           {"lr": H_OD, "temperature": 1e-4}),
    Method("sgld_t1e-4", "SGLD (no constraint), T=1e-4", "cola-od",
           {"lr": H_OD, "temperature": 1e-4}),
    Method("sgd", "SGD (no constraint, no momentum)", "cola-od",
           {"lr": H_OD, "temperature": 0.0}),
)  # fmt: skip
BY_KEY = {m.key: m for m in METHODS}
#: the scores of a run's summary, per estimate
SCORES = ("nll", "acc", "ece")


def run_one(key: str, seed: int, epochs: int, quick: bool) -> dict:
    """One (method, seed) run: the curves of ``exp_e2.train_run`` plus the calibration of every
    evaluation and the scores of the prediction average over the last :data:`LAST` epochs."""
    torch.set_num_threads(1)
    method = BY_KEY[key]
    data = exp_e2.split_data(n_eval=2_000 if quick else None)
    test = data["eval"]
    schedule = exp_e2.eval_schedule(epochs)
    average = ml.nn.PredictiveAverage()
    # train_run calls the probe after the schedule's epochs, in order (and stops calling it
    # when a run diverges)
    order = iter(schedule)

    def probe(model):
        epoch = next(order)
        probs = ml.nn.predict_probs(model, test, batch_size=exp_e2.EVAL_BATCH)
        if epoch > epochs - LAST:
            average.add(probs)
        return ml.nn.calibration_scores(probs, test.y, n_bins=N_BINS)

    rec = exp_e2.train_run(
        method, dict(method.hyper), data["train"], test, epochs, seed, schedule,
        probe=probe, probe_epochs=schedule,
    )  # fmt: skip
    rec["ece"] = [p["ece"] for p in rec.pop("probes")]
    if "diverged_at" not in rec and average.n:
        rec["average"] = {
            **ml.nn.calibration_scores(average.mean(), test.y, n_bins=N_BINS),
            "n_samples": average.n,
        }
    return rec


def point_scores(rec: dict) -> dict:
    """The point estimate's scores: means over the evaluations of the last LAST epochs (the
    loss and accuracy of ``exp_e2.summarize``, the ECE over the same window)."""
    epochs = np.asarray(rec["epochs"])
    window = epochs > epochs[-1] - LAST
    return {
        "nll": rec["last_test_loss"],
        "acc": rec["last_test_acc"],
        "ece": float(np.asarray(rec["ece"])[window].mean()),
    }


def summarize_runs(runs: dict[str, list[dict]]) -> dict:
    """Per method: mean, sd and standard error over the finished seeds of every score, for the
    point estimate and the prediction average; diverged runs are left out and counted."""
    out = {}
    for key, recs in runs.items():
        ok = [r for r in recs if "diverged_at" not in r and r.get("epochs")]
        entry = {"n_seeds": len(ok), "diverged": [r["seed"] for r in recs if r not in ok]}
        for name, get in (("point", point_scores), ("average", lambda r: r.get("average"))):
            values = [get(r) for r in ok if get(r)]
            entry[name] = (
                {s: exp_e2._stat([v[s] for v in values]) for s in SCORES} if values else {}
            )
        out[key] = entry
    return out


def markdown_table(summary: dict) -> str:
    """Rows: methods; columns: the point estimate's and the prediction average's scores."""
    head = (
        "| method | seeds | test NLL | test acc | ECE | NLL, averaged | acc, averaged "
        "| ECE, averaged |\n|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for key, s in summary.items():
        cells = []
        for name in ("point", "average"):
            for score, fmt in (("nll", ".4f"), ("acc", ".4f"), ("ece", ".4f")):
                stat = s[name].get(score)
                cells.append(exp_e2._pse(stat, fmt) if stat else "-")
        note = f" ({len(s['diverged'])} diverged)" if s["diverged"] else ""
        rows.append(f"| {BY_KEY[key].label} | {s['n_seeds']}{note} | " + " | ".join(cells) + " |")
    return "\n".join([head, *rows])


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    """Test loss and ECE against epochs (mean over the finished seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, recs in runs.items():
        ok = [r for r in recs if "diverged_at" not in r and r.get("epochs")]
        if not ok:
            continue
        epochs = ok[0]["epochs"]
        for ax, field in zip(axes, ("test_loss", "ece")):
            ax.plot(epochs, np.mean([r[field] for r in ok], axis=0), label=BY_KEY[key].label)
    axes[0].set(xlabel="epoch", ylabel="test loss (NLL)", title="evaluation loss")
    axes[1].set(xlabel="epoch", ylabel="expected calibration error", title="calibration")
    axes[0].set_ylim(0.3, 1.0)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(methods, seeds: int, epochs: int, jobs: int, quick: bool, progress: Path | None) -> dict:
    """Every (method, seed) run (``jobs`` at a time, each in its own process), resumed from
    ``progress`` when given; returns the JSON-ready result."""
    done: dict = {}
    if progress is not None and progress.exists():
        saved = json.loads(progress.read_text())
        if saved["settings"] == {"epochs": epochs, "quick": quick}:
            done = saved["runs"]
    tasks = [(k, s) for k in methods for s in range(seeds) if f"{k}/{s}" not in done]
    t0 = time.perf_counter()

    def save():
        if progress is not None:
            blob = {"settings": {"epochs": epochs, "quick": quick}, "runs": done}
            progress.write_text(json.dumps(blob))

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(jobs, 1), mp_context=context) as pool:
        futures = {pool.submit(run_one, k, s, epochs, quick): (k, s) for k, s in tasks}
        for fut in as_completed(futures):
            k, s = futures[fut]
            done[f"{k}/{s}"] = fut.result()
            save()
            r = done[f"{k}/{s}"]
            if not quick:
                p = point_scores(r) if r.get("epochs") else {}
                nll, ece = p.get("nll", math.nan), p.get("ece", math.nan)
                print(f"[seed {s}] {k}: last-{LAST} NLL {nll:.4f}, ECE {ece:.4f}, "
                      f"{r['seconds']:.0f} s", flush=True)  # fmt: skip
    runs = {k: [done[f"{k}/{s}"] for s in range(seeds) if f"{k}/{s}" in done] for k in methods}
    summary = summarize_runs(runs)
    return {
        "meta": {
            "epochs": epochs,
            "seeds": seeds,
            "last": LAST,
            "n_bins": N_BINS,
            "h_od": H_OD,
            "quick": quick,
            "seconds": time.perf_counter() - t0,
            "torch": torch.__version__,
        },
        "methods": {
            k: {"label": BY_KEY[k].label, "kind": BY_KEY[k].kind, "hyper": BY_KEY[k].hyper}
            for k in methods
        },
        "runs": runs,
        "summary": summary,
        "table": markdown_table(summary),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run for the tests (seconds)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 3, quick 1)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 150, quick 2)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    ap.add_argument("--method", action="append", choices=list(BY_KEY), help="repeatable")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "e2_temperature"
    )
    ap.add_argument("--resume", action="store_true", help="keep and skip finished runs")
    args = ap.parse_args(argv)
    out = args.out / "quick" if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (2 if args.quick else 150)
    methods = args.method or list(BY_KEY)
    progress = out / "exp_e2_temperature.progress.json" if args.resume else None
    result = run(methods, seeds, epochs, args.jobs, args.quick, progress)
    (out / "exp_e2_temperature.json").write_text(json.dumps(result, indent=1))
    plot(result["runs"], out / "exp_e2_temperature.png")
    if not args.quick:
        print(result["table"])
        print(f"wrote {out / 'exp_e2_temperature.json'} ({result['meta']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
