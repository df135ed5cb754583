"""The loss: what ``Monitor.observe_loss`` was given for the step (its mean when
given several times, as with gradient accumulation), kept on the device until the
step's host copy. Host side: ``StepRecord.loss``.

A loss belongs to the step of the forward that computed it: the monitor notes the
step of each forward of the model (:attr:`Loss.forward_step`), so a loss observed
after ``optimizer.step()`` (no forward since) goes to the step that just closed,
still waiting in the publisher's queue (:meth:`Loss.finish` reads it there).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

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
        self._warned_late = False

    def observe(self, loss: Union[Tensor, float], late: Optional[StepPacket] = None) -> None:
        """Keep ``loss`` (a validated scalar) for the step being collected, or for the
        closed step ``late`` (still queued)."""
        t = loss.detach().reshape(()).float() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        (late.late_loss if late is not None else self._seen).append(t)

    def route(self, loss: Union[Tensor, float], cycle: Cycle, queued: Callable[[int], Optional[StepPacket]]) -> None:
        """Keep a validated ``loss`` for the step of the model's latest forward: the
        step being collected, or (observed after its ``step()``) the closed step
        ``queued(step)`` still waiting to be published. Warns once when that step
        was published already."""
        step = self.forward_step
        if step is None or step >= cycle.step:  # its forward belongs to the step being collected
            if cycle.is_logged_step():
                self.observe(loss)
            return
        late = queued(step)
        if late is not None:
            self.observe(loss, late=late)
        elif cycle.is_logged(step) and not self._warned_late:
            self._warned_late = True
            warnings.warn(
                f"gradlens: the loss of step {step} was observed after that step was published "
                "(on_finding/halt_on publish each step at once); call mon.observe_loss(loss) "
                "before optimizer.step() to have it recorded",
                UserWarning,
                stacklevel=3,
            )

    def closure_value(self, value: Any, cycle: Cycle) -> None:
        """What ``step(closure)``'s closure returned is the step's loss, unless one
        was observed for the step (a scalar float tensor or a number)."""
        scalar = isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point()
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (scalar or number) and cycle.is_logged_step() and not self._seen:
            self.observe(value)

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
