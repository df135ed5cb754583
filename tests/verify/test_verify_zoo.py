"""check_backward on a zoo of correct and deliberately broken Functions (float64 and float32).

Reference mode compares with torch's autograd; finite-difference mode has no
reference. Every bug must be flagged with its diagnosis, every correct Function pass.
"""

from __future__ import annotations

import pytest
import torch
import verify_zoo as zoo

import gradlens

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
METHODS = [pytest.param(True, id="reference"), pytest.param(False, id="fd")]


@pytest.mark.parametrize("use_ref", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(zoo.CORRECT), ids=str)
def test_correct_functions_pass(case, dtype, use_ref):
    fn, make, ref = zoo.CORRECT[case]
    report = gradlens.check_backward(fn, *make(dtype), reference=ref if use_ref else None)
    assert report.ok, str(report)
    assert not report.problems
    # The independent reference agrees: torch's gradcheck in float64 (small cases only).
    if dtype == torch.float64 and case != "logsumexp-large":
        assert torch.autograd.gradcheck(fn, make(torch.float64))


@pytest.mark.parametrize("use_ref", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(zoo.BUGS), ids=str)
def test_bugs_are_flagged_with_diagnosis(case, dtype, use_ref):
    fn, make, ref, expect = zoo.BUGS[case]
    report = gradlens.check_backward(fn, *make(dtype), reference=ref if use_ref else None)
    text = str(report)
    assert not report.ok, text
    assert any(expect in d for d in report.diagnoses), text
    assert "seed=0" in text
    if case == "mutated-grad-output":  # the gradient itself is right: only the mutation is reported
        assert all(t.ok for t in report.tensors), text
    # Independent confirmation that the Function is broken (gradcheck does not see
    # in-place mutation of grad_output or non-determinism, and cannot run a bug whose
    # gradient only repeats the forward's value).
    if dtype == torch.float64 and case not in ("mutated-grad-output", "non-deterministic", "dropped-tail"):
        assert not torch.autograd.gradcheck(fn, make(torch.float64), raise_exception=False)


def test_report_lists_every_tensor_not_only_the_first_failure():
    fn, make, ref, _ = zoo.BUGS["missing-transpose"]
    report = gradlens.check_backward(fn, *make(torch.float64), reference=ref)
    assert [t.name for t in report.tensors] == ["input 0", "input 1"]
    assert report["input 0"].ok and not report["input 1"].ok
    t = report["input 1"]
    assert t.n_mismatched > 0 and t.n_checked == 25 and 0 < t.fraction_mismatched <= 1
    assert t.max_abs_error > 0 and len(t.worst) == 5
    # Worst first, and the listed error is the reported maximum.
    errs = [abs(g - e) for _, g, e in t.worst]
    assert errs == sorted(errs, reverse=True) and errs[0] == pytest.approx(t.max_abs_error)
    with pytest.raises(KeyError, match="no checked tensor"):
        report["weight"]
    text = str(report)
    assert "ok   input 0" in text and "FAIL input 1" in text and "max abs err" in text


def test_one_wrong_element_located_in_a_large_tensor_without_reference():
    fn = zoo.BUGS["one-element"][0]
    x = torch.randn(20000, dtype=torch.float64, requires_grad=True)
    report = gradlens.check_backward(fn, x)
    assert not report.ok
    t = report["input 0"]
    assert t.n_mismatched == 1
    assert t.worst[0][0] == (13,)
    assert t.worst[0][1] == pytest.approx(2 * t.worst[0][2])
    # gradcheck's fast mode misses it at default tolerances or not: our verdict stands alone.
    assert "wrong only at element [13] of 20000" in str(report)


def test_kink_is_a_warning_not_a_failure():
    fn, make = zoo.RELU
    report = gradlens.check_backward(fn, *make(torch.float64))
    assert report.ok, str(report)
    assert any("kink" in w for w in report.warnings), str(report)


def test_wrong_dtype_of_returned_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    report = gradlens.check_backward(zoo.DTYPE_BUG, x, reference=torch.sin)
    assert not report.ok
    assert any("wrong dtype: torch.float64 instead of torch.float32" in p for p in report.problems), str(report)


def test_wrong_shape_of_returned_gradient():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    report = gradlens.check_backward(zoo.SHAPE_BUG, x)
    assert not report.ok
    assert any("wrong shape" in p for p in report.problems), str(report)


