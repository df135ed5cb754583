"""Coverage read from the autograd graph, strict mode, functional routing, register_twin.

Coverage is checked against what the graph must contain: a parameter used through
an op gradlens lacks (here ``torch.einsum``) is uncovered and named with its torch
node, one the forward never touches is unused, the rest are covered.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import gradlens
import gradlens.functional as GF
from gradlens.mirroring import Coverage, MirrorError, UnsupportedLayersWarning, coverage


class Exotic(nn.Module):
    """A linear layer, a parameter used through einsum (no gradlens twin), one never used."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.v = nn.Parameter(torch.randn(4))
        self.unused = nn.Parameter(torch.zeros(2))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x):
        return self.lin(x) * self.frozen + torch.einsum("i,bi->b", self.v, x)[:, None]


class Routed(nn.Module):
    """Parameters used only through torch functions in forward (no layer twins at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5))
        self.b = nn.Parameter(torch.randn(5))
        self.cls = nn.Parameter(torch.randn(1, 1, 5))
        self.scale = nn.Parameter(torch.rand(5) + 0.5)

    def forward(self, x):  # x: (B, T, 4)
        h = torch.nn.functional.gelu(x @ self.w + self.b)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1)
        h = torch.softmax(h * self.scale, dim=-1) / 2 - 1
        return torch.matmul(h, self.w.t())


def _x():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(3))


def test_coverage_names_the_uncovered_parameter_and_its_node():
    with pytest.warns(UnsupportedLayersWarning, match=r"2/3 trainable.*plain torch: v \("):
        twin = gradlens.mirror(Exotic(), example_inputs=(_x(),))
    cov = twin.gradlens_coverage
    assert isinstance(cov, Coverage)
    assert cov.covered == ("lin.weight", "lin.bias")
    assert list(cov.uncovered) == ["v"] and all("Backward" in n for n in cov.uncovered["v"])
    assert cov.unused == ("unused",)
    assert not cov.complete and cov.fraction == pytest.approx(2 / 3)
    assert "1 unused" in str(cov)


def test_coverage_of_a_plain_torch_model_is_empty():
    cov = coverage(Exotic(), _x())
    assert cov.covered == ()
    assert set(cov.uncovered) == {"lin.weight", "lin.bias", "v"}
    assert cov.uncovered["lin.weight"] == ("TBackward0",)  # F.linear: weight.t() into addmm


def test_strict_raises_on_an_uncovered_parameter():
    with pytest.raises(MirrorError, match=r"plain torch: v \("):
        gradlens.mirror(Exotic(), strict=True, example_inputs=_x())


def test_coverage_on_first_forward_without_example_inputs():
    twin = gradlens.mirror(Exotic())
    assert twin.gradlens_coverage is None
    with torch.no_grad():
        twin(_x())  # no graph: nothing to judge yet
    assert twin.gradlens_coverage is None
    with pytest.warns(UnsupportedLayersWarning, match="plain torch: v"):
        twin(_x())
    assert list(twin.gradlens_coverage.uncovered) == ["v"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin(_x())  # judged once: the hook is gone
    assert len(twin._forward_hooks) == 1  # only routing's leave-hook stays


def test_strict_without_example_inputs_raises_on_first_forward():
    twin = gradlens.mirror(Exotic(), strict=True)
    with pytest.raises(MirrorError, match="v"):
        twin(_x())


def test_loss_fn_graph_is_walked_too():
    model = gradlens.mirror(nn.Linear(4, 3))
    extra = nn.Parameter(torch.ones(3))
    model.register_parameter("extra", extra)
    cov = coverage(model, _x(), loss_fn=lambda out: torch.einsum("bi,i->", out, extra))
    assert list(cov.uncovered) == ["extra"]


def test_coverage_leaves_buffers_rng_and_grads_alone():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    twin = gradlens.mirror(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    cov = coverage(twin, _x())
    assert cov.complete and len(cov.covered) == 6
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_routed_functions_give_torch_gradients_through_gradlens_nodes():
    torch.manual_seed(0)
    model = Routed()
    ref = copy.deepcopy(model)
    twin = gradlens.mirror(model, strict=True, example_inputs=torch.randn(2, 3, 4))
    assert twin.gradlens_coverage.complete and len(twin.gradlens_coverage.covered) == 4
    x = torch.randn(2, 3, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = twin(x), ref(x_ref)
    assert type(out.grad_fn).__module__ != "torch" and "Fn" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    cot = torch.randn(out.shape)
    names = [n for n, _ in ref.named_parameters()]
    grads = torch.autograd.grad(out, [x, *twin.parameters()], cot)
    grads_ref = torch.autograd.grad(out_ref, [x_ref, *ref.parameters()], cot)
    for name, g, r in zip(["x", *names], grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


class MaxNormEmbedding(nn.Module):
    """F.embedding with max_norm: an option gradlens.functional.embedding lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(torch.nn.functional.embedding(ids, self.table, max_norm=1.0))


