"""``nonfinite``: NaN/Inf in the loss, gradients, parameters or activations.

Reported at once (a NaN never heals). Named where it is *born*:

1. ``record.nonfinite_site`` when the monitor replayed the broken step
   (``monitor/replay.py``, ``evidence["located_by"]`` ``"replayed step K"``): the op,
   its module, the source line and the op's input range, or the data, or the loss.
   The first replayed site is remembered: the later steps of the same NaN name it too;
2. ``record.nonfinite_origin`` when the monitor traced activations: the first module
   (forward order) whose inputs were finite and whose output was not, unless that
   module's weights were non-finite already (then it is a fallback);
3. otherwise a fallback, said so in ``evidence["located_by"]`` and in the message
   ("first seen at", never "born at"): the first layer (input side) with non-finite
   activations, else with non-finite weights, else with non-finite gradients. When
   only some layers have non-finite gradients the NaN was born in the backward pass,
   at the output-most of them, and that one is named instead.

An overflow (an Inf made from finite inputs by an op that is not a domain error: ``exp`` of
120) is named where its values grew: the module the replay saw multiply them most, above
unit scale, before the overflow (``site["grew_at"]``), when that is an order of magnitude or
more; the message names both.

A NaN born in the loss (the replay's ``phase`` ``"loss"``; or, without a replay, a
non-finite loss or dL/d(output) while every weight, gradient and the model output are
finite: a ReLU output of zeros into ``log`` or ``p / p.sum()``, whose masked backward
leaves the parameter gradients finite) is named at the output layer (the output-most
layer of the record), the layer whose values the loss could not take: the message says
"born in the loss" when the evidence shows it (the replay, or the output signals: a
finite output with a non-finite dL/d(output)), "first seen in the loss" otherwise, and
quotes the output's range when it was measured.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

from gradlens._record import StepRecord
from gradlens.diagnose.rules.base import Condition, Rule, finite, fmt, is_real

__all__ = ["NonFinite"]


def _positive(x) -> bool:
    return is_real(x) and x > 0


def _inf(x) -> bool:
    return is_real(x) and math.isinf(x)


#: Ops whose domain excludes some finite inputs (log of a negative number, ...).
_DOMAIN_OPS = ("log", "sqrt", "rsqrt", "div", "reciprocal", "pow", "acos", "asin", "atanh", "acosh", "lgamma",
               "digamma", "polygamma", "erfinv", "remainder", "fmod")

#: An overflow (an Inf from finite inputs, not a domain error) is named where its values grew
#: when one module multiplied them (above unit scale) by at least this much before it: an
#: order of magnitude in one module (ours: DeepDiagnosis' exponential LeNet, exp(6.2) = 348 at
#: '8' before exp overflows at '10'; a standard-init layer keeps |x| near its input's scale, at
#: most 24x on the healthy corpus programs at step 0, so48385830_fixed's N(0, 1) Dense(30))
_GROWTH = 10.0

_ADVICE_DEFAULT = ("check that layer's inputs for log/sqrt/division of non-positive values, lower the "
                   "learning rate or clip gradients")


def _located(site) -> bool:
    return isinstance(site, dict) and str(site.get("located_by", "")).startswith("replayed")


_ADVICE_LOSS = ("check the loss for log/division of non-positive values (e.g. log of a probability of 0, or "
                "p / p.sum() of an output row of zeros): give the loss logits (log_softmax, cross_entropy, "
                "BCEWithLogitsLoss) or a softmax/sigmoid output instead of a ReLU/linear one, or clamp by an "
                "epsilon; check the targets for NaN")


_ADVICE_LOSS_OVERFLOW = ("the loss overflowed on a finite output (e.g. MSE of outputs or targets past 1e19) or "
                         "took the log of 0: lower the learning rate, normalise the inputs and targets, clip "
                         "gradients, or give the loss logits")


def _output_layer(record: StepRecord) -> str:
    """The output-most layer of ``record`` with a weight or gradient statistic (the last
    layer with parameters), else its last layer."""
    grads, weights = record.stats.get("grad_norm", {}), record.stats.get("weight_norm", {})
    return next((n for n in reversed(record.layers) if n in grads or n in weights), record.layers[-1])


def _output_range(record: StepRecord) -> Tuple[str, Optional[List[float]]]:
    """(``", the model output in [0, 7.13], values <= 0 that ..."``, ``[min, max]``) from the
    record's output signals; ``("", None)`` when they were not measured."""
    lo, hi = record.signals.get("output_min"), record.signals.get("output_max")
    if not (finite(lo) and finite(hi)):
        return "", None
    text = f", the model output in [{fmt(float(lo))}, {fmt(float(hi))}]"
    if lo <= 0:
        text += " (reaching 0: its log, or p / p.sum() of a row of zeros, is not finite)"
    return text, [float(lo), float(hi)]


