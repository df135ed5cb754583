"""benchmarks/overhead.py --quick runs and prints every row (timings are never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overhead_quick_smoke():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "overhead.py"), "--quick"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for row in ("watch(every=1)", "watch(every=10)", "watch(activations=True)", "watch(activations=1)",
                "manual .item()+add_scalar",
                "TB histograms every step", "fused limit (hand-written)"):
        assert out.stdout.count(row) == 2, row  # once per model
    assert "MLP 784-512x3-10" in out.stdout and "CNN 3-conv" in out.stdout
