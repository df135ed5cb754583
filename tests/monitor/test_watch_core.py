"""gradlens.watch: recorded values equal torch's own numbers; the pandas view."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradlens
from conftest import DEVICES
from watch_helpers import mlp, train


@pytest.mark.parametrize("device", DEVICES)
def test_param_stats_equal_torch(device):
    model = mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        gen = torch.Generator().manual_seed(1)
        refs = []
        for _ in range(3):
            opt.zero_grad()
            x = torch.randn(5, 6, generator=gen).to(device)
            loss = model(x).pow(2).mean()
            loss.backward()
            refs.append({n: (p.grad.norm().item(), p.grad.abs().max().item(), p.norm().item())
                         for n, p in model.named_parameters()})
            opt.step()
    df = mon.dataframe()
    assert sorted(df["step"].unique().tolist()) == [0, 1, 2]
    assert len(df) == 3 * 6
    for step, ref in enumerate(refs):
        for name, (gn, gm, wn) in ref.items():
            row = df[(df.step == step) & (df.param == name)].iloc[0]
            assert row["layer"] == name.rpartition(".")[0]
            assert row["grad_norm"] == pytest.approx(gn, rel=1e-6)
            assert row["grad_max"] == pytest.approx(gm, rel=1e-6)
            assert row["weight_norm"] == pytest.approx(wn, rel=1e-6)
            assert row["nonfinite"] == 0
            assert row["missing_grad"] == 0


def test_layer_stats_aggregate_params():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        refs = train(model, opt, 2)
    rec = mon.records()[-1]
    assert rec.layers == ["0", "2", "4"]
    for layer in ("0", "2", "4"):
        w, b = refs[-1][f"{layer}.weight"], refs[-1][f"{layer}.bias"]
        assert rec.stats["grad_norm"][layer] == pytest.approx(math.hypot(w[0], b[0]), rel=1e-6)
        assert rec.stats["grad_max"][layer] == pytest.approx(max(w[1], b[1]), rel=1e-6)
        assert rec.stats["weight_norm"][layer] == pytest.approx(math.hypot(w[2], b[2]), rel=1e-6)
    ldf = mon.dataframe(level="layer")
    # (the Tanh '3' has a row of its own at step 0: the default saturation probe's act_sat_frac)
    assert set(ldf.dropna(subset=["grad_norm"]).layer) == {"0", "2", "4"}
    assert set(ldf.layer) == {"0", "2", "3", "4"}


def test_update_ratio_equals_weight_change():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradlens.watch(model, opt, update_every=1) as mon:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train(model, opt, 1)
    df = mon.dataframe()
    for name, p in model.named_parameters():
        ref = ((p.detach() - before[name]).norm() / before[name].norm()).item()
        got = df[df.param == name]["update_ratio"].iloc[0]
        assert got == pytest.approx(ref, rel=1e-5)


def test_update_ratio_own_cadence():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, update_every=3) as mon:
        train(model, opt, 7)
    df = mon.dataframe()
    measured = sorted(df[df.update_ratio.notna()].step.unique().tolist())
    assert measured == [0, 3, 6]
    with gradlens.watch(model, opt, update_every=0) as mon:
        train(model, opt, 2)
    assert mon.dataframe().update_ratio.isna().all()


def test_every_n_logs_only_those_steps():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, every=3) as mon:
        refs = train(model, opt, 7)
    df = mon.dataframe()
    assert sorted(df.step.unique().tolist()) == [0, 3, 6]
    row = df[(df.step == 6) & (df.param == "2.weight")].iloc[0]
    assert row.grad_norm == pytest.approx(refs[6]["2.weight"][0], rel=1e-6)
    assert mon.steps_seen == 7


def test_loss_is_recorded():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        refs = train(model, opt, 2, mon=mon)
    assert [r.loss for r in mon.records()] == pytest.approx([r["loss"] for r in refs], rel=1e-6)


def test_step_without_optimizer():
    model = mlp()
    mon = gradlens.watch(model)
    model(torch.randn(4, 6)).sum().backward()
    mon.step()
    mon.close()
    df = mon.dataframe()
    ref = model[2].weight.grad.norm().item()
    assert df[df.param == "2.weight"].grad_norm.iloc[0] == pytest.approx(ref, rel=1e-6)
    assert df.update_ratio.isna().all()


def test_step_with_optimizer_raises():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        with pytest.raises(RuntimeError, match="without an optimizer"):
            mon.step()


def test_missing_grad_is_recorded():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    model = Partial()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    df = mon.dataframe()
    unused = df[df.layer == "unused"]
    assert unused.missing_grad.tolist() == [1.0, 1.0]
    assert unused.grad_norm.isna().all()
    rec = mon.records()[0]
    assert rec.stats["missing_grad"]["unused"] == 2
    assert "unused" not in rec.stats["grad_norm"]
    assert rec.stats["missing_grad"]["used"] == 0


def test_nonfinite_counted_never_raises():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        model[2].weight.grad[0, :3] = float("nan")
        model[2].weight.grad[1, 0] = float("inf")
        with pytest.warns(RuntimeWarning, match="nonfinite"):  # a finding, never an exception
            opt.step()
    df = mon.dataframe()
    row = df[df.param == "2.weight"].iloc[0]
    assert row.nonfinite == 4
    assert not math.isfinite(row.grad_norm)
    assert df[df.param == "0.weight"].nonfinite.iloc[0] == 0
    assert mon.records()[0].stats["nonfinite"]["2"] == 4


def test_dataframe_columns_and_bad_level():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        train(model, opt, 1)
    cols = list(mon.dataframe().columns)
    assert cols[:3] == ["step", "layer", "param"]
    for stat in gradlens._record.GRAD_STATS:
        assert stat in cols
    with pytest.raises(ValueError, match="level"):
        mon.dataframe(level="bogus")


def test_history_is_bounded_and_thinned():
    model = nn.Linear(2, 1)
    mon = gradlens.watch(model, max_history=10)
    for _ in range(100):
        model.zero_grad()
        model(torch.randn(3, 2)).sum().backward()
        mon.step()
    mon.close()
    steps = sorted(mon.dataframe().step.unique().tolist())
    assert len(steps) < 10
    assert steps[-1] == 99 and steps[0] == 0  # whole run still covered
    assert steps[-3:] == [97, 98, 99]  # recent steps stay dense


def test_empty_parameter_is_recorded_never_raises():
    # A zero-size parameter (a pruned or 0-feature layer) has norm 0 and max|g| 0;
    # it must not crash the step (aminmax raises on empty input).
    model = mlp()
    model.extra = nn.Parameter(torch.zeros(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        (model(torch.randn(4, 6)).sum() + model.extra.sum()).backward()
        opt.step()
    row = mon.dataframe().set_index("param").loc["extra"]
    assert row.grad_norm == 0 and row.grad_max == 0 and row.weight_norm == 0
    assert row.missing_grad == 0


def test_param_stats_of_mixed_dtypes_equal_torch():
    # one group per dtype: bfloat16/float16 maxes and mins come back as float32
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3))
    model[0].to(torch.bfloat16)
    model[1].to(torch.float16)
    model[2].to(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        h = model[0](torch.randn(5, 6, dtype=torch.bfloat16))
        h = model[1](h.to(torch.float16))
        h = model[2](h.to(torch.float64))
        model[3](h.float()).pow(2).mean().backward()
        refs = {n: (p.grad.float().norm().item(), p.grad.float().abs().max().item(), p.float().norm().item())
                for n, p in model.named_parameters()}
        opt.step()
        got = mon.dataframe().set_index("param")
    assert len(refs) == 8
    for name, (norm, gmax, wnorm) in refs.items():
        assert got.loc[name, "grad_norm"] == pytest.approx(norm, rel=1e-3), name
        assert got.loc[name, "grad_max"] == pytest.approx(gmax, rel=1e-6), name
        assert got.loc[name, "weight_norm"] == pytest.approx(wnorm, rel=1e-3), name
        assert got.loc[name, "nonfinite"] == 0
