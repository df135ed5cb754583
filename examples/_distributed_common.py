"""What examples/ddp.py and examples/fsdp.py share: the options, the data, the loop.

Each rank trains on its own batches of one regression problem; gradlens records the
global statistics on every rank (the same numbers everywhere) and rank 0 prints them.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(argv, description: str) -> argparse.Namespace:
    """The examples' command line (``--steps``, ``--logdir``, ``--lr``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    parser.add_argument("--logdir", default=None, help="TensorBoard directory, written by rank 0 (default: none)")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def model():
    """The MLP both examples train (Linear layers '0', '2', '4')."""
    import torch
    from torch import nn

    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def train(net, opt, mon, steps: int, rank: int) -> None:
    """``steps`` optimizer steps on this rank's own batches; the loss goes to ``mon``."""
    import torch
    from torch.nn import functional as F

    w = torch.randn(20, 1, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1 + rank)  # each rank its own data
    for _ in range(steps):
        x = torch.randn(32, 20, generator=gen)
        opt.zero_grad()
        loss = F.mse_loss(net(x), x @ w)
        mon.observe_loss(loss)
        loss.backward()
        opt.step()


def report(mon, rank: int, world: int, engine: str) -> None:
    """Rank 0 prints the last step's global gradient norms and the findings."""
    if rank != 0:
        return
    df = mon.dataframe()
    last = df[df.step == df.step.max()]
    print(f"{engine}: rank 0 of {world}, {mon.steps_seen} steps watched")
    print("last step's gradient norms (global: the same on every rank):")
    print(last[["param", "grad_norm", "weight_norm"]].to_string(index=False, float_format="%.9g"))
    print("findings:", "; ".join(str(f) for f in mon.findings) or "none")


def run(argv, engine: str, wrap) -> int:
    """The whole example: parse ``argv``, join the torchrun process group (gloo),
    ``wrap(model)`` for ``engine``, train under ``gradlens.watch``, report on rank 0."""
    args = parse(argv, f"Train an MLP under {engine} with gradlens.watch (run with torchrun).")
    import torch
    import torch.distributed as dist

    import gradlens

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        net = wrap(model())
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
        with gradlens.watch(net, opt, logdir=args.logdir) as mon:  # on every rank, the same options
            train(net, opt, mon, args.steps, rank)
        report(mon, rank, world, engine)
        dist.barrier()  # no rank tears the group down while another still reports
    finally:
        # a DDP/FSDP model sits in reference cycles: free it while the group still lives,
        # not at interpreter shutdown, where gloo can abort the process (pytorch/pytorch#179291)
        gc.collect()
        dist.destroy_process_group()
    return 0
