"""1-, 2- and 3-D convolution and transposed convolution with the backward pass written out by hand.

Forward is torch's own convolution (run without autograd recording, so its shape
and argument checks and its speed are torch's). Backward is the chain rule:

* ``dL/dx`` is the transposed convolution of ``g`` with ``W``
  (what :func:`torch.nn.grad.conv2d_input` computes),
* ``dL/dW`` is the correlation of ``x`` with ``g`` (what
  :func:`torch.nn.grad.conv2d_weight` computes),
* ``dL/db`` is ``g`` summed over batch and positions.

A transposed convolution (``conv_transpose1d/2d/3d``) is the adjoint of a convolution,
so the roles swap: ``dL/dx`` is the *convolution* of ``g`` with ``W`` and ``dL/dW`` the
correlation of ``g`` with ``x``; the same primitive computes them with ``transposed=True``.

The first two come from one call of ``aten.convolution_backward``, the primitive
both ``torch.nn.grad`` helpers wrap (one call shares their setup). It is
differentiable, so double backward works. When autograd would record nothing (no
argument needs a gradient, or grad mode is off) the functions simply call torch's op.

Example:
    >>> import torch
    >>> from gradlens.functional import conv2d
    >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
    >>> w = torch.randn(4, 3, 3, 3, requires_grad=True)
    >>> y = conv2d(x, w, padding="same")
    >>> y.shape
    torch.Size([2, 4, 8, 8])
    >>> y.sum().backward(); x.grad.shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from gradlens.functional._util import check_tensor, records_grad, expand_tuple

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]

_IntOrTuple = Union[int, Sequence[int]]

_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_FORWARD_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _numeric_padding(padding: Union[str, _IntOrTuple], weight: torch.Tensor, dilation: Tuple[int, ...], nd: int):
    """``(symmetric padding, extra right padding)`` per spatial dim, as torch resolves them.

    ``"same"`` pads ``d*(k-1)`` in total: half on each side, and when that is odd the
    extra element goes on the right (torch pads the input by one there).
    """
    if padding == "valid":
        return (0,) * nd, (0,) * nd
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
        left = tuple(t // 2 for t in total)
        return left, tuple(t - 2 * lft for t, lft in zip(total, left))
    return expand_tuple(padding, nd), (0,) * nd


class _ConvNdFn(torch.autograd.Function):
    """``y = conv(x, W) + b`` for 1-D or 2-D ``x`` (batched or not)."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, stride, padding, dilation, groups, nd: int,  # type: ignore[override]
                output_padding=None):
        # torch's own op: its checks, its error messages, its kernels.
        # output_padding is None for a convolution, a tuple for a transposed one.
        ctx.transposed = output_padding is not None
        if ctx.transposed:
            out = _FORWARD_T[nd](x, weight, bias, stride, padding, output_padding, groups, dilation)
        else:
            out = _FORWARD[nd](x, weight, bias, stride, padding, dilation, groups)
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.x_shape = x.shape
        ctx.w_shape = weight.shape
        ctx.nd = nd
        ctx.stride = expand_tuple(stride, nd)
        ctx.dilation = expand_tuple(dilation, nd)
        ctx.padding, ctx.extra = _numeric_padding(padding, weight, ctx.dilation, nd)
        ctx.output_padding = expand_tuple(output_padding, nd) if ctx.transposed else (0,) * nd
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        nd = ctx.nd
        unbatched = len(ctx.x_shape) == nd + 1
        if unbatched:
            g = g.unsqueeze(0)
        # Input size as the convolution saw it: "same" with an even receptive field
        # pads one extra element on the right of each such dim.
        batched_shape = ((1,) if unbatched else ()) + tuple(ctx.x_shape)
        seen_shape = batched_shape[:2] + tuple(n + e for n, e in zip(batched_shape[2:], ctx.extra))
        asymmetric = any(ctx.extra)
        grad_x = grad_w = grad_b = None
        if need_x or need_w:
            if need_w:
                x_seen = x.unsqueeze(0) if unbatched else x
                if asymmetric:
                    x_seen = F.pad(x_seen, [p for e in reversed(ctx.extra) for p in (0, e)])
            else:
                x_seen = g.new_empty(1).expand(seen_shape)  # only its shape is read
            w_seen = weight if need_x else g.new_empty(1).expand(ctx.w_shape)  # likewise
            # dL/dx = conv_transpose(g, W)       (the adjoint of the convolution)
            # dL/dW[o, i, k] = sum over batch and positions p of g[o, p] * x[i, p*stride + k*dilation]
            # One call of the primitive behind torch.nn.grad.conv{1,2}d_input/_weight computes
            # both (sharing its setup: measurably faster than two calls on CPU).
            # (transposed: dL/dx = conv(g, W), dL/dW = correlation of g with x; same call)
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                g, x_seen, w_seen, None, ctx.stride, ctx.padding, ctx.dilation,
                ctx.transposed, list(ctx.output_padding), ctx.groups, (need_x, need_w, False),
            )
            if need_x:
                if asymmetric:
                    # drop the gradient of the extra right padding
                    for dim, n in enumerate(batched_shape[2:], start=2):
                        grad_x = grad_x.narrow(dim, 0, n)
                if unbatched:
                    grad_x = grad_x.squeeze(0)
        if need_b:
            # dL/db[o] = sum over batch and positions of g[o, ...]
            grad_b = g.sum(dim=[0] + list(range(2, g.dim())))
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _conv(
    name: str,
    nd: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: _IntOrTuple,
    padding: Union[str, _IntOrTuple],
    dilation: _IntOrTuple,
    groups: int,
) -> torch.Tensor:
    check_tensor(name, "input", input)
    check_tensor(name, "weight", weight)
    if bias is not None:
        check_tensor(name, "bias", bias)
    if not records_grad(input, weight, bias):
        # nothing to differentiate: torch's op as is
        return _FORWARD[nd](input, weight, bias, stride, padding, dilation, groups)
    return _ConvNdFn.apply(input, weight, bias, stride, padding, dilation, groups, nd)


