"""gradlens.functional pooling and flatten against torch (settings + failures)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

import gradlens.functional as GF


def _x(shape, *, distinct=False):
    def make(dtype, device, gen):
        if distinct:
            # A random permutation of well-separated values: no ties, and finite
            # differences (eps 1e-6) never change which element is the max.
            x = torch.randperm(torch.Size(shape).numel(), generator=gen).to(dtype).reshape(shape) * 0.1
        else:
            x = torch.randn(shape, generator=gen, dtype=dtype)
        return (x.to(device),)

    return make


def _case(fn_name, id, shape, *args, distinct=False, **kw):
    make = _x(shape, distinct=distinct)
    ours, theirs = getattr(GF, fn_name), getattr(F, fn_name, None) or getattr(torch, fn_name)
    return OpCase(f"{fn_name}-{id}", lambda x: ours(x, *args, **kw), lambda x: theirs(x, *args, **kw), make)


MAX = [
    _case("max_pool1d", "k2", (2, 2, 6), 2, distinct=True),
    _case("max_pool1d", "k3-s1-overlap", (1, 2, 6), 3, stride=1, distinct=True),
    _case("max_pool1d", "pad1-dil2", (1, 2, 7), 3, stride=2, padding=1, dilation=2, distinct=True),
    _case("max_pool1d", "ceil", (1, 2, 7), 2, ceil_mode=True, distinct=True),
    _case("max_pool1d", "unbatched", (2, 6), 2, distinct=True),
    _case("max_pool1d", "indices", (1, 2, 6), 2, return_indices=True, distinct=True),
    _case("max_pool2d", "k2", (2, 2, 4, 4), 2, distinct=True),
    _case("max_pool2d", "k3-s2-pad1", (1, 2, 5, 5), 3, stride=2, padding=1, distinct=True),
    _case("max_pool2d", "tuple-args", (1, 1, 6, 5), (2, 3), stride=(2, 1), padding=(1, 1), distinct=True),
    _case("max_pool2d", "dilation2", (1, 2, 6, 6), 2, dilation=2, distinct=True),
    _case("max_pool2d", "ceil", (1, 2, 5, 5), 2, ceil_mode=True, distinct=True),
    _case("max_pool2d", "ceil-pad-stride", (1, 1, 6, 6), 3, stride=2, padding=1, ceil_mode=True, distinct=True),
    _case("max_pool2d", "unbatched", (2, 4, 4), 2, distinct=True),
    _case("max_pool2d", "indices", (1, 2, 4, 4), 2, return_indices=True, distinct=True),
]

AVG = [
    _case("avg_pool1d", "k2", (2, 2, 6), 2),
    _case("avg_pool1d", "k3-s1", (1, 2, 6), 3, stride=1),
    _case("avg_pool1d", "pad1", (1, 2, 7), 3, stride=2, padding=1),
    _case("avg_pool1d", "pad1-exclude-pad", (1, 2, 7), 3, stride=2, padding=1, count_include_pad=False),
    _case("avg_pool1d", "ceil", (1, 2, 7), 2, ceil_mode=True),
    _case("avg_pool1d", "ceil-pad-exclude", (1, 1, 8), 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    _case("avg_pool1d", "unbatched", (2, 6), 2),
    _case("avg_pool2d", "k2", (2, 2, 4, 4), 2),
    _case("avg_pool2d", "k3-s2-pad1", (1, 2, 5, 5), 3, stride=2, padding=1),
    _case("avg_pool2d", "pad-exclude", (1, 2, 5, 5), 3, stride=2, padding=1, count_include_pad=False),
    _case("avg_pool2d", "tuple-args", (1, 1, 6, 5), (2, 3), stride=(2, 1), padding=(1, 1)),
    _case("avg_pool2d", "ceil", (1, 2, 5, 5), 2, ceil_mode=True),
    _case("avg_pool2d", "ceil-pad-include", (1, 1, 6, 6), 3, stride=2, padding=1, ceil_mode=True),
    _case("avg_pool2d", "ceil-pad-exclude", (1, 1, 6, 6), 3, stride=2, padding=1, ceil_mode=True,
          count_include_pad=False),
    _case("avg_pool2d", "divisor-override", (1, 2, 4, 4), 2, divisor_override=3),
    _case("avg_pool2d", "divisor-override-pad", (1, 1, 5, 5), 3, stride=2, padding=1, divisor_override=5),
    _case("avg_pool2d", "unbatched", (2, 4, 4), 2),
    _case("avg_pool2d", "stride-list-empty", (1, 1, 4, 4), 2, stride=[]),
]

ADAPTIVE = [
    _case("adaptive_avg_pool2d", "global", (2, 3, 4, 5), 1),
    _case("adaptive_avg_pool2d", "divisible", (1, 2, 4, 6), (2, 3)),
    _case("adaptive_avg_pool2d", "overlapping", (1, 2, 5, 7), (3, 4)),
    _case("adaptive_avg_pool2d", "upsample", (1, 1, 3, 2), (4, 3)),
    _case("adaptive_avg_pool2d", "none-keeps", (1, 2, 5, 4), (2, None)),
    _case("adaptive_avg_pool2d", "unbatched", (2, 5, 5), 3),
    _case("adaptive_avg_pool1d", "overlapping", (2, 3, 7), 3),
    _case("adaptive_avg_pool1d", "unbatched-upsample", (2, 3), 5),
    _case("adaptive_avg_pool3d", "mixed", (1, 2, 4, 5, 3), (2, None, 2)),
    _case("adaptive_avg_pool3d", "global-unbatched", (2, 3, 3, 2), 1),
    _case("adaptive_max_pool1d", "overlapping", (2, 2, 7), 3, distinct=True),
    _case("adaptive_max_pool2d", "overlapping", (1, 2, 5, 7), (3, 4), distinct=True),
    _case("adaptive_max_pool2d", "global-indices", (2, 3, 4, 4), 1, return_indices=True, distinct=True),
    _case("adaptive_max_pool2d", "none-unbatched", (2, 5, 4), (2, None), distinct=True),
    _case("adaptive_max_pool3d", "mixed", (1, 2, 4, 3, 5), (2, 3, 2), distinct=True),
]

POOL3D = [
    _case("max_pool3d", "k2", (1, 2, 4, 4, 4), 2, distinct=True),
    _case("max_pool3d", "k3-s2-pad1-ceil", (1, 1, 5, 5, 4), 3, stride=2, padding=1, ceil_mode=True, distinct=True),
    _case("max_pool3d", "unbatched-dilated-indices", (2, 5, 5, 5), 2, stride=1, dilation=2, return_indices=True,
          distinct=True),
    _case("avg_pool3d", "k2", (1, 2, 4, 4, 4), 2),
    _case("avg_pool3d", "k3-s2-pad1-nopad", (1, 1, 5, 5, 4), 3, stride=2, padding=1, count_include_pad=False),
    _case("avg_pool3d", "ceil-divisor-unbatched", (2, 5, 4, 5), 2, ceil_mode=True, divisor_override=3),
]

FLATTEN = [
    _case("flatten", "default", (2, 3, 4)),
    _case("flatten", "start1", (2, 3, 4), 1),
    _case("flatten", "middle", (2, 3, 4, 2), 1, 2),
    _case("flatten", "negative", (2, 3, 4), -2, -1),
    _case("flatten", "noop", (2, 3), 1, 1),
    _case("flatten", "0d", ()),
]

CASES = MAX + AVG + ADAPTIVE + POOL3D + FLATTEN


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_pooling_matches_torch(case, device, contiguous):
    check_against_torch(case, device, contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_pooling_gradcheck(case, device):
    check_gradcheck(case, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", ["max_pool1d", "max_pool2d"])
def test_max_pool_ties_follow_torch_indices(fn, device):
    # All-equal windows: the gradient goes where torch's indices point, like torch's backward.
    shape = (1, 1, 6) if fn == "max_pool1d" else (1, 1, 4, 4)
    x1 = torch.ones(shape, device=device, requires_grad=True)
    x2 = torch.ones(shape, device=device, requires_grad=True)
    y1, i1 = getattr(GF, fn)(x1, 3, stride=1, return_indices=True)
    y2, i2 = getattr(F, fn)(x2, 3, stride=1, return_indices=True)
    assert torch.equal(i1, i2)
    g = torch.arange(y1.numel(), dtype=torch.float32, device=device).reshape(y1.shape)
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x1.grad, x2.grad)


def test_flatten_result_accepts_inplace_ops():
    x = torch.randn(2, 3, 4, requires_grad=True)
    y = GF.flatten(x * 1, 1)
    y.relu_()
    y.sum().backward()
    torch.testing.assert_close(x.grad, (x > 0).float())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_pooling_without_grad_equals_torch(case):
    # No input needs a gradient: the fast path (torch's op alone) gives torch's result.
    (x,) = case.make_inputs(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    ours, theirs = case.ours(x), case.theirs(x)
    for o, t in zip(ours if isinstance(ours, tuple) else (ours,), theirs if isinstance(theirs, tuple) else (theirs,)):
        assert torch.equal(o, t) and not o.requires_grad


def test_max_pool_indices_are_not_differentiable():
    _, idx = GF.max_pool2d(torch.randn(1, 1, 4, 4, requires_grad=True), 2, return_indices=True)
    assert not idx.requires_grad and idx.dtype == torch.int64


_X = torch.randn(1, 2, 6, 6)

def _requiring_grad(args):
    """The same args with every floating tensor requiring grad (the autograd.Function path)."""
    return tuple(a.clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


# (id, fn, args, kwargs, expected error, message fragment): bad input raises like torch.
FAIL_SETTINGS = [
    ("max2d-input-not-tensor", "max_pool2d", ([1.0], 2), {}, TypeError, "input"),
    ("avg2d-input-not-tensor", "avg_pool2d", ([1.0], 2), {}, TypeError, "input"),
    ("adaptive-input-not-tensor", "adaptive_avg_pool2d", ([1.0], 2), {}, TypeError, "input"),
    ("flatten-input-not-tensor", "flatten", ([1.0],), {}, TypeError, "input"),
    ("flatten-start-not-int", "flatten", (_X, 1.5), {}, TypeError, "start_dim"),
    ("flatten-dim-out-of-range", "flatten", (_X, 5), {}, IndexError, "range"),
    ("flatten-start-after-end", "flatten", (_X, 2, 1), {}, RuntimeError, "start_dim"),
    ("max2d-kernel-too-big", "max_pool2d", (_X, 7), {}, RuntimeError, "size"),
    ("max2d-pad-over-half-kernel", "max_pool2d", (_X, 2), {"padding": 2}, RuntimeError, "pad"),
    ("max2d-zero-stride", "max_pool2d", (_X, 2), {"stride": 0}, RuntimeError, "stride"),
    ("max2d-5d-input", "max_pool2d", (torch.randn(1, 1, 2, 4, 4), 2), {}, RuntimeError, "input"),
    ("max1d-4d-input", "max_pool1d", (_X, 2), {}, RuntimeError, ""),
    ("avg2d-pad-over-half-kernel", "avg_pool2d", (_X, 2), {"padding": 2}, RuntimeError, "pad"),
    ("avg2d-zero-divisor", "avg_pool2d", (_X, 2), {"divisor_override": 0}, RuntimeError, "divisor"),
    ("avg2d-zero-stride", "avg_pool2d", (_X, 2), {"stride": 0}, RuntimeError, "stride"),
    ("avg1d-bad-kernel-length", "avg_pool1d", (torch.randn(1, 2, 6), (2, 2)), {}, RuntimeError, "kernel_size"),
    ("adaptive-5d-input", "adaptive_avg_pool2d", (torch.randn(1, 1, 2, 4, 4), 2), {}, RuntimeError, ""),
    ("adaptive-bad-size-length", "adaptive_avg_pool2d", (_X, (1, 2, 3)), {}, RuntimeError, "output_size"),
    ("max3d-input-not-tensor", "max_pool3d", ([1.0], 2), {}, TypeError, "input"),
    ("max3d-3d-input", "max_pool3d", (torch.randn(2, 4, 4), 2), {}, RuntimeError, ""),
    ("avg3d-zero-stride", "avg_pool3d", (torch.randn(1, 1, 4, 4, 4), 2), {"stride": 0}, RuntimeError, "stride"),
    ("adaptive-max-not-tensor", "adaptive_max_pool2d", (None, 2), {}, TypeError, "input"),
    ("adaptive-max1d-bad-size", "adaptive_max_pool1d", (torch.randn(1, 2, 6), (2, 2)), {}, RuntimeError, ""),
    ("adaptive-avg3d-bad-size", "adaptive_avg_pool3d", (torch.randn(1, 2, 4, 4, 4), (2, 2)), {}, RuntimeError, ""),
]


@pytest.mark.parametrize(
    "fn,args,kwargs,error,match", [s[1:] for s in FAIL_SETTINGS], ids=[s[0] for s in FAIL_SETTINGS]
)
def test_pooling_bad_input_raises(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match or None):
        getattr(GF, fn)(*args, **kwargs)
    with pytest.raises(error, match=match or None):
        getattr(GF, fn)(*_requiring_grad(args), **kwargs)
    if error is not TypeError:  # torch agrees it is an error
        ref = getattr(F, fn, None) or getattr(torch, fn)
        with pytest.raises(error):
            ref(*args, **kwargs)
