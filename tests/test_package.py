"""The package foundation: version, CLI, lazy public names, shared records and tags."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

import gradlens
from gradlens import cli
from gradlens._record import ROOT_LAYER, StepRecord, layer_of
from gradlens._tags import layer_tag, param_tag, parse_tag
from gradlens.diagnose import Finding, TrainingHalted


def test_version_matches_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradlens {gradlens.__version__}"


def test_console_module_runs():
    out = subprocess.run(
        [sys.executable, "-m", "gradlens", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().startswith("gradlens ")


def test_import_is_light():
    # ``import gradlens`` must not pull in tensorboard or pandas.
    code = "import sys, gradlens; print('tensorboard' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gradlens.nope  # noqa: B018


def test_finding_fields_and_validation():
    f = Finding("exploding", "fc1", 7, "error", 123.0, "too big", threshold=70.0)
    assert f.last_step == 7
    assert f.to_dict()["threshold"] == 70.0
    assert "exploding at fc1, step 7" in str(f)
    with pytest.raises(ValueError, match="severity"):
        Finding("exploding", "fc1", 7, "fatal", 1.0, "x")
    err = TrainingHalted(f)
    assert err.finding is f and isinstance(err, RuntimeError)


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("grad_norm/enc.0", ("layer", "grad_norm", "enc.0")),
        ("param/weight_norm/enc.0.weight", ("param", "weight_norm", "enc.0.weight")),
        ("act_dead_frac/(root)", ("layer", "act_dead_frac", "(root)")),
        ("loss/train", None),
        ("grad_norm", None),
        ("param/bogus/x", None),
    ],
)
def test_parse_tag(tag, expected):
    assert parse_tag(tag) == expected


def test_tags_round_trip():
    assert parse_tag(layer_tag("grad_max", "a.b")) == ("layer", "grad_max", "a.b")
    assert parse_tag(param_tag("nonfinite", "a.b.bias")) == ("param", "nonfinite", "a.b.bias")


def test_step_record_access():
    rec = StepRecord(step=3, layers=["a", "b"], stats={"grad_norm": {"a": 1.0}})
    assert rec.get("grad_norm", "a") == 1.0
    assert math.isnan(rec.get("grad_norm", "b"))
    s = rec.series("grad_norm")
    assert s[0] == 1.0 and math.isnan(s[1])
    assert layer_of("a.b.weight") == "a.b" and layer_of("weight") == ROOT_LAYER
