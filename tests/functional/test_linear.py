"""gradlens.functional.linear against torch.nn.functional.linear (settings + failures)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

import gradlens.functional as GF


def _inputs(x_shape, w_shape, b_shape=None):
    def make(dtype, device, gen):
        x = torch.randn(x_shape, generator=gen, dtype=dtype).to(device)
        w = torch.randn(w_shape, generator=gen, dtype=dtype).to(device)
        if b_shape is None:
            return (x, w)
        return (x, w, torch.randn(b_shape, generator=gen, dtype=dtype).to(device))

    return make


CASES = [
    OpCase("linear-2d-bias", GF.linear, F.linear, _inputs((4, 3), (5, 3), (5,))),
    OpCase("linear-2d-nobias", GF.linear, F.linear, _inputs((4, 3), (5, 3))),
    OpCase("linear-batch1", GF.linear, F.linear, _inputs((1, 3), (2, 3), (2,))),
    OpCase("linear-1d-input", GF.linear, F.linear, _inputs((3,), (2, 3), (2,))),
    OpCase("linear-3d-input", GF.linear, F.linear, _inputs((2, 3, 4), (5, 4), (5,))),
    OpCase("linear-4d-input-nobias", GF.linear, F.linear, _inputs((2, 1, 3, 4), (2, 4))),
    OpCase("linear-vector-weight", GF.linear, F.linear, _inputs((3, 4), (4,))),
    OpCase("linear-vector-weight-1d-input", GF.linear, F.linear, _inputs((4,), (4,))),
]

# Only the weight/bias differentiable (a frozen input, e.g. the first layer's data).
CASES.append(
    OpCase("linear-grad-weight-only", GF.linear, F.linear, _inputs((4, 3), (5, 3), (5,)), grad_args=(1, 2))
)
CASES.append(OpCase("linear-grad-input-only", GF.linear, F.linear, _inputs((4, 3), (5, 3), (5,)), grad_args=(0,)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_linear_matches_torch(case, device, contiguous):
    check_against_torch(case, device, contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_linear_gradcheck(case, device):
    check_gradcheck(case, device)


def test_linear_only_requested_grads_are_computed():
    x = torch.randn(4, 3)
    w = torch.randn(5, 3, requires_grad=True)
    y = GF.linear(x, w)
    y.sum().backward()
    assert x.grad is None
    torch.testing.assert_close(w.grad, x.sum(0).expand(5, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_linear_broadcast_bias(device):
    # A one-element bias broadcasts over out_features; its gradient sums back to one element.
    case = OpCase("linear-broadcast-bias", GF.linear, F.linear, _inputs((3, 4), (5, 4), (1,)))
    check_against_torch(case, device)
    check_gradcheck(case, device)


def _requiring_grad(args):
    """The same args with every floating tensor requiring grad (the autograd.Function path)."""
    return tuple(a.clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


# (id, args, expected error, message fragment): bad input must raise, like torch.
FAIL_SETTINGS = [
    ("input-not-tensor", ([[1.0, 2.0]], torch.randn(2, 2)), TypeError, "input"),
    ("weight-not-tensor", (torch.randn(2, 2), [[1.0]]), TypeError, "weight"),
    ("bias-not-tensor", (torch.randn(2, 2), torch.randn(3, 2), 1.0), TypeError, "bias"),
    ("in-features-mismatch", (torch.randn(4, 3), torch.randn(5, 2)), RuntimeError, "shape|size"),
    ("bias-wrong-size", (torch.randn(4, 3), torch.randn(5, 3), torch.randn(4)), RuntimeError, "shape|size"),
    ("dtype-mismatch", (torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64)), RuntimeError, "dtype"),
    ("vector-weight-with-bias", (torch.randn(4, 3), torch.randn(3), torch.randn(4)), RuntimeError, "matrix"),
]


@pytest.mark.parametrize("args,error,match", [s[1:] for s in FAIL_SETTINGS], ids=[s[0] for s in FAIL_SETTINGS])
def test_linear_bad_input_raises(args, error, match):
    with pytest.raises(error, match=match):
        GF.linear(*args)
    with pytest.raises(error, match=match):
        GF.linear(*_requiring_grad(args))
    if error is RuntimeError:  # torch agrees it is an error
        with pytest.raises(RuntimeError):
            F.linear(*args)
