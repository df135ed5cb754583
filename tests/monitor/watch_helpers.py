"""Shared helpers for the monitor tests (imported by basename; no __init__.py)."""

from __future__ import annotations

from typing import List

import torch
from torch import nn


def mlp(seed: int = 0) -> nn.Sequential:
    """A small MLP: 0 Linear, 1 ReLU, 2 Linear, 3 Tanh, 4 Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, *, mon=None, batch: int = 5,
          seed: int = 1, inputs: int = 6) -> List[dict]:
    """Plain training loop; returns, per step, torch's own grad norms/max taken before step()."""
    gen = torch.Generator().manual_seed(seed)
    refs = []
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(batch, inputs, generator=gen)
        loss = model(x).pow(2).mean()
        if mon is not None:
            mon.observe_loss(loss)
        loss.backward()
        refs.append(
            {
                "loss": loss.item(),
                **{
                    n: (p.grad.norm().item(), p.grad.abs().max().item(), p.detach().norm().item())
                    for n, p in model.named_parameters()
                    if p.grad is not None
                },
            }
        )
        opt.step()
    return refs


def gloo_available() -> bool:
    """Whether torch.distributed with the gloo backend can run here."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


def _rank_main(rank: int, run, init_file: str, out_dir: str, world: int) -> None:
    """One spawned rank: a gloo process group, ``run(rank, out_dir) -> dict`` written to
    ``out_dir/rank{rank}.json``, the group destroyed whatever happens.

    Before the group is destroyed, a garbage collection frees what ``run`` left in
    reference cycles (a DistributedDataParallel model and its reducer form one): left to
    interpreter shutdown, gloo's last references to them could abort the process
    (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291)."""
    import gc
    import json
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        out = run(rank, out_dir)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(out, f)
        dist.barrier()  # (after a run that went well) no rank tears down while another still reads
    finally:
        gc.collect()
        dist.destroy_process_group()


def spawn_ranks(run, tmp, *, world: int, deadline_s: float) -> List[dict]:
    """Run ``run(rank, out_dir) -> dict`` (a module-level function) in ``world`` spawned
    processes joined by a gloo process group, and return each rank's dict. A rank
    still running after ``deadline_s`` (a hung collective) fails the test instead of
    hanging pytest; a rank that raised fails it at once."""
    import json
    import time

    import pytest
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_rank_main, args=(run, str(tmp / "init"), str(tmp), world), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + deadline_s
    try:
        while not ctx.join(timeout=1):  # raises if a rank failed
            if time.monotonic() > deadline:
                pytest.fail(f"the ranks did not finish within {deadline_s} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


def full_batch(n: int):
    """The multi-process tests' fixed batch: ``n`` rows of 6 inputs and 3 targets."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=gen), torch.randn(n, 3, generator=gen)


def rank_slice(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s equal share of the rows of ``t``."""
    n = t.shape[0] // world
    return t[rank * n : (rank + 1) * n]
