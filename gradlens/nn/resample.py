"""Upsampling, padding and pixel-shuffle modules run by :mod:`gradlens.functional.resample`.

Each twin subclasses the torch module of the same name and only replaces ``forward``
(constructor, ``extra_repr`` and ``isinstance`` are torch's). The fifteen padding
classes (``ZeroPad1d`` ... ``CircularPad3d``) differ only in torch's mode, so they are
made by one loop below.

Example:
    >>> import torch, gradlens
    >>> up = gradlens.nn.Upsample(scale_factor=2, mode="bilinear")
    >>> up(torch.randn(1, 3, 4, 4)).shape
    torch.Size([1, 3, 8, 8])
    >>> gradlens.nn.ReflectionPad2d(1)(torch.randn(1, 1, 3, 3)).shape
    torch.Size([1, 1, 5, 5])
"""

from __future__ import annotations

import torch
from torch import nn

from gradlens.functional import resample as _F

__all__ = ["Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle"]


def _upsample_forward(self: nn.Upsample, input: torch.Tensor) -> torch.Tensor:
    return _F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                          recompute_scale_factor=self.recompute_scale_factor)


class Upsample(nn.Upsample):
    """:class:`torch.nn.Upsample` computed by :func:`gradlens.functional.interpolate`."""

    forward = _upsample_forward


class UpsamplingNearest2d(nn.UpsamplingNearest2d):
    """:class:`torch.nn.UpsamplingNearest2d` computed by :func:`gradlens.functional.interpolate`."""

    forward = _upsample_forward


class UpsamplingBilinear2d(nn.UpsamplingBilinear2d):
    """:class:`torch.nn.UpsamplingBilinear2d` computed by :func:`gradlens.functional.interpolate`."""

    forward = _upsample_forward


class PixelShuffle(nn.PixelShuffle):
    """:class:`torch.nn.PixelShuffle` computed by :func:`gradlens.functional.pixel_shuffle`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.pixel_shuffle(input, self.upscale_factor)


class PixelUnshuffle(nn.PixelUnshuffle):
    """:class:`torch.nn.PixelUnshuffle` computed by :func:`gradlens.functional.pixel_unshuffle`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.pixel_unshuffle(input, self.downscale_factor)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {
    nn.Upsample: Upsample,
    nn.UpsamplingNearest2d: UpsamplingNearest2d,
    nn.UpsamplingBilinear2d: UpsamplingBilinear2d,
    nn.PixelShuffle: PixelShuffle,
    nn.PixelUnshuffle: PixelUnshuffle,
}


def _constant_pad_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
    return _F.pad(input, self.padding, "constant", self.value)


def _mode_pad_forward(mode: str):
    def forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
        if mode == "circular":
            self._check_input_dim(input)  # torch's circular modules check the input's dims first
        return _F.pad(input, self.padding, mode)

    return forward


for _prefix, _mode in (("Zero", "constant"), ("Constant", "constant"), ("Reflection", "reflect"),
                       ("Replication", "replicate"), ("Circular", "circular")):
    for _nd in (1, 2, 3):
        _name = f"{_prefix}Pad{_nd}d"
        _torch_cls = getattr(nn, _name)
        _twin = type(_name, (_torch_cls,), {
            "__module__": __name__,
            "__doc__": f":class:`torch.nn.{_name}` computed by :func:`gradlens.functional.pad` (mode {_mode!r}).",
            "forward": _constant_pad_forward if _mode == "constant" else _mode_pad_forward(_mode),
        })
        globals()[_name] = _twin
        __all__.append(_name)
        TWINS[_torch_cls] = _twin
del _prefix, _mode, _nd, _name, _torch_cls, _twin
