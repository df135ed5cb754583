"""``saturation``: tanh/sigmoid-like outputs pinned at their limits while training does
not move.

Rule (SageMaker Debugger TanhSaturation/SigmoidSaturation for the fraction; the
"it hurts" test ours): a bounded layer has at least ``saturation_fraction`` of its
outputs near its limits (``act_sat_frac``, from the default saturation probe,
``watch(saturation=...)``, or from ``activations`` tracing; a ReLU6's exact zeros,
``act_zero_frac``, are the dead region, not saturation, and are subtracted), *and*
the loss has not fallen: with ``k = saturation_min_losses // 2``, the mean of the
latest ``k`` values of the series is above ``1 - saturation_max_drop`` times the mean
of its first ``k`` (a rising loss qualifies too). Saturation alone is no fault:
a net with saturated units can still learn (a sigmoid layer under N(0, 1) kernels
and a large learning rate; a sigmoid output that starts pinned on the wrong side and
is fixed by Adam within a few steps), and then its loss falls by orders of
magnitude, far past ``saturation_max_drop``; where saturation is the fault, the
derivative at the pinned units is ~0 and the loss stays where it started.

The series is the loss when records carry one (``observe_loss``, an integration),
else ``signals["output_grad_norm"]`` (which shrinks as the output approaches its
targets); a layer is judged once the series has ``saturation_min_losses`` values
(before that, its records are not observed: the pending count neither grows nor
restarts). With neither series (no loss and ``output_stats=False``) the plain
fraction is reported, as ``info``; so is the output layer's without a loss (the
gradient of a loss on probabilities, BCE on a sigmoid output, does not shrink as the
output becomes confident and right: measured, ``dd_circle_normal`` of the corpus). The condition must hold on
``saturation_samples`` sampled steps in a row (the probe samples every 10th logged
step: a finding at logged step 20).

The output layer of a model without a probed bounded module (a ``nn.Softmax``
output, or ``saturation=False``) is judged on ``signals["output_sat_frac"]``
(measured on the model output, see :mod:`gradlens.monitor.sources.output`), unless
the output is constant (``output_min == output_max``: a softmax over one unit, a
dead output, the ``dead_units`` rule's business).

Named at the bounded layer (the culprit to look at; the evidence and the message
name the layer feeding it, whose weights or input are too large).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, finite, fmt
from gradlens.diagnose.rules.stalled import Levels

__all__ = ["Saturation"]


class Saturation(Rule):
    """Most outputs of a tanh/sigmoid-like layer at their limits, and the loss not falling."""

    kind = "saturation"
    window = "saturation_samples"

    def reset(self) -> None:
        self._loss = Levels()
        self._grad = Levels()
        self._probed = False  # some record carried act_sat_frac: only such records are judged
        self._last: Dict[str, Optional[Condition]] = {}  # key -> its condition at its last measurement
        self._seen: Optional[Tuple[StepRecord, Dict[str, Tuple[str, float]]]] = None  # observed()'s reading

    def observed(self, record: StepRecord) -> bool:
        # every record feeds the series (the engine asks each rule about each record);
        # check() runs only on sampled steps, once the series can be judged
        if record.loss is not None:
            self._loss.add(record.step, record.loss)
        self._grad.add(record.step, record.signals.get("output_grad_norm"))
        measured = self._saturations(record)
        self._seen = (record, measured)  # (check() reads it again from here)
        if not measured:
            return False
        series = self._series()
        return series is None or len(series[1]) >= max(1, int(self.t["saturation_min_losses"]))

    def _series(self) -> Optional[Tuple[str, Levels]]:
        if len(self._loss):
            return "loss", self._loss
        if len(self._grad):
            return "output-gradient norm", self._grad
        return None

    def _saturations(self, record: StepRecord) -> Dict[str, Tuple[str, float]]:
        """``key -> (layer, saturated fraction)`` of ``record``: the hidden bounded layers
        under their names (ReLU6 zeros subtracted), the output layer under ``"(output)"``
        (its traced ``act_sat_frac``, else the output signals). Once a record carried
        ``act_sat_frac`` (the probe's steps, a subset of the output signals' at the default
        cadences), only such records are read."""
        sat = record.stats.get("act_sat_frac", {})
        out: Dict[str, Tuple[str, float]] = {}
        if sat:
            self._probed = True
        elif self._probed or not record.layers:
            return out
        last = record.layers[-1] if record.layers else None
        zeros = record.stats.get("act_zero_frac", {})
        for name, frac in sat.items():
            if finite(frac):
                zero = zeros.get(name)
                frac = max(0.0, frac - zero) if finite(zero) else float(frac)
                out[_OUTPUT if name == last else name] = (name, frac)
        if _OUTPUT not in out and last is not None:
            s = record.signals
            frac, lo, hi = s.get("output_sat_frac"), s.get("output_min"), s.get("output_max")
            if finite(frac) and not (finite(lo) and finite(hi) and lo == hi):
                out[_OUTPUT] = (last, float(frac))
        return out

    def check(self, record: StepRecord) -> List[Condition]:
        t_sat = self.t["saturation_fraction"]
        seen, self._seen = self._seen, None
        measured = seen[1] if seen is not None and seen[0] is record else self._saturations(record)
        order = {n: i for i, n in enumerate(record.layers)}
        high = sorted(((k, n, f) for k, (n, f) in measured.items() if f >= t_sat),
                      key=lambda knf: order.get(knf[1], len(order)))
        series = self._series()
        judged: Dict[str, object] = {}
        severity, why = "info", "no loss or output gradient was recorded to tell whether it hurts"
        if series is not None and high:
            what, levels = series
            k = max(1, int(self.t["saturation_min_losses"]) // 2)
            start, recent = levels.start(k), levels.recent(k)
            if start - recent > self.t["saturation_max_drop"] * abs(start):
                high = []  # it learns anyway: the saturated units do not block it
            severity = "warning"
            judged = {"series": what, "start": start, "recent": recent}
            why = (f"the {what} is not falling ({fmt(start)} over the first {k} values, {fmt(recent)} over the "
                   f"latest {k}, steps {levels.steps[0]}-{levels.steps[-1]})")
        out = []
        for key, name, frac in high:
            sev, because, ev = severity, why, judged
            if key == _OUTPUT and judged.get("series") != "loss" and severity == "warning":
                # the gradient of a loss on probabilities (BCE, categorical CE on a sigmoid or
                # softmax output) does not shrink as the output gets confident and right
                sev, because, ev = "info", "no loss was given to tell whether it hurts (observe_loss)", {}
            feeder = _feeding(record, name)
            feed = f"the init of {feeder!r} (the layer feeding it)" if feeder else "the init of the layer feeding it"
            out.append(
                Condition(
                    key=key,
                    layer=name,
                    value=float(frac),
                    threshold=t_sat,
                    severity=sev,
                    message=(
                        f"{fmt(100 * frac)}% of the outputs of {name!r} are saturated (threshold "
                        f"{fmt(100 * t_sat)}%) and {because}: its local derivative is ~0 there, so almost no "
                        f"gradient passes; its inputs are too large: scale down {feed}, normalise the "
                        f"input, or lower the learning rate"
                    ),
                    evidence={"saturated_fraction": float(frac), "feeding_layer": feeder, **ev},
                    advice=f"scale down {feed}, normalise the input, or lower the learning rate",
                    summary=f"{fmt(100 * frac)}% saturated",
                )
            )
        # a layer measured now holds or not; one not measured on this record (the output
        # when the signals run on another cadence) keeps its last state instead of
        # restarting its persistence count
        now = {c.key: c for c in out}
        for key in measured:
            self._last[key] = now.get(key)
        carried = [c for key, c in self._last.items() if key not in measured and c is not None]
        return out + carried


#: the condition key of the output layer (its name moves between the traced module and
#: the last layer with parameters, depending on what measured it)
_OUTPUT = "(output)"


def _feeding(record: StepRecord, name: str) -> Optional[str]:
    """The nearest layer before ``name`` in ``record.layers`` with parameters (its input)."""
    grads = record.stats.get("grad_norm", {})
    layers = record.layers
    if name in grads:  # the output signals of a layer with parameters: its own output goes in
        return name
    if name not in layers:
        return None
    for prev in reversed(layers[: layers.index(name)]):
        if prev in grads:
            return prev
    return None
