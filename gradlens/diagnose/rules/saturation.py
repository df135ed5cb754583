"""``saturation``: tanh/sigmoid-like outputs pinned at their limits.

Rule (SageMaker Debugger TanhSaturation/SigmoidSaturation): the monitor's
``act_sat_frac`` (fraction of the layer's outputs near the limits of a tanh- or
sigmoid-like activation) is at least ``saturation_fraction``. There the local
derivative is ~0, so almost no gradient passes.
"""

from __future__ import annotations

from typing import List

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, fmt, finite

__all__ = ["Saturation"]


class Saturation(Rule):
    """Most outputs of a tanh/sigmoid-like layer at their limits."""

    kind = "saturation"

    def observed(self, record: StepRecord) -> bool:
        return bool(record.stats.get("act_sat_frac"))

    def check(self, record: StepRecord) -> List[Condition]:
        t_sat = self.t["saturation_fraction"]
        sat = record.stats.get("act_sat_frac", {})
        zeros = record.stats.get("act_zero_frac", {})
        out = []
        for name in record.layers:
            frac = sat.get(name)
            if not finite(frac):
                continue
            zero = zeros.get(name)
            if finite(zero):
                frac = max(0.0, frac - zero)
            if frac >= t_sat:
                out.append(
                    Condition(
                        key=name,
                        layer=name,
                        value=float(frac),
                        threshold=t_sat,
                        severity="warning",
                        message=(
                            f"{fmt(100 * frac)}% of the outputs of {name!r} are saturated "
                            f"(threshold {fmt(100 * t_sat)}%): its inputs are too large; scale "
                            f"down the init of the layer feeding it, normalise its input, or "
                            f"lower the learning rate"
                        ),
                        evidence={"saturated_fraction": float(frac)},
                    )
                )
        return out
