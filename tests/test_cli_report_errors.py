"""Every bad path of `gradlens report` / `gradlens demo` ends in a one-line message and a
documented exit code, never a traceback (run as subprocesses, as users run them)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import gradlens

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _cli(*args, shell=None):
    if shell is not None:
        return subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=180, env=ENV)
    return subprocess.run([sys.executable, "-m", "gradlens", *args], capture_output=True, text=True,
                          timeout=180, env=ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A healthy run and one with a NaN (an error finding), 30 steps each."""
    base = tmp_path_factory.mktemp("runs")
    for name, nan_at in (("ok", None), ("nan", 20)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with gradlens.watch(model, opt, logdir=base / name, flow_every=0):
                for step in range(30):
                    opt.zero_grad()
                    loss = model(torch.randn(16, 4)).pow(2).mean()
                    (loss * float("nan") if step == nan_at else loss).backward()
                    opt.step()
    return base


def _one_line_exit_2(out):
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def test_csv_into_a_missing_directory(runs, tmp_path):
    err = _one_line_exit_2(_cli("report", str(runs / "ok"), "--csv", str(tmp_path / "no" / "such" / "x.csv")))
    assert "does not exist" in err


def test_csv_that_is_a_directory(runs, tmp_path):
    assert "is a directory" in _one_line_exit_2(_cli("report", str(runs / "ok"), "--csv", str(tmp_path)))


def test_csv_that_cannot_be_written(runs):
    assert "--csv /proc/version" in _one_line_exit_2(_cli("report", str(runs / "ok"), "--csv", "/proc/version"))


def test_csv_says_what_it_wrote(runs, tmp_path):
    out = _cli("report", str(runs / "ok"), "--csv", str(tmp_path / "x.csv"))
    assert out.returncode == 0, out.stderr
    rows = sum(1 for _ in open(tmp_path / "x.csv")) - 1
    assert f"wrote {rows} rows" in out.stdout and str(tmp_path / "x.csv") in out.stdout


def test_demo_logdir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert "is a file" in _one_line_exit_2(_cli("demo", "--logdir", str(tmp_path / "f"), "--steps", "2"))


def test_a_broken_pipe_keeps_the_problems_exit_code(runs):
    out = _cli(shell=f"{sys.executable} -m gradlens report {runs} | true; echo ${{PIPESTATUS[0]}}")
    assert out.stdout.strip().splitlines()[-1] == "1", out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


def test_a_truncated_event_file_is_named_and_what_could_be_read_is_reported(runs, tmp_path):
    import shutil

    run = tmp_path / "cut"
    shutil.copytree(runs / "ok", run)
    (event,) = [p for p in run.iterdir() if "tfevents" in p.name]
    data = event.read_bytes()
    event.write_bytes(data[: len(data) // 2])
    out = _cli("report", str(run), "--json")
    assert out.returncode in (0, 1), out.stderr
    assert "Traceback" not in out.stderr
    assert f"{event}: truncated after" in out.stderr and "reporting what could be read" in out.stderr
    import json
    steps = json.loads(out.stdout)["runs"][0]["steps"]
    assert 0 < steps < 30


def test_a_garbage_file_is_not_an_event_file(tmp_path):
    run = tmp_path / "junk"
    run.mkdir()
    (run / "events.out.tfevents.123.host").write_bytes(os.urandom(300))
    out = _cli("report", str(run))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not a TensorBoard event file" in out.stderr


def test_help_lists_the_exit_codes():
    out = _cli("report", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "exit codes: 0 = no problem found, 1 = problems found" in text and "2 = bad arguments" in text
