"""check_backward on nn.Modules (parameters, buffers, train/eval) and the optional checks."""

from __future__ import annotations

import pytest
import torch
import verify_zoo as zoo
from torch import nn

import gradlens


class TwinLinear(nn.Module):
    """A user-style module whose forward goes through a custom Function."""

    def __init__(self, n_in: int, n_out: int, fn=zoo.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out))
        self.fn = fn

    def forward(self, x):
        return self.fn(x, self.weight, self.bias)


def _bad_linear_bw(ctx, g):
    x, w, b = ctx.saved_tensors
    return g @ w, g.t() @ x, g.mean(0)  # bug: mean over the batch for the bias


BadLinear = zoo._fn(lambda x, w, b: x @ w.t() + b, _bad_linear_bw, "BadLinear")


@pytest.mark.parametrize("use_ref", [True, False], ids=["reference", "fd"])
def test_module_parameters_checked(use_ref):
    m = TwinLinear(4, 3).double()
    ref = nn.Linear(4, 3).double() if use_ref else None
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    rep = gradlens.check_backward(m, x, reference=ref)
    assert rep.ok, str(rep)
    assert [t.name for t in rep.tensors] == ["input 0", "weight", "bias"]


@pytest.mark.parametrize("use_ref", [True, False], ids=["reference", "fd"])
def test_module_parameter_bug_named(use_ref):
    m = TwinLinear(4, 3, fn=BadLinear).double()
    x = torch.randn(6, 4, dtype=torch.float64)  # input constant: only parameters checked
    rep = gradlens.check_backward(m, x, reference=nn.Linear(4, 3).double() if use_ref else None)
    assert not rep.ok
    assert rep["weight"].ok and not rep["bias"].ok
    assert any("x 1/6" in d for d in rep["bias"].diagnosis), str(rep)


def test_module_both_modes_and_state_restored():
    m = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Dropout(0.3), nn.Tanh()).double()
    m.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    rep = gradlens.check_backward(m, x, mode="both")
    assert rep.ok, str(rep)
    names = [t.name for t in rep.tensors]
    assert "[train] input 0" in names and "[eval] 0.weight" in names
    assert not m.training  # mode restored
    for k, v in m.state_dict().items():  # running stats untouched
        assert torch.equal(v, before[k]), k


def test_module_float32_against_reference_module():
    m = TwinLinear(16, 8)
    ref = nn.Linear(16, 8)
    x = torch.randn(32, 16, requires_grad=True)
    rep = gradlens.check_backward(m, x, reference=ref)
    assert rep.ok, str(rep)


def test_forward_ad_checked_when_jvp_defined():
    class SinJ(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            ctx.x = x
            return x.sin()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.cos()

        @staticmethod
        def jvp(ctx, t):
            return t * ctx.x.cos() * JVP_FACTOR[0]

    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    JVP_FACTOR = [1.0]
    rep = gradlens.check_backward(SinJ.apply, x, forward_ad=True)
    assert rep.ok and any("forward-mode" in n for n in rep.notes), str(rep)
    JVP_FACTOR[0] = -1.0
    rep = gradlens.check_backward(SinJ.apply, x, forward_ad=True)
    assert not rep.ok and any("jvp" in p for p in rep.problems), str(rep)
    # A Function without jvp is reported, not crashed on.
    rep = gradlens.check_backward(zoo.Sin, x, forward_ad=True)
    assert any("forward-mode AD failed" in p for p in rep.problems)


@pytest.mark.parametrize("use_ref", [True, False], ids=["reference", "fd"])
def test_second_order(use_ref):
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    # Sin's backward uses differentiable ops: its double backward is right.
    rep = gradlens.check_backward(zoo.Sin, x, reference=torch.sin if use_ref else None, second_order=True)
    assert rep.ok, str(rep)

    class SinNoDouble(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.detach().cos()  # detached: double backward silently wrong

    rep = gradlens.check_backward(SinNoDouble.apply, x, reference=torch.sin if use_ref else None, second_order=True)
    assert not rep.ok and any("second order" in p for p in rep.problems), str(rep)


def test_module_reference_must_be_a_module_with_the_same_names():
    m = TwinLinear(4, 3).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="reference=.*nn.Module"):
        gradlens.check_backward(m, x, reference=torch.nn.functional.linear)
    with pytest.raises(ValueError, match="lacks the parameters"):
        gradlens.check_backward(m, x, reference=nn.Sequential(nn.Linear(4, 3)).double())


@pytest.mark.parametrize("use_ref", [True, False], ids=["reference", "fd"])
def test_functional_with_in_place_running_stats(use_ref):
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)

    def bn(x, rm, rv, w):
        return torch.nn.functional.batch_norm(x, rm, rv, w, None, training=True)

    rep = gradlens.check_backward(bn, x, rm, rv, w, reference=bn if use_ref else None)
    assert rep.ok, str(rep)
    assert torch.equal(rm, torch.zeros(3, dtype=torch.float64))  # the user's buffers untouched
