"""gradlens.nn activation and norm twins against the torch modules they subclass."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import gradlens
import gradlens.nn as gnn
from conftest import DEVICES

# (id, torch module factory, input shape)
SETTINGS = [
    ("ReLU", lambda: nn.ReLU(), (4, 6)),
    ("LeakyReLU", lambda: nn.LeakyReLU(0.2), (4, 6)),
    ("ELU", lambda: nn.ELU(alpha=0.7), (4, 6)),
    ("GELU-tanh", lambda: nn.GELU(approximate="tanh"), (4, 6)),
    ("GELU", lambda: nn.GELU(), (4, 6)),
    ("SiLU", lambda: nn.SiLU(), (4, 6)),
    ("Tanh", lambda: nn.Tanh(), (4, 6)),
    ("Sigmoid", lambda: nn.Sigmoid(), (4, 6)),
    ("Softmax", lambda: nn.Softmax(dim=-1), (4, 6)),
    ("LogSoftmax", lambda: nn.LogSoftmax(dim=1), (4, 6)),
    ("Hardtanh", lambda: nn.Hardtanh(-0.5, 1.5), (4, 6)),
    ("ReLU6", lambda: nn.ReLU6(), (4, 6)),
    ("Hardsigmoid", lambda: nn.Hardsigmoid(), (4, 6)),
    ("Hardswish", lambda: nn.Hardswish(), (4, 6)),
    ("Softplus", lambda: nn.Softplus(beta=2.0, threshold=3.0), (4, 6)),
    ("Mish", lambda: nn.Mish(), (4, 6)),
    ("LogSigmoid", lambda: nn.LogSigmoid(), (4, 6)),
    ("PReLU", lambda: nn.PReLU(), (4, 6)),
    ("PReLU-per-channel", lambda: nn.PReLU(3, init=0.1), (2, 3, 4)),
    ("LayerNorm", lambda: nn.LayerNorm(6), (4, 6)),
    ("LayerNorm-noaffine-2d", lambda: nn.LayerNorm([3, 6], elementwise_affine=False), (2, 3, 6)),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(6), (4, 6)),
    ("BatchNorm1d-3d", lambda: nn.BatchNorm1d(3, momentum=0.3), (4, 3, 5)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(3), (2, 3, 4, 4)),
    ("BatchNorm2d-noaffine", lambda: nn.BatchNorm2d(3, affine=False), (2, 3, 4, 4)),
    ("BatchNorm2d-momentumNone", lambda: nn.BatchNorm2d(3, momentum=None), (2, 3, 4, 4)),
    ("BatchNorm2d-untracked", lambda: nn.BatchNorm2d(3, track_running_stats=False), (2, 3, 4, 4)),
    ("BatchNorm3d", lambda: nn.BatchNorm3d(2), (2, 2, 3, 2, 2)),
    ("InstanceNorm1d", lambda: nn.InstanceNorm1d(3), (2, 3, 5)),
    ("InstanceNorm1d-unbatched-affine", lambda: nn.InstanceNorm1d(3, affine=True), (3, 5)),
    ("InstanceNorm2d-tracked", lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 3, 3)),
    ("InstanceNorm3d-momentumNone", lambda: nn.InstanceNorm3d(2, track_running_stats=True, momentum=None), (2, 2, 2, 2, 3)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 4), (3, 4, 5)),
    ("RMSNorm", lambda: nn.RMSNorm(6), (4, 6)),
    ("RMSNorm-eps", lambda: nn.RMSNorm([2, 6], eps=1e-3), (3, 2, 6)),
]
IDS = [s[0] for s in SETTINGS]


def _twin_of(ref: nn.Module) -> nn.Module:
    twin_cls = gnn.TWINS[type(ref)]
    twin = copy.deepcopy(ref)
    twin.__class__ = twin_cls  # same state, gradlens forward
    return twin


def _perturb(module: nn.Module) -> None:
    """Random affine parameters and running stats, so the test cannot pass on defaults."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("setting", SETTINGS, ids=IDS)
