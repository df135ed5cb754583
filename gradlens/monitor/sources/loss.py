"""The loss: what ``Monitor.observe_loss`` was given for the step (its mean when
given several times, as with gradient accumulation), kept on the device until the
step's host copy. Host side: ``StepRecord.loss``."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from gradlens.monitor.packet import Packet, StepPacket
from gradlens.monitor.sources.base import Cycle, Source, Work

__all__ = ["Loss"]


class Loss(Source):
    """Losses observed during a logged step, one slot per step."""

    kinds = ("loss",)

    def __init__(self) -> None:
        self._seen: List[Tensor] = []

    @property
    def observed(self) -> bool:
        """Whether a loss was observed for the step being collected."""
        return bool(self._seen)

    def observe(self, loss: Union[Tensor, float]) -> None:
        """Keep ``loss`` (a validated scalar) for the step being collected."""
        if isinstance(loss, Tensor):
            self._seen.append(loss.detach().reshape(()).float())
        else:
            self._seen.append(torch.tensor(float(loss)))

    def after_update(self, cycle: Cycle, work: Work, pend: StepPacket, packet: Packet, skipped: bool) -> None:
        if self._seen:
            seen = self._seen
            packet.put("loss", None, torch.stack([t.to(seen[0].device) for t in seen]).mean())
            self._seen = []

    def read(
        self, slots: List[Tuple[Any, np.ndarray]], rows: np.ndarray, p: np.ndarray, dw: np.ndarray,
        pends: Sequence[StepPacket], members: List[int],
    ) -> None:
        for _, vals in slots:
            for b, loss in zip(members, vals[0].tolist()):
                pends[b].loss = loss

    def close(self) -> None:
        self._seen = []
