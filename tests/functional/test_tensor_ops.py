"""gradlens.functional.tensor_ops against torch's ops (settings + failures).

Each case runs float32 forward/backward against torch autograd (contiguous and not)
and float64 gradcheck + gradgradcheck (the create_graph path) on ours.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

import gradlens.functional as GF
from gradlens._routing import _Router
from gradlens.functional.tensor_ops import _add_, _div_, _mul_, _rdiv, _sub_, _view


def _randn(*shapes, positive=()):
    """Inputs of these shapes (``None``: the Python number 0.7); ``positive`` indices away from 0."""

    def make(dtype, device, gen):
        out = []
        for i, s in enumerate(shapes):
            if s is None:
                out.append(0.7)
                continue
            t = torch.randn(s, generator=gen, dtype=dtype)
            if i in positive:
                t = t.abs() + 0.5
            out.append(t.to(device))
        return tuple(out)

    return make


def _case(id, ours, theirs, *shapes, positive=(), **kw):
    return OpCase(id, ours, theirs, _randn(*shapes, positive=positive), **kw)


CASES = [
    # add / sub / rsub: broadcasting both ways, scalars, alpha
    _case("add-same", GF.add, torch.add, (3, 4), (3, 4)),
    _case("add-broadcast-row", GF.add, torch.add, (2, 3, 4), (4,)),
    _case("add-broadcast-both", GF.add, torch.add, (2, 1, 4), (3, 1)),
    _case("add-position-embeddings", GF.add, torch.add, (2, 5, 4), (1, 5, 4)),
    _case("add-scalar", GF.add, torch.add, (3, 4), None),
    _case("add-0d-tensor", GF.add, torch.add, (3, 4), ()),
    _case("add-alpha", GF.add, torch.add, (3, 4), (4,), kwargs={"alpha": -2.5}),
    _case("sub-broadcast", GF.sub, torch.sub, (2, 3), (3,)),
    _case("sub-alpha-scalar", GF.sub, torch.sub, (2, 3), None, kwargs={"alpha": 3}),
    _case("rsub-broadcast", GF.rsub, torch.rsub, (2, 3), (1, 3)),
    _case("rsub-scalar", GF.rsub, torch.rsub, (2, 3), None, kwargs={"alpha": 2.0}),
    # mul / div
    _case("mul-same", GF.mul, torch.mul, (3, 4), (3, 4)),
    _case("mul-rmsnorm-weight", GF.mul, torch.mul, (4,), (2, 3, 4)),
    _case("mul-broadcast-both", GF.mul, torch.mul, (2, 1, 4), (3, 1)),
    _case("mul-scalar", GF.mul, torch.mul, (3, 4), None),
    _case("mul-0d-tensor", GF.mul, torch.mul, (3, 4), ()),
    _case("div-broadcast", GF.div, torch.div, (2, 3), (3,), positive=(1,)),
    _case("div-scalar", GF.div, torch.div, (2, 3), None),
    _case("rdiv-scalar", _rdiv, torch.Tensor.__rdiv__, (2, 3), None, positive=(0,)),
    _case("rdiv-tensor", _rdiv, torch.Tensor.__rdiv__, (2, 3), (3,), positive=(0,)),
    OpCase("neg", GF.neg, torch.neg, _randn((2, 3))),
    # matmul family: 1-D operands, broadcast batch dims
    _case("matmul-2d", GF.matmul, torch.matmul, (3, 4), (4, 5)),
    _case("matmul-vec-vec", GF.matmul, torch.matmul, (4,), (4,)),
    _case("matmul-vec-mat", GF.matmul, torch.matmul, (4,), (4, 5)),
    _case("matmul-mat-vec", GF.matmul, torch.matmul, (3, 4), (4,)),
    _case("matmul-batch-vec", GF.matmul, torch.matmul, (2, 3, 4), (4,)),
    _case("matmul-vec-batch", GF.matmul, torch.matmul, (4,), (2, 4, 5)),
    _case("matmul-attention-4d", GF.matmul, torch.matmul, (2, 3, 5, 4), (2, 3, 4, 5)),
    _case("matmul-broadcast-batch", GF.matmul, torch.matmul, (2, 1, 3, 4), (3, 4, 2)),
    _case("matmul-batch-times-matrix", GF.matmul, torch.matmul, (2, 3, 4), (4, 5)),
    _case("mm", GF.mm, torch.mm, (3, 4), (4, 2)),
    _case("bmm", GF.bmm, torch.bmm, (2, 3, 4), (2, 4, 5)),
    _case("addmm-conv1d-bias", GF.addmm, torch.addmm, (5,), (3, 4), (4, 5)),
    _case("addmm-full-input", GF.addmm, torch.addmm, (3, 5), (3, 4), (4, 5)),
    _case("addmm-beta-alpha", GF.addmm, torch.addmm, (1, 5), (3, 4), (4, 5), kwargs={"beta": 0.5, "alpha": -2.0}),
    _case("baddbmm", GF.baddbmm, torch.baddbmm, (2, 3, 5), (2, 3, 4), (2, 4, 5)),
    _case("baddbmm-broadcast-alpha", GF.baddbmm, torch.baddbmm, (5,), (2, 3, 4), (2, 4, 5), kwargs={"alpha": 0.25}),
    # cat / expand
    OpCase("cat-dim1", lambda *t: GF.cat(t, 1), lambda *t: torch.cat(t, 1), _randn((2, 1, 4), (2, 3, 4))),
    OpCase("cat-dim-neg", lambda *t: GF.cat(list(t), dim=-1), lambda *t: torch.cat(t, -1), _randn((2, 3), (2, 1), (2, 2))),
    OpCase("cat-single", lambda *t: GF.cat(t), lambda *t: torch.cat(t), _randn((3, 2))),
    OpCase("expand-cls-token", lambda x: GF.expand(x, 3, -1, -1), lambda x: x.expand(3, -1, -1), _randn((1, 1, 4))),
    OpCase("expand-new-dims", lambda x: GF.expand(x, (2, 3, 4)), lambda x: x.expand((2, 3, 4)), _randn((4,))),
    OpCase("permute", lambda x: GF.permute(x, 2, 0, 1), lambda x: x.permute(2, 0, 1), _randn((2, 3, 4))),
    OpCase("permute-list-neg", lambda x: GF.permute(x, [-1, 0]), lambda x: x.permute(-1, 0), _randn((2, 3))),
    OpCase("transpose", lambda x: GF.transpose(x, 0, -1), lambda x: x.transpose(0, -1), _randn((2, 3, 4))),
    OpCase("t-matrix", GF.t, torch.t, _randn((2, 3))),
    OpCase("t-vector", GF.t, torch.t, _randn((3,))),
    OpCase("reshape", lambda x: GF.reshape(x, 3, -1), lambda x: x.reshape(3, -1), _randn((2, 3, 2))),
    OpCase("view", lambda x: _view(x, (6,)), lambda x: x.view(6), _randn((2, 3))),
    OpCase("expand-middle", lambda x: GF.expand(x, 2, 5, 3), lambda x: x.expand(2, 5, 3), _randn((2, 1, 3))),
]

# One operand frozen (grad for the other only): the needs_input_grad branches.
CASES += [
    _case("mul-grad-first-only", GF.mul, torch.mul, (3, 4), (4,), grad_args=(0,)),
    _case("mul-grad-second-only", GF.mul, torch.mul, (3, 4), (4,), grad_args=(1,)),
    _case("div-grad-denominator-only", GF.div, torch.div, (3, 4), (4,), positive=(1,), grad_args=(1,)),
    _case("matmul-grad-weight-only", GF.matmul, torch.matmul, (2, 3, 4), (4, 5), grad_args=(1,)),
    _case("addmm-grad-bias-only", GF.addmm, torch.addmm, (5,), (3, 4), (4, 5), grad_args=(0,)),
    _case("addmm-grad-mat2-only", GF.addmm, torch.addmm, (5,), (3, 4), (4, 5), grad_args=(2,)),
]



def _ours_in_place(op):
    """``op`` on a non-leaf copy of the first input (an in-place op on a leaf that requires
    grad is an error, in torch as in gradlens)."""
    return lambda a, *rest, **kw: op(a.clone(), *rest, **kw)


def _torch_in_place(name):
    return lambda a, *rest, **kw: getattr(a.clone(), name)(*rest, **kw)


def _ip_case(id, ours, name, *shapes, positive=(), **kw):
    return OpCase(id, _ours_in_place(ours), _torch_in_place(name), _randn(*shapes, positive=positive), **kw)


# In-place arithmetic (what x.add_(w), x *= w, ... are routed to): tensor and scalar operands.
CASES += [
    _ip_case("add_-broadcast", _add_, "add_", (2, 3, 4), (4,)),
    _ip_case("add_-scalar-alpha", _add_, "add_", (3, 4), None, kwargs={"alpha": -2.5}),
    _ip_case("add_-alpha", _add_, "add_", (3, 4), (3, 4), kwargs={"alpha": 3}),
    _ip_case("sub_-broadcast-alpha", _sub_, "sub_", (2, 3), (1, 3), kwargs={"alpha": 0.5}),
    _ip_case("sub_-scalar", _sub_, "sub_", (2, 3), None),
    _ip_case("mul_-rmsnorm-weight", _mul_, "mul_", (2, 3, 4), (4,)),
    _ip_case("mul_-scalar", _mul_, "mul_", (3, 4), None),
    _ip_case("mul_-0d-tensor", _mul_, "mul_", (3, 4), ()),
    _ip_case("mul_-grad-first-only", _mul_, "mul_", (3, 4), (4,), grad_args=(0,)),
    _ip_case("mul_-grad-second-only", _mul_, "mul_", (3, 4), (4,), grad_args=(1,)),
    _ip_case("div_-broadcast", _div_, "div_", (2, 3), (3,), positive=(1,)),
    _ip_case("div_-scalar", _div_, "div_", (2, 3), None),
    _ip_case("div_-grad-denominator-only", _div_, "div_", (3, 4), (4,), positive=(1,), grad_args=(1,)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_tensor_op_matches_torch(case, device, contiguous):
    check_against_torch(case, device, contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_tensor_op_gradcheck(case, device):
    check_gradcheck(case, device)


def test_type_promotion_gives_each_input_its_dtype():
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, requires_grad=True)  # float32, promoted to float64 in the product
    GF.mul(a, b).sum().backward()
    ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    torch.mul(ref_a, ref_b).sum().backward()
    assert b.grad.dtype == torch.float32
    torch.testing.assert_close(b.grad, ref_b.grad)
    torch.testing.assert_close(a.grad, ref_a.grad)


def test_results_are_gradlens_nodes_and_fast_path_without_grad():
    w = torch.randn(4, requires_grad=True)
    assert type(GF.mul(torch.randn(2, 4), w).grad_fn).__name__ == "_MulFnBackward"
    assert type(GF.expand(w, 3, 4).grad_fn).__name__ == "_ExpandFnBackward"
    with torch.no_grad():
        assert GF.add(torch.ones(4), w).grad_fn is None
    ints = GF.add(torch.arange(3), 1)  # integer tensors: torch's op as is
    assert ints.dtype == torch.int64 and ints.tolist() == [1, 2, 3]


def test_cat_skips_legacy_empty_1d_like_torch():
    a, b = torch.randn(2, 3, requires_grad=True), torch.randn(0, requires_grad=True)
    out = GF.cat([a, b], 0)
    torch.testing.assert_close(out, torch.cat([a, b], 0))
    ga, gb = torch.autograd.grad(out.sum(), [a, b])
    assert torch.equal(ga, torch.ones(2, 3)) and gb.shape == (0,)


def _needs_grad(args):
    return tuple(a.clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


# (id, op, args, kwargs, error, message fragment): bad input raises, on both paths.
FAIL_SETTINGS = [
    ("add-input-not-tensor", GF.add, ([1.0], torch.ones(1)), {}, TypeError, "input"),
    ("add-other-not-number", GF.add, (torch.ones(1), "x"), {}, TypeError, "other"),
    ("add-alpha-not-number", GF.add, (torch.ones(1), 1.0), {"alpha": "2"}, TypeError, "alpha"),
    ("add-shape-mismatch", GF.add, (torch.ones(2, 3), torch.ones(4)), {}, RuntimeError, "size"),
    ("mul-complex-scalar", GF.mul, (torch.ones(2), 1j), {}, NotImplementedError, "other"),
    ("div-rounding-mode", GF.div, (torch.ones(2), 2.0), {"rounding_mode": "floor"}, NotImplementedError, "rounding_mode"),
    ("matmul-other-not-tensor", GF.matmul, (torch.ones(2, 2), [[1.0]]), {}, TypeError, "other"),
    ("matmul-inner-mismatch", GF.matmul, (torch.ones(2, 3), torch.ones(2, 3)), {}, RuntimeError, "shape|size"),
    ("matmul-0d", GF.matmul, (torch.ones(()), torch.ones(3)), {}, RuntimeError, "1D"),
    ("mm-3d", GF.mm, (torch.ones(2, 2, 2), torch.ones(2, 2)), {}, RuntimeError, "2D|matrix"),
    ("bmm-2d", GF.bmm, (torch.ones(2, 2), torch.ones(2, 2)), {}, RuntimeError, "3D|3-D|batch"),
    ("addmm-mat1-not-tensor", GF.addmm, (torch.ones(2), 1.0, torch.ones(2, 2)), {}, TypeError, "mat1"),
    ("addmm-beta-not-number", GF.addmm, (torch.ones(2), torch.ones(2, 2), torch.ones(2, 2)), {"beta": None}, TypeError, "beta"),
    ("addmm-bias-mismatch", GF.addmm, (torch.ones(3), torch.ones(2, 2), torch.ones(2, 2)), {}, RuntimeError, "size|shape|expand"),
    ("cat-not-a-sequence", GF.cat, (torch.ones(2),), {}, TypeError, "tensors"),
    ("cat-item-not-tensor", GF.cat, ([torch.ones(2), 1.0],), {}, TypeError, r"tensors\[1\]"),
    ("cat-dim-not-int", GF.cat, ([torch.ones(2)],), {"dim": 0.5}, TypeError, "dim"),
    ("cat-shape-mismatch", GF.cat, ([torch.ones(2, 3), torch.ones(2, 4)],), {}, RuntimeError, "size"),
    ("expand-bad-size", GF.expand, (torch.ones(2, 3), 4, 3), {}, RuntimeError, "size|match"),
    ("permute-bad-dims", GF.permute, (torch.ones(2, 3), 0, 0), {}, RuntimeError, "repeated|dims"),
    ("permute-dim-not-int", GF.permute, (torch.ones(2, 3), 0, 1.0), {}, TypeError, "dims"),
    ("transpose-dim-out-of-range", GF.transpose, (torch.ones(2, 3), 0, 2), {}, IndexError, "range"),
    ("t-3d", GF.t, (torch.ones(2, 3, 4),), {}, RuntimeError, "2"),
    ("reshape-bad-numel", GF.reshape, (torch.ones(2, 3), 4), {}, RuntimeError, "shape|size"),
    ("reshape-size-not-int", GF.reshape, (torch.ones(2, 3), "6"), {}, TypeError, "shape"),
    ("view-dtype", _view, (torch.ones(2),  torch.int32), {}, NotImplementedError, "dtype"),
    ("neg-not-tensor", GF.neg, (2.0,), {}, TypeError, "input"),
    ("expand-size-not-int", GF.expand, (torch.ones(2), 2.0), {}, TypeError, "sizes"),
]


@pytest.mark.parametrize(
    "op,args,kwargs,error,match", [s[1:] for s in FAIL_SETTINGS], ids=[s[0] for s in FAIL_SETTINGS]
)
def test_tensor_op_bad_input_raises(op, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        op(*args, **kwargs)
    with pytest.raises(error, match=match):
        op(*_needs_grad(args), **kwargs)


# ------------------------------------------------------------------ in-place semantics
IN_PLACE = [("add_", _add_), ("sub_", _sub_), ("mul_", _mul_), ("div_", _div_)]


@pytest.mark.parametrize("name,op", IN_PLACE, ids=[n for n, _ in IN_PLACE])
def test_in_place_mutates_the_same_tensor_and_its_views(name, op):
    x = torch.randn(2, 3, requires_grad=True)
    w = torch.rand(3, requires_grad=True) + 0.5
    a = x * 1
    row = a[1]  # a view taken before the op
    version = a._version
    out = op(a, w)
    ref = getattr(x.detach() * 1, name)(w.detach())
    assert out is a and a._version > version
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(row, ref[1])  # the view sees the new values
    # gradlens's Function consumes w: no torch arithmetic node between w and the loss
    assert type(a.grad_fn).__name__ == "CopyBackwards"
    gx, gw = torch.autograd.grad((a * row).sum(), (x, w))
    x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
    a2 = x2 * 1
    getattr(a2, name)(w2)
    rx, rw = torch.autograd.grad((a2 * a2[1]).sum(), (x2, w2))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("name,op", IN_PLACE, ids=[n for n, _ in IN_PLACE])
def test_in_place_into_a_view_reaches_the_base(name, op):
    def run(in_place):
        x = torch.linspace(-1, 1, 12).reshape(3, 4).requires_grad_()
        w = torch.tensor([0.7, 1.3], requires_grad=True)
        base = x * 2
        in_place(base[:, 1:3], w)  # autograd records CopySlices on the base
        return base, torch.autograd.grad((base * base).sum(), (x, w))

    base, (gx, gw) = run(op)
    ref, (rx, rw) = run(lambda v, w: getattr(v, name)(w))
    assert type(base.grad_fn).__name__ == "CopySlices"
    torch.testing.assert_close(base, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_in_place_keeps_the_targets_dtype_like_torch():
    a = torch.randn(2, 3, requires_grad=True) * 1  # float32
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref = a.detach().clone().mul_(w.detach())
    _mul_(a, w)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, ref)
    (gw,) = torch.autograd.grad(a.sum(), (w,))
    assert gw.dtype == torch.float64
    torch.testing.assert_close(gw, ref.double().sum(0) / w.detach())  # d(sum a w)/dw = sum a


def _message(fn):
    try:
        fn()
    except RuntimeError as e:
        return str(e)
    return None


def _leaf():
    return torch.randn(2, 3, requires_grad=True)


def _view_of_leaf():
    return torch.randn(2, 3, requires_grad=True)[0]


def _multi_output_view():
    return (torch.randn(2, 3, requires_grad=True) * 1).unbind(0)[0]


def _no_grad_view():
    base = torch.randn(2, 3, requires_grad=True) * 1
    with torch.no_grad():
        return base[0]


def _int_target():
    return torch.arange(3)


def _small_target():
    return torch.randn(1, 3, requires_grad=True) * 1  # w broadcasts it to (2, 3)


# (id, target, other): torch rejects the in-place op; routed, it raises the same error.
IN_PLACE_FAIL = [
    ("leaf-requires-grad", _leaf, lambda: torch.randn(3, requires_grad=True)),
    ("leaf-requires-grad-scalar", _leaf, lambda: 2.0),
    ("view-of-leaf", _view_of_leaf, lambda: torch.randn(3, requires_grad=True)),
    ("multi-output-view", _multi_output_view, lambda: torch.randn(3, requires_grad=True)),
    ("no-grad-view", _no_grad_view, lambda: torch.randn(3, requires_grad=True)),
    ("int-target-float-other", _int_target, lambda: torch.randn(3, requires_grad=True)),
    ("broadcast-beyond-target", _small_target, lambda: torch.randn(2, 3, requires_grad=True)),
]


@pytest.mark.parametrize("name", [n for n, _ in IN_PLACE])
@pytest.mark.parametrize("target,other", [s[1:] for s in IN_PLACE_FAIL], ids=[s[0] for s in IN_PLACE_FAIL])
def test_routed_in_place_raises_torchs_error(name, target, other):
    torch.manual_seed(0)
    want = _message(lambda: getattr(target(), name)(other()))
    assert want is not None, "torch accepts this case: the setting is wrong"
    torch.manual_seed(0)
    a, b = target(), other()
    before = a.detach().clone()

    def routed():
        with _Router():
            getattr(a, name)(b)

    assert _message(routed) == want
    assert torch.equal(a.detach(), before), "the target changed although the op raised"


def test_in_place_with_an_aliased_operand_is_torchs():
    # x.mul_(x) saves x for backward and then overwrites it: torch's op runs, and its
    # backward raises as torch's does
    x = torch.randn(3, requires_grad=True)
    a = x * 1
    with _Router():
        a.mul_(a)
    assert type(a.grad_fn).__name__ == "MulBackward0"
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        a.sum().backward()


def test_in_place_without_grad_is_torchs_op():
    a = torch.randn(3)
    with _Router():
        a.add_(1.0)
        a *= torch.ones(3)
    assert a.grad_fn is None and not a.requires_grad
    ints = torch.arange(3)
    with _Router():
        ints += 1
    assert ints.tolist() == [1, 2, 3]


def test_div_in_place_rounding_mode_is_torchs():
    with pytest.raises(NotImplementedError, match="rounding_mode"):
        _div_(torch.ones(2), 2.0, rounding_mode="floor")
    w = torch.full((2,), 2.0, requires_grad=True)
    a = torch.full((2,), 5.0) * w
    with _Router():
        a.div_(w, rounding_mode="floor")  # gradlens lacks it: torch's op runs
    assert a.tolist() == [5.0, 5.0] and type(a.grad_fn).__name__.startswith("DivBackward")
