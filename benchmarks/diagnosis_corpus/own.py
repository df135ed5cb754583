"""The repository's own scenario suite (``tests/diagnose/diag_scenarios.py``) as one more source.

Its planted problems and healthy models were written with gradlens' rules in view; they
are kept here so every table shows them next to the independent sources. Each
scenario's kind becomes the corpus label of that kind; its culprits carry over (a
global culprit, ``None``, becomes "no layer").
"""

from __future__ import annotations

import os
import sys

from diagnosis_corpus.case import Case

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "tests", "diagnose")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

import diag_scenarios as _S  # noqa: E402

#: gradlens kind -> the corpus label that names it
_LABEL = {
    "vanishing": "vanishing_gradient", "exploding": "exploding_gradient", "nonfinite": "nonfinite",
    "dead_units": "zero_gradient", "saturation": "saturated_activation", "update_ratio": "lr_too_high",
    "divergence": "divergence",
}
_QUICK = {"deep_sigmoid_mlp", "log_of_negative", "dead_relu_bias", "mlp_adam"}


def _build(sc):
    def build():
        model, opts, step = sc.build()
        return model, (opts[0] if len(opts) == 1 else list(opts)), step
    return build


CASES = tuple(
    Case(f"own_{sc.name}", _build(sc), source="own",
         cite=f"tests/diagnose/diag_scenarios.py {sc.name}" + (f": {sc.note}" if sc.note else ""),
         bugs=() if sc.healthy else (_LABEL[sc.kind],),
         culprits=frozenset(c for c in sc.culprits if c is not None),
         also=frozenset(sc.also), steps=sc.steps, quick=sc.name in _QUICK)
    for sc in _S.ALL
)
