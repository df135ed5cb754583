"""TensorBoard sink: values read back with TensorBoard's own EventAccumulator equal torch's."""

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


def test_scalars_read_back_equal_torch(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path, flow_every=2) as mon:
        refs = train(model, opt, 3, mon=mon)
    acc = _load(tmp_path)
    tags = acc.Tags()["scalars"]
    for step, ref in enumerate(refs):
        for name in ("0.weight", "4.bias"):
            ev = {e.step: e.value for e in acc.Scalars(_tags.param_tag("grad_norm", name))}
            assert ev[step] == pytest.approx(ref[name][0], rel=1e-6)
            ev = {e.step: e.value for e in acc.Scalars(_tags.param_tag("grad_max", name))}
            assert ev[step] == pytest.approx(ref[name][1], rel=1e-6)
        w, b = ref["2.weight"], ref["2.bias"]
        ev = {e.step: e.value for e in acc.Scalars(_tags.layer_tag("grad_norm", "2"))}
        assert ev[step] == pytest.approx(math.hypot(w[0], b[0]), rel=1e-6)
        ev = {e.step: e.value for e in acc.Scalars(_tags.LOSS_TAG)}
        assert ev[step] == pytest.approx(ref["loss"], rel=1e-6)
    assert _tags.layer_tag("weight_norm", "4") in tags
    # every layer/param tag parses back with the shared scheme
    for tag in tags:
        if tag != _tags.LOSS_TAG:
            assert _tags.parse_tag(tag) is not None, tag
    assert json.loads(_text(acc, _tags.LAYERS_TAG)[0]) == ["0", "2", "4"]
    assert _tags.FLOW_TAG in acc.Tags()["images"]


def test_custom_scalars_layout(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path):
        train(model, opt, 1)
    from tensorboard.plugins.custom_scalar import layout_pb2

    acc = _load(tmp_path)
    tensor_tags = acc.Tags()["tensors"]
    assert "custom_scalars__config__" in tensor_tags
    ev = acc.Tensors("custom_scalars__config__")[0]
    layout = layout_pb2.Layout()
    layout.ParseFromString(ev.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["grad_norm"] == ["^grad_norm/"]
    assert "out_grad_norm" in charts


def test_layers_text_rewritten_when_layer_set_changes(tmp_path):
    model = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path) as mon:
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
    assert "mine" in tags and "grad_norm/0" in tags
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
