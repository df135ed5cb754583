"""The ``saturation`` rule: planted saturated layers against their fixed twins (records
written by hand, and small models trained under default ``watch``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradlens._record import StepRecord
from gradlens.diagnose import diagnose

from diag_scenarios import train_watched

LAYERS = ["fc1", "tanh1", "fc2", "out"]
GRADS = {"fc1": 0.5, "fc2": 0.4, "out": 0.3}


def _rec(step, *, sat=None, zero=None, loss=None, signals=None):
    stats = {"grad_norm": dict(GRADS)}
    if sat is not None:
        stats["act_sat_frac"] = dict(sat)
    if zero is not None:
        stats["act_zero_frac"] = dict(zero)
    return StepRecord(step, list(LAYERS), stats, loss=loss, signals=dict(signals or {}))


def _warnings(records):
    return [f for f in diagnose(records) if f.kind == "saturation" and f.severity != "info"]


def _probed(n, frac, loss, every=10, layer="tanh1", **kw):
    """n records; act_sat_frac of ``layer`` on every ``every``-th one (the default probe)."""
    return [_rec(i, sat={layer: frac} if i % every == 0 else None, loss=loss(i), **kw) for i in range(n)]


FLAT = lambda i: 1.0 + 0.1 * (i % 3)  # noqa: E731 - batch noise around a flat level
FALLING = lambda i: 2.0 * 0.7 ** i  # noqa: E731 - a net that learns: 2.0 -> 0.06 in 10 steps
RISING = lambda i: 0.7 + 0.5 * i  # noqa: E731 - diverging


@pytest.mark.parametrize("loss, found", [(FLAT, True), (RISING, True), (FALLING, False)],
                         ids=["flat_loss", "rising_loss", "fixed_twin_learns"])
def test_hidden_saturation_is_reported_only_when_the_loss_does_not_fall(loss, found):
    got = _warnings(_probed(31, 0.9, loss))
    if not found:
        assert got == []
        return
    (f,) = got
    # judged from step 10 (10 losses seen), held at the next probed step too: reported at 20
    assert (f.layer, f.step, f.last_step) == ("tanh1", 10, 30)
    assert f.evidence["feeding_layer"] == "fc1"
    assert f.evidence["series"] == "loss"
    assert f.value == pytest.approx(0.9)
    assert "'fc1'" in f.message


def test_the_finding_comes_at_the_second_judged_probe():
    records = _probed(31, 0.9, FLAT)
    reported = []
    from gradlens.diagnose.engine import Diagnoser

    d = Diagnoser()
    for r in records:
        reported += [(r.step, f.kind) for f in d.update(r)]
    assert ("saturation" in {k for _, k in reported}) and min(s for s, k in reported if k == "saturation") == 20


def test_the_loss_drop_threshold_is_the_boundary():
    # start level 1.0 (first 5 losses), recent level 0.55 / 0.45: a 45% drop is still flat, 55% learns
    for recent, found in ((0.55, True), (0.45, False)):
        records = [_rec(i, sat={"tanh1": 0.9} if i % 10 == 0 else None, loss=1.0 if i < 5 else recent)
                   for i in range(31)]
        assert bool(_warnings(records)) is found, recent


def test_below_the_fraction_nothing():
    assert _warnings(_probed(31, 0.49, FLAT)) == []


def test_relu6_zeros_are_not_saturation():
    records = [_rec(i, sat={"tanh1": 0.9} if i % 10 == 0 else None, zero={"tanh1": 0.6} if i % 10 == 0 else None,
                    loss=FLAT(i)) for i in range(31)]
    assert _warnings(records) == []  # 90% at the limits, 60% of them exact zeros: 30% saturated


def test_without_a_loss_the_output_gradient_norm_is_the_series():
    def records(g):
        return [_rec(i, sat={"tanh1": 0.9} if i % 10 == 0 else None,
                     signals={"output_grad_norm": g(i)} if i % 5 == 0 else None) for i in range(61)]

    flat = _warnings(records(lambda i: 3.0))
    assert [f.evidence["series"] for f in flat] == ["output-gradient norm"]
    assert _warnings(records(lambda i: 3.0 * 0.8 ** i)) == []


def test_with_no_series_at_all_only_info():
    found = [f for f in diagnose(_probed(31, 0.9, lambda i: None)) if f.kind == "saturation"]
    assert [f.severity for f in found] == ["info"]


def _output_records(frac, lo, hi, loss=FLAT):
    # no probed layer (a softmax output, or saturation=False): the output signals every 5th step
    return [StepRecord(i, list(LAYERS), {"grad_norm": dict(GRADS)}, loss=loss(i),
                       signals={"output_sat_frac": frac, "output_min": lo, "output_max": hi} if i % 5 == 0 else {})
            for i in range(31)]


def test_output_layer_from_the_output_signals():
    (f,) = _warnings(_output_records(0.95, 0.0, 1.0))
    assert f.layer == "out" and f.step == 10
    assert _warnings(_output_records(0.95, 0.0, 1.0, loss=FALLING)) == []  # a confident classifier


def test_a_constant_output_is_not_saturation():
    # a softmax over one unit: every output exactly 1 (dead_units' business)
    assert _warnings(_output_records(1.0, 1.0, 1.0)) == []


def test_output_layer_keeps_one_key_when_its_name_moves():
    # traced steps name the bounded module ('sig', last in the record), the others the last Linear
    layers = ["fc1", "out", "sig"]
    records = []
    for i in range(31):
        if i % 10 == 0:
            records.append(StepRecord(i, layers, {"grad_norm": {"fc1": 0.5, "out": 0.3}, "act_sat_frac": {"sig": 0.9}},
                                      loss=FLAT(i), signals={"output_sat_frac": 0.9, "output_min": 0.0, "output_max": 1.0}))
        else:
            records.append(StepRecord(i, layers[:2], {"grad_norm": {"fc1": 0.5, "out": 0.3}}, loss=FLAT(i)))
    (f,) = _warnings(records)
    assert f.layer == "sig"


def test_a_measurement_missing_on_a_record_keeps_the_count():
    # the output signals on another cadence than the probe: the output key is carried, not reset
    records = []
    for i in range(31):
        sig = {"output_sat_frac": 0.9, "output_min": 0.0, "output_max": 1.0} if i in (10, 30) else {}
        records.append(_rec(i, sat={"tanh1": 0.1} if i % 10 == 0 else None, loss=FLAT(i), signals=sig))
    (f,) = _warnings(records)
    assert f.layer == "out"


# --- end to end: default watch on planted models and their fixed twins ---------------------------
def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 16, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return x, y


def _train(model, opt, steps, x, y, **watch):
    mon = train_watched(model, opt, x, y, nn.functional.cross_entropy, steps, **watch)
    return [f for f in mon.findings if f.kind == "saturation" and f.is_problem]


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid], ids=["tanh", "sigmoid"])
@pytest.mark.parametrize("planted", [True, False], ids=["weights_x40", "fixed_twin"])
def test_default_watch_finds_a_saturated_hidden_layer(act, planted):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 32), act(), nn.Linear(32, 4))
    if planted:
        with torch.no_grad():
            model[0].weight.mul_(40.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _data()
    found = _train(model, opt, 30, x, y)
    if not planted:
        assert found == []
        return
    (f,) = found
    assert (f.layer, f.step) == ("1", 10) and f.evidence["feeding_layer"] == "0"


def test_a_saturated_net_that_learns_is_not_reported():
    # the shape of so48385830's fix: a sigmoid layer under N(0, 1) kernels (most units saturated)
    # and a large learning rate: the loss falls by orders of magnitude anyway
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 30), nn.Sigmoid(), nn.Linear(30, 4))
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight.normal_(0, 3)
            m.bias.normal_(0, 1)
    x, y = _data(1)
    x = x * 3
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    # (activations=1: the fraction every step)
    mon = train_watched(model, opt, x, y, nn.functional.cross_entropy, 30, activations=1)
    sat = [r.get("act_sat_frac", "1") for r in mon.records()]
    assert min(sat) >= 0.5  # saturated on every step (the plain-fraction rule warned)
    assert mon.records()[-1].loss < 0.5 * mon.records()[0].loss
    assert [f for f in mon.findings if f.kind == "saturation" and f.is_problem] == []


def test_output_layer_without_a_loss_is_only_info():
    records = [StepRecord(i, list(LAYERS), {"grad_norm": dict(GRADS)},
                          signals={"output_sat_frac": 0.95, "output_min": 0.0, "output_max": 1.0,
                                   "output_grad_norm": 3.0} if i % 5 == 0 else {}) for i in range(61)]
    found = [f for f in diagnose(records) if f.kind == "saturation"]
    assert [(f.layer, f.severity) for f in found] == [("out", "info")]


def test_once_probed_only_probed_records_are_judged():
    # the output signals every 5th step, the probe every 10th: the output is judged at 10 and 20
    # (the probe's steps), not at 15, so the finding comes at step 20
    from gradlens.diagnose.engine import Diagnoser

    d = Diagnoser()
    reported = []
    for i in range(31):
        sig = {"output_sat_frac": 0.9, "output_min": 0.0, "output_max": 1.0} if i % 5 == 0 else {}
        r = _rec(i, sat={"tanh1": 0.1} if i % 10 == 0 else None, loss=FLAT(i), signals=sig)
        reported += [(i, f.layer) for f in d.update(r) if f.kind == "saturation"]
    assert reported == [(20, "out")]
