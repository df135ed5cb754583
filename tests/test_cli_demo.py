"""``gradlens demo`` end to end under the real gradlens.watch, and the CLI wiring."""

from __future__ import annotations

import io
import os

import pytest

from gradlens import cli


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "report" in out and "demo" in out


@pytest.mark.parametrize("steps", ["0", "-3"], ids=["zero", "negative"])
def test_demo_rejects_bad_steps(steps, capsys):
    assert cli.main(["demo", "--steps", steps]) == 2
    assert "--steps expects an integer >= 1" in capsys.readouterr().err


def test_demo_rejects_non_integer_steps():
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--steps", "many"])
    assert exc.value.code == 2


def test_run_demo_rejects_bad_steps():
    from gradlens.demo import run_demo

    with pytest.raises(ValueError, match=r"run_demo\(steps=...\) expects an int >= 1, got 0"):
        run_demo("unused", steps=0)


def test_demo_diagnoses_each_network_and_report_agrees(tmp_path, capsys):
    pytest.importorskip("gradlens.monitor", reason="gradlens.watch not in this checkout")
    from gradlens.demo import DEMOS, run_demo

    out = io.StringIO()
    results = run_demo(str(tmp_path), steps=15, out=out)
    text = out.getvalue()
    for name, (_, expected) in DEMOS.items():
        loud = [f for f in results[name] if f.is_problem]
        if expected is None:
            assert loud == [], [str(f) for f in loud]
        else:
            assert expected in {f.kind for f in loud}, [str(f) for f in results[name]]
        assert any("tfevents" in f for f in os.listdir(tmp_path / name))
    assert f"tensorboard --logdir {tmp_path}" in text
    # the offline diagnosis of the logged statistics agrees with the live one
    from gradlens.report import load_run

    for name in DEMOS:
        offline = load_run(str(tmp_path / name)).findings
        key = lambda f: (f.kind, f.layer, f.step, f.severity)  # noqa: E731
        assert sorted(map(key, offline), key=str) == sorted(map(key, results[name]), key=str), name
    assert cli.main(["report", str(tmp_path / "deep_sigmoid")]) == 1
    assert "vanishing" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "healthy_residual")]) == 0


def test_report_on_a_live_run_still_being_written(tmp_path):
    pytest.importorskip("gradlens.monitor", reason="gradlens.watch not in this checkout")
    import logging
    import warnings

    import torch
    import torch.nn.functional as F

    import gradlens
    from gradlens import _demo_models as m
    from gradlens.report import load_run

    torch.manual_seed(0)
    x, y = m.synthetic_classification()
    model = m.deep_sigmoid()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logging.getLogger("gradlens").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mon = gradlens.watch(model, opt, logdir=str(tmp_path))
            try:
                for _ in range(100):
                    opt.zero_grad()
                    loss = F.cross_entropy(model(x[:32]), y[:32])
                    mon.observe_loss(loss)
                    loss.backward()
                    opt.step()
                live = [(f.kind, f.layer, f.step) for f in mon.findings if f.severity != "info"]
                rep = load_run(str(tmp_path))  # the writer is still open
                offline = [(f.kind, f.layer, f.step) for f in rep.findings if f.severity != "info"]
                # records reach the writer in batches (PUBLISH_BATCH steps) and its thread
                # may lag behind: what is on disk is a prefix of the run, diagnosed the same way
                steps = [r.step for r in rep.records]
                assert steps == list(range(len(steps))) and len(steps) >= 3
                assert live[0][0] == "vanishing"
                assert offline == live[:len(offline)] and offline
            finally:
                mon.close()
    finally:
        logging.getLogger("gradlens").setLevel(logging.NOTSET)
