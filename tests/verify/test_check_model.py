"""gradlens.check_model: every custom Function of a forward, checked on the inputs the model gives it.

Independent references: torch.autograd.gradcheck (float64, exact mode) on the same real
inputs says which Functions are wrong; check_backward on N(0, 1) inputs shows the bugs
are invisible to random test inputs.
"""

from __future__ import annotations

import sys

import model_zoo as mz
import pytest
import torch
from torch import nn

import gradlens
from gradlens.verify._model import _APPLY_CODE

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


def _real_inputs(model: mz.Net, x: torch.Tensor):
    """The inputs ReLU6 and RowClip get in the model's forward (float64 copies)."""
    with torch.no_grad():
        pre = model.embed(x).double()
        act = pre.clamp(0, 6)
    return pre, act


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_function_model_flags_the_two_wrong_ones_with_module_and_line(dtype):
    model, x = mz.make(dtype)
    report = gradlens.check_model(model, x)
    text = str(report)
    assert not report.ok, text
    assert [f.name for f in report.functions] == ["ReLU6", "RowClip", "Swish"], text
    assert [f.name for f in report.failed] == ["ReLU6", "RowClip"], text
    relu, clip, swish = (report[n] for n in ("ReLU6", "RowClip", "Swish"))
    assert swish.ok and swish.checked
    for entry, module, mtype, tag in ((relu, "blocks.0", "Act", "relu6"), (clip, "blocks.1", "Clip", "rowclip"), (swish, "head", "Head", "swish")):
        (call,) = entry.calls
        assert (call.module, call.module_type) == (module, mtype), text
        assert call.source.endswith(f"model_zoo.py:{mz.line_of(tag)}"), text
        assert entry.n_calls == 1 and call.checked
    assert relu.failed == relu.calls and clip.failed == clip.calls
    assert "wrong exactly where x > 6" in text and "a missing clip?" in text, text
    assert "rows where the row norm |x[i, :]| > 8" in text, text
    assert "FAIL ReLU6" in text and "ok   Swish" in text and "module blocks.1 (Clip) at" in text
    # The independent reference on the same real inputs agrees.
    pre, act = _real_inputs(model, x)
    assert not torch.autograd.gradcheck(mz.ReLU6.apply, (pre.requires_grad_(),), raise_exception=False)
    assert torch.autograd.gradcheck(mz.ReLU6Fixed.apply, (pre,))
    assert not torch.autograd.gradcheck(lambda a: mz.RowClip.apply(a, 8.0), (act.requires_grad_(),), raise_exception=False)
    assert torch.autograd.gradcheck(lambda a: mz.RowClipFixed.apply(a, 8.0), (act,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_inputs_do_not_reveal_the_bugs(dtype):
    # Why check_model: the same Functions pass on N(0, 1) test inputs.
    x = torch.randn(32, 16, dtype=torch.float64).to(dtype).requires_grad_()
    assert gradlens.check_backward(mz.ReLU6.apply, x).ok
    assert gradlens.check_backward(lambda a: mz.RowClip.apply(a, 8.0), x).ok


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_model_passes(dtype):
    model, x = mz.make(dtype, fixed=True)
    report = gradlens.check_model(model, x)
    assert report.ok, str(report)
    assert [f.name for f in report.functions] == ["ReLU6Fixed", "RowClipFixed", "Swish"]
    assert "3 custom Functions OK  (3 calls checked, seed=0)" in str(report)


class _BNNet(nn.Module):
    """Custom Functions next to BatchNorm (running stats move in train mode) and dropout (RNG)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = mz.swish(self.bn(self.fc(x)))
        return mz.RowClipFixed.apply(self.out(self.drop(h)), 1.0)


def _hooks(model: nn.Module):
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")
    return {(n, a): len(getattr(m, a)) for n, m in model.named_modules() for a in names if hasattr(m, a)}


def _global_hooks():
    import torch.nn.modules.module as mm

    return [len(getattr(mm, a)) for a in dir(mm) if a.startswith("_global_") and a.endswith("hooks")]


def _forward_backward(model, x):
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach().clone(), [p.grad.clone() for p in model.parameters()], {k: v.clone() for k, v in model.state_dict().items()}


def test_model_is_unchanged_afterwards():
    torch.manual_seed(0)
    model, x = _BNNet(), torch.randn(32, 8)
    ref = _forward_backward(_copy(model), x)
    grads_before = [None for _ in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks, ghooks, flags = _hooks(model), _global_hooks(), [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    report = gradlens.check_model(model, x)
    assert report.ok and [f.name for f in report.functions] == ["Swish", "RowClipFixed"], str(report)
    # Bit-identical parameters, buffers (running stats, num_batches_tracked), RNG, flags; nothing attached.
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert torch.equal(rng, torch.get_rng_state())
    assert [p.grad for p in model.parameters()] == grads_before
    assert _hooks(model) == hooks and all(v == 0 for v in hooks.values()) and _global_hooks() == ghooks
    assert [m.training for m in model.modules()] == flags
    assert sys.getprofile() is None and torch.autograd.Function.apply.__func__.__code__ is _APPLY_CODE
    # A forward and backward afterwards are bit-identical to those of an untouched copy.
    out, grads, st = _forward_backward(model, x)
    assert torch.equal(out, ref[0]) and all(torch.equal(a, b) for a, b in zip(grads, ref[1]))
    assert all(torch.equal(st[k], ref[2][k]) for k in st)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_model_restored_even_when_the_forward_raises():
    model = _BNNet()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def bad_loss(out):
        raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError, match="loss exploded"):
        gradlens.check_model(model, torch.randn(16, 8), loss_fn=bad_loss)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert sys.getprofile() is None


class _Scale(torch.autograd.Function):
    """y = x * w (w a parameter); backward optionally wrong for the weight."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        # d(x w) = (g w, sum_batch g x)
        return g * w, (g * x).sum(0)


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return (y * y).mean()

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y / y.numel()  # BUG: 2 y / n


class _Outer(torch.autograd.Function):
    """Its forward calls another custom Function (grad disabled there): only Outer is listed."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return mz.Swish.apply(x) * 1.0

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * (s + x * s * (1 - s))


class _Repeat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6))

    def forward(self, x):
        with torch.no_grad():
            _ = mz.swish(x)  # grad disabled: its backward never runs
        for _ in range(5):
            x = _Scale.apply(x, self.w)
        return _Outer.apply(x)


def test_calls_counted_bounded_named_and_skipped():
    model = _Repeat()
    x = torch.randn(4, 6)
    report = gradlens.check_model(model, x, max_calls=2, loss_fn=lambda y: _Loss.apply(y))
    text = str(report)
    assert [f.name for f in report.functions] == ["Swish", "_Scale", "_Outer", "_Loss"], text
    swish = report["Swish"]
    assert swish.ok and not swish.checked and "grad disabled" in swish.calls[0].skipped
    assert swish.n_calls == 1  # the call inside _Outer's forward is _Outer's business, not the model's
    scale = report["_Scale"]
    assert scale.n_calls == 5 and [c.index for c in scale.calls] == [0, 1] and scale.ok, text
    assert scale.calls[0].inputs == ["input 0 = activation [4, 6] float32", "input 1 = w [6] float32"]
    assert [t.name for t in scale.calls[0].report.tensors] == ["input 1 (w)"]  # x needs no grad in call 0
    assert [t.name for t in scale.calls[1].report.tensors] == ["input 0", "input 1 (w)"]
    assert report["_Outer"].n_calls == 1 and report["_Outer"].ok  # the nested Swish is not a call of the forward
    assert not report["_Loss"].ok and "x 1/2" in text, text
    assert "in the forward, 2 checked" in text and "not checked" in text


def test_function_without_differentiable_input_is_skipped_with_reason():
    class M(nn.Module):
        def forward(self, x):
            return mz.Swish.apply(x)

    report = gradlens.check_model(M(), torch.randn(3))
    assert report.ok and "no input requires grad" in report["Swish"].calls[0].skipped
    from gradlens.testing import assert_model_backward_correct

    with pytest.raises(AssertionError, match="nothing verified"):
        assert_model_backward_correct(M(), torch.randn(3))
    assert_model_backward_correct(M(), torch.randn(3), allow_empty=True)


class _Hidden(torch.autograd.Function):
    """Overrides apply and bypasses torch.autograd.Function.apply: found in the graph only."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g

    @classmethod
    def apply(cls, *args):
        return torch._C._FunctionBase.__dict__["apply"].__get__(None, cls)(*args)


def test_function_seen_only_in_the_graph_is_noted():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return _Hidden.apply(self.fc(x))

    report = gradlens.check_model(M(), torch.randn(2, 3))
    assert not report.functions and any("_Hidden is in the autograd graph" in n for n in report.notes), str(report)


def test_gradlens_functions_excluded_by_default_and_dogfooded_on_request():
    torch.manual_seed(0)
    model = gradlens.mirror(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)))
    x = torch.randn(8, 6)
    report = gradlens.check_model(model, x)
    assert not report.functions and report.excluded.get("gradlens", 0) >= 3, str(report)
    assert "gradlens's own Functions" in str(report)
    report = gradlens.check_model(model, x, include_gradlens=True)
    assert report.ok and len(report.functions) >= 2, str(report)
    assert {c.module for f in report.functions for c in f.calls} >= {"0", "2"}, str(report)


