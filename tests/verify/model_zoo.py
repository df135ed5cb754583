"""A model with three custom autograd Functions for the check_model tests.

* ``Swish`` is right.
* ``RowClip`` (rows rescaled to norm <= max_norm) treats the scale as a constant in its
  backward: wrong only on rows longer than ``max_norm``, which N(0, 1) inputs of 16
  features (norm ~4) never produce and the model's real activations do.
* ``ReLU6`` forgets the upper clip in its backward: wrong only where x > 6, a kink that
  N(0, 1) inputs never reach and the pre-activations of ``Net`` do.

``Net(fixed=True)`` uses the correct twins of the two broken Functions.
"""

from __future__ import annotations

import torch
from torch import nn


class Swish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        # d(x s(x)) = s + x s (1 - s)
        return g * (s + x * s * (1 - s))


class RowClipFixed(torch.autograd.Function):
    """y = x * min(1, c / |x|) per row (last dim)."""

    @staticmethod
    def forward(ctx, x, max_norm):
        n = x.norm(dim=-1, keepdim=True)
        ctx.save_for_backward(x, n)
        ctx.max_norm = max_norm
        return x * (max_norm / n).clamp(max=1.0)

    @staticmethod
    def backward(ctx, g):
        x, n = ctx.saved_tensors
        c = ctx.max_norm
        # |x| > c: y = c x / |x|, dy/dx = c / |x| (I - x x^T / |x|^2); else identity
        long = n > c
        clipped = (c / n) * (g - x * (x * g).sum(-1, keepdim=True) / n**2)
        return torch.where(long, clipped, g), None


class RowClip(RowClipFixed):
    @staticmethod
    def backward(ctx, g):
        x, n = ctx.saved_tensors
        # BUG: the scale min(1, c/|x|) is treated as a constant (its derivative is dropped)
        return g * (ctx.max_norm / n).clamp(max=1.0), None


class ReLU6Fixed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        # d clamp(x, 0, 6) = 1 on (0, 6), 0 elsewhere
        return g * ((x > 0) & (x < 6)).to(g.dtype)


class ReLU6(ReLU6Fixed):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0).to(g.dtype)  # BUG: the upper clip at 6 is forgotten


class Act(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.fn = ReLU6Fixed if fixed else ReLU6

    def forward(self, x):
        return self.fn.apply(x)  # LINE: relu6


class Clip(nn.Module):
    def __init__(self, max_norm: float, fixed: bool) -> None:
        super().__init__()
        self.max_norm = max_norm
        self.fn = RowClipFixed if fixed else RowClip

    def forward(self, x):
        return self.fn.apply(x, self.max_norm)  # LINE: rowclip


swish = Swish.apply  # bound at import time, as many codebases do


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return swish(self.fc(x))  # LINE: swish


class Net(nn.Module):
    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.blocks = nn.Sequential(Act(fixed), Clip(8.0, fixed))
        self.head = Head()

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)))


def make(dtype: torch.dtype = torch.float32, fixed: bool = False, seed: int = 0):
    """``(model, batch)``: real inputs of magnitude ~4 push pre-activations past 6 and rows past norm 8."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Net(fixed).to(dtype)
    x = (4 * torch.randn(32, 8, generator=gen, dtype=torch.float64)).to(dtype)
    return model, x


def line_of(tag: str) -> int:
    """The source line marked ``# LINE: tag`` in this file."""
    import inspect

    lines = inspect.getsource(__import__(__name__)).splitlines()
    return next(i for i, s in enumerate(lines, 1) if s.rstrip().endswith(f"# LINE: {tag}"))
