"""Float32 overflow of a norm is not NaN/Inf: references are float64 norms of the
same tensors (torch.linalg.vector_norm in float64)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradlens


def _step(model, opt, scale_grad=None):
    opt.zero_grad()
    model(torch.randn(4, model[0].in_features)).pow(2).mean().backward()
    if scale_grad is not None:
        scale_grad(model)
    ref = {n: torch.linalg.vector_norm(p.grad, dtype=torch.float64).item() for n, p in model.named_parameters()}
    opt.step()
    return ref


def test_a_gradient_norm_that_overflows_float32_is_taken_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def huge(m):
        with torch.no_grad():
            m[0].weight.grad.copy_(torch.randn(1000, 1000) * 1e18)  # max|g| ~5e18, ||g|| ~1e21

    with warnings.catch_warnings():
        # no nonfinite finding may be warned (gradients of 1e21 are urgently exploding, though)
        warnings.simplefilter("error")
        warnings.filterwarnings("default", message=r"\[warning\] exploding at 0, step 0")
        with gradlens.watch(model, opt) as mon:
            ref = _step(model, opt, huge)
            _step(model, opt)
    assert ref["0.weight"] > 3.4e20 and torch.isfinite(model[0].weight.grad).all()
    df = mon.dataframe().set_index(["step", "param"])
    assert df.loc[(0, "0.weight"), "grad_norm"] == pytest.approx(ref["0.weight"], rel=1e-6)
    assert df.loc[(0, "0.weight"), "nonfinite"] == 0
    assert df.loc[(0, "0.bias"), "grad_norm"] == pytest.approx(ref["0.bias"], rel=1e-5)
    layer = mon.dataframe("layer").set_index(["step", "layer"])
    expected = (ref["0.weight"] ** 2 + ref["0.bias"] ** 2) ** 0.5
    assert layer.loc[(0, "0"), "grad_norm"] == pytest.approx(expected, rel=1e-6)
    assert not [f for f in mon.findings if f.kind == "nonfinite"]
    assert [(f.kind, f.step) for f in mon.findings if f.is_problem] == [("exploding", 0)]


def test_weights_scaled_to_1e38_are_not_reported_as_nan():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.mul_(1e38)  # finite float32 elements, ||W|| overflows
    ref = torch.linalg.vector_norm(model[0].weight, dtype=torch.float64).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        model[1](torch.randn(4, 8)).sum().backward()  # only the finite part gets gradients
        for p in model[0].parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    df = mon.dataframe().set_index(["step", "param"])
    assert df.loc[(0, "0.weight"), "weight_norm"] == pytest.approx(ref, rel=1e-6)
    assert not [f for f in mon.findings if f.kind == "nonfinite"]


def test_a_real_inf_element_is_still_counted():
    model = nn.Sequential(nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradlens.watch(model, opt) as mon:
        def inf(m):
            m[0].weight.grad[0, 0] = float("inf")
            m[0].weight.grad[1, :] = 1e30  # overflowing and finite, in the same tensor
        with pytest.warns(RuntimeWarning, match="nonfinite"):
            _step(model, opt, inf)
    df = mon.dataframe().set_index(["step", "param"])
    assert df.loc[(0, "0.weight"), "nonfinite"] == 1
    assert df.loc[(0, "0.weight"), "grad_norm"] == float("inf")
