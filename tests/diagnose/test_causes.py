"""Root-cause links and urgent conditions: a finding that follows another names it.

Record-level cases (hand-built StepRecords with known answers) and their fixed
twins, then end to end through ``gradlens.watch`` on real models: a deep ReLU stack
with an oversized init and a ReLU RNN with recurrent spectral radius 3 have finite
but huge gradients at step 0 and NaN at step 1.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens._record import StepRecord
from gradlens.diagnose import Diagnoser, Finding, diagnose
from gradlens.diagnose.engine import CAUSES

from diag_scenarios import ReluRNN, quiet

NAN = math.nan
LAYERS = ["fc1", "relu1", "fc2", "relu2", "fc3"]
HEALTHY_GRADS = {"fc1": 0.5, "fc2": 0.4, "fc3": 0.3}
W = {"fc1": 4.0, "fc2": 4.0, "fc3": 2.0}


def rec(step, grad, *, weight_norm=W, loss=None, **stats):
    s = {"grad_norm": dict(grad), "weight_norm": dict(weight_norm)}
    s.update({k: dict(v) for k, v in stats.items()})
    return StepRecord(step, list(LAYERS), s, loss=loss)


def huge(step, g=1e12, **kw):
    """Finite gradients 1e12 against weights ~4: ||g||/||W|| 2.5e11, far past 100 * 100."""
    return rec(step, {"fc1": g, "fc2": g, "fc3": g / 10}, **kw)


def nan_step(step):
    return rec(step, {"fc1": NAN, "fc2": NAN, "fc3": NAN}, nonfinite={"fc1": 5, "fc2": 5, "fc3": 5}, loss=NAN)


def kinds(findings):
    return [(f.kind, f.step) for f in findings if f.severity != "info"]


# --- urgent: reported at once --------------------------------------------------------
def test_an_urgent_explosion_is_reported_at_its_first_step():
    diag = Diagnoser()
    new = diag.update(huge(0))
    assert [(f.kind, f.step) for f in new] == [("exploding", 0)]
    assert "at once" in new[0].evidence["reported"]


def test_a_mild_explosion_still_waits_for_its_window():
    # ||g||/||W|| = 500: 5x past the threshold, not urgent
    records = [rec(i, {"fc1": 2000.0, "fc2": 2000.0, "fc3": 200.0}) for i in range(3)]
    diag = Diagnoser()
    assert [diag.update(r) for r in records][:2] == [[], []]
    assert kinds(diag.findings) == [("exploding", 0)]


def test_urgent_factor_zero_turns_the_urgent_path_off():
    assert kinds(diagnose([huge(0)], thresholds={"urgent_factor": 0})) == []
    assert kinds(diagnose([huge(0), huge(1), huge(2)], thresholds={"urgent_factor": 0})) == [("exploding", 0)]


# --- links ---------------------------------------------------------------------------
def test_a_nan_after_an_urgent_explosion_links_to_it_and_takes_its_advice():
    findings = diagnose([huge(0, update_ratio={"fc2": 1e10}), nan_step(1)])
    assert kinds(findings) == [("exploding", 0), ("update_ratio", 0), ("nonfinite", 1)]
    nan = next(f for f in findings if f.kind == "nonfinite")
    exploding = next(f for f in findings if f.kind == "exploding")
    assert nan.cause is exploding  # the earliest live cause; exploding before update_ratio on ties
    # named where the gradient grows (fc3 -> fc2: 10x), with that layer's numbers
    assert "after exploding gradients at step 0 (||g|| 1.0e+12, update ratio 1.0e+10 at 'fc2')" in nan.message
    assert "log/sqrt" not in nan.message and "clip gradients" in nan.message
    assert str(nan).startswith("[error] nonfinite at fc1, step 1: NaN/Inf in")
    assert nan.to_dict()["cause"] == {"kind": "exploding", "layer": "fc2", "step": 0}
    assert exploding.cause is None and exploding.to_dict()["cause"] is None


def test_fixed_twin_a_nan_without_an_explosion_keeps_its_own_advice():
    findings = diagnose([rec(0, HEALTHY_GRADS), nan_step(1)])
    assert kinds(findings) == [("nonfinite", 1)]
    nan = next(f for f in findings if f.kind == "nonfinite")
    assert nan.cause is None and "after" not in nan.message and "log/sqrt" in nan.message


def test_a_pending_condition_is_not_promoted_by_a_nan():
    # a mild explosion (not urgent) at step 0, NaN at step 1: the explosion never
    # held its window, so it is not reported and the NaN has no cause
    findings = diagnose([rec(0, {"fc1": 2000.0, "fc2": 2000.0, "fc3": 200.0}), nan_step(1)])
    assert [f.kind for f in findings if f.kind != "divergence"] == ["nonfinite"]
    assert findings[0].cause is None


def test_an_info_condition_pending_before_a_nan_stays_pending():
    # SGD at lr 0: "updates are tiny" is pending (info, 2 measurements) when the NaN comes
    records = [rec(0, {"fc1": NAN, "fc2": 0.4, "fc3": 0.3}, nonfinite={"fc1": 1},
                   update_ratio={"fc1": 0.0, "fc2": 0.0, "fc3": 0.0})]
    assert [f.kind for f in diagnose(records)] == ["nonfinite"]


def test_a_cause_that_ended_long_before_is_not_linked():
    records = [huge(0), huge(1)] + [rec(i, HEALTHY_GRADS) for i in range(2, 10)] + [nan_step(10)]
    nan = next(f for f in diagnose(records) if f.kind == "nonfinite")
    assert nan.cause is None


def test_an_urgent_update_ratio_is_a_cause_too():
    findings = diagnose([rec(0, HEALTHY_GRADS, update_ratio={"fc1": 50.0, "fc2": 1e-3, "fc3": 1e-3}), nan_step(1)])
    ur = next(f for f in findings if f.kind == "update_ratio")
    nan = next(f for f in findings if f.kind == "nonfinite")
    assert ur.step == 0 and nan.cause is ur
    assert "after updates too large at step 0 (||dW||/||W|| 50 at 'fc1'): lower the learning rate" in nan.message


def test_a_global_update_ratio_is_linked_with_its_largest_layer():
    # every layer moved by more than its norm (a learning rate too high for the model): the
    # finding has no layer, and what follows it still says where the updates were largest
    findings = diagnose([rec(0, HEALTHY_GRADS, update_ratio={"fc1": 2.0, "fc2": 5.0, "fc3": 1.5}), nan_step(1)])
    ur = next(f for f in findings if f.kind == "update_ratio")
    nan = next(f for f in findings if f.kind == "nonfinite")
    assert ur.layer is None and ur.evidence["largest"] == "fc2" and ur.evidence["median_update_ratio"] == 2.0
    assert nan.cause is ur
    assert "after updates too large at step 0 (||dW||/||W|| 5 at 'fc2'): lower the learning rate" in nan.message


def test_the_link_survives_the_finding_being_updated():
    diag = Diagnoser()
    for r in [huge(0), nan_step(1), nan_step(2), nan_step(3)]:
        diag.update(r)
    nan = next(f for f in diag.findings if f.kind == "nonfinite")
    assert nan.last_step == 3 and nan.cause is not None and "after exploding gradients" in nan.message


def test_the_causes_table_names_known_kinds_and_has_no_two_way_link():
    for effect, causes in CAUSES.items():
        for c in causes:
            assert effect not in CAUSES.get(c, ()), (effect, c)


def test_finding_cause_is_optional_and_backward_compatible():
    f = Finding("vanishing", "fc1", 0, "warning", 1e-6, "gradients vanish")
    assert f.cause is None and f.to_dict()["cause"] is None
    g = Finding("nonfinite", "fc1", 1, "error", NAN, "NaN", cause=f)
    assert g.to_dict()["cause"] == {"kind": "vanishing", "layer": "fc1", "step": 0}
    assert "cause" not in repr(g)  # no recursive repr


# --- end to end ----------------------------------------------------------------------
def _relu_stack(gain):
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, gain / m.in_features ** 0.5)
                m.bias.zero_()
    g = torch.Generator().manual_seed(0)
    return model, torch.randn(64, 32, generator=g), torch.randint(0, 4, (64,), generator=g)


def _rnn(radius):
    torch.manual_seed(4)
    model = ReluRNN(radius)
    g = torch.Generator().manual_seed(4)
    return model, torch.randn(64, 40, 8, generator=g), torch.randint(0, 4, (64,), generator=g)


def _train(model, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    reported = {}
    step_no = [0]
    with quiet():
        with gradlens.watch(model, opt, on_finding=lambda f: reported.setdefault(f.kind, step_no[0])) as mon:
            for i in range(steps):
                step_no[0] = i
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                mon.observe_loss(loss)
                loss.backward()
                opt.step()
    return mon.findings, reported


@pytest.mark.parametrize("build, culprits", [
    pytest.param(lambda: _relu_stack(8.0), None, id="deep_relu_oversized_init"),
    pytest.param(lambda: _rnn(3.0), {"inp", "rnn"}, id="relu_rnn_radius_3"),
])
def test_end_to_end_exploding_at_step_0_then_a_nan_linked_to_it(build, culprits):
    findings, reported = _train(*build(), steps=4)
    exploding = next(f for f in findings if f.kind == "exploding")
    nan = next(f for f in findings if f.kind == "nonfinite")
    assert (exploding.step, reported["exploding"]) == (0, 0)  # urgent: reported at step 0
    assert (nan.step, reported["nonfinite"]) == (1, 1)
    assert nan.cause is exploding
    assert "after exploding gradients at step 0 (||g|| " in nan.message
    assert "log/sqrt" not in nan.message and "lower the learning rate" in nan.message
    if culprits:
        assert exploding.layer in culprits


@pytest.mark.parametrize("build", [
    pytest.param(lambda: _relu_stack(2 ** 0.5), id="deep_relu_he_init"),
    pytest.param(lambda: _rnn(0.9), id="relu_rnn_radius_0_9"),
])
def test_end_to_end_fixed_twins_raise_nothing(build):
    findings, _ = _train(*build(), steps=12)
    assert [str(f) for f in findings if f.is_problem] == []


def test_gradlens_report_prints_the_link_and_its_json_carries_the_cause(tmp_path, capsys):
    import json

    from torch.utils.tensorboard import SummaryWriter

    from diag_events import write_records
    from gradlens import cli

    records = [huge(0, update_ratio={"fc2": 1e10}), nan_step(1), nan_step(2)]
    with SummaryWriter(str(tmp_path)) as w:
        write_records(w, records)
    assert cli.main(["report", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "nonfinite at" in x)
    assert "after exploding gradients at step 0 (||g|| 1.0e+12" in line and "log/sqrt" not in line
    assert cli.main(["report", str(tmp_path), "--json"]) == 1
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    nan = next(f for f in run["findings"] if f["kind"] == "nonfinite")
    assert nan["cause"] == {"kind": "exploding", "layer": "fc2", "step": 0}


def test_a_cause_reported_after_its_effect_is_linked_late():
    # gradients 1e12 from step 0 (urgent: reported at once) under a layer oversized since
    # step 0 (reported after its 3-step window): the explosion links to it at step 2
    w = {"fc1": 4.0, "fc2": 4.0, "fc3": 4e4}
    diag = Diagnoser()
    reports = [[f.kind for f in diag.update(huge(i, weight_norm=w))] for i in range(3)]
    assert reports == [["exploding"], [], ["scale"]]
    exploding, scale = diag.findings
    assert exploding.cause is scale and "after weights out of scale at step 0" in exploding.message
    assert scale.cause is None
    # fixed twin: the same explosion under weights in scale has no cause
    twin = diagnose([huge(i) for i in range(3)])
    assert [f.cause for f in twin] == [None]
