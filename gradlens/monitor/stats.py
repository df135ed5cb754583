"""Fused statistics: device tensors in, one flat tensor per group out.

Hot path rules (STYLE.md): tensors are grouped by (device, dtype) and each group
gets its gradient statistics from a fixed number of ops, not a few per tensor where
it can be helped: one fused ``torch._foreach_norm`` for all L2 norms, and on CPU,
where per-tensor dispatch dominates for many small parameters, one copy into a
cached buffer reduced by rows and segments (:func:`grad_stats`). Nothing here calls
``.item()``, ``.cpu()`` or branches on a device value. The caller concatenates the
groups and moves them to the host with one copy per logged step (per device).

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
import operator
import threading
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "grouped",
    "grad_stats",
    "split_grad_stats",
    "release_cache",
    "norms",
    "nonfinite_counts",
    "norms64",
    "activation_stats",
    "nonfinite_count",
    "SAT_BAND",
    "near_limits",
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


# Batched statistics of many small CPU tensors (see grad_stats). On CPU the
# per-tensor path costs ~4.3 us per parameter even for tiny tensors (three ops:
# L2 of g, L2 of w, aminmax of g), so a model of 1000 x Linear(16,16) (2000
# parameters) spent 10-17 ms per logged step in grad_stats; batched: ~1.0 ms
# (MLP 784-512x3-10, 8 parameters, per-tensor path either way: 0.29 ms, +1 us).
# Thresholds, measured (torch 2.13, one thread, thread CPU time, medians):
# * size, us per parameter for 64 parameters of ~s elements, per-tensor path /
#   stacked / row buffer: s=1024: 4.6 / 1.1 / 1.7; 4096: 5.5 / 2.2 / 3.4;
#   8192: 6.7 / 3.6 / 5.8; 16384: 9.0 / 6.9 / 12.3; 32768: 15.1 / 17.2 / 31.0
#   -> small means at most 8192 elements (gradient and weight);
# * count, us in all for c small parameters of distinct shapes, per-tensor /
#   row buffer: c=4: 21 / 24; 6: 29 / 26; 8: 38 / 28; 16: 70 / 35 -> from 8 on;
# * stacking, us for 8 shapes x c parameters of (16, 16+k), stacked / row
#   buffer: c=16: 159 / 147; 24: 194 / 208; 32: 230 / 272 -> from 20 tensors on.
_FLAT_MAX_NUMEL = 1 << 13  # "small": gradient and weight both at most this many elements
_FLAT_MIN_COUNT = 8  # batch only when a group has at least this many small parameters
_STACK_MIN = 20  # same-shape small tensors, at least this many, are stacked
_FLAT_ROW = 64  # row width of the buffer of the other small tensors
_FLAT_MAX_BYTES = 32 << 20  # cap on one layout's buffers; past it: per-tensor path
_FLAT_LAYOUTS = 4  # layouts cached per thread (one per (device, dtype) group seen)
_local = threading.local()


def _picker(items: List[int]) -> Callable[[Sequence[Tensor]], List[Tensor]]:
    # items of a sequence as a list, in one C call (itemgetter)
    get = operator.itemgetter(*items)
    if len(items) == 1:
        return lambda seq: [get(seq)]
    return lambda seq: list(get(seq))


class _FlatPlan:
    """How the statistics of one group of CPU tensors (known by shapes and dtype)
    are taken. Tensors are "items": gradient ``i`` is item ``i``, weight ``i`` is
    item ``n + i`` of ``grads + weights``.

    ``blocks``: ``(pick, buf, is_grad)`` per stacked shape, ``buf`` the cached
    ``(count, *shape)`` block; ``rag_*``: the padded row buffer of the other small
    tensors (its views; the row count of each tensor, and of each gradient, which
    come first); ``large``: parameters that take the per-tensor path. Values come
    out in that order; ``perm`` sorts them into ``[grad_norm..., weight_norm...,
    max|g|...]`` (None when they already are).
    """

    __slots__ = ("gshapes", "wshapes", "dtype", "use", "acc", "blocks", "rag_pick", "rag_buf", "rag_views",
                 "rag_rows", "rag_grows", "rag_grad_rows", "large", "perm")

    def __init__(self, gshapes: Tuple[torch.Size, ...], wshapes: Tuple[torch.Size, ...], dtype: torch.dtype) -> None:
        self.gshapes, self.wshapes, self.dtype = gshapes, wshapes, dtype
        n, width = len(gshapes), _FLAT_ROW
        shapes = list(gshapes) + list(wshapes)
        sizes = [math.prod(s) for s in shapes]
        rows = [max(1, -(-size // width)) for size in sizes]  # an empty tensor gets one zero row
        # small parameters, up to the cap (counted as if every tensor went to the row buffer)
        budget = _FLAT_MAX_BYTES // torch.empty((), dtype=dtype).element_size()
        small: List[int] = []
        for i in range(n):
            cost = (rows[i] + rows[n + i]) * width
            if sizes[i] <= _FLAT_MAX_NUMEL and sizes[n + i] <= _FLAT_MAX_NUMEL and cost <= budget:
                small.append(i)
                budget -= cost
        self.use = len(small) >= _FLAT_MIN_COUNT
        if not self.use:
            return
        # float64 norms are taken in float64; every other dtype accumulates in
        # float32, as torch's own norms do
        self.acc = torch.float64 if dtype == torch.float64 else torch.float32
        by_shape: Dict[Tuple[bool, torch.Size], List[int]] = defaultdict(list)
        for i in small:
            for j in (i, n + i):
                if sizes[j]:  # (an empty tensor has no row to reduce)
                    by_shape[(j < n, shapes[j])].append(j)
        src: List[int] = []  # output position of every value, in the order they come out
        self.blocks: List[Tuple[Callable[[Sequence[Tensor]], List[Tensor]], Tensor, bool]] = []
        stacked = set()
        for (is_grad, shape), items in by_shape.items():
            if len(items) >= _STACK_MIN:
                self.blocks.append((_picker(items), torch.empty((len(items),) + tuple(shape), dtype=dtype), is_grad))
                src += items + ([2 * n + j for j in items] if is_grad else [])
                stacked.update(items)
        # the other small tensors: gradients first, then weights
        rest = [i for i in small if i not in stacked] + [n + i for i in small if n + i not in stacked]
        self.rag_pick = _picker(rest) if rest else None
        if rest:
            grads_rest = [j for j in rest if j < n]
            self.rag_grad_rows = sum(rows[j] for j in grads_rest)
            self.rag_buf = torch.zeros(sum(rows[j] for j in rest), width, dtype=dtype)  # never-written padding stays 0
            flat = self.rag_buf.view(-1)
            self.rag_views = []
            row = 0
            for j in rest:
                self.rag_views.append(flat[row * width : row * width + sizes[j]].view(shapes[j]))
                row += rows[j]
            self.rag_rows = torch.tensor([rows[j] for j in rest], dtype=torch.int64)
            self.rag_grows = torch.tensor([rows[j] for j in grads_rest], dtype=torch.int64)
            src += rest + [2 * n + j for j in grads_rest]
        chosen = set(small)
        self.large = [i for i in range(n) if i not in chosen]
        src += self.large + [n + i for i in self.large] + [2 * n + i for i in self.large]
        self.perm: Optional[Tensor] = None
        if src != list(range(3 * n)):
            perm = [0] * (3 * n)
            for k, pos in enumerate(src):
                perm[pos] = k
            self.perm = torch.tensor(perm, dtype=torch.int64)


_shape = operator.attrgetter("shape")


def _same_shapes(tensors: List[Tensor], shapes: Tuple[torch.Size, ...]) -> bool:
    # one shape alive at a time: a tuple of thousands of fresh shapes would count
    # towards Python's GC thresholds (measured: it triggered extra full collections,
    # ~100 ms each in a process holding a 1000-module model)
    return len(tensors) == len(shapes) and all(map(operator.eq, map(_shape, tensors), shapes))


def _flat_plan(grads: List[Tensor], weights: List[Tensor]) -> Optional[_FlatPlan]:
    # Cached per thread (the buffers are scratch: two threads must not share
    # them), found by the shapes, which the views and blocks are made for; most
    # recently used first. A plan costs ~10-16 ms per 1000 parameters of varied
    # shapes to build, so it is built only for a layout seen a second time in a
    # row of recent ones: a layout that changes every step (parameters without a
    # gradient that vary, as in mixture-of-experts models) keeps the per-tensor
    # path (None) instead of rebuilding a plan at every call.
    plans: Optional[List[_FlatPlan]] = getattr(_local, "plans", None)
    if plans is None:
        plans = _local.plans = []
        _local.seen = []
    dtype = grads[0].dtype
    for k, plan in enumerate(plans):
        if plan.dtype == dtype and _same_shapes(grads, plan.gshapes) and _same_shapes(weights, plan.wshapes):
            if k:
                plans.insert(0, plans.pop(k))
            return plan
    seen: List[Tuple[torch.dtype, Tuple[torch.Size, ...], Tuple[torch.Size, ...]]] = _local.seen
    for k, (dt, gshapes, wshapes) in enumerate(seen):
        if dt == dtype and _same_shapes(grads, gshapes) and _same_shapes(weights, wshapes):
            del seen[k]
            # (buffers made in inference mode could not be written outside it)
            with torch.inference_mode(False):
                plan = _FlatPlan(gshapes, wshapes, dtype)
            plans.insert(0, plan)
            del plans[_FLAT_LAYOUTS:]
            return plan
    seen.insert(0, (dtype, tuple(map(_shape, grads)), tuple(map(_shape, weights))))
    del seen[_FLAT_LAYOUTS:]
    return None


def release_cache() -> None:
    """Drop this thread's cached layouts and their buffers (up to ``_FLAT_MAX_BYTES``
    each); the next call builds what it needs again."""
    _local.plans = []
    _local.seen = []


def _may_batch(grads: List[Tensor]) -> bool:
    # A cheap early "no" for small groups, before the plan lookup (~0.25 us per
    # tensor): counting small gradients costs ~0.1 us per tensor (MLP, 8
    # parameters: grad_stats +3 us over the per-tensor path without it, +1 us with).
    n = len(grads)
    if n < _FLAT_MIN_COUNT or grads[0].device.type != "cpu":
        return False
    return n > 64 or sum(map(_FLAT_MAX_NUMEL.__ge__, map(Tensor.numel, grads))) >= _FLAT_MIN_COUNT


def _flat_stats(plan: _FlatPlan, grads: List[Tensor], weights: List[Tensor]) -> Tensor:
    # The values of the small tensors, in plan order, as float32; one pass per op.
    items = grads + weights
    out: List[Tensor] = []
    for pick, buf, is_grad in plan.blocks:
        x = torch.stack(pick(items), out=buf).view(buf.shape[0], -1)
        out.append(torch.linalg.vector_norm(x, dim=1, dtype=plan.acc))
        if is_grad:  # |g| in place (the norms are taken): max|g| per row; NaN propagates
            out.append(x.abs_().amax(1))
    if plan.rag_pick is not None:
        buf = plan.rag_buf
        torch._foreach_copy_(plan.rag_views, plan.rag_pick(items))
        # per row, then per tensor: sqrt of the segment sum of squared row norms (float64)
        sq = torch.linalg.vector_norm(buf, dim=1, dtype=plan.acc).double().square_()
        out.append(torch.segment_reduce(sq, "sum", lengths=plan.rag_rows).sqrt_())
        if plan.rag_grad_rows:
            row_max = buf[: plan.rag_grad_rows].abs_().amax(1)
            out.append(torch.segment_reduce(row_max, "max", lengths=plan.rag_grows))
    return torch.cat([t if t.dtype == torch.float32 else t.float() for t in out])


def grad_stats(grads: List[Tensor], weights: List[Tensor]) -> Tensor:
    """``[grad_norm..., weight_norm..., max parts...]`` of one (device, dtype) group.

    Returns one float32 tensor on the group's device: the L2 norms of gradients
    and weights, then either ``max|g|`` of every gradient (length ``3 * len(grads)``)
    or every gradient's max followed by every min (length ``4 * len(grads)``: CPU,
    per-tensor path only); :func:`split_grad_stats` turns it into the three
    statistics on the host.

    Per-tensor path (GPU; CPU groups with fewer than 8 small parameters): one
    fused L2 call, and max|g| from one fused inf-norm call, or on CPU one aminmax
    per gradient (:func:`_max_parts`). Batched path (CPU, small parameters: at
    most 8192 elements; the measurements are above ``_FLAT_MAX_NUMEL``): tensors
    of one shape (20 or more) are stacked into a cached ``(count, numel)`` block
    and reduced along its rows; the other small tensors are copied (one op) into
    a cached zero-padded ``(rows, 64)`` buffer, reduced per row, then per tensor
    with :func:`torch.segment_reduce` (squared row norms summed in float64). A
    NaN/Inf reaches only its own tensor's statistics; an empty tensor gives 0.
    The row buffer sums squared row norms in float64, so a norm whose square
    overflows float32 stays finite there while the other paths (and torch's own
    ``norm``) give inf. A layout is batched from the second call with it on.
    ``weights[i]`` must have the dtype of ``grads[i]`` (as parameters and their
    gradients do).
    """
    with torch.no_grad():
        if _may_batch(grads):
            plan = _flat_plan(grads, weights)
            if plan is not None and plan.use:
                vals = _flat_stats(plan, grads, weights)
                if plan.large:
                    gl = [grads[i] for i in plan.large]
                    m = len(gl)
                    big = torch.stack(norms(gl + [weights[i] for i in plan.large]) + _max_parts(gl))
                    lmax = torch.maximum(big[2 * m : 3 * m], big[3 * m :].neg())  # NaN propagates
                    vals = torch.cat([vals, big[: 2 * m], lmax])
                return vals if plan.perm is None else vals[plan.perm]
        return torch.stack(norms(grads + weights) + _max_parts(grads))


def split_grad_stats(values: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grad_norm, grad_max, weight_norm)`` of ``n`` gradients from a host copy of
    :func:`grad_stats`. A NaN max or min gives a NaN ``grad_max``, as it should.

    ``values`` may also be 2-D, one column per step (the copies of several steps
    with the same layout): the results are then ``(n, steps)``.
    """
    gn, wn = values[:n], values[n : 2 * n]
    if len(values) == 4 * n:  # maxes, then mins
        with np.errstate(invalid="ignore"):
            return gn, np.maximum(values[2 * n : 3 * n], -values[3 * n :]), wn
    return gn, values[2 * n : 3 * n], wn


