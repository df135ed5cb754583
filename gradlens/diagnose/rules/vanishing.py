"""``vanishing``: the early layers get a negligible share of the gradient.

Rule (AUTOTRAINER, ICSE 2021): with ``g`` the gradient norm of each layer that has
one, input side first, and ``k`` the norm of its kernel gradient (biases left out, as
AUTOTRAINER's ``gradient_norm`` does), gradients vanish when
``k_first / k_last <= vanishing_ratio`` *and* either ``k_first <= vanishing_abs``
(AUTOTRAINER's release) or ``g`` falls at every layer going backward (the trend test of
AUTOTRAINER's first version: a steady decline is vanishing whatever the loss's scale).
The ratio is the smaller of the kernels' and the layers' (biases included: a tiny-init
net's last kernel gradient is tiny too). Ours: the smallest of either ratio on the 34
healthy/fixed corpus programs is 7.4e-3 (own_zero_init_branches_adam), so no healthy
one comes near 1e-3. The culprit is where the signal dies: going
backward from the loss, the first layer whose gradient is already small, i.e. the
input-side layer of the largest drop in ``log10 g`` between adjacent layers. When
the shrink is uniform (every drop within 2x of the median drop, a deep tanh or
sigmoid stack) no layer kills the signal: the finding covers the whole stack
(``evidence["stack"]``, first and last layer) and names its input-most layer, the
one that starves first.

Near the threshold, with a flat loss (issue 12: "a shallow sigmoid net whose first/last
gradient ratio sits just above AUTOTRAINER's 1e-3, with a flat loss"): a ratio up to
``vanishing_ratio_flat`` (10x AUTOTRAINER's) counts too when the first layer's kernel
gradient is negligible (``<= vanishing_abs``) *and* the gradient falls at every layer
going backward *and* the loss is not decreasing: the mean of the latest
``stalled_window`` logged losses is less than ``stalled_min_improvement`` below the mean
of the first ``stalled_window`` (the test of ``stalled``; no loss, no such test). A
ratio that wanders around 1e-3 from batch to batch while nothing is learned is the same
vanishing as one that stays below it.
"""

from __future__ import annotations

from typing import List

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import (
    Condition, Rule, fmt, grad_layers, kernel_grad_norm, largest_step, median,
)
from gradlens.diagnose.rules.stalled import Levels

__all__ = ["Vanishing"]


class Vanishing(Rule):
    """Gradients of the early layers negligible relative to the late ones."""

    kind = "vanishing"
    phrase = "vanishing gradients"

    def reset(self) -> None:
        """Forget the loss levels."""
        self._loss = Levels()

    def check(self, record: StepRecord) -> List[Condition]:
        self._loss.add(record.step, record.loss)
        gl = grad_layers(record)
        if len(gl) < 2:
            return []
        (first, g_first), (last, g_last) = gl[0], gl[-1]
        # AUTOTRAINER's norms are the kernels' (utils/monitor.py gradient_norm: the weight of
        # each layer, biases skipped): a bias gradient is not attenuated by the weights below
        # it, so it hides the shrink
        k_first, k_last = kernel_grad_norm(record, first, g_first), kernel_grad_norm(record, last, g_last)
        if not (k_first > 0 and k_last > 0):
            k_first, k_last = g_first, g_last
        # the smaller of the kernels' ratio and the layers' (with biases): a tiny-init net's
        # last kernel gradient is tiny too (its input is), which hides the shrink the other way
        ratio = min(k_first / k_last, g_first / g_last)
        t_ratio, t_abs = self.t["vanishing_ratio"], self.t["vanishing_abs"]
        if ratio > max(t_ratio, self.t["vanishing_ratio_flat"]):
            return []  # (every record of a healthy net: one comparison)
        steady = all(gl[i][1] < gl[i + 1][1] for i in range(len(gl) - 1))
        flat = None
        if ratio > t_ratio:
            # near the threshold: negligible, falling at every layer, and nothing is learned
            drop = self._loss.improvement(max(1, int(self.t.get("stalled_window", 20))))
            if not (k_first <= t_abs and steady and drop < self.t["stalled_min_improvement"]):
                return []
            flat = drop
            t_ratio = self.t["vanishing_ratio_flat"]
            test = (f"with {fmt(k_first)} <= {fmt(t_abs)}, a fall at every layer going backward and a flat "
                    f"loss (down {fmt(100 * drop)}% over the run, under {fmt(100 * self.t['stalled_min_improvement'])}%)")
        elif k_first <= t_abs:
            test = f"and {fmt(k_first)} <= {fmt(t_abs)}"
        elif steady:
            # AUTOTRAINER's first release tested the ratio with the gradient's trend ("a clear
            # upward trend from the output back to input"), not an absolute level: a decline at
            # every layer is vanishing whatever the loss's scale
            test = "and it falls at every layer going backward"
        else:
            return []
        # drops[i] > 0: the gradient is smaller at layer i than at layer i+1.
        culprit, after, factor, drops = largest_step(gl, rise=False)
        typical = 10 ** median(drops)
        uniform = factor < 2 * typical and typical > 2
        if uniform:
            # the same shrink at every layer: no layer kills it, the stack does; the layers
            # that starve first are at the input side, so that is where to look
            culprit = first
            where = (f"it shrinks ~{fmt(typical)}x at every layer over the whole stack {first!r}..{last!r}, "
                     f"so the input side starves first")
        else:
            where = f"the signal dies at {culprit!r}, {fmt(factor)}x smaller than at {after!r}"
        advice = "use ReLU-family activations, normalisation, residual connections or a better init"
        message = (
            f"gradients vanish: {first!r} gets {fmt(ratio)}x the gradient norm of {last!r} "
            f"(threshold {fmt(t_ratio)}, {test}); {where}: {advice}"
        )
        return [
            Condition(
                key="",
                layer=culprit,
                value=ratio,
                threshold=t_ratio,
                severity="warning",
                message=message,
                evidence={
                    "first_layer": first,
                    "last_layer": last,
                    "first_grad_norm": g_first,
                    "last_grad_norm": g_last,
                    "first_kernel_grad_norm": k_first,
                    "last_kernel_grad_norm": k_last,
                    "steady_decline": steady,
                    "drop_from": after,
                    "drop_factor": factor,
                    "median_drop_factor": typical,
                    "stack": [first, last] if uniform else None,
                    "flat_loss_drop": flat,
                },
                advice=advice, summary=f"||g|| {fmt(g_first)} at the input side, {fmt(ratio)}x the output's",
            )
        ]

