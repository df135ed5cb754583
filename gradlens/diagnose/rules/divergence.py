"""``divergence``: the loss rising by orders of magnitude, or non-finite.

Rule (ours, from issue 5's "rising by orders of magnitude"): the loss is at least
``divergence_factor`` times its *reference level* (warning), or is NaN/Inf (error).
The reference is the lower of

* the first finite, positive logged loss (judged from the next logged step on);
* the cross-entropy expected at initialisation, ``ln(loss_classes)``, when the number
  of classes is given (``thresholds={"loss_classes": 10}``; 0, the default, means
  unknown): a softmax over C classes at init predicts ~1/C each.

Against the first loss, a loss that explodes on the very first update is caught
(issue 12: a learning rate of 100 sends GPT-2's loss from 6.97 to 226,258 at step 1,
and a median over the first 5 steps, the reference before, already held exploded
losses). A median is not used: with batch size 1 the first losses of a healthy run
reach 1e-6 (AUTOTRAINER's oscillating case), so any median of them can be tiny.
Needs the loss: the monitor records it when given one (e.g. ``mon.observe_loss(loss)``);
records without a loss are skipped.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, fmt, is_real
from gradlens.diagnose.rules.stalled import chance_loss

__all__ = ["Divergence"]


class Divergence(Rule):
    """The loss blows up."""

    kind = "divergence"
    runs_when_poisoned = True

    def observed(self, record: StepRecord) -> bool:
        return record.loss is not None

    def reset(self) -> None:
        self._first: Optional[float] = None
        self._first_step: Optional[int] = None

    def _references(self) -> Dict[str, float]:
        refs: Dict[str, float] = {}
        if self._first is not None:
            refs[f"first logged loss (step {self._first_step})"] = self._first
        classes = self.t["loss_classes"]
        chance = chance_loss(classes)
        if chance is not None:
            refs[f"cross-entropy expected at initialisation ln({int(classes)})"] = chance
        return refs

    def _lowest_reference(self) -> Optional[float]:
        """The smallest value of :meth:`_references` (without naming them: every record)."""
        chance = chance_loss(self.t["loss_classes"])
        if self._first is None:
            return chance
        return self._first if chance is None else min(self._first, chance)

    def check(self, record: StepRecord) -> List[Condition]:
        loss = record.loss
        if loss is None or not is_real(loss):
            return []
        if not math.isfinite(loss):
            return [
                Condition(
                    key="",
                    layer=None,
                    value=float(loss),
                    threshold=None,
                    severity="error",
                    message=(
                        f"the loss is {loss}: training diverged; see the nonfinite finding for "
                        f"where it was born, lower the learning rate or clip gradients"
                    ),
                )
            ]
        loss = float(loss)
        factor = self.t["divergence_factor"]
        lowest = self._lowest_reference()
        # named only when it diverges: the references as they were before this record
        refs = self._references() if lowest is not None and loss >= factor * lowest else None
        if self._first is None and loss > 0:
            self._first, self._first_step = loss, record.step
        if refs is None:
            return []
        name, ref = min(refs.items(), key=lambda kv: kv[1])
        return [
            Condition(
                key="",
                layer=None,
                value=loss / ref,
                threshold=factor,
                severity="warning",
                message=(
                    f"the loss diverges: {fmt(loss)} at step {record.step} is {fmt(loss / ref)}x the "
                    f"{name}, {fmt(ref)} (threshold {fmt(factor)}x): lower the learning rate or clip "
                    f"gradients"
                ),
                evidence={"loss": loss, "reference": ref, "reference_kind": name,
                          "references": dict(refs)},
            )
        ]
