"""``exploding``: gradient norms growing going back through the layers, or over time.

Rules:

* across layers (AUTOTRAINER, ICSE 2021): ``g_first / g_last >= exploding_ratio``,
  with ``g`` the gradient norm of each layer that has one, input side first. The
  culprit is where the growth happens: the input-side layer of the largest rise in
  ``log10 g`` between adjacent layers (going backward from the loss), unless a layer at
  or above it has weights ``exploding_amplifier`` times the median of the other layers'
  (a head or a final norm gain scaled up by 1e3): the backward pass multiplies by those
  weights, so that layer is named.
* too large for the weights: some layer's ``||g|| / ||W|| >= exploding_relative``
  (a norm far beyond normal whatever the depth: in a uniformly over-scaled ReLU
  stack the gradients grow backward exactly as the activations grow forward, so
  every layer's weight gradient is equally, and hugely, large), *per unit of
  output gradient*: every gradient is linear in dL/d(output), so a loss on large
  targets (MSE on values in the hundreds) makes every layer's gradient large without
  any growth through the layers. The ratio is divided by ``||dL/d(output)||`` (the
  latest measured ``output_grad_norm`` signal) when that exceeds 1, the scale of a
  unit-scale loss (cross-entropy, MSE on standardised targets). A ratio
  ``urgent_factor`` times past the threshold before that division is urgent whatever
  the loss (the next SGD step moves the weights by 1e4 times the learning rate).
  Named as above
  when the gradient clearly rises (2x or more) somewhere going backward, else at
  the input-most layer past the threshold (the whole stack is hit alike: an
  over-scaled init, unscaled inputs). Layers whose weights started at
  exactly zero, and the output layer (whose gradient the loss's scale sets), are
  left out of this test.
* over time: the total gradient norm reaches ``exploding_growth`` times its median
  over the first ``baseline_steps`` logged steps. The culprit is the layer whose
  own norm grew most over its own baseline.

A value ``urgent_factor`` times past its threshold (``||g||/||W||`` of 1e4, gradients of
1e12 at step 0) is urgent: reported at once, since the next step's weights are often
NaN already, and the NaN is then linked to it.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import (
    Condition, FirstWeights, Rule, fmt, grad_layers, largest_over_median, largest_step, median, finite,
    urgent,
)

__all__ = ["Exploding"]

#: A rise between adjacent layers smaller than this is noise, not "where the growth
#: happens" (ours: adjacent layers of healthy nets differ by up to ~1.5x).
_CLEAR_RISE = 2.0


class Exploding(Rule):
    """Gradient norms growing going back through the layers or far beyond their normal level."""

    kind = "exploding"
    phrase = "exploding gradients"

    def reset(self) -> None:
        self._first_weight = FirstWeights()
        self._total: List[float] = []
        self._per_layer: Dict[str, List[float]] = {}
        self._base: Optional[float] = None  # median of _total, once the baseline is full
        self._bases: Dict[str, float] = {}  # median of each _per_layer, from then on
        self._out_grad = 1.0  # the latest measured ||dL/d(output)||, at least 1 (see _loss_scale)

    def check(self, record: StepRecord) -> List[Condition]:
        scale = self._loss_scale(record)  # (kept on every record: it is measured on its own cadence)
        gl = grad_layers(record)
        if not gl:
            return []
        over_time = self._over_time(gl)
        t_ratio, t_rel = self.t["exploding_ratio"], self.t["exploding_relative"]
        (first, g_first), (last, g_last) = gl[0], gl[-1]
        ratio = g_first / g_last
        weights = record.stats.get("weight_norm", {})
        self._first_weight.update(record)
        # zero-initialised layers are left out: ||W|| starts at 0, so ||g||/||W|| is
        # huge on their first updates whatever the gradients (ours: 71 at step 1 for a
        # zero-initialised head under Adam lr 1e-3, healthy suite)
        # the output layer is left out too: its gradient is set by the loss's scale (MSE on
        # targets in the hundreds), not by growth through the layers (ours: 206 at the
        # output of a healthy regression, at most 35 below it on the healthy corpus)
        relative = {
            name: g / weights[name] for name, g in gl[:-1]
            if finite(weights.get(name))
            and weights[name] > 0 and not self._first_weight.started_at_zero(name)
        }
        worst = max(relative, key=relative.get) if relative else None
        # per unit of output gradient; a raw ratio urgent_factor times past the threshold holds anyway
        raw_urgent = worst is not None and urgent(relative[worst], t_rel, self.t)
        rel_holds = worst is not None and (relative[worst] / scale >= t_rel or raw_urgent)
        if not (len(gl) >= 2 and ratio >= t_ratio) and not rel_holds:
            return over_time  # neither test holds: skip the culprit search (every record)
        if len(gl) >= 2:
            culprit, after, factor, _ = largest_step(gl, rise=True)
        else:
            culprit, after, factor = first, None, 1.0
        evidence = {
            "first_layer": first, "last_layer": last,
            "first_grad_norm": g_first, "last_grad_norm": g_last,
            "growth_from": after, "growth_factor": factor,
        }
        fix = ("lower the learning rate, clip gradients, or scale down the initialisation / add "
               "normalisation at the layers where the gradient grows")
        grads = dict(gl)
        if len(gl) >= 2 and ratio >= t_ratio:
            layer, where = culprit, f"the growth happens at {culprit!r}, {fmt(factor)}x larger than at {after!r}"
            amp = self._amplifier(gl, weights, culprit)
            if amp is not None:
                layer, where = amp[0], (f"it grows below {amp[0]!r}, whose weights are {fmt(amp[1])}x the "
                                        f"median layer's (largest rise at {culprit!r})")
            return [Condition(
                key="", layer=layer, value=ratio, threshold=t_ratio, severity="warning",
                message=(
                    f"gradients explode going backward: {first!r} gets {fmt(ratio)}x the gradient "
                    f"norm of {last!r} (threshold {fmt(t_ratio)}); {where}: {fix}"
                ),
                evidence=dict(evidence, amplifier=amp[0] if amp else None), advice=fix,
                urgent=urgent(ratio, t_ratio, self.t), summary=_summary(record, layer, grads[layer]),
            )]
        if rel_holds:
            if culprit is not None and factor >= _CLEAR_RISE:
                layer = culprit
                where = f"; the growth happens at {layer!r}, {fmt(factor)}x larger than at {after!r}"
            else:
                # no layer makes it grow: every layer past the threshold is hit alike (an
                # over-scaled stack, unscaled inputs); look where it starts, at the input side
                layer = next(n for n in relative
                             if relative[n] / scale >= t_rel or urgent(relative[n], t_rel, self.t))
                where = f"; no layer makes it grow, so look at the input side, {layer!r}"
            amp = self._amplifier(gl, weights, layer)
            if amp is not None:
                layer, where = amp[0], f"; it grows below {amp[0]!r}, whose weights are {fmt(amp[1])}x the median layer's"
            per = (f", {fmt(relative[worst] / scale)}x per unit of ||dL/d(output)|| = {fmt(scale)}"
                   if scale > 1 else "")
            return [Condition(
                key="", layer=layer, value=relative[worst], threshold=t_rel, severity="warning",
                message=(
                    f"gradients explode: the gradient norm of {worst!r} is {fmt(relative[worst])}x "
                    f"its weight norm{per} (threshold {fmt(t_rel)}){where}: {fix}"
                ),
                evidence=dict(evidence, grad_over_weight=relative[worst], worst_layer=worst,
                              output_grad_norm=scale if scale > 1 else None,
                              amplifier=amp[0] if amp else None),
                advice=fix, urgent=raw_urgent,
                summary=_summary(record, layer, grads[layer]),
            )]
        return over_time

    def _loss_scale(self, record: StepRecord) -> float:
        """The latest measured ``||dL/d(output)||`` (``output_grad_norm``, measured on its own
        cadence: the last value is kept), or 1 when it is smaller or was never measured."""
        g = record.signals.get("output_grad_norm") if record.signals else None
        if finite(g):
            self._out_grad = max(1.0, float(g))
        return self._out_grad

    def _amplifier(self, gl, weights, culprit: str) -> Optional[Tuple[str, float]]:
        """The layer at or above ``culprit`` (output side) whose weights are ``exploding_amplifier``
        times the median of the others, the largest such, as ``(name, factor)``; else None.

        The backward pass multiplies the gradient by each layer's weights, so a layer scaled up
        by orders of magnitude (a head or a final norm gain x1e3) inflates every gradient
        below it: the rise shows up under it, the cause is the layer itself.
        """
        names = [n for n, _ in gl]
        sized = self._first_weight.sized(names, weights)
        if len(sized) < 3 or culprit not in names:
            return None
        above = set(names[names.index(culprit):])
        best = largest_over_median(sized, above.__contains__)
        if best is None:
            return None
        name, _, q = best
        return (name, q) if q >= self.t["exploding_amplifier"] else None

    def _over_time(self, gl) -> List[Condition]:
        n_base = max(1, int(self.t["baseline_steps"]))
        total = math.sqrt(sum(g * g for _, g in gl))
        if len(self._total) < n_base:
            self._total.append(total)
            for name, g in gl:
                self._per_layer.setdefault(name, []).append(g)
            return []
        if self._base is None:
            self._base = median(self._total)
            self._bases = {name: median(values) for name, values in self._per_layer.items()}
        base = self._base
        t_growth = self.t["exploding_growth"]
        if base <= 0 or total / base < t_growth:
            return []
        bases = self._bases
        growth = {name: g / bases[name] for name, g in gl if bases.get(name, 0.0) > 0}
        culprit = max(growth, key=growth.get) if growth else max(gl, key=lambda x: x[1])[0]
        value = total / base
        fix = "lower the learning rate or clip gradients"
        return [
            Condition(
                key="",
                layer=culprit,
                value=value,
                threshold=t_growth,
                severity="warning",
                message=(
                    f"gradients explode over time: the total gradient norm is {fmt(value)}x its "
                    f"level on the first {n_base} logged steps (threshold {fmt(t_growth)}), "
                    f"most at {culprit!r}: {fix}"
                ),
                evidence={"total_grad_norm": total, "baseline": base,
                          "layer_growth": growth.get(culprit, math.nan)},
                advice=fix, urgent=urgent(value, t_growth, self.t),
                summary=f"total ||g|| {fmt(total)}, {fmt(value)}x its level at the start",
            )
        ]


def _summary(record: StepRecord, layer: str, g: float) -> str:
    """``"||g|| 1.6e+19, update ratio 1.0e+10"`` at ``layer`` (the ratio when it was measured)."""
    ur = record.stats.get("update_ratio", {}).get(layer)
    return f"||g|| {fmt(g)}" + (f", update ratio {fmt(ur)}" if finite(ur) else "")
