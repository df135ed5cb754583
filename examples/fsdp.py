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


def wrap(net):
    """FSDP2: each Linear and the root sharded over the ranks (DTensor parameters)."""
    from torch.distributed.fsdp import fully_shard

    for i in (0, 2, 4):
        fully_shard(net[i])
    return fully_shard(net)


def main(argv=None) -> int:
    return common.run(argv, "FSDP2", wrap)


if __name__ == "__main__":
    raise SystemExit(main())
