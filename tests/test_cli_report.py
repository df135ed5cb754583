"""``gradlens report``: events read back with TensorBoard's reader, same findings as live."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pandas as pd
import pytest
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "diagnose"))

from diag_events import write_records  # noqa: E402
from diag_scenarios import HEALTHY, PROBLEMS, run_reference  # noqa: E402

from gradlens import cli  # noqa: E402
from gradlens._record import StepRecord  # noqa: E402
from gradlens.report import load_run  # noqa: E402


def _by_name(seq, name):
    return next(s for s in seq if s.name == name)


@pytest.fixture(scope="module")
def vanishing_run(tmp_path_factory):
    rec = run_reference(_by_name(PROBLEMS, "deep_sigmoid_mlp"), steps=12)
    d = tmp_path_factory.mktemp("vanishing")
    with SummaryWriter(str(d)) as w:
        write_records(w, rec.records)
    return d, rec


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    rec = run_reference(_by_name(HEALTHY, "mlp_adam"), steps=12)
    d = tmp_path_factory.mktemp("healthy")
    with SummaryWriter(str(d)) as w:
        write_records(w, rec.records)
    return d, rec


def test_report_rederives_the_live_findings(vanishing_run):
    d, rec = vanishing_run
    rep = load_run(str(d))
    assert [r.step for r in rep.records] == [r.step for r in rec.records]
    assert rep.layers == rec.records[0].layers  # order from the gradlens/layers text
    live = [(f.kind, f.layer, f.step, f.severity) for f in rec.findings]
    offline = [(f.kind, f.layer, f.step, f.severity) for f in rep.findings]
    assert offline == live and ("vanishing", live[0][1], 0, "warning") in offline


def test_report_values_equal_what_torch_computed(vanishing_run):
    d, rec = vanishing_run
    rep = load_run(str(d))
    for live, back in zip(rec.records, rep.records):
        for layer, g in live.stats["grad_norm"].items():
            # events store float32: compare at float32 precision
            assert back.get("grad_norm", layer) == pytest.approx(g, rel=1e-6)


def test_exit_code_1_and_table_on_problems(vanishing_run, capsys):
    d, rec = vanishing_run
    assert cli.main(["report", str(d)]) == 1
    out = capsys.readouterr().out
    assert "[warning] vanishing at" in out
    first_layer = rec.records[0].layers[0]
    line = next(l for l in out.splitlines() if l.startswith(first_layer + " "))
    assert "0..11" in line  # first..last step


def test_exit_code_0_on_a_healthy_run(healthy_run, capsys):
    d, _ = healthy_run
    assert cli.main(["report", str(d)]) == 0
    assert "findings: none" in capsys.readouterr().out


def test_json_and_csv(vanishing_run, tmp_path, capsys):
    d, rec = vanishing_run
    csv = tmp_path / "stats.csv"
    assert cli.main(["report", str(d), "--json", "--csv", str(csv)]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["problems"] >= 1
    (run,) = payload["runs"]
    assert run["steps"] == 12
    assert run["findings"][0]["kind"] == "vanishing"
    assert [row["layer"] for row in run["layers"]] == list(rec.records[0].stats["grad_norm"])
    df = pd.read_csv(csv, dtype={"name": str})
    row = df[(df["stat"] == "grad_norm") & (df["name"] == "0") & (df["step"] == 3)]
    assert row["value"].iloc[0] == pytest.approx(rec.records[3].stats["grad_norm"]["0"], rel=1e-6)


def test_run_still_being_written(tmp_path, capsys):
    rec = run_reference(_by_name(PROBLEMS, "deep_sigmoid_mlp"), steps=6)
    w = SummaryWriter(str(tmp_path))
    write_records(w, rec.records)
    last = rec.records[-1]
    # half of the next step is on disk, the writer is still open
    w.add_scalar("grad_norm/" + last.layers[0], 1e-9, last.step + 1)
    w.flush()
    try:
        rep = load_run(str(tmp_path))
        assert rep.dropped_step == last.step + 1
        assert [r.step for r in rep.records] == list(range(6))
        assert cli.main(["report", str(tmp_path)]) == 1
        assert "still being written" in capsys.readouterr().out
    finally:
        w.close()


def test_layer_order_without_layers_text(tmp_path):
    recs = [StepRecord(s, ["b", "a"], {"grad_norm": {"b": 1e-7, "a": 1.0}}) for s in range(4)]
    with SummaryWriter(str(tmp_path)) as w:
        write_records(w, recs, layers_text=False)
    rep = load_run(str(tmp_path))
    assert set(rep.layers) == {"a", "b"}


@pytest.mark.parametrize("make", ["missing", "empty", "foreign_events", "file"])
def test_usage_errors_exit_2(tmp_path, capsys, make):
    target = tmp_path / "logs"
    if make == "empty":
        target.mkdir()
    elif make == "foreign_events":
        with SummaryWriter(str(target)) as w:
            w.add_scalar("train/accuracy", 0.5, 0)
    elif make == "file":
        target.write_text("not a dir")
    assert cli.main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert "gradlens report:" in err and str(target) in err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "x", "--bogus"])
    assert exc.value.code == 2


def test_several_runs_under_one_logdir(vanishing_run, healthy_run, tmp_path, capsys):
    import shutil

    shutil.copytree(vanishing_run[0], tmp_path / "a")
    shutil.copytree(healthy_run[0], tmp_path / "b")
    assert cli.main(["report", str(tmp_path), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["runs"]) == 2
    assert sorted(len(r["findings"]) > 0 for r in payload["runs"]) == [False, True]


def test_statistics_on_their_own_cadence_are_not_a_write_in_progress(tmp_path):
    recs = [StepRecord(s, ["a", "b"], {"grad_norm": {"a": 1.0, "b": 1.0},
                                       "update_ratio": {"a": 1e-3 if s % 3 == 0 else math.nan}})
            for s in range(7)]
    with SummaryWriter(str(tmp_path)) as w:
        write_records(w, recs)
    rep = load_run(str(tmp_path))
    assert rep.dropped_step is None and len(rep.records) == 7


def test_nonfinite_run(tmp_path, capsys):
    rec = run_reference(_by_name(PROBLEMS, "log_of_negative"), steps=5)
    with SummaryWriter(str(tmp_path)) as w:
        write_records(w, rec.records)
    assert cli.main(["report", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    # without traced activations in the events, the birthplace is the first layer with
    # non-finite activations (act_nonfinite was logged): the log layer '3'
    assert "[error] nonfinite at 3, steps 0..4" in out
    table = load_run(str(tmp_path)).layer_table()
    assert (table["nonfinite_steps"] > 0).any()
    assert "!" in "".join(table["trend"])


def test_threshold_overrides(vanishing_run, capsys):
    d, _ = vanishing_run
    # a stricter ratio threshold than the first/last ratio (~1e-10): no vanishing (a stricter
    # vanishing_abs alone no longer silences it: the gradient falls at every layer)
    assert cli.main(["report", str(d), "--threshold", "vanishing_ratio=1e-12"]) == 0
    capsys.readouterr()
    for bad, msg in [("vanishing_abs", "NAME=NUMBER"), ("vanishing_abs=small", "NAME=NUMBER"),
                     ("nope=1", "unknown threshold 'nope'"), ("persist_steps=-1", "finite number >= 0")]:
        assert cli.main(["report", str(d), "--threshold", bad]) == 2
        assert msg in capsys.readouterr().err


# ---------------------------------------------------------------------------
# events written by gradlens' own TensorBoard sink (log10 norms, counts on change)
# ---------------------------------------------------------------------------
def _write_with_sink(path, records, findings=(), **kw):
    from gradlens.sinks.tensorboard import TensorBoardSink

    sink = TensorBoardSink(SummaryWriter(str(path)), owns_writer=True, **kw)
    for r in records:
        sink.write(r)
    sink.write_findings(findings, records[-1].step)
    sink.close()
    return sink


@pytest.mark.parametrize("scenario", ["deep_sigmoid_mlp", "log_of_negative"])
def test_report_reads_what_the_sink_wrote(tmp_path, scenario):
    rec = run_reference(_by_name(PROBLEMS, scenario), steps=8)
    _write_with_sink(tmp_path, rec.records)
    rep = load_run(str(tmp_path))
    assert [r.step for r in rep.records] == [r.step for r in rec.records]
    for live, back in zip(rec.records, rep.records):
        for stat, values in live.stats.items():
            for layer, v in values.items():
                got = back.get(stat, layer)
                if math.isnan(v):
                    assert math.isnan(got), (stat, layer, live.step)
                elif stat in ("nonfinite", "missing_grad", "act_nonfinite"):
                    assert got == v, (stat, layer, live.step)  # carried forward between changes
                else:  # log10 in float32 and back
                    assert got == pytest.approx(v, rel=3e-6, abs=1e-30), (stat, layer, live.step)
    live = [(f.kind, f.layer, f.step, f.severity) for f in rec.findings]
    assert [(f.kind, f.layer, f.step, f.severity) for f in rep.findings] == live


def test_report_plot_writes_the_flow_figure(vanishing_run, healthy_run, tmp_path, capsys):
    from PIL import Image

    from gradlens.sinks.figure import flow_figure

    d, rec = vanishing_run
    png = tmp_path / "flow.png"
    assert cli.main(["report", str(d), "--plot", str(png)]) == 1
    assert f"gradient-flow figure: {png}" in capsys.readouterr().out
    rep = load_run(str(d))
    expected = flow_figure(rep.records, rep.findings, title=f"{d.name}: log10 gradient norm per layer "
                                                          "(input side at the top) x step")
    with Image.open(png) as img:
        assert img.size == expected.size
        assert (np.asarray(img.convert("RGB")) == np.asarray(expected)).all()
    # several runs: one figure each, stacked
    import shutil

    shutil.copytree(d, tmp_path / "runs" / "a")
    shutil.copytree(healthy_run[0], tmp_path / "runs" / "b")
    both = tmp_path / "both.png"
    cli.main(["report", str(tmp_path / "runs"), "--plot", str(both)])
    runs = [load_run(str(tmp_path / "runs" / n)) for n in "ab"]
    with Image.open(both) as img:
        assert img.height == sum(flow_figure(r.records, r.findings).height for r in runs)
    capsys.readouterr()
    assert cli.main(["report", str(d), "--plot", str(tmp_path / "no" / "such" / "dir.png")]) == 2
    assert "--plot" in capsys.readouterr().err
