"""constrained_groups: the paper's selection rules and initialisation."""

from __future__ import annotations

import geoopt
import pytest
import torch

import manifold_langevin as ml
from manifold_langevin.optim import CoLA, circle_init_, constrained_groups, orthogonal_init_

from .helpers import ortho_residual


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.conv2 = torch.nn.Conv2d(4, 8, 3)  # (8, 36): wide
        self.conv3 = torch.nn.Conv2d(8, 96, 1)  # (96, 8): tall
        self.fc = torch.nn.Linear(96, 10)  # (10, 96): wide

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def test_orthogonal_rules():
    torch.manual_seed(0)
    net = SmallCNN()
    first = net.conv1.weight.detach().clone()
    groups = constrained_groups(net, "orthogonal", lr=0.2)
    assert [g["constraint"] for g in groups] == ["orthogonal", None]
    assert groups[0]["param_names"] == ["conv2.weight", "conv3.weight", "fc.weight"]
    assert "conv1.weight" in groups[1]["param_names"] and "bn.weight" in groups[1]["param_names"]
    assert all(g["lr"] == 0.2 for g in groups)
    assert torch.equal(net.conv1.weight, first)  # the first layer is left as it was
    for p in groups[0]["params"]:
        assert ortho_residual(p) < 1e-6
    names = {n for g in groups for n in g["param_names"]}
    assert names == {n for n, _ in net.named_parameters()}


def test_circle_rules_and_radii():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 7),
        torch.nn.ReLU(),
        torch.nn.Linear(7, 7),
        torch.nn.ReLU(),
        torch.nn.Linear(7, 2),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)
    groups = constrained_groups(net, "circle")
    assert [(g["constraint"], g.get("radius")) for g in groups] == [
        ("circle", 0.05),
        ("circle", 0.1),
        (None, None),
    ]
    assert groups[1]["param_names"] == ["2.weight", "4.weight"]
    assert net[0].weight.abs().max() <= 0.05 and net[2].weight.abs().max() <= 0.1
    assert net[0].bias.abs().max() > 0.1  # biases untouched

    net2 = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    groups = constrained_groups(net2, "circle", radius={"2.weight": 0.3}, init_mode="scale")
    assert [g.get("radius") for g in groups] == [0.05, 0.3, None]
    groups = constrained_groups(net2, "circle", radius=0.2)
    assert [g.get("radius") for g in groups] == [0.2, None]
    groups = constrained_groups(net2, "circle", radius=(0.01, 0.02))
    assert [g.get("radius") for g in groups] == [0.01, 0.02, None]
    groups = constrained_groups(net2, "circle", radius=lambda name, p: 0.5)
    assert [g.get("radius") for g in groups] == [0.5, None]


def test_overrides_and_unconstrained_options():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4))
    groups = constrained_groups(
        net, "orthogonal", temperature=1e-3, unconstrained={"scheme": "od", "temperature": 0.0}
    )
    assert groups[0]["temperature"] == 1e-3 and "scheme" not in groups[0]
    assert groups[1]["scheme"] == "od" and groups[1]["temperature"] == 0.0
    opt = CoLA(groups, lr=0.1)
    assert opt.param_groups[1]["scheme"] == "od"
    with pytest.raises(ValueError):
        constrained_groups(net, "orthogonal", radius=0.1)
    with pytest.raises(ValueError):
        constrained_groups(net, "unit-norm")


def test_manifold_parameters_keep_their_manifold():
    net = torch.nn.Linear(3, 3)
    net.extra = geoopt.ManifoldParameter(ml.Stiefel().random(5, 2), manifold=geoopt.Stiefel())
    groups = constrained_groups(net, "orthogonal", constrain_first=True)
    constrained = {n for g in groups if g["constraint"] for n in g["param_names"]}
    assert constrained == {"weight"}
    CoLA(groups, lr=0.1)  # no conflict


def test_orthogonal_init_shapes():
    torch.manual_seed(0)
    for shape in [(7, 3), (3, 7), (5, 5), (8, 3, 3, 3), (64, 2, 1, 1)]:
        w = orthogonal_init_(torch.randn(shape))
        assert ortho_residual(w) < 1e-6, shape
    # wide matrices: rows orthonormal (the released scripts reshaped Q instead of transposing)
    w = orthogonal_init_(torch.randn(3, 7))
    assert (w @ w.T - torch.eye(3)).abs().max() < 1e-6
    # deterministic and sign-fixed: an orthonormal input with a positive-diagonal R is kept
    q = orthogonal_init_(torch.randn(6, 4, dtype=torch.float64))
    assert torch.allclose(orthogonal_init_(q.clone()), q, atol=1e-12)
    with pytest.raises(ValueError):
        orthogonal_init_(torch.zeros(3))


def test_circle_init_modes():
    w = torch.tensor([0.3, -0.5, 0.05])
    assert circle_init_(w.clone(), 0.1).tolist() == pytest.approx([0.1, -0.1, 0.05])
    assert circle_init_(w.clone(), 0.1, "scale").tolist() == pytest.approx([0.06, -0.1, 0.01])
    with pytest.raises(ValueError):
        circle_init_(w, 0.1, "wrap")


def test_radius_pair_as_list_and_bad_type():
    import pytest
    import torch

    import manifold_langevin as ml

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    groups = ml.optim.constrained_groups(net, "circle", radius=[0.2, 0.3])
    radii = sorted(g["radius"] for g in groups if g.get("constraint") == "circle")
    assert radii == [0.2, 0.3]
    with pytest.raises(TypeError, match="radius must be"):
        ml.optim.constrained_groups(net, "circle", radius="0.1")
