"""Cadences: every=N does no per-parameter work on unlogged steps; histograms and the
gradient-flow figure on their own cadence (the figure itself: tests/sinks/test_figure.py)."""

from __future__ import annotations


import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradlens
from gradlens import _tags
from gradlens.monitor import stats as _stats
from watch_helpers import mlp, train


def test_unlogged_steps_do_no_statistics(monkeypatch):
    calls = {"grad": 0, "act": 0}
    grad_stats, act_stats = _stats.grad_stats, _stats.activation_stats

    def count_grad(*a, **k):
        calls["grad"] += 1
        return grad_stats(*a, **k)

    def count_act(*a, **k):
        calls["act"] += 1
        return act_stats(*a, **k)

    monkeypatch.setattr(_stats, "grad_stats", count_grad)
    monkeypatch.setattr(_stats, "activation_stats", count_act)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, every=5, activations=1) as mon:
        train(model, opt, 10)
    assert [r.step for r in mon.records()] == [0, 5]
    assert calls["grad"] == 2  # one fused call per logged step (one device/dtype group)
    assert calls["act"] == 2 * 5  # 5 traced modules (Linear, ReLU, Linear, Tanh, Linear)


def test_activation_trace_only_on_logged_steps():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, every=2, activations=1) as mon:
        train(model, opt, 4)
    recs = mon.records()
    assert [r.step for r in recs] == [0, 2]
    assert all("act_mean" in r.stats for r in recs)


def test_activations_true_traces_every_tenth_logged_step():
    from gradlens.monitor.monitor import ACTIVATIONS_EVERY

    assert ACTIVATIONS_EVERY == 10
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, every=2, activations=True) as mon:
        train(model, opt, 42)
    traced = [r.step for r in mon.records() if "act_mean" in r.stats]
    assert traced == [0, 20, 40]  # logged steps 0, 10, 20 (every=2)
    layer = mon.dataframe("layer")
    assert layer.loc[layer.step == 20, "act_mean"].notna().any()
    assert layer.loc[layer.step == 22, "act_mean"].isna().all()


def test_histograms_on_their_own_cadence(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path, histogram_every=2):
        train(model, opt, 5)
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    hist = acc.Histograms("grad_hist/2.weight")
    assert [h.step for h in hist] == [0, 2, 4]
    assert hist[0].histogram_value.num == 8 * 8


def test_no_histograms_by_default(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path):
        train(model, opt, 2)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["histograms"] == []


def test_flow_image_on_cadence(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path, flow_every=3):
        train(model, opt, 7)
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    steps = [e.step for e in acc.Images(_tags.FLOW_TAG)]
    assert steps == [2, 5, 6]  # every 3 logged steps, and a final one at close
    img = acc.Images(_tags.FLOW_TAG)[-1]
    assert img.width == 350  # the labelled figure, as wide as an IMAGES card, not a 28-pixel strip


def test_param_scalars_are_opt_in(tmp_path):
    # the tag budget: per-layer series by default, per-parameter ones when asked for
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for name, kw in (("default", {}), ("on", dict(param_scalars=True))):
        with gradlens.watch(model, opt, logdir=tmp_path / name, **kw):
            train(model, opt, 1)
    tags = {}
    for name in ("default", "on"):
        acc = EventAccumulator(str(tmp_path / name))
        acc.Reload()
        tags[name] = acc.Tags()["scalars"]
    assert not any(t.startswith("param/") for t in tags["default"])
    assert any(t.startswith("param/") for t in tags["on"])
    assert set(tags["default"]) < set(tags["on"])


def test_activations_on_their_own_cadence():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, every=2, activations=3) as mon:
        train(model, opt, 13)
    recs = mon.records()
    assert [r.step for r in recs] == [0, 2, 4, 6, 8, 10, 12]
    assert [r.step for r in recs if "act_mean" in r.stats] == [0, 6, 12]
    assert all("grad_norm" in r.stats for r in recs)
