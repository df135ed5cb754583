"""examples/watch_training.py runs end to end with tiny settings and writes events."""

from __future__ import annotations

import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_example_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "watch_training.py"), "--steps", "4", "--batch", "8",
         "--logdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert "recorded 4 steps" in out.stdout
    assert "activations at step 0:" in out.stdout  # traced on logged steps 0, 10, ...
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    from gradlens._tags import parse_tag

    series = {parse_tag(t) for t in acc.Tags()["scalars"]}
    assert ("layer", "grad_norm", "0") in series
    assert ("layer", "act_sat_frac", "1") in series  # the Tanh layer


def test_example_rejects_bad_steps():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "watch_training.py"), "--steps", "x"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "invalid int" in out.stderr
