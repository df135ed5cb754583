"""The default saturation probe (``watch(saturation=...)``): the saturated fractions of the
bounded hidden modules equal torch's numbers, on its cadence only, hooked only for that
forward, and gone after ``close()``; the model computes bit-identical results."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradlens
from gradlens.monitor.sources.activations import SATURATION_EVERY
from gradlens.monitor.stats import SAT_BAND

#: (module, limits) of every bounded module kind the probe knows
BOUNDED = [
    (nn.Tanh(), (-1.0, 1.0)), (nn.Sigmoid(), (0.0, 1.0)), (nn.Hardtanh(-2.0, 2.0), (-2.0, 2.0)),
    (nn.ReLU6(), (0.0, 6.0)), (nn.Hardsigmoid(), (0.0, 1.0)), (nn.Softsign(), (-1.0, 1.0)),
]


def _model(act, out_act=None):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 32), act, nn.Linear(32, 3)] + ([out_act] if out_act is not None else [])
    model = nn.Sequential(*layers)
    with torch.no_grad():  # most outputs near the limits, some not (softsign needs |x| > 49)
        model[0].weight.mul_(200.0 if isinstance(act, nn.Softsign) else 6.0)
    return model


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _reference_frac(y, limits):
    """Independent reference: min(y - lo, hi - y) < SAT_BAND * (hi - lo), in float64."""
    lo, hi = limits
    y = y.detach().double()
    return (torch.minimum(y - lo, hi - y) < SAT_BAND * (hi - lo)).double().mean().item()


def _run(model, steps, seed=1, **watch):
    """Train ``steps`` SGD steps under watch; returns (monitor, per-step reference outputs of '1')."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(20, 6, generator=g) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    outs = []
    keep = model[1].register_forward_hook(lambda m, a, y: outs.append(y.detach().clone()))
    with gradlens.watch(model, opt, **watch) as mon:
        for x in xs:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    keep.remove()
    return mon, outs


@pytest.mark.parametrize("act, limits", BOUNDED, ids=[type(m).__name__ for m, _ in BOUNDED])
def test_probe_fractions_equal_torch_on_its_cadence(act, limits):
    model = _model(act)
    mon, outs = _run(model, 21)
    probed = {r.step: r for r in mon.records() if "act_sat_frac" in r.stats}
    assert sorted(probed) == [0, SATURATION_EVERY, 2 * SATURATION_EVERY]
    for step, rec in probed.items():
        assert set(rec.stats["act_sat_frac"]) == {"1"}  # the bounded hidden module only
        y = outs[step]
        frac = _reference_frac(y, limits)
        assert 0.0 < frac < 1.0  # the test exercises both sides of the band
        assert rec.get("act_sat_frac", "1") == pytest.approx(frac, abs=1e-7)
        if isinstance(act, nn.ReLU6):  # its exact zeros are counted apart (the dead region)
            assert rec.get("act_zero_frac", "1") == pytest.approx((y == 0).double().mean().item())
        else:
            assert "act_zero_frac" not in rec.stats
        # nothing else is measured: no activation tracing by default
        assert not any(s in rec.stats for s in ("act_mean", "act_std", "out_grad_norm", "act_dead_frac"))


def test_the_output_module_is_left_to_the_output_signals():
    model = _model(nn.Tanh(), out_act=nn.Sigmoid())
    mon, _ = _run(model, 1)
    (rec,) = mon.records()
    assert set(rec.stats["act_sat_frac"]) == {"1"}
    assert 0.0 <= rec.signals["output_sat_frac"] <= 1.0  # the Sigmoid output, measured there
    # without the output signals the probe takes the output module too
    model = _model(nn.Tanh(), out_act=nn.Sigmoid())
    mon, _ = _run(model, 1, output_stats=False)
    assert set(mon.records()[0].stats["act_sat_frac"]) == {"1", "3"}


def test_hooks_only_for_the_probed_forward_and_none_after_close():
    model = _model(nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 6)
    armed = []
    with gradlens.watch(model, opt, output_stats=False, replay_nonfinite=False) as mon:
        for _ in range(SATURATION_EVERY + 1):
            armed.append(len(model[1]._forward_hooks))  # before this step's forward
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
    assert armed == [1] + [0] * (SATURATION_EVERY - 1) + [1]
    assert all(len(m._forward_pre_hooks) == 0 for m in model[1:])  # no pre-hook: a forward hook only
    assert _hooks(model) == 0 and len(model[1]._forward_hooks) == 0
    assert mon.steps_seen == SATURATION_EVERY + 1


