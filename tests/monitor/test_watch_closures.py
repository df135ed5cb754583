"""optimizer.step(closure) and wrapped optimizers.

Reference: the gradients and the loss captured inside the closure itself, right
after its backward (what the update uses), with torch's own norms.
"""

from __future__ import annotations

import pytest
import torch

import gradlens
from watch_helpers import mlp

OPTIMIZERS = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "LBFGS": lambda ps: torch.optim.LBFGS(ps, lr=0.1, max_iter=4, history_size=3),
}


def _closure_run(model, opt, steps, *, kwarg=True, observe=None):
    gen = torch.Generator().manual_seed(2)
    refs = []
    for _ in range(steps):
        x = torch.randn(5, 6, generator=gen)
        seen = []

        def closure():
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            if observe is not None:
                observe(loss * 3)
            loss.backward()
            seen.append({"loss": loss.item(),
                         **{n: p.grad.norm().item() for n, p in model.named_parameters()}})
            return loss

        opt.step(closure=closure) if kwarg else opt.step(closure)
        refs.append(seen[0])  # the first evaluation (LBFGS evaluates several times)
    return refs


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_closure_statistics_belong_to_their_own_step(name):
    model = mlp()
    opt = OPTIMIZERS[name](model.parameters())
    with gradlens.watch(model, opt) as mon:
        refs = _closure_run(model, opt, 4)
    df = mon.dataframe().set_index(["step", "param"])
    recs = mon.records()
    assert len(recs) == 4
    for step, ref in enumerate(refs):
        for pname in ("0.weight", "2.bias", "4.weight"):
            assert df.loc[(step, pname), "grad_norm"] == pytest.approx(ref[pname], rel=1e-5), (step, pname)
        assert recs[step].loss == pytest.approx(ref["loss"], rel=1e-6)  # the closure's return value


def test_closure_as_positional_argument_and_update_ratio_over_the_whole_step():
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    w0 = model[0].weight.detach().clone()
    with gradlens.watch(model, opt, update_every=1) as mon:
        refs = _closure_run(model, opt, 1, kwarg=False)
    expected = (model[0].weight.detach() - w0).norm() / w0.norm()
    df = mon.dataframe().set_index(["step", "param"])
    assert df.loc[(0, "0.weight"), "grad_norm"] == pytest.approx(refs[0]["0.weight"], rel=1e-5)
    assert df.loc[(0, "0.weight"), "update_ratio"] == pytest.approx(expected.item(), rel=1e-4)


def test_an_observed_loss_wins_over_the_closure_value():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradlens.watch(model, opt) as mon:
        refs = _closure_run(model, opt, 2, observe=lambda loss: mon.observe_loss(loss))
    assert [r.loss for r in mon.records()] == pytest.approx([3 * r["loss"] for r in refs], rel=1e-6)


class _HookLessWrapper(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: an Optimizer subclass that never calls
    Optimizer.__init__ and forwards to the optimizer it holds."""

    def __init__(self, optimizer):  # noqa: D107 - deliberately no super().__init__
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        return self.optimizer.step(closure)


class _Holder:
    def __init__(self, optimizer):
        self._optimizer = optimizer


@pytest.mark.parametrize("wrap", [_HookLessWrapper, _Holder, lambda o: _HookLessWrapper(_Holder(o))],
                         ids=["subclass-without-init", "_optimizer-holder", "nested"])
def test_wrapped_optimizers_are_unwrapped(wrap):
    model = mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.05)
    wrapped = wrap(inner)
    mon = gradlens.watch(model, wrapped)
    assert mon._optimizers == [inner]
    stepper = wrapped if wrap is _HookLessWrapper else inner  # (the others only hold it)
    x = torch.randn(5, 6)
    stepper.zero_grad()
    model(x).pow(2).mean().backward()
    ref = model[0].weight.grad.norm().item()
    stepper.step()
    mon.close()
    assert mon.dataframe().set_index(["step", "param"]).loc[(0, "0.weight"), "grad_norm"] == pytest.approx(ref, rel=1e-6)
    assert not inner._optimizer_step_pre_hooks and not inner._optimizer_step_post_hooks


def test_accelerated_optimizer_is_unwrapped():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.optimizer import AcceleratedOptimizer

    model = mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.05)
    accelerator = accelerate.Accelerator(cpu=True)
    model, wrapped = accelerator.prepare(model, inner)
    assert isinstance(wrapped, AcceleratedOptimizer)
    with gradlens.watch(model, wrapped) as mon:
        wrapped.zero_grad()
        model(torch.randn(5, 6)).pow(2).mean().backward()
        ref = model[4].weight.grad.norm().item()
        wrapped.step()
    assert mon.dataframe().set_index(["step", "param"]).loc[(0, "4.weight"), "grad_norm"] == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("bad", [object(), _Holder("not an optimizer"), [torch.optim.SGD, 3]],
                         ids=["object", "holder-of-str", "list-of-junk"])
def test_unusable_optimizers_raise_a_type_error_naming_the_type(bad):
    with pytest.raises(TypeError, match=r"watch\(optimizer=\.\.\.\) expects a torch.optim.Optimizer"):
        gradlens.watch(mlp(), bad)
