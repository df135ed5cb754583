"""Whole models: ``gradlens.mirror(model)`` gives torch's loss and every gradient.

Reference: the same model run by torch's own autograd. float32, rtol 1e-4 (the
issue's bar); atol 1e-6 covers gradients that are sums of many terms of both signs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradlens
from conftest import DEVICES
from mirror_check import assert_grads_match


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=1, padding="same"),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 3, groups=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class _TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 32, padding_idx=0)
        self.block = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.block(self.embed(tokens)))
        return self.head(h.mean(dim=1))


def _inputs(name: str, device: str):
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        x = torch.randn(16, 20, generator=g)
    elif name == "cnn":
        x = torch.randn(4, 3, 16, 16, generator=g)
    else:
        x = torch.randint(0, 30, (4, 12), generator=g)
    y = torch.randint(0, 5, (x.shape[0],), generator=g)
    return x.to(device), y.to(device)


MODELS = {"mlp": _mlp, "cnn-batchnorm": _cnn, "transformer-block": _TinyTransformer}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MODELS))
def test_mirrored_model_matches_torch(name, device):
    torch.manual_seed(0)
    model = MODELS[name]().to(device).train()
    reference = copy.deepcopy(model)
    twin = gradlens.mirror(model, strict=True)
    assert twin.gradlens_unsupported == ()
    leaves = [m for m in twin.modules() if not list(m.children())]
    assert all(type(m).__module__.startswith("gradlens.nn") for m in leaves), [type(m) for m in leaves]

    x, y = _inputs(name.split("-")[0], device)
    loss_ref = nn.functional.cross_entropy(reference(x), y)
    loss_ref.backward()
    loss = gradlens.functional.cross_entropy(twin(x), y)
    loss.backward()

    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-6)
    assert_grads_match(twin, reference)
    # Buffers (BatchNorm running statistics) were updated exactly like torch's.
    ref_buffers = dict(reference.named_buffers())
    for bname, b in twin.named_buffers():
        torch.testing.assert_close(b, ref_buffers[bname], rtol=1e-4, atol=1e-6, msg=lambda m: f"{bname}: {m}")


def test_optimizer_on_mirror_trains_the_original():
    torch.manual_seed(0)
    model = _mlp()
    twin = gradlens.mirror(model)
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = _inputs("mlp", "cpu")
    before = model[0].weight.detach().clone()
    gradlens.functional.cross_entropy(twin(x), y).backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)
    torch.testing.assert_close(model(x), twin(x), rtol=1e-5, atol=1e-6)


def test_mirror_eval_mode_and_state_dict_round_trip():
    torch.manual_seed(0)
    model = _cnn().eval()
    twin = gradlens.mirror(model)
    x, _ = _inputs("cnn", "cpu")
    torch.testing.assert_close(twin(x), model(x), rtol=1e-4, atol=1e-6)
    fresh = _cnn().eval()
    fresh.load_state_dict(twin.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("masks", ["none", "causal", "padding"])
def test_mirrored_transformer_encoder_stack_matches_torch(masks, device):
    # nn.TransformerEncoder is handled through its children (layers and final norm).
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=False).to(device)
    reference = copy.deepcopy(model)
    twin = gradlens.mirror(model, strict=True)
    leaves = [m for m in twin.modules() if not list(m.children())]
    assert all(type(m).__module__.startswith("gradlens.nn") for m in leaves), [type(m) for m in leaves]
    x = torch.randn(3, 6, 32, device=device)
    kwargs = {}
    if masks == "causal":
        kwargs = {"mask": nn.Transformer.generate_square_subsequent_mask(6, device=device), "is_causal": True}
    elif masks == "padding":
        pad = torch.zeros(3, 6, dtype=torch.bool, device=device)
        pad[0, -2:] = True
        kwargs = {"src_key_padding_mask": pad}
    cot = torch.randn(3, 6, 32, device=device)
    out_ref, out = reference(x, **kwargs), twin(x, **kwargs)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    grads_ref = torch.autograd.grad(out_ref, list(reference.parameters()), cot)
    grads = torch.autograd.grad(out, list(twin.parameters()), cot)
    for (name, _), g, r in zip(reference.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