def test_no_bounded_module_no_hook():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradlens.watch(model, opt, output_stats=False, replay_nonfinite=False) as mon:
        assert all(len(m._forward_hooks) == 0 for m in model)
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
    assert "act_sat_frac" not in mon.records()[0].stats


@pytest.mark.parametrize("watch", [{}, {"saturation": False}, {"activations": 3}],
                         ids=["default", "saturation_off", "with_activations"])
def test_bit_identical_with_and_without_gradlens(watch):
    plain = _model(nn.Tanh())
    watched = _model(nn.Tanh())
    _run(watched, 12, **watch)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    for _ in range(12):
        x = torch.randn(20, 6, generator=g)
        opt.zero_grad()
        plain(x).pow(2).mean().backward()
        opt.step()
    for (n, a), (_, b) in zip(plain.named_parameters(), watched.named_parameters()):
        assert torch.equal(a, b), n
    assert _hooks(watched) == 0


def test_saturation_false_means_no_probe_and_activations_keep_their_meaning():
    mon, _ = _run(_model(nn.Tanh()), 11, saturation=False)
    assert not any("act_sat_frac" in r.stats for r in mon.records())
    # activations=3 traces steps 0, 3, 6, 9 in full; the probe takes step 10, off that cadence
    mon, outs = _run(_model(nn.Tanh()), 11, activations=3)
    full = [r.step for r in mon.records() if "act_mean" in r.stats]
    probed = [r.step for r in mon.records() if "act_sat_frac" in r.stats and "act_mean" not in r.stats]
    assert full == [0, 3, 6, 9] and probed == [10]
    assert mon.records()[10].get("act_sat_frac", "1") == pytest.approx(_reference_frac(outs[10], (-1, 1)), abs=1e-7)


def test_probe_cadence_is_in_logged_steps():
    mon, _ = _run(_model(nn.Tanh()), 9, every=2, saturation=2)
    # logged steps 0, 2, 4, 6, 8 (indices 0..4 among logged): probed at indices 0, 2, 4
    assert [r.step for r in mon.records() if "act_sat_frac" in r.stats] == [0, 4, 8]


def test_eval_forwards_are_not_probed():
    model = _model(nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 6)
    with gradlens.watch(model, opt) as mon:
        with torch.no_grad():
            model(x * 100)  # an evaluation pass before the step: all saturated, not recorded
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    assert mon.records()[0].get("act_sat_frac", "1") < 0.9  # x * 100 would pin nearly every unit


@pytest.mark.parametrize("bad, error", [("often", TypeError), (-1, ValueError), (1.5, TypeError)])
def test_bad_saturation_option_names_the_argument(bad, error):
    model = _model(nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(error, match=r"watch\(saturation=\.\.\.\)"):
        gradlens.watch(model, opt, saturation=bad)
    assert _hooks(model) == 0


def test_close_while_armed_removes_the_probe():
    model = _model(nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradlens.watch(model, opt, output_stats=False, replay_nonfinite=False)
    for _ in range(SATURATION_EVERY):  # after step 9 the probe is armed for step 10
        opt.zero_grad()
        model(torch.randn(8, 6)).sum().backward()
        opt.step()
    assert len(model[1]._forward_hooks) == 1
    mon.close()
    assert _hooks(model) == 0


def test_a_step_the_tracer_traces_is_not_probed_twice():
    model = _model(nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hooks = []
    with gradlens.watch(model, opt, activations=SATURATION_EVERY, output_stats=False, replay_nonfinite=False):
        for _ in range(SATURATION_EVERY + 1):
            hooks.append(len(model[1]._forward_hooks))
            opt.zero_grad()
            model(torch.randn(8, 6)).sum().backward()
            opt.step()
    # steps 0 and 10: the tracer's forward hook only (its statistics hold the saturation)
    assert hooks == [1] + [0] * (SATURATION_EVERY - 1) + [1]
