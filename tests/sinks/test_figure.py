"""The gradient-flow figure and the run overview: layout, colours, marks, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradlens._record import StepRecord
from gradlens.sinks import figure as fig
from gradlens.sinks.figure import FlowHistory, flow_figure
from gradlens.sinks.overview import overview_markdown, sparkline


class _F:  # a finding's fields, as the figure reads them
    def __init__(self, kind, layer, step, last_step, severity="warning", message="msg"):
        self.kind, self.layer, self.step, self.last_step = kind, layer, step, last_step
        self.severity, self.message = severity, message


def _records(n_steps=20, layers=("in", "mid", "out")):
    recs = []
    for s in range(n_steps):
        norms = {name: 10.0 ** (-6 + 3 * (i % 3)) for i, name in enumerate(layers)}  # 1e-6, 1e-3, 1, ...
        recs.append(StepRecord(s, list(layers), {"grad_norm": norms, "nonfinite": {n: 0.0 for n in layers}}))
    return recs


def _cell(img, layout, row, col):
    left, top, _right, _bottom = layout.plot
    x = (layout.col_edges[col] + layout.col_edges[col + 1]) // 2
    y = top + row * layout.row_h + layout.row_h // 2
    return tuple(int(v) for v in np.asarray(img)[y, x])


def test_layout_rows_columns_and_colour_scale():
    img, lay = fig._flow_figure(_records())
    left, top, right, bottom = lay.plot
    assert img.size == (lay.width, lay.height)
    assert right - left == fig.PLOT_WIDTH and bottom - top == 3 * lay.row_h
    assert len(lay.col_edges) == 21  # 20 steps, one column each
    assert (lay.lo, lay.hi) == (-6.0, 0.0)  # whole decades around the data
    # input side at the top: the smallest norm is the darkest end of the ramp, the largest the brightest
    assert _cell(img, lay, 0, 0) == tuple(fig._RAMP[0].astype(int))
    assert _cell(img, lay, 2, 19) == tuple(fig._RAMP[-1].astype(int))
    mid = _cell(img, lay, 1, 5)
    assert mid == tuple(int(round(v)) for v in fig._RAMP[4])  # -3 is half way up the ramp
    # the colour bar runs from the top colour (hi) to the bottom one (lo)
    arr = np.asarray(img)
    cb = lay.colorbar
    assert tuple(arr[cb[1], (cb[0] + cb[2]) // 2]) == tuple(fig._RAMP[-1].astype(int))
    assert tuple(arr[cb[3] - 1, (cb[0] + cb[2]) // 2]) == tuple(fig._RAMP[0].astype(int))
    # the labels column is not blank (the layer names are drawn)
    assert (arr[top:bottom, 12:left - 8] < 128).any()


def test_nonfinite_zero_and_missing_cells():
    recs = _records(6)
    recs[2].stats["grad_norm"]["mid"] = math.nan
    recs[3].stats["nonfinite"]["in"] = 4.0  # counted non-finite elements, norm still finite
    recs[4].stats["grad_norm"]["out"] = 0.0
    del recs[5].stats["grad_norm"]["in"]  # not logged
    img, lay = fig._flow_figure(recs)
    assert _cell(img, lay, 1, 2) == fig._NONFINITE_RGB
    assert _cell(img, lay, 0, 3) == fig._NONFINITE_RGB
    assert _cell(img, lay, 2, 4) == fig._ZERO_RGB
    assert _cell(img, lay, 0, 5) == fig._MISSING_RGB


def test_findings_are_boxed_at_their_layer_and_steps():
    recs = _records(10)
    plain, lay0 = fig._flow_figure(recs)
    img, lay = fig._flow_figure(recs, [_F("vanishing", "mid", 2, 5), _F("divergence", None, 8, 8)])
    arr, red = np.asarray(img), fig._FINDING_RGB
    left, top, right, bottom = lay.plot
    y_mid = top + lay.row_h  # top edge of row 1
    x0, x1 = lay.col_edges[2], lay.col_edges[6] - 1
    assert tuple(arr[y_mid, (x0 + x1) // 2]) == red  # box top edge over steps 2..5
    assert tuple(arr[y_mid + lay.row_h // 2, x0]) == red and tuple(arr[y_mid + lay.row_h // 2, x1]) == red
    assert tuple(arr[y_mid + lay.row_h // 2, lay.col_edges[7]]) != red  # step 7 is not marked
    # the global finding: its column over every row
    x8 = lay.col_edges[8]
    assert all(tuple(arr[y, x8]) == red for y in range(top + 2, bottom - 2, lay.row_h))
    # the findings are listed under the plot: the figure grows by two lines
    assert img.height > plain.height and img.width == plain.width


def test_long_runs_are_merged_pairwise_and_stay_whole():
    h = FlowHistory(max_columns=8)
    for s in range(100):
        norm = math.inf if s == 37 else 10.0 ** (s % 2)  # 1, 10, 1, 10, ...
        h.add(s, ["a"], {"a": norm})
    layers, spans, state, logv = h.grid()
    assert len(spans) <= 8 and spans[0][0] == 0 and spans[-1][1] == 99
    assert all(b + 1 == a for (_x, b), (a, _y) in zip(spans, spans[1:]))  # no step lost
    bad = [c for c, (a, b) in enumerate(spans) if a <= 37 <= b]
    assert state[0, bad[0]] == fig.NONFINITE  # one NaN/Inf step keeps its column non-finite
    good = [c for c in range(len(spans)) if c != bad[0]]
    assert all(logv[0, c] == pytest.approx(0.5) for c in good)  # geometric mean of 1 and 10
    assert h.first["a"] == (0, 1.0) and h.last["a"] == (99, 10.0)


def test_layer_set_change_keeps_every_layer():
    h = FlowHistory()
    h.add(0, ["b", "c"], {"b": 1.0, "c": 1.0})
    h.add(1, ["a", "b", "c"], {"a": 1.0, "b": 1.0, "c": 1.0})  # 'a' unfrozen
    h.add(2, ["a", "c"], {"a": 1.0, "c": 1.0})  # 'b' frozen
    layers, _spans, state, _logv = h.grid()
    assert layers == ["a", "c", "b"]
    assert state[0].tolist() == [fig.MISSING, fig.FINITE, fig.FINITE]
    assert state[2].tolist() == [fig.FINITE, fig.FINITE, fig.MISSING]


def test_dataframe_input_draws_the_same_figure():
    import gradlens

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
    ref = np.asarray(flow_figure(mon.records()))
    for df in (mon.dataframe(level="layer"), mon.dataframe()):  # per-parameter: norms combined per layer
        got = np.asarray(flow_figure(df))
        assert got.shape == ref.shape
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # float32 history vs records


@pytest.mark.parametrize(
    "data, kw, exc, match",
    [
        (42, {}, TypeError, "StepRecords or a DataFrame, got int"),
        ([1, 2], {}, TypeError, "a list of int"),
        ([], {}, ValueError, "no gradient norms"),
        ([StepRecord(0, ["a"], {"nonfinite": {"a": 0.0}})], {}, ValueError, "no gradient norms"),
        (_records(2), {"max_columns": 1}, ValueError, "max_columns"),
        (_records(2), {"max_columns": True}, ValueError, "max_columns"),
    ],
    ids=["not-iterable", "not-records", "empty", "no-grad-norm", "max-columns-1", "max-columns-bool"],
)
def test_bad_input_raises(data, kw, exc, match):
    with pytest.raises(exc, match=match):
        flow_figure(data, **kw)


def test_dataframe_without_the_columns_raises():
    import pandas as pd

    with pytest.raises(ValueError, match="columns step, layer, grad_norm"):
        flow_figure(pd.DataFrame({"step": [0], "value": [1.0]}))


def test_many_layers_fit_and_are_labelled_sparsely():
    layers = [f"l{i}" for i in range(200)]
    img, lay = fig._flow_figure(_records(4, layers))
    assert lay.plot[3] - lay.plot[1] <= 720 and lay.row_h >= 2
    assert img.height < 900


def test_sparkline_and_overview():
    assert sparkline([1e-3, 1e-2, 1e-1, 1.0], width=4) == "▁▃▅█"
    assert sparkline([1.0, 0.0, math.inf], width=3) == "▄ !"
    assert sparkline([]) == ""
    md = overview_markdown([{"layer": "a|b", "first": 1e-8, "last": 2.0, "trend": "▁█"}],
                           [_F("vanishing", "a|b", 0, 3)], n_steps=4, first_step=0, last_step=3)
    lines = md.splitlines()
    assert lines[0].startswith("**gradlens run overview**: 4 logged steps (0..3), 1 layers")
    assert "| 0 | a\\|b | 1.00e-08 | 2 | `▁█` |" in lines
    assert lines[-1] == "- [warning] vanishing at a\\|b, steps 0..3: msg"
