"""examples/check_custom_backward.py runs and its two reports say what the example claims."""

from __future__ import annotations

import pathlib
import runpy

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_check_custom_backward_example(capsys):
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "examples" / "check_custom_backward.py"), run_name="__main__")
    assert info.value.code == 0
    out = capsys.readouterr().out
    bad, good = out.split("== fixed backward")
    assert "backward WRONG" in bad and "x 1/8" in bad and "wrong only at element [7] of 8" in bad
    assert "backward OK" in good and "FAIL" not in good
