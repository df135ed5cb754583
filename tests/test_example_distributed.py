"""examples/ddp.py and examples/fsdp.py run under torchrun (2 CPU processes, gloo).

Each is started as a user would (``python -m torch.distributed.run --standalone
--nproc_per_node=2``) with a hard timeout. The gradient norms rank 0 prints are
compared with an independent reference: the same model trained in this process,
with plain autograd, on the two ranks' batches together (equal halves, so the
full-batch mean gradient is what DDP's all-reduce and FSDP2's reduce-scatter give).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import _distributed_common as common  # noqa: E402

STEPS = 3
WORLD = 2

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is unavailable"
)


def _run(script, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           os.path.join(ROOT, "examples", script), "--steps", str(STEPS), "--logdir", str(tmp_path / "tb")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _printed_norms(stdout):
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["param", "grad_norm", "weight_norm"])
    norms = {}
    for line in lines[start + 1:]:
        parts = line.split()
        if len(parts) != 3:
            break
        norms[parts[0]] = (float(parts[1]), float(parts[2]))
    return norms


def _reference():
    """One process, plain autograd, both ranks' batches at once: the last step's norms."""
    torch.set_num_threads(1)
    net = common.model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    w = torch.randn(20, 1, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(1 + r) for r in range(WORLD)]
    for _ in range(STEPS):
        x = torch.cat([torch.randn(32, 20, generator=g) for g in gens])
        opt.zero_grad()
        F.mse_loss(net(x), x @ w).backward()
        norms = {n: (p.grad.norm().item(), p.detach().norm().item()) for n, p in net.named_parameters()}
        opt.step()
    return norms


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.mark.parametrize("script", ["ddp.py", "fsdp.py"])
def test_example_prints_the_full_batch_norms_and_rank_zero_writes_one_event_file(script, tmp_path, reference):
    stdout = _run(script, tmp_path)
    assert f"{STEPS} steps watched" in stdout
    got = _printed_norms(stdout)
    assert set(got) == set(reference)  # the original parameter names, also under FSDP2
    for name, (g, w) in reference.items():
        # printed with 9 significant digits; the ranks' float32 all-reduce order differs from one process
        assert got[name][0] == pytest.approx(g, rel=1e-5), name
        assert got[name][1] == pytest.approx(w, rel=1e-5), name
    events = [f for _, _, files in os.walk(tmp_path / "tb") for f in files if "tfevents" in f]
    assert len(events) == 1  # rank 0 only


def test_example_rejects_bad_steps():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "ddp.py"), "--steps", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--steps must be at least 1" in out.stderr
