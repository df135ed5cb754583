"""examples/backprop_from_scratch.py runs with tiny settings and says what it claims."""

from __future__ import annotations

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_backprop_from_scratch_example(capsys):
    namespace = runpy.run_path(str(ROOT / "examples" / "backprop_from_scratch.py"), run_name="example")
    assert namespace["main"](["--tiny"]) == 0
    out = capsys.readouterr().out
    # every section ran, each checked against torch (a mismatch raises inside the script)
    for section in ("loss cross_entropy", "loss mse", "gradlens.functional's backward == the hand computation",
                    "SGD   step 2", "Adam  step 2", "vanishing", "LSTM by hand",
                    "hand == torch == gradlens.functional.lstm", "tanh RNN vs LSTM", "all checks passed"):
        assert section in out, section


def test_check_raises_on_a_mismatch():
    import torch

    namespace = runpy.run_path(str(ROOT / "examples" / "backprop_from_scratch.py"), run_name="example")
    try:
        namespace["check"]("x", torch.zeros(2), torch.ones(2))
    except AssertionError as err:
        assert "differs from torch" in str(err)
    else:
        raise AssertionError("check() must raise on a mismatch")
