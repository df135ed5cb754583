"""Each diagnosis rule and the engine, on hand-built StepRecords with known answers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import pytest

from gradlens._record import StepRecord
from gradlens.diagnose import THRESHOLDS, Diagnoser, diagnose
from gradlens.diagnose.rules import DEFAULT_RULES, Rule

NAN = math.nan
LAYERS = ["fc1", "relu1", "fc2", "relu2", "fc3"]


def rec(step, grad=None, *, layers=LAYERS, loss=None, origin=None, **stats):
    s = {"grad_norm": dict(grad or {})}
    for k, v in stats.items():
        s[k] = dict(v)
    return StepRecord(step, list(layers), s, loss=loss, nonfinite_origin=origin)


HEALTHY_GRADS = {"fc1": 0.5, "fc2": 0.4, "fc3": 0.3}
HEALTHY_W = {"fc1": 4.0, "fc2": 4.0, "fc3": 2.0}


@dataclass
class RuleCase:
    id: str
    records: Callable[[], List[StepRecord]]
    kind: Optional[str]              # None: nothing at warning level
    layer: Optional[str] = None
    step: Optional[int] = None


def _repeat(n, **kw):
    return lambda: [rec(i, **kw) for i in range(n)]


CASES = [
    RuleCase("healthy", _repeat(10, grad=HEALTHY_GRADS, weight_norm=HEALTHY_W, loss=1.0), None),
    # vanishing: ratio 1e-6 and first 1e-6 <= 1e-4; largest drop between fc1 and fc2
    RuleCase("vanishing", _repeat(3, grad={"fc1": 1e-6, "fc2": 1e-2, "fc3": 1.0}), "vanishing", "fc1", 0),
    RuleCase("vanishing_culprit_mid", _repeat(3, grad={"fc1": 1e-7, "fc2": 1e-6, "fc3": 1.0}),
             "vanishing", "fc2", 0),
    RuleCase("vanishing_needs_3_steps", _repeat(2, grad={"fc1": 1e-6, "fc2": 1e-2, "fc3": 1.0}), None),
    # ratio 1e-4, first 1e-3 > 1e-4 and no steady decline (fc2 > fc3): AUTOTRAINER says no
    RuleCase("vanishing_small_ratio_but_not_absolutely_small",
             _repeat(5, grad={"fc1": 1e-3, "fc2": 20.0, "fc3": 10.0}), None),
    # the same ratio with a decline at every layer: vanishing (AUTOTRAINER's trend test)
    RuleCase("vanishing_steady_decline_without_the_absolute_level",
             _repeat(3, grad={"fc1": 1e-3, "fc2": 1.0, "fc3": 10.0}), "vanishing", "fc1", 0),
    RuleCase("vanishing_ignores_zero_grad_layers",
             _repeat(5, grad={"fc1": 0.0, "fc2": 0.5, "fc3": 0.5}), "dead_units", "fc1", 0),
    RuleCase("exploding_ratio", _repeat(3, grad={"fc1": 1e3, "fc2": 2.0, "fc3": 1.0}), "exploding", "fc1", 0),
    RuleCase("exploding_relative", _repeat(3, grad={"fc1": 900.0, "fc2": 800.0, "fc3": 700.0},
                                          weight_norm={"fc1": 3.0, "fc2": 3.0, "fc3": 3.0}),
             "exploding", "fc1", 0),
    RuleCase("exploding_relative_ignores_zero_initialised_layers",
             lambda: [rec(i, grad={"fc1": 0.5, "fc2": 0.4, "fc3": 0.3},
                          weight_norm={"fc1": 4.0, "fc2": 4.0, "fc3": 1e-4 * i}) for i in range(6)], None),
    RuleCase("exploding_over_time",
             lambda: [rec(i, grad={k: v * (1 if i < 5 else 1e4) for k, v in HEALTHY_GRADS.items()})
                      for i in range(8)], "exploding", "fc1", 5),
    RuleCase("nonfinite_origin", lambda: [rec(0, grad={"fc1": NAN, "fc2": NAN, "fc3": NAN}, origin="relu2",
                                             nonfinite={"fc1": 3, "fc2": 3, "fc3": 3},
                                             loss=NAN)], "nonfinite", "relu2", 0),
    RuleCase("nonfinite_first_activation",
             lambda: [rec(0, grad=HEALTHY_GRADS, act_nonfinite={"fc1": 0, "relu1": 0, "fc2": 3, "relu2": 3})],
             "nonfinite", "fc2", 0),
    RuleCase("nonfinite_weights", lambda: [rec(0, grad=HEALTHY_GRADS, weight_norm={"fc1": 1.0, "fc2": math.inf})],
             "nonfinite", "fc2", 0),
    RuleCase("nonfinite_born_in_backward",
             lambda: [rec(0, grad={"fc1": NAN, "fc2": NAN, "fc3": 0.3}, nonfinite={"fc1": 5, "fc2": 7, "fc3": 0})],
             "nonfinite", "fc2", 0),
    RuleCase("nonfinite_all_grads_fallback_first_layer",
             lambda: [rec(0, grad={"fc1": NAN, "fc2": NAN, "fc3": NAN}, nonfinite={"fc1": 1, "fc2": 1, "fc3": 1})],
             "nonfinite", "fc1", 0),
    RuleCase("nan_norm_means_not_measured", _repeat(3, grad={"fc1": NAN, "fc2": 0.4, "fc3": 0.3},
                                                   weight_norm={"fc1": NAN}), None),
    RuleCase("dead_relu", _repeat(3, grad=HEALTHY_GRADS, act_dead_frac={"relu1": 0.9, "relu2": 0.1}),
             "dead_units", "relu1", 0),
    RuleCase("dead_relu_below_threshold", _repeat(9, grad=HEALTHY_GRADS, act_dead_frac={"relu1": 0.69}), None),
    RuleCase("zero_grad_needs_5_steps", _repeat(4, grad={"fc1": 0.5, "fc2": 0.0, "fc3": 0.5}), None),
    # saturation is judged once 10 losses were seen (records 9 and 10 hold: step 9); a flat loss
    RuleCase("saturation", _repeat(12, grad=HEALTHY_GRADS, act_sat_frac={"relu1": NAN, "relu2": 0.8}, loss=1.0),
             "saturation", "relu2", 9),
    RuleCase("saturation_with_a_falling_loss_is_learning",
             lambda: [rec(i, grad=HEALTHY_GRADS, act_sat_frac={"relu2": 0.8}, loss=2.0 ** -i) for i in range(12)],
             None),
    RuleCase("relu6_zeros_are_not_saturation",
             _repeat(5, grad=HEALTHY_GRADS, act_sat_frac={"relu1": 0.62}, act_zero_frac={"relu1": 0.61}), None),
    # one layer moved by more than its own norm, the others not: that layer (reported at once)
    RuleCase("update_ratio_high", _repeat(3, grad=HEALTHY_GRADS, update_ratio={"fc1": 0.2, "fc2": 1.5, "fc3": 1e-3}),
             "update_ratio", "fc2", 0),
    RuleCase("update_ratio_high_one_measurement",
             lambda: [rec(i, grad=HEALTHY_GRADS, update_ratio={"fc1": 1e-3, "fc2": 1.0 if i == 0 else 0.05,
                                                                "fc3": 1e-3}) for i in range(4)],
             "update_ratio", "fc2", 0),
    # most layers above (a learning rate too high for the whole model): global
    RuleCase("update_ratio_high_everywhere_is_global",
             _repeat(1, grad=HEALTHY_GRADS, update_ratio={"fc1": 0.5, "fc2": 1.4, "fc3": 1.2}),
             "update_ratio", None, 0),
    # the healthy corpus' largest single ratio (0.56, SGD on targets ~1e2), on every step: no warning
    RuleCase("update_ratio_below_one_is_fine",
             _repeat(6, grad=HEALTHY_GRADS, update_ratio={"fc1": 0.56, "fc2": 0.56, "fc3": 0.99}), None),
    RuleCase("update_ratio_ignores_zero_initialised_layers",
             lambda: [rec(i, grad=HEALTHY_GRADS, weight_norm={"fc1": 4.0, "fc3": 0.01 * i},
                          update_ratio={"fc1": 1e-3, "fc3": 1.0 / max(i, 1)}) for i in range(6)], None),
    RuleCase("update_ratio_low_is_info_only", _repeat(5, grad=HEALTHY_GRADS,
                                                      update_ratio={"fc1": 1e-9, "fc2": 1e-9, "fc3": 1e-9}), None),
    RuleCase("update_ratio_not_measured", _repeat(5, grad=HEALTHY_GRADS, update_ratio={"fc1": NAN}), None),
    RuleCase("divergence", lambda: [rec(i, grad=HEALTHY_GRADS, loss=1.0 if i < 5 else 500.0) for i in range(8)],
             "divergence", None, 5),
    # only the loss is non-finite (every gradient finite): first seen in the loss, named at the
    # output layer whose values it takes
    RuleCase("divergence_nonfinite_loss", lambda: [rec(0, grad=HEALTHY_GRADS, loss=math.inf)], "nonfinite", "fc3", 0),
    RuleCase("falling_loss_is_fine", lambda: [rec(i, grad=HEALTHY_GRADS, loss=10.0 / (i + 1)) for i in range(20)], None),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rule_case(case):
    findings = [f for f in diagnose(case.records()) if f.severity != "info"]
    if case.kind is None:
        assert findings == []
        return
    match = [f for f in findings if f.kind == case.kind]
    assert match, [str(f) for f in findings]
    f = match[0]
    assert (f.layer, f.step) == (case.layer, case.step), str(f)
    assert f.message and str(f.threshold) in (str(f.threshold),)


def test_finding_reported_once_then_updated():
    diag = Diagnoser()
    grads = {"fc1": 1e-6, "fc2": 1e-2, "fc3": 1.0}
    new = [diag.update(rec(i, grad=grads)) for i in range(10)]
    assert [len(n) for n in new] == [0, 0, 1] + [0] * 7
    (f,) = diag.findings
    assert (f.step, f.last_step) == (0, 9)
    diag.update(rec(10, grad={"fc1": 1e-8, "fc2": 1e-2, "fc3": 1.0}))
    assert f.last_step == 10 and f.value == pytest.approx(1e-8)
    assert len(diag.findings) == 1


def test_gap_restarts_the_window():
    bad = {"fc1": 1e-6, "fc2": 1e-2, "fc3": 1.0}
    seq = [bad, bad, HEALTHY_GRADS, bad, bad, HEALTHY_GRADS, bad, bad, bad]
    findings = diagnose([rec(i, grad=g) for i, g in enumerate(seq)])
    assert [(f.kind, f.step) for f in findings] == [("vanishing", 6)]


def test_severity_escalates_in_place():
    diag = Diagnoser()
    for i in range(8):
        diag.update(rec(i, grad=HEALTHY_GRADS, loss=1.0 if i < 5 else 1e3))
    (f,) = diag.findings
    assert (f.kind, f.severity, f.step) == ("divergence", "warning", 5)
    new = diag.update(rec(8, grad=HEALTHY_GRADS, loss=math.inf))
    assert [x.kind for x in new] == ["nonfinite"]  # a new kind; divergence is updated, not repeated
    div = [x for x in diag.findings if x.kind == "divergence"]
    assert len(div) == 1 and div[0] is f
    assert (f.severity, f.last_step) == ("error", 8) and "diverged" in f.message


def test_thresholds_override_changes_the_verdict():
    records = [rec(i, grad={"fc1": 1e-6, "fc2": 1e-2, "fc3": 1.0}) for i in range(3)]
    assert diagnose(records)
    assert not diagnose(records, thresholds={"vanishing_ratio": 1e-7})
    assert diagnose(records[:1], thresholds={"persist_steps": 1})


def test_every_threshold_cites_a_source():
    for name, t in THRESHOLDS.items():
        assert t.source and t.meaning, name
        assert any(s in t.source for s in ("AUTOTRAINER", "CS231n", "SageMaker", "ours", "torch")), name
    used = set()
    for cls in DEFAULT_RULES:
        used.add(cls.window)
    assert used <= set(THRESHOLDS)


@pytest.mark.parametrize(
    "thresholds, exc, match",
    [
        ([("vanishing_ratio", 1.0)], TypeError, "mapping"),
        ({"vanishing_ration": 1.0}, ValueError, "unknown threshold 'vanishing_ration'"),
        ({"vanishing_ratio": "small"}, TypeError, "expects a number, got str"),
        ({"vanishing_ratio": True}, TypeError, "expects a number, got bool"),
        ({"vanishing_ratio": math.nan}, ValueError, "finite number"),
        ({"vanishing_ratio": -1}, ValueError, "finite number"),
    ],
    ids=["not_a_mapping", "unknown_name", "string", "bool", "nan", "negative"],
)
def test_bad_thresholds(thresholds, exc, match):
    with pytest.raises(exc, match=match):
        Diagnoser(thresholds)


def test_bad_update_and_rules():
    with pytest.raises(TypeError, match=r"update\(record=...\) expects a StepRecord, got dict"):
        Diagnoser().update({"step": 0})
    with pytest.raises(TypeError, match="Rule subclasses"):
        Diagnoser(rules=[object])


def test_custom_rule_runs_with_the_engine():
    from gradlens.diagnose.rules import Condition

    class NegativeLoss(Rule):
        kind = "negative_loss"

        def check(self, record):
            if record.loss is not None and record.loss < 0:
                return [Condition("", None, record.loss, 0.0, "warning", "negative loss")]
            return []

    diag = Diagnoser(rules=[NegativeLoss])
    for i in range(3):
        diag.update(rec(i, loss=-1.0))
    assert [(f.kind, f.step) for f in diag.findings] == [("negative_loss", 0)]


def test_empty_and_sparse_records_raise_nothing():
    records = [StepRecord(0, []), StepRecord(1, ["a"], {"grad_norm": {"a": NAN}}),
               StepRecord(2, ["a", "b"], {"grad_norm": {"b": 1.0}, "act_dead_frac": {}})]
    assert diagnose(records) == []


def test_steps_without_the_measurement_keep_the_window():
    # update ratios measured every 3rd logged step only (NaN, or an infinite ratio, in between:
    # not a measurement): the condition (tiny updates, a window of 2 measurements) still persists
    records = [
        rec(i, grad=HEALTHY_GRADS, update_ratio={"fc1": 1e-9 if i % 3 == 0 else (NAN, math.inf)[i % 2]})
        for i in range(9)
    ]
    findings = diagnose(records)
    assert [(f.kind, f.step, f.last_step) for f in findings] == [("update_ratio", 0, 6)]
    assert findings[0].last_step == 6  # reported at the 2nd measurement (step 3), updated at 6
    # a loss given only now and then: divergence still needs its window of observed steps
    records = [rec(i, grad=HEALTHY_GRADS, loss=(1.0 if i < 10 else 1e3) if i % 2 == 0 else None)
               for i in range(20)]
    assert [(f.kind, f.step) for f in diagnose(records)] == [("divergence", 10)]


def test_nan_weights_silence_the_other_rules():
    # NaN weights: saturation/dead statistics computed on NaN outputs are garbage
    records = [rec(i, grad=HEALTHY_GRADS, weight_norm={"fc1": math.inf}, loss=NAN,
                   act_sat_frac={"relu1": 1.0}, act_dead_frac={"relu2": 1.0}) for i in range(5)]
    assert sorted(f.kind for f in diagnose(records)) == ["divergence", "nonfinite"]