def test_torch_own_functions_are_excluded():
    from torch.utils.checkpoint import checkpoint

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return checkpoint(lambda h: mz.swish(self.fc(h)), x, use_reentrant=False)

    report = gradlens.check_model(M(), torch.randn(3, 4))
    assert [f.name for f in report.functions] == ["Swish"] and report.ok, str(report)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g  # straight-through


class _RoundSTEBad(_RoundSTE):
    @staticmethod
    def backward(ctx, g):
        return 2 * g  # BUG: not the identity


def _ste_model(cls):
    class Quant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return cls.apply(3 * self.fc(x))

    torch.manual_seed(0)
    return Quant(), torch.randn(5, 4)


def _ste_ref(x):
    return x + (torch.round(x) - x).detach()


def test_straight_through_needs_a_reference_and_says_how():
    model, x = _ste_model(_RoundSTE)
    report = gradlens.check_model(model, x)
    text = str(report)
    assert not report.ok and "piecewise constant" in text, text
    assert "check_model(..., references={_RoundSTE: lambda x: x + (torch.round(x) - x).detach()})" in text
    for key in (_RoundSTE, "_RoundSTE"):
        assert gradlens.check_model(model, x, references={key: _ste_ref}).ok
    model, x = _ste_model(_RoundSTEBad)
    bad = gradlens.check_model(model, x, references={_RoundSTEBad: _ste_ref})
    assert not bad.ok and "x 2" in str(bad), str(bad)


