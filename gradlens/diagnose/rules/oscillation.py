"""``oscillation``: the loss going up and down with a large amplitude, without a downward trend.

Rule (AUTOTRAINER, ICSE 2021, ``utils/monitor.py`` ``ol_judge``: an "unstable"
training has adjacent local maxima and minima of its curve at least ``zeta`` apart
on at least a fraction ``eta`` of its points; AUTOTRAINER reads accuracy, we read
the loss, so the amplitude is relative to the loss level): over the latest
``oscillation_window`` finite logged losses, count the swings, pairs of adjacent
local extrema whose difference is at least ``oscillation_amplitude`` times the
window's mean loss. The loss oscillates when

* swings / window >= ``oscillation_rate`` (AUTOTRAINER's ``eta``), and
* there is no downward trend: the mean of the window's second half is not below
  ``1 - oscillation_trend`` times the mean of its first half (a loss that falls
  while it swings is still learning), and
* the loss has not converged: the window's mean is at least ``oscillation_level``
  times the initial level, the higher of the first logged loss and the mean of the
  first ``stalled_window`` losses. Near convergence the mean is tiny and the
  batch-to-batch noise swings by many times it (ours: healthy runs at batch sizes
  1 to 16 that reached 1-10% of their initial loss did so on most windows); the
  noise of a converged model is not an oscillation.
* the swings reach above where training started: the window's largest loss is at
  least ``oscillation_peak`` times the initial level. An unstable optimiser overshoots
  into losses worse than at initialisation; the spread between batches of a run that
  learns does not (batch 1 on a two-class dataset seen in alternation: one class's
  loss falls while the other's is still at its initial level, peaks 0.93-1.23x it).

Windows holding a negative loss, or whose mean is not positive, are not judged.
The cause is global (learning rate, batch size), so ``layer`` is ``None``.
"""

from __future__ import annotations

from typing import List

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, fmt
from gradlens.diagnose.rules.stalled import Levels

__all__ = ["Oscillation", "swings"]


def swings(values: List[float], amplitude: float) -> int:
    """Adjacent local extrema of ``values`` at least ``amplitude`` apart.

    An interior point is a local maximum (minimum) when it is >= (<=) both
    neighbours and differs from one of them; plateaus are not extrema.

    >>> swings([0, 5, 0, 5, 0, 5], 4.0), swings([0, 1, 0, 1], 4.0), swings([3, 2, 1, 0], 0.5)
    (3, 0, 0)
    """
    ext = []
    for i in range(1, len(values) - 1):
        a, b, c = values[i - 1], values[i], values[i + 1]
        if a == b == c:
            continue
        if (b >= a and b >= c) or (b <= a and b <= c):
            ext.append(b)
    return sum(1 for x, y in zip(ext, ext[1:]) if abs(x - y) >= amplitude)


class Oscillation(Rule):
    """The loss swings without going down."""

    kind = "oscillation"

    def observed(self, record: StepRecord) -> bool:
        return record.loss is not None

    def reset(self) -> None:
        self._loss = Levels()

    def check(self, record: StepRecord) -> List[Condition]:
        w = max(4, int(self.t["oscillation_window"]))
        sw = max(1, int(self.t["stalled_window"]))
        if not self._loss.add(record.step, record.loss) or len(self._loss) < max(w, sw):
            return []
        window = self._loss.last(w)
        if min(window) < 0:
            return []
        mean = sum(window) / w
        if mean <= 0:
            return []
        t_amp, t_rate, t_trend = (self.t["oscillation_amplitude"], self.t["oscillation_rate"],
                                  self.t["oscillation_trend"])
        # the cheap tests first (every record): the swing count is the one loop over the window
        h = w // 2
        first, second = sum(window[:h]) / h, sum(window[h:]) / (w - h)
        if second < (1 - t_trend) * first:
            return []  # falling while it swings: still learning
        initial = max(self._loss.start(sw), self._loss.values[0])
        t_level = self.t["oscillation_level"]
        if mean < t_level * initial:
            return []  # converged: its noise is large only next to a tiny mean
        peak = max(window)
        t_peak = self.t["oscillation_peak"]
        if peak < t_peak * initial:
            return []  # never worse than at the start: the spread between batches, not instability
        n = swings(window, t_amp * mean)
        rate = n / w
        if rate < t_rate:
            return []
        s0, s1 = self._loss.steps[-w], self._loss.steps[-1]
        return [
            Condition(
                key="",
                layer=None,
                value=rate,
                threshold=t_rate,
                severity="warning",
                message=(
                    f"the loss oscillates: {n} swings of at least {fmt(t_amp)}x its mean {fmt(mean)} over "
                    f"steps {s0}-{s1} (rate {fmt(rate)}, threshold {fmt(t_rate)}), with no downward trend "
                    f"({fmt(first)} -> {fmt(second)}), still at {fmt(100 * mean / initial)}% of its initial "
                    f"level {fmt(initial)} and peaking at {fmt(peak / initial)}x it (threshold {fmt(t_peak)}x): "
                    f"lower the learning rate or raise the batch size"
                ),
                evidence={"swings": n, "window": w, "mean": mean, "first_half": first,
                          "second_half": second, "initial": initial, "steps": [s0, s1], "min": min(window),
                          "max": peak, "peak_over_initial": peak / initial},
            )
        ]
