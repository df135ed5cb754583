"""``gradlens demo``: train three small networks under ``gradlens.watch`` and diagnose them.

* ``deep_sigmoid``: 10 sigmoid layers, the gradient shrinks at each one (vanishing);
* ``bad_init_relu``: a ReLU stack initialised ~2.8x too large (exploding);
* ``healthy_residual``: a pre-norm residual MLP with LayerNorm and Adam (silent).

Synthetic data made in code; a few seconds on a laptop CPU. Each run is logged to
``LOGDIR/<name>`` for TensorBoard and for ``gradlens report``.

Example::

    $ gradlens demo --logdir runs/demo --steps 60
    $ tensorboard --logdir runs/demo
    $ gradlens report runs/demo --plot flow.png
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from typing import Dict, List, Optional, TextIO, Tuple

__all__ = ["DEMOS", "run_demo", "add_arguments", "run"]

#: name -> (what it shows, expected kind or None)
DEMOS: Dict[str, Tuple[str, Optional[str]]] = {
    "deep_sigmoid": ("10-layer sigmoid MLP, SGD", "vanishing"),
    "bad_init_relu": ("8-layer ReLU MLP, weights ~2.8x He init, SGD", "exploding"),
    "healthy_residual": ("6-block pre-norm residual MLP with LayerNorm, Adam", None),
}

_DEFAULT_LOGDIR = os.path.join("runs", "gradlens-demo")


def _build(name: str):
    import torch

    from gradlens import _demo_models as m

    torch.manual_seed(0)
    if name == "deep_sigmoid":
        model = m.deep_sigmoid()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    elif name == "bad_init_relu":
        model = m.bad_relu()
        # a small lr keeps the run finite, so the gradients stay as the init made them
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    else:
        model = m.ResidualMLP()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt


def _progress(out: TextIO, label: str, i: int, n: int, width: int = 30) -> None:
    done = int(width * i / n)
    bar = "#" * done + "-" * (width - done)
    end = "\n" if i == n else ""
    if getattr(out, "isatty", lambda: False)() or i == n:
        out.write(f"\r  {label:<18} [{bar}] {i}/{n}{end}")
        out.flush()


def run_demo(logdir: str = _DEFAULT_LOGDIR, *, steps: int = 60, out: Optional[TextIO] = None,
             batch: int = 32) -> Dict[str, List]:
    """Train every demo network for ``steps`` steps under ``gradlens.watch``.

    Returns ``{name: findings}`` and prints progress and each diagnosis to ``out``.

    Raises:
        ValueError: ``steps`` < 1.
    """
    import torch

    from gradlens._demo_models import synthetic_classification

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"run_demo(steps=...) expects an int >= 1, got {steps!r}")
    out = out or sys.stdout
    x, y = synthetic_classification()
    results: Dict[str, List] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest
    logger = logging.getLogger("gradlens")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)  # the demo prints each diagnosis itself
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in DEMOS:
                results[name] = _train_one(name, x, y, logdir, steps, batch, out)
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)
    print(f"Open the logs in TensorBoard:\n  tensorboard --logdir {logdir}", file=out)
    print(f"Re-diagnose them from the event files:\n  gradlens report {logdir}", file=out)
    print(f"Draw their gradient-flow figures:\n  gradlens report {logdir} --plot flow.png", file=out)
    return results


def _train_one(name: str, x, y, logdir: str, steps: int, batch: int, out: TextIO) -> List:
    import torch.nn.functional as F

    import gradlens
    from gradlens.diagnose.finding import one_line

    what, _expected = DEMOS[name]
    model, opt = _build(name)
    t0 = time.perf_counter()
    print(f"{name}: {what}", file=out)
    with gradlens.watch(model, opt, logdir=os.path.join(logdir, name)) as mon:
        for i in range(steps):
            j = (i * batch) % x.shape[0]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[j:j + batch]), y[j:j + batch])
            mon.observe_loss(loss)
            loss.backward()
            opt.step()
            _progress(out, name, i + 1, steps)
        findings = list(mon.findings)
    loud = [f for f in findings if f.is_problem]
    took = time.perf_counter() - t0
    if not loud:
        print(f"  diagnosis ({took:.1f}s): healthy, nothing at warning level", file=out)
    else:
        print(f"  diagnosis ({took:.1f}s):", file=out)
        for f in loud:
            print("    " + one_line(f, f" since step {f.step}"), file=out)
    print("", file=out)
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradlens demo``."""
    parser.add_argument("--logdir", default=_DEFAULT_LOGDIR,
                        help=f"where to write the TensorBoard logs (default: {_DEFAULT_LOGDIR})")
    parser.add_argument("--steps", type=int, default=60, help="training steps per network (default: 60)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``gradlens demo``; returns the exit code."""
    if args.steps < 1:
        print(f"gradlens demo: --steps expects an integer >= 1, got {args.steps}", file=sys.stderr)
        return 2
    if os.path.exists(args.logdir) and not os.path.isdir(args.logdir):
        print(f"gradlens demo: --logdir {args.logdir!r} is a file; give a directory", file=sys.stderr)
        return 2
    run_demo(args.logdir, steps=args.steps)
    return 0
