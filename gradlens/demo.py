"""``gradlens demo``: three small networks that show what diagnosis finds."""

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
