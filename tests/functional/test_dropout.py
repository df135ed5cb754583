"""gradlens.functional.dropout: torch's exact mask on CPU, mask semantics on every device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

import gradlens.functional as GF


def _x(*shape):
    def make(dtype, device, gen):
        return (torch.randn(shape, generator=gen, dtype=dtype).to(device),)

    return make


CASES = [
    OpCase("dropout-p0.5", GF.dropout, F.dropout, _x(4, 6), seeded=True),
    OpCase("dropout-p0.2-3d", GF.dropout, F.dropout, _x(2, 3, 5), kwargs={"p": 0.2}, seeded=True),
    OpCase("dropout-p0.9-batch1", GF.dropout, F.dropout, _x(1, 7), kwargs={"p": 0.9}, seeded=True),
    OpCase("dropout-p0", GF.dropout, F.dropout, _x(3, 4), kwargs={"p": 0.0}, seeded=True),
    OpCase("dropout-p1", GF.dropout, F.dropout, _x(3, 4), kwargs={"p": 1.0}, seeded=True),
    OpCase("dropout-eval", GF.dropout, F.dropout, _x(3, 4), kwargs={"p": 0.5, "training": False}, seeded=True),
    OpCase("dropout-scalar", GF.dropout, F.dropout, _x(), kwargs={"p": 0.3}, seeded=True),
]


# Exact equality with torch needs torch's CPU kernel (same bernoulli_ draws); on CUDA torch
# uses a fused Philox kernel, so the CUDA tests below check mask semantics instead.
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dropout_equals_torch_on_cpu(case, contiguous):
    check_against_torch(case, "cpu", contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dropout_gradcheck(case, device):
    check_gradcheck(case, device)  # seeded: every call sees the same mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_semantics(p, device):
    torch.manual_seed(1234)
    n = 20000
    x = (torch.rand(n, dtype=torch.float64, device=device) + 0.5).requires_grad_(True)
    y = GF.dropout(x, p)
    kept = y != 0
    # every output is 0 or x / (1 - p)
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-12, atol=0)
    # drop rate within 5 binomial standard deviations of p
    dropped = (~kept).sum().item()
    assert abs(dropped - n * p) < 5 * math.sqrt(n * p * (1 - p)), dropped
    # backward uses the forward's mask
    g = torch.randn(n, dtype=torch.float64, device=device)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * kept / (1 - p), rtol=1e-12, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_eval_returns_input_itself(device):
    x = torch.randn(3, device=device)
    assert GF.dropout(x, 0.5, training=False) is x
    assert GF.dropout(x, 0.0) is x


def test_dropout_inplace_matches_torch():
    base = torch.randn(5, 4)
    outs, grads = [], []
    for fn in (GF.dropout, F.dropout):
        b = base.clone().requires_grad_(True)
        x = b * 2
        torch.manual_seed(3)
        y = fn(x, 0.4, inplace=True)
        assert y is x
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append(b.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1])


def test_dropout_inplace_on_leaf_raises_like_torch():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        GF.dropout(x, 0.5, inplace=True)


BAD = [
    pytest.param(lambda: GF.dropout(torch.randn(3), p=-0.1), ValueError, id="p-negative"),
    pytest.param(lambda: GF.dropout(torch.randn(3), p=1.5), ValueError, id="p-above-1"),
    pytest.param(lambda: GF.dropout(torch.randn(3), p="0.5"), TypeError, id="p-string"),
    pytest.param(lambda: GF.dropout([1.0, 2.0]), TypeError, id="input-list"),
    pytest.param(lambda: GF.dropout(torch.arange(4)), TypeError, id="input-int"),
]


@pytest.mark.parametrize("call, error", BAD)
def test_dropout_bad_input_raises(call, error):
    with pytest.raises(error):
        call()


def test_signature_matches_torch():
    import inspect

    ours = inspect.signature(GF.dropout).parameters
    theirs = inspect.signature(F.dropout).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == [(p.name, p.default, p.kind) for p in theirs.values()]
