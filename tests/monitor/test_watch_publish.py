"""Records are published (sinks, rules) in batches; nothing is lost or changed by it.

``watch`` turns logged steps into records, writes them and diagnoses them in batches
of ``PUBLISH_BATCH`` steps (or after ``PUBLISH_SECONDS``). These tests pin down when
that happens and that the batched result equals publishing every step at once.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pandas as pd
import pytest
import torch

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradlens
import gradlens.monitor.packet as packet_mod
import gradlens.monitor.publish as monitor_mod
from watch_helpers import mlp, train

BATCH = monitor_mod.PUBLISH_BATCH
ROOT = Path(__file__).resolve().parents[2]


class _Recorder:
    """A stand-in SummaryWriter that remembers (tag, step) of every scalar."""

    def __init__(self) -> None:
        self.scalars: List[Tuple[str, int]] = []

    def add_scalar(self, tag, value, step=None, *args, **kwargs):
        self.scalars.append((tag, step))

    def steps(self, tag: str = "grad_norm_log10/00:0") -> List[int]:
        return [s for t, s in self.scalars if t == tag]

    def _ignore(self, *args, **kwargs):
        return None

    add_text = add_image = add_custom_scalars = add_histogram = flush = close = _ignore


@pytest.fixture
def no_clock(monkeypatch):
    """Publishing by batch size only (a slow CI machine must not publish on time)."""
    monkeypatch.setattr(monitor_mod, "PUBLISH_SECONDS", math.inf)


def test_records_are_written_in_batches_and_reading_publishes(no_clock):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    writer = _Recorder()
    with gradlens.watch(model, opt, writer=writer) as mon:
        train(model, opt, BATCH - 1)
        assert writer.steps() == []  # queued, not lost
        assert mon.steps_seen == BATCH - 1
        train(model, opt, 1)
        # the batch is full: all of it, in order, but the step that just closed (its
        # loss may still be observed after its optimizer.step())
        assert writer.steps() == list(range(BATCH - 1))
        train(model, opt, 3)
        assert writer.steps() == list(range(BATCH - 1))
        df = mon.dataframe()  # reading publishes what is queued
        assert sorted(df["step"].unique()) == list(range(BATCH + 3))
        assert writer.steps() == list(range(BATCH + 3))
        train(model, opt, 2)
    assert writer.steps() == list(range(BATCH + 5))  # close() publishes the rest


def test_findings_property_publishes_queued_steps(no_clock):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights never move
    with gradlens.watch(model, opt, update_every=1, thresholds={"persist_steps": 2}) as mon:
        train(model, opt, 3)
        assert len(mon._publisher.queue) == 3  # nothing diagnosed yet ...
        with pytest.warns(RuntimeWarning, match="updates are tiny"):
            kinds = [f.kind for f in mon.findings]  # ... until someone looks
        assert kinds == ["update_ratio"] and not mon._publisher.queue


def _run(eager: bool, steps: int = 2 * BATCH + 3) -> gradlens.Monitor:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    on_finding = (lambda f: None) if eager else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mon = gradlens.watch(model, opt, update_every=3, on_finding=on_finding, activations=2)
        train(model, opt, steps, mon=mon)
        mon.close()
    return mon


def _eager_and_batched(run):
    """Monitors of the same run published at each step and in batches; both
    dataframes (parameter and layer level) must be equal."""
    eager, batched = run(True), run(False)
    for level in ("param", "layer"):
        pd.testing.assert_frame_equal(eager.dataframe(level), batched.dataframe(level))
    return eager, batched


def test_batched_records_equal_records_published_at_each_step(no_clock):
    eager, batched = _eager_and_batched(_run)
    assert [r.__dict__ for r in eager.records()] == [r.__dict__ for r in batched.records()]
    assert [(f.kind, f.layer, f.step, f.last_step) for f in eager.findings] == [
        (f.kind, f.layer, f.step, f.last_step) for f in batched.findings
    ]
    # the update ratio was measured (and batched) on every 3rd logged step
    assert eager.dataframe()["update_ratio"].notna().sum() > 0


class _Branchy(torch.nn.Module):
    """A model whose second branch is used on odd steps only (missing gradients)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(6, 3)
        self.b = torch.nn.Linear(6, 3)

    def forward(self, x, use_b):
        return self.a(x) + (self.b(x) if use_b else 0)


