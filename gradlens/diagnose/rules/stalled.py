"""``stalled``: the loss (or, without one, the output-gradient norm) not decreasing.

Rule (DeepDiagnosis' "loss not decreasing" and "unchanged weight", AUTOTRAINER's
slow convergence; windows and levels ours): with ``W = stalled_window`` logged steps,
the *start level* is the mean of the first ``W`` finite values of the series and the
*recent level* the mean of the latest ``W``; once there are ``2 W`` values, the series
is stalled when the recent level is less than ``stalled_min_improvement`` (relative)
below the start level: training has not moved the loss from where it started.
Means over ``W`` steps average the batch-to-batch noise out.

A loss that stalls this way is only ``info`` by itself: healthy but slow runs do it
too (ours: a healthy regression of the corpus improves by -0.1% between two
20-step windows). It is a ``warning`` when one of these says *why* it does not move:

* **unchanged weights** (DeepDiagnosis "unchanged weight"): a layer's last measured
  ``||dW||/||W||``, or the relative change of its weight norm over the last ``2 W``
  steps, is at most ``stalled_update_ratio``. The culprit is the input-most such
  layer when only some layers are stuck; when every layer is, the cause is global
  (the learning rate, or gradients that are exactly zero) and ``layer`` is ``None``.
  A learning-rate warmup from 0 reads as unchanged weights while its rate is tiny.
* **a constant loss** (DeepDiagnosis: the mean of the last losses equals their max):
  the spread ``(max - min) / |mean|`` of the latest ``W`` values is at most
  ``stalled_flat``.
* **the chance level**: with ``loss_classes = C`` (>= 2) given, the recent loss is
  within ``chance_tolerance`` (relative) of ``ln(C)``, the cross-entropy of a uniform
  guess over ``C`` classes.

The series is the loss when the record has one (``observe_loss``, an integration),
else ``signals["output_grad_norm"]`` (||dL/d(output)||, which shrinks as the output
approaches its targets). Non-positive levels (losses that can go negative) are not
judged.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, finite, fmt, median

__all__ = ["Stalled", "Levels", "chance_loss"]


def chance_loss(classes: float) -> Optional[float]:
    """``ln(classes)``, the cross-entropy of a uniform guess, or None when ``classes`` < 2.

    >>> round(chance_loss(10), 3), chance_loss(0)
    (2.303, None)
    """
    return math.log(classes) if classes >= 2 else None


class Levels:
    """The finite values of one series (loss or output-gradient norm) with their steps.

    Example:
        >>> lv = Levels()
        >>> [lv.add(s, v) for s, v in enumerate([4.0, 4.0, 2.0, float("nan"), 2.0])]
        [True, True, True, False, True]
        >>> lv.start(2), lv.recent(2), lv.span(2)
        (4.0, 2.0, (0, 1, 2, 4))
    """

    def __init__(self) -> None:
        self.values: List[float] = []
        self.steps: List[int] = []
        self._starts: Dict[int, float] = {}  # w -> start(w), once the first w values are in

    def __len__(self) -> int:
        return len(self.values)

    def add(self, step: int, value: Any) -> bool:
        """Append ``value`` at ``step`` when it is finite; return whether it was."""
        if not finite(value):
            return False
        self.values.append(float(value))
        self.steps.append(int(step))
        # keep the first window whole and a bounded tail (the rules look at most
        # 2 windows back; 4096 values cap the memory of a long run)
        if len(self.values) > 4096:
            del self.values[2048:3072], self.steps[2048:3072]
        return True

    def start(self, w: int) -> float:
        """Mean of the first ``w`` values (kept once they are all in: add() never drops them)."""
        mean = self._starts.get(w)
        if mean is None:
            mean = sum(self.values[:w]) / w
            if w <= len(self.values) and w <= 2048:
                self._starts[w] = mean
        return mean

    def recent(self, w: int, back: int = 0) -> float:
        """Mean of the ``w`` values ending ``back`` values before the latest."""
        end = len(self.values) - back
        return sum(self.values[end - w:end]) / w

    def improvement(self, w: int) -> float:
        """Relative drop of the latest ``w`` values' mean below the first ``w``'s,
        ``(start - recent) / |start|``; NaN before ``2 w`` values or with a zero start.

        >>> lv = Levels()
        >>> _ = [lv.add(s, v) for s, v in enumerate([4.0, 4.0, 3.0, 3.0])]
        >>> lv.improvement(2), lv.improvement(3)
        (0.25, nan)
        """
        if len(self.values) < 2 * w:
            return math.nan
        start = self.start(w)
        return (start - self.recent(w)) / abs(start) if start != 0 else math.nan

    def last(self, w: int) -> List[float]:
        """The latest ``w`` values."""
        return self.values[-w:]

    def span(self, w: int) -> Tuple[int, int, int, int]:
        """Steps ``(first window's first, its last, latest window's first, its last)``."""
        return self.steps[0], self.steps[w - 1], self.steps[-w], self.steps[-1]


class Stalled(Rule):
    """Training does not move the loss from its starting level."""

    kind = "stalled"

    def reset(self) -> None:
        self._loss = Levels()
        self._grad = Levels()
        self._ratio: Dict[str, float] = {}  # last measured ||dW||/||W|| per layer
        self._norms: Dict[str, Deque[float]] = {}  # weight norm per layer, the last 2 windows

    def observed(self, record: StepRecord) -> bool:
        return record.loss is not None or finite(record.signals.get("output_grad_norm"))

    def _remember_weights(self, record: StepRecord) -> None:
        # every record, every layer: plain floats are tested inline (a call per value cost more
        # than the rest of the rule on a 100-layer model)
        ratio = self._ratio
        isfinite = math.isfinite
        for name, r in record.stats.get("update_ratio", {}).items():
            if type(r) is float:
                if isfinite(r):
                    ratio[name] = r
            elif finite(r):
                ratio[name] = float(r)
        keep = 2 * max(2, int(self.t["stalled_window"]))
        norms = self._norms
        for name, w in record.stats.get("weight_norm", {}).items():
            if name in ratio:
                continue  # _unchanged reads a layer's norms only while it has no measured ratio
            if finite(w):
                q = norms.get(name)
                if q is None:  # (setdefault would build a deque per layer per record)
                    q = norms[name] = deque(maxlen=keep)
                q.append(float(w))

    def _unchanged(self, record: StepRecord, w: int) -> Dict[str, float]:
        """Layers whose weights do not move: name -> ||dW||/||W|| (or the relative
        change of ||W|| over the last ``2 w`` logged steps when no ratio was measured)."""
        t_ur = self.t["stalled_update_ratio"]
        out: Dict[str, float] = {}
        for name in record.layers:
            r = self._ratio.get(name)
            if r is None:
                norms = self._norms.get(name)
                if norms is None or len(norms) < 2 * w or norms[0] <= 0:
                    continue
                r = abs(norms[-1] - norms[0]) / norms[0]
            if r <= t_ur:
                out[name] = r
        return out

    def check(self, record: StepRecord) -> List[Condition]:
        self._remember_weights(record)
        if record.loss is not None:
            series, what = self._loss, "loss"
            added = series.add(record.step, record.loss)
        else:
            series, what = self._grad, "output-gradient norm"
            added = series.add(record.step, record.signals.get("output_grad_norm"))
        w = max(2, int(self.t["stalled_window"]))
        if not added or len(series) < 2 * w:
            return []
        start, recent = series.start(w), series.recent(w)
        if start <= 0 or recent <= 0:
            return []
        t_imp = self.t["stalled_min_improvement"]
        improvement = (start - recent) / start
        if improvement >= t_imp:
            return []
        s0, s1, r0, r1 = series.span(w)
        evidence: Dict[str, Any] = {
            "series": what, "start": start, "recent": recent, "improvement": improvement,
            "start_steps": [s0, s1], "recent_steps": [r0, r1],
        }
        change = f"down {fmt(100 * improvement)}%" if improvement > 0 else f"up {fmt(-100 * improvement)}%"
        head = (f"the {what} is not decreasing: {fmt(start)} -> {fmt(recent)} (mean of steps {s0}-{s1} "
                f"vs {r0}-{r1}: {change}, under the {fmt(100 * t_imp)}% drop that counts as learning)")
        why: List[str] = []
        layer: Optional[str] = None
        unchanged = self._unchanged(record, w)
        weighted = [n for n in record.layers if n in self._ratio or n in self._norms]
        if unchanged:
            evidence["unchanged_layers"] = {n: unchanged[n] for n in list(unchanged)[:20]}
            t_ur = self.t["stalled_update_ratio"]
            if len(unchanged) < len(weighted):
                layer = next(n for n in record.layers if n in unchanged)
                why.append(f"the weights of {layer!r} do not change (||dW||/||W|| {fmt(unchanged[layer])}, "
                           f"threshold {fmt(t_ur)}; {len(unchanged)} of {len(weighted)} layers): its gradient "
                           f"vanishes or is zero (see vanishing/dead_units), or it is left out of the "
                           f"optimizer")
            else:
                med = median(list(unchanged.values()))
                grads = record.stats.get("grad_norm", {})
                cause = ("their gradients are exactly zero (see dead_units)"
                         if all(grads.get(n) == 0 for n in unchanged) else "the learning rate is far too low")
                why.append(f"no layer's weights change (median ||dW||/||W|| {fmt(med)}, threshold "
                           f"{fmt(t_ur)}; healthy ~1e-3): {cause}")
        window = series.last(w)
        spread = (max(window) - min(window)) / recent
        t_flat = self.t["stalled_flat"]
        if spread <= t_flat:
            evidence["spread"] = spread
            why.append(f"it is constant (spread {fmt(spread, digits=1)} of its mean over the last {w} "
                       f"logged steps, threshold {fmt(t_flat)})")
        chance = chance_loss(self.t["loss_classes"]) if what == "loss" else None
        if chance is not None and abs(recent - chance) <= self.t["chance_tolerance"] * chance:
            evidence["chance_loss"] = chance
            why.append(f"ln({int(self.t['loss_classes'])})={fmt(chance)}: the model guesses at chance, "
                       f"not learning")
        severity = "warning" if why else "info"
        tail = "; ".join(why) if why else (
            "check the learning rate, the data/labels and whether the output layer can reach the targets")
        return [
            Condition(
                key="",
                layer=layer,
                value=improvement,
                threshold=t_imp,
                severity=severity,
                message=f"{head}: {tail}",
                evidence=evidence,
            )
        ]
