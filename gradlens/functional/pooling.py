"""Pooling and flatten with their backward passes written out by hand.

Forward is torch's own op (run without autograd recording, so its argument checks,
output sizes and speed are torch's). Backward:

* max pooling: each output's gradient goes to the input element it picked (the
  argmax indices torch returns; ties resolved exactly as torch's indices), summed
  where windows overlap (``scatter_add``);
* average pooling: each output's gradient, divided by its window's divisor, is
  spread over its window (a transposed convolution with a kernel of ones);
* adaptive average pooling: ``y = A_h x A_w^T`` with averaging matrices, so
  ``dL/dx = A_h^T g A_w`` (one averaging matrix per spatial dim, 1-D to 3-D);
* adaptive max pooling: like max pooling, through the argmax indices torch returns;
* flatten: the gradient reshaped back.

Every backward is built from differentiable ops, so double backward works. When
autograd would record nothing (no input needs a gradient, or grad mode is off) each
function simply calls torch's op.

Example:
    >>> import torch
    >>> from gradlens.functional import max_pool2d
    >>> x = torch.tensor([[[[1.0, 2.0], [4.0, 3.0]]]], requires_grad=True)
    >>> max_pool2d(x, 2).sum().backward()
    >>> x.grad
    tensor([[[[0., 0.],
              [1., 0.]]]])
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torch.nn.grad as nn_grad

from gradlens.functional._util import check_tensor, records_grad, expand_tuple

__all__ = [
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "flatten",
]

_IntOrTuple = Union[int, Sequence[int]]


# --------------------------------------------------------------------------- max pool

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class _MaxPoolFn(torch.autograd.Function):
    """``y[p] = x[argmax over window p]``; returns ``(y, indices)``.

    ``pool(x)`` is torch's op returning ``(out, flat spatial argmax indices)``: a max pool
    or an adaptive max pool; the backward is the same for both.
    """

    @staticmethod
    def forward(ctx: Any, x, pool, nd: int):  # type: ignore[override]
        out, idx = pool(x)
        ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(idx)
        ctx.x_shape = x.shape
        ctx.nd = nd
        return out, idx

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, _g_idx: Optional[torch.Tensor]):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            nd = ctx.nd
            x_shape = ctx.x_shape
            planes = tuple(x_shape[:-nd])
            numel = math.prod(x_shape[-nd:])
            # dL/dx[i] = sum of g[p] over the windows p whose max is x[i]
            # (in place on our own zeros: still differentiable in g for double backward)
            flat = g.new_zeros(planes + (numel,))
            grad_x = flat.scatter_add_(-1, idx.flatten(-nd), g.flatten(-nd)).view(x_shape)
        return grad_x, None, None


def _max_pool(name, nd, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    check_tensor(name, "input", input)
    if not records_grad(input):
        # nothing to differentiate: torch's op as is
        return _MAX_POOL[nd](input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                             return_indices=return_indices)
    def pool(x):
        return _MAX_POOL[nd](x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)

    out, idx = _MaxPoolFn.apply(input, pool, nd)
    return (out, idx) if return_indices else out


def max_pool1d(
    input: torch.Tensor,
    kernel_size: _IntOrTuple,
    stride: Optional[_IntOrTuple] = None,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """Drop-in for :func:`torch.nn.functional.max_pool1d` with a hand-written backward.

    Args:
        input: ``(N, C, L)`` or unbatched ``(C, L)``.
        kernel_size, stride (default: ``kernel_size``), padding, dilation: ints or 1-tuples.
        ceil_mode: round the output length up instead of down.
        return_indices: also return the argmax indices (as torch does).

    Example:
        >>> import torch
        >>> from gradlens.functional import max_pool1d
        >>> max_pool1d(torch.tensor([[[1.0, 3.0, 2.0, 0.0]]]), 2)
        tensor([[[3., 2.]]])
    """
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(
    input: torch.Tensor,
    kernel_size: _IntOrTuple,
    stride: Optional[_IntOrTuple] = None,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """Drop-in for :func:`torch.nn.functional.max_pool2d` with a hand-written backward.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        kernel_size, stride (default: ``kernel_size``), padding, dilation: ints or 2-tuples.
        ceil_mode: round the output size up instead of down.
        return_indices: also return the argmax indices (flat ``h * W + w``, as torch).

    Example:
        >>> import torch
        >>> from gradlens.functional import max_pool2d
        >>> max_pool2d(torch.randn(1, 3, 8, 8), 3, stride=2, padding=1).shape
        torch.Size([1, 3, 4, 4])
    """
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


# --------------------------------------------------------------------------- avg pool

_CONV_INPUT = {1: nn_grad.conv1d_input, 2: nn_grad.conv2d_input, 3: nn_grad.conv3d_input}


def max_pool3d(
    input: torch.Tensor,
    kernel_size: _IntOrTuple,
    stride: Optional[_IntOrTuple] = None,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """Drop-in for :func:`torch.nn.functional.max_pool3d` with a hand-written backward.

    Args: as :func:`max_pool2d`, for ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input.

    Example:
        >>> import torch
        >>> from gradlens.functional import max_pool3d
        >>> max_pool3d(torch.randn(1, 2, 4, 4, 4), 2).shape
        torch.Size([1, 2, 2, 2, 2])
    """
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _window_sizes(n: int, o: int, k: int, s: int, p: int, count_include_pad: bool, like: torch.Tensor) -> torch.Tensor:
    """How many elements torch divides by along one dim, for each of the ``o`` windows.

    Window ``j`` starts at ``j*s - p``; it is clipped to the padded input (``n + p``)
    and, with ``count_include_pad=False``, also to the input itself (``[0, n)``).
    """
    start = torch.arange(o, device=like.device) * s - p
    end = torch.clamp(start + k, max=n + p)
    if not count_include_pad:
        start = torch.clamp(start, min=0)
        end = torch.clamp(end, max=n)
    return (end - start).to(like.dtype)


class _AvgPoolFn(torch.autograd.Function):
    """``y[p] = sum over window p of x / divisor[p]``."""

    @staticmethod
    def forward(ctx: Any, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, nd: int):  # type: ignore[override]
        if nd == 1:
            out = F.avg_pool1d(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
        else:
            pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
            out = pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        ctx.nd = nd
        ctx.x_shape = x.shape
        ctx.k = expand_tuple(kernel_size, nd)
        ctx.s = ctx.k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else expand_tuple(stride, nd)
        ctx.p = expand_tuple(padding, nd)
        ctx.count_include_pad = count_include_pad
        ctx.divisor_override = divisor_override
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return (None,) * 8
        nd, k, s, p = ctx.nd, ctx.k, ctx.s, ctx.p
        x_shape = ctx.x_shape
        unbatched = len(x_shape) == nd + 1
        if unbatched:
            g = g.unsqueeze(0)
        spatial_in = tuple(x_shape[-nd:])
        spatial_out = tuple(g.shape[-nd:])
        # Divide each output's gradient by its window's divisor (separable per dim).
        if ctx.divisor_override:
            g_scaled = g / ctx.divisor_override
        else:
            div = None
            for d, (n, o) in enumerate(zip(spatial_in, spatial_out)):
                size = _window_sizes(n, o, k[d], s[d], p[d], ctx.count_include_pad, g)
                shape = [1] * nd
                shape[d] = o
                size = size.view(shape)
                div = size if div is None else div * size
            g_scaled = g / div
        # dL/dx[i] = sum over windows p containing i of g[p] / divisor[p]:
        # a transposed convolution of g_scaled with a depthwise kernel of ones.
        # ceil_mode can add a last window running past the padded input: grow the
        # input size so that window exists, then drop the extra rows.
        extra = [max(0, (o - 1) * st + kk - (n + 2 * pp)) for n, o, kk, st, pp in zip(spatial_in, spatial_out, k, s, p)]
        n_batch = g.shape[0]
        channels = g.shape[1]
        seen = (n_batch, channels) + tuple(n + e for n, e in zip(spatial_in, extra))
        ones = g.new_ones((1, 1) + tuple(k)).expand((channels, 1) + tuple(k))
        grad_x = _CONV_INPUT[nd](seen, ones, g_scaled, s, p, 1, channels)
        for dim, (n, e) in enumerate(zip(spatial_in, extra), start=2):
            if e:
                grad_x = grad_x.narrow(dim, 0, n)
        if unbatched:
            grad_x = grad_x.squeeze(0)
        return grad_x, None, None, None, None, None, None, None


def avg_pool1d(
    input: torch.Tensor,
    kernel_size: _IntOrTuple,
    stride: Optional[_IntOrTuple] = None,
    padding: _IntOrTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.avg_pool1d` with a hand-written backward.

    Args:
        input: ``(N, C, L)`` or unbatched ``(C, L)``.
        kernel_size, stride (default: ``kernel_size``), padding: ints or 1-tuples.
        ceil_mode: round the output length up instead of down.
        count_include_pad: count zero padding in the divisor.

    Example:
        >>> import torch
        >>> from gradlens.functional import avg_pool1d
        >>> avg_pool1d(torch.tensor([[[1.0, 3.0, 2.0, 0.0]]]), 2)
        tensor([[[2., 1.]]])
    """
    check_tensor("avg_pool1d", "input", input)
    if not records_grad(input):
        return F.avg_pool1d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return _AvgPoolFn.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1)


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: _IntOrTuple,
    stride: Optional[_IntOrTuple] = None,
    padding: _IntOrTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.avg_pool2d` with a hand-written backward.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        kernel_size, stride (default: ``kernel_size``), padding: ints or 2-tuples.
        ceil_mode: round the output size up instead of down.
        count_include_pad: count zero padding in the divisor.
        divisor_override: divide every window's sum by this instead.

    Example:
        >>> import torch
        >>> from gradlens.functional import avg_pool2d
        >>> avg_pool2d(torch.ones(1, 1, 4, 4), 2, divisor_override=1)
        tensor([[[[4., 4.],
                  [4., 4.]]]])
    """
    check_tensor("avg_pool2d", "input", input)
    if not records_grad(input):
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _AvgPoolFn.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 2)


def avg_pool3d(
    input: torch.Tensor,
    kernel_size: _IntOrTuple,
    stride: Optional[_IntOrTuple] = None,
    padding: _IntOrTuple = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.avg_pool3d` with a hand-written backward.

    Args: as :func:`avg_pool2d`, for ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input.

    Example:
        >>> import torch
        >>> from gradlens.functional import avg_pool3d
        >>> avg_pool3d(torch.ones(1, 1, 4, 4, 4), 2).shape
        torch.Size([1, 1, 2, 2, 2])
    """
    check_tensor("avg_pool3d", "input", input)
    if not records_grad(input):
        return F.avg_pool3d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _AvgPoolFn.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 3)


# ------------------------------------------------------------------ adaptive avg pool


def _adaptive_matrix(n: int, o: int, like: torch.Tensor) -> torch.Tensor:
    """``A`` of shape ``(o, n)``: row ``j`` averages torch's adaptive window ``j``.

    Window ``j`` covers ``[floor(j*n/o), ceil((j+1)*n/o))`` (torch's rule).
    """
    j = torch.arange(o, device=like.device)
    start = (j * n) // o
    end = ((j + 1) * n + o - 1) // o
    i = torch.arange(n, device=like.device)
    inside = (i >= start[:, None]) & (i < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


class _AdaptiveAvgPoolFn(torch.autograd.Function):
    """``y = x`` times an averaging matrix ``A_d`` along each spatial dim ``d`` (2-D: ``A_h x A_w^T``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, output_size, nd: int) -> torch.Tensor:  # type: ignore[override]
        out = _ADAPTIVE_AVG[nd](x, output_size)
        ctx.x_shape, ctx.nd = x.shape, nd
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None
        nd = ctx.nd
        grad_x = g
        # dL/dx = g times A_d^T along each spatial dim (2-D: A_h^T g A_w)
        for d in range(nd):
            dim = g.dim() - nd + d
            a = _adaptive_matrix(ctx.x_shape[dim], g.shape[dim], g)
            grad_x = grad_x.movedim(dim, -1).matmul(a).movedim(-1, dim)
        return grad_x, None, None


def _adaptive_avg(name: str, nd: int, input: torch.Tensor, output_size) -> torch.Tensor:
    check_tensor(name, "input", input)
    if not records_grad(input):
        return _ADAPTIVE_AVG[nd](input, output_size)
    return _AdaptiveAvgPoolFn.apply(input, output_size, nd)


def adaptive_avg_pool1d(input: torch.Tensor, output_size: Union[int, Sequence[int]]) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.adaptive_avg_pool1d` with a hand-written backward.

    Example:
        >>> import torch
        >>> from gradlens.functional import adaptive_avg_pool1d
        >>> adaptive_avg_pool1d(torch.tensor([[[1.0, 3.0, 2.0, 0.0]]]), 2)
        tensor([[[2., 1.]]])
    """
    return _adaptive_avg("adaptive_avg_pool1d", 1, input, output_size)


def adaptive_avg_pool2d(input: torch.Tensor, output_size: Union[int, None, Sequence[Optional[int]]]) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.adaptive_avg_pool2d` with a hand-written backward.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        output_size: int or ``(oH, oW)``; ``None`` in it keeps that input size.

    Example:
        >>> import torch
        >>> from gradlens.functional import adaptive_avg_pool2d
        >>> adaptive_avg_pool2d(torch.randn(2, 3, 7, 5), (2, None)).shape
        torch.Size([2, 3, 2, 5])
    """
    return _adaptive_avg("adaptive_avg_pool2d", 2, input, output_size)


def adaptive_avg_pool3d(input: torch.Tensor, output_size: Union[int, None, Sequence[Optional[int]]]) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.adaptive_avg_pool3d` with a hand-written backward.

    Example:
        >>> import torch
        >>> from gradlens.functional import adaptive_avg_pool3d
        >>> adaptive_avg_pool3d(torch.randn(2, 3, 5, 7, 4), (2, None, 1)).shape
        torch.Size([2, 3, 2, 7, 1])
    """
    return _adaptive_avg("adaptive_avg_pool3d", 3, input, output_size)


# ------------------------------------------------------------------ adaptive max pool

_ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


def _adaptive_max(name: str, nd: int, input: torch.Tensor, output_size, return_indices: bool):
    check_tensor(name, "input", input)
    if not records_grad(input):
        return _ADAPTIVE_MAX[nd](input, output_size, return_indices)

    def pool(x):
        return _ADAPTIVE_MAX[nd](x, output_size, True)

    out, idx = _MaxPoolFn.apply(input, pool, nd)
    return (out, idx) if return_indices else out


def adaptive_max_pool1d(input: torch.Tensor, output_size: Union[int, Sequence[int]], return_indices: bool = False):
    """Drop-in for :func:`torch.nn.functional.adaptive_max_pool1d` with a hand-written backward.

    Example:
        >>> import torch
        >>> from gradlens.functional import adaptive_max_pool1d
        >>> adaptive_max_pool1d(torch.tensor([[[1.0, 3.0, 2.0, 0.0]]]), 2)
        tensor([[[3., 2.]]])
    """
    return _adaptive_max("adaptive_max_pool1d", 1, input, output_size, return_indices)


def adaptive_max_pool2d(input: torch.Tensor, output_size: Union[int, None, Sequence[Optional[int]]],
                        return_indices: bool = False):
    """Drop-in for :func:`torch.nn.functional.adaptive_max_pool2d` with a hand-written backward.

    Example:
        >>> import torch
        >>> from gradlens.functional import adaptive_max_pool2d
        >>> adaptive_max_pool2d(torch.randn(2, 3, 7, 5), (2, None)).shape
        torch.Size([2, 3, 2, 5])
    """
    return _adaptive_max("adaptive_max_pool2d", 2, input, output_size, return_indices)


def adaptive_max_pool3d(input: torch.Tensor, output_size: Union[int, None, Sequence[Optional[int]]],
                        return_indices: bool = False):
    """Drop-in for :func:`torch.nn.functional.adaptive_max_pool3d` with a hand-written backward.

    Example:
        >>> import torch
        >>> from gradlens.functional import adaptive_max_pool3d
        >>> adaptive_max_pool3d(torch.randn(1, 2, 4, 4, 4), 1).shape
        torch.Size([1, 2, 1, 1, 1])
    """
    return _adaptive_max("adaptive_max_pool3d", 3, input, output_size, return_indices)


# ---------------------------------------------------------------------------- flatten


class _FlattenFn(torch.autograd.Function):
    """``y = x`` reshaped: dims ``start_dim..end_dim`` merged into one."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, start_dim: int, end_dim: int) -> torch.Tensor:  # type: ignore[override]
        out = torch.flatten(x, start_dim, end_dim)
        ctx.x_shape = x.shape
        if out is x or out._is_view():
            # A custom Function may not return a view of its input (in-place ops on it,
            # e.g. ReLU(inplace=True) after Flatten, would be refused): copy.
            out = out.clone()
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[override]
        # dL/dx = g reshaped back to x's shape
        return g.reshape(ctx.x_shape), None, None


def flatten(input: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> torch.Tensor:
    """Drop-in for :func:`torch.flatten` with a hand-written backward.

    When ``input`` needs no gradient this is exactly :func:`torch.flatten` (a view
    where possible). When it does, the result is a new tensor (a custom autograd
    Function may not return a view of its input), so in-place ops on it work and
    leave ``input`` alone.

    Args:
        input: any tensor (0-d gives a 1-element 1-D tensor, as in torch).
        start_dim, end_dim: first and last dim to merge (negative counts from the end).

    Example:
        >>> import torch
        >>> from gradlens.functional import flatten
        >>> flatten(torch.zeros(2, 3, 4), 1).shape
        torch.Size([2, 12])
    """
    check_tensor("flatten", "input", input)
    if not isinstance(start_dim, int) or not isinstance(end_dim, int):
        raise TypeError(
            f"flatten(): 'start_dim' and 'end_dim' must be int, got "
            f"{type(start_dim).__name__} and {type(end_dim).__name__}"
        )
    if not records_grad(input):
        return torch.flatten(input, start_dim, end_dim)
    return _FlattenFn.apply(input, start_dim, end_dim)
