"""``unreachable_output``: a bounded output activation that cannot reach the targets.

Rule (DeepDiagnosis, ICSE 2022, "output out of range": the targets lie outside the
range of the last layer's activation; without the targets we see the symptom): a
sigmoid/tanh/softmax-like output (``signals["output_sat_frac"]``, measured on the
model output, NaN for an unbounded one) with at least ``unreachable_sat_fraction``
of its elements pinned at its limits (SageMaker Debugger's 50%), while the loss

* is flat: with ``W = stalled_window``, the mean of the latest ``W`` logged losses is
  less than ``unreachable_min_improvement`` (relative) below the mean of the ``W``
  before (looser than ``stalled``'s 1%: a dataset seen in a fixed order repeats its
  batch pattern, and a window that is not a whole number of epochs moves its mean by
  a few percent),
* and stays near where it started: above ``1 - unreachable_max_drop`` times the mean
  of the first ``W`` losses (a classifier that learned and became confident has
  saturated outputs too, at a loss far below its start).

Named at the output layer: the last layer of the record (``record.layers`` runs
from the input side to the output side). Without ``output_sat_frac`` (output signals
off), the last layer's ``act_sat_frac`` is read instead when activations are traced
(``watch(activations=True)``: every 10th logged step by default); steps without
either are skipped, their losses still counted.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, finite, fmt
from gradlens.diagnose.rules.stalled import Levels

__all__ = ["UnreachableOutput"]


class UnreachableOutput(Rule):
    """The output layer's range does not hold the targets: saturated, loss high and flat."""

    kind = "unreachable_output"

    def observed(self, record: StepRecord) -> bool:
        # every record with a loss feeds the loss history here (the engine asks each rule
        # about each record); check() runs only where a saturation value was measured, so
        # that steps without one (activations traced every 10th step) keep the pending count
        self._fresh = record.loss is not None and self._loss.add(record.step, record.loss)
        return self._fresh and _saturation(record) is not None

    def reset(self) -> None:
        self._loss = Levels()
        self._fresh = False

    def check(self, record: StepRecord) -> List[Condition]:
        w = max(2, int(self.t["stalled_window"]))
        found = _saturation(record)
        if not self._fresh or len(self._loss) < 2 * w or found is None:
            return []
        sat, layer = found
        t_sat = self.t["unreachable_sat_fraction"]
        if sat < t_sat:
            return []
        start, before, recent = self._loss.start(w), self._loss.recent(w, back=w), self._loss.recent(w)
        if start <= 0 or before <= 0 or recent <= 0:
            return []
        t_imp, t_drop = self.t["unreachable_min_improvement"], self.t["unreachable_max_drop"]
        improvement = (before - recent) / before
        if improvement >= t_imp or recent < (1 - t_drop) * start:
            return []
        s0, s1 = self._loss.steps[0], self._loss.steps[-1]
        return [
            Condition(
                key="",
                layer=layer,
                value=float(sat),
                threshold=t_sat,
                severity="warning",
                message=(
                    f"the output cannot reach the targets: {fmt(100 * sat)}% of the model outputs sit at the "
                    f"limits of its bounded output activation (last layer {layer!r}; threshold "
                    f"{fmt(100 * t_sat)}%) while the loss stays high and flat ({fmt(start)} at the start, "
                    f"{fmt(before)} -> {fmt(recent)} over the last {2 * w} logged losses, steps "
                    f"{s0}-{s1}): use an output activation whose "
                    f"range holds the targets (linear for regression, softmax + cross-entropy for classes) "
                    f"or scale the targets into its range"
                ),
                evidence={"output_sat_frac": float(sat), "start": start, "before": before, "recent": recent,
                          "improvement": improvement, "output_min": record.signals.get("output_min"),
                          "output_max": record.signals.get("output_max")},
            )
        ]


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
