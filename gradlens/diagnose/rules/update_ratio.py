"""``update_ratio``: ||dW||/||W|| per layer far outside the healthy band.

Rule (CS231n, Karpathy: a healthy ratio is around 1e-3): a layer whose update ratio
is at least ``update_ratio_high`` means the learning rate is too high (warning,
named at the layer with the largest ratio; the others are listed in evidence); a
median ratio over layers at or below ``update_ratio_low`` means learning has
stalled (info). Steps where the monitor did not measure it (NaN) are skipped. A
ratio ``urgent_factor`` times the "too high" threshold (the step moved the weights
by 30x their norm) is reported at once.

Layers whose weights started at exactly zero (zero-initialised heads, residual
branch outputs, LoRA ``B``) are left out of the "too high" test: their ratio starts
at infinity and falls like 1/t whatever the learning rate (ours: 0.94 at step 1
with Adam at lr 1e-3 on the healthy suite).
"""

from __future__ import annotations

from typing import List

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, FirstWeights, Rule, fmt, median, finite, urgent

__all__ = ["UpdateRatio"]


class UpdateRatio(Rule):
    """Learning rate too high (or too low) for a layer, from ||dW||/||W||."""

    kind = "update_ratio"
    phrase = "updates too large"
    window = "update_ratio_persist_steps"

    def observed(self, record: StepRecord) -> bool:
        values = record.stats.get("update_ratio", {}).values()
        return any(finite(v) for v in values)

    def reset(self) -> None:
        self._first_weight = FirstWeights()

    def check(self, record: StepRecord) -> List[Condition]:
        self._first_weight.update(record)
        values = record.stats.get("update_ratio", {})
        ratios = [
            (n, float(values[n])) for n in record.layers
            if finite(values.get(n))
        ]
        if not ratios:
            return []
        out = []
        t_high, t_low = self.t["update_ratio_high"], self.t["update_ratio_low"]
        high = [(n, r) for n, r in ratios if r >= t_high and not self._first_weight.started_at_zero(n)]
        if high:
            name, r = max(high, key=lambda x: x[1])
            out.append(
                Condition(
                    key="high",
                    layer=name,
                    value=r,
                    threshold=t_high,
                    severity="warning",
                    message=(
                        f"updates are too large: ||dW||/||W|| = {fmt(r)} at {name!r} (threshold "
                        f"{fmt(t_high)}, healthy ~1e-3; {len(high)} layer(s) above): lower the "
                        f"learning rate"
                    ),
                    evidence={"layers_above": {n: v for n, v in high[:20]}},
                    advice="lower the learning rate", urgent=urgent(r, t_high, self.t),
                    summary=f"||dW||/||W|| {fmt(r)}",
                )
            )
        med = median([r for _, r in ratios])
        if med <= t_low:
            out.append(
                Condition(
                    key="low",
                    layer=None,
                    value=med,
                    threshold=t_low,
                    severity="info",
                    message=(
                        f"updates are tiny: median ||dW||/||W|| = {fmt(med)} over layers "
                        f"(threshold {fmt(t_low)}, healthy ~1e-3): the learning rate may be too low"
                    ),
                    evidence={"median_update_ratio": med},
                )
            )
        return out