def _count_nonfinite(x: Tensor) -> Tensor:
    """Exact count of NaN/Inf elements (float32 0-d): ``x - x`` is NaN exactly there."""
    return torch.ne(x - x, 0).sum(dtype=torch.float32)


def norms64(tensors: Sequence[Tensor]) -> List[float]:
    """L2 norms accumulated in float64, on the host (for the rare norms that
    overflowed in float32; one sync)."""
    with torch.no_grad():
        return torch.stack([torch.linalg.vector_norm(t.detach(), dtype=torch.float64) for t in tensors]).tolist()


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


def near_limits(x: Tensor, lo: float, hi: float, band: float, out: Tensor) -> Tensor:
    """``out`` (float32, ``x``'s shape) filled with 1.0 where ``x`` lies strictly within
    ``band`` of ``lo`` or ``hi`` (``|x - mid| > half - band``), else 0.0, and returned. Two
    ops in place (one for limits symmetric around 0); the saturation test of
    :func:`activation_stats`, of the saturation probe's ``saturated_count`` and of the
    model-output signals."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    if mid == 0.0:
        torch.abs(x, out=out)
    else:
        torch.sub(x, mid, out=out).abs_()
    return torch.gt(out, half - band, out=out)


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
            # saturated: strictly within the band of either limit (in place, no temporary)
            sat = near_limits(xf, lo, hi, SAT_BAND * (hi - lo), buf).sum()
        return torch.cat([torch.stack([total, sumsq, nonfinite, sat]), per_unit]), per_unit.numel()
