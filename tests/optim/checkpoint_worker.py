"""One leg of a CoLA run in a fresh process, for ``tests/optim/test_checkpoint.py``.

``python -m tests.optim.checkpoint_worker MODE DIR N M`` (from the repository root):

* ``full``: ``N + M`` steps without interruption; writes ``DIR/full.pt``.
* ``first``: ``N`` steps, then the checkpoint ``DIR/ckpt.pt``.
* ``resume``: rebuilds model and optimizer with other seeds, loads ``DIR/ckpt.pt`` and runs ``M``
  steps; writes ``DIR/resumed.pt``.

The test runs the first leg in its own process (:func:`first`), the other two here.

The model mixes both named constraints in one optimizer (a circle-constrained first layer, an
orthogonal square hidden layer, a free rest) at ``temperature > 0``, and the batches are drawn
from a shuffle generator that is checkpointed too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from manifold_langevin.nn.checkpoint import load_checkpoint, save_atomic
from manifold_langevin.optim import CoLA, circle_init_, orthogonal_init_

from .helpers import batches, mlp

N_BATCHES = 8


def build(seed: int, opt_seed: int):
    model = mlp(sizes=(6, 12, 12, 3), seed=seed)
    circle_init_(model[0].weight.data, 0.5)
    orthogonal_init_(model[2].weight.data)
    groups = [
        {"params": [model[0].weight], "constraint": "circle", "radius": 0.5},
        {"params": [model[2].weight], "constraint": "orthogonal"},
        {"params": [model[0].bias, model[2].bias, model[4].weight, model[4].bias]},
    ]
    opt = CoLA(groups, lr=0.1, friction=1.0, temperature=1e-2, seed=opt_seed)
    return model, opt, torch.Generator().manual_seed(opt_seed + 1)


def run(model, opt, shuffle, steps: int) -> None:
    x, y = batches(N_BATCHES)
    for _ in range(steps):
        i = int(torch.randint(N_BATCHES, (), generator=shuffle))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[i]), y[i]).backward()
        opt.step()


def result(model, opt, shuffle) -> dict:
    return {
        "params": [p.detach() for p in model.parameters()],
        "opt": opt.state_dict(),
        "shuffle": shuffle.get_state(),
    }


def first(folder: Path, n: int) -> None:
    """The first leg: ``n`` steps from the reference start, then the checkpoint."""
    model, opt, shuffle = build(seed=0, opt_seed=123)
    run(model, opt, shuffle, n)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "shuffle": shuffle.get_state()}
    save_atomic(state, Path(folder) / "ckpt.pt")


def main(mode: str, folder: str, n: int, m: int) -> None:
    torch.set_num_threads(1)
    out = Path(folder)
    if mode == "first":
        first(out, n)
    elif mode == "full":
        model, opt, shuffle = build(seed=0, opt_seed=123)
        run(model, opt, shuffle, n + m)
        torch.save(result(model, opt, shuffle), out / "full.pt")
    elif mode == "resume":
        model, opt, shuffle = build(seed=7, opt_seed=999)  # the checkpoint must override these
        ckpt = load_checkpoint(out / "ckpt.pt")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        shuffle.set_state(ckpt["shuffle"])
        run(model, opt, shuffle, m)
        torch.save(result(model, opt, shuffle), out / "resumed.pt")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
