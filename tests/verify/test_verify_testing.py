"""gradlens.testing: assert helper, BackwardCase/backward_test, and the pytest fixture (via pytester)."""

from __future__ import annotations

import pytest
import torch
import verify_zoo as zoo

import gradlens.testing as glt

pytest_plugins = ["pytester"]


def test_assert_backward_correct_passes_and_returns_report():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    rep = glt.assert_backward_correct(zoo.Sin, x, reference=torch.sin)
    assert rep.ok


def test_assert_backward_correct_raises_with_the_report():
    fn, make, ref, expect = zoo.BUGS["mean-for-sum"]
    with pytest.raises(AssertionError) as info:
        glt.assert_backward_correct(fn, *make(torch.float64), reference=ref)
    assert "x 1/6" in str(info.value) and "FAIL input 0" in str(info.value)


def test_backward_case_validates():
    with pytest.raises(TypeError, match="BackwardCase\\(id=...\\)"):
        glt.BackwardCase("", torch.sin, ())
    with pytest.raises(TypeError, match="BackwardCase\\(fn=...\\)"):
        glt.BackwardCase("a", 3, ())
    with pytest.raises(TypeError, match="BackwardCase\\(inputs=...\\)"):
        glt.BackwardCase("a", torch.sin, [torch.randn(2)])
    with pytest.raises(TypeError, match="backward_test"):
        glt.backward_test([3])


PLUGIN_TEST = '''
import torch
import gradlens.testing as glt

pytest_plugins = ["gradlens.testing"]


class Sq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return FACTOR * g * x


FACTOR = 2.0


class SqBad(Sq):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x


def _x():
    return (torch.randn(5, dtype=torch.float64, requires_grad=True),)


CASES = [
    glt.BackwardCase("square", Sq.apply, _x, reference=lambda x: x * x),
    glt.BackwardCase("square-fd", Sq.apply, _x),
    glt.BackwardCase("square-bad", SqBad.apply, _x),
]
test_all = glt.backward_test(CASES)


def test_fixture_good(gradlens_check):
    gradlens_check(Sq.apply, *_x(), reference=lambda x: x * x)


def test_fixture_case(gradlens_check):
    gradlens_check(CASES[2])
'''


def test_pytest_plugin_fixture_and_parametrized_cases(pytester):
    pytester.makeconftest('pytest_plugins = ["gradlens.testing"]\n')
    pytester.makepyfile(test_user=PLUGIN_TEST.replace('pytest_plugins = ["gradlens.testing"]\n', ""))
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=2)
    out = result.stdout.str()
    assert "test_all[square-bad]" in out and "test_fixture_case" in out
    assert "x 1/2" in out  # the report is the failure message


def test_assert_model_backward_correct():
    import model_zoo as mz

    model, x = mz.make(fixed=True)
    rep = glt.assert_model_backward_correct(model, x)
    assert rep.ok and len(rep.functions) == 3
    assert glt.assert_model_backward_correct(model, (x,)).ok  # a tuple batch: model(*batch)
    model, x = mz.make()
    with pytest.raises(AssertionError) as info:
        glt.assert_model_backward_correct(model, [x])
    text = str(info.value)
    assert "2 of 3 custom Functions WRONG" in text and "module blocks.0 (Act)" in text
