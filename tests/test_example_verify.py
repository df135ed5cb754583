"""examples/check_custom_backward.py and examples/check_model.py run and their reports say what the examples claim."""

from __future__ import annotations

import pathlib
import runpy

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(name: str, capsys) -> str:
    """Run examples/<name> as a script; it must exit 0. Returns what it printed."""
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    assert info.value.code == 0
    return capsys.readouterr().out


def test_check_custom_backward_example(capsys):
    out = _run("check_custom_backward.py", capsys)
    bad, good = out.split("== fixed backward")
    assert "backward WRONG" in bad and "x 1/8" in bad and "wrong only at element [7] of 8" in bad
    assert "backward OK" in good and "FAIL" not in good


def test_check_model_example(capsys):
    out = _run("check_model.py", capsys)
    alone, model = out.split("== gradlens.check_model")
    assert "ReLU6: OK, RowClip: OK" in alone
    assert "2 of 3 custom Functions WRONG" in model and "ok   Swish" in model
    assert "FAIL ReLU6" in model and "wrong exactly where x > 6" in model
    assert "FAIL RowClip" in model and "rows where the row norm |x[i, :]| > 8" in model
    src = (ROOT / "examples" / "check_model.py").read_text().splitlines()
    line = next(i for i, s in enumerate(src, 1) if "ReLU6.apply(" in s)
    assert "call 0: FAIL  module block (Block) at " in model and f"check_model.py:{line}\n" in model
