"""``update_ratio``: ||dW||/||W|| per layer far outside the healthy band.

Rule (CS231n, Karpathy: a healthy ratio is around 1e-3): a layer whose update ratio
is at least ``update_ratio_high`` (1: the step moved its weights by as much as their
own norm) means the learning rate is too high (warning, reported on its first
measurement, ``update_ratio_high_persist_steps``); a median ratio over layers at or
below ``update_ratio_low`` means learning has stalled (info, after
``update_ratio_persist_steps`` measurements). Steps where the monitor did not
measure it (NaN) are skipped.

Why one measurement is enough: Adam's first step moves every weight by ~lr (its
``m / sqrt(v)`` is +-1 elementwise), so its ratio is ~lr / rms(W) whatever the
gradient; a too-high Adam lr then inflates the weights (7-9x in 30-60 steps on the
corpus), and the ratio falls like lr / rms(W): measured again 10 steps later it is
below 0.1 (``deepfd_facial_keypoints_adam_0_1``, ``own_adam_lr_100x``). No healthy
program of the corpus reaches 1 on any single measurement.

Culprit: when at least half the judged layers are at or above the threshold (the
median layer's ratio is), the cause is the learning rate of the whole model and
``layer`` is ``None``; the largest ratio and every layer above are in evidence.
Otherwise it is the layer with the largest ratio (a layer of its own parameter
group, or whose weights are tiny next to the step size).

Layers whose weights started at exactly zero (zero-initialised heads, residual
branch outputs, LoRA ``B``) are left out of the "too high" test: their ratio starts
at infinity and falls like 1/t whatever the learning rate (ours: 0.94 at step 1
with Adam at lr 1e-3 on the healthy suite). Layers initialised tiny but not zero
(LayerScale's 1e-6 gains) are judged, and do move by more than their norm.
"""

from __future__ import annotations

import math
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
        # every record: the monitor measures the ratio every 10th logged step and writes NaN on
        # the others, so this usually scans every layer; plain floats are tested inline
        isfinite = math.isfinite
        for v in record.stats.get("update_ratio", {}).values():
            if isfinite(v) if type(v) is float else finite(v):
                return True
        return False

    def window_for(self, key: str) -> str:
        """A too-high ratio is reported on its first measurement; a tiny one waits its window."""
        return "update_ratio_high_persist_steps" if key == "high" else self.window

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
            judged = [(n, r) for n, r in ratios if not self._first_weight.started_at_zero(n)]
            name, r = max(high, key=lambda x: x[1])
            med_judged = median([v for _, v in judged])
            overall = med_judged >= t_high
            where = (f"{len(high)} of {len(judged)} layers above, median {fmt(med_judged)}: the learning "
                     f"rate of the whole model" if overall else f"{len(high)} of {len(judged)} layer(s) above")
            out.append(
                Condition(
                    key="high",
                    layer=None if overall else name,
                    value=r,
                    threshold=t_high,
                    severity="warning",
                    message=(
                        f"updates are too large: ||dW||/||W|| = {fmt(r)} at {name!r} (threshold "
                        f"{fmt(t_high)}: a step moves the weights by their own norm, healthy ~1e-3; "
                        f"{where}): lower the learning rate"
                    ),
                    evidence={"layers_above": {n: v for n, v in high[:20]}, "largest": name,
                              "median_update_ratio": med_judged, "layers_judged": len(judged)},
                    advice="lower the learning rate", urgent=urgent(r, t_high, self.t),
                    summary=f"||dW||/||W|| {fmt(r)}" + (f" at {name!r}" if overall else ""),
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
