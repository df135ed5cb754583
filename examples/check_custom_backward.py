"""Verify a hand-written backward with gradlens.check_backward: a buggy version, then the fix.

A user-style fused op, ``scaled_softplus(x, w) = softplus(x) * w`` summed over its last
dimension, written as a torch.autograd.Function. The first backward averages where it
should sum (a classic copy-paste from a mean reduction) and drops the last element of
the weight gradient (a reduction's tail chunk); the second is right. Run:

    python examples/check_custom_backward.py
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradlens  # noqa: E402


class ScaledSoftplusBuggy(torch.autograd.Function):
    """out[i] = sum_j softplus(x[i, j]) * w[j]  (backward has two bugs)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return (F.softplus(x) * w).sum(-1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.unsqueeze(-1)
        # d/dx = g * sigmoid(x) * w
        dx = g * torch.sigmoid(x) * w / x.shape[-1]  # BUG: divides by n, as a mean would
        # d/dw = sum_i g_i * softplus(x_i)
        dw = (g * F.softplus(x)).sum(0)
        dw[-1] = 0  # BUG: the last chunk of the reduction is dropped
        return dx, dw


class ScaledSoftplus(torch.autograd.Function):
    """out[i] = sum_j softplus(x[i, j]) * w[j]  (correct backward)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return (F.softplus(x) * w).sum(-1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.unsqueeze(-1)
        # d/dx = g * sigmoid(x) * w
        dx = g * torch.sigmoid(x) * w if ctx.needs_input_grad[0] else None
        # d/dw = sum_i g_i * softplus(x_i)
        dw = (g * F.softplus(x)).sum(0) if ctx.needs_input_grad[1] else None
        return dx, dw


def reference(x, w):
    """The same forward with plain torch ops: its autograd is the exact reference."""
    return (F.softplus(x) * w).sum(-1)


def main() -> int:
    torch.manual_seed(0)
    x = torch.randn(32, 8, requires_grad=True)  # float32, as in training
    w = torch.randn(8, requires_grad=True)

    print("== buggy backward, against float64 finite differences (no reference needed) ==")
    bad = gradlens.check_backward(ScaledSoftplusBuggy.apply, x, w)
    print(bad)
    print()
    print("== fixed backward, against the plain-torch reference ==")
    good = gradlens.check_backward(ScaledSoftplus.apply, x, w, reference=reference)
    print(good)
    return 0 if (good.ok and not bad.ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
