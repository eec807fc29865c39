"""Predictive probabilities and calibration scores: exact values and statistical properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import manifold_langevin as ml
from manifold_langevin.nn.calibration import PredictiveAverage, calibration_scores


def _binary(conf: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class probabilities with confidence ``conf`` in class 0, labels right where
    ``correct``."""
    probs = torch.stack([conf, 1 - conf], dim=1)
    return probs, torch.where(correct, 0, 1)


def test_a_calibrated_predictor_has_a_small_ece_and_a_shifted_one_its_shift():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    # right with probability conf: calibrated. Per bin the accuracy's standard error is at most
    # sqrt(0.25 / (n / 8)) = 0.0032 (8 of the 15 bins are occupied), so |gap| <= 0.013 with
    # overwhelming probability and ECE <= 0.013
    probs, labels = _binary(conf, u < conf)
    assert calibration_scores(probs, labels)["ece"] <= 0.013
    # right with probability conf - 0.1: every bin's gap is 0.1 (within its binning error)
    probs, labels = _binary(conf, u < conf - 0.1)
    assert abs(calibration_scores(probs, labels)["ece"] - 0.1) <= 0.013


def test_nll_and_accuracy_are_the_cross_entropy_and_the_argmax_hits():
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(500, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (500,), generator=g)
    s = calibration_scores(F.softmax(logits, dim=1), labels)
    assert s["nll"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-12)
    assert s["acc"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()))


def test_ece_by_hand():
    probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.15, 0.85], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    # bins of 0.1: (0.9, 1] holds 0.95 (right), (0.6, 0.7] 0.65 (wrong), (0.8, 0.9] 0.85
    # (right), (0.5, 0.6] 0.55 (right): (0.05 + 0.65 + 0.15 + 0.45) / 4
    assert calibration_scores(probs.double(), labels, n_bins=10)["ece"] == pytest.approx(0.325)


def test_predictive_average_is_the_mean_of_the_samples():
    torch.manual_seed(0)
    model = ml.nn.mlp([4, 8, 3])
    split = ml.nn.data.Split(torch.randn(50, 4), torch.randint(0, 3, (50,)))
    avg = PredictiveAverage()
    samples = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        samples.append(ml.nn.predict_probs(model, split, batch_size=16))
        avg.add(samples[-1])
    assert torch.allclose(avg.mean(), torch.stack(samples).mean(0), rtol=1e-12, atol=0)
    assert torch.allclose(avg.mean().sum(1), torch.ones(50, dtype=torch.float64))
    assert avg.n == 3


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="labels"):
        calibration_scores(torch.rand(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        calibration_scores(torch.rand(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        calibration_scores(torch.rand(2, 3), torch.zeros(2, dtype=torch.long), n_bins=0)
    avg = PredictiveAverage()
    with pytest.raises(ValueError, match="no probabilities"):
        avg.mean()
    avg.add(torch.rand(4, 3))
    with pytest.raises(ValueError, match="shape"):
        avg.add(torch.rand(5, 3))
