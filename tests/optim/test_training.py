"""Smoke test: a small MLP on sklearn's digits trains with both constraints."""

from __future__ import annotations

import itertools

import pytest
import torch

from manifold_langevin.optim import CoLA, constrained_groups

from .helpers import ortho_residual

datasets = pytest.importorskip("sklearn.datasets")


def _digits():
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


@pytest.mark.parametrize(
    "constraint, hidden, kwargs, target",
    [
        # the paper's c-CoLA-ud settings (h = 0.3, gamma = 1, r0 = 0.05, r1 = 0.1, tau = 0) on an
        # E2-like one-hidden-layer net; the small radii cost some accuracy on 64 input features
        ("circle", (256,), {"lr": 0.3, "friction": 1.0}, 0.83),
        ("orthogonal", (128, 128), {"lr": 0.3, "friction": 1.0, "temperature": 1e-5}, 0.9),
    ],
)
def test_mlp_on_digits(constraint, hidden, kwargs, target):
    (xtr, ytr), (xte, yte) = _digits()
    torch.manual_seed(0)
    sizes = (64, *hidden, 10)
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = CoLA(constrained_groups(model, constraint), seed=0, **kwargs)
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        for idx in torch.randperm(len(ytr), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    with torch.no_grad():
        acc = (model(xte).argmax(dim=1) == yte).float().mean().item()
    assert acc > target, acc
    assert opt.n_rejected() == 0
    if constraint == "circle":
        assert model[0].weight.abs().max() <= 0.05 and model[2].weight.abs().max() <= 0.1
        assert max(opt.residuals().values()) <= 1e-5
    else:
        assert ortho_residual(model[2].weight) <= 1e-5
        assert ortho_residual(model[4].weight) <= 1e-5
