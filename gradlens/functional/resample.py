"""Padding, interpolation (upsampling) and pixel shuffle with hand-written backward passes.

Each of these maps every output element to input elements with fixed weights, so each
backward is the adjoint (the transpose) of that map:

* ``pad`` with a constant: the output is the input with a border (or, for negative
  pads, cropped), so ``dL/dx`` is ``g`` cropped back (``pad(g, -pads)``);
  ``reflect``/``replicate``/``circular``: every output element copies one input
  element, so ``dL/dx[i] = Σ g[p]`` over the outputs ``p`` that copy ``i``
  (a ``scatter_add`` through the index map);
* ``interpolate`` with ``nearest``, ``nearest-exact``, ``linear``, ``bilinear``,
  ``trilinear`` or ``bicubic``, with or without ``antialias``: separable, ``y = x ×_d M_d``
  with one ``(out, in)`` interpolation matrix per spatial dim (one-hot rows for nearest,
  two weights per row for linear, four for cubic, a filter as wide as the scale for
  antialiased downsampling), so ``dL/dx = g ×_d M_d^T``; ``area`` is adaptive average pooling;
* ``pixel_shuffle``/``pixel_unshuffle``: permutations, so the backward is the
  inverse permutation.

The index maps and matrices are built by running torch's own forward on index
tensors (so they follow torch's rounding and ``align_corners`` rules exactly), and the
backward passes are differentiable (double backward works).

Example:
    >>> import torch
    >>> import gradlens.functional as GF
    >>> x = torch.tensor([[[1.0, 2.0]]], requires_grad=True)
    >>> GF.interpolate(x, scale_factor=2, mode="nearest").sum().backward()
    >>> x.grad
    tensor([[[2., 2.]]])
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from gradlens.functional._util import check_tensor, records_grad, unsupported
from gradlens.functional.pooling import adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d

__all__ = ["pad", "interpolate", "upsample", "pixel_shuffle", "pixel_unshuffle"]


# ----------------------------------------------------------------------------- pad
class _ConstantPadFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pads: List[int], value: float) -> torch.Tensor:
        ctx.pads = pads
        return F.pad(x, pads, mode="constant", value=value)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        # y = x with a border: dL/dx = g without it (negative pads cropped x: put zeros back)
        return F.pad(g, [-p for p in ctx.pads]), None, None


class _IndexPadFn(torch.autograd.Function):
    """reflect / replicate / circular: ``y[p] = x[index[p]]`` over the padded trailing dims."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pads: List[int], mode: str) -> torch.Tensor:
        out = F.pad(x, pads, mode=mode)
        nd = len(pads) // 2
        spatial = x.shape[x.dim() - nd:]
        # which input element each output copies: pad a grid of flat indices the same way
        grid = torch.arange(math.prod(spatial), dtype=torch.float64, device=x.device).view(1, 1, *spatial)
        ctx.index = F.pad(grid, pads, mode=mode).long().flatten()
        ctx.x_shape, ctx.nd = x.shape, nd
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        nd = ctx.nd
        lead = tuple(ctx.x_shape[:len(ctx.x_shape) - nd])
        numel = math.prod(ctx.x_shape[len(ctx.x_shape) - nd:])
        # dL/dx[i] = Σ g[p] over the outputs p that copy x[i]
        flat = g.new_zeros(lead + (numel,))
        index = ctx.index.expand(lead + ctx.index.shape)
        return flat.scatter_add_(-1, index, g.flatten(len(lead))).view(ctx.x_shape), None, None


