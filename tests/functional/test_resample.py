"""gradlens.functional pad / interpolate / pixel_shuffle against torch (float32) and gradcheck (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gradlens.functional as GF
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck


def _x(shape):
    def make(dtype, device, gen):
        return (torch.randn(shape, generator=gen, dtype=dtype).to(device),)

    return make


def _case(fn_name, id, shape, *args, **kw):
    ours, theirs = getattr(GF, fn_name), getattr(F, fn_name)
    return OpCase(f"{fn_name}-{id}", lambda x: ours(x, *args, **kw), lambda x: theirs(x, *args, **kw), _x(shape))


CASES = [
    _case("pad", "constant-1d", (2, 3, 4), (1, 2)),
    _case("pad", "constant-value-2d", (2, 3, 4), (1, 0, 2, 1), value=0.5),
    _case("pad", "constant-negative-crop", (2, 3, 5), (-1, 2, 0, -1)),
    _case("pad", "constant-3dims", (1, 2, 3, 3), (1, 1, 1, 1, 1, 1)),
    _case("pad", "reflect-1d", (2, 3, 5), (2, 3), mode="reflect"),
    _case("pad", "reflect-2d", (1, 2, 4, 5), (1, 2, 3, 1), mode="reflect"),
    _case("pad", "reflect-3d", (1, 1, 3, 3, 4), (1, 1, 2, 0, 1, 2), mode="reflect"),
    _case("pad", "replicate-2d", (2, 2, 3, 4), (2, 1, 0, 3), mode="replicate"),
    _case("pad", "replicate-unbatched-1d", (3, 4), (3, 2), mode="replicate"),
    _case("pad", "circular-2d", (1, 2, 4, 3), (1, 2, 2, 1), mode="circular"),
    _case("pad", "circular-1d", (2, 2, 5), (3, 1), mode="circular"),
    _case("interpolate", "nearest-scale2-1d", (2, 3, 4), scale_factor=2),
    _case("interpolate", "nearest-size-2d", (1, 2, 3, 4), size=(5, 7)),
    _case("interpolate", "nearest-down-2d", (1, 2, 6, 5), size=(3, 2)),
    _case("interpolate", "nearest-exact-2d", (1, 2, 3, 5), size=(7, 4), mode="nearest-exact"),
    _case("interpolate", "nearest-3d", (1, 2, 2, 3, 2), scale_factor=(2, 1.5, 3)),
    _case("interpolate", "linear-1d", (2, 2, 4), size=7, mode="linear"),
    _case("interpolate", "bilinear-scale2", (1, 2, 3, 4), scale_factor=2, mode="bilinear"),
    _case("interpolate", "bilinear-align-corners", (1, 2, 3, 4), size=(5, 6), mode="bilinear", align_corners=True),
    _case("interpolate", "bilinear-down-scale0.6", (1, 1, 5, 6), scale_factor=0.6, mode="bilinear"),
    _case("interpolate", "bilinear-recompute", (1, 1, 3, 4), scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
    _case("interpolate", "trilinear", (1, 1, 2, 3, 3), size=(3, 4, 5), mode="trilinear"),
    _case("interpolate", "area-2d", (1, 2, 6, 5), size=(3, 2), mode="area"),
    _case("interpolate", "area-scale-1d", (2, 2, 8), scale_factor=0.5, mode="area"),
    _case("interpolate", "bicubic-scale2", (1, 2, 3, 4), scale_factor=2, mode="bicubic"),
    _case("interpolate", "bicubic-align-corners", (2, 1, 4, 3), size=(6, 5), mode="bicubic", align_corners=True),
    _case("interpolate", "bicubic-down-scale0.6", (1, 1, 6, 7), scale_factor=0.6, mode="bicubic"),
    _case("interpolate", "bicubic-recompute", (1, 1, 3, 4), scale_factor=(1.7, 2.3), mode="bicubic",
          recompute_scale_factor=True),
    _case("interpolate", "bilinear-antialias-down", (1, 2, 9, 8), size=(4, 3), mode="bilinear", antialias=True),
    _case("interpolate", "bilinear-antialias-up-align", (1, 1, 3, 4), size=(5, 7), mode="bilinear", antialias=True,
          align_corners=True),
    _case("interpolate", "bicubic-antialias-down-scale", (1, 1, 10, 7), scale_factor=(0.4, 0.5), mode="bicubic",
          antialias=True),
    _case("interpolate", "bicubic-antialias-mixed", (2, 1, 6, 3), size=(3, 8), mode="bicubic", antialias=True),
    _case("pixel_shuffle", "r2", (2, 8, 3, 2), 2),
    _case("pixel_shuffle", "r3-unbatched", (9, 2, 2), 3),
    _case("pixel_unshuffle", "r2", (1, 2, 4, 6), 2),
    _case("upsample", "bilinear", (1, 1, 2, 3), scale_factor=2, mode="bilinear", align_corners=False),
]


@pytest.mark.filterwarnings("ignore:.*upsample.*deprecated:UserWarning")  # F.upsample, the reference, warns
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_against_torch(case, device, contiguous):
    check_against_torch(case, device, contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradcheck(case, device):
    check_gradcheck(case, device)


def test_without_grad_is_torchs_op():
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(GF.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(x, (1, 1, 1, 1), mode="reflect"))
    assert torch.equal(GF.interpolate(x, scale_factor=2, mode="bilinear"), F.interpolate(x, scale_factor=2, mode="bilinear"))
    assert torch.equal(GF.interpolate(x, size=2, mode="bicubic", antialias=True),
                       F.interpolate(x, size=2, mode="bicubic", antialias=True))


@pytest.mark.parametrize("mode,antialias", [("bicubic", False), ("bilinear", True), ("bicubic", True)])
def test_interpolate_bicubic_antialias_is_a_gradlens_node(mode, antialias):
    """The new modes go through gradlens's Function (not torch's backward) and its gradient is torch's."""
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    y = GF.interpolate(x, size=(3, 9), mode=mode, antialias=antialias)
    assert type(y.grad_fn).__name__ == "_InterpolateFnBackward"
    g = torch.randn_like(y)
    ref = torch.autograd.grad(F.interpolate(x, size=(3, 9), mode=mode, antialias=antialias), x, g)[0]
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], ref)


