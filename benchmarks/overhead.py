"""Per-step cost of gradlens.watch versus a plain training step and what users do instead.

Run:  python benchmarks/overhead.py [--steps 400] [--block 40] [--device cpu|cuda] [--quick]
      python benchmarks/overhead.py --against REV [--reps 5] [--variant every=1]

Models: an MLP 784-512-512-512-10 at batch 128 and a 3-conv CNN (1x28x28 input,
16/32/32 channels, linear head) at batch 64. Variants, each timed against a plain
step of an identical model copy:

* ``watch(every=1)``, ``watch(every=10)``, ``watch(activations=True)`` (activation
  tracing on its default cadence, every 10th logged step), ``watch(activations=1)``
  (tracing on every logged step) (in memory), and ``watch(every=1, logdir)`` (also
  writing TensorBoard events);
* ``manual .item()+add_scalar``: the hand-written loop users write
  (``p.grad.norm().item()`` and ``writer.add_scalar`` for every parameter);
* ``TB histograms``: ``add_histogram`` of every gradient every step (what
  ``wandb.watch(log="gradients", log_freq=1)`` does);
* ``fused limit``: the hand-fused cost of watch's default statistics (L2 and
  max|g| of every gradient, L2 of every weight, one host copy, nothing else).

Method (the machine is shared and noisy): one thread; each variant alternates a
plain step (model copy A) and a variant step (copy B) inside one loop (order
swapped every pair), so both see the same noise; on CPU the clock is the thread's
own CPU time, which other processes cannot inflate. ``--device cuda`` synchronises
before reading each (wall) clock.

Estimator: the pairs are cut into blocks of ``--block`` consecutive pairs (default
40, a multiple of every periodic cadence in the variants: ``every=10``, update
ratios and ``activations=True`` on every 10th logged step, records published in
batches of 8). Each block gives the mean plain and variant step and their ratio;
the table shows the medians over blocks.
Work done on one step in N is thus averaged in, as a training run pays it, while a
noisy block is still outvoted. (A per-step median would hide it: with
``every=10`` it is the cost of an unlogged step.) The last column is that
per-step median, for comparison.
Tests never assert on these timings; ``--quick`` is a smoke run.

``--against REV`` (a git revision of this repository) measures one ``watch`` variant of
this checkout against the same variant of ``REV``'s ``gradlens/`` (extracted with
``git archive`` into a temporary directory and imported as ``gradlens_against``), in
one loop: a plain step, REV's watched step, this checkout's watched step and a second
watched step of this checkout (an A/A control) rotate in order, each on its own model
copy, ``--reps`` times with a fresh set of copies. Each repetition gives, per 40-pair
block, the added time of both codes over the plain step and their difference in points
of the plain step; the table shows the median over blocks per repetition, then the
median and range over repetitions. Runs of the whole script apart move by several
points on a shared machine; this pairing resolves a fraction of one.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import os
import re
import subprocess
import statistics
import sys
import tarfile
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gradlens  # noqa: E402


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


MODELS = {
    "MLP 784-512x3-10 b128": (mlp, (128, 784)),
    "CNN 3-conv b64": (cnn, (64, 1, 28, 28)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               before_step: Callable[[], None] | None = None) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if before_step is not None:
            before_step()
        opt.step()

    return step


def _fused_limit(model: nn.Module) -> Callable[[], None]:
    params = list(model.parameters())

    def stats() -> None:
        with torch.no_grad():
            gs = [p.grad for p in params]
            l2 = torch._foreach_norm(gs, 2)
            if gs[0].device.type == "cpu":
                mx = []
                for g in gs:
                    lo, hi = torch.aminmax(g)
                    mx.append(torch.maximum(hi, -lo))
            else:
                mx = torch._foreach_norm(gs, float("inf"))
            wn = torch._foreach_norm([p.detach() for p in params], 2)
            torch.stack(list(l2) + list(mx) + list(wn)).cpu()

    return stats


def _manual(model: nn.Module, writer, counter: List[int]) -> Callable[[], None]:
    def log() -> None:
        for name, p in model.named_parameters():
            writer.add_scalar(f"grad_norm/{name}", p.grad.norm().item(), counter[0])
        counter[0] += 1

    return log


def _hist(model: nn.Module, writer, counter: List[int]) -> Callable[[], None]:
    def log() -> None:
        for name, p in model.named_parameters():
            writer.add_histogram(f"grad/{name}", p.grad, counter[0])
        counter[0] += 1

    return log


VARIANTS = [
    "watch(every=1)",
    "watch(every=1, logdir)",
    "watch(every=10)",
    "watch(activations=True)",
    "watch(activations=1)",
    "manual .item()+add_scalar",
    "TB histograms every step",
    "fused limit (hand-written)",
]


def time_pairs(step_a: Callable[[], None], step_b: Callable[[], None], steps: int, warmup: int,
               device: torch.device, clock: Optional[Callable[[], float]] = None) -> Tuple[List[float], List[float]]:
    """Times of ``steps`` plain (A) and variant (B) steps, alternating in one loop (A B, then B A,
    so neither copy always runs second): :func:`time_rotating` of the two."""
    ta, tb = time_rotating([step_a, step_b], steps, warmup, device, clock)
    return ta, tb


def block_medians(ta: List[float], tb: List[float], block: int) -> Tuple[float, float, float]:
    """Median over blocks of ``block`` pairs of (mean plain, mean variant, their ratio)."""
    block = max(1, min(block, len(ta)))
    starts = range(0, len(ta) - block + 1, block)  # whole blocks only
    means_a = [sum(ta[i : i + block]) / block for i in starts]
    means_b = [sum(tb[i : i + block]) / block for i in starts]
    ratios = [b / a for a, b in zip(means_a, means_b)]
    return statistics.median(means_a), statistics.median(means_b), statistics.median(ratios)


def run_variant(variant: str, build: Callable[[], nn.Module], shape: Tuple[int, ...], device: torch.device,
                steps: int, warmup: int, tmp: str, block: int) -> Tuple[float, float, float, float]:
    """Plain and variant step times (seconds, medians of block means), their ratio (median of
    block ratios) and the ratio of the per-step medians, alternating in one loop."""
    torch.manual_seed(0)
    plain = build().to(device)
    other = copy.deepcopy(plain)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, 10, (shape[0],), device=device)
    opt_a = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    opt_b = torch.optim.SGD(other.parameters(), lr=1e-3, momentum=0.9)
    step_a = make_step(plain, opt_a, x, y)
    cleanup: List[Callable[[], None]] = []
    logdir = tempfile.mkdtemp(dir=tmp)
    counter = [0]
    if variant.startswith("watch"):
        kwargs: Dict[str, object] = {}
        if "every=10" in variant:
            kwargs["every"] = 10
        if "activations=True" in variant:
            kwargs["activations"] = True
        elif "activations=1)" in variant:
            kwargs["activations"] = 1
        if "logdir" in variant:
            kwargs["logdir"] = logdir
        mon = gradlens.watch(other, opt_b, **kwargs)
        cleanup.append(mon.close)
        step_b = make_step(other, opt_b, x, y)
    else:
        from torch.utils.tensorboard import SummaryWriter

        writer = None
        if "fused" in variant:
            hook = _fused_limit(other)
        else:
            writer = SummaryWriter(logdir)
            cleanup.append(writer.close)
            hook = _manual(other, writer, counter) if "manual" in variant else _hist(other, writer, counter)
        step_b = make_step(other, opt_b, x, y, hook)
    try:
        ta, tb = time_pairs(step_a, step_b, steps, warmup, device)
    finally:
        for fn in cleanup:
            fn()
    a, b, ratio = block_medians(ta, tb, block)
    return a, b, ratio, statistics.median(tb) / statistics.median(ta)


#: the import name of ``--against REV``'s gradlens
AGAINST_NAME = "gradlens_against"


def load_against(rev: str, tmp: str):
    """``rev``'s ``gradlens/`` package (git archive of this repository), imported as
    :data:`AGAINST_NAME` from ``tmp``, its own imports rewritten to that name."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    blob = subprocess.run(["git", "-C", root, "archive", rev, "gradlens"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp)
    pkg = os.path.join(tmp, AGAINST_NAME)
    os.rename(os.path.join(tmp, "gradlens"), pkg)
    for where, _, files in os.walk(pkg):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(where, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            # `import gradlens` binds the old package under the name the code uses;
            # `from gradlens...`, `import gradlens.x` and "gradlens.x" module strings move
            text = re.sub(r"^(\s*)import gradlens\s*$", rf"\1import {AGAINST_NAME} as gradlens", text, flags=re.M)
            text = re.sub(r"\bfrom gradlens(?= import)", f"from {AGAINST_NAME}", text)
            text = re.sub(r"\bgradlens(?=\.[A-Za-z_{])", AGAINST_NAME, text)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    sys.path.insert(0, tmp)
    module = importlib.import_module(AGAINST_NAME)
    if not os.path.abspath(module.__file__).startswith(os.path.abspath(tmp)):
        raise RuntimeError(f"--against {rev}: imported {module.__file__}, not the extracted copy")
    return module


def _watch_kwargs(variant: str) -> Dict[str, object]:
    """``watch`` keyword arguments of an ``--variant`` string such as ``every=1,activations=1``."""
    kwargs: Dict[str, object] = {}
    for part in filter(None, (p.strip() for p in variant.split(","))):
        key, _, value = part.partition("=")
        kwargs[key] = {"True": True, "False": False}.get(value, int(value) if value.isdigit() else value)
    return kwargs


def time_rotating(steps: List[Callable[[], None]], n: int, warmup: int,
                  device: torch.device, clock: Optional[Callable[[], float]] = None) -> List[List[float]]:
    """Times of ``n`` rounds of every step of ``steps``, in one loop; the order rotates by
    one each round so that no step always follows the same one."""
    # CPU: this thread's CPU time (time.thread_time), so that other processes on a
    # shared machine do not count; CUDA: wall time after a synchronisation. (Multi-
    # process steps pass wall time: a rank waiting in a collective uses no CPU.)
    if clock is None:
        clock = time.thread_time if device.type == "cpu" else time.perf_counter
    k = len(steps)
    times: List[List[float]] = [[] for _ in steps]
    for i in range(warmup + n):
        order = [(i + j) % k for j in range(k)]
        for j in order:
            _sync(device)
            t0 = clock()
            steps[j]()
            _sync(device)
            t1 = clock()
            if i >= warmup:
                times[j].append(t1 - t0)
    return times


def run_against(old, build: Callable[[], nn.Module], shape: Tuple[int, ...], device: torch.device,
                steps: int, warmup: int, block: int, variant: str) -> Tuple[float, float, float, float, float]:
    """One repetition: plain, ``old`` watched, this checkout watched and a second copy of this
    checkout watched (A/A), rotating. Returns the plain step (s) and, as medians over blocks,
    the added fraction of old and new over plain, new minus old and new minus new (A/A), in
    fractions of the plain step."""
    torch.manual_seed(0)
    base = build().to(device)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, 10, (shape[0],), device=device)
    kwargs = _watch_kwargs(variant)
    fns, mons = [], []
    for lib in (None, old, gradlens, gradlens):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        if lib is not None:
            mons.append(lib.watch(model, opt, **kwargs))
        fns.append(make_step(model, opt, x, y))
    try:
        plain, t_old, t_new, t_aa = time_rotating(fns, steps, warmup, device)
    finally:
        for mon in mons:
            mon.close()
    block = max(1, min(block, steps))
    starts = range(0, steps - block + 1, block)
    mean = lambda t, i: sum(t[i : i + block]) / block  # noqa: E731
    rows = [(mean(plain, i), mean(t_old, i), mean(t_new, i), mean(t_aa, i)) for i in starts]
    med = statistics.median
    return (med(r[0] for r in rows), med(r[1] / r[0] - 1 for r in rows), med(r[2] / r[0] - 1 for r in rows),
            med((r[2] - r[1]) / r[0] for r in rows), med((r[3] - r[2]) / r[0] for r in rows))


