"""What gradlens.watch costs under torch.distributed: 2 CPU processes on gloo.

Run:  python benchmarks/distributed_overhead.py [--steps 200] [--block 20] [--quick]

Each of the 2 spawned ranks builds two identical copies of an MLP 256-512-512-10
(batch 64 per rank), wrapped by DDP, sharded by FSDP2 ``fully_shard`` (each
Linear and the root), or by FSDP1 ``FullyShardedDataParallel(use_orig_params=True)``
(one unit per Linear). Copy A trains plainly, copy B under ``gradlens.watch`` with
the variant's options; both ranks alternate an A step and a B step in one loop (the
order swapped every pair, as ``benchmarks/overhead.py`` does), so both copies see
the same noise. Clock: wall time (a rank waiting in a collective uses no CPU). The
table shows rank 0's medians over blocks of ``--block`` pairs, and the collectives
gradlens adds: the ``torch.distributed`` collective functions are wrapped before
anything is built, and each watched step's calls minus those of the plain step
with the same index (FSDP1's and FSDP2's own all-gathers and reduce-scatters go
through the same functions and cancel out; DDP's all-reduce runs in C++) are
counted per logged step after the first (the steady state), at the first logged
step (where the ranks agree on the packet's layout), per unlogged step, and in
``close()``. A second table times gradlens' rounds alone (:func:`_time_rounds`):
the fused round gloo uses against the header-then-data rounds NCCL uses.
Tests never assert on these timings; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

WORLD = 2
#: (engine, every, watch options); the name is "ENGINE every=N" and the options' keys
VARIANTS = (("ddp", 1, {}), ("ddp", 10, {}), ("fsdp2", 1, {}), ("fsdp2", 10, {}),
            ("fsdp1", 1, {}), ("fsdp1", 10, {}), ("ddp", 1, {"halt_on": {"nonfinite"}}),
            ("ddp", 1, {"unfused": True}))
#: not a watch option: the protocol gradlens uses with NCCL (a header round, then the
#: data), forced here on gloo, to measure what the fused round saves
_UNFUSED = "unfused"
_COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_reduce", "all_gather", "broadcast",
                "reduce_scatter_tensor", "barrier")


def _model(engine: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    if engine == "ddp":
        return nn.parallel.DistributedDataParallel(net)
    if engine == "fsdp1":  # one FSDP unit per Linear, the original parameters kept (CPU: device_id)
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(net, use_orig_params=True, device_id=torch.device("cpu"),
                                        auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))
    from torch.distributed.fsdp import fully_shard

    for i in (0, 2, 4):
        fully_shard(net[i])
    fully_shard(net)
    return net


def _count_collectives(counter: List[int]) -> None:
    """Make every collective function of torch.distributed add 1 to ``counter[0]``."""
    import torch.distributed as dist

    for name in _COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is not None:
            def wrapped(*a, _fn=fn, **k):
                counter[0] += 1
                return _fn(*a, **k)
            setattr(dist, name, wrapped)


#: packet sizes (floats) of the rounds timed alone: this MLP's packet (6 parameters, their
#: statistics and the loss) and one of a model with ~1000 parameters
ROUND_SIZES = (20, 4096)


def _time_rounds(steps: int) -> Dict[str, Dict[str, float]]:
    """Microseconds per logged step of gradlens' rounds alone (a packet of each of
    ``ROUND_SIZES`` floats, the layout agreed): fused (header and data in one
    all-gather, gloo's protocol) against unfused (a header all-gather, then the data:
    NCCL's protocol, here on gloo), alternating in blocks of 20; medians of the blocks."""
    import statistics
    import zlib

    import torch

    from gradlens.monitor import distributed

    d = distributed.Distributed()
    out: Dict[str, Dict[str, float]] = {}
    for n in ROUND_SIZES:
        flat = torch.randn(n)
        crc = zlib.crc32(b"bench")
        times: Dict[bool, List[float]] = {True: [], False: []}
        for block in range(max(steps // 20, 2) * 2 + 2):
            fused = block % 2 == 0
            d.fused = fused
            t0 = time.perf_counter()
            for _ in range(20):
                d._round(1, distributed._PACKET, n, crc, flat=flat)
            if block >= 2:  # (the first pair warms up, and agrees on the capacity)
                times[fused].append((time.perf_counter() - t0) / 20 * 1e6)
        out[str(n)] = {"fused_us": statistics.median(times[True]), "unfused_us": statistics.median(times[False])}
    d.leave()
    return out


def _rank(rank: int, init_file: str, out: str, steps: int, block: int, warmup: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn import functional as F

    import gradlens
    from overhead import block_medians, time_pairs

    torch.set_num_threads(1)
    counter = [0]
    _count_collectives(counter)  # before the models and monitors bind them
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    rows: Dict[str, dict] = {}
    try:
        gen = torch.Generator().manual_seed(1 + rank)
        x, y = torch.randn(64, 256, generator=gen), torch.randint(0, 10, (64,), generator=gen)
        for engine, every, options in VARIANTS:
            a, b = _model(engine), _model(engine)
            opt_a = torch.optim.SGD(a.parameters(), lr=1e-2)
            opt_b = torch.optim.SGD(b.parameters(), lr=1e-2)
            mon = gradlens.watch(b, opt_b, every=every, **{k: v for k, v in options.items() if k != _UNFUSED})
            if options.get(_UNFUSED):
                mon._dist.fused = False
            calls: Dict[str, List[int]] = {"a": [], "b": []}  # collectives of each step, in order

            def step(model, opt, side):
                before = counter[0]
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                calls[side].append(counter[0] - before)

            ta, tb = time_pairs(lambda: step(a, opt_a, "a"), lambda: step(b, opt_b, "b"), steps, warmup,
                                torch.device("cpu"), clock=time.perf_counter)
            # what gradlens added at each logged step (the i-th watched step minus the i-th plain one)
            added = [calls["b"][i] - calls["a"][i] for i in range(warmup + steps) if i % every == 0]
            unlogged = [calls["b"][i] - calls["a"][i] for i in range(warmup + steps) if i % every]
            before = counter[0]
            mon.close()
            ma, mb, ratio = block_medians(ta, tb, block)
            name = f"{engine} every={every}" + "".join(f" {k}" for k in options)
            rows[name] = {
                "plain_ms": ma * 1e3, "watched_ms": mb * 1e3, "ratio": ratio,
                "first": added[0], "steady": sum(added[1:]) / len(added[1:]),
                "unlogged": sum(unlogged) / max(len(unlogged), 1), "close": counter[0] - before,
            }
        rounds = _time_rounds(steps)
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"variants": rows, "rounds": rounds}, f)
    finally:
        try:
            dist.barrier()  # (no rank tears its connections down while the other still reads)
        finally:
            gc.collect()  # free the wrapped models' reference cycles while the group lives (pytorch/pytorch#179291)
            dist.destroy_process_group()


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed step pairs per variant")
    parser.add_argument("--block", type=int, default=20, help="pairs per block (a multiple of 10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 pairs, blocks of 10")
    args = parser.parse_args(argv)
    steps, block, warmup = (20, 10, 2) if args.quick else (args.steps, args.block, 10)
    if steps < block or block < 1:
        parser.error("--steps must be at least --block, and --block at least 1")
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.start_processes(_rank, args=(os.path.join(tmp, "init"), out, steps, block, warmup), nprocs=WORLD,
                           start_method="spawn", join=True)
        with open(out) as f:
            got = json.load(f)
            rows, rounds = got["variants"], got["rounds"]
    print(f"torch {torch.__version__} | {WORLD} processes, gloo, CPU, one thread each | "
          f"{steps} step pairs, medians over blocks of {block} (rank 0, wall time)")
    print("| variant | plain ms | watched ms | watched/plain | collectives added per logged step "
          "| at the first logged step | per unlogged step | at close |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['plain_ms']:.2f} | {r['watched_ms']:.2f} | {r['ratio']:.3f}x | "
              f"{r['steady']:.2f} | {r['first']} | {r['unlogged']:.2f} | {r['close']} |")
    print()
    print("gradlens' rounds alone, per logged step (packet agreed; medians of blocks of 20, rank 0, wall time)")
    print("| packet floats | fused: 1 all-gather, us | unfused: header, then data, us | saved, us |")
    print("|---|---|---|---|")
    for n, r in rounds.items():
        print(f"| {n} | {r['fused_us']:.0f} | {r['unfused_us']:.0f} | {r['unfused_us'] - r['fused_us']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
