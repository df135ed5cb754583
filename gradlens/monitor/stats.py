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
* Boolean reductions (``(x == 0).sum()``, ``isfinite(x).sum()``) are 3-10x slower
  than ``count_nonzero``/``sum`` on CPU; activation statistics use the latter.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "grouped",
    "grad_stats",
    "norms",
    "nonfinite_counts",
    "activation_stats",
    "SAT_BAND",
    "ACT_FIELDS",
]

#: Saturation band, as a fraction of the output range (hi - lo) of a bounded
#: activation: an output within ``SAT_BAND * (hi - lo)`` of either limit counts as
#: saturated (tanh: |y| >= 0.98, sigmoid: y <= 0.01 or y >= 0.99). 1% of the range
#: is our own choice; Glorot & Bengio (2010) call tanh units near +-1 saturated.
SAT_BAND = 1e-2

#: Per-call activation fields kept on the device until the host copy.
ACT_FIELDS = ("sum", "m2", "nonzero", "dead_frac", "nonfinite", "sat")


def grouped(tensors: Sequence[Tensor]) -> Dict[Tuple[torch.device, torch.dtype], List[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), in first-seen order."""
    groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups


def norms(tensors: List[Tensor]) -> List[Tensor]:
    """L2 norms of same-device, same-dtype tensors as float32 0-d tensors (one fused op)."""
    return list(torch._foreach_norm(tensors, 2, dtype=torch.float32))


def _abs_max(tensors: List[Tensor]) -> List[Tensor]:
    # max |g|. The fused inf-norm is one kernel on GPU but ~20x an L2 pass on CPU,
    # where aminmax (one pass per tensor) is as cheap as L2. The branch is on the
    # device *type*, a host value, never on tensor contents.
    if tensors[0].device.type == "cpu":
        out = []
        for t in tensors:
            lo, hi = torch.aminmax(t)
            out.append(torch.maximum(hi, -lo).float())
        return out
    return list(torch._foreach_norm(tensors, math.inf, dtype=torch.float32))


def grad_stats(grads: List[Tensor], weights: List[Tensor]) -> Tensor:
    """``[grad_norm..., grad_max..., weight_norm...]`` of one (device, dtype) group.

    Returns one float32 tensor of length ``3 * len(grads)`` on the group's device.
    """
    with torch.no_grad():
        return torch.stack(norms(grads) + _abs_max(grads) + norms(weights))


def nonfinite_counts(tensors: Iterable[Tensor]) -> List[float]:
    """Exact NaN/Inf element counts (``x - x`` is NaN exactly where x is not finite).

    Only called for tensors whose norm is already known to be non-finite, so its
    extra host copy happens on broken steps only.
    """
    with torch.no_grad():
        counts = [torch.count_nonzero(t - t) for t in tensors]
        if not counts:
            return []
        return [float(c) for c in torch.stack(counts).cpu().tolist()]


def _unit_dims(x: Tensor, features_last: bool) -> Tuple[int, ...]:
    # Dimensions reduced to find "units": everything but the feature axis.
    if x.dim() == 2 or features_last:
        return tuple(range(x.dim() - 1))
    return (0,) + tuple(range(2, x.dim()))


def activation_stats(
    x: Tensor, *, limits: Tuple[float, float] | None, features_last: bool
) -> Tensor:
    """Per-call statistics of one module output, on its device, as float32.

    Fields (:data:`ACT_FIELDS`): sum, sum of squared deviations from this call's
    mean (for an exact pooled std over several calls), count of non-zeros, fraction
    of dead units, count of non-finite elements and count of saturated elements
    (0 when ``limits`` is None). ``x`` must have at least 2 dimensions.
    """
    with torch.no_grad():
        xf = x.detach()
        if xf.dtype != torch.float32:
            xf = xf.float()
        n = xf.numel()
        s = xf.sum()
        m2 = (xf - s / n).norm().square()
        nonzero = torch.count_nonzero(xf)
        # A unit is dead when it is exactly zero on every sample of the batch.
        alive = xf.abs().amax(dim=_unit_dims(xf, features_last))
        dead_frac = (alive == 0).sum() / max(alive.numel(), 1)
        # x - x is NaN exactly where x is NaN or +-Inf, 0 elsewhere.
        nonfinite = torch.count_nonzero(xf - xf)
        if limits is None:
            sat = torch.zeros((), device=xf.device)
        else:
            lo, hi = limits
            band = SAT_BAND * (hi - lo)
            # distance to the nearer limit; <= band counts as saturated.
            dist = torch.minimum(xf - lo, hi - xf)
            # relu(band - dist) > 0 <=> strictly inside the band; count_nonzero
            # avoids a slow boolean reduction on CPU.
            sat = torch.count_nonzero(torch.relu(band - dist))
        return torch.stack([s, m2, nonzero.float(), dead_frac.float(), nonfinite.float(), sat.float()])
