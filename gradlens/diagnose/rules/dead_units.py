"""``dead_units``: units inactive on every input, or gradients exactly zero.

Rules:

* ``act_dead_frac >= dead_fraction`` (AUTOTRAINER, ICSE 2021: 0.7; SageMaker Debugger
  DeadRelu: > 50%): the fraction of the layer's units (features/channels) that are
  zero on every sample of the batch. Named at the layer whose units are dead; a
  layer right after an already-dead one (pooling, dropout) is not named again.
* a layer whose gradient norm is exactly zero on ``zero_grad_steps`` logged steps in
  a row (its parameters receive no signal at all). Adjacent such layers are one
  finding over the run, with its first and last layer in
  ``evidence["zero_grad_layers"]``, named where the signal stops: the layer right above
  the run when its own weights still get a gradient (a zeroed norm gain or weight passes
  nothing back), else the run's output-most member (the layers below it get nothing
  because nothing passes it). Where the run grew over time (a ReLU layer died, then
  another one above it), the stop is the one seen when its oldest members' zeros began:
  the first place the signal stopped, and what the later stops followed from.
* **the trunk cut off**: every layer below one layer gets an exactly zero gradient
  while that layer's own weights get one (a zeroed norm gain: it passes nothing back)
  and it is not the model's last layer. Reported at once (``cut_off_steps``, 1 logged
  step): AdamW regrows a zeroed gain within a step, so the zeros last one step, and
  for that step nothing below it learns. (A zero-initialised last layer, a common init
  whose first step looks the same, is not named.)
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, fmt, finite, kernel_grad_norm

__all__ = ["DeadUnits"]



class DeadUnits(Rule):
    """ReLU-family layers whose units never fire, or parameters that never get a gradient."""

    kind = "dead_units"
    phrase = "dead units"

    def reset(self) -> None:
        self._since: Dict[str, int] = {}  # layer -> the step its exactly-zero gradient began
        self._stop: Dict[str, Tuple[str, str]] = {}  # layer -> (named, stop) when that began

    def check(self, record: StepRecord) -> List[Condition]:
        out: List[Condition] = []
        t_dead = self.t["dead_fraction"]
        dead = record.stats.get("act_dead_frac", {})
        previous_dead = False
        feeder = None  # the last layer with parameters before the dead one
        grads = record.stats.get("grad_norm", {})
        for name in record.layers:
            frac = dead.get(name)
            is_dead = finite(frac) and frac >= t_dead
            if is_dead and not previous_dead:
                fed = f" (fed by {feeder!r})" if feeder else ""
                out.append(
                    Condition(
                        key=name,
                        layer=name,
                        value=float(frac),
                        threshold=t_dead,
                        severity="warning",
                        message=(
                            f"{fmt(100 * frac)}% of the units of {name!r}{fed} are zero on every "
                            f"input (threshold {fmt(100 * t_dead)}%): dying ReLU; lower the "
                            f"learning rate, check the bias/init of the layer feeding it, or "
                            f"use LeakyReLU/GELU"
                        ),
                        evidence={"dead_fraction": float(frac), "fed_by": feeder},
                    )
                )
            previous_dead = is_dead or (previous_dead and not finite(frac))
            if name in grads:
                feeder = name
        # Parameters that never get a signal: exact zeros, several steps in a row
        # (the engine's window for this key is zero_grad_steps, see window_for). A run of
        # adjacent zero-gradient layers is one finding over the run (its range in
        # evidence), named where the signal stops (below). (Naming the input-most member
        # instead named the wrong layer on 3 of the 4 zero-gradient corpus programs of the
        # first corpus: a softmax over one unit, a ReLU killed by its bias.)
        with_grad = [n for n in record.layers if finite(grads.get(n))]
        runs: List[List[str]] = []
        for i, name in enumerate(with_grad):
            if grads[name] != 0.0:
                continue
            if runs and i > 0 and with_grad[i - 1] == runs[-1][-1]:
                runs[-1].append(name)
            else:
                runs.append([name])
        zero = {name for run in runs for name in run}
        for name in [n for n in self._since if n not in zero]:  # a gradient again: its zeros ended
            del self._since[name]
            self._stop.pop(name, None)
        for run in runs:
            head, tail = run[0], run[-1]
            above = with_grad[with_grad.index(tail) + 1] if tail != with_grad[-1] else None
            span = f"{head!r}" if head == tail else f"the {len(run)} layers {head!r}..{tail!r}"
            # where the signal stops: in the layer above the run when its own weights still get
            # a gradient (a zeroed norm gain, a zeroed weight: nothing passes back through it),
            # else at the run's top (a dead ReLU above it: the layer above learns its bias only)
            named = tail
            passes_none = (above is not None and kernel_grad_norm(record, above, 0.0) > 0
                           and bool(record.param_stats.get("grad_norm")))
            if passes_none:
                named = above
                stop = f"in {above!r}: its weights get a gradient but pass none back (a zeroed gain or weight)"
            elif above is not None:
                stop = f"above {tail!r} (at {above!r} or what feeds it)"
            else:
                stop = f"above {tail!r}, at the output or the loss"
            for name in run:
                if name not in self._since:
                    self._since[name], self._stop[name] = record.step, (named, stop)
            # the run grew (a second ReLU layer died above the first): the oldest stop holds,
            # from the output-most of the members whose zeros began first (stable key too)
            first = min(self._since[n] for n in run)
            oldest = [n for n in run if self._since[n] == first][-1]
            named, stop = self._stop[oldest]
            # the whole trunk below a layer that is not the last: cut off there (reported at once)
            cut = passes_none and head == with_grad[0] and above != with_grad[-1]
            if cut:
                seen = (f"the gradient of every layer below {above!r} ({span}) is exactly zero (||g|| = 0) "
                        f"while the weights of {above!r} get one: the whole trunk is cut off there, nothing "
                        f"below it learns (a zeroed norm gain or weight passes no gradient back)")
                advice = f"check the initialisation of {above!r} (a norm's weight is normally 1, not 0)"
            else:
                seen = (f"the gradient of {span} is exactly zero (||g|| = 0) step after step: nothing "
                        f"flows back to it; the signal stops {stop}")
                advice = "dead units below a ReLU, a detached branch, or an output that the loss ignores"
            out.append(
                Condition(
                    key=("cut:" if cut else "zero_grad:") + oldest,
                    layer=above if cut else named,
                    value=0.0,
                    threshold=0.0,
                    severity="warning",
                    message=f"{seen} ({advice})" if not cut else f"{seen}: {advice}",
                    evidence={"grad_norm": 0.0, "zero_grad_layers": [head, tail], "count": len(run),
                              "stops_at": above if cut else named},
                    advice=advice if cut else "",
                )
            )
        return out

    def window_for(self, key: str) -> str:
        if key.startswith("cut:"):
            return "cut_off_steps"
        return "zero_grad_steps" if key.startswith("zero_grad:") else self.window
