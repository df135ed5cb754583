"""The interface of a statistics source, and the per-optimizer work it shares.

A source is one family of statistics. On a logged step it may do device work
right before the update (:meth:`Source.before_update`, the gradients are final),
writes named slots into the step's :class:`~gradlens.monitor.packet.Packet` right
after it (:meth:`Source.after_update`), and turns its slots' host values into
record columns when the step is published (:meth:`Source.read`, called by
:func:`~gradlens.monitor.packet.unpack` for each of its ``kinds``).

A new statistic is one new file next to this one, registered in
``gradlens.monitor.monitor`` (the one list of sources).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from gradlens.monitor.packet import Packet, StepPacket

__all__ = ["Source", "Work", "Part", "Cycle"]


class Part:
    """The watched parameters of one optimizer on one (device, dtype): their
    indices in the layout, gradients and weights, and what sources keep between
    the two hooks (``data[kind]``)."""

    __slots__ = ("idx", "grads", "weights", "data")

    def __init__(self, idx: np.ndarray, grads: List[Tensor], weights: List[Tensor]) -> None:
        self.idx, self.grads, self.weights = idx, grads, weights
        self.data: Dict[str, Any] = {}


class Work:
    """One optimizer's share of a logged step, from its pre-hook to its post-hook.

    ``k`` is the optimizer's index (-1: ``Monitor.step()`` without one)."""

    __slots__ = ("k", "layout", "parts", "missing")

    def __init__(self, k: int, layout: Any, parts: List[Part], missing: List[int]) -> None:
        self.k, self.layout, self.parts, self.missing = k, layout, parts, missing


class Cycle:
    """What a source may read of the step cycle (see ``monitor/collect.py``)."""

    step: int  # index of the step being collected
    logged: int  # logged steps so far (the upcoming record's index among them)

    def is_logged_step(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def is_logged(self, step: int) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class Source:
    """Base of the statistic families; every method is optional."""

    #: slot kinds this source writes into the packet and reads back
    kinds: Tuple[str, ...] = ()

    def before_update(self, cycle: Cycle, work: Work) -> None:
        """Device work of a logged step that must see the weights before the update."""

    def after_update(self, cycle: Cycle, work: Work, pend: StepPacket, packet: Packet, skipped: bool) -> None:
        """Write this step's slots into ``packet`` (``skipped``: the GradScaler skipped it)."""

    def read(
        self, slots: List[Tuple[Any, np.ndarray]], rows: np.ndarray, p: np.ndarray, dw: np.ndarray,
        pends: Sequence[StepPacket], members: List[int],
    ) -> None:
        """Host values of this source's slots -> columns: ``slots`` are (ref, values
        shaped (values, steps)) of one kind, for the steps ``members`` of ``pends``
        (rows ``rows`` of ``p``/``dw``); called by :func:`~gradlens.monitor.packet.unpack`."""

    def on_broken(self, pend: StepPacket, parts: Optional[List[Part]]) -> None:
        """A NaN/Inf was found in ``pend``'s host values; ``parts`` are the step's
        gradients if they still hold the step's values (else None)."""

    def step_done(self, cycle: Cycle) -> None:
        """The step closed; ``cycle`` already points at the next one."""

    def finish(self, pend: StepPacket) -> None:
        """Complete ``pend`` right before its record is built (its loss, its origin)."""

    def after_record(self, cycle: Cycle, record: Any) -> None:
        """A record was built and written (before the diagnosis sees it); ``cycle``
        points at the step being collected now."""

    def close(self) -> None:
        """Remove whatever the source attached; free its buffers."""