def conv1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOrTuple = 1,
    padding: Union[str, _IntOrTuple] = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.conv1d` with a hand-written backward.

    Args:
        input: ``(N, C_in, L)`` or unbatched ``(C_in, L)``.
        weight: ``(C_out, C_in / groups, k)``.
        bias: optional ``(C_out,)``.
        stride, dilation: int or 1-tuple.
        padding: int, 1-tuple, ``"valid"`` (no padding) or ``"same"`` (output length
            equals input length; stride 1 only, as in torch).
        groups: split channels into this many independent convolutions.

    Example:
        >>> import torch
        >>> from gradlens.functional import conv1d
        >>> conv1d(torch.randn(1, 2, 10), torch.randn(4, 2, 3), stride=2).shape
        torch.Size([1, 4, 4])
    """
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOrTuple = 1,
    padding: Union[str, _IntOrTuple] = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.conv2d` with a hand-written backward.

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        bias: optional ``(C_out,)``.
        stride, dilation: int or 2-tuple.
        padding: int, 2-tuple, ``"valid"`` or ``"same"`` (stride 1 only, as in torch;
            an even receptive field pads the extra element on the right/bottom).
        groups: split channels into this many independent convolutions.

    Example:
        >>> import torch
        >>> from gradlens.functional import conv2d
        >>> conv2d(torch.randn(1, 4, 8, 8), torch.randn(6, 2, 3, 3), groups=2, padding=1).shape
        torch.Size([1, 6, 8, 8])
    """
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOrTuple = 1,
    padding: Union[str, _IntOrTuple] = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.conv3d` with a hand-written backward.

    Args:
        input: ``(N, C_in, D, H, W)`` or unbatched ``(C_in, D, H, W)``.
        weight: ``(C_out, C_in / groups, kD, kH, kW)``.
        bias, stride, padding, dilation, groups: as :func:`conv2d`, with 3-tuples.

    Example:
        >>> import torch
        >>> from gradlens.functional import conv3d
        >>> conv3d(torch.randn(1, 2, 4, 5, 5), torch.randn(3, 2, 3, 3, 3), padding=1).shape
        torch.Size([1, 3, 4, 5, 5])
    """
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups)


def _conv_transpose(name: str, nd: int, input, weight, bias, stride, padding, output_padding, groups, dilation):
    check_tensor(name, "input", input)
    check_tensor(name, "weight", weight)
    if bias is not None:
        check_tensor(name, "bias", bias)
    if isinstance(padding, str):
        raise ValueError(f"{name}(padding=...) expects an int or a tuple of ints, got {padding!r} "
                         "(torch has no string padding for transposed convolutions)")
    if not records_grad(input, weight, bias):
        return _FORWARD_T[nd](input, weight, bias, stride, padding, output_padding, groups, dilation)
    return _ConvNdFn.apply(input, weight, bias, stride, padding, dilation, groups, nd, expand_tuple(output_padding, nd))


def conv_transpose1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.conv_transpose1d` (the adjoint of conv1d), hand-written backward.

    Args:
        input: ``(N, C_in, L)`` or unbatched ``(C_in, L)``.
        weight: ``(C_in, C_out / groups, k)``.
        bias: optional ``(C_out,)``.
        stride, padding, output_padding, dilation: int or 1-tuple (``output_padding``
            adds to one side of the output, to pick among the sizes a stride allows).

    Example:
        >>> import torch
        >>> from gradlens.functional import conv_transpose1d
        >>> conv_transpose1d(torch.randn(1, 2, 5), torch.randn(2, 3, 3), stride=2).shape
        torch.Size([1, 3, 11])
    """
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.conv_transpose2d` (the adjoint of conv2d), hand-written backward.

    Args: as :func:`conv_transpose1d`, with ``(N, C_in, H, W)`` input, ``(C_in, C_out / groups,
    kH, kW)`` weight and 2-tuples.

    Example:
        >>> import torch
        >>> from gradlens.functional import conv_transpose2d
        >>> conv_transpose2d(torch.randn(1, 4, 8, 8), torch.randn(4, 2, 4, 4), stride=2, padding=1).shape
        torch.Size([1, 2, 16, 16])
    """
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.conv_transpose3d` (the adjoint of conv3d), hand-written backward.

    Example:
        >>> import torch
        >>> from gradlens.functional import conv_transpose3d
        >>> conv_transpose3d(torch.randn(1, 2, 3, 3, 3), torch.randn(2, 1, 2, 2, 2), stride=2).shape
        torch.Size([1, 1, 6, 6, 6])
    """
    return _conv_transpose("conv_transpose3d", 3, input, weight, bias, stride, padding, output_padding, groups, dilation)