def _run_branchy(eager: bool) -> gradlens.Monitor:
    model = _Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(3)
    on_finding = (lambda f: None) if eager else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt, update_every=3, on_finding=on_finding) as mon:
            for i in range(2 * BATCH + 5):
                opt.zero_grad(set_to_none=True)
                loss = model(torch.randn(4, 6, generator=gen), use_b=i % 2 == 1).pow(2).mean()
                if i % 3 == 0:
                    mon.observe_loss(loss)  # the loss on some steps only
                loss.backward()
                opt.step()
    return mon


def test_batched_steps_of_different_shapes_equal_eager_ones(no_clock):
    # steps in one batch differ: missing gradients, update ratios, a loss or not
    _, batched = _eager_and_batched(_run_branchy)
    df = batched.dataframe().set_index(["step", "param"])
    assert df.loc[(0, "b.weight"), "missing_grad"] == 1 and df.loc[(1, "b.weight"), "missing_grad"] == 0
    assert math.isnan(df.loc[(0, "b.weight"), "grad_norm"]) and df.loc[(1, "b.weight"), "grad_norm"] > 0
    assert df["loss"].notna().groupby(level="step").first().tolist() == [i % 3 == 0 for i in range(2 * BATCH + 5)]
    assert df["update_ratio"].notna().groupby(level="step").any().tolist() == [
        i % 3 == 0 for i in range(2 * BATCH + 5)
    ]


def test_on_finding_sees_each_step_at_once(no_clock):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    writer = _Recorder()
    with gradlens.watch(model, opt, writer=writer, on_finding=lambda f: None):
        for n in range(1, 4):
            train(model, opt, 1)
            assert writer.steps() == list(range(n))


def test_a_nonfinite_step_is_published_at_once(no_clock):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    writer = _Recorder()
    with gradlens.watch(model, opt, writer=writer) as mon:
        train(model, opt, 2)
        assert writer.steps() == []
        opt.zero_grad()
        model(torch.randn(4, 6)).pow(2).mean().backward()
        model[2].weight.grad[0, 0] = float("nan")
        with pytest.warns(RuntimeWarning, match="nonfinite"):
            opt.step()  # the finding is raised during this very step
        assert writer.steps() == [0, 1, 2]  # with the clean steps queued before it
        nf = mon.dataframe().set_index(["step", "param"])["nonfinite"]
        assert nf[(2, "2.weight")] == 1 and nf[(2, "0.weight")] == 0


def test_steps_are_published_after_publish_seconds(monkeypatch):
    monkeypatch.setattr(monitor_mod, "PUBLISH_SECONDS", 0.2)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    writer = _Recorder()
    with gradlens.watch(model, opt, writer=writer, every=2):
        train(model, opt, 1)
        assert writer.steps() == []  # the first waiting step starts the clock
        time.sleep(0.3)
        train(model, opt, 1)  # an unlogged step also publishes what waited too long
        assert writer.steps() == [0]


def test_statistics_of_a_batch_match_torch(no_clock):
    # values computed at each step, published later, are those of that step
    model = mlp()
    ref_model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        train(model, opt, BATCH + 2)
        df = mon.dataframe()
    refs = train(ref_model, ref_opt, BATCH + 2)
    for step, ref in enumerate(refs):
        got = df[df["step"] == step].set_index("param")
        for name, (norm, gmax, wnorm) in ((k, v) for k, v in ref.items() if k != "loss"):
            np.testing.assert_allclose(got.loc[name, ["grad_norm", "grad_max", "weight_norm"]].to_numpy(float),
                                       [norm, gmax, wnorm], rtol=1e-5)


