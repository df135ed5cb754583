"""gradlens.watch in one process: torch.distributed changes nothing there.

Without a process group (and in a group of one process) every ``ranks=`` option
records what plain autograd computes, writes ``logdir`` itself (no ``rank{r}``
subdirectory) and makes no collective: the ``torch.distributed`` collectives are
replaced by functions that fail the test if anything calls them. Also here, as
it needs no process group: the device gradlens' collective picks for a backend.
"""

from __future__ import annotations

import gc
import glob
import os

import pytest
import torch
import torch.distributed as dist

import gradlens
from gradlens.monitor import distributed as _distributed
from watch_helpers import gloo_available, mlp, train

STEPS = 3
_COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_reduce", "all_gather", "broadcast",
                "barrier", "new_group")


@pytest.fixture
def no_collective(monkeypatch):
    """Every torch.distributed collective raises (gradlens must call none)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("gradlens called a torch.distributed collective in one process")

    for name in _COLLECTIVES:
        if hasattr(dist, name):
            monkeypatch.setattr(dist, name, forbidden)


@pytest.fixture
def group_of_one(tmp_path):
    """A gloo process group of one process (rank 0, world size 1)."""
    if not gloo_available() or dist.is_initialized():
        pytest.skip("needs gloo and no process group yet")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    gc.collect()  # free the tests' DDP models (reference cycles) while the group lives (see watch_helpers)
    dist.destroy_process_group()


def _watched(tmp_path, ranks):
    """Train mlp() under watch(ranks=ranks): its grad-norm rows, plain autograd's, and the event files."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    logdir = tmp_path / f"tb_{ranks}"
    with gradlens.watch(model, opt, logdir=str(logdir), ranks=ranks, activations=1,
                        halt_on={"nonfinite"}) as mon:
        assert mon._dist is None  # no Distributed: nothing to reduce, no round
        assert mon._collector.reduce is None and mon._collector.local is None
        refs = train(model, opt, STEPS, mon=mon)
    got = {(r.step, name): v for r in mon.records() for name, v in r.param_stats["grad_norm"].items()}
    want = {(step, name): ref[name][0] for step, ref in enumerate(refs) for name in ref if name != "loss"}
    losses = ([r.loss for r in mon.records()], [ref["loss"] for ref in refs])
    files = [os.path.relpath(f, logdir) for f in glob.glob(str(logdir / "**" / "events.out.tfevents.*"),
                                                           recursive=True)]
    return got, want, losses, files


def _assert_unchanged(tmp_path):
    for ranks in _distributed.RANKS:
        got, want, (losses, ref_losses), files = _watched(tmp_path, ranks)
        assert set(got) == set(want), ranks
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6), (ranks, key)
        assert losses == pytest.approx(ref_losses, rel=1e-6), ranks
        assert len(files) == 1 and os.path.dirname(files[0]) == "", (ranks, files)  # logdir itself


def test_without_a_process_group_nothing_changes(tmp_path, no_collective):
    assert not (dist.is_available() and dist.is_initialized())
    assert _distributed.rank_world() == (0, 1)
    _assert_unchanged(tmp_path)


def test_in_a_group_of_one_process_nothing_changes(tmp_path, group_of_one, no_collective):
    assert _distributed.rank_world() == (0, 1)
    _assert_unchanged(tmp_path)


@pytest.mark.parametrize("bad, error", [("everyone", ValueError), ("Zero", ValueError), (0, TypeError),
                                        (None, TypeError)], ids=["unknown", "case", "int", "none"])
def test_watch_rejects_a_bad_ranks_option(bad, error):
    model = mlp()
    with pytest.raises(error, match=r"watch\(ranks=\.\.\.\)"):
        gradlens.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), ranks=bad)


class _FakeParam:
    def __init__(self, device):
        self.device = torch.device(device)


class _FakeRoot:
    def __init__(self, *devices):
        self._params = [_FakeParam(d) for d in devices]

    def parameters(self):
        return iter(self._params)


@pytest.mark.parametrize("backend, devices, expected", [
    ("gloo", ("cuda:1",), "cpu"),
    ("nccl", ("cpu", "cuda:1"), "cuda:1"),  # the model's GPU, not every rank's cuda:0
    ("cpu:gloo,cuda:nccl", ("cuda:3",), "cuda:3"),
], ids=["gloo", "nccl-model-gpu", "mixed-backend"])
def test_the_collective_runs_on_the_models_gpu_with_nccl(backend, devices, expected):
    # (no GPU needed: only the device is chosen, torch.cuda is never asked)
    assert _distributed._collective_device(backend, _FakeRoot(*devices)) == torch.device(expected)