def main_against(args, models, device: torch.device, steps: int, warmup: int) -> int:
    """``--against REV``: the table of :func:`run_against` repetitions per model."""
    with tempfile.TemporaryDirectory() as tmp:
        old = load_against(args.against, tmp)
        rev = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "rev-parse", "--short", args.against], capture_output=True, text=True).stdout.strip()
        print(f"# gradlens watch({args.variant}): this checkout (new) against {args.against} ({rev}, old), "
              f"torch {torch.__version__}, device {device}, threads {args.threads}; {args.reps} reps of "
              f"{steps} rounds (plain, old, new, new again) in blocks of {args.block}, medians of block "
              f"means, added time in % of the plain step")
        for title, (build, shape) in models.items():
            print(f"\n## {title}")
            print(f"{'rep':>4s} {'plain ms':>9s} {'old':>8s} {'new':>8s} {'new-old':>8s} {'A/A':>8s}")
            reps = []
            for r in range(args.reps):
                row = run_against(old, build, shape, device, steps, warmup, args.block, args.variant)
                reps.append(row)
                print(f"{r + 1:4d} {row[0] * 1e3:9.2f} " + " ".join(f"{100 * v:+7.2f}%" for v in row[1:]), flush=True)
            cols = list(zip(*reps))
            print(f"{'med':>4s} {statistics.median(cols[0]) * 1e3:9.2f} "
                  + " ".join(f"{100 * statistics.median(c):+7.2f}%" for c in cols[1:]))
            print(f"{'range':>4s} {'':9s} " + " ".join(f"{100 * (max(c) - min(c)):7.2f} " for c in cols[1:]))
    return 0


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="timed step pairs per variant (default 400)")
    parser.add_argument("--block", type=int, default=40,
                        help="pairs per block; a multiple of every periodic cadence (default 40)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps, small batches")
    parser.add_argument("--models", default=None, help="comma-separated subset: mlp,cnn")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="time watch(--variant) of this checkout against git revision REV's, paired")
    parser.add_argument("--reps", type=int, default=5, help="--against: repetitions (default 5)")
    parser.add_argument("--variant", default="every=1",
                        help="--against: watch keyword arguments, e.g. every=1,activations=1 (default every=1)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    if args.block < 1 or (not args.quick and steps < args.block):
        parser.error(f"--block must be between 1 and --steps ({steps}), got {args.block}")
    models = dict(MODELS)
    if args.models:
        keep = {m.strip().lower() for m in args.models.split(",")}
        models = {k: v for k, v in models.items() if k.split()[0].lower() in keep}
    if args.quick:  # smaller batches keep the smoke run short; the code path is the same
        models = {k: (b, (8,) + s[1:]) for k, (b, s) in models.items()}
    if args.against is not None:
        if args.reps < 1:
            parser.error(f"--reps must be at least 1, got {args.reps}")
        return main_against(args, models, device, steps, warmup)
    clock = "thread CPU time" if device.type == "cpu" else "wall time, synchronised"
    print(f"# gradlens overhead, torch {torch.__version__}, device {device}, threads {args.threads}, "
          f"{steps} step pairs per row in blocks of {args.block} (medians of block means, {clock}), "
          f"warmup {warmup}")
    with tempfile.TemporaryDirectory() as tmp:
        for title, (build, shape) in models.items():
            print(f"\n## {title}")
            print(f"{'variant':30s} {'plain ms':>9s} {'variant ms':>11s} {'ratio':>7s} {'added':>8s} "
                  f"{'median step':>12s}")
            for variant in VARIANTS:
                a, b, ratio, step_ratio = run_variant(variant, build, shape, device, steps, warmup, tmp, args.block)
                print(f"{variant:30s} {a * 1e3:9.2f} {b * 1e3:11.2f} {ratio:7.3f} {100 * (ratio - 1):+7.1f}% "
                      f"{100 * (step_ratio - 1):+11.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
