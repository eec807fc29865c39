"""Small networks of the examples and experiments: multilayer perceptrons and CNNs."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "cnn", "mlp", "model_device"]

#: activation names accepted by [`mlp`][] and [`cnn`][]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def _activation(activation: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(activation, str):
        try:
            return ACTIVATIONS[activation.lower()]
        except KeyError:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            ) from None
    return activation


def mlp(
    sizes: Sequence[int], activation: str | type[nn.Module] = "relu", *, bias: bool = True
) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    An activation follows every linear layer but the last (the output gives logits). The paper's
    Fashion-MNIST network (E2) is ``mlp([784, 1000, 10])``.

    Args:
        sizes: layer widths, input first (at least two).
        activation: a name from ``ACTIVATIONS`` or an ``nn.Module`` class.
        bias: whether the linear layers have biases.

    Returns:
        an ``nn.Sequential`` of ``Linear`` and activation modules.

    Examples:
        >>> mlp([4, 8, 3], "tanh")
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): Tanh()
          (2): Linear(in_features=8, out_features=3, bias=True)
        )
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two positive widths, got {sizes}")
    act = _activation(activation)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def cnn(
    in_channels: int = 1,
    n_classes: int = 10,
    image_size: int = 28,
    channels: Sequence[int] = (16, 32),
    hidden: int = 128,
    activation: str | type[nn.Module] = "relu",
) -> nn.Sequential:
    """A small convolutional classifier for ``(N, C, H, W)`` images (square, ``H = W``).

    Each entry of ``channels`` adds a 3 x 3 convolution (padding 1), the activation and a 2 x 2
    max-pool; then a hidden linear layer of ``hidden`` units and the output layer. Under the
    orthogonal constraint the kernels are ``(out, in * 9)`` matrices.

    Args:
        in_channels: input channels.
        n_classes: outputs (logits).
        image_size: input height and width.
        channels: output channels of the convolutions.
        hidden: width of the hidden linear layer.
        activation: a name from ``ACTIVATIONS`` or an ``nn.Module`` class.

    Examples:
        >>> net = cnn(image_size=8, channels=(4,), hidden=16)
        >>> tuple(net(torch.zeros(2, 1, 8, 8)).shape)
        (2, 10)
    """
    act = _activation(activation)
    layers: list[nn.Module] = []
    size, c_in = int(image_size), int(in_channels)
    for c in channels:
        if size < 2:
            raise ValueError(f"image_size {image_size} is too small for {len(channels)} poolings")
        layers += [nn.Conv2d(c_in, int(c), 3, padding=1), act(), nn.MaxPool2d(2)]
        size, c_in = size // 2, int(c)
    layers += [nn.Flatten(), nn.Linear(c_in * size * size, hidden), act()]
    layers.append(nn.Linear(hidden, n_classes))
    return nn.Sequential(*layers)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
