"""Watch FSDP2 (``fully_shard``) training with gradlens: 2 CPU processes on gloo.

Run:
    torchrun --standalone --nproc_per_node=2 examples/fsdp.py --steps 50 --logdir runs/fsdp

Each rank holds half of every parameter (a DTensor shard). gradlens reads the local
shards and reduces their sums of squares, maxima and non-finite counts across ranks
in one collective per logged step, so the norms are those of the whole parameters,
under their original names ('0.weight', ...), without gathering any parameter.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _distributed_common as common  # noqa: E402


def main(argv=None) -> int:
    args = common.parse(argv, "Train an MLP under FSDP2 with gradlens.watch (run with torchrun).")
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import gradlens

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        net = common.model()
        for i in (0, 2, 4):
            fully_shard(net[i])
        fully_shard(net)
        opt = torch.optim.Adam(net.parameters(), lr=args.lr)
        with gradlens.watch(net, opt, logdir=args.logdir) as mon:
            common.train(net, opt, mon, args.steps, rank)
        common.report(mon, rank, world, "FSDP2")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
