"""TensorBoard sink: values read back with TensorBoard's own EventAccumulator equal torch's.

Norms are stored as log10 in float32: 10**value matches torch to ~1e-6 relative."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradlens
from gradlens import _tags
from watch_helpers import mlp, train


def _load(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def _text(acc, tag):
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag + "/text_summary")]


def _series(acc, tag, log10=False):
    return {e.step: (10.0 ** e.value if log10 else e.value) for e in acc.Scalars(tag)}


def test_scalars_read_back_equal_torch(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # (saturation=False: the tags' positions are those of the parameter layers; the probe's Tanh
    # row is tested in test_watch_activations.py)
    with gradlens.watch(model, opt, logdir=tmp_path, flow_every=2, param_scalars=True, saturation=False) as mon:
        refs = train(model, opt, 3, mon=mon)
    acc = _load(tmp_path)
    tags = acc.Tags()["scalars"]
    for step, ref in enumerate(refs):
        for name in ("0.weight", "4.bias"):
            ev = _series(acc, _tags.param_tag("grad_norm", name, log10=True), log10=True)
            assert ev[step] == pytest.approx(ref[name][0], rel=2e-6)
            ev = _series(acc, _tags.param_tag("grad_max", name, log10=True), log10=True)
            assert ev[step] == pytest.approx(ref[name][1], rel=2e-6)
        w, b = ref["2.weight"], ref["2.bias"]
        ev = _series(acc, "grad_norm_log10/01:2", log10=True)  # layer '2' is the second from the input
        assert ev[step] == pytest.approx(math.hypot(w[0], b[0]), rel=2e-6)
        ev = _series(acc, _tags.LOSS_TAG)
        assert ev[step] == pytest.approx(ref["loss"], rel=1e-6)
    assert "weight_norm_log10/02:4" in tags
    # counts: written at the first step, then only on change (here: never)
    assert sorted(_series(acc, "nonfinite/00:0")) == [0]
    assert sorted(_series(acc, "missing_grad/02:4")) == [0]
    # every layer/param tag parses back with the shared scheme
    for tag in tags:
        if tag != _tags.LOSS_TAG and _tags.decode_signal_tag(tag) is None:  # (signals: their own scheme)
            assert _tags.parse_tag(tag) is not None, tag
    assert json.loads(_text(acc, _tags.LAYERS_TAG)[0]) == ["0", "2", "4"]
    assert _tags.FLOW_TAG in acc.Tags()["images"]


def test_counts_written_again_when_they_change(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from gradlens._record import StepRecord
    from gradlens.sinks.tensorboard import TensorBoardSink

    counts = [0, 0, 3, 3, 0, math.nan, math.nan, 0]
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)), owns_writer=True, flow_every=0)
    for step, c in enumerate(counts):
        sink.write(StepRecord(step, ["a"], {"grad_norm": {"a": 1.0}, "nonfinite": {"a": c}}))
    sink.close()
    ev = _series(_load(tmp_path), "nonfinite/00:a")
    assert list(ev) == [0, 2, 4, 5, 7]  # first, each change (NaN counts as one value)
    assert [ev[s] for s in (0, 2, 4, 7)] == [0, 3, 0, 0] and math.isnan(ev[5])


def test_custom_scalars_layout(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path, activations=1):
        train(model, opt, 1)
    from tensorboard.plugins.custom_scalar import layout_pb2

    acc = _load(tmp_path)
    tensor_tags = acc.Tags()["tensors"]
    assert "custom_scalars__config__" in tensor_tags
    ev = acc.Tensors("custom_scalars__config__")[-1]
    layout = layout_pb2.Layout()
    layout.ParseFromString(ev.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert list(charts)[0] == "grad_norm (log10)"  # what a reader looks at first
    assert charts["grad_norm (log10)"] == ["^grad_norm_log10/"]
    assert charts["nonfinite"] == ["^nonfinite/"] and charts["loss"] == ["^gradlens/loss$"]
    assert "out_grad_norm (log10)" in charts and "act_dead_frac" in charts
    # every chart's regex matches at least one tag that was written
    import re

    tags = acc.Tags()["scalars"]
    for title, (regex,) in charts.items():
        if title != "loss":
            assert any(re.match(regex, t) for t in tags), title


def test_layers_text_rewritten_when_layer_set_changes(tmp_path):
    model = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path, saturation=False) as mon:  # (the layer set of the parameters)
        train(model, opt, 1)
        for p in model[0].parameters():  # unfreeze during fine-tuning
            p.requires_grad_(True)
        opt.add_param_group({"params": list(model[0].parameters())})
        train(model, opt, 1)
    acc = _load(tmp_path)
    texts = [json.loads(t) for t in _text(acc, _tags.LAYERS_TAG)]
    assert texts == [["2", "4"], ["0", "2", "4"]]
    assert mon.dataframe().query("step == 1").param.tolist()[:2] == ["0.weight", "0.bias"]


def test_user_writer_is_not_closed(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, writer=writer, param_scalars=False):
        train(model, opt, 1)
    writer.add_scalar("mine", 1.0, 0)  # still usable
    writer.close()
    tags = _load(tmp_path).Tags()["scalars"]
    assert "mine" in tags and "grad_norm_log10/00:0" in tags
    assert not any(t.startswith("param/") for t in tags)


class _BrokenWriter:
    def __init__(self):
        self.calls = 0

    def add_scalar(self, *a, **k):
        self.calls += 1
        raise OSError("No space left on device")

    add_text = add_image = add_custom_scalars = flush = close = add_scalar


def test_failing_writer_warns_once_training_goes_on():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    writer = _BrokenWriter()
    with pytest.warns(RuntimeWarning, match="sink failed") as rec:
        with gradlens.watch(model, opt, writer=writer) as mon:
            train(model, opt, 4)
    assert len([w for w in rec if "sink failed" in str(w.message)]) == 1
    assert writer.calls == 1  # quiet after the first failure
    assert sorted(mon.dataframe().step.unique()) == [0, 1, 2, 3]


def test_closed_writer_does_not_break_training(tmp_path):
    # torch's SummaryWriter reopens a file writer after close(); either way training goes on
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    writer.close()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, writer=writer) as mon:
        train(model, opt, 3)  # must not raise
    assert len(mon.dataframe()) == 18


def test_monitor_plot_is_the_reports_figure():
    from gradlens.sinks.figure import flow_figure

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        train(model, opt, 5)
        img = mon.plot()
    ref = flow_figure(mon.records(), mon.findings)
    assert img.size == ref.size and img.tobytes() == ref.tobytes()
