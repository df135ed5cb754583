"""GradlensCallback under a real lightning.pytorch Trainer (CPU).

Reference: a callback of the test's own that captures each parameter's gradient
norm in ``on_before_optimizer_step`` (the gradients the update uses, clipping off)
and the LightningModule's own losses.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from gradlens.integrations.lightning import GradlensCallback  # noqa: E402

STEPS = 4


class _Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.detach().float().item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Capture(pl.Callback):
    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms.append({n: p.grad.float().norm().item() for n, p in pl_module.named_parameters()})


def _data(n=64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :2] * 2), batch_size=8)


@pytest.mark.parametrize("kw,accumulate", [
    (dict(), 1),
    (dict(accumulate_grad_batches=2), 2),
    (dict(precision="bf16-mixed"), 1),
], ids=["fp32", "accumulate-2", "bf16-mixed"])
def test_statistics_and_loss_are_those_of_each_optimizer_step(tmp_path, kw, accumulate):
    module, capture, cb = _fit_with(tmp_path, kw)
    mon = cb.monitor
    assert len(capture.norms) == STEPS
    df = mon.dataframe().set_index(["step", "param"])
    assert sorted(df.index.get_level_values(0).unique()) == list(range(STEPS))
    for step, ref in enumerate(capture.norms):
        for name, norm in ref.items():
            assert df.loc[(step, name), "grad_norm"] == pytest.approx(norm, rel=1e-5), (step, name)
    losses = [sum(module.losses[i * accumulate:(i + 1) * accumulate]) / accumulate for i in range(STEPS)]
    assert [r.loss for r in mon.records()] == pytest.approx(losses, rel=1e-5)
    # detached at fit end: no hook left on the optimizer
    opt = mon._optimizers[0]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def _fit_with(tmp_path, kw):
    module, capture, cb = _Module(), _Capture(), GradlensCallback(update_every=0)
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[capture, cb], **kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, _data())
    return module, capture, cb


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_clipping_is_applied_before_the_statistics(tmp_path, precision):
    # (Lightning runs precision="16-mixed" as bf16-mixed on CPU, so the GradScaler path
    # is tested in tests/monitor/test_watch_setups.py)
    module, capture, cb = _fit_with(tmp_path, dict(precision=precision, gradient_clip_val=1e-3))
    totals = [math.sqrt(sum(v * v for v in rec.param_stats["grad_norm"].values())) for rec in cb.monitor.records()]
    assert totals and all(t == pytest.approx(1e-3, rel=1e-2) for t in totals)  # after clipping


def test_writes_into_the_trainers_tensorboard_logger(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run")
    module, cb = _Module(), GradlensCallback()
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, _data())
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    from gradlens._tags import decode_tag

    (tag,) = [t for t in acc.Tags()["scalars"] if decode_tag(t) and decode_tag(t)[1:3] == ("grad_norm", "net.0")]
    assert [e.step for e in acc.Scalars(tag)] == list(range(STEPS))


def test_unknown_options_are_rejected():
    with pytest.raises(TypeError, match=r"unknown watch option\(s\) \['evry'\]"):
        GradlensCallback(evry=2)


def test_a_callback_that_cannot_attach_warns_and_fit_goes_on(tmp_path):
    module, capture = _Module(), _Capture()
    cb = GradlensCallback(halt_on="nonfinte")
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[capture, cb])
    with pytest.warns(RuntimeWarning, match="could not attach .*nonfinte"):
        trainer.fit(module, _data())
    assert cb.monitor is None and len(capture.norms) == STEPS


def test_writes_into_its_own_logdir_without_a_tensorboard_logger(tmp_path):
    module, capture, cb = _fit_with(tmp_path, {})
    events = [f for d, _, fs in os.walk(tmp_path / "gradlens") for f in fs if "tfevents" in f]
    assert len(events) == 1