def test_twin_is_registered_and_constructs_like_torch(setting):
    _, factory, _ = setting
    ref = factory()
    twin_cls = gnn.TWINS[type(ref)]
    assert issubclass(twin_cls, type(ref)) and twin_cls.__module__.startswith("gradlens.nn.")
    assert getattr(gnn, twin_cls.__name__) is twin_cls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("setting", SETTINGS, ids=IDS)
def test_twin_matches_torch_module(setting, training, device):
    _, factory, shape = setting
    torch.manual_seed(1)
    ref = factory().to(device)
    _perturb(ref)
    # Same state through a state_dict round trip (torch -> twin -> torch).
    twin = _twin_of(ref)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    twin.load_state_dict(ref.state_dict())
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    back = copy.deepcopy(ref)
    back.load_state_dict(twin.state_dict())
    ref.train(training)
    twin.train(training)
    for step in range(3):  # several steps: running statistics must follow torch's exactly
        x = (torch.randn(*shape, device=device) * (step + 1) + 0.5).requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        y_ref, y = ref(x), twin(x2)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
        cot = torch.randn_like(y_ref)
        g_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], cot)
        g = torch.autograd.grad(y, [x2, *twin.parameters()], cot)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for (k, v), (k2, v2) in zip(twin.state_dict().items(), ref.state_dict().items()):
            assert k == k2
            torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k} after step {step}: {m}")


def test_batchnorm_momentum_none_is_cumulative_average():
    torch.manual_seed(2)
    ref = nn.BatchNorm2d(3, momentum=None)
    twin = _twin_of(ref)
    xs = [torch.randn(4, 3, 2, 2) * (i + 1) + i for i in range(5)]
    for x in xs:
        ref(x)
        twin(x)
    assert int(twin.num_batches_tracked) == 5
    torch.testing.assert_close(twin.running_mean, ref.running_mean)
    torch.testing.assert_close(twin.running_var, ref.running_var)
    # Independent check: the cumulative average of the batch means / unbiased variances.
    means = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
    var = torch.stack([x.transpose(0, 1).reshape(3, -1).var(1) for x in xs])
    torch.testing.assert_close(twin.running_mean, means, rtol=1e-5, atol=1e-6)
    # running_var starts at 1 and averages in the 5 batch variances: (1*0 + sum)/5 after the first
    torch.testing.assert_close(twin.running_var, var.mean(0), rtol=1e-5, atol=1e-5)


def test_batchnorm_eval_without_running_stats_uses_batch_stats():
    ref = nn.BatchNorm1d(4, track_running_stats=False).eval()
    twin = _twin_of(ref)
    x = torch.randn(6, 4)
    torch.testing.assert_close(twin(x), ref(x))
    assert twin.running_mean is None and twin.num_batches_tracked is None


def test_batchnorm_rejects_wrong_rank_like_torch():
    with pytest.raises(ValueError, match="4D"):
        gnn.BatchNorm2d(3)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="more than 1 value"):
        gnn.BatchNorm1d(3)(torch.randn(1, 3))


def test_inplace_relu_in_a_model_matches_torch():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3), nn.LogSoftmax(dim=1),
    )
    ref = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # conv/linear may not have twins on this branch
        twin = gradlens.mirror(model)
    for i in (1, 2, 5, 6, 8):
        assert type(twin[i]).__module__.startswith("gradlens.nn."), type(twin[i])
    assert twin[2].inplace
    x = torch.randn(3, 2, 5, 5)
    out, out_ref = twin(x), ref(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    out_ref.sum().backward()
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(model[1].running_mean, ref[1].running_mean)  # shared buffers updated
    assert int(model[1].num_batches_tracked) == 1


def test_mirror_swaps_norm_and_activation_layers():
    model = nn.Sequential(nn.LayerNorm(5), nn.SiLU(), nn.RMSNorm(5), nn.Tanh(), nn.Softmax(dim=-1))
    twin = gradlens.mirror(model, strict=True)
    assert [type(m).__module__ for m in twin] == ["gradlens.nn.norm", "gradlens.nn.activation"] * 2 + ["gradlens.nn.activation"]
    assert twin[0].weight is model[0].weight
    x = torch.randn(2, 5)
    torch.testing.assert_close(twin(x), model(x))