def test_a_call_gradlens_lacks_goes_to_torch_and_shows_in_coverage():
    torch.manual_seed(0)
    model = MaxNormEmbedding()
    ref = copy.deepcopy(model)
    ids = torch.tensor([[1, 2, 3], [3, 4, 9]])
    with pytest.warns(UnsupportedLayersWarning, match=r"plain torch: table \(EmbeddingBackward0\)"):
        twin = gradlens.mirror(model, example_inputs=ids)
    assert twin.gradlens_coverage.covered == ("head.weight", "head.bias")
    twin(ids).sum().backward()
    ref(ids).sum().backward()
    for p, r in zip(twin.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad)


def test_route_functional_false_swaps_layers_only():
    twin = gradlens.mirror(Routed(), route_functional=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # coverage() leaves the first-forward judgement alone
        assert not coverage(twin, torch.randn(2, 3, 4)).covered
    assert twin.gradlens_coverage is None


def _mode_depth() -> int:
    return torch._C._len_torch_function_stack()


class Raises(nn.Module):
    def forward(self, x):
        raise ValueError("boom")


def test_routing_is_on_only_during_forward_and_off_after_an_exception():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(_mode_depth())
            return x

    twin = gradlens.mirror(nn.Sequential(Probe(), nn.Linear(4, 2)))
    depth = _mode_depth()
    twin(_x())
    assert seen == [depth + 1] and _mode_depth() == depth
    bad = gradlens.mirror(nn.Sequential(nn.Sequential(Raises())))
    with pytest.raises(ValueError, match="boom"):
        bad(_x())
    assert _mode_depth() == depth


def test_callers_model_untouched_and_bit_identical():
    torch.manual_seed(0)
    model = Routed()
    x = torch.randn(2, 3, 4)
    out_before = model(x)
    hooks = (dict(model._forward_hooks), dict(model._forward_pre_hooks))
    twin = gradlens.mirror(model, example_inputs=x)
    twin(x).sum().backward()
    assert (dict(model._forward_hooks), dict(model._forward_pre_hooks)) == hooks
    assert torch.equal(model(x), out_before)
    assert "Fn" not in model(x).grad_fn.name()  # the caller's forward is plain torch


def test_mirrored_model_pickles_and_deep_copies():
    twin = gradlens.mirror(Routed(), example_inputs=torch.randn(2, 3, 4))
    x = torch.randn(2, 3, 4)
    for other in (pickle.loads(pickle.dumps(twin)), copy.deepcopy(twin)):
        torch.testing.assert_close(other(x), twin(x), rtol=0, atol=0)
        assert "Fn" in type(other(x).grad_fn).__name__


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"example_inputs": [1, 2]}, TypeError, r"example_inputs=\.\.\.\) expects a tuple"),
        ({"route_functional": 1}, TypeError, r"route_functional=\.\.\.\) expects a bool"),
    ],
    ids=["example-inputs-list", "route-functional-int"],
)
def test_bad_mirror_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        gradlens.mirror(nn.Linear(2, 2), **kwargs)


@pytest.mark.parametrize(
    "args, match",
    [((None, _x()), "nn.Module, got NoneType"), ((nn.Linear(4, 2), _x()), None)],
    ids=["model-none", "ok"],
)
def test_coverage_arguments(args, match):
    if match is None:
        assert coverage(*args).uncovered
        with pytest.raises(TypeError, match=r"loss_fn=\.\.\.\) expects a callable"):
            coverage(*args, loss_fn="mse")
    else:
        with pytest.raises(TypeError, match=match):
            coverage(*args)


# --------------------------------------------------------------------- register_twin
class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(torch.special.erf(x) * self.w.exp())  # erf and exp: not routed


class ScaleTwin(Scale):
    def forward(self, x):
        return self.inner(GF.mul(torch.special.erf(x), _Exp.apply(self.w)))


class _Exp(torch.autograd.Function):  # a user's own hand-written backward
    @staticmethod
    def forward(ctx, w):
        y = w.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y


_Exp.__module__ = "gradlens.tests_user"  # counts as a gradlens Function for coverage


def test_registered_twin_class_is_used_and_children_mirrored():
    model = Scale()
    with gradlens.register_twin(Scale, ScaleTwin):
        twin = gradlens.mirror(model, strict=True, example_inputs=_x())
    assert type(twin) is ScaleTwin and type(twin.inner).__module__ == "gradlens.nn.linear"
    assert twin.w is model.w and type(model) is Scale
    torch.testing.assert_close(twin(_x()), model(_x()))
    with pytest.warns(UnsupportedLayersWarning, match=r"plain torch: w \(ExpBackward0\)"):
        gradlens.mirror(Scale(), example_inputs=_x())  # unregistered again


