"""Normalization layers with hand-written backward passes (drop-ins for ``torch.nn.functional``).

All of batch, layer and group norm share one backward: with ``x̂ = (x - mean) * rstd``
over a group of ``N`` elements and ``ĝ = dy * weight``,

    dx = rstd / N * (N * ĝ - Σ ĝ - x̂ * Σ(ĝ * x̂))
    dweight = Σ dy * x̂,   dbias = Σ dy

(the sums run over the normalized group for ``dx`` and over everything else for the
affine parameters). ``forward`` calls torch's fused kernel, which also updates
BatchNorm running statistics in place exactly as torch does. For double backward the
statistics are recomputed from ``x`` with differentiable ops (only when a graph of
the backward is being built), so second derivatives flow through mean and variance.

Example:
    >>> import torch
    >>> import gradlens.functional as GF
    >>> x = torch.randn(4, 6, requires_grad=True)
    >>> y = GF.layer_norm(x, (6,))
    >>> torch.allclose(y, torch.nn.functional.layer_norm(x, (6,)), atol=1e-6)
    True
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch

from gradlens.functional._util import check_tensor, sum_to_shape

__all__ = ["layer_norm", "batch_norm", "group_norm", "rms_norm", "instance_norm"]


def _normalize_backward(
    g: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor, mean_g: torch.Tensor, mean_gx: torch.Tensor
) -> torch.Tensor:
    """dx = rstd / N * (N ĝ - Σ ĝ - x̂ Σ(ĝ x̂)) = rstd * (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)).

    ``mean_g``/``mean_gx`` are the group means of ĝ and ĝ x̂ (keepdim, broadcastable).
    (On CPU a broadcast operand as the *base* of ``addcmul`` is slow, so only the
    full-size base form is used.)
    """
    return torch.addcmul(g - mean_g, xhat, mean_gx, value=-1) * rstd


def _xhat(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """x̂ = (x - mean) * rstd."""
    return (x - mean) * rstd


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """float32 for half/bfloat16 tensors (torch's norm kernels accumulate in float32 too)."""
    return t.float() if t is not None and t.dtype in _LOW_PRECISION else t


def _cast_back(grad: Optional[torch.Tensor], like: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return grad if grad is None or like is None or grad.dtype == like.dtype else grad.to(like.dtype)


def _stats(x: torch.Tensor, dims: Tuple[int, ...], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Biased mean and 1/sqrt(var + eps) over ``dims`` (keepdim), differentiably."""
    if x.numel() == 0:  # an empty batch: any values do (and var_mean would warn)
        zero = x.sum(dims, keepdim=True)
        return zero, torch.rsqrt(zero + eps)
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return mean, torch.rsqrt(var + eps)


# Largest |mean| * rstd (the mean in standard deviations) for which the fast backward
# skips centering: Σ dy·x - mean·Σ dy then loses at most log10(1 + 8) ≈ 1 digit to
# cancellation against Σ dy·(x - mean), our measurement of what float32 tests tolerate
# against torch's fused kernel; beyond it, x is centered first (one more full-size pass).
_MAX_UNCENTERED_OFFSET = 8.0


def _centering(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(xs, off)`` with ``xs = x - off`` for the sums Σ dy·xs of a first-order norm backward.

    Centering (``xs = x - mean``, ``off = None``) is exact but costs a full-size
    temporary; on CPU a fresh one costs about as much as a pass over the data, so on
    CPU ``xs = x`` (``off = mean``) is kept whenever the means are within
    ``_MAX_UNCENTERED_OFFSET`` standard deviations of zero. Other devices always
    center: the check would cost a host-device sync.
    """
    if x.device.type == "cpu" and mean.numel():
        if bool((mean * rstd).abs().max() <= _MAX_UNCENTERED_OFFSET):
            return x, mean
    return x - mean, None


# --------------------------------------------------------------------- layer_norm
class _LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shape: List[int], dims: Tuple[int, ...], eps: float):
        out, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.eps, ctx.dims = eps, dims
        ctx.mean, ctx.rstd = mean, rstd  # constants unless rebuilt for double backward
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, dy):
        x_in, w_in = ctx.saved_tensors
        x, weight, dy = _opmath(x_in), _opmath(w_in), _opmath(dy)
        dims = ctx.dims
        if not torch.is_grad_enabled():  # first order: the same math with fewer passes
            dx, dw, db = _layer_norm_backward_fast(
                ctx, dy, x, weight, _opmath(ctx.mean), _opmath(ctx.rstd), len(dims)
            )
            return _cast_back(dx, x_in), _cast_back(dw, w_in), _cast_back(db, w_in), None, None, None
        # building a graph of backward: stats must depend on x
        mean, rstd = _stats(x, dims, ctx.eps)
        # x̂ = (x - mean) * rstd
        xhat = _xhat(x, mean, rstd)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            g = dy * weight if weight is not None else dy
            dx = _normalize_backward(g, xhat, rstd, g.mean(dims, keepdim=True), (g * xhat).mean(dims, keepdim=True))
        if weight is not None and ctx.needs_input_grad[1]:
            # dL/dw = Σ_batch dy * x̂
            dw = sum_to_shape(dy * xhat, x.shape[dims[0]:])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # dL/db = Σ_batch dy
            db = sum_to_shape(dy, x.shape[dims[0]:])
        return _cast_back(dx, x_in), _cast_back(dw, w_in), _cast_back(db, w_in), None, None, None


def _layer_norm_backward_fast(
    ctx, dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
    mean: torch.Tensor, rstd: torch.Tensor, nd: int,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """First-order layer_norm backward on ``R x D`` rows, in as few kernels as we can.

    Layer norm rows are short (a few hundred elements in a transformer), so each kernel's
    fixed cost counts as much as its passes: x is always centered (``xs = x - mean``: one
    pass, cheaper than deciding whether to skip it), x̂ = rstd xs is never formed, the row
    sums Σ ĝ and Σ ĝ x̂ are matrix-vector products (``dy @ w``, ``(dy * xs) @ w``), and
    dx = rstd ĝ + a xs + c with per-row ``a``, ``c`` is built in place in the memory of the
    product ``dy * xs`` once its sums are taken.
    """
    d = math.prod(x.shape[x.dim() - nd:])
    x2, dy2 = x.reshape(-1, d), dy.reshape(-1, d)
    r, mean = rstd.reshape(-1, 1), mean.reshape(-1, 1)
    need_dx = ctx.needs_input_grad[0]
    need_dw = weight is not None and ctx.needs_input_grad[1]
    dx = dw = db = None
    if ctx.has_bias and ctx.needs_input_grad[2]:
        # dL/db = Σ_rows dy
        db = dy2.sum(0).view(x.shape[x.dim() - nd:])
    if not (need_dx or need_dw):
        return dx, dw, db
    xs = x2 - mean
    prod = dy2 * xs
    w = weight.reshape(d) if weight is not None else None
    if need_dw:
        # dL/dw = Σ_rows dy x̂ = Σ_rows rstd (dy xs)
        dw = torch.mv(prod.t(), r.view(-1)).view(x.shape[x.dim() - nd:])
    if need_dx:
        # dx = rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)) = rstd ĝ + a xs + c, per row, with
        #   mean(ĝ x̂) = rstd Σ ĝ xs / D:  a = -rstd³ Σ ĝ xs / D,  c = -rstd Σ ĝ / D
        s_g = torch.mv(dy2, w) if w is not None else dy2.sum(1)
        s_gxs = torch.mv(prod, w) if w is not None else prod.sum(1)
        k = r * (-1.0 / d)
        c = s_g.view(-1, 1) * k
        a = s_gxs.view(-1, 1) * k
        a.mul_(r * r)
        g = torch.mul(dy2, w, out=prod) if w is not None else prod.copy_(dy2)
        dx = g.mul_(r).addcmul_(xs, a).add_(c).view(x.shape)
    return dx, dw, db


def _check_affine(fn: str, name: str, t: Optional[torch.Tensor], shape: Sequence[int]) -> None:
    if t is None:
        return
    check_tensor(fn, name, t, floating=True)
    if tuple(t.shape) != tuple(shape):
        raise RuntimeError(f"{fn}(): expected {name} of shape {list(shape)}, got {list(t.shape)}")


def _normalized_shape(
    fn: str, input: torch.Tensor, normalized_shape: Union[int, Sequence[int]]
) -> Tuple[List[int], Tuple[int, ...]]:
    """``normalized_shape`` as a list, checked against ``input``'s trailing dims, and those dims."""
    shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    if not shape or any(not isinstance(s, int) or isinstance(s, bool) for s in shape):
        raise TypeError(f"{fn}(): normalized_shape must be a non-empty list of ints, got {normalized_shape!r}")
    if input.dim() < len(shape) or list(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(
            f"{fn}(): normalized_shape={shape} does not match the trailing dims of input of shape {list(input.shape)}"
        )
    return shape, tuple(range(input.dim() - len(shape), input.dim()))


def layer_norm(
    input: torch.Tensor,
    normalized_shape: List[int],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-05,
) -> torch.Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dims.

    Same signature as :func:`torch.nn.functional.layer_norm`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.layer_norm(torch.tensor([[1.0, 3.0]]), [2])
        tensor([[-1.0000,  1.0000]])
    """
    check_tensor("layer_norm", "input", input, floating=True)
    shape, dims = _normalized_shape("layer_norm", input, normalized_shape)
    _check_affine("layer_norm", "weight", weight, shape)
    _check_affine("layer_norm", "bias", bias, shape)
    return _LayerNormFn.apply(input, weight, bias, shape, dims, float(eps))


# --------------------------------------------------------------------- batch_norm
class _BatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float):
        # torch's kernel: also updates running_mean/running_var in place (unbiased var, momentum).
        # Non-contiguous running stats: some backends (CUDA's native kernel) update a
        # contiguous copy only; update a contiguous copy ourselves and write it back.
        rm = running_mean.contiguous() if running_mean is not None else None
        rv = running_var.contiguous() if running_var is not None else None
        out, save_mean, save_rstd = torch.native_batch_norm(x, weight, bias, rm, rv, training, momentum, eps)
        ctx.training, ctx.eps = training, eps
        ctx.has_bias = bias is not None
        if training:
            if rm is not None and rm is not running_mean:
                running_mean.copy_(rm)
            if rv is not None and rv is not running_var:
                running_var.copy_(rv)
            ctx.mean, ctx.rstd = save_mean, save_rstd
        else:
            ctx.mean, ctx.rstd = running_mean.clone(), torch.rsqrt(running_var + eps)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, dy):
        x_in, w_in = ctx.saved_tensors
        x, weight, dy = _opmath(x_in), _opmath(w_in), _opmath(dy)
        c = x.shape[1]
        dims = (0,) + tuple(range(2, x.dim()))
        bshape = (1, c) + (1,) * (x.dim() - 2)
        # batch statistics in training, running ones in eval
        mean, rstd = _opmath(ctx.mean).view(bshape), _opmath(ctx.rstd).view(bshape)
        if not torch.is_grad_enabled():  # first order: the same math with fewer passes
            dx, dw, db = _batch_norm_backward_fast(ctx, dy, x, weight, mean, rstd, dims)
            return _cast_back(dx, x_in), _cast_back(dw, w_in), _cast_back(db, w_in), None, None, None, None, None
        if ctx.training:  # building a graph of backward: batch stats must depend on x
            mean, rstd = _stats(x, dims, ctx.eps)
        # x̂ = (x - mean) * rstd
        xhat = _xhat(x, mean, rstd)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            g = dy * weight.view(bshape) if weight is not None else dy
            if ctx.training:
                dx = _normalize_backward(g, xhat, rstd, g.mean(dims, keepdim=True), (g * xhat).mean(dims, keepdim=True))
            else:
                # eval: an affine map, dx = dy * w * rstd
                dx = g * rstd
        if weight is not None and ctx.needs_input_grad[1]:
            # dL/dw_c = Σ dy * x̂ over batch and space
            dw = (dy * xhat).sum(dims)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # dL/db_c = Σ dy
            db = dy.sum(dims)
        return _cast_back(dx, x_in), _cast_back(dw, w_in), _cast_back(db, w_in), None, None, None, None, None


def _batch_norm_backward_fast(
    ctx, dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
    mean: torch.Tensor, rstd: torch.Tensor, dims: Tuple[int, ...],
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """First-order batch_norm backward with as few full-size passes as we can.

    Per channel: Σ dy (= dbias) and Σ dy x̂ (= dweight), taken as
    Σ dy x̂ = rstd (Σ dy xs - off Σ dy) with xs = x - off (see ``_centering``); in
    training dx = a dy + b xs + k with per-channel ``a``, ``b``, ``k`` is built in
    place in the memory of the product ``dy * xs`` once its sum is taken.
    """
    c = x.shape[1]
    need_dx = ctx.needs_input_grad[0]
    need_dw = weight is not None and ctx.needs_input_grad[1]
    sum_dy = dy.sum(dims)
    xs = prod = off = sum_dy_xhat = None
    if need_dw or (need_dx and ctx.training):
        xs, off = _centering(x, mean, rstd)
        prod = dy * xs
        sum_dy_xs = prod.sum(dims)
        sum_dy_xhat = rstd.view(c) * (sum_dy_xs if off is None else sum_dy_xs - off.view(c) * sum_dy)
    dx = dw = db = None
    if need_dx:
        scale = rstd * weight.view(rstd.shape) if weight is not None else rstd
        if ctx.training:
            m = x.numel() // c
            # dx = w rstd (dy - mean(dy) - x̂ mean(dy x̂))
            #    = dy * a + xs * b + k   with per-channel a = w rstd, b = -a rstd mean(dy x̂),
            #                                             k = -a mean(dy) - b off
            b = -scale * rstd * (sum_dy_xhat / m).view(rstd.shape)
            k = -scale * (sum_dy / m).view(rstd.shape)
            if off is not None:
                k = k - b * off
            dx = torch.mul(dy, scale, out=prod).addcmul_(xs, b).add_(k)
        else:
            # eval: an affine map, dx = dy * w * rstd
            dx = dy * scale
    if need_dw:
        # dL/dw_c = Σ dy * x̂ over batch and space
        dw = sum_dy_xhat
    if ctx.has_bias and ctx.needs_input_grad[2]:
        # dL/db_c = Σ dy
        db = sum_dy
    return dx, dw, db


class _EmptyBatchNormFn(torch.autograd.Function):
    """batch_norm of an empty input: an empty output; nothing reaches ``weight`` or ``bias``."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight, bias)
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        weight, bias = ctx.saved_tensors
        # no element, no sum: dL/dx is empty and dL/dw = dL/db = 0 (as torch)
        need_x, need_w, need_b = ctx.needs_input_grad
        return (dy.clone() if need_x else None,
                torch.zeros_like(weight) if need_w else None,
                torch.zeros_like(bias) if need_b else None)


def batch_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-05,
) -> torch.Tensor:
    """Batch normalization over dim 1 of an ``(N, C, *)`` input.

    Same signature and running-statistics update as :func:`torch.nn.functional.batch_norm`:
    in training, ``running_mean``/``running_var`` (if given) are updated in place with
    ``momentum`` and the unbiased batch variance; in eval they normalize the input. An empty
    input (any shape, e.g. ``[0]`` or ``[0, C]``) gives an empty output and leaves the running
    statistics alone, as torch does.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> rm, rv = torch.zeros(2), torch.ones(2)
        >>> y = GF.batch_norm(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), rm, rv, training=True)
        >>> rm
        tensor([0.1000, 0.2000])
    """
    check_tensor("batch_norm", "input", input, floating=True)
    if input.numel() == 0:
        # torch's rule for an empty batch: any input shape, any stats or affine shapes, no stats update
        for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
            if t is not None:
                check_tensor("batch_norm", name, t, floating=True)
        return _EmptyBatchNormFn.apply(input, weight, bias)
    if input.dim() < 2:
        raise ValueError(f"batch_norm(input=...) expects a tensor of shape (N, C, *), got shape {list(input.shape)}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _check_affine("batch_norm", name, t, (c,))
    if training:
        values_per_channel = input.shape[0] * math.prod(input.shape[2:])
        if values_per_channel == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    elif running_mean is None or running_var is None:
        raise RuntimeError("batch_norm(): running_mean and running_var must be defined in evaluation mode (training=False)")
    return _BatchNormFn.apply(
        input, weight, bias, running_mean, running_var, bool(training), float(momentum), float(eps)
    )


# --------------------------------------------------------------------- group_norm
class _GroupNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        n, c = x.shape[0], x.shape[1]
        hw = math.prod(x.shape[2:])
        x = x.contiguous()  # the fused kernel wants a contiguous input
        w = weight.contiguous() if weight is not None else None
        b = bias.contiguous() if bias is not None else None
        out, mean, rstd = torch.native_group_norm(x, w, b, n, c, hw, groups, eps)
        ctx.groups, ctx.eps = groups, eps
        ctx.mean, ctx.rstd = mean, rstd  # (N, G)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, dy):
        x_in, w_in = ctx.saved_tensors
        x, weight, dy = _opmath(x_in), _opmath(w_in), _opmath(dy)
        n, c, grp = x.shape[0], x.shape[1], ctx.groups
        if not torch.is_grad_enabled():  # first order: the same math with fewer passes
            dx, dw, db = _group_norm_backward_fast(ctx, dy, x, weight, _opmath(ctx.mean), _opmath(ctx.rstd))
            return _cast_back(dx, x_in), _cast_back(dw, w_in), _cast_back(db, w_in), None, None
        hw = math.prod(x.shape[2:])  # explicit sizes: a -1 is ambiguous for an empty batch
        xg = x.reshape(n, grp, c // grp * hw)  # (N, G, C/G * HW)
        # double backward: stats depend on x
        mean, rstd = _stats(xg, (2,), ctx.eps)
        # x̂ = (x - mean_group) * rstd_group
        xhat = _xhat(xg, mean, rstd)  # (N, G, K)
        dy3 = dy.reshape(n, c, hw)
        xhat3 = xhat.view(n, c, hw)
        dx = dw = db = None
        dy_xhat = None
        if (weight is not None and ctx.needs_input_grad[1]) or (ctx.needs_input_grad[0] and weight is None):
            dy_xhat = dy3 * xhat3
        if ctx.needs_input_grad[0]:
            if weight is not None:
                g = dy3 * weight.view(1, c, 1)
                g_xhat = g * xhat3
            else:
                g, g_xhat = dy3, dy_xhat
            k = xg.shape[2]
            mean_g = g.reshape(xg.shape).sum(2, keepdim=True) / k
            mean_gx = g_xhat.reshape(xg.shape).sum(2, keepdim=True) / k
            dx = _normalize_backward(g.reshape(xg.shape), xhat, rstd, mean_g, mean_gx).reshape(x.shape)
        if weight is not None and ctx.needs_input_grad[1]:
            # dL/dw_c = Σ dy * x̂ over batch and space
            dw = dy_xhat.sum(2).sum(0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            # dL/db_c = Σ dy
            db = dy3.sum(2).sum(0)
        return _cast_back(dx, x_in), _cast_back(dw, w_in), _cast_back(db, w_in), None, None


def _group_norm_backward_fast(
    ctx, dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """First-order group_norm backward with as few full-size passes as we can.

    On ``x`` as ``(N, C, K)``: every sum the backward needs comes from two per-(n, c)
    reductions, S1 = Σ_k dy and S2 = Σ_k dy xs (xs = x - off, see ``_centering``), and
    dx = rstd w dy + a xs + c with per-(n, group) ``a``, ``c`` is built in place in the
    memory of the product ``dy * xs``.
    """
    n, c, grp = x.shape[0], x.shape[1], ctx.groups
    cg = c // grp
    k = math.prod(x.shape[2:])  # explicit sizes: a -1 is ambiguous for an empty batch
    x3, dy3 = x.reshape(n, c, k), dy.reshape(n, c, k)

    def per_channel(t: torch.Tensor) -> torch.Tensor:  # (N, G) -> (N, C, 1)
        return t.repeat_interleave(cg, dim=1).unsqueeze(-1)

    need_dx = ctx.needs_input_grad[0]
    need_dw = weight is not None and ctx.needs_input_grad[1]
    s1 = dy3.sum(2)  # (N, C): Σ_k dy
    dx = dw = db = None
    if ctx.has_bias and ctx.needs_input_grad[2]:
        # dL/db_c = Σ dy
        db = s1.sum(0)
    if not (need_dx or need_dw):
        return dx, dw, db
    r3 = per_channel(rstd)  # (N, C, 1)
    xs, off = _centering(x3, per_channel(mean), r3)
    prod = dy3 * xs
    s2 = prod.sum(2)  # (N, C): Σ_k dy xs
    r_c = r3.squeeze(-1)
    off_c = off.squeeze(-1) if off is not None else None  # (N, C)
    off_g = mean if off is not None else None  # (N, G): the same offsets per group
    if need_dw:
        # dL/dw_c = Σ_n Σ_k dy x̂ = Σ_n rstd (S2 - off S1)
        dw = (r_c * (s2 if off_c is None else s2 - off_c * s1)).sum(0)
    if need_dx:
        # dx = rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)), ĝ = dy w, means over a group of M = C/G * K
        #    = rstd w dy + a xs + c,  a = -rstd² mean(ĝ x̂),  c = -rstd mean(ĝ) - a off
        m = cg * k
        s_g, s_gxs = (s1, s2) if weight is None else (s1 * weight, s2 * weight)
        s_g, s_gxs = s_g.view(n, grp, cg).sum(2), s_gxs.view(n, grp, cg).sum(2)  # (N, G)
        mean_gxhat = rstd * (s_gxs if off_g is None else s_gxs - off_g * s_g) / m
        a = -rstd * rstd * mean_gxhat
        cst = -rstd * s_g / m
        if off_g is not None:
            cst = cst - a * off_g
        coef = r3 if weight is None else r3 * weight.view(1, c, 1)
        dx = torch.mul(dy3, coef, out=prod).addcmul_(xs, per_channel(a)).add_(per_channel(cst)).view(x.shape)
    return dx, dw, db


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-05,
) -> torch.Tensor:
    """Group normalization of an ``(N, C, *)`` input in ``num_groups`` channel groups.

    Same signature as :func:`torch.nn.functional.group_norm`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.group_norm(torch.tensor([[1.0, 3.0]]), 1)
        tensor([[-1.0000,  1.0000]])
    """
    check_tensor("group_norm", "input", input, floating=True)
    if input.dim() < 2:
        raise RuntimeError(f"group_norm(): expected input of shape (N, C, *), got shape {list(input.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups <= 0:
        raise ValueError(f"group_norm(num_groups=...) expects a positive int, got {num_groups!r}")
    c = input.shape[1]
    if c % num_groups:
        raise RuntimeError(f"group_norm(): number of channels ({c}) must be divisible by num_groups={num_groups}")
    _check_affine("group_norm", "weight", weight, (c,))
    _check_affine("group_norm", "bias", bias, (c,))
    return _GroupNormFn.apply(input, weight, bias, num_groups, float(eps))


# ----------------------------------------------------------------------- rms_norm
class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, dims: Tuple[int, ...], eps: float):
        # r = 1 / sqrt(mean(x^2) + eps);  y = x * r * w   (in float32 for half/bfloat16, as torch)
        xf = _opmath(x)
        rstd = torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)
        out = xf * rstd
        if weight is not None:
            out = out * weight
        out = out.to(x.dtype)
        ctx.dims, ctx.eps, ctx.rstd = dims, eps, rstd
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, dy):
        x_in, w_in = ctx.saved_tensors
        x, weight, dy = _opmath(x_in), _opmath(w_in), _opmath(dy)
        dims = ctx.dims
        if torch.is_grad_enabled():  # double backward: r depends on x
            rstd = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + ctx.eps)
        else:
            rstd = ctx.rstd
        xhat = x * rstd
        dx = dw = None
        if ctx.needs_input_grad[0]:
            g = dy * weight if weight is not None else dy
            # dx = r * (ĝ - x̂ * mean(ĝ * x̂))
            dx = rstd * (g - xhat * (g * xhat).mean(dims, keepdim=True))
        if weight is not None and ctx.needs_input_grad[1]:
            # dL/dw = Σ_batch dy * x̂
            dw = sum_to_shape(dy * xhat, weight.shape)
        return _cast_back(dx, x_in), _cast_back(dw, w_in), None, None


def rms_norm(
    input: torch.Tensor,
    normalized_shape: List[int],
    weight: Optional[torch.Tensor] = None,
    eps: Optional[float] = None,
) -> torch.Tensor:
    """Root-mean-square normalization over the trailing ``normalized_shape`` dims.

    Same signature as :func:`torch.nn.functional.rms_norm`; ``eps=None`` means
    ``torch.finfo(input.dtype).eps`` as in torch (float32's eps for half/bfloat16
    inputs, which torch computes in float32).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.rms_norm(torch.tensor([[3.0, 4.0]]), [2], eps=0.0)
        tensor([[0.8485, 1.1314]])
    """
    check_tensor("rms_norm", "input", input, floating=True)
    shape, dims = _normalized_shape("rms_norm", input, normalized_shape)
    _check_affine("rms_norm", "weight", weight, shape)
    if eps is None:
        # torch takes the eps of the dtype it computes in: float32 for half/bfloat16 inputs.
        eps = torch.finfo(torch.float32 if input.dtype in _LOW_PRECISION else input.dtype).eps
    return _RMSNormFn.apply(input, weight, dims, float(eps))


# ------------------------------------------------------------------ instance_norm
def instance_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-05,
) -> torch.Tensor:
    """Instance normalization: each (sample, channel) over its spatial positions.

    Same signature as :func:`torch.nn.functional.instance_norm`. With input statistics
    this *is* group normalization with one group per channel, so it runs
    :func:`group_norm`'s hand-written backward; given running statistics are updated
    as torch does (momentum, the batch mean of the per-instance mean and unbiased
    variance). With ``use_input_stats=False`` the running statistics normalize the
    input: :func:`batch_norm` in eval mode.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.instance_norm(torch.tensor([[[1.0, 3.0], [0.0, 4.0]]]))
        tensor([[[-1.0000,  1.0000],
                 [-1.0000,  1.0000]]])
    """
    check_tensor("instance_norm", "input", input, floating=True)
    if input.dim() < 3:
        raise ValueError(f"instance_norm(input=...) expects (N, C, *spatial) with at least one spatial dim, "
                         f"got shape {list(input.shape)}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _check_affine("instance_norm", name, t, (c,))
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise RuntimeError("instance_norm(): running_mean and running_var must be given when use_input_stats=False")
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    spatial = math.prod(input.shape[2:])
    if spatial == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {list(input.size())}")
    if running_mean is not None or running_var is not None:
        with torch.no_grad():  # running stats: the batch mean of the per-instance statistics
            dims = tuple(range(2, input.dim()))
            var, mean = torch.var_mean(input, dims, correction=1)
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.mean(0).to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                running_var.mul_(1 - momentum).add_(var.mean(0).to(running_var.dtype), alpha=momentum)
    return group_norm(input, c, weight, bias, eps)
