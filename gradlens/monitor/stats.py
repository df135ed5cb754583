"""Fused statistics: device tensors in, one flat tensor per group out.

Hot path rules (STYLE.md): tensors are grouped by (device, dtype) and each group
runs one ``torch._foreach_norm`` per statistic; nothing here calls ``.item()``,
``.cpu()`` or branches on a device value. The caller concatenates the groups and
moves them to the host with one copy per logged step (per device).

Facts measured on CPU (one thread, torch 2.13) that shaped this file:

* ``torch._foreach_norm(gs, inf)`` is ~20x slower than the L2 one on CPU, while
  ``torch.aminmax`` per tensor costs about one L2 pass, so max|g| uses aminmax on
  CPU and the fused inf-norm elsewhere (one kernel instead of one per tensor).
* A NaN/Inf anywhere in a tensor makes its L2 norm non-finite, so non-finite
  element counts are taken only for the (rare) tensors whose norm came back
  non-finite, after the host copy (:func:`nonfinite_counts`).
* Boolean reductions (``(x == 0).sum()``, ``isfinite(x).sum()``) and
  ``count_nonzero`` on real (branchy) data are 5-40x slower than a float ``sum``
  on CPU; activation counts are float sums of 0/1 values (``sign``, ``nan_to_num``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "grouped",
    "grad_stats",
    "split_grad_stats",
    "norms",
    "nonfinite_counts",
    "activation_stats",
    "nonfinite_count",
    "SAT_BAND",
    "ACT_FIELDS",
]

#: Saturation band, as a fraction of the output range (hi - lo) of a bounded
#: activation: an output within ``SAT_BAND * (hi - lo)`` of either limit counts as
#: saturated (tanh: |y| >= 0.98, sigmoid: y <= 0.01 or y >= 0.99). 1% of the range
#: is our own choice; Glorot & Bengio (2010) call tanh units near +-1 saturated.
SAT_BAND = 1e-2

#: Per-call activation fields kept on the device until the host copy; the vector
#: goes on with the per-unit non-zero counts (see :func:`activation_stats`).
ACT_FIELDS = ("sum", "sumsq", "nonfinite", "sat")


def grouped(tensors: Sequence[Tensor]) -> Dict[Tuple[torch.device, torch.dtype], List[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), in first-seen order."""
    groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups


def norms(tensors: List[Tensor], ord: float = 2) -> List[Tensor]:
    """Norms of same-device, same-dtype tensors as float32 0-d tensors (one fused op).

    Half-precision and float32 tensors accumulate in float32; float64 ones in
    float64 (torch refuses to narrow them in the op), rounded afterwards.
    """
    if tensors and tensors[0].dtype == torch.float64:
        return [t.float() for t in torch._foreach_norm(tensors, ord)]
    return list(torch._foreach_norm(tensors, ord, dtype=torch.float32))


def _max_parts(tensors: List[Tensor]) -> List[Tensor]:
    # What max|g| is made of, as float32 0-d tensors. The fused inf-norm is one
    # kernel on GPU but ~20x an L2 pass on CPU, where aminmax (one pass per tensor)
    # is as cheap as L2: there the parts are every tensor's max, then every min,
    # and max|g| = max(max, -min) is taken on the host (no extra device ops). The
    # branch is on the device *type*, a host value, never on tensor contents.
    if tensors[0].device.type == "cpu":
        # (an empty tensor has max|g| = 0, as its inf-norm; aminmax would raise)
        pairs = [torch.aminmax(t if t.numel() else t.new_zeros(1)) for t in tensors]
        parts = [hi for _, hi in pairs] + [lo for lo, _ in pairs]
        if tensors[0].dtype != torch.float32:
            parts = [t.float() for t in parts]
        return parts
    return norms(tensors, math.inf)


def grad_stats(grads: List[Tensor], weights: List[Tensor]) -> Tensor:
    """``[grad_norm..., weight_norm..., max parts...]`` of one (device, dtype) group.

    Returns one float32 tensor on the group's device, made by one ``stack``: the L2
    norms of gradients and weights (one fused call), then either ``max|g|`` of
    every gradient (length ``3 * len(grads)``) or, on CPU, every gradient's max
    followed by every min (length ``4 * len(grads)``); :func:`split_grad_stats`
    turns it into the three statistics on the host.
    """
    with torch.no_grad():
        return torch.stack(norms(grads + weights) + _max_parts(grads))


