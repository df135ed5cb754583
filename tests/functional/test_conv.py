"""gradlens.functional conv1d/2d/3d and conv_transpose1d/2d/3d against torch (settings + failures)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

import gradlens.functional as GF


def _inputs(x_shape, w_shape, bias=True, out_channels=None):
    def make(dtype, device, gen):
        x = torch.randn(x_shape, generator=gen, dtype=dtype).to(device)
        w = torch.randn(w_shape, generator=gen, dtype=dtype).to(device)
        if not bias:
            return (x, w)
        c_out = w_shape[0] if out_channels is None else out_channels
        return (x, w, torch.randn(c_out, generator=gen, dtype=dtype).to(device))

    return make


def _c1(id, x_shape, w_shape, bias=True, **kw):
    return OpCase(f"conv1d-{id}", GF.conv1d, F.conv1d, _inputs(x_shape, w_shape, bias), kwargs=kw)


def _c2(id, x_shape, w_shape, bias=True, **kw):
    return OpCase(f"conv2d-{id}", GF.conv2d, F.conv2d, _inputs(x_shape, w_shape, bias), kwargs=kw)


def _c3(id, x_shape, w_shape, bias=True, **kw):
    return OpCase(f"conv3d-{id}", GF.conv3d, F.conv3d, _inputs(x_shape, w_shape, bias), kwargs=kw)


def _ct(nd, id, x_shape, w_shape, bias=True, **kw):
    name = f"conv_transpose{nd}d"
    c_out = w_shape[1] * kw.get("groups", 1)  # a transposed conv's weight is (C_in, C_out / groups, k...)
    return OpCase(f"{name}-{id}", getattr(GF, name), getattr(F, name), _inputs(x_shape, w_shape, bias, c_out), kwargs=kw)


# Small shapes: float64 gradgradcheck cost grows with every element of x, W and y.
CASES = [
    _c1("plain", (2, 2, 5), (3, 2, 3)),
    _c1("nobias-batch1", (1, 2, 4), (2, 2, 2), bias=False),
    _c1("unbatched", (2, 5), (2, 2, 3)),
    _c1("stride2-pad1", (1, 2, 7), (2, 2, 3), stride=2, padding=1),
    _c1("dilation2", (1, 2, 7), (2, 2, 3), dilation=2),
    _c1("groups2", (1, 4, 5), (4, 2, 3), groups=2),
    _c1("same-odd", (1, 2, 5), (2, 2, 3), padding="same"),
    _c1("same-even-kernel", (2, 2, 5), (2, 2, 4), padding="same"),
    _c1("same-even-dilated", (1, 2, 6), (2, 2, 2), padding="same", dilation=3),
    _c1("valid", (1, 2, 5), (2, 2, 3), padding="valid"),
    _c1("tuple-args", (1, 2, 8), (2, 2, 3), stride=(2,), padding=(2,), dilation=(2,)),
    _c2("plain", (2, 2, 4, 4), (3, 2, 3, 3)),
    _c2("nobias-batch1", (1, 2, 4, 3), (2, 2, 2, 2), bias=False),
    _c2("unbatched", (2, 4, 4), (2, 2, 3, 3)),
    _c2("stride2-pad1", (1, 2, 5, 5), (2, 2, 3, 3), stride=2, padding=1),
    _c2("stride-tuple-pad-tuple", (1, 2, 5, 4), (2, 2, 3, 2), stride=(2, 1), padding=(1, 0)),
    _c2("dilation2", (1, 1, 6, 6), (2, 1, 3, 3), dilation=2),
    _c2("dilation-tuple", (1, 1, 5, 5), (2, 1, 2, 3), dilation=(1, 2), padding=1),
    _c2("groups2", (1, 4, 4, 4), (4, 2, 2, 2), groups=2),
    _c2("depthwise", (1, 3, 4, 4), (3, 1, 3, 3), groups=3, padding=1),
    _c2("same-odd", (1, 2, 4, 4), (2, 2, 3, 3), padding="same"),
    _c2("same-even-kernel", (1, 1, 4, 5), (2, 1, 2, 4), padding="same"),
    _c2("same-mixed-dilated", (1, 1, 5, 5), (2, 1, 2, 3), padding="same", dilation=(1, 2)),
    _c2("valid", (1, 2, 4, 4), (2, 2, 3, 3), padding="valid"),
    _c2("unbatched-same-even", (2, 4, 4), (2, 2, 2, 2), padding="same", dilation=(1, 2)),
    _c2("1x1", (2, 3, 3, 3), (2, 3, 1, 1)),
    _c3("plain", (1, 2, 3, 3, 3), (2, 2, 2, 2, 2)),
    _c3("stride2-pad1-nobias", (1, 1, 4, 4, 4), (2, 1, 3, 3, 3), bias=False, stride=2, padding=1),
    _c3("unbatched-same-groups", (2, 3, 3, 3), (2, 1, 2, 2, 2), padding="same", groups=2),
    _c3("dilation-tuple", (1, 1, 4, 5, 5), (2, 1, 2, 2, 2), dilation=(1, 2, 2)),
    # weights of a transposed conv are (C_in, C_out / groups, k...)
    _ct(1, "plain", (2, 2, 4), (2, 3, 3)),
    _ct(1, "stride2-outpad1", (1, 2, 4), (2, 2, 3), stride=2, padding=1, output_padding=1),
    _ct(1, "unbatched-nobias", (2, 4), (2, 2, 2), bias=False),
    _ct(1, "groups2-dilation2", (1, 4, 4), (4, 1, 3), groups=2, dilation=2),
    _ct(2, "plain", (1, 2, 3, 3), (2, 3, 3, 3)),
    _ct(2, "stride2-pad1-k4", (2, 2, 3, 3), (2, 2, 4, 4), stride=2, padding=1),
    _ct(2, "stride-tuple-outpad", (1, 2, 3, 2), (2, 2, 3, 2), stride=(2, 3), output_padding=(1, 2)),
    _ct(2, "unbatched-groups2", (4, 3, 3), (4, 1, 2, 2), groups=2),
    _ct(2, "dilation-pad-nobias", (1, 1, 3, 3), (1, 2, 3, 3), bias=False, dilation=(2, 1), padding=1),
    _ct(3, "plain", (1, 2, 2, 2, 2), (2, 2, 2, 2, 2)),
    _ct(3, "stride2-outpad", (1, 1, 2, 2, 2), (1, 2, 3, 3, 3), stride=2, padding=1, output_padding=1),
]

WEIGHT_ONLY = [
    # A frozen input (first layer's data): only weight/bias get gradients.
    OpCase("conv2d-grad-weight-only", GF.conv2d, F.conv2d, _inputs((1, 2, 4, 4), (2, 2, 3, 3)), grad_args=(1, 2)),
    OpCase("conv2d-grad-input-only-same-even", GF.conv2d, F.conv2d, _inputs((1, 2, 4, 4), (2, 2, 2, 2)),
           kwargs={"padding": "same"}, grad_args=(0,)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES + WEIGHT_ONLY, ids=lambda c: c.id)
def test_conv_matches_torch(case, device, contiguous):
    check_against_torch(case, device, contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES + WEIGHT_ONLY, ids=lambda c: c.id)
def test_conv_gradcheck(case, device):
    check_gradcheck(case, device)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_conv_without_grad_equals_torch(case):
    # Nothing needs a gradient: the fast path (torch's op alone) gives torch's result.
    args = case.make_inputs(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = case.ours(*[a.requires_grad_(True) for a in args], **case.kwargs)
    assert torch.equal(ours, case.theirs(*args, **case.kwargs)) and not ours.requires_grad


def test_conv_frozen_weight_gets_no_grad():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(3, 2, 3, 3)
    GF.conv2d(x, w).sum().backward()
    assert w.grad is None and x.grad is not None


_X2 = torch.randn(1, 2, 8, 8)
_W2 = torch.randn(3, 2, 3, 3)

def _requiring_grad(args):
    """The same args with every floating tensor requiring grad (the autograd.Function path)."""
    return tuple(a.clone().requires_grad_(True) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


# (id, fn, args, kwargs, expected error, message fragment): bad input raises like torch.
FAIL_SETTINGS = [
    ("input-not-tensor", "conv2d", ([1.0], _W2), {}, TypeError, "input"),
    ("weight-not-tensor", "conv2d", (_X2, 3), {}, TypeError, "weight"),
    ("bias-not-tensor", "conv2d", (_X2, _W2, [0.0, 0.0, 0.0]), {}, TypeError, "bias"),
    ("same-strided", "conv2d", (_X2, _W2), {"padding": "same", "stride": 2}, RuntimeError, "strided"),
    ("bad-padding-string", "conv2d", (_X2, _W2), {"padding": "full"}, RuntimeError, "padding"),
    ("negative-padding", "conv2d", (_X2, _W2), {"padding": -1}, RuntimeError, "negative padding"),
    ("padding-wrong-length", "conv2d", (_X2, _W2), {"padding": (1, 1, 1)}, RuntimeError, "padding"),
    ("zero-stride", "conv2d", (_X2, _W2), {"stride": 0}, RuntimeError, "stride"),
    ("zero-groups", "conv2d", (_X2, _W2), {"groups": 0}, RuntimeError, "groups"),
    ("channels-mismatch", "conv2d", (_X2, torch.randn(3, 4, 3, 3)), {}, RuntimeError, "channels"),
    ("groups-mismatch", "conv2d", (_X2, _W2), {"groups": 2}, RuntimeError, "groups"),
    ("input-5d", "conv2d", (torch.randn(1, 2, 3, 8, 8), _W2), {}, RuntimeError, "input"),
    ("dtype-mismatch", "conv2d", (_X2.double(), _W2), {}, RuntimeError, "type"),
    ("kernel-bigger-than-input", "conv1d", (torch.randn(1, 2, 2), torch.randn(3, 2, 5)), {}, RuntimeError, "size"),
    ("conv1d-4d-input", "conv1d", (_X2, torch.randn(3, 2, 3)), {}, RuntimeError, "input"),
    ("conv3d-4d-weight", "conv3d", (torch.randn(1, 2, 3, 3, 3), _W2), {}, RuntimeError, "convolution dimensions"),
    ("convT-string-padding", "conv_transpose2d", (_X2, torch.randn(2, 3, 3, 3)), {"padding": "same"}, ValueError,
     "padding"),
    ("convT-outpad-too-big", "conv_transpose2d", (_X2, torch.randn(2, 3, 3, 3)), {"stride": 2, "output_padding": 2},
     RuntimeError, "output padding"),
    ("convT-channels", "conv_transpose1d", (torch.randn(1, 2, 5), torch.randn(3, 2, 3)), {}, RuntimeError, "channels"),
    ("convT-weight-not-tensor", "conv_transpose3d", (torch.randn(1, 2, 3, 3, 3), None), {}, TypeError, "weight"),
]


@pytest.mark.parametrize(
    "fn,args,kwargs,error,match", [s[1:] for s in FAIL_SETTINGS], ids=[s[0] for s in FAIL_SETTINGS]
)
def test_conv_bad_input_raises(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(GF, fn)(*args, **kwargs)
    with pytest.raises(error, match=match):
        getattr(GF, fn)(*_requiring_grad(args), **kwargs)
    if error is RuntimeError:  # torch agrees it is an error
        with pytest.raises(RuntimeError):
            getattr(F, fn)(*args, **kwargs)
