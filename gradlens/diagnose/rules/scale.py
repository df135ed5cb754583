"""``scale``: weights out of scale with the other layers, or growing by orders of magnitude.

Rules (ours; issue 12: "weights or activations growing by orders of magnitude",
AUTOTRAINER's ``large_weight``):

* **oversized**: a layer's weight norm is at least ``scale_oversized`` times the
  median weight norm of the other layers (at least three layers with weights). A
  layer scaled up by orders of magnitude (an embedding multiplied by 1e4) starves
  the gradient behind the normalisation that follows it, saturates the activations
  after it or blows up its outputs; the findings that follow (``vanishing``,
  ``saturation``, ``exploding``) link to this one as their cause.
* **growing**: a layer's weight norm reaches ``scale_growth`` times its first value
  (the layer that grew most is named), and, when activations are traced, a layer's
  output standard deviation reaches ``scale_growth`` times its first value or unit
  scale, whichever is larger (standard inits aim at unit-variance outputs: a
  tiny-init net recovering from 1e-8 is not growing out of range).

Layers whose weights started at exactly zero are left out (their first norm is 0).
A growth ``urgent_factor`` times past the threshold is reported at once.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import (
    Condition, FirstWeights, Rule, finite, fmt, largest_over_median, urgent,
)

__all__ = ["Scale"]


class Scale(Rule):
    """Oversized weights, and weights or activations growing by orders of magnitude."""

    kind = "scale"
    phrase = "weights out of scale"

    def reset(self) -> None:
        self._first_weight = FirstWeights()
        self._first_std: Dict[str, float] = {}  # first finite output std per layer (weights: _first_weight)

    def check(self, record: StepRecord) -> List[Condition]:
        self._first_weight.update(record)
        out: List[Condition] = []
        weights = record.stats.get("weight_norm", {})
        sized = self._first_weight.sized(record.layers, weights)
        # a layer that grew out of scale is the growth test's; this one is for a scale it had
        # from the start (an init or a constant factor)
        t_growth = self.t["scale_growth"]
        grown = {n for n, w in sized if w / self._first_weight.first(n) >= t_growth}
        over = self._oversized(sized, grown)
        if over is not None:
            out.append(over)
        for stat, what in (("weight_norm", "weights"), ("act_std", "activations")):
            grown = self._growth(record, stat, what)
            if grown is not None:
                out.append(grown)
        return out

    def _oversized(self, sized: List[Tuple[str, float]], grown) -> Optional[Condition]:
        if len(sized) < 3:
            return None
        t = self.t["scale_oversized"]
        # only the largest can be oversized against the others: one median, O(L log L)
        best = largest_over_median(sized, lambda n: n not in grown)
        if best is None or best[2] < t:
            return None
        name, w, q = best
        advice = (f"scale down the initialisation of {name!r} (or remove what multiplies it); "
                  f"a normalisation after it divides its gradient by the same factor")
        return Condition(
            key="oversized", layer=name, value=q, threshold=t, severity="warning",
            message=(f"the weights of {name!r} are oversized: ||W|| = {fmt(w)} is {fmt(q)}x the median "
                     f"weight norm of the other layers (threshold {fmt(t)}x): {advice}"),
            evidence={"weight_norm": w, "over_median": q},
            advice=advice, summary=f"||W|| {fmt(w)}, {fmt(q)}x the median layer",
        )

    def _growth(self, record: StepRecord, stat: str, what: str) -> Optional[Condition]:
        values = record.stats.get(stat)
        if not values:
            return None
        first = self._first_std
        t = self.t["scale_growth"]
        best: Optional[Tuple[str, float, float, float]] = None
        for name in record.layers:
            v = values.get(name)
            if not finite(v):
                continue
            if stat == "weight_norm":
                f0 = self._first_weight.first(name)  # recorded by check()'s update, at this record at the latest
                if f0 is None or f0 <= 0:
                    continue
                q = v / f0
            else:
                if name not in first:
                    first[name] = float(v)
                    continue
                f0 = first[name]
                if f0 <= 0:
                    continue
                # activations: measured from unit scale at least (what Glorot/He inits aim at), so
                # a tiny-init net's outputs recovering from 1e-8 to 0.1 are not "growth"
                q = v / max(f0, 1.0)
            if q >= t and (best is None or q > best[2]):  # input side on ties
                best = (name, float(v), q, f0)
        if best is None:
            return None
        name, v, q, f0 = best
        norm = "||W||" if stat == "weight_norm" else "the output std"
        advice = "lower the learning rate, clip gradients or add weight decay / normalisation"
        return Condition(
            key="growth:" + stat, layer=name, value=q, threshold=t, severity="warning",
            message=(f"{what} grow by orders of magnitude: {norm} of {name!r} is {fmt(v)}, {fmt(q)}x "
                     f"its first value {fmt(f0)} (threshold {fmt(t)}x): {advice}"),
            evidence={stat: v, "first": f0, "growth": q},
            advice=advice, urgent=urgent(q, t, self.t),
            summary=f"{norm} {fmt(v)}, {fmt(q)}x its first value",
        )
