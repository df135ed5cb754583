"""The step cycle: which steps are logged, which optimizers contribute to a step,
and the sources' device work between the hooks, sealed into one packet.

``pre(k)`` (optimizer ``k`` is about to update) groups its watched parameters by
(device, dtype) into :class:`~gradlens.monitor.sources.base.Part` objects and lets
each source start its device work. ``post(k)`` lets each source write its slots
into a :class:`~gradlens.monitor.packet.Packet`, seals it (one host copy per
device) and adds the chunk to the step's
:class:`~gradlens.monitor.packet.StepPacket`. A step closes when every optimizer
stepped (or the first one steps again) and goes to the publisher.

Host values are checked for NaN/Inf as soon as they are on the host: at once on
CPU; for a deferred GPU copy at the next ``zero_grad``, forward or step that finds
it arrived (never waiting), else when published. A broken step is published at
once and gets exact non-finite counts while its gradients still hold its values.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import numpy as np

from gradlens.monitor import stats as _stats
from gradlens.monitor.layout import Layout, Layouts
from gradlens.monitor.packet import Packet, StepPacket, unpack
from gradlens.monitor.sources.base import Cycle, Part, Source, Work

__all__ = ["Collector"]


class Collector(Cycle):
    """Turns optimizer hooks into closed :class:`StepPacket` objects.

    Args:
        layouts: hands out the current parameter layout.
        sources: the statistic families, in slot order.
        n_optimizers: how many optimizers contribute to a step (0: ``Monitor.step()``).
        every: log every N-th step.
        sync: read host copies at the step even on GPU (a callback or a halt
            needs each step's values at once).
        closed: called with ``(step, packet)`` at the end of each step (packet None
            when it was not logged).
        urgent: called when a step must be published at once (a NaN/Inf).
    """

    def __init__(
        self,
        layouts: Layouts,
        sources: Sequence[Source],
        *,
        n_optimizers: int,
        every: int,
        sync: bool,
        closed: Callable[[int, Optional[StepPacket]], None],
        urgent: Callable[[], None],
    ) -> None:
        self._layouts = layouts
        self._sources = list(sources)
        self.readers = {kind: s for s in self._sources for kind in s.kinds}
        # per hook, only the sources that do something there (hot path: no no-op calls)
        def bound(method: str) -> List[Callable]:
            return [getattr(s, method) for s in self._sources if getattr(type(s), method) is not getattr(Source, method)]

        self._before, self._after = bound("before_update"), bound("after_update")
        self._broken, self._done = bound("on_broken"), bound("step_done")
        self._recorded, self._finish = bound("after_record"), bound("finish")
        self._n = max(n_optimizers, 1)
        self.every = every
        self._sync = sync
        self._closed, self._urgent = closed, urgent
        self.step = 0  # index of the step being collected
        self.logged = 0  # logged steps so far
        self._contrib: Set[int] = set()
        self._pending: Optional[StepPacket] = None  # the step being collected
        self._work: Dict[int, Work] = {}  # optimizer index -> its work of this step
        self._unchecked: List[StepPacket] = []  # deferred host copies not checked yet
        # torch.distributed (monitor/distributed.py): (weights, grads) -> what this rank
        # holds of them (local shards), and the packet's cross-rank reduction right
        # before its host copy
        self.local: Optional[Callable[[List[Any], List[Any]], Any]] = None
        self.reduce: Optional[Callable[[Packet, StepPacket, Work], None]] = None
        self.reduce_broken: Optional[Callable[[StepPacket, List[Part], np.ndarray], None]] = None

    def is_logged_step(self) -> bool:
        return self.step % self.every == 0

    def is_logged(self, step: int) -> bool:
        return step % self.every == 0

    @property
    def steps_seen(self) -> int:
        """Steps seen, logged or not (one being collected included)."""
        return self.step + (1 if self._contrib else 0)

    @property
    def open(self) -> bool:
        """Whether an optimizer contributed to a step that is not closed yet."""
        return bool(self._contrib)

    # the hooks ------------------------------------------------------------------
    def pre(self, k: int) -> None:
        """Optimizer ``k`` (-1: ``Monitor.step()``) is about to update."""
        kk = max(k, 0)
        if kk in self._contrib:
            self.finish_step()
        self._contrib.add(kk)
        if self._unchecked:  # (deferred GPU copies only) the gradients change from here on
            self.poll(last_chance=True)
        if not self.is_logged_step():
            return
        layout = self._layouts.current()
        weights = layout.opt_params[kk]
        grads = [p.grad for p in weights]
        if self.local is not None:  # FSDP1, FSDP2, tensor parallel: the local shards
            weights, grads = self.local(weights, grads)
        present = layout.opt_idx[kk]
        missing: List[int] = []
        if any(g is None or g.is_sparse for g in grads):  # rare: keep the dense, present ones
            keep = [j for j, g in enumerate(grads) if g is not None]
            missing = [int(present[j]) for j, g in enumerate(grads) if g is None]
            grads = [grads[j].coalesce().values() if grads[j].is_sparse else grads[j] for j in keep]
            weights = [weights[j] for j in keep]
            present = present[keep]
        parts = []
        for members in _stats.grouped(grads).values():
            if len(members) == len(grads):
                parts.append(Part(present, grads, weights))
            else:  # parameters on several devices or in several dtypes
                parts.append(Part(present[members], [grads[j] for j in members], [weights[j] for j in members]))
        work = self._work[kk] = Work(k, layout, parts, missing)
        for before_update in self._before:
            before_update(self, work)

    def post(self, k: int, skipped: bool = False) -> None:
        """Optimizer ``k`` updated (``skipped``: the GradScaler skipped the update)."""
        kk = max(k, 0)
        work = self._work.pop(kk, None)
        if work is not None:
            self._collect(work, skipped)
        if len(self._contrib) >= self._n:
            self.finish_step()

    def _collect(self, work: Work, skipped: bool) -> None:
        pend = self._pending
        if pend is None:
            pend = self._pending = StepPacket(work.layout)
        elif work.layout is not pend.layout:
            self._merge_into(pend, work)
        pend.skipped |= skipped
        packet = Packet()
        for after_update in self._after:
            after_update(self, work, pend, packet, skipped)
        if self.reduce is not None:
            self.reduce(packet, pend, work)
        host = packet.seal(sync=self._sync)
        pend.chunks.append((packet.slots, host, work.missing))
        if pend.checked and not packet.deferred:  # on the host already (CPU, or sync)
            self._check(pend, work.parts, host)
            return
        if pend.grads is not None:  # (None: let go of at a last chance)
            pend.grads.append((work.parts, [[g._version for g in part.grads] for part in work.parts]))
        if pend.checked:
            pend.checked = False
            self._unchecked.append(pend)

    def _check(self, pend: StepPacket, parts: Optional[List[Part]] = None, host: Optional[Dict] = None) -> None:
        """Check ``pend``'s host values (they have arrived) for NaN/Inf; ``parts`` and
        ``host``: the gradients and the values of its last chunk, when that alone is
        checked, at the step itself (the earlier chunks were checked at theirs)."""
        pend.checked = True
        held, pend.grads = pend.grads, []
        if pend.finite(None if host is None else [host]):
            return
        # exact non-finite counts, for the gradients whose norm is not finite,
        # while they still hold the step's values (same tensors, same versions)
        if parts is None and held is not None and all(
            [g._version for g in part.grads] == vs for chunk, versions in held for part, vs in zip(chunk, versions)
        ):
            parts = [part for chunk, _ in held for part in chunk]
        pend.broken = True
        unpack([pend], self.readers)
        # (torch.distributed, at the step itself as on every rank: what on_broken takes
        # again from this rank's shards becomes global)
        reduced = pend.p.copy() if self.reduce_broken is not None and host is not None and parts else None
        for on_broken in self._broken:
            on_broken(pend, parts)
        if reduced is not None:
            self.reduce_broken(pend, parts, reduced)

    def finish(self, pend: StepPacket) -> None:
        """Let the sources complete ``pend`` before its record is built."""
        for finish in self._finish:
            finish(pend)

    def after_record(self, record: Any) -> None:
        """Hand a published record to the sources that act on it."""
        for after_record in self._recorded:
            after_record(self, record)

    def poll(self, *, last_chance: bool = False, wait: bool = False) -> None:
        """Check the deferred host copies that arrived (``wait``: all of them).
        ``last_chance``: the gradients may change after this, so the ones still in
        flight let go of them (their counts will be bounds, see gradients.py)."""
        still = []
        urgent = False
        for pend in self._unchecked:
            if wait or pend.ready():
                self._check(pend)
                urgent |= pend.broken
            else:
                if last_chance:
                    pend.grads = None  # its counts will be bounds (see sources/gradients.py)
                still.append(pend)
        self._unchecked = still
        if urgent:
            self._urgent()

    def _merge_into(self, pend: StepPacket, work: Work) -> None:
        """Record ``work`` (made on another layout of the same step: a parameter was
        frozen or unfrozen between two optimizers' steps) in ``pend``: both move to
        the union of the two layouts, indices remapped by parameter."""
        union: Layout = self._layouts.union(pend.layout, work.layout)
        old = np.array([union.index[id(p)] for p in pend.layout.params], dtype=np.int64)
        new = np.array([union.index[id(p)] for p in work.layout.params], dtype=np.int64)
        remap = lambda idx, to: to[idx] if isinstance(idx, np.ndarray) else idx  # noqa: E731
        pend.chunks = [
            ([(kind, remap(ref, old), dev, start, n) for kind, ref, dev, start, n in slots], host, old[missing].tolist())
            for slots, host, missing in pend.chunks
        ]
        if pend.p is not None:  # sorted already (a step with a NaN/Inf)
            p, dw = np.full((len(union.names), pend.p.shape[1]), np.nan), np.full(len(union.names), np.nan)
            p[old], dw[old] = pend.p, pend.dW
            pend.p, pend.dW = p, dw
        for part in work.parts:
            part.idx = new[part.idx]
        for chunk, _ in pend.grads or ():  # held for a deferred check, in the old layout
            for part in chunk:
                part.idx = old[part.idx]
        work.missing = new[work.missing].tolist()
        work.layout = pend.layout = union

    def finish_step(self) -> None:
        """Close the current step; it goes to the publisher if it was logged."""
        pend = self._pending
        step = self.step
        self._pending = None
        self._contrib = set()
        self._work = {}
        self.step += 1
        if pend is not None:
            self.logged += 1
        for step_done in self._done:
            step_done(self)
        self._closed(step, pend)  # (None: an unlogged step, which may still make the queue due)
        if pend is not None and pend.broken:
            self._urgent()
