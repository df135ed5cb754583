"""Every diagnosis threshold, in one table, with its source.

Rules never hard-code a number: they read it from the table below by name, and
``Diagnoser(thresholds={"vanishing_ratio": 1e-4})`` overrides any entry.

Sources:

* **AUTOTRAINER**: Zhang et al., "AUTOTRAINER: An Automatic DNN Training Problem
  Detection and Repair System", ICSE 2021 (gradient vanish/explode, dying ReLU).
* **CS231n**: Karpathy, CS231n notes "Neural Networks Part 3" (ratio of weight
  updates to weight magnitudes should be around 1e-3).
* **SageMaker Debugger**: AWS built-in rules ``DeadRelu`` and ``TanhSaturation`` /
  ``SigmoidSaturation`` (a layer is flagged when more than half its units are
  inactive / saturated).
* **ours**: our own measurement on the labelled scenario suite
  (``tests/diagnose/scenarios.py``, ``benchmarks/diagnosis_eval.py``).

>>> from gradlens.diagnose.thresholds import resolve_thresholds
>>> resolve_thresholds({"vanishing_ratio": 1e-4})["vanishing_ratio"]
0.0001
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

__all__ = ["Threshold", "THRESHOLDS", "resolve_thresholds"]


@dataclass(frozen=True)
class Threshold:
    """One documented threshold: its default value, what it means, where it comes from."""

    value: float
    meaning: str
    source: str


#: name -> Threshold. The README's "Diagnosis" table is generated from this.
THRESHOLDS: Dict[str, Threshold] = {
    # --- persistence -----------------------------------------------------------
    "persist_steps": Threshold(
        3, "logged steps a condition must hold in a row before it is reported",
        "ours: on the healthy suite (11 models, 60-100 steps) no warning-level condition "
        "held more than 2 logged steps in a row (zero-initialised layers output exact "
        "zeros until their first update)",
    ),
    "nonfinite_persist_steps": Threshold(
        1, "logged steps before a NaN/Inf is reported",
        "ours: a NaN/Inf never heals by itself, report it at once",
    ),
    "update_ratio_persist_steps": Threshold(
        2, "measurements of ||dW||/||W|| in a row before it is reported",
        "ours: the monitor measures it on its own cadence (every 10th logged step by "
        "default), so 2 measurements already span 10+ steps",
    ),
    # --- vanishing ---------------------------------------------------------------
    "vanishing_ratio": Threshold(
        1e-3, "first/last layer gradient-norm ratio at or below which gradients vanish",
        "AUTOTRAINER (ICSE 2021): ratio <= 1e-3",
    ),
    "vanishing_abs": Threshold(
        1e-4, "first-layer gradient norm at or below which it counts as negligible",
        "AUTOTRAINER (ICSE 2021): first-layer gradient <= 1e-4",
    ),
    # --- exploding -------------------------------------------------------------
    "exploding_ratio": Threshold(
        70.0, "first/last layer gradient-norm ratio at or above which gradients explode",
        "AUTOTRAINER (ICSE 2021): ratio >= 70",
    ),
    "exploding_relative": Threshold(
        100.0, "a layer's gradient norm over its weight norm at or above which gradients explode "
        "(an SGD step at lr 0.01 would move the weights by 100%)",
        "ours: at most 3.5 on the healthy suite (GAN discriminator, step 0; "
        "zero-initialised layers excluded), 3e3 on an over-scaled ReLU stack",
    ),
    "exploding_growth": Threshold(
        1e3, "growth of the total gradient norm over its median on the first logged "
        "steps at or above which gradients explode over time",
        "ours: at most 21x on the healthy suite (LSTM, 100 steps)",
    ),
    "baseline_steps": Threshold(
        5, "logged steps whose median is the reference for growth over time (gradients, loss)",
        "ours",
    ),
    # --- dead units --------------------------------------------------------------
    "dead_fraction": Threshold(
        0.7, "fraction of a layer's units inactive on every input of the batch",
        "AUTOTRAINER (ICSE 2021): dying ReLU at zero-gradient fraction >= 0.7 "
        "(SageMaker Debugger DeadRelu: > 50% of units)",
    ),
    "zero_grad_steps": Threshold(
        5, "logged steps in a row a layer's gradient must be exactly zero to count as dead",
        "ours: an exactly zero gradient on 5 logged steps did not occur on the healthy suite",
    ),
    # --- saturation --------------------------------------------------------------
    "saturation_fraction": Threshold(
        0.5, "fraction of tanh/sigmoid-like outputs pinned near their limits",
        "SageMaker Debugger TanhSaturation/SigmoidSaturation: > 50% of the layer",
    ),
    # --- update ratio --------------------------------------------------------------
    "update_ratio_high": Threshold(
        0.3, "||dW||/||W|| at or above which the learning rate is too high",
        "CS231n (Karpathy): healthy ~1e-3; ours: at most 0.15 on the healthy suite (a "
        "68-parameter head under SGD+momentum, early steps), 1.4 with Adam at 100x its lr",
    ),
    "update_ratio_low": Threshold(
        1e-7, "||dW||/||W|| (median over layers) at or below which learning has stalled (info)",
        "CS231n (Karpathy): healthy ~1e-3; 1e-7 is 1e4x below",
    ),
    # --- divergence ---------------------------------------------------------------
    "divergence_factor": Threshold(
        100.0, "loss over its median on the first logged steps at or above which it diverges",
        "ours: 'rising by orders of magnitude' (issue 5); at most 1.3x on the healthy suite",
    ),
    # root causes and scale
    "urgent_factor": Threshold(
        100.0, "a condition this many times past its threshold is reported at once, without "
        "waiting for its persistence window (issue 12: 'orders of magnitude past its threshold'); "
        "0 turns this off",
        "ours: on the 34 healthy/fixed corpus programs (benchmarks/diagnosis_corpus) the largest "
        "||g||/||W|| below the output layer is 35 (at_regression_scaled_sgd) against 1e4 urgent, the "
        "largest update ratio 0.45 (so48385830_fixed) against 30 urgent; buggy ones reach 1e13 "
        "(at_gradient_explode_unscaled, step 1) and 1.6e11 (own_sgd_lr_100x) the step before their NaN",
    ),
    "scale_oversized": Threshold(
        1e3, "a layer's weight norm over the median weight norm of the other layers at or above "
        "which its weights are oversized",
        "ours: at most 8.5x on the 34 healthy/fixed corpus programs (own_transformer_encoder's "
        "N(0, 1) embedding); torch's default N(0, 1) nn.Embedding(50257, 768) is ~390x a default "
        "nn.Linear(768, 768) (||W|| 6.2e3 vs 16) and nn.Embedding(256000, 4096) ~880x a default "
        "nn.Linear(4096, 4096), so 1e3; a tiny Llama's embedding scaled by 1e4 is 1.2e4x",
    ),
    "scale_growth": Threshold(
        100.0, "a layer's weight norm (or activation std) over its first value at or above which it "
        "grows by orders of magnitude",
        "ours: at most 7x over 30-150 steps on the 34 healthy/fixed corpus programs "
        "(at_regression_scaled_sgd); 1e9x or more before the NaN of at_gradient_explode_unscaled, "
        "so48385830_no_activation_lr3 and own_sgd_lr_100x",
    ),
}


def resolve_thresholds(overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """The default thresholds with ``overrides`` applied, validated.

    Raises:
        TypeError: ``overrides`` is not a mapping, or a value is not a real number.
        ValueError: an unknown name, or a value that is NaN, infinite or negative.
    """
    values = {name: t.value for name, t in THRESHOLDS.items()}
    if overrides is None:
        return values
    if not isinstance(overrides, Mapping):
        raise TypeError(
            f"Diagnoser(thresholds=...) expects a mapping of name -> number, "
            f"got {type(overrides).__name__}"
        )
    for name, value in overrides.items():
        if name not in THRESHOLDS:
            raise ValueError(
                f"Diagnoser(thresholds=...) got unknown threshold {name!r}; "
                f"expected one of {sorted(THRESHOLDS)}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"Diagnoser(thresholds={{{name!r}: ...}}) expects a number, "
                f"got {type(value).__name__}"
            )
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"Diagnoser(thresholds={{{name!r}: ...}}) expects a finite number >= 0, got {value}"
            )
        values[name] = float(value)
    return values
