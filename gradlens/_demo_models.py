"""The demo's networks (kept apart so that ``gradlens --help`` does not import torch)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """A healthy pre-norm residual MLP: ``x + W2 relu(W1 LayerNorm(x))`` blocks.

    >>> ResidualMLP()(torch.zeros(2, 16)).shape
    torch.Size([2, 4])
    """

    def __init__(self, d_in: int = 16, width: int = 64, depth: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h))


def deep_sigmoid(d_in: int = 16, width: int = 32, depth: int = 10, classes: int = 4) -> nn.Sequential:
    """A deep sigmoid MLP: sigmoid' <= 1/4, so the gradient shrinks at every layer (vanishing)."""
    layers: list = [nn.Linear(d_in, width), nn.Sigmoid()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def bad_relu(d_in: int = 16, width: int = 64, depth: int = 8, classes: int = 4) -> nn.Sequential:
    """A ReLU MLP initialised with std 4/sqrt(fan_in), ~2.8x He init (exploding)."""
    widths = [d_in] + [width] * (depth - 1) + [classes]
    layers: list = []
    for i in range(depth):
        lin = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            lin.weight.normal_(0.0, 4.0 / widths[i] ** 0.5)
            lin.bias.zero_()
        layers.append(lin)
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def synthetic_classification(n: int = 512, d_in: int = 16, classes: int = 4, *, seed: int = 0):
    """Gaussian inputs labelled by a random linear map (made in code, no download)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = (x @ torch.randn(d_in, classes, generator=g)).argmax(1)
    return x, y
