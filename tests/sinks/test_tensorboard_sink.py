"""The TensorBoard sink's tag budget, flow image and overview, read back with TensorBoard's reader."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import gradlens
from gradlens import _tags
from gradlens._record import SIGNAL_STATS, StepRecord
from gradlens.report import load_run
from gradlens.sinks.tensorboard import TensorBoardSink


def _cnn10():
    """A 10-layer CNN (8 conv + 2 linear, weight and bias each: 20 parameters)."""
    convs = [nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(8)]
    layers = []
    for c in convs:
        layers += [c, nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(model, logdir, steps=3, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradlens.watch(model, opt, logdir=logdir, **kw) as mon:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(torch.randn(2, 3, 8, 8)).square().mean()
            mon.observe_loss(loss)
            loss.backward()
            opt.step()
    return mon


def _acc(path):
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_tag_budget_of_a_10_layer_cnn(tmp_path):
    _train(_cnn10(), tmp_path / "lean", param_scalars=False)
    _train(_cnn10(), tmp_path / "full", param_scalars=True)
    lean, full = (_acc(tmp_path / d) for d in ("lean", "full"))
    tags = lean.Tags()["scalars"]
    # 10 layers x (4 log10 norms + 2 counts) + the loss + the 10 model-output signals
    assert len(SIGNAL_STATS) == 10
    assert len(tags) == 61 + 10, len(tags)
    assert len(full.Tags()["scalars"]) == 61 + 10 + 20 * 6
    # counts are written once on a healthy run, the norms at every step
    assert [len(lean.Scalars(t)) for t in tags if t.startswith(("nonfinite/", "missing_grad/"))] == [1] * 20
    assert all(len(lean.Scalars(t)) == 3 for t in tags if "_log10/" in t and "update_ratio" not in t)
    # nothing the report needs is lost: the same findings and layer table from both runs
    a, b = load_run(str(tmp_path / "lean")), load_run(str(tmp_path / "full"))
    assert a.layers == b.layers and len(a.layers) == 10
    assert a.layer_table()[["layer", "first_step", "last_step"]].equals(b.layer_table()[["layer", "first_step", "last_step"]])


def test_tags_sort_input_side_first(tmp_path):
    _train(_cnn10(), tmp_path, steps=1)
    tags = sorted(t for t in _acc(tmp_path).Tags()["scalars"] if t.startswith("grad_norm_log10/"))
    names = [_tags.parse_tag(t)[2] for t in tags]
    assert names == ["0", "2", "4", "6", "8", "10", "12", "14", "17", "19"]  # sorted by name = input order


def test_flow_image_is_the_figure_and_overview_matches_the_report(tmp_path):
    from PIL import Image

    rec = [StepRecord(s, ["in", "mid", "out"],
                      {"grad_norm": {"in": 1e-7 * (s + 1), "mid": 1e-3, "out": 2.0 - s / 10},
                       "nonfinite": {"in": 0.0, "mid": 0.0, "out": 0.0}}) for s in range(12)]
    rec[7].stats["grad_norm"]["mid"] = math.inf
    rec[7].stats["nonfinite"]["mid"] = 5.0
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)), owns_writer=True, flow_every=5)
    for r in rec:
        sink.write(r)
    expected = np.asarray(sink.figure())
    overview = sink.overview()
    sink.close()
    acc = _acc(tmp_path)
    images = acc.Images(_tags.FLOW_TAG)
    assert [e.step for e in images] == [4, 9, 11]  # every 5 logged steps and at close
    last = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"))
    assert (last == expected).all()
    texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(_tags.OVERVIEW_TAG + "/text_summary")]
    assert len(texts) == 3 and texts[-1] == overview
    # the overview's first/last norms are the report's, read back independently
    table = load_run(str(tmp_path)).layer_table()
    lines = [l for l in overview.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [l.split(" | ")[1] for l in lines] == table["layer"].tolist() == ["in", "mid", "out"]
    from gradlens.diagnose.rules.base import fmt

    for line, row in zip(lines, table.to_dict("records")):
        cells = line.split(" | ")
        assert cells[2] == fmt(row["first"], digits=2) and cells[3] == fmt(row["last"], digits=2)
    assert "!" in lines[1]  # the non-finite step shows in mid's trend
    assert "12 logged steps (0..11), 3 layers" in overview


def test_default_param_scalars_off_and_signature():
    sink = TensorBoardSink(_NullWriter())
    assert sink.param_scalars is False
    sink = TensorBoardSink(_NullWriter(), param_scalars=True, flow_every=0, owns_writer=False)
    sink.write(StepRecord(0, ["a"], {"grad_norm": {"a": 1.0}}, {"grad_norm": {"a.weight": 1.0}}))
    assert "param/grad_norm_log10/a.weight" in sink.writer.tags


class _NullWriter:
    """A writer without torch's file writer: the sink falls back to add_scalar and friends."""

    def __init__(self):
        self.tags = []

    def add_scalar(self, tag, value, step):
        self.tags.append(tag)

    def add_text(self, *a, **k):
        pass

    add_image = add_custom_scalars = flush = close = add_text


def test_other_writers_get_add_scalar_and_the_layout_dict():
    w = _NullWriter()
    layouts = []
    w.add_custom_scalars = layouts.append
    sink = TensorBoardSink(w, flow_every=1)
    sink.write(StepRecord(0, ["a", "b"], {"grad_norm": {"a": 0.0, "b": 1.0}, "nonfinite": {"a": 0, "b": 0}}))
    sink.close()
    assert w.tags == ["grad_norm_log10/00:a", "grad_norm_log10/01:b", "nonfinite/00:a", "nonfinite/01:b"]
    assert layouts == [{"gradlens": {"grad_norm (log10)": ["Multiline", ["^grad_norm_log10/"]],
                                     "nonfinite": ["Multiline", ["^nonfinite/"]],
                                     "loss": ["Multiline", ["^gradlens/loss$"]]}}]


def test_zero_and_nonfinite_norms_in_log10(tmp_path):
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)), owns_writer=True, flow_every=0)
    sink.write(StepRecord(0, ["a", "b", "c", "d"], {"grad_norm": {"a": 0.0, "b": math.inf, "c": math.nan, "d": 1e-30}}))
    sink.close()
    acc = _acc(tmp_path)
    v = {t: acc.Scalars(t)[0].value for t in acc.Tags()["scalars"]}
    assert v["grad_norm_log10/00:a"] == -math.inf and v["grad_norm_log10/01:b"] == math.inf
    assert math.isnan(v["grad_norm_log10/02:c"]) and v["grad_norm_log10/03:d"] == pytest.approx(-30)
    rec = load_run(str(tmp_path)).records[0]
    assert rec.get("grad_norm", "a") == 0.0 and rec.get("grad_norm", "b") == math.inf
    assert rec.get("grad_norm", "d") == pytest.approx(1e-30, rel=1e-6)


def test_a_row_seen_on_some_steps_only_does_not_move_the_other_layers_series(tmp_path):
    # the default saturation probe gives the Tanh a row on probed steps only (every 10th
    # logged step); each layer's series must stay one tag from the first step to the last
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, logdir=tmp_path) as mon:
        for _ in range(12):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
    assert {tuple(r.layers) for r in mon.records()} == {("0", "1", "2"), ("0", "2")}  # the set does change
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    for layer in ("0", "2"):
        tags = [t for t in acc.Tags()["scalars"] if (_tags.decode_tag(t) or (None,) * 3)[1:3] == ("grad_norm", layer)]
        assert len(tags) == 1, tags
        assert [e.step for e in acc.Scalars(tags[0])] == list(range(12))
