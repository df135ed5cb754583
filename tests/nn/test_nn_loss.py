"""gradlens.nn loss twins: torch's constructor/buffers/state_dict, torch's numbers, mirror swaps them."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import DEVICES
from torch import nn

import gradlens
import gradlens.nn as gnn
from gradlens.nn import loss as gnn_loss

# (id, torch class, constructor kwargs maker, inputs maker (device) -> (input, target))
SETTINGS = [
    ("mse", nn.MSELoss, lambda: {}, lambda d: (torch.randn(3, 4, device=d), torch.randn(3, 4, device=d))),
    ("mse-sum", nn.MSELoss, lambda: {"reduction": "sum"}, lambda d: (torch.randn(3, 4, device=d), torch.randn(3, 4, device=d))),
    ("ce", nn.CrossEntropyLoss, lambda: {}, lambda d: (torch.randn(4, 5, device=d), torch.tensor([0, 4, 2, 1], device=d))),
    (
        "ce-weight-ignore-ls-none",
        nn.CrossEntropyLoss,
        lambda: {"weight": torch.rand(5) + 0.5, "ignore_index": 2, "label_smoothing": 0.1, "reduction": "none"},
        lambda d: (torch.randn(4, 5, 3, device=d), torch.randint(5, (4, 3), device=d)),
    ),
    ("ce-prob", nn.CrossEntropyLoss, lambda: {"label_smoothing": 0.2}, lambda d: (torch.randn(4, 5, device=d), torch.rand(4, 5, device=d).softmax(1))),
    ("nll-weight", nn.NLLLoss, lambda: {"weight": torch.rand(5) + 0.5}, lambda d: (torch.randn(4, 5, device=d).log_softmax(1), torch.tensor([0, 4, 2, 1], device=d))),
    ("nll-legacy-sum", nn.NLLLoss, lambda: {"size_average": False}, lambda d: (torch.randn(4, 5, device=d).log_softmax(1), torch.tensor([0, 4, 2, 1], device=d))),
    ("bce", nn.BCEWithLogitsLoss, lambda: {}, lambda d: (torch.randn(3, 4, device=d), torch.rand(3, 4, device=d))),
    (
        "bce-weight-posweight",
        nn.BCEWithLogitsLoss,
        lambda: {"weight": torch.rand(3, 1) + 0.5, "pos_weight": torch.rand(4) * 3, "reduction": "sum"},
        lambda d: (torch.randn(3, 4, device=d), torch.rand(3, 4, device=d)),
    ),
]
IDS = [s[0] for s in SETTINGS]
TWIN_OF = {nn.MSELoss: gnn.MSELoss, nn.CrossEntropyLoss: gnn.CrossEntropyLoss, nn.NLLLoss: gnn.NLLLoss, nn.BCEWithLogitsLoss: gnn.BCEWithLogitsLoss}


def _pair(torch_cls, make_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy size_average/reduce warn, as in torch
        ref = torch_cls(**make_kwargs())
        twin = TWIN_OF[torch_cls](**make_kwargs())
    twin.load_state_dict(ref.state_dict())
    return ref, twin


def test_twins_registered():
    assert gnn_loss.TWINS == TWIN_OF
    for torch_cls, twin_cls in TWIN_OF.items():
        assert gnn.TWINS[torch_cls] is twin_cls
        assert issubclass(twin_cls, torch_cls) and twin_cls.__name__ == torch_cls.__name__
        assert twin_cls.__module__ == "gradlens.nn.loss"
    assert set(gnn_loss.__all__) == {c.__name__ for c in TWIN_OF.values()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("torch_cls, make_kwargs, make_inputs", [s[1:] for s in SETTINGS], ids=IDS)
def test_same_output_and_gradients_as_torch(torch_cls, make_kwargs, make_inputs, device):
    ref, twin = _pair(torch_cls, make_kwargs)
    ref, twin = ref.to(device), twin.to(device)
    x, t = make_inputs(device)
    results = []
    for module in (ref, twin):
        xx = x.clone().requires_grad_(True)
        tt = t.clone().requires_grad_(True) if t.is_floating_point() else t
        out = module(xx, tt)
        # A random cotangent so 'none' outputs are checked element by element.
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        grads = torch.autograd.grad(out, [xx] + ([tt] if tt.requires_grad else []), cot)
        results.append((out, grads))
    (o_ref, g_ref), (o_twin, g_twin) = results
    assert o_twin.shape == o_ref.shape
    torch.testing.assert_close(o_twin, o_ref)
    for a, b in zip(g_twin, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("torch_cls, make_kwargs, make_inputs", [s[1:] for s in SETTINGS], ids=IDS)
def test_constructor_state_dict_and_repr_are_torchs(torch_cls, make_kwargs, make_inputs):
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch_cls(**make_kwargs())
        torch.manual_seed(3)
        twin = TWIN_OF[torch_cls](**make_kwargs())
    assert isinstance(twin, torch_cls)
    assert twin.reduction == ref.reduction
    assert repr(twin) == repr(ref)
    sd_ref, sd_twin = ref.state_dict(), twin.state_dict()
    assert list(sd_twin) == list(sd_ref)
    for key in sd_ref:
        assert sd_twin[key].shape == sd_ref[key].shape
    # A checkpoint loads either way.
    for src, dst in ((ref, twin), (twin, ref)):
        with torch.no_grad():
            for buf in src.buffers():
                buf.mul_(2)
        dst.load_state_dict(src.state_dict())
        for key, value in dst.state_dict().items():
            torch.testing.assert_close(value, src.state_dict()[key])


class _MultiLoss(nn.Module):
    """A user module holding one of each loss: mirror reaches them through it."""

    def __init__(self) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=torch.rand(5) + 0.5, label_smoothing=0.1)
        self.nll = nn.NLLLoss(ignore_index=1)
        self.parts = nn.ModuleDict({"mse": nn.MSELoss(reduction="sum"), "bce": nn.BCEWithLogitsLoss(pos_weight=torch.full((4,), 2.0))})

    def forward(self, logits, labels, pred, target):
        return (
            self.ce(logits, labels)
            + self.nll(logits.log_softmax(1), labels)
            + self.parts["mse"](pred, target)
            + self.parts["bce"](pred, target)
        )


def test_mirror_swaps_losses_with_identical_results():
    model = _MultiLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer here has a twin: no UnsupportedLayersWarning
        twin = gradlens.mirror(model)
    assert type(twin.ce) is gnn.CrossEntropyLoss and type(twin.nll) is gnn.NLLLoss
    assert type(twin.parts["mse"]) is gnn.MSELoss and type(twin.parts["bce"]) is gnn.BCEWithLogitsLoss
    assert type(model.ce) is nn.CrossEntropyLoss  # the caller's model is untouched
    assert twin.ce.weight is model.ce.weight and twin.parts["bce"].pos_weight is model.parts["bce"].pos_weight

    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 4, 1, 3, 2])
    pred, target = torch.randn(6, 4), torch.rand(6, 4)
    out = []
    for m in (model, twin):
        lg, pr = logits.clone().requires_grad_(True), pred.clone().requires_grad_(True)
        loss = m(lg, labels, pr, target)
        out.append((loss, *torch.autograd.grad(loss, (lg, pr))))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b)