def test_nested_dict_outputs():
    def f(x, y):
        return {"a": zoo.Sin(x), "b": (x * y, {"c": y.exp()})}

    x, y = (torch.randn(3, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert gradlens.check_backward(f, x, y).ok
    assert gradlens.check_backward(f, x, y, reference=lambda x, y: {"a": x.sin(), "b": (x * y, {"c": y.exp()})}).ok

    def g(x, y):
        return {"a": zoo.BUGS["wrong-sign"][0](x), "b": (x * y, {"c": y.exp()})}

    rep = gradlens.check_backward(g, x, y)
    assert not rep["input 0"].ok and rep["input 1"].ok


def test_nested_inputs_and_non_differentiable_args():
    def f(pair, k):
        return pair[0] * pair[1] * k

    a = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64)  # constant
    rep = gradlens.check_backward(f, [a, b], 3)
    assert rep.ok and [t.name for t in rep.tensors] == ["input 0[0]"]


def test_seed_repeats_and_changes_draws():
    fn, make, ref, _ = zoo.BUGS["wrong-sign"]
    r1 = gradlens.check_backward(fn, *make(torch.float64), seed=3)
    r2 = gradlens.check_backward(fn, *make(torch.float64), seed=3)
    assert str(r1) == str(r2) and "seed=3" in str(r1)


def test_global_rng_state_untouched():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    state = torch.get_rng_state()
    gradlens.check_backward(zoo.Sin, x)
    assert torch.equal(state, torch.get_rng_state())


def test_tolerance_override():
    x = torch.randn(3, 4, requires_grad=True)
    # A backward off by 1e-3 relative passes only with a deliberately loose rtol.
    f = zoo._fn(torch.sin, lambda ctx, g: g * ctx.saved_tensors[0].cos() * (1 + 1e-3), "Sin1e3")
    assert not gradlens.check_backward(f, x, reference=torch.sin).ok
    assert gradlens.check_backward(f, x, reference=torch.sin, rtol=1e-2).ok


@pytest.mark.parametrize("use_ref", METHODS)
def test_bfloat16_correct_passes_and_bug_fails(use_ref):
    ref = torch.sin if use_ref else None
    x = torch.randn(4, 8).to(torch.bfloat16).requires_grad_(True)
    assert gradlens.check_backward(zoo.Sin, x, reference=ref).ok
    lin = zoo.CORRECT["linear"]
    assert gradlens.check_backward(lin[0], *lin[1](torch.bfloat16), reference=lin[2] if use_ref else None).ok
    y = torch.randn(5, 6).to(torch.bfloat16).requires_grad_()
    rep = gradlens.check_backward(zoo.BUGS["one-element"][0], y, reference=ref)
    assert not rep.ok and "wrong only at element [2, 1]" in str(rep), str(rep)


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"mode": "sideways"}, ValueError),
        ({"n_cotangents": 0}, ValueError),
        ({"atol": -1.0}, ValueError),
        ({"eps": 0.0}, ValueError),
        ({"seed": "1"}, TypeError),
        ({"reference": 3}, TypeError),
        ({"mode": "train"}, ValueError),  # not a module
    ],
    ids=["mode", "n_cotangents", "atol", "eps", "seed", "reference", "mode-on-function"],
)
def test_bad_options(kwargs, err):
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(err, match="check_backward"):
        gradlens.check_backward(torch.sin, x, **kwargs)


def test_bad_fn_and_nothing_to_check():
    with pytest.raises(TypeError, match="fn="):
        gradlens.check_backward(3, torch.randn(3))
    with pytest.raises(ValueError, match="no input requires grad"):
        gradlens.check_backward(torch.sin, torch.randn(3))


def test_widespread_error_in_large_tensor_is_sampled_not_exhaustive():
    # A forgotten term everywhere in a 4000-element tensor without reference: stops
    # bisecting, samples, still fails with counts over the sampled elements.
    fn, _, ref, _ = zoo.BUGS["forgotten-term"]
    x, w = (torch.randn(40, 100, dtype=torch.float64, requires_grad=True) for _ in range(2))
    report = gradlens.check_backward(fn, x, w)
    t = report["input 0"]
    assert not t.ok and report["input 1"].ok
    assert t.n_checked <= 200 and t.fraction_mismatched > 0.9, str(report)
    assert any("sampled" in n for n in report.notes)


