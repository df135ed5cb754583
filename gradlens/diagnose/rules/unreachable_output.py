"""``unreachable_output``: a bounded output activation that cannot reach the targets.

DeepDiagnosis (ICSE 2022) "output out of range": the targets lie outside the range of
the last layer's activation. The targets are not seen; their symptom is. Four ways it
shows, each read from the model-output signals (``StepRecord.signals``, every 5th
logged step by default):

* **ReLU output pushed below 0** (``output_push_frac`` on a ReLU output): at least
  ``unreachable_push_fraction`` of the outputs sit at 0 while dL/d(output) is positive
  there, so the loss would fall if they went negative, where a ReLU cannot go. For MSE,
  L1 or Huber only a negative target does that; no loss is needed (an autoencoder or a
  regression with a ReLU last layer against targets in [-1, 1]).
* **saturated, loss high and flat**: a sigmoid/tanh/softmax-like output
  (``output_sat_frac``) with at least ``unreachable_sat_fraction`` of its elements
  pinned at its limits (SageMaker Debugger's 50%), while the loss

  - is flat: with ``W = stalled_window``, the mean of the latest ``W`` logged losses is
    less than ``unreachable_min_improvement`` (relative) below the mean of the ``W``
    before (looser than ``stalled``'s 1%: a dataset seen in a fixed order repeats its
    batch pattern, and a window that is not a whole number of epochs moves its mean by
    a few percent),
  - and stays near where it started: above ``1 - unreachable_max_drop`` times the mean
    of the first ``W`` losses (a classifier that learned and became confident has
    saturated outputs too, at a loss far below its start).
* **pushed past a limit, the loss below zero**: at least ``unreachable_push_fraction``
  of a bounded output pushed outward at a limit while the latest ``W`` losses average
  below 0 from a positive start. MSE, L1 and the cross-entropies are never negative on
  targets inside the output's range; binary cross-entropy on a label of 2 is
  ``-2 log p + log(1 - p)``, unbounded below as ``p -> 1`` (a confident classifier that
  learned is pushed at its limits too, at a loss that stays above 0).
* **softmax rows against targets that do not sum to one** (``output_sum_push``, the
  mean of dL/dp over its RMS): at least ``unreachable_sum_push`` in absolute value while
  the loss is high and flat as above. A softmax cannot follow the gradient's part along
  the all-ones direction; it is 0 for MSE on one-hot targets and about -0.4 for MSE on
  multi-label targets. (NLL on ``log(p)`` reads ``-1/sqrt(K)`` at any point: only a
  loss that is also flat and high counts.)

Named at the output layer: the last layer of the record (``record.layers`` runs from the
input side to the output side). Without ``output_sat_frac`` (output signals off), the
last layer's ``act_sat_frac`` is read instead when activations are traced
(``watch(activations=True)``: every 10th logged step by default); steps without any of
these signals are skipped, their losses still counted.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, finite, fmt
from gradlens.diagnose.rules.stalled import Levels

__all__ = ["UnreachableOutput"]

_ADVICE = ("use an output activation whose range holds the targets (linear for regression, softmax + "
           "cross-entropy for classes, sigmoid + binary cross-entropy for multi-label targets) or scale "
           "the targets into its range")


class UnreachableOutput(Rule):
    """The output layer's range does not hold the targets (pushed past its limits, or
    saturated with the loss high and flat)."""

    kind = "unreachable_output"

    def observed(self, record: StepRecord) -> bool:
        # every record with a loss feeds the loss history here (the engine asks each rule
        # about each record); check() runs only where an output signal was measured, so
        # that steps without one (every 5th logged step by default) keep the pending count
        self._fresh = record.loss is not None and self._loss.add(record.step, record.loss)
        if not record.layers:
            return False
        s = record.signals
        return (_saturation(record) is not None or finite(s.get("output_push_frac"))
                or finite(s.get("output_sum_push")))

    def reset(self) -> None:
        self._loss = Levels()
        self._fresh = False

    def check(self, record: StepRecord) -> List[Condition]:
        layer = record.layers[-1]
        s = record.signals
        push, offset = s.get("output_push_frac"), s.get("output_sum_push")
        found = _saturation(record)
        t_push = self.t["unreachable_push_fraction"]
        extremes = {"output_min": s.get("output_min"), "output_max": s.get("output_max")}
        # a ReLU output: pushed fraction measured, no saturation (its range has no upper limit)
        if finite(push) and found is None and push >= t_push:
            return [self._condition(
                layer, push, t_push,
                f"the output cannot reach the targets: {fmt(100 * push)}% of the model outputs sit at 0, "
                f"the floor of the ReLU output layer {layer!r}, while the loss pushes them below it "
                f"(dL/d(output) > 0 there; threshold {fmt(100 * t_push)}%): under MSE or L1, targets below 0",
                {"output_push_frac": float(push), **extremes})]
        loss = self._levels()
        if loss is None:
            return []
        start, before, recent, s0, s1 = loss
        if finite(push) and found is not None and push >= t_push and start > 0 and recent < 0:
            return [self._condition(
                layer, push, t_push,
                f"the output cannot reach the targets: {fmt(100 * push)}% of the model outputs sit at a limit "
                f"of the bounded output layer {layer!r} while the loss pushes them past it (threshold "
                f"{fmt(100 * t_push)}%), and the loss went below zero ({fmt(start)} at the start, "
                f"{fmt(recent)} over the latest logged losses, steps {s0}-{s1}), which no loss on targets "
                f"inside the output's range does (binary cross-entropy on labels above 1 does)",
                {"output_push_frac": float(push), "start": start, "recent": recent, **extremes})]
        if start <= 0 or before <= 0 or recent <= 0:
            return []
        t_imp, t_drop = self.t["unreachable_min_improvement"], self.t["unreachable_max_drop"]
        improvement = (before - recent) / before
        if improvement >= t_imp or recent < (1 - t_drop) * start:
            return []
        level = (f"while the loss stays high and flat ({fmt(start)} at the start, {fmt(before)} -> "
                 f"{fmt(recent)} over the last {2 * self._w()} logged losses, steps {s0}-{s1})")
        flat = {"start": start, "before": before, "recent": recent, "improvement": improvement}
        t_sat = self.t["unreachable_sat_fraction"]
        if found is not None and found[0] >= t_sat:
            sat = found[0]
            return [self._condition(
                layer, sat, t_sat,
                f"the output cannot reach the targets: {fmt(100 * sat)}% of the model outputs sit at the "
                f"limits of its bounded output activation (last layer {layer!r}; threshold "
                f"{fmt(100 * t_sat)}%) {level}",
                {"output_sat_frac": float(sat), **flat, **extremes})]
        t_sum = self.t["unreachable_sum_push"]
        if finite(offset) and abs(offset) >= t_sum:
            more = "more" if offset < 0 else "less"
            return [self._condition(
                layer, abs(offset), t_sum,
                f"the output cannot reach the targets: the softmax output of {layer!r} sums to 1 per row, "
                f"while the loss pulls all its probabilities {'up' if offset < 0 else 'down'} together "
                f"(mean/rms of dL/dp {fmt(offset)}, threshold {fmt(t_sum)} in absolute value: targets whose "
                f"rows sum to {more} than 1, e.g. multi-label targets) {level}",
                {"output_sum_push": float(offset), **flat, **extremes})]
        return []

    def _w(self) -> int:
        return max(2, int(self.t["stalled_window"]))

    def _levels(self) -> Optional[Tuple[float, float, float, int, int]]:
        """(start, before, recent, first step, last step) of the loss, or None when this
        record has no fresh loss or fewer than two windows were seen."""
        w = self._w()
        if not self._fresh or len(self._loss) < 2 * w:
            return None
        lv = self._loss
        return lv.start(w), lv.recent(w, back=w), lv.recent(w), lv.steps[0], lv.steps[-1]

    def _condition(self, layer: str, value: float, threshold: float, seen: str,
                   evidence: Dict[str, Any]) -> Condition:
        return Condition(key="", layer=layer, value=float(value), threshold=threshold, severity="warning",
                         message=f"{seen}: {_ADVICE}", evidence=evidence, advice=_ADVICE)


def _saturation(record: StepRecord) -> Optional[Tuple[float, str]]:
    """(saturated fraction of the model output, output layer), or None when not measured."""
    if not record.layers:
        return None
    last = record.layers[-1]
    sat = record.signals.get("output_sat_frac")
    if finite(sat):
        return float(sat), last
    sat = record.stats.get("act_sat_frac", {}).get(last)
    if finite(sat):
        return float(sat), last
    return None