class _Wide(torch.nn.Module):
    """300 Linear(2, 2) side by side (in a chain the gradient would vanish)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(300))

    def forward(self, x):
        return torch.stack([h(x) for h in self.heads]).sum(0)


def test_long_host_copies_are_kept_as_arrays_and_checked(no_clock):
    # 2 x 300 parameters: 1800 values per copy, past _LIST_MAX, kept as numpy arrays
    model = _Wide()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    assert 3 * 600 > packet_mod.LIST_MAX
    with gradlens.watch(model, opt) as mon:
        refs = train(model, opt, 3, inputs=2)
        assert isinstance(mon._publisher.queue[0][1].chunks[0][1][torch.device("cpu")], np.ndarray)
        opt.zero_grad()
        model(torch.randn(4, 2)).sum().backward()
        model.heads[7].bias.grad[1] = float("inf")
        with pytest.warns(RuntimeWarning, match="nonfinite"):
            opt.step()  # found in the array copy: published at once
        assert not mon._publisher.queue
    df = mon.dataframe().set_index(["step", "param"])
    for step, ref in enumerate(refs):
        for name in ("heads.0.weight", "heads.150.bias", "heads.299.weight"):
            norm, gmax, wnorm = ref[name]
            assert df.loc[(step, name), "grad_norm"] == pytest.approx(norm, rel=1e-5)
            assert df.loc[(step, name), "grad_max"] == pytest.approx(gmax, rel=1e-6)
    assert df.loc[(3, "heads.7.bias"), "nonfinite"] == 1 and df.loc[(3, "heads.7.weight"), "nonfinite"] == 0


class _GAN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.G = torch.nn.Linear(4, 4)
        self.D = torch.nn.Linear(4, 1)


@pytest.mark.parametrize("g_first", [True, False], ids=["G-first", "D-first"])
def test_parameters_frozen_between_two_optimizers_of_a_step(g_first):
    # pix2pix/CycleGAN: D.requires_grad_(False) for G's step, True again for D's;
    # each optimizer's numbers must land on its own parameters, at every step
    model = _GAN()
    opt_g = torch.optim.SGD(model.G.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(model.D.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(5)
    refs = []

    def g_step():
        model.D.requires_grad_(False)
        opt_g.zero_grad()
        model.D(model.G(torch.randn(8, 4, generator=gen))).mean().backward()
        refs[-1].update({f"G.{n}": p.grad.norm().item() for n, p in model.G.named_parameters()})
        opt_g.step()
        model.D.requires_grad_(True)

    def d_step():
        opt_d.zero_grad()
        model.D(torch.randn(8, 4, generator=gen)).pow(2).mean().backward()
        refs[-1].update({f"D.{n}": p.grad.norm().item() for n, p in model.D.named_parameters()})
        opt_d.step()

    with gradlens.watch(model, [opt_g, opt_d]) as mon:
        for _ in range(2 * BATCH + 3):
            refs.append({})
            for fn in (g_step, d_step) if g_first else (d_step, g_step):
                fn()
    df = mon.dataframe().set_index(["step", "param"])["grad_norm"]
    assert len(refs) == 2 * BATCH + 3
    for step, ref in enumerate(refs):
        for name, norm in ref.items():
            assert df[(step, name)] == pytest.approx(norm, rel=1e-5), (step, name)


def test_a_step_that_cannot_be_built_warns_and_is_left_out(monkeypatch, no_clock):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradlens.watch(model, opt)
    train(model, opt, 2)
    real = mon._publisher.build_records
    monkeypatch.setattr(mon._publisher, "build_records", lambda batch: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.warns(RuntimeWarning, match="steps 0-1 could not be built"):
        mon.dataframe()  # training code reading the monitor is not broken by it
    monkeypatch.setattr(mon._publisher, "build_records", real)
    train(model, opt, 2)
    mon.close()
    assert sorted(mon.dataframe()["step"].unique()) == [2, 3]  # the queue is not jammed


def test_a_script_that_never_closes_still_publishes_its_last_steps(tmp_path):
    script = tmp_path / "no_close.py"
    script.write_text(
        "import sys, torch, gradlens\n"
        "model = torch.nn.Linear(3, 2)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        f"mon = gradlens.watch(model, opt, logdir={str(tmp_path / 'run')!r})\n"
        "for _ in range(13):\n"
        "    opt.zero_grad(); model(torch.randn(4, 3)).sum().backward(); opt.step()\n"
        "print(len(mon._publisher.queue))\n"  # waiting, then published at exit (no close())
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 13
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("grad_norm_log10/00:(root)")] == list(range(13))
