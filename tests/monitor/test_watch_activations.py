"""activations=True: forward statistics and the backprop signal equal torch's numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradlens
from conftest import DEVICES
from gradlens.monitor.stats import SAT_BAND
from watch_helpers import mlp


def _reference(model, x):
    """Independent reference: outputs and output-gradients via plain forward hooks + retain_grad."""
    outs = {}
    handles = []
    for name, m in model.named_children():
        def hook(mod, inp, out, name=name):
            out.retain_grad()
            outs[name] = out
        handles.append(m.register_forward_hook(hook))
    loss = model(x).pow(2).mean()
    loss.backward()
    for h in handles:
        h.remove()
    return outs


@pytest.mark.parametrize("device", DEVICES)
def test_activation_stats_equal_torch(device):
    model = mlp().to(device)
    ref_model = mlp().to(device)
    with torch.no_grad():
        for m in (model, ref_model):
            m[0].bias[:3] = -10.0  # three ReLU units dead on the batch
            m[2].weight.mul_(8)  # push the tanh into saturation
    x = torch.randn(16, 6, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradlens.watch(model, opt, activations=1) as mon:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    rec = mon.records()[0]
    assert rec.layers == ["0", "1", "2", "3", "4"]
    outs = _reference(ref_model, x)
    for name, out in outs.items():
        y = out.detach().double()
        assert rec.get("act_mean", name) == pytest.approx(y.mean().item(), rel=1e-5, abs=1e-6)
        assert rec.get("act_std", name) == pytest.approx(y.std().item(), rel=1e-5)
        assert rec.get("act_zero_frac", name) == pytest.approx((y == 0).double().mean().item())
        dead = ((y != 0).sum(0) == 0).double().mean().item()
        assert rec.get("act_dead_frac", name) == pytest.approx(dead)
        assert rec.get("act_nonfinite", name) == 0
        assert rec.get("out_grad_norm", name) == pytest.approx(out.grad.norm().item(), rel=1e-5)
    assert rec.get("act_dead_frac", "1") > 0  # the test exercises dead units
    tanh = outs["3"].detach()
    sat = (tanh.abs() > 1 - 2 * SAT_BAND).double().mean().item()
    assert sat > 0
    assert rec.get("act_sat_frac", "3") == pytest.approx(sat)
    for name in ("0", "1", "2", "4"):
        assert math.isnan(rec.get("act_sat_frac", name))  # NaN for unbounded modules


def test_sigmoid_band_and_conv_channel_dead():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3), nn.Sigmoid())
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # channels 0, 1 dead everywhere
        model[3].weight.mul_(30)
    x = torch.randn(5, 2, 6, 6)
    mon = gradlens.watch(model, activations=1)
    out = model(x)
    out.sum().backward()
    mon.step()
    mon.close()
    rec = mon.records()[0]
    assert rec.get("act_dead_frac", "1") == pytest.approx(0.5)  # 2 of 4 channels
    y = out.detach()
    ref = ((y <= SAT_BAND) | (y >= 1 - SAT_BAND)).double().mean().item()
    assert ref > 0
    assert rec.get("act_sat_frac", "4") == pytest.approx(ref)


def test_module_called_twice_pools_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(torch.relu(self.lin(x)))

    model = Twice()
    x = torch.randn(3, 4)
    mon = gradlens.watch(model, activations=1)
    outs = []

    def keep(module, args, out):
        out.retain_grad()
        outs.append(out)

    h = model.lin.register_forward_hook(keep)
    model(x).pow(2).sum().backward()
    h.remove()
    mon.step()
    mon.close()
    rec = mon.records()[0]
    both = torch.cat([o.detach().reshape(-1) for o in outs]).double()
    assert rec.get("act_mean", "lin") == pytest.approx(both.mean().item(), rel=1e-5)
    assert rec.get("act_std", "lin") == pytest.approx(both.std().item(), rel=1e-5)
    gn = math.sqrt(sum(o.grad.norm().item() ** 2 for o in outs))
    assert rec.get("out_grad_norm", "lin") == pytest.approx(gn, rel=1e-5)
    assert rec.get("grad_norm", "lin") == pytest.approx(
        math.hypot(model.lin.weight.grad.norm().item(), model.lin.bias.grad.norm().item()), rel=1e-6)


def test_inplace_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    ref = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    ref.load_state_dict(model.state_dict())
    x = torch.randn(6, 4)
    mon = gradlens.watch(model, activations=1)
    model(x).sum().backward()
    mon.step()
    mon.close()
    pre = ref[0](x)
    pre.retain_grad()
    post = ref[1](pre)
    post.retain_grad()
    ref[2](post).sum().backward()
    rec = mon.records()[0]
    # the Linear output is measured before ReLU overwrote it in place
    assert rec.get("act_mean", "0") == pytest.approx(pre.mean().item(), rel=1e-5)
    assert rec.get("act_mean", "1") == pytest.approx(post.mean().item(), rel=1e-5)
    assert rec.get("out_grad_norm", "1") == pytest.approx(post.grad.norm().item(), rel=1e-5)
    assert rec.get("out_grad_norm", "0") == pytest.approx(pre.grad.norm().item(), rel=1e-5)
    assert torch.equal(model[0].weight.grad, ref[0].weight.grad)


def test_no_grad_eval_passes_are_not_recorded():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, activations=1) as mon:
        x = torch.randn(4, 6)
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        expected = model[0](x).mean().item()  # same weights, same input: same output
        with torch.no_grad():
            model.eval()
            model(torch.full((4, 6), 1e3))  # would change act_mean if recorded
            model.train()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model(torch.randn(4, 6))
    rec = mon.records()
    assert len(rec) == 1
    # the extra grad-enabled model[0](x) call above is pooled in: same mean
    assert rec[0].get("act_mean", "0") == pytest.approx(expected, rel=1e-5)


class _Poison(nn.Module):
    """Produces NaN where its input exceeds a threshold (a sqrt of a negative)."""

    def forward(self, x):
        return torch.sqrt(1.0 - x)


def _poison_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), _Poison(), nn.Linear(4, 2))


def test_nonfinite_origin_with_activations():
    model = _poison_model()
    mon = gradlens.watch(model, activations=1)
    x = torch.full((3, 4), 5.0)
    model(x).sum().backward()
    with pytest.warns(RuntimeWarning, match="nonfinite.*born at '2'"):
        mon.step()
    mon.close()
    rec = mon.records()[0]
    assert rec.nonfinite_origin == "2"
    assert rec.get("act_nonfinite", "1") == 0
    assert rec.get("act_nonfinite", "2") > 0


def test_nonfinite_input_is_not_blamed_on_first_module():
    model = _poison_model()
    mon = gradlens.watch(model, activations=1)
    x = torch.randn(3, 4)
    x[0, 0] = float("nan")
    model(x).sum().backward()
    with pytest.warns(RuntimeWarning, match="nonfinite"):
        mon.step()
    mon.close()
    assert mon.records()[0].nonfinite_origin is None  # the NaN came in with the data


def test_origin_probe_armed_after_nonfinite_without_activations(caplog):
    model = _poison_model()
    # no optimizer: the weights stay finite (SGD with lr=0 would still write 0 * NaN)
    with gradlens.watch(model) as mon, pytest.warns(RuntimeWarning, match="nonfinite"):
        assert not model[2]._forward_hooks
        for _ in range(3):
            model.zero_grad()
            model(torch.full((3, 4), 5.0)).sum().backward()
            mon.step()
    recs = mon.records()
    assert recs[0].nonfinite_origin is None  # seen only after the first broken record
    assert recs[0].stats["nonfinite"]["3"] > 0
    assert recs[1].nonfinite_origin == "2"
    assert not model[2]._forward_hooks  # the one-forward probe removed itself


def test_origin_probe_on_a_step_off_the_activation_cadence():
    # activations=True traces logged steps 0, 10, ...: a NaN born at step 1 is
    # found by probing the next forward, as without activations
    model = _poison_model()
    inputs = [torch.zeros(3, 4), torch.full((3, 4), 5.0), torch.full((3, 4), 5.0)]  # finite, then NaN
    with gradlens.watch(model, activations=True) as mon, pytest.warns(RuntimeWarning, match="nonfinite"):
        assert len(model[2]._forward_hooks) == 1  # the tracer's, on for step 0
        for i, x in enumerate(inputs):
            model.zero_grad()
            model(x).sum().backward()
            mon.step()
            if i == 0:
                assert not model[0]._forward_hooks  # the tracer's are off until logged step 10
        assert mon._activations.origin_probe is not None  # still broken: the next forward is probed too
    assert not model[2]._forward_hooks and not model[0]._forward_hooks  # close() removed all
    recs = mon.records()
    assert "act_mean" in recs[0].stats and "act_mean" not in recs[1].stats
    assert recs[0].nonfinite_origin is None and recs[0].get("nonfinite", "3") == 0
    assert recs[1].nonfinite_origin is None and recs[1].stats["nonfinite"]["3"] > 0
    assert recs[2].nonfinite_origin == "2"


def test_origin_is_found_on_every_broken_step():
    # each broken step arms the probe for the next forward (not only every other one)
    model = _poison_model()
    with gradlens.watch(model) as mon, pytest.warns(RuntimeWarning, match="nonfinite"):
        for _ in range(5):
            model.zero_grad()
            model(torch.full((3, 4), 5.0)).sum().backward()
            mon.step()
    assert [r.nonfinite_origin for r in mon.records()] == [None, "2", "2", "2", "2"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "values,expected",
    [
        pytest.param({}, 0, id="finite"),
        pytest.param({(0, 0): float("nan"), (3, 1): float("inf"), (5, 2): -float("inf")}, 3, id="nan-inf"),
        pytest.param({(1, 0): float("inf"), (2, 0): -float("inf")}, 2, id="inf-minus-inf"),
        pytest.param({(1, 1): 3e19, (4, 0): -3e19}, 0, id="finite-but-square-overflows"),
        pytest.param({(1, 1): 3e38, (2, 1): 3e38}, 0, id="finite-but-sum-overflows"),
    ],
)
def test_activation_nonfinite_count_is_exact(values, expected, device):
    # The count is taken only when the sum of squares is not finite (on CPU); an
    # overflow of finite values must still count 0, and every NaN/Inf must count.
    from gradlens.monitor.stats import ACT_FIELDS, activation_stats, nonfinite_count

    x = torch.randn(6, 3, device=device)
    for idx, v in values.items():
        x[idx] = v
    reference = int((~torch.isfinite(x)).sum())
    assert reference == expected
    vec, _ = activation_stats(x, limits=None, features_last=True)
    assert vec[ACT_FIELDS.index("nonfinite")].item() == expected
    assert nonfinite_count(x, x.sum()).item() == expected


def test_scratch_memory_is_bounded_with_varying_shapes():
    # A run whose output shapes change every step (sequence lengths, a short last
    # batch) keeps one scratch buffer per device, as large as the largest output,
    # not one per shape; and the statistics stay exact for every shape.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU())
    mon = gradlens.watch(model, activations=1)
    tracer = mon._activations.tracer
    largest = 0
    for length in range(1, 30):
        x = torch.randn(3, length, 5)
        model.zero_grad()
        out = model(x)
        largest = max(largest, out.numel())
        out.sum().backward()
        mon.step()
        rec = mon.records()[-1]
        ref = out.detach().double()
        assert rec.get("act_zero_frac", "1") == pytest.approx((ref == 0).double().mean().item())
        with torch.no_grad():  # not traced: a traced call would be pooled into the next step
            pre = model[0](x).double()
        assert rec.get("act_mean", "0") == pytest.approx(pre.mean().item(), rel=1e-5, abs=1e-7)
    assert list(tracer._buffers) == [torch.device("cpu")]
    assert tracer._buffers[torch.device("cpu")].numel() == largest
    mon.close()