def pad(input: torch.Tensor, pad: Sequence[int], mode: str = "constant", value: Optional[float] = None) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.pad` with a hand-written backward.

    ``pad`` lists (left, right) amounts from the last dim backwards, as torch; modes
    ``constant`` (negative amounts crop), ``reflect``, ``replicate``, ``circular``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.pad(torch.tensor([[[1.0, 2.0, 3.0]]]), (2, 1), mode="reflect")
        tensor([[[3., 2., 1., 2., 3., 2.]]])
    """
    check_tensor("pad", "input", input)
    if not isinstance(pad, (list, tuple)) or any(isinstance(p, bool) or not isinstance(p, int) for p in pad):
        raise TypeError(f"pad(pad=...) expects a tuple of ints, got {pad!r}")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad(mode=...) expects 'constant', 'reflect', 'replicate' or 'circular', got {mode!r}")
    if not records_grad(input):
        return F.pad(input, pad, mode=mode, value=value)
    if mode == "constant":
        return _ConstantPadFn.apply(input, list(pad), 0.0 if value is None else value)
    if value is not None and value != 0:
        raise ValueError(f"pad(): padding mode '{mode}' doesn't take in value argument")
    return _IndexPadFn.apply(input, list(pad), mode)


# --------------------------------------------------------------------- interpolate
def _interp_matrix(n: int, o: int, mode: str, align_corners: Optional[bool], scale: Optional[float],
                   like: torch.Tensor, antialias: bool = False) -> torch.Tensor:
    """``M`` of shape ``(o, n)`` with ``y = M x`` along one dim: torch's 1-D interpolation of an identity.

    ``bicubic`` and ``antialias`` exist only for 4-D input: the identity goes in as one
    ``(n, n)`` image resized along H only (W keeps its size, where torch's 2-D kernel is the
    identity: a width of 1 is not, with ``antialias``), so ``out[h', j] = M[h', j]``.
    """
    if mode == "bicubic" or antialias:
        eye = torch.eye(n, dtype=like.dtype, device=like.device).view(1, 1, n, n)
        kw2 = {"scale_factor": (scale, 1.0)} if scale is not None else {"size": (o, n)}
        out = F.interpolate(eye, mode=mode, align_corners=align_corners, antialias=antialias, **kw2)  # (1, 1, o, n)
        return out[0, 0]
    eye = torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(0)  # (1, n channels, n positions)
    kw = {"scale_factor": scale} if scale is not None else {"size": o}
    out = F.interpolate(eye, mode=mode, align_corners=align_corners, **kw)  # (1, n, o)
    return out[0].t()


class _InterpolateFn(torch.autograd.Function):
    """Separable interpolation: ``y = x ×_d M_d`` along each spatial dim ``d``."""

    @staticmethod
    def forward(ctx: Any, x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias=False):
        out = F.interpolate(x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        nd = x.dim() - 2
        if scale_factor is None or recompute_scale_factor:
            scales: List[Optional[float]] = [None] * nd  # torch uses in/out sizes
        else:
            sf = scale_factor if isinstance(scale_factor, (list, tuple)) else [scale_factor] * nd
            scales = [float(s) for s in sf]
        one_d = "linear" if mode in ("linear", "bilinear", "trilinear") and not antialias else mode
        ctx.matrices = [
            _interp_matrix(x.shape[2 + d], out.shape[2 + d], one_d, align_corners, scales[d], x, antialias)
            for d in range(nd)
        ]
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        grad = g
        # dL/dx = g ×_d M_d^T along each spatial dim
        for d, m in enumerate(ctx.matrices):
            grad = grad.movedim(2 + d, -1).matmul(m.to(g.dtype)).movedim(-1, 2 + d)
        return grad, None, None, None, None, None, None


_AREA = {1: adaptive_avg_pool1d, 2: adaptive_avg_pool2d, 3: adaptive_avg_pool3d}


def interpolate(
    input: torch.Tensor,
    size: Optional[Union[int, Sequence[int]]] = None,
    scale_factor: Optional[Union[float, Sequence[float]]] = None,
    mode: str = "nearest",
    align_corners: Optional[bool] = None,
    recompute_scale_factor: Optional[bool] = None,
    antialias: bool = False,
) -> torch.Tensor:
    """Drop-in for :func:`torch.nn.functional.interpolate` with a hand-written backward.

    Modes ``nearest``, ``nearest-exact``, ``linear``, ``bilinear``, ``trilinear``,
    ``bicubic`` (``align_corners`` either way) and ``area``; ``antialias=True`` with
    ``bilinear`` or ``bicubic``. Input ``(N, C, *spatial)``, 1 to 3 spatial dims (4-D only
    for ``bicubic`` and ``antialias``, as torch). Other modes torch has (``lanczos``) raise
    ``NotImplementedError`` (use torch's).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.interpolate(torch.tensor([[[0.0, 1.0]]]), size=3, mode="linear", align_corners=True)
        tensor([[[0.0000, 0.5000, 1.0000]]])
    """
    check_tensor("interpolate", "input", input)
    ours = records_grad(input) and input.dim() in (3, 4, 5)
    if ours and mode == "lanczos":
        raise unsupported("interpolate", "mode", mode)
    if (
        not ours
        or mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic", "area")
        or ((antialias or mode == "bicubic") and (input.dim() != 4 or mode not in ("bilinear", "bicubic")))
    ):
        # nothing to differentiate, or a call torch rejects: torch's op (and its error)
        return F.interpolate(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
    if mode == "area":
        out_size = F.interpolate(input.detach()[:1, :1], size, scale_factor, "nearest", None,
                                 recompute_scale_factor).shape[2:]
        return _AREA[input.dim() - 2](input, tuple(out_size))
    return _InterpolateFn.apply(input, size, scale_factor, mode, align_corners, recompute_scale_factor, bool(antialias))


def upsample(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Deprecated torch alias of :func:`interpolate` (``torch.nn.functional.upsample``).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.upsample(torch.ones(1, 1, 2), scale_factor=2).shape
        torch.Size([1, 1, 4])
    """
    return interpolate(input, size, scale_factor, mode, align_corners)


# ------------------------------------------------------------------- pixel shuffle
class _PixelShuffleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: int, inverse: bool) -> torch.Tensor:
        ctx.factor, ctx.inverse = factor, inverse
        return F.pixel_unshuffle(x, factor) if inverse else F.pixel_shuffle(x, factor)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        # a permutation of elements: its adjoint is the inverse permutation
        if ctx.inverse:
            return _PixelShuffleFn.apply(g, ctx.factor, False), None, None
        return _PixelShuffleFn.apply(g, ctx.factor, True), None, None


def pixel_shuffle(input: torch.Tensor, upscale_factor: int) -> torch.Tensor:
    """``(*, C r^2, H, W) -> (*, C, H r, W r)``; as :func:`torch.nn.functional.pixel_shuffle`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.pixel_shuffle(torch.randn(1, 8, 3, 3), 2).shape
        torch.Size([1, 2, 6, 6])
    """
    check_tensor("pixel_shuffle", "input", input)
    if not records_grad(input):
        return F.pixel_shuffle(input, upscale_factor)
    return _PixelShuffleFn.apply(input, upscale_factor, False)


def pixel_unshuffle(input: torch.Tensor, downscale_factor: int) -> torch.Tensor:
    """``(*, C, H r, W r) -> (*, C r^2, H, W)``; as :func:`torch.nn.functional.pixel_unshuffle`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.pixel_unshuffle(torch.randn(1, 2, 6, 6), 2).shape
        torch.Size([1, 8, 3, 3])
    """
    check_tensor("pixel_unshuffle", "input", input)
    if not records_grad(input):
        return F.pixel_unshuffle(input, downscale_factor)
    return _PixelShuffleFn.apply(input, downscale_factor, True)
