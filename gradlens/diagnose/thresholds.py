"""Every diagnosis threshold, in one table, with its source.

Rules never hard-code a number: they read it from the table below by name, and
``Diagnoser(thresholds={"vanishing_ratio": 1e-4})`` overrides any entry.

Sources:

* **AUTOTRAINER**: Zhang et al., "AUTOTRAINER: An Automatic DNN Training Problem
  Detection and Repair System", ICSE 2021 (gradient vanish/explode, dying ReLU;
  ``utils/monitor.py``: slow convergence, oscillating loss ``ol_judge``).
* **CS231n**: Karpathy, CS231n notes "Neural Networks Part 3" (ratio of weight
  updates to weight magnitudes should be around 1e-3).
* **SageMaker Debugger**: AWS built-in rules ``DeadRelu`` and ``TanhSaturation`` /
  ``SigmoidSaturation`` (a layer is flagged when more than half its units are
  inactive / saturated).
* **DeepDiagnosis**: Wardat, Cruz, Le, Rajan, "DeepDiagnosis: Automatically
  Diagnosing Faults and Recommending Actionable Fixes in Deep Learning Programs",
  ICSE 2022 (github.com/DeepDiagnosis/ICSE2022 ``callback/callbacks.py``: loss not
  decreasing, unchanged weights, output out of range).
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
    "cut_off_steps": Threshold(
        1, "logged steps a cut-off trunk (every layer below one layer exactly zero, its own weights "
        "getting a gradient, not the last layer) must hold before it is reported",
        "ours: on the HF models with a zeroed last norm (benchmarks/diagnosis_corpus/hf.py) the zeros "
        "last exactly one step (step 0; AdamW regrows the gain by ~lr); no healthy/fixed corpus program "
        "shows the pattern on any step (own_zero_init_branches_adam cuts its trunk at step 0 too, at its "
        "zero-initialised last layer, which is excluded)",
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
        100.0, "loss over its reference (the first logged loss, or ln(loss_classes) when given) "
        "at or above which it diverges",
        "ours: 'rising by orders of magnitude' (issue 5); the loss over the first logged loss is "
        "at most 1.7x on the corpus' healthy programs (the repository's healthy suite included)",
    ),
    # convergence
    "loss_classes": Threshold(
        0, "number of classes of a cross-entropy loss (0: unknown); gives ln(classes), the loss "
        "expected at initialisation, to divergence and stalled",
        "ours: a softmax over C classes at initialisation predicts ~1/C, a cross-entropy of ln(C) "
        "(CS231n, 'Neural Networks Part 3': look for the correct loss at chance performance)",
    ),
    "chance_tolerance": Threshold(
        0.02, "relative distance to ln(loss_classes) within which a stalled loss is at chance level",
        "ours: the circle/blob nets of AUTOTRAINER/DeepDiagnosis that do not learn sit at "
        "0.693 = ln(2) to 3 digits",
    ),
    "stalled_window": Threshold(
        20, "logged steps averaged into a loss level (the start level and the recent level)",
        "ours: averages the batch noise of the corpus (coefficient of variation up to 0.3 per "
        "step) to a few percent; DeepDiagnosis compares 5 epochs, AUTOTRAINER one epoch at a time",
    ),
    "stalled_min_improvement": Threshold(
        0.01, "relative drop of the recent loss level below its start level under which the loss "
        "is not decreasing",
        "DeepDiagnosis (ICSE 2022) 'loss not decreasing', AUTOTRAINER 'slow convergence' "
        "(accuracy gain < 0.01 per epoch); ours: the planted low-lr/unchanged-weight/XOR cases "
        "move -0.6% to 0.01%, healthy programs at least -0.1% (hence info by itself)",
    ),
    "stalled_update_ratio": Threshold(
        1e-5, "||dW||/||W|| (or relative change of ||W|| over 2 windows) at or below which a "
        "layer's weights are unchanged; turns a stalled loss into a warning",
        "DeepDiagnosis (ICSE 2022) 'unchanged weight'; CS231n: healthy ~1e-3, this is 100x "
        "below; ours: median 3.7e-7 and 2.8e-9 on the planted low-lr cases, >= 3.2e-4 on "
        "every healthy program of the corpus",
    ),
    "stalled_flat": Threshold(
        1e-3, "spread (max - min) / mean of the latest window at or below which the loss is "
        "constant; turns a stalled loss into a warning",
        "DeepDiagnosis (ICSE 2022): 'loss not decreasing' when the mean of the last 5 losses "
        "equals their max; ours: a tolerance for float rounding",
    ),
    "oscillation_window": Threshold(
        30, "logged losses over which swings are counted",
        "ours: AUTOTRAINER judges its whole history; 30 steps hold ~2 epochs of the corpus' "
        "small datasets",
    ),
    "oscillation_amplitude": Threshold(
        1.5, "a swing: adjacent local extrema of the loss at least this many times its window "
        "mean apart",
        "AUTOTRAINER (ICSE 2021) ol_judge's zeta (0.03 in accuracy), rescaled to the loss; ours: "
        "at 1.5x the healthy programs' swing rate is at most 0.13 (the batch-32 twin of "
        "AUTOTRAINER's oscillating case), the batch-1 case 0.43; at 1.0x the twin reaches 0.23",
    ),
    "oscillation_rate": Threshold(
        0.2, "swings per logged step in the window at or above which the loss oscillates",
        "AUTOTRAINER (ICSE 2021): eta = 0.2 of the points",
    ),
    "oscillation_trend": Threshold(
        0.5, "a loss whose second-half mean is below (1 - this) times its first-half mean is "
        "falling, not oscillating",
        "AUTOTRAINER (ICSE 2021): 'without converging'; ours: half the level is a clear trend "
        "through the swings",
    ),
    "oscillation_level": Threshold(
        0.5, "a loss whose window mean is below this fraction of its initial level has "
        "converged: its swings are batch noise, not an oscillation",
        "ours: 27 healthy-looking runs of 150-300 steps (blobs/digits/circles/regression at "
        "batch 1-16 under Adam and SGD, the repository's healthy suite): without it 12 raise an "
        "oscillation (a converged loss's noise is many times its tiny mean), with it 2, both at "
        "batch 1-2 under SGD momentum 0.9, the configuration of AUTOTRAINER's oscillating case "
        "(at batch 2 the loss only goes 0.99 -> 0.75 in 300 steps)",
    ),
    "unreachable_sat_fraction": Threshold(
        0.5, "fraction of the model outputs at the limits of a bounded output layer",
        "SageMaker Debugger TanhSaturation/SigmoidSaturation: > 50%; DeepDiagnosis (ICSE "
        "2022) 'output out of range'",
    ),
    "unreachable_min_improvement": Threshold(
        0.05, "relative drop between the two latest stalled_window means of the loss under "
        "which a saturated output's loss counts as flat",
        "ours: a sigmoid regression on a dataset seen in a fixed order (8 batches an epoch, "
        "batch losses +-20%) has a flat loss whose 20-step means differ by -3.4% to +4.5% with "
        "the phase of the window",
    ),
    "unreachable_max_drop": Threshold(
        0.5, "a saturated output whose loss fell by more than this fraction of its start level "
        "is confident, not out of range",
        "ours: a classifier that learned sits far below half its initial loss",
    ),
    "unreachable_push_fraction": Threshold(
        0.1, "fraction of the model outputs at a limit of the output activation that dL/d(output) "
        "pushes past it (a ReLU output at 0 with a positive gradient; a bounded one at its band "
        "with an outward gradient)",
        "ours, over benchmarks/diagnosis_corpus: a ReLU output against targets below 0 reads 14-44% "
        "on every recorded step (so48251943, so42514960), a ReLU output never reads above 0 against "
        "targets >= 0 (analytically: MSE/L1/Huber push a 0 output down only toward a negative target); "
        "bounded outputs of healthy classifiers read up to 100% once confident, hence the loss gates",
    ),
    "unreachable_sum_push": Threshold(
        0.2, "|mean/rms| of dL/d(softmax output) at or above which the loss pulls every probability of "
        "a row the same way (targets whose rows do not sum to 1)",
        "ours: 0 analytically for MSE on one-hot targets and for Keras cross-entropy at chance; "
        "-0.33 to -0.47 on so38648195 (MSE on multi-label targets); |value| <= 0.1 at step 0 on the "
        "corpus' healthy softmax programs (their value grows as they learn, when the loss gate excludes them)",
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