def _grew(site) -> Optional[dict]:
    """The module where an overflow's values grew (``site["grew_at"]``, from the replay), when the
    site is a forward overflow (not a domain error) and that module grew them ``_GROWTH`` times or
    more above unit scale, elsewhere than the op's own module; else None."""
    grew = site.get("grew_at")
    if site.get("phase") != "forward" or not isinstance(grew, dict) or grew.get("module") == site.get("module"):
        return None
    if str(site.get("op") or "").split(".")[-1].rstrip("_") in _DOMAIN_OPS:
        return None
    lo, hi = grew.get("from"), grew.get("to")
    if not (finite(lo) and finite(hi)) or max(hi, 1.0) / max(lo, 1.0) < _GROWTH:
        return None
    return grew


def _describe(site) -> Tuple[str, str]:
    """(where it was born, what to do) of a replayed site."""
    how = site.get("located_by", "replayed")
    phase = site.get("phase")
    if phase == "input":
        n = site.get("nonfinite_elements")
        held = f"{n} non-finite elements" if n else "non-finite values"
        return (f"came with the data: the step's input {site.get('input', '')} holds {held}, {how}",
                "check the data pipeline for NaN/Inf (torch.isfinite(batch).all()) and drop or clean those samples")
    if phase == "loss":
        return (f"born in the loss: dL/d(output) is non-finite while the model output is finite, {how}",
                _ADVICE_LOSS)
    op = site.get("op")
    module = site.get("module")
    parts = [f"born at {module!r}" if module is not None else "born"]
    if phase == "backward":
        node = site.get("grad_fn")
        parts.append(f"in the backward of {op}" + (f" ({node})" if node else "") if op else f"in backward node {node}")
    elif op:
        parts.append(f"in {op}")
    text = " ".join(parts)
    if site.get("source"):
        text += f" ({site['source']})"
    rng = site.get("input_range")
    if rng is not None and len(rng) == 2:
        which = "forward inputs" if phase == "backward" else "inputs"
        text += f", {which} in [{fmt(float(rng[0]))}, {fmt(float(rng[1]))}]"
    text += f", {how}"
    name = str(op or "").split(".")[-1].rstrip("_")
    grew = _grew(site)
    if grew is not None:
        text += f"; the values grew most at {grew['module']!r} (max |x| {fmt(grew['from'])} -> {fmt(grew['to'])})"
        return text, (f"values overflowed: they grow by orders of magnitude at {grew['module']!r} (an unbounded "
                      "activation such as exp, oversized weights or unscaled inputs): bound that activation, "
                      "scale its weights or inputs down, lower the learning rate or clip gradients")
    if phase == "backward":
        advice = ("its derivative is infinite at those inputs (sqrt or a norm at 0, pow with a fractional "
                  "exponent at 0, a custom backward): add an epsilon inside it or mask those values first")
    elif name in _DOMAIN_OPS:
        advice = (f"that op got inputs outside its domain ({name} of non-positive values, division by 0): "
                  "clamp them or add an epsilon")
    else:
        advice = "values overflowed there: lower the learning rate, clip gradients or normalize that layer's inputs"
    return text, advice