def split_grad_stats(values: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grad_norm, grad_max, weight_norm)`` of ``n`` gradients from a host copy of
    :func:`grad_stats`. A NaN max or min gives a NaN ``grad_max``, as it should."""
    gn, wn = values[:n], values[n : 2 * n]
    if len(values) == 4 * n:  # maxes, then mins
        with np.errstate(invalid="ignore"):
            return gn, np.maximum(values[2 * n : 3 * n], -values[3 * n :]), wn
    return gn, values[2 * n : 3 * n], wn


def _count_nonfinite(x: Tensor) -> Tensor:
    """Exact count of NaN/Inf elements (float32 0-d): ``x - x`` is NaN exactly there."""
    return torch.ne(x - x, 0).sum(dtype=torch.float32)


def nonfinite_counts(tensors: Iterable[Tensor]) -> List[float]:
    """Exact NaN/Inf element counts of several tensors, with one host copy.

    Only called for tensors whose norm is already known to be non-finite, so its
    extra host copy happens on broken steps only.
    """
    with torch.no_grad():
        counts = [_count_nonfinite(t) for t in tensors]
        if not counts:
            return []
        return torch.stack(counts).cpu().tolist()


def _unit_dims(x: Tensor, features_last: bool) -> Tuple[int, ...]:
    # Dimensions reduced to find "units": everything but the feature axis.
    if x.dim() == 2 or features_last:
        return tuple(range(x.dim() - 1))
    return (0,) + tuple(range(2, x.dim()))


def nonfinite_count(x: Tensor, reduced: Tensor) -> Tensor:
    """Count of NaN/Inf elements of ``x`` (float32 0-d tensor on its device).

    ``reduced`` is any full reduction of ``x`` (its sum, its sum of squares) that a
    NaN/Inf element makes non-finite. On CPU its value is a host value (no device
    sync), so the exact count (three more passes) runs only when ``reduced`` is not
    finite; elsewhere it always runs, since branching would cost a sync.
    """
    if x.device.type == "cpu" and math.isfinite(float(reduced)):
        return reduced.new_zeros((), dtype=torch.float32)
    return _count_nonfinite(x)


def activation_stats(
    x: Tensor,
    *,
    limits: Tuple[float, float] | None,
    features_last: bool,
    scratch: Optional[Tensor] = None,
) -> Tuple[Tensor, int]:
    """Per-call statistics of one module output, on its device, and its unit count.

    Returns ``(vec, units)``; ``vec`` (float32) holds the fields :data:`ACT_FIELDS`
    (the sum, the sum of squares, the count of non-finite elements and the count of
    saturated elements, 0 when ``limits`` is None) followed by the ``units`` per-unit
    counts of non-zero elements, from which the host derives the non-zero count and
    the live units (non-zero on some sample). ``x`` must have at least 2 dimensions.

    Four passes over ``x`` (sum, sum of squares, a 0/1 non-zero mask and its per-unit
    sums), three more for bounded activations, and the non-finite count only where
    :func:`nonfinite_count` needs it; everything small is left to the host. No
    boolean reductions and no ``count_nonzero``: on CPU those are 5-40x slower than
    a float sum on real (branchy) activations (measured, torch 2.13, one thread).
    The std is computed on the host from the sum and the sum of squares (float32
    accumulation): its relative error grows like 1e-7 * (mean/std)^2, negligible
    unless |mean| > ~100 std.

    ``scratch``: an optional float32 buffer shaped like ``x`` for the temporaries
    (fresh activation-sized allocations cost page faults on CPU: measured 2x).
    """
    with torch.no_grad():
        xf = x.detach()
        if xf.dtype != torch.float32:
            xf = xf.float()
        buf = scratch if scratch is not None else torch.empty_like(xf)
        total = xf.sum()
        if xf.is_contiguous():
            flat = xf.view(-1)
            sumsq = torch.dot(flat, flat)
        else:
            sumsq = torch.linalg.vector_norm(xf).square()
        # 1.0 where x != 0 (NaN included), 0.0 at exact zeros; summed per unit:
        # a unit is dead when it is exactly zero on every sample of the batch
        torch.ne(xf, 0, out=buf)
        per_unit = buf.sum(dim=_unit_dims(xf, features_last)).reshape(-1)
        nonfinite = nonfinite_count(xf, sumsq)
        if limits is None:
            sat = total.new_zeros(())
        else:
            lo, hi = limits
            band = SAT_BAND * (hi - lo)
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            # saturated: strictly within `band` of either limit, min(x - lo, hi - x) < band,
            # i.e. |x - mid| > half - band (in place, no temporary)
            torch.sub(xf, mid, out=buf).abs_()
            sat = torch.gt(buf, half - band, out=buf).sum()
        return torch.cat([torch.stack([total, sumsq, nonfinite, sat]), per_unit]), per_unit.numel()