def test_options_reach_check_backward_and_seed_repeats():
    model, x = mz.make()
    a = gradlens.check_model(model, x, seed=3, locate=False)
    assert "locate=False" in str(a) and "seed=3" in str(a)
    assert str(gradlens.check_model(model, x, seed=3)) == str(gradlens.check_model(model, x, seed=3))


def test_a_call_that_cannot_be_checked_is_a_failure():
    class IntOut(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return (x > 0).long()

        @staticmethod
        def backward(ctx, g):
            return None

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return IntOut.apply(self.fc(x))

    report = gradlens.check_model(M(), torch.randn(3, 2))
    assert not report.ok and "could not be checked" in str(report), str(report)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"loss_fn": 3}, TypeError, "loss_fn="),
        ({"max_calls": 0}, ValueError, "max_calls="),
        ({"include_gradlens": 1}, TypeError, "include_gradlens="),
        ({"seed": 1.5}, TypeError, "seed="),
        ({"references": [1]}, TypeError, "references="),
        ({"references": {3: torch.sin}}, TypeError, "keys must be"),
        ({"references": {"Swish": 3}}, TypeError, "must be callable"),
        ({"reference": torch.sin}, TypeError, "use references="),
        ({"bogus": 1}, TypeError, "unexpected option"),
        ({"atol": -1.0}, ValueError, "atol="),
    ],
    ids=["loss_fn", "max_calls", "include_gradlens", "seed", "references-type", "references-key", "references-value", "reference", "unknown", "atol"],
)
def test_bad_arguments(kwargs, err, match):
    model, x = mz.make()
    with pytest.raises(err, match=match):
        gradlens.check_model(model, x, **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="check_model\\(model=...\\) expects an nn.Module, got list"):
        gradlens.check_model([nn.Linear(2, 2)], torch.randn(3))


def test_a_profile_function_set_before_keeps_running_and_stays_set():
    events = []

    def prof(frame, event, arg):
        events.append(event)

    model, x = mz.make(fixed=True)
    sys.setprofile(prof)
    try:
        report = gradlens.check_model(model, x)
        assert sys.getprofile() is prof
    finally:
        sys.setprofile(None)
    assert report.ok and len(report.functions) == 3
    assert events.count("call") > 100  # chained during the recorded forward too


def test_bfloat16_model_verdicts():
    # bfloat16's derived tolerance is wide: only the largest errors count, but the verdicts stand.
    model, x = mz.make(torch.bfloat16, fixed=True)
    assert gradlens.check_model(model, x).ok
    model, x = mz.make(torch.bfloat16)
    report = gradlens.check_model(model, x)
    assert [f.name for f in report.failed] == ["ReLU6", "RowClip"], str(report)
    assert "wrong only at elements [6, 4], [6, 14] of 512" in str(report["ReLU6"].calls[0].report), str(report)


def test_dogfood_a_mirrored_cnn_with_its_loss():
    # Every gradlens Function a mirrored CNN calls, on its real activations, in one call.
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64, 10), nn.LayerNorm(10), nn.GELU(), nn.Linear(10, 3),
    )
    twin = gradlens.mirror(cnn)
    y = torch.tensor([0, 1, 2, 0])
    report = gradlens.check_model(twin, torch.randn(4, 3, 8, 8), include_gradlens=True, loss_fn=lambda o: gradlens.functional.cross_entropy(o, y))
    assert report.ok, str(report)
    names = {f.name for f in report.functions}
    assert {"_ConvNdFn", "_BatchNormFn", "_LinearFn", "_LayerNormFn", "_CrossEntropyFn"} <= names, names
    assert [c.module for c in report["_LinearFn"].calls] == ["5", "8"]
    # The source line is the user's (here: this test's check_model line), past torch's and gradlens's frames.
    assert all("test_check_model.py:" in c.source for f in report.functions for c in f.calls), str(report)
