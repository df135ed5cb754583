"""Smoke test of the benchmark scripts: they run and print their table (timings are never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mirror_speed_quick_run_prints_the_table():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mirror_speed.py"), "--quick", "--repeats", "2", "--warmup", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = [ln for ln in lines if ln.startswith("| setting")]
    assert header and "gradlens/torch" in header[0], proc.stdout
    rows = {ln.split("|")[1].strip(): ln for ln in lines if ln.startswith("| ") and not ln.startswith("| setting")}
    # Every setting gets a row; the loss twins exist, so their rows carry a ratio.
    for name in ("Linear(512,512)", "Conv2d(16,32,3,p=1)", "MLP 784-512-512-512-10 + CE", "CrossEntropyLoss"):
        assert name in rows, proc.stdout
    assert re.search(r"\| \d+\.\d\dx +\|", rows["CrossEntropyLoss"]), rows["CrossEntropyLoss"]
    # A twin that raises on the benchmark's inputs shows as an "error" row: that is a bug.
    errors = [ln for ln in rows.values() if "| error " in ln]
    assert not errors, "\n".join(errors)


def test_distributed_overhead_quick_run_counts_one_collective_per_logged_step():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        import pytest

        pytest.skip("torch.distributed with gloo is unavailable")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distributed_overhead.py"), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {ln.split("|")[1].strip(): ln.split("|") for ln in proc.stdout.splitlines()
            if ln.startswith("| ") and "every=" in ln}
    assert set(rows) == {"ddp every=1", "ddp every=10", "fsdp2 every=1", "fsdp2 every=10",
                         "fsdp1 every=1", "fsdp1 every=10", "ddp every=1 halt_on", "ddp every=1 unfused"}, proc.stdout
    # the design (gloo): one collective per logged step once the ranks agreed on the layout
    # (two at the first), none on unlogged steps, one in close(); halt_on adds one per record;
    # the unfused protocol (NCCL's, forced on gloo) makes a header round and a data round each time
    for name, r in rows.items():
        halt = int(name.endswith("halt_on"))
        expected = [2.0, 2, 0.0, 1] if name.endswith("unfused") else [1.0 + halt, 2 + halt, 0.0, 1]
        assert [float(r[5]), int(r[6]), float(r[7]), int(r[8])] == expected, proc.stdout
    rounds = [ln.split("|")[1].strip() for ln in proc.stdout.splitlines()
              if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()]
    assert rounds == ["20", "4096"], proc.stdout  # the rounds timed alone
