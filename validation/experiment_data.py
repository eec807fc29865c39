"""Fashion-MNIST as plain tensors for the experiments, read through ``ml.nn.data``."""

from __future__ import annotations

import torch

import manifold_langevin as ml

__all__ = ["load_fashion_mnist"]


def load_fashion_mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: float32 images ``(n, 28, 28)`` in ``[0, 1]`` and
    int64 labels; 60,000 training and 10,000 test images (cached by ``ml.nn.data``; do not modify
    the returned tensors in place).

    Raises:
        FileNotFoundError: the IDX files are missing (the message names the apt package).
    """
    train, test = ml.nn.data.fashion_mnist(flatten=False)
    return train.x[:, 0], train.y, test.x[:, 0], test.y