def test_correct_float32_passes_where_gradcheck_default_tolerances_fail():
    fn, make, ref = zoo.CORRECT["linear"]
    # Small: a failing fast-mode gradcheck re-runs in exact mode for its message.
    x = torch.randn(4, 16, requires_grad=True)
    w = (torch.randn(16, 16) / 4).requires_grad_(True)
    b = torch.randn(16, requires_grad=True)
    assert gradlens.check_backward(fn, x, w, b).ok
    assert gradlens.check_backward(fn, x, w, b, reference=ref).ok
    # torch's gradcheck on the same float32 inputs: finite differences in float32 are noise.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not torch.autograd.gradcheck(fn, (x, w, b), raise_exception=False, fast_mode=True)


def test_kink_with_reference_uses_the_reference_convention():
    fn, make = zoo.RELU
    assert gradlens.check_backward(fn, *make(torch.float64), reference=torch.relu).ok


def test_top_k_option():
    fn, make, ref, _ = zoo.BUGS["wrong-sign"]
    rep = gradlens.check_backward(fn, *make(torch.float64), reference=ref, top_k=2)
    assert len(rep["input 0"].worst) == 2


def test_locate_false_gives_the_verdict_only():
    fn = zoo.BUGS["one-element"][0]
    x = torch.randn(5000, dtype=torch.float64, requires_grad=True)
    rep = gradlens.check_backward(fn, x, locate=False)
    assert not rep.ok and "locate=False" in str(rep)
    assert gradlens.check_backward(zoo.Sin, x, locate=False).ok


def test_backward_that_raises_is_reported():
    def boom(ctx, g):
        raise ValueError("kernel launch failed")

    fn = zoo._fn(torch.sin, boom, "Boom")
    rep = gradlens.check_backward(fn, torch.randn(3, dtype=torch.float64, requires_grad=True))
    assert not rep.ok and any("backward raised: kernel launch failed" in p for p in rep.problems), str(rep)


@pytest.mark.parametrize("use_ref", METHODS)
def test_nan_in_returned_gradient_is_flagged(use_ref):
    def bw(ctx, g):
        (x,) = ctx.saved_tensors
        out = g * x.cos()
        out[1, 2] = float("nan")
        return out

    fn = zoo._fn(torch.sin, bw, "SinNaN")
    rep = gradlens.check_backward(fn, torch.randn(3, 4, dtype=torch.float64, requires_grad=True), reference=torch.sin if use_ref else None)
    assert not rep.ok and "wrong only at element [1, 2] of 12" in str(rep), str(rep)


def _float32_only_sin(x):
    if x.dtype != torch.float32:
        raise TypeError("this kernel supports float32 only")
    return zoo.Sin(x)


def _float32_only_bad(x):
    if x.dtype != torch.float32:
        raise TypeError("this kernel supports float32 only")
    return zoo.BUGS["wrong-sign"][0](x)


def test_fn_without_float64_path_falls_back_to_its_own_dtype():
    x = torch.randn(3, 4, requires_grad=True)
    rep = gradlens.check_backward(_float32_only_sin, x)
    assert rep.ok, str(rep)
    assert any("could not run in float64" in n for n in rep.notes)
    rep = gradlens.check_backward(_float32_only_bad, x)
    assert not rep.ok and any("sign flipped" in d for d in rep.diagnoses), str(rep)


def test_same_tensor_fed_twice():
    x = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    rep = gradlens.check_backward(lambda x: zoo.MatMul(x, x), x)
    assert rep.ok, str(rep)
    rep = gradlens.check_backward(lambda x: zoo.BUGS["missing-transpose"][0](x, x), x, reference=lambda x: x @ x)
    assert not rep.ok and not any("non-deterministic" in p for p in rep.problems), str(rep)


def test_forward_mismatch_with_reference_is_reported():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rep = gradlens.check_backward(lambda x: torch.sin(x) * 1.01, x, reference=torch.sin)
    assert not rep.ok and any("forward output out differs from the reference" in p for p in rep.problems), str(rep)
    with pytest.raises(ValueError, match="reference=...\\) returned 2"):
        gradlens.check_backward(torch.sin, x, reference=lambda x: (x.sin(), x.cos()))
