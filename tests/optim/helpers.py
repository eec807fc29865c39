"""Small models, fixed data and comparisons shared by the optimizer tests."""

from __future__ import annotations

import itertools

import torch


def mlp(sizes=(6, 12, 12, 3), dtype=torch.float32, seed=0, act=torch.nn.Tanh):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return torch.nn.Sequential(*layers).to(dtype)


def batches(n, model_in=6, model_out=3, batch=16, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, batch, model_in, generator=g, dtype=dtype)
    y = torch.randn(n, batch, model_out, generator=g, dtype=dtype)
    return x, y


def train(model, opt, data, steps, start=0):
    x, y = data
    for i in range(start, start + steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[i]), y[i]).backward()
        opt.step()


def params_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def snapshot(opt):
    """Deep copy of parameters, optimizer state and generator states."""
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    state = {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        for p, st in opt.state.items()
    }
    gens = {k: g.get_state().clone() for k, g in opt._generators.items()}
    return params, state, gens


def assert_snapshot_equal(opt, snap):
    params, state, gens = snap
    now = [p.detach() for g in opt.param_groups for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(params, now))
    assert set(state) == {id(p) for p in opt.state}
    for p, st in opt.state.items():
        old = state[id(p)]
        assert set(old) == set(st)
        for k, v in st.items():
            assert torch.equal(v, old[k]) if torch.is_tensor(v) else v == old[k], k
    assert set(gens) == set(opt._generators)
    for k, g in opt._generators.items():
        assert torch.equal(g.get_state(), gens[k])


def ortho_residual(w):
    m = w.detach().reshape(w.shape[0], -1)
    if m.shape[0] < m.shape[1]:
        m = m.T
    eye = torch.eye(m.shape[1], dtype=m.dtype)
    return float((m.T @ m - eye).abs().max())
