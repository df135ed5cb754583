"""The loss: what ``Monitor.observe_loss`` was given for the step (its mean when
given several times, as with gradient accumulation), kept on the device until the
step's host copy. Host side: ``StepRecord.loss``.

A loss belongs to the step of the forward that computed it: the monitor notes the
step of each forward of the model (:meth:`Loss.saw_forward`), so a loss observed
after ``optimizer.step()`` (no forward since) goes to the step that just closed,
still waiting in the publisher's queue (:meth:`Loss.finish` reads it there).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

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
        self.forward_step: Optional[int] = None  # the step of the model's latest forward

    def saw_forward(self, step: int) -> None:
        """The model ran a forward during step ``step``."""
        self.forward_step = step

    @property
    def observed(self) -> bool:
        """Whether a loss was observed for the step being collected."""
        return bool(self._seen)

    def observe(self, loss: Union[Tensor, float], late: Optional[StepPacket] = None) -> None:
        """Keep ``loss`` (a validated scalar) for the step being collected, or for the
        closed step ``late`` (still queued)."""
        t = loss.detach().reshape(()).float() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        (late.late_loss if late is not None else self._seen).append(t)

    def finish(self, pend: StepPacket) -> None:
        """Fold the losses observed after ``pend`` closed into its loss (at publish time)."""
        if pend.late_loss:
            late = pend.late_loss
            total = torch.stack([t.to(late[0].device) for t in late]).sum().item()
            n = len(late)
            if pend.loss is not None:  # observed before and after step(): the mean of all
                total, n = total + pend.loss * pend.loss_count, n + pend.loss_count
            pend.loss, pend.late_loss = total / n, []

    def after_update(self, cycle: Cycle, work: Work, pend: StepPacket, packet: Packet, skipped: bool) -> None:
        if self._seen:
            seen = self._seen
            packet.put("loss", None, torch.stack([t.to(seen[0].device) for t in seen]).mean())
            pend.loss_count = len(seen)
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
