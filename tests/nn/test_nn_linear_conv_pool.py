"""gradlens.nn Linear / Conv / pooling / Flatten twins against torch's modules."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import DEVICES
from torch import nn

import gradlens
import gradlens.nn as gnn

# (id, torch class, constructor args, constructor kwargs, input shape)
SETTINGS = [
    ("linear", nn.Linear, (4, 3), {}, (5, 4)),
    ("linear-nobias-3d", nn.Linear, (4, 3), {"bias": False}, (2, 5, 4)),
    ("conv1d", nn.Conv1d, (2, 3, 3), {"stride": 2, "padding": 1}, (2, 2, 9)),
    ("conv1d-same-groups", nn.Conv1d, (4, 4, 2), {"padding": "same", "groups": 2, "bias": False}, (1, 4, 7)),
    ("conv1d-circular", nn.Conv1d, (2, 3, 3), {"padding": 2, "padding_mode": "circular"}, (2, 2, 8)),
    ("conv2d", nn.Conv2d, (2, 3, 3), {"padding": 1}, (2, 2, 6, 6)),
    ("conv2d-dilated-strided", nn.Conv2d, (2, 4, (2, 3)), {"stride": 2, "dilation": (2, 1)}, (1, 2, 9, 8)),
    ("conv2d-reflect", nn.Conv2d, (2, 3, 3), {"padding": 1, "padding_mode": "reflect"}, (2, 2, 5, 5)),
    ("conv2d-replicate-same", nn.Conv2d, (2, 3, 4), {"padding": "same", "padding_mode": "replicate"}, (1, 2, 6, 6)),
    ("conv2d-unbatched", nn.Conv2d, (2, 3, 3), {}, (2, 5, 5)),
    ("conv3d", nn.Conv3d, (2, 3, 3), {"padding": 1, "stride": (1, 2, 2)}, (1, 2, 4, 5, 5)),
    ("conv3d-reflect", nn.Conv3d, (2, 2, 2), {"padding": 1, "padding_mode": "reflect", "bias": False}, (1, 2, 3, 3, 3)),
    ("convtranspose1d", nn.ConvTranspose1d, (2, 3, 3), {"stride": 2, "output_padding": 1}, (2, 2, 5)),
    ("convtranspose2d", nn.ConvTranspose2d, (4, 2, 4), {"stride": 2, "padding": 1}, (1, 4, 5, 5)),
    ("convtranspose2d-groups", nn.ConvTranspose2d, (4, 4, 3), {"groups": 2, "dilation": 2, "bias": False}, (4, 3, 3)),
    ("convtranspose3d", nn.ConvTranspose3d, (2, 1, 2), {"stride": 2}, (1, 2, 2, 3, 3)),
    ("maxpool1d", nn.MaxPool1d, (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 8)),
    ("maxpool2d", nn.MaxPool2d, (2,), {}, (2, 3, 6, 6)),
    ("maxpool2d-dilated", nn.MaxPool2d, (2,), {"stride": 1, "dilation": 2}, (1, 2, 6, 6)),
    ("avgpool1d", nn.AvgPool1d, (3,), {"stride": 2, "padding": 1, "count_include_pad": False}, (2, 3, 8)),
    ("avgpool2d", nn.AvgPool2d, (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 2, 7, 7)),
    ("avgpool2d-divisor", nn.AvgPool2d, (2,), {"divisor_override": 3}, (1, 2, 4, 4)),
    ("adaptiveavgpool2d", nn.AdaptiveAvgPool2d, ((3, None),), {}, (2, 2, 7, 5)),
    ("maxpool3d", nn.MaxPool3d, (2,), {"stride": 1, "padding": 1}, (1, 2, 4, 4, 4)),
    ("avgpool3d", nn.AvgPool3d, (2,), {"ceil_mode": True, "count_include_pad": False}, (1, 2, 5, 4, 3)),
    ("adaptiveavgpool1d", nn.AdaptiveAvgPool1d, (3,), {}, (2, 3, 8)),
    ("adaptiveavgpool3d", nn.AdaptiveAvgPool3d, ((2, 1, None),), {}, (1, 2, 5, 4, 3)),
    ("adaptivemaxpool1d", nn.AdaptiveMaxPool1d, (3,), {}, (2, 3, 8)),
    ("adaptivemaxpool2d", nn.AdaptiveMaxPool2d, ((2, 3),), {}, (2, 3, 7, 5)),
    ("adaptivemaxpool3d", nn.AdaptiveMaxPool3d, (1,), {}, (1, 2, 3, 4, 3)),
    ("upsample-nearest", nn.Upsample, (), {"scale_factor": 2}, (1, 2, 3, 4)),
    ("upsample-bilinear-size", nn.Upsample, (), {"size": (5, 7), "mode": "bilinear"}, (1, 2, 3, 4)),
    ("upsample-trilinear-ac", nn.Upsample, (), {"scale_factor": 1.5, "mode": "trilinear", "align_corners": True},
     (1, 1, 2, 3, 2)),
    ("upsamplingnearest2d", nn.UpsamplingNearest2d, (), {"scale_factor": 3}, (1, 2, 2, 3)),
    ("upsamplingbilinear2d", nn.UpsamplingBilinear2d, (), {"size": (4, 5)}, (1, 2, 2, 3)),
    ("pixelshuffle", nn.PixelShuffle, (2,), {}, (2, 8, 3, 3)),
    ("pixelunshuffle", nn.PixelUnshuffle, (2,), {}, (2, 2, 4, 6)),
    ("zeropad2d", nn.ZeroPad2d, ((1, 2, 0, 1),), {}, (1, 2, 3, 3)),
    ("constantpad1d", nn.ConstantPad1d, (2, 0.5), {}, (2, 3, 4)),
    ("constantpad3d-crop", nn.ConstantPad3d, ((1, -1, 0, 1, 1, 0), 1.0), {}, (1, 1, 2, 3, 3)),
    ("reflectionpad1d", nn.ReflectionPad1d, ((2, 1),), {}, (2, 3, 4)),
    ("reflectionpad2d", nn.ReflectionPad2d, (1,), {}, (1, 2, 3, 4)),
    ("reflectionpad3d", nn.ReflectionPad3d, (1,), {}, (1, 1, 2, 3, 3)),
    ("replicationpad2d", nn.ReplicationPad2d, ((0, 2, 1, 1),), {}, (1, 2, 3, 3)),
    ("replicationpad3d-unbatched", nn.ReplicationPad3d, (1,), {}, (2, 2, 2, 3)),
    ("circularpad1d", nn.CircularPad1d, (2,), {}, (2, 3, 4)),
    ("circularpad2d", nn.CircularPad2d, ((1, 0, 2, 1),), {}, (1, 2, 3, 3)),
    ("flatten", nn.Flatten, (), {}, (2, 3, 4)),
    ("flatten-dims", nn.Flatten, (0, 1), {}, (2, 3, 4)),
]
IDS = [s[0] for s in SETTINGS]


def _twin_class(torch_cls):
    return getattr(gnn, torch_cls.__name__)


def _pair(torch_cls, args, kwargs, device):
    torch.manual_seed(0)
    ref = torch_cls(*args, **kwargs).to(device)
    twin = _twin_class(torch_cls)(*args, **kwargs).to(device)
    twin.load_state_dict(ref.state_dict())
    return ref, twin


@pytest.mark.parametrize("torch_cls", sorted({s[1] for s in SETTINGS}, key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_twin_is_registered_and_a_torch_subclass(torch_cls):
    twin_cls = _twin_class(torch_cls)
    assert gnn.TWINS[torch_cls] is twin_cls
    assert issubclass(twin_cls, torch_cls) and twin_cls is not torch_cls
    assert twin_cls.__module__.startswith("gradlens.nn.")


@pytest.mark.parametrize("_id,torch_cls,args,kwargs,shape", SETTINGS, ids=IDS)
def test_state_dict_round_trip(_id, torch_cls, args, kwargs, shape):
    torch.manual_seed(1)
    ref = torch_cls(*args, **kwargs)
    twin = _twin_class(torch_cls)(*args, **kwargs)
    sd_ref, sd_twin = ref.state_dict(), twin.state_dict()
    assert list(sd_ref) == list(sd_twin)
    assert [v.shape for v in sd_ref.values()] == [v.shape for v in sd_twin.values()]
    assert repr(ref) == repr(twin).replace(type(twin).__name__, type(ref).__name__, 1)
    # torch -> twin -> fresh torch module: the same tensors all the way.
    twin.load_state_dict(sd_ref)
    back = torch_cls(*args, **kwargs)
    back.load_state_dict(twin.state_dict())
    for key, value in sd_ref.items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("_id,torch_cls,args,kwargs,shape", SETTINGS, ids=IDS)
def test_twin_matches_torch_module(_id, torch_cls, args, kwargs, shape, device):
    ref, twin = _pair(torch_cls, args, kwargs, device)
    x = torch.randn(shape, device=device)
    x_ref = x.clone().requires_grad_(True)
    x_twin = x.clone().requires_grad_(True)
    y_ref, y_twin = ref(x_ref), twin(x_twin)
    torch.testing.assert_close(y_twin, y_ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_twin.backward(g)
    torch.testing.assert_close(x_twin.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p_ref), (_, p_twin) in zip(ref.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p_twin.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cls", [gnn.MaxPool1d, gnn.MaxPool2d], ids=lambda c: c.__name__)
def test_maxpool_twin_returns_indices(cls):
    shape = (1, 2, 6) if cls is gnn.MaxPool1d else (1, 2, 4, 4)
    x = torch.randn(shape)
    out, idx = cls(2, return_indices=True)(x)
    ref_out, ref_idx = cls.__mro__[1](2, return_indices=True)(x)
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx)


def _cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding="same", padding_mode="reflect", groups=2),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _cnn1d():
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1),
        nn.MaxPool1d(2),
        nn.Conv1d(3, 3, 2, dilation=2),
        nn.AvgPool1d(2),
        nn.Flatten(),
        nn.Linear(3, 2, bias=False),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("build,shape", [(_cnn, (2, 2, 8, 8)), (_cnn1d, (2, 2, 10))], ids=["cnn2d", "cnn1d"])
def test_mirror_swaps_layers_with_identical_results(build, shape, device):
    torch.manual_seed(0)
    model = build().to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer here has a twin: nothing to warn about
        twin = gradlens.mirror(model)
    for (name, ours), (_, theirs) in zip(twin.named_modules(), model.named_modules()):
        if name:
            assert type(ours) is gnn.TWINS[type(theirs)], name
    x = torch.randn(shape, device=device)
    y_ref = model(x)
    y_twin = twin(x)
    torch.testing.assert_close(y_twin, y_ref, rtol=1e-4, atol=1e-5)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(model.parameters()))
    grads_twin = torch.autograd.grad(y_twin.square().sum(), list(twin.parameters()))
    for g_twin, g_ref in zip(grads_twin, grads_ref):
        torch.testing.assert_close(g_twin, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("output_size", [[11, 11], [12, 12], [1, 2, 12, 11]], ids=["min", "plus1", "with-batch-dims"])
def test_conv_transpose_twin_output_size(output_size):
    ref, twin = _pair(nn.ConvTranspose2d, (2, 3, 3), {"stride": 2, "padding": 1}, "cpu")
    x = torch.randn(1, 2, 6, 6)
    y_ref, y_twin = ref(x, output_size=output_size), twin(x, output_size=output_size)
    assert y_twin.shape == y_ref.shape
    torch.testing.assert_close(y_twin, y_ref)


def test_conv_transpose_twin_rejects_other_padding_modes():
    twin = gnn.ConvTranspose1d(2, 2, 3)
    twin.padding_mode = "reflect"
    with pytest.raises(ValueError, match="zeros"):
        twin(torch.randn(1, 2, 5))
