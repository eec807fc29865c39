"""CoLA under torch.distributed: DDP replicas stay bit-identical with noise, and sharded parameters
are refused where the update would be wrong.

Two gloo processes on CPU train the same small float64 model (a circle-constrained layer, a tall
orthogonal weight and an unconstrained rest) wrapped in DistributedDataParallel, each on its half of
a fixed global batch. Start-up (spawn, imports, gloo rendezvous) dominates the cost, so one spawn
runs every case and the tests read its files.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from manifold_langevin.optim import CoLA, circle_init_, orthogonal_init_

WORLD = 2
STEPS = 50
SEED = 7
RADIUS = 0.5
HYPER = {"lr": 0.1, "friction": 1.0, "temperature": 1e-2}

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _model() -> torch.nn.Module:
    """The same float64 model in every process, on its constraint sets."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 12),  # weight (12, 8): tall, orthonormal columns
        torch.nn.Tanh(),
        torch.nn.Linear(12, 3),
    ).double()
    circle_init_(model[0].weight, RADIUS)
    orthogonal_init_(model[2].weight)
    return model


def _groups(model: torch.nn.Module) -> list[dict]:
    named = dict(model.named_parameters())
    circle, ortho = ["0.weight"], ["2.weight"]
    rest = [n for n in named if n not in circle + ortho]
    return [
        {
            "params": [named[n] for n in circle],
            "param_names": circle,
            "constraint": "circle",
            "radius": RADIUS,
        },
        {"params": [named[n] for n in ortho], "param_names": ortho, "constraint": "orthogonal"},
        {"params": [named[n] for n in rest], "param_names": rest, "constraint": None},
    ]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    return x, torch.randn(16, 3, generator=g, dtype=torch.float64)


def _train(model, forward, x, y, seed) -> dict:
    """``STEPS`` CoLA steps on ``(x, y)``; returns parameters and optimizer state by name."""
    opt = CoLA(_groups(model), seed=seed, **HYPER)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(forward(x), y).backward()
        opt.step()
    out = {"seed": opt.seed}
    for name, p in model.named_parameters():
        out[name] = p.detach().clone()
        for key, value in opt.state[p].items():
            if torch.is_tensor(value) and value.is_floating_point():  # momenta and xi
                out[f"{name}/{key}"] = value.clone()
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = _data()
        half = slice(rank * len(x) // WORLD, (rank + 1) * len(x) // WORLD)
        # "broadcast": seed=None with a different global generator on each rank (rank 0's draw
        # must win); "different": the negative control, explicit seeds that differ per rank
        cases = {"same": SEED, "broadcast": None, "different": SEED + rank}
        results = {}
        for case, seed in cases.items():
            model = _model()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            torch.manual_seed(100 + rank)
            results[case] = _train(model, ddp, x[half], y[half], seed)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """``[results of rank 0, results of rank 1]``, each ``{case: {name: tensor, "seed": int}}``."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _tensors(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seed"}


def test_same_seed_keeps_replicas_bit_identical(ranks):
    a, b = (_tensors(r["same"]) for r in ranks)
    assert set(a) == set(b)
    assert any("/angular_velocity" in k for k in a) and any("/momentum_buffer" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_matches_one_process_on_the_global_batch(ranks):
    model = _model()
    x, y = _data()
    ref = _tensors(_train(model, model, x, y, SEED))
    got = _tensors(ranks[0]["same"])
    assert set(ref) == set(got)
    # float64: DDP's average of the two half-batch mean gradients and the full-batch mean differ
    # only by rounding (~1e-16 relative) and the noise is the same draw in both runs; after 50
    # steps the largest difference measured was 1e-14, so 1e-10 leaves a wide margin while a real
    # discrepancy (a wrong average, other noise: ~1e-2 per step here) is far above it
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-10, msg=k)
    # the run is not trivial: the parameters moved well beyond that tolerance
    start = dict(_model().named_parameters())
    assert (ref["2.weight"] - start["2.weight"]).abs().max() > 1e-2


def test_default_seed_is_rank_zeros(ranks):
    a, b = (r["broadcast"] for r in ranks)
    assert a["seed"] == b["seed"]
    for k in _tensors(a):
        assert torch.equal(a[k], b[k]), k


def test_different_seeds_diverge(ranks):
    # the negative control: the comparison above has the power to see different noise
    a, b = (_tensors(r["different"]) for r in ranks)
    for k in ("0.weight", "2.weight", "4.weight"):
        assert (a[k] - b[k]).abs().max() > 1e-3, k


# ------------------------------------------------------------------------- sharded parameters


@pytest.fixture
def one_rank_group():
    """A world-size-1 gloo process group in this process (for DTensors and fully_shard)."""
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def test_dtensor_parameters_are_refused(one_rank_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    w = torch.nn.Parameter(distribute_tensor(torch.eye(4), mesh, [Shard(0)]))
    for constraint in ("orthogonal", "sphere", "circle", None):
        with pytest.raises(TypeError, match="DTensor"):
            radius = 1.0 if constraint in ("sphere", "circle") else None
            CoLA([w], lr=0.1, constraint=constraint, radius=radius)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    fully_shard(model)  # FSDP2: every parameter becomes a DTensor
    with pytest.raises(TypeError, match="not supported for constraint 'orthogonal'"):
        CoLA(
            [{"params": [model[1].weight], "constraint": "orthogonal"}],
            lr=0.1,
            temperature=0.1,
        )


def test_default_seed_with_one_rank(one_rank_group):
    torch.manual_seed(3)
    seed = CoLA([torch.nn.Parameter(torch.zeros(2))], lr=0.1).seed
    torch.manual_seed(3)
    assert int(torch.randint(0, 2**62, (), dtype=torch.int64)) == seed


def _fsdp1_shard(shape=(8,)) -> torch.nn.Parameter:
    """A stand-in for an FSDP1 shard (FSDP1 needs an accelerator): FSDP marks every tensor it
    flattens with ``_fsdp_flattened`` and its ``FlatParameter`` with ``_is_flat_param``."""
    p = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    p._fsdp_flattened = True
    return p


def test_fsdp1_shards_refused_with_a_constraint_or_noise():
    with pytest.raises(TypeError, match=r"FSDP1 shard.*'circle'.*ignored_states"):
        CoLA([_fsdp1_shard()], lr=0.1, constraint="circle", radius=1.0)
    eye = _fsdp1_shard((4, 4))
    with torch.no_grad():
        eye.copy_(torch.eye(4))
    with pytest.raises(TypeError, match="not supported for constraint 'orthogonal'"):
        CoLA([eye], lr=0.1, constraint="orthogonal")
    flat = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
    flat._is_flat_param = True
    with pytest.raises(TypeError, match="temperature 0 only"):
        CoLA([flat], lr=0.1, temperature=0.1)


def test_fsdp1_shard_of_a_free_group_at_zero_temperature():
    p = _fsdp1_shard()
    opt = CoLA([p], lr=0.1, temperature=0.0)
    p.grad = torch.ones_like(p)
    opt.step()
    assert (p < 0).all()
    # turning the noise on later is caught at the next step, before anything changes
    opt.param_groups[0]["temperature"] = 0.1
    before = p.detach().clone()
    with pytest.raises(TypeError, match="same noise"):
        opt.step()
    assert torch.equal(p, before)
