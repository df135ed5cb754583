"""Fit a small LightningModule with gradlens watching it through GradlensCallback.

Run:
    pip install 'gradlens[lightning]'
    python examples/lightning_callback.py --steps 100 --root runs/lightning_demo
    tensorboard --logdir runs/lightning_demo

The gradient statistics land in the Trainer's own TensorBoardLogger run, next to
Lightning's metrics; the callback's ``monitor`` stays readable after ``fit``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import lightning.pytorch as pl  # noqa: E402

from gradlens.integrations.lightning import GradlensCallback  # noqa: E402


class Classifier(pl.LightningModule):
    """A 3-layer MLP on a toy 4-class problem."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--root", default="runs/lightning_demo")
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (2 with --strategy ddp)")
    parser.add_argument("--strategy", default="auto", help="a Lightning strategy, e.g. ddp")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch * 8, 20, generator=gen)
    y = (x[:, :4].argmax(1)).long()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch, shuffle=True)
    cb = GradlensCallback(every=1)
    trainer = pl.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=args.devices, strategy=args.strategy,
        accumulate_grad_batches=args.accumulate,
        logger=pl.loggers.TensorBoardLogger(args.root, name="run"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, callbacks=[cb],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        trainer.fit(Classifier(), data)
    df = cb.monitor.dataframe("layer")
    if not trainer.is_global_zero:  # every rank computes the same findings; rank 0 reports
        return
    print(f"recorded {df.step.nunique()} steps into {trainer.logger.log_dir}")
    last = df[df.step == df.step.max()][["layer", "grad_norm"]]
    print("last step, gradient norm per layer (input side first):")
    for layer, norm in last.itertuples(index=False):
        print(f"  {layer:8s} {norm:.3e}")
    problems = [f for f in cb.monitor.findings if f.is_problem]
    print(f"findings: {len(problems)}" + "".join(f"\n  {f}" for f in problems))


if __name__ == "__main__":
    main()
