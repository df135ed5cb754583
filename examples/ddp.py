"""Watch DistributedDataParallel training with gradlens: 2 CPU processes on gloo.

Run:
    torchrun --standalone --nproc_per_node=2 examples/ddp.py --steps 50 --logdir runs/ddp
    tensorboard --logdir runs/ddp

Call ``gradlens.watch`` on every rank with the same options. Every rank then records
the same global statistics (DDP's all-reduced gradients, the mean loss of the ranks)
and finds the same findings; only rank 0 writes TensorBoard (``ranks="all"`` gives one
subdirectory per rank).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _distributed_common as common  # noqa: E402


def main(argv=None) -> int:
    args = common.parse(argv, "Train an MLP under DDP with gradlens.watch (run with torchrun).")
    import torch
    import torch.distributed as dist
    from torch import nn

    import gradlens

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        ddp = nn.parallel.DistributedDataParallel(common.model())
        opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
        with gradlens.watch(ddp, opt, logdir=args.logdir) as mon:
            common.train(ddp, opt, mon, args.steps, rank)
        common.report(mon, rank, world, "DDP")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