def test_registered_factory_callable():
    calls = []

    def factory(module):
        calls.append(module)
        twin = ScaleTwin.__new__(ScaleTwin)
        twin.__dict__.update(module.__dict__)  # shares the child dict: mirror copies it
        return twin

    model = Scale()
    with gradlens.register_twin(Scale, factory):
        twin = gradlens.mirror(model)
    assert calls == [model] and type(twin) is ScaleTwin
    assert type(model.inner) is nn.Linear and type(twin.inner).__module__ == "gradlens.nn.linear"


def test_register_twin_errors_and_replace():
    reg = gradlens.register_twin(Scale, ScaleTwin)
    try:
        with pytest.raises(ValueError, match="already has a twin"):
            gradlens.register_twin(Scale, ScaleTwin)
        gradlens.register_twin(Scale, lambda m: ScaleTwin(), replace=True).remove()
        reg.remove()  # no longer the current registration: harmless
    finally:
        reg.remove()
    with pytest.raises(TypeError, match=r"module_class=\.\.\.\) expects an nn.Module subclass"):
        gradlens.register_twin(int, ScaleTwin)
    with pytest.raises(TypeError, match=r"factory=\.\.\.\) expects an nn.Module subclass or a callable"):
        gradlens.register_twin(Scale, 3)
    with pytest.raises(TypeError, match=r"factory=\.\.\.\) expects"):
        gradlens.register_twin(Scale, dict)
    with pytest.raises(TypeError, match=r"replace=\.\.\.\) expects a bool"):
        gradlens.register_twin(Scale, ScaleTwin, replace="yes")
    for bad in (lambda m: m, lambda m: "not a module"):
        with gradlens.register_twin(Scale, bad):
            with pytest.raises(TypeError, match="must return a new nn.Module"):
                gradlens.mirror(Scale())


def test_mirroring_a_mirror_installs_one_set_of_hooks():
    first = gradlens.mirror(Exotic())
    second = gradlens.mirror(first)
    assert len(second._forward_pre_hooks) == 1 and len(second._forward_hooks) == 2  # routing pair + coverage
    depth = _mode_depth()
    with pytest.warns(UnsupportedLayersWarning) as record:
        second(_x())
    assert len(record) == 1 and _mode_depth() == depth
    assert first.gradlens_coverage is None and list(second.gradlens_coverage.uncovered) == ["v"]


class Checkpointed(nn.Module):
    """A block re-run during backward by torch.utils.checkpoint (reentrant or not)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.block = Routed()

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=self.reentrant)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_activation_checkpointing_recomputes_through_gradlens(reentrant):
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 4, requires_grad=True)
    twin = gradlens.mirror(model, strict=True, example_inputs=x)
    twin(x).sum().backward()
    ref(x).sum().backward()
    for (name, p), r in zip(twin.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert _mode_depth() == 0


class InPlaceOps(nn.Module):
    """Parameters that flow through in-place tensor ops (``mul_``, ``add_``, ``+=``, ...) in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.rand(3) + 0.5)
        self.shift = nn.Parameter(torch.randn(3))
        self.bias = nn.Parameter(torch.randn(3))
        self.head = nn.Parameter(torch.randn(2))

    def forward(self, x):
        h = self.lin(x)
        h.mul_(self.scale)
        h.add_(self.shift, alpha=2.0)
        h += self.bias
        h[:, :2] *= self.head  # into a view: CopySlices on h
        h /= self.scale
        h -= self.shift
        h.sub_(0.5, alpha=2).div_(3.0)
        return h


def test_in_place_ops_are_routed_and_covered():
    """In-place ops go through gradlens's Functions (the result copied into the target):
    every parameter is covered, and the loss and gradients are the original's."""
    torch.manual_seed(0)
    model = InPlaceOps()
    ref = copy.deepcopy(model)
    twin = gradlens.mirror(model, strict=True, example_inputs=(_x(),))
    assert twin.gradlens_coverage.complete
    assert len(twin.gradlens_coverage.covered) == 6
    loss, ref_loss = twin(_x()).square().sum(), ref(_x()).square().sum()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=0)
    loss.backward()
    ref_loss.backward()
    for (name, p), r in zip(twin.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_in_place_on_a_parameter_raises_torchs_error_in_a_mirrored_forward():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            self.w.mul_(2.0)
            return x * self.w

    twin = gradlens.mirror(Bad())
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
        twin(torch.ones(3))
    assert torch.equal(twin.w.detach(), torch.ones(3))
    assert _mode_depth() == 0
