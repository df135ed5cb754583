"""``nonfinite``: NaN/Inf in the loss, gradients, parameters or activations.

Reported at once (a NaN never heals). Named where it is *born*:

1. ``record.nonfinite_origin`` when the monitor traced activations: the first module
   (forward order) whose inputs were finite and whose output was not;
2. otherwise a fallback, said so in ``evidence["located_by"]``: the first layer
   (input side) with non-finite activations, else with non-finite weights, else
   with non-finite gradients. When only some layers have non-finite gradients the
   NaN was born in the backward pass, at the output-most of them, and that one is
   named instead.
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


class NonFinite(Rule):
    """NaN/Inf anywhere, named at the module where it is born."""

    kind = "nonfinite"
    window = "nonfinite_persist_steps"
    runs_when_poisoned = True

    def check(self, record: StepRecord) -> List[Condition]:
        s = record.stats
        act_bad = [n for n in record.layers if _positive(s.get("act_nonfinite", {}).get(n))]
        # NaN in a norm may mean "not measured" (StepRecord contract): only an infinite
        # norm or a positive non-finite count is evidence.
        w_bad = [n for n in record.layers if _inf(s.get("weight_norm", {}).get(n))]
        g_bad = [
            n for n in record.layers
            if _positive(s.get("nonfinite", {}).get(n)) or _inf(s.get("grad_norm", {}).get(n))
        ]
        loss_bad = record.loss is not None and not math.isfinite(record.loss)
        if not (act_bad or w_bad or g_bad or loss_bad or record.nonfinite_origin):
            return []
        layer, how = self._locate(record, act_bad, w_bad, g_bad)
        where = [w for w, bad in (("loss", loss_bad), ("activations", act_bad),
                                  ("weights", w_bad), ("gradients", g_bad)) if bad]
        count = sum(
            v for v in s.get("nonfinite", {}).values() if finite(v)
        )
        named = f"born at {layer!r}" if layer is not None else "origin unknown"
        counted = f"{fmt(float(count))} non-finite gradient elements, " if count else ""
        message = (
            f"NaN/Inf in {', '.join(where) or 'activations'} ({counted}{named}; threshold: any): check "
            f"that layer's inputs for log/sqrt/division of non-positive values, lower the "
            f"learning rate or clip gradients"
        )
        return [
            Condition(
                key="",
                layer=layer,
                value=float(count) if count else math.nan,
                threshold=0.0,
                severity="error",
                message=message,
                evidence={
                    "located_by": how,
                    "in": where,
                    "layers_nonfinite_activations": act_bad[:10],
                    "layers_nonfinite_weights": w_bad[:10],
                    "layers_nonfinite_gradients": g_bad[:10],
                },
                # NaN in the weights/activations makes every other statistic garbage
                poisoned=bool(act_bad or w_bad or record.nonfinite_origin),
            )
        ]

    @staticmethod
    def _locate(record, act_bad, w_bad, g_bad) -> Tuple[Optional[str], str]:
        if record.nonfinite_origin:
            return record.nonfinite_origin, "origin"
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
