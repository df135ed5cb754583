"""The sharper check_backward reports, each against a planted Function and its correct twin.

* the condition on the input that holds exactly where the gradient is wrong;
* a piecewise-constant forward (straight-through gradient) points to ``reference=``;
* a gradient of broadcast shape is a warning, not a failure;
* the worst-elements list holds mismatched elements only.

float64 and float32, with a reference (torch autograd) and without (finite differences).
"""

from __future__ import annotations

import pytest
import torch
import verify_zoo as zoo

import gradlens

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
METHODS = [pytest.param(True, id="reference"), pytest.param(False, id="fd")]


def _x(n=64, seed=0, zeros=0, scale=1.2):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    x[:zeros] = 0.0
    return x


# ----------------------------------------------------------------------------- planted Functions
def _huber_fwd(x):
    return torch.where(x.abs() <= 1, 0.5 * x * x, x.abs() - 0.5)


def _huber_bw(ctx, g):
    (x,) = ctx.saved_tensors
    # d huber = clip(x, -1, 1)
    return g * x.clamp(-1, 1)


def _huber_bw_noclip(ctx, g):
    (x,) = ctx.saved_tensors
    return g * x  # BUG: the clip is missing


def _leaky_fwd(x):
    return torch.where(x > 0, x, 0.1 * x)


def _leaky_bw(ctx, g):
    (x,) = ctx.saved_tensors
    return g * torch.where(x > 0, torch.ones_like(x), torch.full_like(x, 0.1))


def _leaky_bw_dead(ctx, g):
    (x,) = ctx.saved_tensors
    return g * (x > 0).to(g.dtype)  # BUG: the 0.1 slope of the negative side is dropped


def _sqabs_fwd(x):
    return x * x.abs()


def _sqabs_bw(ctx, g):
    (x,) = ctx.saved_tensors
    # d x|x| = 2|x|
    return g * 2 * x.abs()


def _sqabs_bw_div(ctx, g):
    (x,) = ctx.saved_tensors
    return g * 2 * x * x / x.abs()  # BUG: 0/0 at x == 0


def _mask_fwd(x, m):
    return x.masked_fill(m, 0.0)


def _mask_bw(ctx, g):
    return g.masked_fill(ctx.saved_tensors[1], 0.0), None


def _mask_bw_forgot(ctx, g):
    return g, None  # BUG: the mask is not applied


def _mask_in(dtype):
    x = _x(60, seed=2).to(dtype).requires_grad_()
    m = torch.rand(60, generator=torch.Generator().manual_seed(4)) < 0.3
    return x, m


#: id -> (correct fn, broken fn, forward (reference), inputs(dtype), diagnosis substring)
CONDITIONS = {
    "abs-above-1": (
        zoo._fn(_huber_fwd, _huber_bw, "Huber"), zoo._fn(_huber_fwd, _huber_bw_noclip, "HuberNoClip"), _huber_fwd,
        lambda dt: (_x().to(dt).requires_grad_(),), "wrong exactly where |x| > 1 ({k} of 64 elements): a missing clip?",
    ),
    "negative": (
        zoo._fn(_leaky_fwd, _leaky_bw, "Leaky"), zoo._fn(_leaky_fwd, _leaky_bw_dead, "LeakyDead"), _leaky_fwd,
        lambda dt: (_x(seed=1).to(dt).requires_grad_(),), "wrong exactly where x < 0 ({k} of 64 elements): a sign branch",
    ),
    "zero": (
        zoo._fn(_sqabs_fwd, _sqabs_bw, "SqAbs"), zoo._fn(_sqabs_fwd, _sqabs_bw_div, "SqAbsDiv"), _sqabs_fwd,
        lambda dt: (_x(zeros=8).to(dt).requires_grad_(),), "wrong exactly where x == 0 (8 of 64 elements)",
    ),
    "mask": (
        zoo._fn(_mask_fwd, _mask_bw, "Masked"), zoo._fn(_mask_fwd, _mask_bw_forgot, "MaskedForgot"), _mask_fwd,
        _mask_in, "wrong exactly where input 1 is True ({k} of 60 elements): the mask not applied",
    ),
}


