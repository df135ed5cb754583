"""Linear layer: ``y = x W^T + b`` with its backward pass written out by hand.

When autograd would record nothing (no argument needs a gradient, or grad mode is
off) :func:`linear` simply calls torch's op.

Example:
    >>> import torch
    >>> from gradlens.functional import linear
    >>> x = torch.randn(5, 3, requires_grad=True)
    >>> w = torch.randn(2, 3, requires_grad=True)
    >>> b = torch.randn(2, requires_grad=True)
    >>> linear(x, w, b).sum().backward()
    >>> torch.allclose(b.grad, torch.full((2,), 5.0))
    True
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F

from gradlens.functional._util import check_tensor, sum_to_shape, records_grad

__all__ = ["linear"]


class _LinearFn(torch.autograd.Function):
    """``y = x W^T + b`` for ``x`` of shape ``(*, in)``, ``W`` of shape ``(out, in)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        need_x, need_w, _ = ctx.needs_input_grad
        # dL/dx needs W only, dL/dW needs x only: keep just those references.
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.bias_shape = None if bias is None else bias.shape
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        # Flatten leading batch dims: g2 is (B, out), rows of the batch.
        g2 = g.reshape(-1, g.shape[-1])
        if need_x:
            # dL/dx = g W
            grad_x = g.matmul(weight)
        if need_w:
            # dL/dW = g^T x   (summed over every batch row)
            grad_w = g2.t().mm(x.reshape(-1, x.shape[-1]))
        if need_b and ctx.bias_shape is not None:
            # dL/db = sum over batch rows of g (and over any dim the bias was broadcast along)
            grad_b = sum_to_shape(g2.sum(0), ctx.bias_shape)
        return grad_x, grad_w, grad_b


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.linear`: ``input @ weight.T + bias``.

    Args:
        input: ``(*, in_features)``; any number of leading batch dims, 1-D too.
        weight: ``(out_features, in_features)`` (or ``(in_features,)`` without bias,
            dropping the output dim, as torch allows).
        bias: optional ``(out_features,)``.

    Returns:
        ``(*, out_features)``.

    Example:
        >>> import torch
        >>> from gradlens.functional import linear
        >>> linear(torch.ones(2, 3), torch.ones(4, 3)).shape
        torch.Size([2, 4])
    """
    check_tensor("linear", "input", input)
    check_tensor("linear", "weight", weight)
    if bias is not None:
        check_tensor("linear", "bias", bias)
    if not records_grad(input, weight, bias):
        return F.linear(input, weight, bias)  # nothing to differentiate: torch's op as is
    if weight.dim() == 1:
        if bias is not None:
            # torch rejects this combination too (addmm with a 1-D mat2).
            raise RuntimeError("linear(): a 1-D 'weight' cannot be combined with 'bias' (torch: mat2 must be a matrix)")
        # A vector weight is a one-row matrix whose output dim is dropped (torch's rule).
        return _LinearFn.apply(input, weight.unsqueeze(0), None).squeeze(-1)
    return _LinearFn.apply(input, weight, bias)