class NonFinite(Rule):
    """NaN/Inf anywhere, named at the module where it is born."""

    kind = "nonfinite"
    window = "nonfinite_persist_steps"
    runs_when_poisoned = True

    def reset(self) -> None:
        """Forget the remembered birth site."""
        super().reset()
        self._born = None  # the first replayed site (later steps of the same NaN name it)

    def check(self, record: StepRecord) -> List[Condition]:
        s = record.stats
        acts, weights = s.get("act_nonfinite", {}), s.get("weight_norm", {})
        counts, grads = s.get("nonfinite", {}), s.get("grad_norm", {})
        act_bad = [n for n in record.layers if _positive(acts.get(n))]
        # NaN in a norm may mean "not measured" (StepRecord contract): only an infinite
        # norm or a positive non-finite count is evidence.
        w_bad = [n for n in record.layers if _inf(weights.get(n))]
        g_bad = [n for n in record.layers if _positive(counts.get(n)) or _inf(grads.get(n))]
        loss_bad = record.loss is not None and not math.isfinite(record.loss)
        site = record.nonfinite_site if isinstance(record.nonfinite_site, dict) else None
        out_bad = record.signals.get("output_nonfinite") if record.signals else None
        out_grad_bad = record.signals.get("output_grad_nonfinite") if record.signals else None
        signal_bad = _positive(out_bad) or _positive(out_grad_bad)
        if not (act_bad or w_bad or g_bad or loss_bad or signal_bad or record.nonfinite_origin or site):
            return []
        if self._born is None and _located(site):
            self._born = dict(site)
        advice = _ADVICE_DEFAULT
        out_range = None
        if self._born is not None:
            layer, how = self._born.get("module"), self._born["located_by"]
            named, advice = _describe(self._born)
            grew = _grew(self._born)
            if grew is not None:  # an overflow: where its values grew is where to look
                layer = grew["module"]
            if self._born.get("phase") == "loss" and record.layers:
                # the loss has no module: the output layer fed it the values it could not take
                layer = _output_layer(record)
                rng_text, out_range = _output_range(record)
                named += f"; it takes the output of {layer!r}{rng_text}"
        elif (not (act_bad or w_bad or g_bad or record.nonfinite_origin) and record.layers
              and (loss_bad or _positive(out_grad_bad)) and not _positive(out_bad)
              and not (site is not None and site.get("phase") in ("input", "forward", "backward"))):
            # every weight and gradient is finite: the NaN did not flow back through the model
            # (a ReLU output's masked backward stops it), so it is the loss's, on the output
            # layer's values. With the output signals measured, finite output and non-finite
            # dL/d(output) are the evidence the replay's "loss" phase reads; else a fallback.
            layer = _output_layer(record)
            shown = out_bad == 0 and _positive(out_grad_bad)
            how = ("output signals: the model output is finite, dL/d(output) is not" if shown
                   else "fallback: only the loss is non-finite (every weight and gradient finite)")
            if site is not None and site.get("located_by") and not shown:
                how = f"{site['located_by']}; {how}"
            rng_text, out_range = _output_range(record)
            named = (f"{'born' if shown else 'first seen'} in the loss, after the output layer {layer!r}"
                     f"{rng_text} ({how})")
            overflow = record.loss is not None and math.isinf(record.loss)
            advice = _ADVICE_LOSS_OVERFLOW if overflow else _ADVICE_LOSS
        else:
            layer, how = self._locate(record, act_bad, w_bad, g_bad)
            if site is not None and site.get("located_by"):
                how = f"{site['located_by']}; {how}" if how != "origin" else how
            if how == "origin":
                named = f"born at {layer!r}"
            elif layer is not None:
                named = f"first seen at {layer!r} ({how})"
            else:
                named = f"origin unknown ({how})"
        where = [w for w, bad in (("loss", loss_bad), ("the model output", _positive(out_bad)),
                                  ("dL/d(output)", _positive(out_grad_bad)), ("activations", act_bad),
                                  ("weights", w_bad), ("gradients", g_bad)) if bad]
        count = sum(
            v for v in s.get("nonfinite", {}).values() if finite(v)
        )
        counted = f"{fmt(float(count))} non-finite gradient elements, " if count else ""
        message = f"NaN/Inf in {', '.join(where) or 'activations'} ({counted}{named}; threshold: any): {advice}"
        evidence = {
            "located_by": how,
            "in": where,
            "layers_nonfinite_activations": act_bad[:10],
            "layers_nonfinite_weights": w_bad[:10],
            "layers_nonfinite_gradients": g_bad[:10],
        }
        if self._born is not None:
            evidence["site"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._born.items()}
        if out_range is not None:
            evidence["output_range"] = out_range
        return [
            Condition(
                key="",
                layer=layer,
                value=float(count) if count else math.nan,
                threshold=0.0,
                severity="error",
                message=message,
                evidence=evidence,
                advice=advice,  # (replaced by the cause's advice when the finding is linked to one)
                # NaN in the weights/activations makes every other statistic garbage
                poisoned=bool(act_bad or w_bad or record.nonfinite_origin),
            )
        ]

    @staticmethod
    def _locate(record, act_bad, w_bad, g_bad) -> Tuple[Optional[str], str]:
        origin = record.nonfinite_origin
        if origin:
            wn = record.stats.get("weight_norm", {}).get(origin)
            if wn is not None and not finite(wn):
                # its inputs were finite but its weights were not: not where it was born
                return origin, "fallback: first module with non-finite output, its weights already non-finite"
            return origin, "origin"
        if act_bad:
            return act_bad[0], "fallback: first layer with non-finite activations"
        if w_bad:
            return w_bad[0], "fallback: first layer with non-finite weights"
        if g_bad:
            with_grad = [n for n in record.layers if n in record.stats.get("grad_norm", {})]
            if len(g_bad) < len(with_grad):
                # Born in backward: the layers below it inherit it, those above are clean.
                order = {n: i for i, n in enumerate(record.layers)}
                return max(g_bad, key=order.get), "fallback: output-most layer with non-finite gradients"
            return g_bad[0], "fallback: first layer with non-finite gradients"
        return None, "fallback: only the loss is non-finite"
