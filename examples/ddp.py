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


def wrap(net):
    """DDP: every rank holds the whole model; gradients are all-reduced in backward."""
    from torch import nn

    return nn.parallel.DistributedDataParallel(net)


def main(argv=None) -> int:
    return common.run(argv, "DDP", wrap)


if __name__ == "__main__":
    raise SystemExit(main())
