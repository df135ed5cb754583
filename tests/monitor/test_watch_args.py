"""Bad arguments give clear errors; close() leaves nothing behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradlens
from watch_helpers import mlp, train


def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


BAD = [
    pytest.param(lambda m: dict(model=[m]), TypeError, "expects an nn.Module, got list", id="model-list"),
    pytest.param(lambda m: dict(model=m, optimizer="sgd"), TypeError, "torch.optim.Optimizer", id="opt-str"),
    pytest.param(lambda m: dict(model=m, optimizer=[]), TypeError, "non-empty list", id="opt-empty"),
    pytest.param(lambda m: dict(model=m, optimizer=_opt(nn.Linear(2, 2))), ValueError, "owns none", id="opt-foreign"),
    pytest.param(lambda m: dict(model=m, every=0), ValueError, r"every=\.\.\.\) expects an int >= 1, got 0", id="every-0"),
    pytest.param(lambda m: dict(model=m, every=1.5), TypeError, "every", id="every-float"),
    pytest.param(lambda m: dict(model=m, every=True), TypeError, "every", id="every-bool"),
    pytest.param(lambda m: dict(model=m, update_every=-1), ValueError, "update_every", id="update-neg"),
    pytest.param(lambda m: dict(model=m, max_history=1), ValueError, "max_history", id="history-1"),
    pytest.param(lambda m: dict(model=m, group_depth=0), ValueError, "group_depth", id="depth-0"),
    pytest.param(lambda m: dict(model=m, include=3), TypeError, "include", id="include-int"),
    pytest.param(lambda m: dict(model=m, exclude=[1]), TypeError, "exclude", id="exclude-list-int"),
    pytest.param(lambda m: dict(model=m, activations="yes"), TypeError, "activations", id="act-str"),
    pytest.param(lambda m: dict(model=m, activations=-1), ValueError, "activations", id="act-negative"),
    pytest.param(lambda m: dict(model=m, writer=object()), TypeError, "SummaryWriter", id="writer-object"),
    pytest.param(lambda m: dict(model=m, logdir=3), TypeError, "logdir", id="logdir-int"),
    pytest.param(lambda m: dict(model=m, logdir="x", writer=object()), ValueError, "not both", id="logdir-and-writer"),
    pytest.param(lambda m: dict(model=m, on_finding=3), TypeError, "on_finding", id="callback-int"),
    pytest.param(lambda m: dict(model=m, halt_on=[1]), TypeError, "halt_on", id="halt-int"),
    pytest.param(lambda m: dict(model=m, thresholds=[1]), TypeError, "thresholds", id="thresholds-list"),
]


@pytest.mark.parametrize("make,exc,match", BAD)
def test_bad_arguments(make, exc, match):
    model = mlp()
    with pytest.raises(exc, match=match):
        gradlens.watch(**make(model))
    # nothing was left attached by the failed call
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_same_optimizer_twice():
    model = mlp()
    opt = _opt(model)
    with pytest.raises(ValueError, match="same optimizer twice"):
        gradlens.watch(model, [opt, opt])


def test_observe_loss_bad_input():
    model = mlp()
    with gradlens.watch(model) as mon:
        with pytest.raises(ValueError, match="scalar"):
            mon.observe_loss(torch.ones(3))
        with pytest.raises(TypeError, match="tensor or float"):
            mon.observe_loss("1.0")


def _all_hooks(model, opt):
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
    n += len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    n += "zero_grad" in vars(opt)
    for p in model.parameters():
        n += len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    return n


@pytest.mark.parametrize("activations", [False, True], ids=["grads", "activations"])
def test_close_removes_everything_bit_identical(activations):
    model, twin = mlp(), mlp()
    opt, opt_twin = _opt(model), _opt(twin)
    assert _all_hooks(model, opt) == 0
    mon = gradlens.watch(model, opt, activations=activations)
    assert _all_hooks(model, opt) > 0
    train(model, opt, 2)
    train(twin, opt_twin, 2)
    mon.close()
    mon.close()  # twice is safe
    assert _all_hooks(model, opt) == 0
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(4, 6)
    assert torch.equal(model(x), twin(x))
    train(model, opt, 1)
    train(twin, opt_twin, 1)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="after mon.close"):
        gradlens.watch(mlp()).close() or mon.step()


def test_exception_in_user_code_context_manager_still_closes():
    model = mlp()
    opt = _opt(model)
    with pytest.raises(KeyError):
        with gradlens.watch(model, opt):
            raise KeyError("boom")
    assert _all_hooks(model, opt) == 0


def test_watch_twice_on_one_model():
    model = mlp()
    opt = _opt(model)
    a = gradlens.watch(model, opt)
    b = gradlens.watch(model, opt, every=2)
    train(model, opt, 3)
    a.close()  # closing the first keeps the second working
    train(model, opt, 1)
    b.close()
    assert sorted(a.dataframe().step.unique()) == [0, 1, 2]
    assert sorted(b.dataframe().step.unique()) == [0, 2]
    assert _all_hooks(model, opt) == 0
    da, db = a.dataframe(), b.dataframe()
    assert da[da.step == 2].grad_norm.tolist() == db[db.step == 2].grad_norm.tolist()


def test_repr_and_public_names():
    model = mlp()
    mon = gradlens.watch(model)
    assert "open" in repr(mon)
    mon.close()
    assert "closed" in repr(mon)
    assert gradlens.Monitor is type(mon)


def test_a_second_monitor_on_one_model_is_warned_about():
    model = mlp()
    opt = _opt(model)
    with gradlens.watch(model, opt):
        with pytest.warns(UserWarning, match="already watched by Monitor"):
            second = gradlens.watch(model, opt)
        second.close()
    import warnings as _w
    with _w.catch_warnings():
        _w.simplefilter("error")
        with gradlens.watch(model, opt):  # the others are closed: no warning
            train(model, opt, 1)


@pytest.mark.parametrize("optimizer", [True, False], ids=["optimizer-never-stepped", "no-optimizer-no-step"])
def test_close_warns_when_nothing_was_recorded(optimizer):
    model = mlp()
    mon = gradlens.watch(model, _opt(model) if optimizer else None)
    model(torch.randn(2, 6)).sum().backward()  # a backward, but no step
    with pytest.warns(UserWarning, match="recorded no step: " + ("no optimizer step ran" if optimizer else "no optimizer was given")):
        mon.close()


def test_halt_on_with_a_typo_lists_the_valid_kinds():
    with pytest.raises(ValueError, match=r"unknown finding kind\(s\) \['nonfinte'\]; expected some of \[.*'nonfinite'"):
        gradlens.watch(mlp(), halt_on={"nonfinte"})


def test_unknown_threshold_names_are_rejected_before_anything_is_attached():
    model = mlp()
    opt = _opt(model)
    with pytest.raises(ValueError, match="unknown threshold 'vanish'"):
        gradlens.watch(model, opt, thresholds={"vanish": 1e-3})
    assert _all_hooks(model, opt) == 0
