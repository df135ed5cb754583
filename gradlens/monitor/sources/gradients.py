"""Gradients and weights: per parameter ||g||, max|g|, ||w||, non-finite counts.

Device side (:mod:`gradlens.monitor.stats`): one fused vector per (device, dtype)
group, taken right before the update. Host side: the columns ``grad_norm``,
``grad_max``, ``weight_norm``, ``nonfinite`` (0 unless the step is broken) and
``missing_grad``. On a broken step the exact non-finite element counts are taken
from the gradients, for the tensors whose norm is not finite, and a norm that
overflowed (float32) over finite elements is taken again in float64, for gradients
and weights alike: ``nonfinite`` means a NaN/Inf element, never an overflowed norm.
When the gradients
no longer hold the step's values (a deferred GPU copy that arrived after
``zero_grad``), the count is exact where max|g| is finite (0: the norm overflowed)
and the lower bound 1 where it is not.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from gradlens._record import GRAD_STATS
from gradlens.monitor import stats as _stats
from gradlens.monitor.packet import Packet, StepPacket
from gradlens.monitor.sources.base import Cycle, Part, Source, Work

__all__ = ["Gradients"]

_GN, _GM, _NF, _WN, _UR, _MISS = (GRAD_STATS.index(s) for s in GRAD_STATS)


class Gradients(Source):
    """The default statistics of every watched parameter.

    Args:
        histogram_every: also hand the gradients to ``write_histograms(named, step)``
            on every N-th logged step (0: never).
        write_histograms: the TensorBoard sink's histogram writer (or None).
    """

    kinds = ("grad",)

    def __init__(
        self, histogram_every: int = 0,
        write_histograms: Optional[Callable[[Any, int], None]] = None,
    ) -> None:
        self._histogram_every = histogram_every if write_histograms is not None else 0
        self._write_histograms = write_histograms

    def before_update(self, cycle: Cycle, work: Work) -> None:
        for part in work.parts:
            part.data["grad"] = _stats.grad_stats(part.grads, part.weights)

    def after_update(self, cycle: Cycle, work: Work, pend: StepPacket, packet: Packet, skipped: bool) -> None:
        for part in work.parts:
            packet.put("grad", part.idx, part.data["grad"])
        if self._histogram_every and cycle.logged % self._histogram_every == 0:
            names = work.layout.names
            named = ((names[i], g) for part in work.parts for i, g in zip(part.idx.tolist(), part.grads))
            self._write_histograms(named, cycle.step)  # type: ignore[misc]

    def read(
        self, slots: List[Tuple[Any, np.ndarray]], rows: np.ndarray, p: np.ndarray, dw: np.ndarray,
        pends: Sequence[StepPacket], members: List[int],
    ) -> None:
        for ref, vals in slots:
            r, i = np.ix_(rows, ref)
            gn, gm, wn = _stats.split_grad_stats(vals, len(ref))
            p[r, i, _GN], p[r, i, _GM], p[r, i, _WN] = gn.T, gm.T, wn.T
            p[r, i, _NF] = 0.0
            p[r, i, _MISS] = 0.0

    def on_broken(self, pend: StepPacket, parts: Optional[List[Part]]) -> None:
        p = pend.p
        if parts is None:  # the gradients moved on: exact where max|g| is finite, else >= 1
            bad = ~np.isfinite(p[:, _GN])
            p[bad, _NF] = np.where(np.isfinite(p[bad, _GM]), 0.0, 1.0)
            return
        for part in parts:
            for col, tensors in ((_GN, part.grads), (_WN, part.weights)):
                bad = np.flatnonzero(~np.isfinite(p[part.idx, col])).tolist()
                if not bad:
                    continue
                counts = _stats.nonfinite_counts([tensors[j] for j in bad])
                if col == _GN:
                    p[part.idx[bad], _NF] = counts
                # a norm that overflowed over finite elements (float32 sum of squares
                # past 3.4e38) is taken again in float64, for those tensors only
                overflowed = [j for j, c in zip(bad, counts) if c == 0]
                if overflowed:
                    p[part.idx[overflowed], col] = _stats.norms64([tensors[j] for j in overflowed])