BAD_INPUTS = [
    pytest.param(lambda: GF.pad([1.0], (1, 1)), TypeError, "input", id="pad-list"),
    pytest.param(lambda: GF.pad(torch.randn(1, 2, 3), "1"), TypeError, "pad", id="pad-str-pads"),
    pytest.param(lambda: GF.pad(torch.randn(1, 2, 3), (1, 1), mode="wrap"), ValueError, "mode", id="pad-mode"),
    pytest.param(lambda: GF.pad(torch.randn(1, 2, 3, requires_grad=True), (1, 1), mode="reflect", value=2.0),
                 ValueError, "value", id="pad-reflect-value"),
    pytest.param(lambda: GF.pad(torch.randn(1, 2, 3, requires_grad=True), (3, 3), mode="reflect"), RuntimeError,
                 "Padding size", id="pad-reflect-too-big"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, 3, requires_grad=True), size=4, mode="lanczos",
                                        antialias=True), NotImplementedError, "lanczos", id="interp-lanczos"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, requires_grad=True), size=4, mode="bicubic"),
                 NotImplementedError, "bicubic", id="interp-bicubic-3d"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, 3, requires_grad=True), size=4, mode="nearest",
                                        antialias=True), ValueError, "Anti-alias", id="interp-antialias-nearest"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, 3, 3, requires_grad=True), size=4, mode="trilinear",
                                        antialias=True), ValueError, "Anti-alias", id="interp-antialias-5d"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, 3, requires_grad=True), size=4, mode="cubic"),
                 NotImplementedError, "", id="interp-unknown-mode"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, 3, requires_grad=True), size=4, mode="nearest",
                                        align_corners=True), ValueError, "align_corners", id="interp-nearest-align"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, 3, requires_grad=True)), ValueError, "size",
                 id="interp-no-size"),
    pytest.param(lambda: GF.interpolate(torch.randn(1, 1, 3, requires_grad=True), size=4, mode="bilinear"),
                 NotImplementedError, "", id="interp-bilinear-3d"),
    pytest.param(lambda: GF.pixel_shuffle(torch.randn(1, 3, 2, 2, requires_grad=True), 2), RuntimeError, "divisible",
                 id="shuffle-channels"),
    pytest.param(lambda: GF.pixel_unshuffle(None, 2), TypeError, "input", id="unshuffle-none"),
]


@pytest.mark.parametrize("call,exc,match", BAD_INPUTS)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
