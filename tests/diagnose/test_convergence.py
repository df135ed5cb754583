"""The convergence rules (stalled, oscillation, unreachable_output) and divergence
against the first loss and ln(classes): planted cases and their fixed twins on
hand-built StepRecords, then end to end through gradlens.watch + observe_loss."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens._record import StepRecord
from gradlens.diagnose import Diagnoser, diagnose
from gradlens.diagnose.rules.oscillation import swings
from gradlens.diagnose.thresholds import THRESHOLDS
from diag_scenarios import circles as _circles, train_watched

LAYERS = ["fc1", "fc2", "fc3"]
W = int(THRESHOLDS["stalled_window"].value)  # 20
OW = int(THRESHOLDS["oscillation_window"].value)  # 30
PERSIST = int(THRESHOLDS["persist_steps"].value)  # 3
MOVING = {"fc1": 1e-3, "fc2": 2e-3, "fc3": 3e-3}  # healthy ||dW||/||W||


def rec(step, loss=None, *, ratio=None, grad=None, signals=None, weight_norm=None):
    stats = {"grad_norm": dict(grad or {"fc1": 0.1, "fc2": 0.2, "fc3": 0.3})}
    if ratio is not None:
        stats["update_ratio"] = dict(ratio)
    if weight_norm is not None:
        stats["weight_norm"] = dict(weight_norm)
    return StepRecord(step, list(LAYERS), stats, loss=loss, signals=dict(signals or {}))


_PATTERN = (1.0, -0.5, 0.3, -1.0, 0.2)  # zero mean


def noisy(level: float, i: int, rel: float = 0.05) -> float:
    """Batch noise of a small dataset seen in order (5 batches an epoch, +-rel) around ``level``."""
    return level * (1 + rel * _PATTERN[i % 5])


#: a loss near 1.0 for 10 steps, then swinging between 0.1 and 3x its start (an unstable optimiser)
SWINGING = [1.0 + 0.01 * _PATTERN[i % 5] if i < 10 else (0.1 if i % 2 else 3.0) for i in range(40)]


def series(values, **kw):
    return lambda: [rec(i, v, **kw) for i, v in enumerate(values)]


@dataclass
class Planted:
    id: str
    records: Callable[[], List[StepRecord]]
    kind: str
    severity: Optional[str]          # None: no finding of ``kind`` at all
    layer: Optional[str] = None
    step: Optional[int] = None
    says: str = ""                   # a piece of the message
    thresholds: Optional[dict] = None


CASES = [
    # --- stalled -----------------------------------------------------------------------
    Planted("stalled_lr_far_too_low", series([noisy(0.70, i) for i in range(60)],
                                             ratio={"fc1": 3e-7, "fc2": 4e-7, "fc3": 2e-6}),
            "stalled", "warning", None, 2 * W - 1, "learning rate is far too low"),
    Planted("stalled_one_frozen_layer_is_named", series([noisy(0.70, i) for i in range(60)],
                                                        ratio={"fc1": 1e-3, "fc2": 0.0, "fc3": 2e-3}),
            "stalled", "warning", "fc2", 2 * W - 1, "weights of 'fc2' do not change"),
    Planted("stalled_frozen_run_is_named_at_its_input_side", series([noisy(0.70, i) for i in range(60)],
                                                                   ratio={"fc1": 1e-3, "fc2": 0.0, "fc3": 1e-6}),
            "stalled", "warning", "fc2", 2 * W - 1, "2 of 3 layers"),
    Planted("stalled_unchanged_weight_norms_without_ratios",
            lambda: [rec(i, noisy(0.7, i), weight_norm={"fc1": 8.316, "fc2": 7.859 + 1e-3 * i, "fc3": 1.4 + 1e-3 * i})
                     for i in range(60)],
            "stalled", "warning", "fc1", 2 * W - 1, "weights of 'fc1' do not change"),
    Planted("stalled_constant_loss", series([0.5] * 60, ratio=MOVING),
            "stalled", "warning", None, 2 * W - 1, "constant"),
    Planted("stalled_at_chance_level", series([noisy(math.log(10), i, 0.01) for i in range(60)], ratio=MOVING),
            "stalled", "warning", None, 2 * W - 1, "ln(10)=2.3", {"loss_classes": 10}),
    Planted("stalled_zero_gradients_are_not_blamed_on_the_lr",
            series([noisy(7.0, i) for i in range(60)], ratio={"fc1": 0.0, "fc2": 0.0, "fc3": 0.0},
                   grad={"fc1": 0.0, "fc2": 0.0, "fc3": 0.0}),
            # (linked to the dead_units finding of the zero gradients, whose advice it takes)
            "stalled", "warning", None, 2 * W - 1, "after dead units"),
    Planted("stalled_without_a_cause_is_info", series([noisy(math.log(10), i, 0.01) for i in range(60)], ratio=MOVING),
            "stalled", "info", None, 2 * W - 1, "not decreasing"),
    Planted("stalled_rising_loss_counts", series([0.7 + 0.001 * i for i in range(60)], ratio={"fc1": 0, "fc2": 0, "fc3": 0}),
            "stalled", "warning", None, 2 * W - 1),
    Planted("stalled_output_grad_norm_without_a_loss",
            lambda: [rec(i, None, ratio={"fc1": 0, "fc2": 0, "fc3": 0}, signals={"output_grad_norm": 0.3})
                     for i in range(60)],
            "stalled", "warning", None, 2 * W - 1, "output-gradient norm is not decreasing"),
    # fixed twins
    Planted("stalled_twin_learning", series([noisy(0.7 / (1 + 0.05 * i), i) for i in range(80)],
                                            ratio={"fc1": 3e-7, "fc2": 4e-7, "fc3": 2e-6}),
            "stalled", None),
    Planted("stalled_twin_slow_but_learning", series([noisy(0.7 * (1 - 0.002 * i), i, 0.2) for i in range(80)],
                                                     ratio={"fc1": 3e-7, "fc2": 4e-7, "fc3": 2e-6}),
            "stalled", None),
    Planted("stalled_needs_two_windows", series([0.5] * (2 * W - 1 + PERSIST - 1), ratio=MOVING), "stalled", None),
    Planted("stalled_negative_losses_are_not_judged", series([-1.0] * 60, ratio=MOVING), "stalled", None),
    Planted("stalled_twin_output_grad_norm_falling",
            lambda: [rec(i, None, ratio={"fc1": 0, "fc2": 0, "fc3": 0}, signals={"output_grad_norm": 1 / (1 + i)})
                     for i in range(60)],
            "stalled", None),
    # --- oscillation ------------------------------------------------------------------
    Planted("oscillation_big_swings", series(SWINGING),
            "oscillation", "warning", None, OW - 1, "lower the learning rate or raise the batch size"),
    Planted("oscillation_batch_one_like", series([(0.0, 4.0, 1e-6, 0.5, 9.0)[i % 5] for i in range(60)]),
            "oscillation", "warning", None, OW - 1),
    # fixed twins
    Planted("oscillation_twin_small_swings", series([1.0 if i % 2 else 1.2 for i in range(60)]), "oscillation", None),
    Planted("oscillation_twin_one_hard_batch_per_epoch",
            series([1.7 if i % 16 == 7 else noisy(0.5, i, 0.3) for i in range(120)]), "oscillation", None),
    Planted("oscillation_twin_falling_while_swinging",
            series([(0.1 if i % 2 else 3.0) * 0.9 ** i for i in range(60)]), "oscillation", None),
    Planted("oscillation_twin_converged_noise",  # spikes 10x a tiny mean, far below the initial 1.0
            series([1.0 - 0.045 * i for i in range(20)] + [0.5 if i % 3 == 0 else 0.01 for i in range(60)]),
            "oscillation", None),
    Planted("oscillation_twin_fast_learner_noise",  # learned within the first window: the first loss is the level
            series([1.0] + [0.05] * 19 + [(0.3, 0.01, 0.01)[i % 3] for i in range(60)]), "oscillation", None),
    Planted("oscillation_twin_alternating_classes_one_learned",  # so31880720_fixed: batch 1, the samples of
            # two classes in turn; one class's loss falls, the other's is still at its initial level
            series([0.72 - 0.001 * i if i % 2 == 0 else 0.7 * 0.95 ** i for i in range(100)]), "oscillation", None),
    Planted("oscillation_twin_swings_halving_every_10_steps",  # a downward trend inside every window
            series([(0.1, 6.0)[i % 2] * 2 ** (-i / 10) for i in range(60)]), "oscillation", None),
    Planted("oscillation_needs_its_window", series(SWINGING[:OW - 1 + PERSIST - 1]),
            "oscillation", None),
    # --- unreachable_output ---------------------------------------------------------------
    Planted("unreachable_sigmoid_regression",
            series([noisy(700.0, i, 0.15) for i in range(60)], signals={"output_sat_frac": 0.95}),
            "unreachable_output", "warning", "fc3", 2 * W - 1, "95% of the model outputs"),
    # fixed twins
    Planted("unreachable_twin_confident_classifier",
            series([0.7 if i < W else noisy(0.01, i) for i in range(90)], signals={"output_sat_frac": 0.95}),
            "unreachable_output", None),
    Planted("unreachable_twin_learning", series([700.0 * (1 - 0.004 * i) for i in range(60)],
                                                signals={"output_sat_frac": 0.95}), "unreachable_output", None),
    Planted("unreachable_twin_unbounded_output", series([noisy(700.0, i, 0.15) for i in range(60)],
                                                        signals={"output_sat_frac": math.nan}),
            "unreachable_output", None),
    Planted("unreachable_twin_not_saturated", series([noisy(700.0, i, 0.15) for i in range(60)],
                                                     signals={"output_sat_frac": 0.2}), "unreachable_output", None),
    # a ReLU output (no saturation, a pushed fraction) pushed below 0: no loss needed
    Planted("unreachable_relu_output_pushed_below_zero",
            series([None] * 10, signals={"output_sat_frac": math.nan, "output_push_frac": 0.3}),
            "unreachable_output", "warning", "fc3", 0, "30% of the model outputs sit at 0"),
    Planted("unreachable_relu_output_with_a_flat_loss_too",
            series([noisy(0.6, i) for i in range(10)], signals={"output_sat_frac": math.nan, "output_push_frac": 0.3}),
            "unreachable_output", "warning", "fc3", 0, "floor of the ReLU output layer 'fc3'"),
    # a bounded output pushed past a limit while the loss goes below zero (BCE on a label of 2)
    Planted("unreachable_pushed_at_a_negative_loss",
            series([0.8 - 0.06 * i for i in range(60)],
                   signals={"output_sat_frac": 0.3, "output_push_frac": 0.4}),
            "unreachable_output", "warning", "fc3", 2 * W - 1, "the loss went below zero"),
    # softmax rows against targets that sum to more than 1 (multi-label targets under MSE)
    Planted("unreachable_softmax_multi_label",
            series([noisy(0.3, i) for i in range(60)],
                   signals={"output_sat_frac": 0.0, "output_push_frac": 0.0, "output_sum_push": -0.4}),
            "unreachable_output", "warning", "fc3", 2 * W - 1, "pulls all its probabilities up together"),
    # fixed twins
    Planted("unreachable_twin_relu_output_not_pushed",  # targets >= 0: outputs at 0 are not pushed down
            series([None] * 10, signals={"output_sat_frac": math.nan, "output_push_frac": 0.0}),
            "unreachable_output", None),
    Planted("unreachable_twin_relu_output_pushed_below_the_threshold",
            series([None] * 10, signals={"output_sat_frac": math.nan, "output_push_frac": 0.05}),
            "unreachable_output", None),
    Planted("unreachable_twin_pushed_confident_classifier",  # confident: pushed at its limits, loss > 0
            series([0.7 if i < W else noisy(0.01, i) for i in range(90)],
                   signals={"output_sat_frac": 0.95, "output_push_frac": 0.95}),
            "unreachable_output", None),
    Planted("unreachable_twin_negative_loss_not_pushed",  # a Gaussian NLL going below 0 inside the range
            series([0.8 - 0.06 * i for i in range(60)], signals={"output_sat_frac": 0.3, "output_push_frac": 0.0}),
            "unreachable_output", None),
    Planted("unreachable_twin_negative_from_the_start",  # a loss that is negative by design
            series([-0.8 - 0.06 * i for i in range(60)], signals={"output_sat_frac": 0.3, "output_push_frac": 0.4}),
            "unreachable_output", None),
    Planted("unreachable_twin_softmax_one_hot",
            series([noisy(0.3, i) for i in range(60)],
                   signals={"output_sat_frac": 0.0, "output_push_frac": 0.0, "output_sum_push": 0.0}),
            "unreachable_output", None),
    Planted("unreachable_twin_softmax_sum_push_below_the_threshold",
            series([noisy(0.3, i) for i in range(60)],
                   signals={"output_sat_frac": 0.0, "output_push_frac": 0.0, "output_sum_push": -0.15}),
            "unreachable_output", None),
    Planted("unreachable_twin_softmax_learning",  # a Keras-CE classifier that learns: its sum push grows
            series([0.7 / (1 + 0.05 * i) for i in range(80)],
                   signals={"output_sat_frac": 0.0, "output_push_frac": 0.3, "output_sum_push": 0.6}),
            "unreachable_output", None),
    # --- divergence ---------------------------------------------------------------------
    Planted("divergence_on_the_first_update", series([6.97, 226258.0, 3.1e5, 2.4e5, 2.9e5, 2.2e5, 2.6e5, 3e5]),
            "divergence", "warning", None, 1, "first logged loss (step 0), 6.97"),
    Planted("divergence_from_step_0_against_ln_classes", series([1e4] * 8), "divergence", "warning", None, 0,
            "the cross-entropy expected at initialisation ln(10), 2.3", {"loss_classes": 10}),
    # fixed twins
    Planted("divergence_twin_without_classes", series([1e4] * 8), "divergence", None),
    Planted("divergence_twin_falling", series([6.97 / (1 + i) for i in range(20)]), "divergence", None),
    Planted("divergence_twin_batch_one_noise",
            # the first 40 losses of AUTOTRAINER's oscillating case (batch size 1, measured):
            # its 5-step median is 0.0022, so a median baseline calls 0.43 .. 60 divergence
            series([4.7, 9.08, 0.00219, 5.96e-07, 2.74e-06, 14.0, 0.000176, 0.0, 0.428, 0.977, 0.438, 0.517, 0.0,
                    60.7, 0.0, 0.0317, 0.0, 4.27, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 39.2, 5.33e-05,
                    0.0, 40.4, 0.0, 0.0, 0.0, 2.38e-07, 0.0, 3.58e-07, 15.0, 0.03]),
            "divergence", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_planted_and_fixed(case):
    found = [f for f in diagnose(case.records(), thresholds=case.thresholds) if f.kind == case.kind]
    if case.severity is None:
        assert found == [], [str(f) for f in found]
        return
    assert len(found) == 1, [str(f) for f in found]
    f = found[0]
    assert (f.severity, f.layer) == (case.severity, case.layer), str(f)
    if case.step is not None:
        assert f.step == case.step, str(f)
    assert case.says in f.message, f.message


def test_stalled_message_and_evidence_say_the_numbers():
    losses = [noisy(0.70, i) for i in range(60)]
    records = [rec(i, v, ratio={"fc1": 3e-7, "fc2": 4e-7, "fc3": 2e-6}) for i, v in enumerate(losses)]
    diag = Diagnoser()
    n = 2 * W + PERSIST - 1 + 4  # reported at step 41, updated in place up to step 45
    for r in records[:n]:
        diag.update(r)
    (f,) = [x for x in diag.findings if x.kind == "stalled"]
    assert (f.step, f.last_step) == (2 * W - 1, n - 1)
    # independent reference: the first 20 and the latest 20 losses fed
    start = sum(losses[:W]) / W
    recent = sum(losses[n - W:n]) / W
    assert f.evidence["start_steps"] == [0, W - 1] and f.evidence["start"] == pytest.approx(start)
    assert f.value == pytest.approx((start - recent) / start)
    assert f"{start:.3g} -> {recent:.3g}" in f.message and f"steps 0-19 vs {n - W}-{n - 1}" in f.message
    assert f.evidence["unchanged_layers"] == {"fc1": 3e-7, "fc2": 4e-7, "fc3": 2e-6}


def test_swings_counts_adjacent_extrema_apart_by_the_amplitude():
    # by hand: the interior extrema of [0, 5, 1, 5, 0, 0, 3] are 5, 1, 5, 0, 0 (a plateau's
    # ends count, at no distance); adjacent distances 4, 4, 5, 0
    assert swings([0, 5, 1, 5, 0, 0, 3], 3.5) == 3
    assert swings([0, 5, 1, 5, 0, 0, 3], 4.5) == 1
    assert swings([0, 1, 2, 3, 4], 0.0) == 0  # monotone: no extremum
    assert swings([1.0] * 10, 0.0) == 0


def test_oscillation_evidence_matches_the_window():
    losses = [1.0] + [0.1 if i % 2 else 3.0 for i in range(1, OW + PERSIST - 1)]
    (f,) = [x for x in diagnose([rec(i, v) for i, v in enumerate(losses)]) if x.kind == "oscillation"]
    window = losses[-OW:]  # the latest window, a strict alternation (the finding holds the latest numbers)
    assert f.evidence["mean"] == pytest.approx(sum(window) / OW)
    assert f.evidence["swings"] == OW - 3  # every adjacent pair of the 28 interior extrema
    assert f.value == pytest.approx((OW - 3) / OW)
    initial = max(1.0, sum(losses[:W]) / W)  # the first loss or the first window's mean, the higher
    assert f.evidence["initial"] == pytest.approx(initial)
    assert f.evidence["peak_over_initial"] == pytest.approx(3.0 / initial)
    assert f"peaking at {3.0 / initial:.3g}x it" in f.message


def test_every_new_threshold_is_overridable():
    records = [rec(i, v) for i, v in enumerate(SWINGING)]
    assert any(f.kind == "oscillation" for f in diagnose(records))
    assert not any(f.kind == "oscillation" for f in diagnose(records, thresholds={"oscillation_amplitude": 2.5}))
    assert not any(f.kind == "oscillation" for f in diagnose(records, thresholds={"oscillation_peak": 3.0}))
    flat = [rec(i, 0.5, ratio=MOVING) for i in range(60)]
    assert [f.severity for f in diagnose(flat) if f.kind == "stalled"] == ["warning"]
    assert [f.severity for f in diagnose(flat, thresholds={"stalled_flat": 0.0, "stalled_min_improvement": 0.0})
            if f.kind == "stalled"] == []


# ---------------------------------------------------------------------------
# end to end: gradlens.watch + observe_loss on real small models
# ---------------------------------------------------------------------------


def _train(model, opt, x, y, loss_fn, steps, *, batch=64, thresholds=None):
    losses = []
    mon = train_watched(model, opt, x, y, loss_fn, steps, batch=batch, thresholds=thresholds,
                        on_loss=lambda loss: losses.append(loss.item()))
    return mon.findings, losses


def _circle_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())


@pytest.mark.parametrize("lr, stalled", [(1e-7, True), (0.5, False)], ids=["lr_1e-7", "fixed_lr_0.5"])
def test_watch_reports_a_stalled_loss(lr, stalled):
    model = _circle_net()
    x, y = _circles()
    findings, losses = _train(model, torch.optim.SGD(model.parameters(), lr=lr), x, y, F.binary_cross_entropy, 60)
    found = [f for f in findings if f.kind == "stalled"]
    if not stalled:
        assert found == [] and sum(losses[-W:]) < 0.9 * sum(losses[:W])
        return
    (f,) = found
    assert (f.severity, f.layer, f.step) == ("warning", None, 2 * W - 1), str(f)
    # independent reference: the means of the losses the test itself saw
    assert f.evidence["start"] == pytest.approx(sum(losses[:W]) / W, rel=1e-6)
    assert abs(f.value) < 0.01 and "learning rate is far too low" in f.message


def test_gradlens_report_finds_the_same_stall_offline(tmp_path):
    # the offline path (TensorBoard events -> records -> rules) sees what the live one saw
    from gradlens.report import load_run

    model = _circle_net()
    x, y = _circles()
    opt = torch.optim.SGD(model.parameters(), lr=1e-7)
    mon = train_watched(model, opt, x, y, F.binary_cross_entropy, 50, batch=64, logdir=str(tmp_path))
    live = [(f.kind, f.severity, f.layer, f.step) for f in mon.findings if f.kind == "stalled"]
    offline = [(f.kind, f.severity, f.layer, f.step) for f in load_run(str(tmp_path)).findings if f.kind == "stalled"]
    assert live == offline == [("stalled", "warning", None, 2 * W - 1)]


@pytest.mark.parametrize("lr, diverges", [(0.6, True), (0.01, False)], ids=["lr_0.6", "fixed_lr_0.01"])
def test_watch_reports_divergence_from_the_first_update(lr, diverges):
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1)) * 3
    y = x.sum(1, keepdim=True)
    findings, losses = _train(model, torch.optim.SGD(model.parameters(), lr=lr), x, y, F.mse_loss, 12)
    found = [f for f in findings if f.kind == "divergence"]
    factor = THRESHOLDS["divergence_factor"].value
    first_bad = next((i for i, v in enumerate(losses) if not v < factor * losses[0]), None)
    if not diverges:
        assert found == [] and first_bad is None
        return
    assert first_bad is not None and first_bad < 5  # inside the old 5-step median baseline
    assert found and found[0].step == first_bad, (losses, [str(f) for f in found])


@pytest.mark.parametrize("classes", [10, 0], ids=["loss_classes_10", "classes_unknown"])
def test_watch_uses_ln_classes_as_the_initial_loss(classes):
    torch.manual_seed(0)
    model = nn.Linear(16, 10)
    with torch.no_grad():
        model.weight.mul_(1e4)  # logits ~1e3 at step 0: cross-entropy far above ln(10)
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (128,), generator=torch.Generator().manual_seed(3))
    findings, losses = _train(model, torch.optim.SGD(model.parameters(), lr=1e-6), x, y, F.cross_entropy, 8,
                              batch=32, thresholds={"loss_classes": classes})
    assert losses[0] > 100 * math.log(10)
    found = [f for f in findings if f.kind == "divergence"]
    if classes:
        assert found and found[0].step == 0 and "ln(10)" in found[0].message, [str(f) for f in findings]
    else:
        assert found == []


def test_watch_reports_gpt2_at_lr_100_at_step_1():
    # issue 12: Adam at lr=100 sends a tiny GPT-2's loss from ~6.9 (ln(vocab)) to ~2e5 at
    # step 1; the old 5-step median baseline already held exploded losses
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=1000, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=100.0)
    data = torch.randint(0, 1000, (64, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt) as mon:
            for i in range(6):
                b = data[(i * 8) % 64:(i * 8) % 64 + 8]
                opt.zero_grad()
                out = model(input_ids=b, labels=b)
                mon.observe_loss(out.loss)
                losses.append(out.loss.item())
                out.loss.backward()
                opt.step()
    assert losses[0] < 10 and all(v > 1e3 * losses[0] for v in losses[1:4]), losses
    (f,) = [x for x in mon.findings if x.kind == "divergence"]
    assert (f.severity, f.step, f.layer) == ("warning", 1, None), str(f)
    assert f.evidence["reference"] == pytest.approx(losses[0], rel=1e-6)


@pytest.mark.parametrize("module", ["stalled", "oscillation", "unreachable_output", "divergence"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"gradlens.diagnose.rules.{module}")
    result = doctest.testmod(mod)
    assert result.failed == 0 and (result.attempted > 0 or module in ("unreachable_output", "divergence"))


def test_levels_keep_the_first_window_and_the_tail_on_long_runs():
    from gradlens.diagnose.rules.stalled import Levels

    lv = Levels()
    values = [float(i % 7) + i * 1e-3 for i in range(10_000)]
    for i, v in enumerate(values):
        lv.add(i, v)
    assert len(lv) <= 4096
    assert lv.start(W) == pytest.approx(sum(values[:W]) / W)
    assert lv.recent(W) == pytest.approx(sum(values[-W:]) / W)
    assert lv.recent(W, back=W) == pytest.approx(sum(values[-2 * W:-W]) / W)
    assert lv.span(W) == (0, W - 1, len(values) - W, len(values) - 1)


def _sigmoid_regression(out_act, **watch_options):
    """Regression targets ~N(0, 30^2) under a sigmoid output (DeepFD's Stack Overflow 48221692),
    or its fixed twin with a linear output (``out_act=None``): the monitor after 80 Adam steps."""
    torch.manual_seed(0)
    layers = [nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)] + ([out_act()] if out_act else [])
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=g)
    y = 10 * (x @ torch.randn(8, 1, generator=g))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return train_watched(model, opt, x, y, F.mse_loss, 80, batch=64, **watch_options)


@pytest.mark.parametrize("out_act, reported", [(nn.Sigmoid, True), (None, False)], ids=["sigmoid_output", "fixed_linear"])
def test_watch_with_activations_reports_an_unreachable_output(out_act, reported):
    # the output signals turned off: the traced activations (every 10th step) give the output
    # layer's saturation instead (the default path: the test below)
    mon = _sigmoid_regression(out_act, activations=True, output_stats=False)
    found = [f for f in mon.findings if f.kind == "unreachable_output"]
    if not reported:
        assert found == []
        return
    (f,) = found
    assert (f.severity, f.layer) == ("warning", "3"), str(f)
    sats = [r.stats["act_sat_frac"]["3"] for r in mon.records() if "3" in r.stats.get("act_sat_frac", {})]
    assert f.value == pytest.approx(sats[-1]) and f.value >= 0.5


@pytest.mark.parametrize("out_act, reported", [(nn.Sigmoid, True), (None, False)], ids=["sigmoid_output", "fixed_linear"])
def test_default_watch_reports_an_unreachable_output_from_the_output_signals(out_act, reported):
    # at default settings the model-output signals (every 5th logged step) give the saturated
    # fraction; without traced activations the record's layers are those with parameters, so
    # the output layer named is the last Linear, '2'
    mon = _sigmoid_regression(out_act)
    found = [f for f in mon.findings if f.kind == "unreachable_output"]
    if not reported:
        assert found == []
        return
    (f,) = found
    assert (f.severity, f.layer) == ("warning", "2"), str(f)
    sats = [r.signals["output_sat_frac"] for r in mon.records() if r.step == f.last_step]
    assert f.value == pytest.approx(sats[-1]) and f.value >= 0.5


def _train_default(model, loss_fn, x, y, *, steps=80, lr=1e-2, batch=32):
    """``steps`` Adam steps of ``model`` on (x, y) in order under default ``gradlens.watch``."""
    return train_watched(model, torch.optim.Adam(model.parameters(), lr=lr), x, y, loss_fn, steps, batch=batch)


def _bce_on_probabilities(p, y):
    # Keras binary_crossentropy on probabilities: clipped, no check that y is in [0, 1]
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def _relu_regression(fixed):
    # targets tanh(x w) in [-1, 1] under a ReLU output layer (DeepFD's Stack Overflow 48251943);
    # fixed twin: tanh
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), nn.Tanh() if fixed else nn.ReLU())
    return model, F.mse_loss, x, y


def _softmax_multi_label(fixed):
    # multi-hot targets (1-3 labels a row) under a softmax output and MSE (Stack Overflow 38648195);
    # fixed twin: sigmoid + binary cross-entropy
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    y = (torch.rand(256, 3, generator=g) < 0.5).float()
    y[y.sum(1) == 0, 0] = 1.0
    x = y @ torch.randn(3, 8, generator=g) + 0.5 * torch.randn(256, 8, generator=g)
    head = nn.Sigmoid() if fixed else nn.Softmax(dim=1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), head)
    return model, (_bce_on_probabilities if fixed else F.mse_loss), x, y


def _labels_0_1_2(fixed):
    # labels {0, 1, 2} under one sigmoid unit and binary cross-entropy (Stack Overflow 50079585):
    # the loss goes below 0 as p -> 1; fixed twin: 3 logits and cross-entropy
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 8, generator=g)
    y = torch.bucketize(x[:, 0] + x[:, 1], torch.tensor([-0.7, 0.7]))
    if fixed:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), F.cross_entropy, x, y
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
    return model, _bce_on_probabilities, x, y[:, None].float()


@pytest.mark.parametrize("program, says", [
    (_relu_regression, "sit at 0, the floor of the ReLU output layer '2'"),
    (_softmax_multi_label, "pulls all its probabilities up together"),
    (_labels_0_1_2, "the loss went below zero"),
], ids=["relu_output_negative_targets", "softmax_multi_label_mse", "bce_on_labels_above_1"])
@pytest.mark.parametrize("fixed", [False, True], ids=["buggy", "fixed"])
def test_default_watch_reports_outputs_that_cannot_reach_their_targets(program, says, fixed):
    model, loss_fn, x, y = program(fixed)
    mon = _train_default(model, loss_fn, x, y)
    found = [f for f in mon.findings if f.kind == "unreachable_output"]
    if fixed:
        assert found == [], [str(f) for f in found]
        return
    assert len(found) == 1, [str(f) for f in found]
    (f,) = found
    assert (f.severity, f.layer) == ("warning", "2"), str(f)
    assert says in f.message, f.message
    # the value is the recorded signal of the step the finding was last updated at
    (last,) = [r for r in mon.records() if r.step == f.last_step]
    key = "output_sum_push" if "output_sum_push" in f.evidence else "output_push_frac"
    assert f.value == pytest.approx(abs(last.signals[key]))
