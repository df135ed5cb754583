"""Update ratios: ||w_after - w_before|| / ||w_before|| per parameter.

On every ``update_every``-th logged step the weights are copied right before the
update and subtracted from the updated weights right after it (in place, in the
copy); the norms of the differences are the slot. Host side: ``update_ratio``,
and ``||dW||`` for the per-layer ratio.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from gradlens._record import GRAD_STATS
from gradlens.monitor import stats as _stats
from gradlens.monitor.packet import Packet, StepPacket
from gradlens.monitor.sources.base import Cycle, Source, Work

__all__ = ["Updates", "UPDATE_BUFFER_BYTES"]

_WN, _UR = GRAD_STATS.index("weight_norm"), GRAD_STATS.index("update_ratio")

#: Weight copies for update ratios up to this many bytes are kept between measurements.
UPDATE_BUFFER_BYTES = 256 * 2**20


class Updates(Source):
    """Update ratios on every ``every``-th logged step (0: never)."""

    kinds = ("update",)

    def __init__(self, every: int) -> None:
        self.every = every
        self._bufs: Dict[Any, List[Tensor]] = {}
        self._buf_bytes = 0

    def before_update(self, cycle: Cycle, work: Work) -> None:
        if self.every > 0 and cycle.logged % self.every == 0 and work.k >= 0:
            for part in work.parts:
                part.data["update"] = self._weight_copy(part.weights)

    def _weight_copy(self, ws: List[Tensor]) -> List[Tensor]:
        # Copy of the weights for ||w_after - w_before||. Fresh allocations cost
        # page faults (measured: a 1.3M-parameter MLP's clone + sub took ~60% of a
        # step on CPU), so copies of up to UPDATE_BUFFER_BYTES in total are kept
        # and reused; larger models allocate them for the one step only.
        key = tuple((w.shape, w.dtype, w.device) for w in ws)
        bufs = self._bufs.get(key)
        if bufs is None:
            bufs = [torch.empty_like(w) for w in ws]
            nbytes = sum(b.numel() * b.element_size() for b in bufs)
            if self._buf_bytes + nbytes <= UPDATE_BUFFER_BYTES:
                self._bufs[key] = bufs
                self._buf_bytes += nbytes
        with torch.no_grad():
            torch._foreach_copy_(bufs, ws)
        return bufs

    def after_update(self, cycle: Cycle, work: Work, pend: StepPacket, packet: Packet, skipped: bool) -> None:
        if skipped:
            return
        for part in work.parts:
            before = part.data.get("update")
            if before is not None:
                with torch.no_grad():  # before <- before - after, in place (not needed again)
                    torch._foreach_sub_(before, part.weights)
                packet.put("update", part.idx, torch.stack(_stats.norms(before)))

    def read(
        self, slots: List[Tuple[Any, np.ndarray]], rows: np.ndarray, p: np.ndarray, dw: np.ndarray,
        pends: Sequence[StepPacket], members: List[int],
    ) -> None:
        for ref, vals in slots:
            r, i = np.ix_(rows, ref)
            dw[r, i] = vals.T
            with np.errstate(divide="ignore", invalid="ignore"):
                p[r, i, _UR] = vals.T / p[r, i, _WN]

    def close(self) -> None:
        self._bufs = {}
        self._buf_bytes = 0
