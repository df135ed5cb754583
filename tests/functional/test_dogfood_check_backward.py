"""Dogfooding: gradlens.functional's hand-written backward passes, checked by gradlens.check_backward.

Every op family gets one :class:`gradlens.testing.BackwardCase` with torch's own op as
``reference``: the verifier compares our gradients, element by element and for two
random grad_outputs, with torch's float64 autograd (and our forward with torch's).
If the two halves of gradlens disagree, one of them is wrong.

How the verifier treats the arguments (``gradlens/verify/_check.py``):

* floating-point tensors with ``requires_grad=True`` are the ones checked;
* other floating-point tensors (class weights, running statistics, probability
  targets without grad) are copied afresh for every call, so ops that update them in
  place (batch_norm's running stats) see the same values each time and ours stay intact;
* integer tensors (class indices, embedding indices) and Python values pass unchanged;
* keyword options (stride, dim, is_causal, ...) are bound by :func:`_bind` into the
  callable, identically for ours and torch's.

Inputs are float64 (the verifier's tolerance there is ~1e-9 relative) and, for a few
ops, float32, where the tolerance is derived from the reference's own float32
rounding error (at least 16 ulps of the largest gradient element).

The float64 cases run once more with ``second_order=True`` (double backward).

Kinks: with a reference there are no finite differences, so relu, leaky_relu and
max_pool2d are compared where torch's autograd defines their gradient; the random
inputs sit away from 0 (relu) and have no ties inside a pooling window (``_no_ties``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gradlens.functional as GF
import gradlens.testing as glt
from gradlens import check_backward

F64, F32 = torch.float64, torch.float32


# ----------------------------------------------------------------------------- helpers
def _bind(fn, name, *lead, **kw):
    """``fn`` with keyword options ``kw`` bound (and positional ``lead`` args after the first), named ``name``.

    ``check_backward`` passes only positional inputs; options go here, the same for ours and torch's.
    """

    def call(x, *rest):
        return fn(x, *lead, *rest, **kw)

    call.__name__ = call.__qualname__ = name
    return call


def _pair(name, *lead, **kw):
    """(ours, torch's) for ``name`` in ``gradlens.functional`` / ``torch.nn.functional`` with the same options."""
    return _bind(getattr(GF, name), f"GF.{name}", *lead, **kw), _bind(getattr(F, name), f"F.{name}", *lead, **kw)


def _rand(*shape, dtype=F64, scale=1.0, shift=0.0, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=F64) * scale + shift
    return t.to(dtype).requires_grad_(grad)


def _away_from_zero(*shape, dtype=F64, seed=0):
    """Random values with |x| >= 0.1: no element on relu's kink at 0."""
    t = _rand(*shape, dtype=dtype, grad=False, seed=seed)
    return (t + 0.1 * t.sign()).requires_grad_(True)


def _no_ties(*shape, dtype=F64, seed=0):
    """A random permutation of distinct, well separated values: no ties inside any max-pooling window."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    vals = torch.randperm(n, generator=g).to(F64) / n  # spacing 1/n, far above float32 rounding
    return vals.view(shape).to(dtype).requires_grad_(True)


def _case(id, name, inputs, *lead, **kw):
    ours, theirs = _pair(name, *lead, **kw)
    return glt.BackwardCase(id, ours, inputs, reference=theirs)


# ----------------------------------------------------------------------------- cases
def _linear(dtype):
    return lambda: (_rand(4, 5, dtype=dtype), _rand(3, 5, dtype=dtype, seed=1), _rand(3, dtype=dtype, seed=2))


def _conv1d():
    # groups=2: in 4 channels -> out 6, weight (6, 4/2, 3)
    return (_rand(2, 4, 9), _rand(6, 2, 3, seed=1), _rand(6, seed=2))


def _conv2d(dtype):
    return lambda: (_rand(2, 4, 7, 6, dtype=dtype), _rand(6, 2, 3, 3, dtype=dtype, seed=1), _rand(6, dtype=dtype, seed=2))


def _layer_norm(dtype):
    # mean 0.5, std 2: a nonzero mean (the fast path centers x by the forward's saved mean)
    # normalized over the last two dims (4, 5)
    return lambda: (_rand(3, 4, 5, dtype=dtype, scale=2.0, shift=0.5), _rand(4, 5, dtype=dtype, seed=1), _rand(4, 5, dtype=dtype, seed=2))


def _layer_norm_offset():
    # mean 40 std: centering must not lose precision (float32 against torch)
    return (_rand(3, 6, shift=40.0), _rand(6, seed=1), _rand(6, seed=2))


def _bn_affine(*shape):
    c = shape[1]
    return _rand(*shape, scale=2.0, shift=0.5), _rand(c, seed=1), _rand(c, seed=2)


def _bn_no_running():
    x, w, b = _bn_affine(4, 3, 5)
    return (x, None, None, w, b)


def _bn_running():
    # running stats: plain float tensors (no grad); the verifier copies them for every call,
    # so the in-place momentum update of one call never leaks into the next
    x, w, b = _bn_affine(3, 4, 3, 2)
    rm = _rand(4, scale=0.1, grad=False, seed=3)
    rv = (torch.rand(4, generator=torch.Generator().manual_seed(4), dtype=F64) + 0.5)
    return (x, rm, rv, w, b)


def _group_norm(dtype):
    return lambda: (_rand(2, 6, 3, 2, dtype=dtype, scale=2.0, shift=0.5), _rand(6, dtype=dtype, seed=1), _rand(6, dtype=dtype, seed=2))


def _rms_norm():
    return (_rand(3, 4, 5), _rand(4, 5, seed=1))


def _act(dtype=F64):
    return lambda: (_rand(3, 7, dtype=dtype, scale=2.0),)


def _pool():
    return (_no_ties(2, 3, 7, 6),)


def _pool_smooth():
    return (_rand(2, 3, 7, 6),)


def _embedding_indices():
    # every index of 0..6 is looked up, some several times (gradients accumulate), 2 is the padding row
    return torch.tensor([[0, 2, 5, 2], [6, 1, 2, 5], [3, 4, 0, 5]])


def _embedding():
    return (_embedding_indices(), _rand(7, 4))


def _sdpa(dtype=F64):
    return lambda: (_rand(2, 2, 4, 3, dtype=dtype), _rand(2, 2, 5, 3, dtype=dtype, seed=1), _rand(2, 2, 5, 2, dtype=dtype, seed=2))


def _mse():
    return (_rand(3, 4), _rand(3, 4, seed=1))


def _ce_indices(dtype=F64):
    def make():
        y = torch.tensor([0, 3, 1, 4, 2, 3])
        y[1::3] = -1  # ignore_index=-1 drops targets 1 and 4
        return (_rand(6, 5, dtype=dtype, scale=2.0), y)

    return make


def _ce_indices_weighted():
    x, y = _ce_indices()()
    w = torch.rand(5, generator=torch.Generator().manual_seed(5), dtype=F64) + 0.5  # class weights: never differentiated
    return (x, y, w)


def _ce_probs():
    t = torch.randn(4, 5, generator=torch.Generator().manual_seed(6), dtype=F64).softmax(1)
    return (_rand(4, 5, scale=2.0), t.requires_grad_(True))  # torch differentiates probability targets too


def _nll():
    logp = _rand(6, 5, grad=False).log_softmax(1).requires_grad_(True)
    y = torch.tensor([0, 3, 1, 4, 2, 3])
    w = torch.rand(5, generator=torch.Generator().manual_seed(5), dtype=F64) + 0.5
    return (logp, y, w)


def _bce():
    t = torch.rand(3, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    return (_rand(3, 4, scale=2.0), t.requires_grad_(True))


def _bce_pos_weight():
    x, t = _bce()
    pw = torch.rand(4, generator=torch.Generator().manual_seed(8), dtype=F64) + 0.5
    return (x, t, None, None, None, "mean", pw)


def _sm(dtype=F64):
    return lambda: (_rand(3, 4, 5, dtype=dtype, scale=2.0),)


CASES = [
    # linear
    _case("linear-bias-f64", "linear", _linear(F64)),
    _case("linear-bias-f32", "linear", _linear(F32)),
    # conv
    _case("conv1d-stride2-pad1-groups2-dil2", "conv1d", _conv1d, stride=2, padding=1, dilation=2, groups=2),
    _case("conv2d-stride2-pad1-groups2-f64", "conv2d", _conv2d(F64), stride=2, padding=1, groups=2),
    _case("conv2d-stride2-pad1-groups2-f32", "conv2d", _conv2d(F32), stride=2, padding=1, groups=2),
    _case("conv2d-stride(1,2)-pad(2,0)-groups2", "conv2d", _conv2d(F64), stride=(1, 2), padding=(2, 0), groups=2),
    # norms
    _case("layer_norm-f64", "layer_norm", _layer_norm(F64), [4, 5]),
    _case("layer_norm-f32", "layer_norm", _layer_norm(F32), [4, 5]),
    _case("layer_norm-large-mean", "layer_norm", _layer_norm_offset, [6]),
    _case("batch_norm-train-no-running-stats", "batch_norm", _bn_no_running, training=True),
    _case("batch_norm-train-running-stats", "batch_norm", _bn_running, training=True, momentum=0.3),
    _case("batch_norm-eval-running-stats", "batch_norm", _bn_running, training=False),
    _case("group_norm-f64", "group_norm", _group_norm(F64), 3),
    _case("group_norm-f32", "group_norm", _group_norm(F32), 3),
    _case("rms_norm", "rms_norm", _rms_norm, [4, 5], eps=1e-6),
    # activations (relu/leaky_relu: |x| >= 0.1, away from the kink)
    glt.BackwardCase("relu", GF.relu, lambda: (_away_from_zero(3, 7),), reference=F.relu),
    _case("leaky_relu", "leaky_relu", lambda: (_away_from_zero(3, 7),), negative_slope=0.2),
    _case("gelu-none", "gelu", _act(), approximate="none"),
    _case("gelu-tanh", "gelu", _act(), approximate="tanh"),
    _case("gelu-tanh-f32", "gelu", _act(F32), approximate="tanh"),
    glt.BackwardCase("silu", GF.silu, _act(), reference=F.silu),
    glt.BackwardCase("tanh", GF.tanh, _act(), reference=torch.tanh),
    glt.BackwardCase("sigmoid", GF.sigmoid, _act(), reference=torch.sigmoid),
    _case("softmax-dim1", "softmax", _sm(), dim=1),
    _case("softmax-dim-1-f32", "softmax", _sm(F32), dim=-1),
    _case("log_softmax-dim-1", "log_softmax", _sm(), dim=-1),
    _case("log_softmax-dim0-f32", "log_softmax", _sm(F32), dim=0),
    # pooling (max: distinct values, no ties)
    _case("max_pool2d-k3-s2-p1", "max_pool2d", _pool, 3, stride=2, padding=1),
    _case("max_pool2d-k2-ceil", "max_pool2d", _pool, 2, ceil_mode=True),
    _case("avg_pool2d-k3-s2-p1-nopad", "avg_pool2d", _pool_smooth, 3, stride=2, padding=1, count_include_pad=False),
    _case("avg_pool2d-k2-ceil", "avg_pool2d", _pool_smooth, 2, ceil_mode=True),
    _case("adaptive_avg_pool2d-(3,4)", "adaptive_avg_pool2d", _pool_smooth, (3, 4)),
    # embedding: the integer indices are input 0 and pass through unchanged; only the weight is checked
    glt.BackwardCase("embedding", GF.embedding, _embedding, reference=F.embedding),
    _case("embedding-padding_idx", "embedding", _embedding, padding_idx=2),
    # attention
    _case("sdpa", "scaled_dot_product_attention", _sdpa()),
    _case("sdpa-causal", "scaled_dot_product_attention", _sdpa(), is_causal=True),
    _case("sdpa-causal-f32", "scaled_dot_product_attention", _sdpa(F32), is_causal=True),
    # losses
    glt.BackwardCase("mse_loss", GF.mse_loss, _mse, reference=F.mse_loss),
    _case("mse_loss-sum", "mse_loss", _mse, reduction="sum"),
    _case("cross_entropy-indices-smoothing-ignore", "cross_entropy", _ce_indices(), ignore_index=-1, label_smoothing=0.1),
    _case("cross_entropy-indices-smoothing-ignore-f32", "cross_entropy", _ce_indices(F32), ignore_index=-1, label_smoothing=0.1),
    glt.BackwardCase(  # class weights as a positional (non-grad) input: copied per call, never checked
        "cross_entropy-indices-weighted",
        _bind(GF.cross_entropy, "GF.cross_entropy", ignore_index=-1, label_smoothing=0.2),
        _ce_indices_weighted,
        reference=_bind(F.cross_entropy, "F.cross_entropy", ignore_index=-1, label_smoothing=0.2),
    ),
    _case("cross_entropy-probs-smoothing", "cross_entropy", _ce_probs, label_smoothing=0.1),
    glt.BackwardCase("cross_entropy-probs", GF.cross_entropy, _ce_probs, reference=F.cross_entropy),
    glt.BackwardCase("nll_loss-weighted", GF.nll_loss, _nll, reference=F.nll_loss),
    _case("nll_loss-sum", "nll_loss", lambda: _nll()[:2], reduction="sum"),
    glt.BackwardCase("bce_with_logits", GF.binary_cross_entropy_with_logits, _bce, reference=F.binary_cross_entropy_with_logits),
    glt.BackwardCase(
        "bce_with_logits-pos_weight",
        GF.binary_cross_entropy_with_logits,
        _bce_pos_weight,
        reference=F.binary_cross_entropy_with_logits,
    ),
]

test_functional_backward_matches_torch = glt.backward_test(CASES)

# Double backward takes another branch of every backward above (statistics and softmax
# recomputed with differentiable ops, no in-place temporaries): Hessian-vector products
# against torch's, on the float64 cases.
SECOND_ORDER_CASES = [
    glt.BackwardCase(f"{c.id}-2nd", c.fn, c.inputs, reference=c.reference, options={"second_order": True})
    for c in CASES
    if not c.id.endswith("-f32")
]

test_functional_double_backward_matches_torch = glt.backward_test(SECOND_ORDER_CASES)


def test_batch_norm_running_stats_left_intact():
    """The verifier hands every call fresh copies: our running stats are not updated by the check."""
    args = _bn_running()
    rm, rv = args[1].clone(), args[2].clone()
    ours, theirs = _pair("batch_norm", training=True, momentum=0.3)
    assert check_backward(ours, *args, reference=theirs).ok
    assert torch.equal(args[1], rm) and torch.equal(args[2], rv)


# ----------------------------------------------------------------------------- must fail
_BAD = (1, 2)  # the element of the input gradient that the corrupted backward gets wrong


class _CorruptedLayerNorm(torch.autograd.Function):
    """gradlens's layer_norm, whose backward flips the sign of one element of d(input)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return GF.layer_norm(x, [x.shape[-1]], weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = GF.layer_norm(x, [x.shape[-1]], weight, bias)
        dx, dw, db = torch.autograd.grad(out, (x, weight, bias), grad)
        dx = dx.clone()
        dx[_BAD] = -dx[_BAD]
        return dx, dw, db


def _ln_inputs():
    return (_rand(3, 5, scale=2.0, shift=0.5), _rand(5, seed=1), _rand(5, seed=2))


def _layer_norm_reference(x, weight, bias):
    return F.layer_norm(x, [x.shape[-1]], weight, bias)


def test_dogfood_detects_a_corrupted_layer_norm_backward():
    """The same setup fails, and names input 0 and the element, when one gradient element is wrong."""
    rep = check_backward(_CorruptedLayerNorm.apply, *_ln_inputs(), reference=_layer_norm_reference)
    text = str(rep)
    assert not rep.ok, text
    assert [t.name for t in rep.tensors] == ["input 0", "input 1", "input 2"], text
    bad = rep["input 0"]
    assert not bad.ok and rep["input 1"].ok and rep["input 2"].ok, text
    assert bad.n_mismatched == 1 and bad.worst[0][0] == _BAD, text
    assert any(f"wrong only at element {list(_BAD)}" in d and "x -1 the expected" in d for d in bad.diagnosis), text
    assert "FAIL input 0" in text
    # and the testing helpers built on the same check fail too
    case = glt.BackwardCase("corrupted", _CorruptedLayerNorm.apply, _ln_inputs, reference=_layer_norm_reference)
    with pytest.raises(AssertionError, match="FAIL input 0"):
        case.check()


def test_dogfood_detects_a_corrupted_layer_norm_backward_without_reference():
    """Finite differences (no reference) locate the same wrong element."""
    rep = check_backward(_CorruptedLayerNorm.apply, *_ln_inputs())
    text = str(rep)
    assert not rep.ok and not rep["input 0"].ok and rep["input 1"].ok and rep["input 2"].ok, text
    assert rep["input 0"].worst[0][0] == _BAD, text


def test_uncorrupted_wrapper_passes():
    """Control: the wrapper itself (without the sign flip) is right, so the failures above are the flip's."""

    class _Wrapped(_CorruptedLayerNorm):
        @staticmethod
        def backward(ctx, grad):
            x, weight, bias = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
            with torch.enable_grad():
                out = GF.layer_norm(x, [x.shape[-1]], weight, bias)
            return torch.autograd.grad(out, (x, weight, bias), grad)

    rep = check_backward(_Wrapped.apply, *_ln_inputs(), reference=_layer_norm_reference)
    assert rep.ok, str(rep)
