"""``divergence``: the loss rising by orders of magnitude, or non-finite.

Rule (ours, from issue 5's "rising by orders of magnitude"): the loss is at least
``divergence_factor`` times its median over the first ``baseline_steps`` logged
steps (warning), or is NaN/Inf (error). Needs the loss: the monitor records it when
given one (e.g. ``mon.observe_loss(loss)``); records without a loss are skipped.
"""

from __future__ import annotations

import math
from typing import List

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, fmt, is_real, median

__all__ = ["Divergence"]


class Divergence(Rule):
    """The loss blows up."""

    kind = "divergence"
    runs_when_poisoned = True

    def observed(self, record: StepRecord) -> bool:
        return record.loss is not None

    def reset(self) -> None:
        self._first: List[float] = []

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
        n_base = max(1, int(self.t["baseline_steps"]))
        if len(self._first) < n_base:
            self._first.append(float(loss))
            return []
        base = median(self._first)
        factor = self.t["divergence_factor"]
        if base <= 0 or loss < factor * base:
            return []
        return [
            Condition(
                key="",
                layer=None,
                value=loss / base,
                threshold=factor,
                severity="warning",
                message=(
                    f"the loss diverges: {fmt(loss)} is {fmt(loss / base)}x its level on the "
                    f"first {n_base} logged steps (threshold {fmt(factor)}x): lower the "
                    f"learning rate or clip gradients"
                ),
                evidence={"loss": float(loss), "baseline": base},
            )
        ]