def _expected_count(case, inputs):
    x = inputs[0].detach()
    if case == "abs-above-1":
        return int((x.abs() > 1).sum())
    if case == "negative":
        return int((x < 0).sum())
    if case == "mask":
        return int(inputs[1].sum())
    return 8


@pytest.mark.parametrize("use_ref", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONDITIONS), ids=str)
def test_condition_named_where_the_gradient_is_wrong(case, dtype, use_ref):
    good, bad, fwd, make, expect = CONDITIONS[case]
    inputs = make(dtype)
    ref = fwd if use_ref else None
    ok = gradlens.check_backward(good, *inputs, reference=ref)
    assert ok.ok, str(ok)
    report = gradlens.check_backward(bad, *inputs, reference=ref)
    text = str(report)
    k = _expected_count(case, inputs)
    assert not report.ok and expect.format(k=k) in text, text
    t = report["input 0"]
    assert t.n_mismatched == k
    # Only mismatched elements are listed, worst first.
    assert len(t.worst) == min(5, k)
    tol = t.atol + t.rtol * max(abs(e) for _, _, e in t.worst)
    assert all(not abs(g - e) <= tol for _, g, e in t.worst), text
    # The independent reference: float64 gradcheck agrees on the verdicts.
    if dtype == torch.float64:
        ins64 = make(torch.float64)
        assert torch.autograd.gradcheck(good, ins64)
        assert not torch.autograd.gradcheck(bad, ins64, raise_exception=False)


def test_condition_on_few_elements_is_not_claimed_by_chance():
    # 2 wrong of 8: they are the two largest, but C(8, 2) = 28 subsets make that a likely coincidence.
    x = torch.linspace(0.1, 0.8, 8, dtype=torch.float64, requires_grad=True)

    def bw(ctx, g):
        (x,) = ctx.saved_tensors
        out = g * x.cos()
        out[6:] *= 3
        return out

    rep = gradlens.check_backward(zoo._fn(torch.sin, bw, "SinTail"), x, reference=torch.sin)
    assert not rep.ok and "wrong exactly where" not in str(rep) and "6..7 of 8" in str(rep), str(rep)


