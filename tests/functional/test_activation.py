"""gradlens.functional.activation against torch (float32) and gradcheck (float64)."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
import torch.nn.functional as F

import gradlens.functional as GF
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck


def _away_from_kink(shape):
    """Random input with |x| >= 0.1, so finite differences never straddle a kink at 0."""

    def make(dtype, device, gen):
        x = torch.randn(*shape, generator=gen, dtype=dtype)
        x = x + 0.1 * torch.sign(x)
        return (x.to(device),)

    return make


def _randn(shape):
    def make(dtype, device, gen):
        return (torch.randn(*shape, generator=gen, dtype=dtype).to(device),)

    return make


def _away_from(shape, points, scale=1.0):
    """Random input (times ``scale``) at least 0.1 away from every kink in ``points``."""

    def make(dtype, device, gen):
        x = torch.randn(*shape, generator=gen, dtype=dtype) * scale
        for p in points:
            near = (x - p).abs() < 0.1
            x = torch.where(near, p + 0.1 * torch.where(x >= p, 1.0, -1.0).to(dtype), x)
        return (x.to(device),)

    return make


def _prelu_inputs(shape, n_weight, weight_shape=None):
    def make(dtype, device, gen):
        (x,) = _away_from(shape, [0.0])(dtype, device, gen)
        w = torch.rand(n_weight, generator=gen, dtype=dtype) * 0.5 + 0.1
        return (x, w.reshape(weight_shape if weight_shape is not None else (n_weight,)).to(device))

    return make


def _clone_first(fn):
    """Run an in-place op on a non-leaf copy (in-place on a leaf that requires grad is illegal)."""

    @functools.wraps(fn)
    def run(x, *args, **kwargs):
        return fn(x * 1, *args, **kwargs)

    return run


def _out_of_place(fn):
    """The torch reference without ``inplace`` (for settings whose in-place backward torch refuses)."""

    def run(x, *args, inplace=False, **kwargs):
        return fn(x, *args, **kwargs)

    return run


CASES = [
    OpCase("relu-2d", GF.relu, F.relu, _away_from_kink((5, 4))),
    OpCase("relu-batch1-4d", GF.relu, F.relu, _away_from_kink((1, 2, 3, 3))),
    OpCase("relu-inplace", _clone_first(GF.relu), _clone_first(F.relu), _away_from_kink((4, 3)), {"inplace": True}),
    OpCase("leaky_relu-default", GF.leaky_relu, F.leaky_relu, _away_from_kink((5, 4))),
    OpCase("leaky_relu-slope0.2", GF.leaky_relu, F.leaky_relu, _away_from_kink((5, 4)), {"negative_slope": 0.2}),
    OpCase("leaky_relu-negslope", GF.leaky_relu, F.leaky_relu, _away_from_kink((5, 4)), {"negative_slope": -0.3}),
    OpCase(
        "leaky_relu-inplace",
        _clone_first(GF.leaky_relu),
        _clone_first(F.leaky_relu),
        _away_from_kink((5, 4)),
        {"negative_slope": 0.1, "inplace": True},
    ),
    OpCase(
        "leaky_relu-inplace-negslope",
        _clone_first(GF.leaky_relu),
        _out_of_place(F.leaky_relu),  # torch refuses this backward; compare with out-of-place
        _away_from_kink((5, 4)),
        {"negative_slope": -0.2, "inplace": True},
    ),
    OpCase("elu-default", GF.elu, F.elu, _away_from_kink((5, 4))),
    OpCase("elu-alpha0.5", GF.elu, F.elu, _away_from_kink((2, 3, 4)), {"alpha": 0.5}),
    OpCase("elu-negalpha", GF.elu, F.elu, _away_from_kink((5, 4)), {"alpha": -0.5}),
    OpCase("elu-inplace", _clone_first(GF.elu), _clone_first(F.elu), _away_from_kink((5, 4)), {"inplace": True}),
    # torch refuses the backward of in-place elu with a negative alpha; compare with out-of-place.
    OpCase("elu-inplace-negalpha", _clone_first(GF.elu), _out_of_place(F.elu), _away_from_kink((5, 4)), {"alpha": -0.5, "inplace": True}),
    OpCase("gelu-exact", GF.gelu, F.gelu, _randn((5, 4))),
    OpCase("gelu-tanh", GF.gelu, F.gelu, _randn((2, 3, 4)), {"approximate": "tanh"}),
    OpCase("silu", GF.silu, F.silu, _randn((5, 4))),
    OpCase("silu-inplace", _clone_first(GF.silu), _clone_first(F.silu), _randn((5, 4)), {"inplace": True}),
    OpCase("tanh", GF.tanh, torch.tanh, _randn((5, 4))),
    OpCase("sigmoid-batch1", GF.sigmoid, torch.sigmoid, _randn((1, 7))),
    OpCase("softmax-dim1", GF.softmax, F.softmax, _randn((3, 5)), {"dim": 1}),
    OpCase("softmax-dim0-3d", GF.softmax, F.softmax, _randn((3, 4, 2)), {"dim": 0}),
    OpCase("softmax-dimneg1", GF.softmax, F.softmax, _randn((2, 3, 4)), {"dim": -1}),
    OpCase("softmax-dtype64", GF.softmax, F.softmax, _randn((3, 5)), {"dim": 1, "dtype": torch.float64}),
    OpCase("log_softmax-dim1", GF.log_softmax, F.log_softmax, _randn((3, 5)), {"dim": 1}),
    OpCase("log_softmax-dim-1-4d", GF.log_softmax, F.log_softmax, _randn((2, 2, 3, 3)), {"dim": -1}),
    OpCase("log_softmax-dtype64", GF.log_softmax, F.log_softmax, _randn((1, 5)), {"dim": -1, "dtype": torch.float64}),
    OpCase("hardtanh-default", GF.hardtanh, F.hardtanh, _away_from((5, 4), [-1.0, 1.0], 2.0)),
    OpCase("hardtanh-range", GF.hardtanh, F.hardtanh, _away_from((2, 3, 4), [-0.5, 2.0], 2.0),
           {"min_val": -0.5, "max_val": 2.0}),
    OpCase("hardtanh-inplace", _clone_first(GF.hardtanh), _clone_first(F.hardtanh), _away_from((4, 3), [-1.0, 1.0], 2.0),
           {"inplace": True}),
    OpCase("relu6", GF.relu6, F.relu6, _away_from((5, 4), [0.0, 6.0], 5.0)),
    OpCase("relu6-inplace", _clone_first(GF.relu6), _clone_first(F.relu6), _away_from((5, 4), [0.0, 6.0], 5.0),
           {"inplace": True}),
    OpCase("hardsigmoid", GF.hardsigmoid, F.hardsigmoid, _away_from((5, 4), [-3.0, 3.0], 3.0)),
    OpCase("hardsigmoid-inplace", _clone_first(GF.hardsigmoid), _clone_first(F.hardsigmoid),
           _away_from((5, 4), [-3.0, 3.0], 3.0), {"inplace": True}),
    OpCase("hardswish", GF.hardswish, F.hardswish, _away_from((5, 4), [-3.0, 3.0], 3.0)),
    OpCase("hardswish-inplace", _clone_first(GF.hardswish), _clone_first(F.hardswish),
           _away_from((5, 4), [-3.0, 3.0], 3.0), {"inplace": True}),
    OpCase("softplus", GF.softplus, F.softplus, _randn((5, 4))),
    OpCase("softplus-beta2-threshold1", GF.softplus, F.softplus, _away_from((5, 4), [0.5], 2.0),
           {"beta": 2.0, "threshold": 1.0}),
    OpCase("mish", GF.mish, F.mish, _randn((2, 3, 4))),
    OpCase("mish-inplace", _clone_first(GF.mish), _clone_first(F.mish), _randn((5, 4)), {"inplace": True}),
    OpCase("logsigmoid", GF.logsigmoid, F.logsigmoid, _randn((5, 4))),
    OpCase("logsigmoid-large", GF.logsigmoid, F.logsigmoid, _away_from((5, 4), [], 30.0)),
    OpCase("prelu-shared", GF.prelu, F.prelu, _prelu_inputs((3, 4), 1)),
    OpCase("prelu-per-channel-4d", GF.prelu, F.prelu, _prelu_inputs((2, 3, 2, 2), 3)),
    OpCase("prelu-per-channel-2d", GF.prelu, F.prelu, _prelu_inputs((5, 4), 4)),
    OpCase("prelu-1d-input", GF.prelu, F.prelu, _prelu_inputs((6,), 1)),
    OpCase("prelu-0d-weight", GF.prelu, F.prelu, _prelu_inputs((2, 3), 1, ())),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_against_torch(case, device, contiguous):
    check_against_torch(case, device, contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradcheck(case, device):
    check_gradcheck(case, device)


@pytest.mark.parametrize("name", GF.activation.__all__)
def test_signature_matches_torch(name):
    ours = inspect.signature(getattr(GF, name))
    theirs = getattr(F, name)
    if name in ("tanh", "sigmoid"):
        assert list(ours.parameters) == ["input"]
        return
    builtins = {"softplus": [("input", inspect.Parameter.empty), ("beta", 1.0), ("threshold", 20.0)],
                "logsigmoid": [("input", inspect.Parameter.empty)],
                "prelu": [("input", inspect.Parameter.empty), ("weight", inspect.Parameter.empty)]}
    if name in builtins:  # builtins without an inspectable signature in torch: their documented one
        assert [(p.name, p.default) for p in ours.parameters.values()] == builtins[name]
        return
    if name == "gelu":  # a builtin without an inspectable signature in torch
        assert list(ours.parameters) == ["input", "approximate"]
        assert ours.parameters["approximate"].default == "none"
        return
    theirs = inspect.signature(theirs)
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in theirs.parameters.values()
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name,kwargs",
    [("relu", {}), ("leaky_relu", {"negative_slope": 0.1}), ("elu", {}), ("silu", {}), ("hardtanh", {}),
     ("relu6", {}), ("hardsigmoid", {}), ("hardswish", {}), ("mish", {})],
    ids=["relu", "leaky_relu", "elu", "silu", "hardtanh", "relu6", "hardsigmoid", "hardswish", "mish"],
)
def test_inplace_modifies_input_and_grads(name, kwargs, device):
    x = (torch.randn(6, 5, device=device) + 0.0).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    h = x * 2
    out = getattr(GF, name)(h, inplace=True, **kwargs)
    assert out.data_ptr() == h.data_ptr(), "inplace=True must return the input's storage"
    h_ref = x_ref * 2
    getattr(F, name)(h_ref, inplace=True, **kwargs)
    torch.testing.assert_close(h, h_ref)
    (out * torch.arange(30.0, device=device).view(6, 5)).sum().backward()
    (h_ref * torch.arange(30.0, device=device).view(6, 5)).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(5,), (2, 5), (2, 3, 4), (2, 3, 4, 5)], ids=["1d", "2d", "3d", "4d"])
def test_softmax_dim_none_like_torch(name, shape):
    x = torch.randn(*shape)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        ours = getattr(GF, name)(x)
    with pytest.warns(UserWarning):
        theirs = getattr(F, name)(x)
    torch.testing.assert_close(ours, theirs)


def test_softmax_dtype_grad_comes_back_in_input_dtype():
    x = torch.randn(3, 4, requires_grad=True)
    y = GF.softmax(x, dim=1, dtype=torch.float64)
    assert y.dtype == torch.float64
    y[:, 0].sum().backward()
    assert x.grad.dtype == torch.float32


BAD_INPUTS = [
    pytest.param(lambda: GF.relu([1.0, -1.0]), TypeError, "input", id="relu-list"),
    pytest.param(lambda: GF.gelu(torch.randn(3), approximate="fast"), ValueError, "approximate", id="gelu-approx"),
    pytest.param(lambda: GF.gelu("x"), TypeError, "input", id="gelu-str"),
    pytest.param(lambda: GF.softmax(torch.randn(2, 3), dim=2), IndexError, "dim", id="softmax-dim-range"),
    pytest.param(lambda: GF.softmax(torch.randn(2, 3), dim=1.0), TypeError, "dim", id="softmax-dim-float"),
    pytest.param(lambda: GF.log_softmax(torch.randn(2, 3), dim=1, dtype="float64"), TypeError, "dtype", id="logsm-dtype"),
    pytest.param(lambda: GF.sigmoid(None), TypeError, "input", id="sigmoid-none"),
    pytest.param(lambda: GF.relu(torch.randn(3, requires_grad=True), inplace=True), RuntimeError, "leaf", id="relu-inplace-leaf"),
    pytest.param(lambda: GF.hardtanh(torch.randn(3), 2.0, 1.0), ValueError, "min_val", id="hardtanh-min-gt-max"),
    pytest.param(lambda: GF.prelu(torch.randn(2, 3), torch.rand(2)), RuntimeError, "channel", id="prelu-channels"),
    pytest.param(lambda: GF.prelu(torch.randn(4), torch.rand(4)), RuntimeError, "channel", id="prelu-1d-many"),
    pytest.param(lambda: GF.prelu(torch.randn(2, 3), torch.rand(3, 1)), ValueError, "weight", id="prelu-2d-weight"),
    pytest.param(lambda: GF.prelu(torch.randn(2, 3), 0.25), TypeError, "weight", id="prelu-float-weight"),
    pytest.param(lambda: GF.softplus("x"), TypeError, "input", id="softplus-str"),
]


@pytest.mark.parametrize("call,exc,match", BAD_INPUTS)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "cot-noncontiguous"])
def test_gelu_first_order_in_chunks_matches_torch(approximate, dtype, layout):
    """A first-order GELU backward on CPU runs in cache-sized chunks once the input is larger
    than one chunk: several chunks and a ragged last one give torch's gradient."""
    from gradlens.functional import activation as A

    n_rows = 2 * A._GELU_CPU_CHUNK // 1000 + 3  # > 2 chunks of 1000-element rows, ragged end
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1000, n_rows, generator=gen, dtype=dtype) * 3
    x = base.t() if layout == "noncontiguous" else base.t().contiguous()
    cot = torch.randn(1000, n_rows, generator=gen, dtype=dtype)
    cot = cot.t() if layout == "cot-noncontiguous" else cot.t().contiguous()
    grads = []
    for fn in (GF.gelu, F.gelu):
        leaf = x.detach().clone().requires_grad_() if layout != "noncontiguous" else base.detach().clone().requires_grad_()
        inp = leaf if layout != "noncontiguous" else leaf.t()
        grads.append(torch.autograd.grad(fn(inp, approximate=approximate), leaf, cot)[0])
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}  # the harness's float32 tolerance
    torch.testing.assert_close(grads[0], grads[1], **tol)
