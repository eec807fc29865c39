"""Predictive probabilities and their calibration: for point estimates and for the average of
the predictions of several samples (a sampler's weights at several times).

[`predict_probs`][manifold_langevin.nn.calibration.predict_probs] returns a classifier's softmax
probabilities on a split; [`PredictiveAverage`][manifold_langevin.nn.calibration.PredictiveAverage]
accumulates them over samples (the Monte Carlo estimate of the posterior predictive
$\\bar p(y \\mid x) = \\frac1S \\sum_s p(y \\mid x, \\theta_s)$);
[`calibration_scores`][manifold_langevin.nn.calibration.calibration_scores] gives the negative
log-likelihood, the accuracy and the expected calibration error of any such probabilities.

Examples:
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> scores = calibration_scores(probs, torch.tensor([0, 1, 1]), n_bins=10)
    >>> round(scores["acc"], 4), round(scores["ece"], 4)
    (0.6667, 0.3)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split, batches

__all__ = ["PredictiveAverage", "calibration_scores", "predict_probs"]


@torch.no_grad()
def predict_probs(model: nn.Module, split: Split, batch_size: int = 4096) -> torch.Tensor:
    """Softmax probabilities ``(n, n_classes)`` of a classifier on a split (eval mode, no
    gradients, float64), in the split's order.

    Args:
        model: maps a batch of inputs to logits ``(B, n_classes)``.
        split: the examples, on the model's device.
        batch_size: examples per forward pass.
    """
    was_training = model.training
    model.eval()
    try:
        parts = [
            F.softmax(model(x).double(), dim=1)
            for x, _ in batches(split, batch_size, shuffle=False)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def calibration_scores(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict:
    """Negative log-likelihood, accuracy and expected calibration error of predictive
    probabilities.

    The expected calibration error (ECE) bins the examples by their confidence
    $c_i = \\max_k p_{ik}$ into ``n_bins`` equal-width bins of $(0, 1]$ and averages the gap
    between accuracy and mean confidence per bin, weighted by the bin's share of the examples:
    $\\mathrm{ECE} = \\sum_b \\frac{|B_b|}{n} |\\mathrm{acc}(B_b) - \\mathrm{conf}(B_b)|$
    (Guo et al., 2017). The negative log-likelihood is the mean of
    $-\\log p_{i y_i}$ (probabilities clamped at the smallest positive normal number of their
    dtype, so that a confident wrong prediction counts as a large finite loss).

    Args:
        probs: ``(n, n_classes)`` probabilities (rows summing to 1).
        labels: ``(n,)`` integer classes.
        n_bins: number of confidence bins.

    Returns:
        ``{"nll": ..., "acc": ..., "ece": ...}`` (Python floats; one host read).

    Raises:
        ValueError: on mismatched shapes, no examples or ``n_bins < 1``.
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"probs must be (n, n_classes) and labels (n,), got {tuple(probs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("calibration_scores needs at least one example")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    tiny = torch.finfo(probs.dtype).tiny
    picked = probs.gather(1, labels.reshape(-1, 1)).squeeze(1)
    nll = -picked.clamp_min(tiny).log().mean()
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(probs.dtype)
    # bin b holds confidences in (b / n_bins, (b + 1) / n_bins]
    which = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device)
    count.index_add_(0, which, torch.ones_like(conf))
    gap = torch.zeros_like(count).index_add_(0, which, correct - conf)
    ece = gap.abs().sum() / probs.shape[0]
    nll, acc, ece = torch.stack([nll, correct.mean(), ece]).tolist()
    return {"nll": nll, "acc": acc, "ece": ece}


class PredictiveAverage:
    """The running mean of predictive probabilities over samples.

    Call [`add`][manifold_langevin.nn.calibration.PredictiveAverage.add] with each sample's
    probabilities (from [`predict_probs`][manifold_langevin.nn.calibration.predict_probs]);
    [`mean`][manifold_langevin.nn.calibration.PredictiveAverage.mean] is their average, the
    Monte Carlo posterior predictive when the samples come from a sampler.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.n = 0

    def add(self, probs: torch.Tensor) -> None:
        """Add one sample's ``(n, n_classes)`` probabilities."""
        if self.total is None:
            self.total = probs.detach().double().clone()
        elif probs.shape != self.total.shape:
            raise ValueError(
                f"expected probabilities of shape {tuple(self.total.shape)}, got "
                f"{tuple(probs.shape)}"
            )
        else:
            self.total += probs.detach().double()
        self.n += 1

    def mean(self) -> torch.Tensor:
        """The average of the probabilities added so far."""
        if self.total is None:
            raise ValueError("no probabilities were added")
        return self.total / self.n
