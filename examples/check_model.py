"""Check every custom autograd Function of a model at once, on the activations it really gets.

A small model holds three hand-written Functions: a fused swish (right), a row clip
(rows rescaled to norm <= 8; its backward treats the scale as a constant) and a ReLU6
(its backward forgets the clip at 6). Both bugs hide from a test on N(0, 1) inputs:
rows of 16 such numbers have norm ~4 and never pass 6. The model's real activations
do. ``gradlens.check_model`` runs one forward, records each Function call with a copy
of its real inputs, and checks each one. Run:

    python examples/check_model.py
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradlens  # noqa: E402


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


class RowClip(torch.autograd.Function):
    """y = x * min(1, c / |x|) per row."""

    @staticmethod
    def forward(ctx, x, max_norm):
        n = x.norm(dim=-1, keepdim=True)
        ctx.save_for_backward(n)
        ctx.max_norm = max_norm
        return x * (max_norm / n).clamp(max=1.0)

    @staticmethod
    def backward(ctx, g):
        (n,) = ctx.saved_tensors
        return g * (ctx.max_norm / n).clamp(max=1.0), None  # BUG: d(scale)/dx is dropped


class ReLU6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0).to(g.dtype)  # BUG: should be (0 < x < 6)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        h = ReLU6.apply(self.fc(x))
        return RowClip.apply(h, 8.0)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return Swish.apply(self.head(self.block(x)))


def main() -> int:
    torch.manual_seed(0)
    model = Net()
    batch = 6 * torch.randn(32, 8)  # real data: larger than N(0, 1)

    print("== each Function alone, on N(0, 1) test inputs ==")
    z = torch.randn(32, 16, requires_grad=True)
    alone = {
        "ReLU6": gradlens.check_backward(ReLU6.apply, z).ok,
        "RowClip": gradlens.check_backward(lambda t: RowClip.apply(t, 8.0), z).ok,
    }
    print(", ".join(f"{k}: {'OK' if v else 'WRONG'}" for k, v in alone.items()))
    print()
    print("== gradlens.check_model(model, batch) ==")
    report = gradlens.check_model(model, batch)
    print(report)
    return 0 if (all(alone.values()) and [f.name for f in report.failed] == ["ReLU6", "RowClip"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
