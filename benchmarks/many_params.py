"""Per-step cost of gradlens.watch on a model with many small parameters.

Run:  python benchmarks/many_params.py [--steps 200] [--block 40] [--models lin,mlp] [--quick]

Models: 250 residual blocks of 4 ``Linear(16,16)`` (2000 parameter tensors of 256
or 16 elements) at batch 8 (the case the batched CPU statistics of
``gradlens.monitor.stats.grad_stats`` are for), and, with ``--models mlp``, the
MLP 784-512-512-512-10 at batch 128 (8 large parameters: the per-tensor path,
for comparison). Variants, each timed against a plain step of an identical model
copy:

* ``watch(every=1)``: the monitor as shipped;
* ``watch(every=1), per-tensor``: the same with the batched statistics turned off
  (every parameter through the per-tensor path: one fused L2 call for gradients
  and weights, one aminmax per gradient), i.e. the monitor before the change;
* ``grad_stats + host copy``: the statistics alone (``grad_stats`` of every
  gradient and weight, then one host copy), batched;
* ``per-tensor stats + host copy``: the same through the per-tensor path.

Method, as in benchmarks/overhead.py (the machine is shared and noisy): one
thread; each variant alternates a plain step (model copy A) and a variant step
(copy B) inside one loop (order swapped every pair), clocked with the thread's
own CPU time; the pairs are cut into blocks of ``--block`` consecutive pairs (a
multiple of 8, the monitor's publishing batch) and the table shows the medians
over blocks of the mean plain step, the mean variant step and their ratio, and
"added ms" = (ratio - 1) x plain. Block means count everything a step causes,
Python's full garbage collections included (in a process holding this model one
takes ~100-160 ms, about once per 60 steps, and lands on whichever copy's step
crosses the threshold), so they move by a few ms between runs; the last column,
the difference of the per-step medians, leaves such rare events out.
Tests never assert on these timings; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
from typing import Callable, Iterator, List, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gradlens  # noqa: E402
from gradlens.monitor import stats as _stats  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import block_medians, make_step, mlp, time_pairs  # noqa: E402  (same models and method)


class Block(nn.Module):
    """``x + f(x)``, f = 4 x Linear(16,16) with tanh between (activations stay O(1))."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
            nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def many_linear() -> nn.Module:
    return nn.Sequential(*[Block() for _ in range(250)])


# title: (build, input shape, classes)
MODELS = {
    "lin": ("250 x 4 Linear(16,16) (2000 params) b8", many_linear, (8, 16), 16),
    "mlp": ("MLP 784-512x3-10 (8 params) b128", mlp, (128, 784), 10),
}

VARIANTS = [
    "watch(every=1)",
    "watch(every=1), per-tensor",
    "grad_stats + host copy",
    "per-tensor stats + host copy",
]


@contextlib.contextmanager
def _per_tensor_only(on: bool) -> Iterator[None]:
    """Turn the batched CPU statistics off (every group takes the per-tensor path)."""
    saved = _stats._FLAT_MIN_COUNT
    if on:
        _stats._FLAT_MIN_COUNT = sys.maxsize
    try:
        yield
    finally:
        _stats._FLAT_MIN_COUNT = saved


def _stats_hook(model: nn.Module) -> Callable[[], None]:
    params = list(model.parameters())

    def hook() -> None:  # as the monitor calls it: the parameters themselves are the weights
        _stats.grad_stats([p.grad for p in params], params).cpu()

    return hook


def run_variant(variant: str, build: Callable[[], nn.Module], shape: Tuple[int, ...], classes: int,
                steps: int, warmup: int, block: int) -> Tuple[float, float, float, float]:
    """Plain and variant step times (s, medians of block means), their ratio (median of
    block ratios) and the difference of the per-step medians (s)."""
    torch.manual_seed(0)
    plain = build()
    other = copy.deepcopy(plain)
    x = torch.randn(*shape)
    y = torch.randint(0, classes, (shape[0],))
    opt_a = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    opt_b = torch.optim.SGD(other.parameters(), lr=1e-3, momentum=0.9)
    step_a = make_step(plain, opt_a, x, y)
    mon = None
    if variant.startswith("watch"):
        mon = gradlens.watch(other, opt_b, every=1)
        step_b = make_step(other, opt_b, x, y)
    else:
        step_b = make_step(other, opt_b, x, y, _stats_hook(other))
    try:
        with _per_tensor_only("per-tensor" in variant):
            ta, tb = time_pairs(step_a, step_b, steps, warmup, torch.device("cpu"))
    finally:
        if mon is not None:
            mon.close()
    a, b, ratio = block_medians(ta, tb, block)
    return a, b, ratio, statistics.median(tb) - statistics.median(ta)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed step pairs per variant (default 200)")
    parser.add_argument("--block", type=int, default=40, help="pairs per block, a multiple of 8 (default 40)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--models", default="lin", help="comma-separated subset of: lin,mlp (default lin)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    if args.block < 1 or (not args.quick and steps < args.block):
        parser.error(f"--block must be between 1 and --steps ({steps}), got {args.block}")
    keys = [k.strip().lower() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown or not keys:
        parser.error(f"--models: choose from {','.join(MODELS)}, got {args.models!r}")
    print(f"# gradlens many-parameter overhead, torch {torch.__version__}, cpu, threads {args.threads}, "
          f"{steps} step pairs per row in blocks of {args.block} (medians of block means, thread CPU time), "
          f"warmup {warmup}")
    for key in keys:
        title, build, shape, classes = MODELS[key]
        print(f"\n## {title}")
        print(f"{'variant':30s} {'plain ms':>9s} {'variant ms':>11s} {'ratio':>7s} {'added ms':>9s} "
              f"{'median step added ms':>21s}")
        for variant in VARIANTS:
            a, b, ratio, step_added = run_variant(variant, build, shape, classes, steps, warmup, args.block)
            print(f"{variant:30s} {a * 1e3:9.2f} {b * 1e3:11.2f} {ratio:7.3f} {(ratio - 1) * a * 1e3:+9.2f} "
                  f"{step_added * 1e3:+21.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
