"""Closed steps -> records -> sinks and rules, in batches.

Logged steps wait in a queue and are turned into
:class:`~gradlens._record.StepRecord` objects, written to the sinks (the in-memory
history, TensorBoard) and diagnosed in batches of up to ``PUBLISH_BATCH`` steps,
or once the oldest waiting step is ``PUBLISH_SECONDS`` old. Batching runs that
Python work once for many steps, with warm caches (MLP benchmark, host work per
logged step: ~260 us one by one, ~100 us in batches of 8, ~55 us in batches of
40). A step with a NaN/Inf, reading the monitor (findings, dataframe, records),
close(), and monitors with ``on_finding``/``halt_on`` publish at once. A batch
publishes only the steps whose (deferred) host copies have arrived, unless told
to wait.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from gradlens._record import GRAD_STATS, LAYER_STATS, StepRecord
from gradlens.diagnose.finding import Finding, TrainingHalted
from gradlens.monitor.layout import LayerOrder
from gradlens.monitor.packet import StepPacket, unpack

__all__ = ["Publisher", "publish_at_exit", "PUBLISH_BATCH", "PUBLISH_SECONDS"]

_log = logging.getLogger("gradlens")
_GN, _GM, _NF, _WN, _UR, _MISS = (GRAD_STATS.index(s) for s in GRAD_STATS)
_LAYER_COL = {stat: j for j, stat in enumerate(LAYER_STATS)}  # history column of each layer stat

PUBLISH_BATCH = 40
PUBLISH_SECONDS = 1.0


#: Modules whose frames a warning skips to point at the user's own code.
_LIBRARIES = ("gradlens", "torch", "lightning", "pytorch_lightning", "transformers", "accelerate")


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the
    first frame outside gradlens, torch and the training frameworks."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] in _LIBRARIES:
        frame, level = frame.f_back, level + 1
    return level


def _stat_dicts(names: Sequence[str], values: np.ndarray, mask: np.ndarray) -> List[Dict[str, Dict[str, float]]]:
    """Per step, ``{stat: {name: value}}`` for the GRAD_STATS columns of ``values``
    (steps, names, GRAD_STATS) where ``mask`` is set; a stat set nowhere is left out."""
    out = []
    cols = values.transpose(0, 2, 1).tolist()  # [step][stat][name], as floats
    every, some = mask.all(axis=1).tolist(), mask.any(axis=1).tolist()
    for b in range(len(cols)):
        stats = {}
        for j, stat in enumerate(GRAD_STATS):
            if every[b][j]:
                stats[stat] = dict(zip(names, cols[b][j]))
            elif some[b][j]:
                col = cols[b][j]
                stats[stat] = {names[i]: col[i] for i in np.flatnonzero(mask[b, :, j]).tolist()}
        out.append(stats)
    return out


class Publisher:
    """The queue of closed steps and everything downstream of it.

    Args:
        readers: slot kind -> the source that reads it (``Source.read``, see :func:`unpack`).
        order: orders each record's layers from the input side.
        history: the in-memory sink; ``tb``: the TensorBoard sink or None.
        diagnoser: the rules engine (``update(record) -> findings``).
        eager: publish every step at once (a callback or a halt needs it).
        on_finding, halt_on: called / raised for each new finding.
        finish: ``finish(packet)`` completes a step packet right before its record is
            built (losses observed after the step closed, the NaN origin).
        check: ``check()`` checks the deferred host copies (waits for them).
        after_record: called with each record before it is diagnosed.
        share_halt: under torch.distributed, ``share_halt(code) -> code`` shares each
            diagnosed record's halt decision with the other ranks (one small
            collective; see :mod:`.distributed`), so every rank halts at the same step.
    """

    def __init__(
        self,
        readers: Dict[str, Any],
        order: LayerOrder,
        *,
        history: Any,
        tb: Any,
        diagnoser: Any,
        eager: bool,
        on_finding: Optional[Callable[[Finding], Any]],
        halt_on: Tuple[str, ...],
        finish: Callable[[StepPacket], None],
        check: Callable[[], None],
        after_record: Callable[[StepRecord], None],
        share_halt: Optional[Callable[[int], int]] = None,
    ) -> None:
        self._readers, self._order = readers, order
        self._history, self._tb, self._diagnoser = history, tb, diagnoser
        self._eager = eager
        self._on_finding, self._halt_on = on_finding, halt_on
        self._finish, self._check, self._after_record = finish, check, after_record
        self._share_halt = share_halt if halt_on else None
        self._diagnoser_failed = False
        self._warned: set = set()
        self.queue: List[Tuple[int, StepPacket]] = []  # closed steps waiting for their records
        self._queued_at = 0.0

    @property
    def findings(self) -> List[Finding]:
        """Every finding so far."""
        return self._diagnoser.findings

    def add(self, step: int, pend: StepPacket) -> None:
        """Queue a closed step; publish the queue when it is due."""
        self.queue.append((step, pend))
        if len(self.queue) == 1:
            self._queued_at = time.monotonic()

    def due(self) -> bool:
        """Whether the queue is due (called at the end of every step)."""
        return bool(self.queue) and (
            self._eager
            or len(self.queue) >= PUBLISH_BATCH
            or time.monotonic() - self._queued_at >= PUBLISH_SECONDS
        )

    def queued(self, step: int) -> Optional[StepPacket]:
        """The packet of ``step`` if it is still waiting in the queue."""
        for queued_step, pend in reversed(self.queue):
            if queued_step == step:
                return pend
            if queued_step < step:
                break
        return None

    def publish(self, *, wait: bool = True, keep_last: bool = False) -> None:
        """Build the queued steps' records and send them to the sinks and the rules,
        in order (``wait=False``: only the leading steps whose copies arrived;
        ``keep_last``: the newest step waits for the next batch, since its loss may
        still be observed after its ``optimizer.step()``)."""
        if wait:
            self._check()
        while len(self.queue) > keep_last:
            # the queued steps with the same parameter layout are built together
            layout = self.queue[0][1].layout
            n = 0
            while n < len(self.queue) - keep_last and self.queue[n][1].layout is layout and (
                wait or (self.queue[n][1].checked and self.queue[n][1].ready())
            ):
                n += 1
            if n == 0:
                return  # the oldest step's copy is still in flight
            batch = self.queue[:n]
            del self.queue[:n]  # taken first: steps that cannot be built are not retried forever
            if self.queue:
                self._queued_at = time.monotonic()
            try:
                records = self.build_records(batch)
            except Exception as exc:  # noqa: BLE001 - a gradlens bug must not stop training
                msg = (f"gradlens: the records of steps {batch[0][0]}-{batch[-1][0]} could not be built "
                       f"({type(exc).__name__}: {exc}); they are left out")
                warnings.warn(msg, RuntimeWarning, stacklevel=user_stacklevel())
                continue
            # (with on_finding/halt_on every step is published alone: a halt loses nothing)
            for (_, pend), record in zip(batch, records):
                self._history.write(record, pend.layout.key, (pend.p, pend.present), pend.layer_rows)
                if self._tb is not None:
                    self._tb.write(record)
                self._after_record(record)
                self._diagnose(record)

    def build_records(self, batch: List[Tuple[int, StepPacket]]) -> List[StepRecord]:
        """The records of ``batch`` (steps with one layout), in order, with one numpy
        pass for all; each step packet also gets the history's arrays (``present``,
        ``layer_rows``)."""
        layout = batch[0][1].layout
        names, lnames = layout.names, layout.layer_names
        p, dw = unpack([pend for _, pend in batch], self._readers)  # (steps, params, GRAD_STATS), (steps, params)
        miss = p[:, :, _MISS]
        seen = ~np.isnan(miss)  # the parameter's optimizer stepped in this record
        m = miss == 0  # ... and it had a gradient
        has_dw = m & ~np.isnan(dw)
        present = np.stack([m, m, m, m, m & ~np.isnan(p[:, :, _UR]), seen], axis=2)
        # per layer, from the parameters' numbers: norms combine as sqrt(sum of
        # squares), max as max, counts add; unmeasured entries are left out (zeroed),
        # a NaN of a measured one propagates to its layer only
        sq = np.stack([p[:, :, _GN] ** 2, p[:, :, _NF], p[:, :, _WN] ** 2, dw * dw, miss], axis=2)
        keep = np.stack([m, m, m, has_dw, seen], axis=2)
        cols = np.concatenate([np.where(keep, sq, 0.0), keep], axis=2)
        gmax = np.where(m, p[:, :, _GM], -np.inf)
        if layout.by_layer is not None:
            cols, gmax = cols[:, layout.by_layer], gmax[:, layout.by_layer]
        sums = np.add.reduceat(cols, layout.layer_starts, axis=1)  # (steps, layers, 10)
        with np.errstate(invalid="ignore", divide="ignore"):
            lay_gm = np.maximum.reduceat(gmax, layout.layer_starts, axis=1)  # NaN propagates
            lay_wn = np.sqrt(sums[:, :, 2])
            lay_vals = np.stack(
                [np.sqrt(sums[:, :, 0]), lay_gm, sums[:, :, 1], lay_wn, np.sqrt(sums[:, :, 3]) / lay_wn, sums[:, :, 4]],
                axis=2,
            )
        n_meas, n_dw, n_seen = sums[:, :, 5] > 0, sums[:, :, 8] > 0, sums[:, :, 9] > 0
        lay_mask = np.stack([n_meas, n_meas, n_meas, n_meas, n_dw, n_seen], axis=2)
        param_dicts = _stat_dicts(names, p, present)
        layer_dicts = _stat_dicts(lnames, lay_vals, lay_mask)
        records = []
        for b, (step, pend) in enumerate(batch):
            pend.present = present[b]
            stats = layer_dicts[b]
            act = pend.act or {}
            for layer, row in act.items():
                for stat, v in row.items():
                    stats.setdefault(stat, {})[layer] = float(v)
            layers, pos = self._order.of(lnames + [a for a in act if a not in layout.layer_pos])
            # the history's per-layer arrays: rows in record order, columns in LAYER_STATS order
            hist_vals = np.full((len(layers), len(LAYER_STATS)), np.nan, dtype=np.float32)
            hist_mask = np.zeros(hist_vals.shape, dtype=bool)
            grad_rows = pos[: len(lnames)]  # the layout's layers come first in the ordered input
            hist_vals[grad_rows, : len(GRAD_STATS)] = lay_vals[b]
            hist_mask[grad_rows, : len(GRAD_STATS)] = lay_mask[b]
            if act:
                row_of = dict(zip(layers, range(len(layers))))
                for layer, row in act.items():
                    for stat, v in row.items():
                        hist_vals[row_of[layer], _LAYER_COL[stat]] = v
                        hist_mask[row_of[layer], _LAYER_COL[stat]] = True
            pend.layer_rows = (hist_vals, hist_mask)
            self._finish(pend)
            records.append(StepRecord(
                step=step,
                layers=layers,
                stats=stats,
                param_stats=param_dicts[b],
                loss=pend.loss,
                nonfinite_origin=pend.origin,
                signals=pend.signals or {},
                nonfinite_site=pend.site,
            ))
        return records

    def _diagnose(self, record: StepRecord) -> None:
        halt = self._find(record)
        if self._share_halt is not None:  # every rank calls this once per record, found or not
            halt = _shared_halt(self._share_halt, halt, self._halt_on, record.step)
        if halt is not None:
            raise TrainingHalted(halt)

    def _find(self, record: StepRecord) -> Optional[Finding]:
        """Diagnose ``record``: warn and call ``on_finding`` for each new finding;
        returns the first one whose kind halts training."""
        if self._diagnoser_failed:
            return None
        try:
            new = list(self._diagnoser.update(record) or ())
        except Exception as exc:  # noqa: BLE001 - diagnosis must never break training
            self._diagnoser_failed = True
            msg = f"gradlens: diagnosis failed ({type(exc).__name__}: {exc}); it is off for this run"
            warnings.warn(msg, RuntimeWarning, stacklevel=user_stacklevel())
            return None
        if not new:
            return None
        if self._tb is not None:
            self._tb.write_findings(new, record.step)
        for finding in new:
            # one line per finding on stderr: the first of each (kind, layer) as a
            # warning that points at the user's code, later ones as a log line
            key = (finding.kind, finding.layer)
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(str(finding), RuntimeWarning, stacklevel=user_stacklevel())
            else:
                _log.warning("%s", finding)
            if self._on_finding is not None:
                self._on_finding(finding)
        return next((f for f in new if f.kind in self._halt_on), None)


def _shared_halt(
    share: Callable[[int], int], halt: Optional[Finding], halt_on: Tuple[str, ...], step: int
) -> Optional[Finding]:
    """This rank's halting finding, or the one another rank found at ``step`` (as a
    finding that names it), or None when no rank halts. The kinds travel as their
    position in the sorted ``halt_on`` (the same on every rank)."""
    kinds = sorted(halt_on)
    code = share(kinds.index(halt.kind) + 1 if halt is not None else 0)
    if halt is not None or code == 0:
        return halt
    kind = kinds[code - 1]
    return Finding(
        kind, None, step, "error", float("nan"),
        f"another rank found {kind!r} at step {step} (halt_on); this rank stops with it",
        evidence={"found_on": "another rank"},
    )


def publish_at_exit(ref: Any) -> None:
    """Publish and flush what a monitor that was never closed still holds (``ref``:
    a weak reference to it; registered with :mod:`atexit`)."""
    mon = ref()
    if mon is None or mon._closed:
        return
    try:
        mon._flush_pending()
        if mon._tb is not None:
            mon._tb.flush()
    except Exception:  # noqa: BLE001 - nothing to report to at interpreter exit
        pass