def test_threshold_range_is_stated_when_round_numbers_do_not_pin_it():
    # Wrong where x > 2.5 on data with a gap (1.1, 3.9): any threshold in it fits.
    far = torch.linspace(3.9, 5, 12)
    x = torch.cat([torch.linspace(-1.1, 1.1, 40), far, -far]).double().requires_grad_()
    f = zoo._fn(_huber_fwd, _huber_bw_noclip, "HuberNoClip")  # wrong where |x| > 1: gap (1, 1.1) pins 1
    assert "|x| > 1 " in str(gradlens.check_backward(f, x, reference=_huber_fwd))

    def bw(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.where(x > 2.5, 2 * torch.ones_like(x), torch.ones_like(x))

    rep = gradlens.check_backward(zoo._fn(lambda x: x * 1.0, bw, "Lin"), x, reference=lambda x: x * 1.0)
    assert "any threshold in [1.1, 3.9) fits" in str(rep), str(rep)


# ----------------------------------------------------------------------------- piecewise constant
def _ste_bw(ctx, g):
    return g


def _ste_clip_bw(ctx, g):
    (x,) = ctx.saved_tensors
    return g * (x.abs() <= 1).to(g.dtype)  # the hard-tanh straight-through estimator


#: id -> (forward, straight-through backward, straight-through reference, input scale)
STE = {
    "round": (torch.round, _ste_bw, lambda x: x + (torch.round(x) - x).detach(), 3.0),
    "sign": (torch.sign, _ste_clip_bw, lambda x: x.clamp(-1, 1) + (torch.sign(x) - x.clamp(-1, 1)).detach(), 1.0),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(STE), ids=str)
def test_piecewise_constant_forward_points_to_reference(case, dtype):
    fwd, bw, ref, scale = STE[case]
    fn = zoo._fn(fwd, bw, f"{case}STE")
    x = (scale * _x(48, seed=3)).to(dtype).requires_grad_()
    report = gradlens.check_backward(fn, x)
    text = str(report)
    assert not report.ok and "the forward is piecewise constant in input 0" in text, text
    assert "pass reference=lambda x: x + (torch.round(x) - x).detach()" in text
    assert "do not depend on this tensor" not in text
    # The remedy works: a straight-through reference with the same forward accepts the
    # right backward and still catches a wrong one.
    assert gradlens.check_backward(fn, x, reference=ref).ok
    wrong = zoo._fn(fwd, lambda ctx, g: 2 * bw(ctx, g), f"{case}STEx2")
    rep = gradlens.check_backward(wrong, x, reference=ref)
    assert not rep.ok and "x 2" in str(rep), str(rep)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unused_input_still_reads_as_independent(dtype):
    fn, make, _, _ = zoo.BUGS["spurious-gradient"]
    rep = gradlens.check_backward(fn, *make(dtype))
    text = str(rep)
    assert "the outputs do not depend on this tensor" in text and "piecewise constant" not in text, text


# ----------------------------------------------------------------------------- broadcast-shaped gradient
def _bias_fwd(x, b):
    return x + b


def _bias_bw_broadcast(ctx, g):
    return g, g  # the bias gradient left at the output's (5, 3): autograd sums it


def _bias_bw(ctx, g):
    return g, g.sum(0)


def _bias_bw_broadcast_wrong(ctx, g):
    return g, 2 * g  # broadcast and wrong by x 2


@pytest.mark.parametrize("use_ref", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_shaped_gradient_is_a_warning(dtype, use_ref):
    x = torch.randn(5, 3, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(3, dtype=torch.float64).to(dtype).requires_grad_()
    ref = _bias_fwd if use_ref else None
    rep = gradlens.check_backward(zoo._fn(_bias_fwd, _bias_bw_broadcast, "BiasB"), x, b, reference=ref)
    text = str(rep)
    assert rep.ok and not rep.problems, text
    assert any("broadcast shape (5, 3) for a tensor of shape (3,)" in w for w in rep.warnings), text
    twin = gradlens.check_backward(zoo._fn(_bias_fwd, _bias_bw, "Bias"), x, b, reference=ref)
    assert twin.ok and not twin.warnings, str(twin)
    bad = gradlens.check_backward(zoo._fn(_bias_fwd, _bias_bw_broadcast_wrong, "BiasBx2"), x, b, reference=ref)
    assert not bad.ok and not bad["input 1"].ok and "x 2" in str(bad), str(bad)
    assert any("broadcast shape" in w for w in bad.warnings)


# ----------------------------------------------------------------------------- worst elements
@pytest.mark.parametrize("use_ref", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_worst_elements_are_mismatched_only(dtype, use_ref):
    fn, make, ref, _ = zoo.BUGS["one-element"]
    rep = gradlens.check_backward(fn, *make(dtype), reference=ref if use_ref else None)
    t = rep["input 0"]
    assert t.n_mismatched == 1 and [w[0] for w in t.worst] == [(2, 1)], str(rep)
    assert [line.split(":")[0].strip() for line in str(rep).splitlines() if " vs " in line and "index" not in line] == ["[2, 1]"]
    good = gradlens.check_backward(zoo.Sin, *make(dtype), reference=torch.sin if use_ref else None)
    assert good.ok and good["input 0"].worst == []


def test_isolated_wrong_elements_are_listed_not_called_a_band():
    def bw(ctx, g):
        (x,) = ctx.saved_tensors
        out = g * x.cos()
        out[1, 2] *= 3
        out[3, 0] *= 3
        return out

    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    rep = gradlens.check_backward(zoo._fn(torch.sin, bw, "SinTwo"), x, reference=torch.sin)
    assert "wrong only at elements [1, 2], [3, 0] of 20" in str(rep), str(rep)
