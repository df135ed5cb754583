"""Train a small classifier with gradlens watching it, then print what it recorded.

Run:
    python examples/watch_training.py --steps 200 --logdir runs/watch_demo
    tensorboard --logdir runs/watch_demo

TensorBoard then shows one section per statistic (``grad_norm/``, ``grad_max/``,
``update_ratio/``, ``act_dead_frac/``, ...), a CUSTOM SCALARS tab with one
multi-line chart per statistic (all layers, input side first), the gradient-flow
image (IMAGES tab, ``gradlens/gradient_flow``: log10 gradient norm, layers x
steps) and the findings (TEXT tab). Pass ``--bad-init`` to start with a badly
scaled first layer and watch its gradient statistics stand out.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_data(n: int, generator):
    """A linearly separable-ish toy problem: 20 features, 4 classes."""
    import torch

    x = torch.randn(n, 20, generator=generator)
    w = torch.randn(20, 4, generator=generator)
    y = (x @ w + 0.1 * torch.randn(n, 4, generator=generator)).argmax(1)
    return x, y


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train an MLP under gradlens.watch.")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument("--logdir", default=None, help="TensorBoard log directory (default: in memory only)")
    parser.add_argument("--every", type=int, default=1, help="record every N-th step")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--bad-init", action="store_true", help="scale the first layer's weights by 50")
    args = parser.parse_args(argv)
    # imported after parsing so that --help and bad arguments answer at once
    import torch
    from torch import nn

    import gradlens

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.Tanh(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 4),
    )
    if args.bad_init:
        with torch.no_grad():
            model[0].weight.mul_(50)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all, y_all = make_data(4096, gen)

    with gradlens.watch(model, opt, logdir=args.logdir, every=args.every, activations=True) as mon:
        for step in range(args.steps):
            idx = torch.randint(0, len(x_all), (args.batch,), generator=gen)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            mon.observe_loss(loss)
            loss.backward()
            opt.step()

    layers = mon.dataframe(level="layer")
    last = layers[layers.step == layers.step.max()]
    print(f"recorded {layers.step.nunique()} steps; last step {int(layers.step.max())}, "
          f"loss {last.loss.iloc[0]:.4f}")
    fmt = lambda v: f"{v:.3g}"  # noqa: E731
    print(last[["layer", "grad_norm", "weight_norm"]].to_string(index=False, float_format=fmt))
    # activations are traced on every 10th logged step: show the last traced one
    traced = layers[layers.act_mean.notna()]
    at = traced.step.max()
    print(f"activations at step {int(at)}:")
    cols = ["layer", "act_mean", "act_dead_frac", "act_sat_frac", "out_grad_norm"]
    print(traced[traced.step == at][cols].to_string(index=False, float_format=fmt))
    for finding in mon.findings:
        print(finding)
    if args.logdir:
        print(f"TensorBoard: tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
