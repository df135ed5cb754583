"""gradlens.functional.embedding against torch (float32) and gradcheck (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

import gradlens.functional as GF


def _inputs(shape, num=7, dim=3, *, repeat=False):
    def make(dtype, device, gen):
        idx = torch.randint(0, num, shape, generator=gen)
        if repeat:  # make sure indices repeat (frequency scaling, index_add accumulation)
            idx.view(-1)[: max(1, idx.numel() // 2)] = 2
        w = torch.randn(num, dim, generator=gen, dtype=dtype)
        return idx.to(device), w.to(device)

    return make


CASES = [
    OpCase("embedding-1d", GF.embedding, F.embedding, _inputs((5,))),
    OpCase("embedding-batch1", GF.embedding, F.embedding, _inputs((1, 4))),
    OpCase("embedding-2d-repeats", GF.embedding, F.embedding, _inputs((3, 4), repeat=True)),
    OpCase("embedding-scalar-index", GF.embedding, F.embedding, _inputs(())),
    OpCase("embedding-padding2", GF.embedding, F.embedding, _inputs((3, 4), repeat=True), kwargs={"padding_idx": 2}),
    OpCase("embedding-padding-neg", GF.embedding, F.embedding, _inputs((2, 5)), kwargs={"padding_idx": -1}),
    OpCase("embedding-freq", GF.embedding, F.embedding, _inputs((3, 4), repeat=True), kwargs={"scale_grad_by_freq": True}),
    OpCase(
        "embedding-freq-padding",
        GF.embedding,
        F.embedding,
        _inputs((2, 3, 2), repeat=True),
        kwargs={"scale_grad_by_freq": True, "padding_idx": 0},
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_embedding_matches_torch(case, contiguous, device):
    check_against_torch(case, device, contiguous=contiguous)


# padding_idx and scale_grad_by_freq deliberately change the gradient away from the true
# derivative (torch does the same), so finite differences cannot check them: those cases
# are checked against torch above, and their backward's own derivative by gradgradcheck.
_TRUE_DERIVATIVE = [c for c in CASES if not c.kwargs]
_MODIFIED_GRADIENT = [c for c in CASES if c.kwargs]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", _TRUE_DERIVATIVE, ids=lambda c: c.id)
def test_embedding_gradcheck(case, device):
    check_gradcheck(case, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", _MODIFIED_GRADIENT, ids=lambda c: c.id)
def test_embedding_gradgradcheck_modified_gradient(case, device):
    gen = torch.Generator().manual_seed(0)
    idx, w = case.make_inputs(torch.float64, torch.device(device), gen)
    w.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda w_: GF.embedding(idx, w_, **case.kwargs), (w,))


def test_padding_row_gets_no_gradient():
    w = torch.randn(4, 2, requires_grad=True)
    GF.embedding(torch.tensor([0, 3, 3, 1]), w, padding_idx=3).sum().backward()
    assert torch.equal(w.grad[3], torch.zeros(2))
    assert torch.equal(w.grad[0], torch.ones(2))


def test_int32_indices():
    w = torch.randn(6, 3, requires_grad=True)
    idx = torch.tensor([[1, 5], [5, 0]], dtype=torch.int32)
    torch.testing.assert_close(GF.embedding(idx, w), F.embedding(idx, w))


BAD = [
    pytest.param(lambda: GF.embedding(torch.tensor([1.0]), torch.randn(4, 2)), RuntimeError, id="float-indices"),
    pytest.param(lambda: GF.embedding(torch.tensor([4]), torch.randn(4, 2)), IndexError, id="index-out-of-range"),
    pytest.param(lambda: GF.embedding(torch.tensor([1]), torch.randn(4)), RuntimeError, id="weight-1d"),
    pytest.param(lambda: GF.embedding([1, 2], torch.randn(4, 2)), TypeError, id="input-list"),
    pytest.param(lambda: GF.embedding(torch.tensor([1]), [[1.0]]), TypeError, id="weight-list"),
    pytest.param(lambda: GF.embedding(torch.tensor([1]), torch.randn(4, 2), padding_idx=4), ValueError, id="padding-too-big"),
    pytest.param(lambda: GF.embedding(torch.tensor([1]), torch.randn(4, 2), padding_idx=-5), ValueError, id="padding-too-small"),
    pytest.param(lambda: GF.embedding(torch.tensor([1]), torch.randn(4, 2), max_norm=1.0), NotImplementedError, id="max-norm"),
    pytest.param(lambda: GF.embedding(torch.tensor([1]), torch.randn(4, 2), sparse=True), NotImplementedError, id="sparse"),
]


@pytest.mark.parametrize("call, error", BAD)
def test_embedding_bad_input_raises(call, error):
    with pytest.raises(error):
        call()


def test_unsupported_messages_name_the_option():
    with pytest.raises(NotImplementedError, match="max_norm"):
        GF.embedding(torch.tensor([1]), torch.randn(4, 2), max_norm=1.0)
    with pytest.raises(NotImplementedError, match="sparse"):
        GF.embedding(torch.tensor([1]), torch.randn(4, 2), sparse=True)


def test_signature_matches_torch():
    import inspect

    ours = inspect.signature(GF.embedding).parameters
    theirs = inspect.signature(F.embedding).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == [(p.name, p.default, p.kind) for p in theirs.values()]
