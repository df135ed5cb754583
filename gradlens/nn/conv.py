"""``gradlens.nn.Conv1d`` / ``Conv2d``: torch's conv modules whose forward runs gradlens.functional.

Example:
    >>> import torch, gradlens
    >>> layer = gradlens.nn.Conv2d(3, 8, 3, padding=1)
    >>> layer(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from gradlens.functional.conv import conv1d, conv2d

__all__ = ["Conv1d", "Conv2d"]


def _conv_forward(module: torch.nn.modules.conv._ConvNd, fn: Callable, input: torch.Tensor,
                  weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if module.padding_mode != "zeros":
        # Like torch: pad with the module's mode first (torch's F.pad and its autograd),
        # then convolve without padding.
        padded = F.pad(input, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        return fn(padded, weight, bias, module.stride, 0, module.dilation, module.groups)
    return fn(input, weight, bias, module.stride, module.padding, module.dilation, module.groups)


class Conv1d(torch.nn.Conv1d):
    """Twin of :class:`torch.nn.Conv1d` (same constructor, parameters and ``state_dict``).

    ``forward`` runs :func:`gradlens.functional.conv1d` (hand-written backward). A
    ``padding_mode`` other than ``"zeros"`` pads with :func:`torch.nn.functional.pad`
    first, exactly as torch does.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.Conv1d(2, 4, 3)(torch.randn(1, 2, 10)).shape
        torch.Size([1, 4, 8])
    """

    # torch's inherited forward calls _conv_forward: overriding it alone swaps in our conv
    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _conv_forward(self, conv1d, input, weight, bias)


class Conv2d(torch.nn.Conv2d):
    """Twin of :class:`torch.nn.Conv2d` (same constructor, parameters and ``state_dict``).

    ``forward`` runs :func:`gradlens.functional.conv2d` (hand-written backward). A
    ``padding_mode`` other than ``"zeros"`` pads with :func:`torch.nn.functional.pad`
    first, exactly as torch does.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.Conv2d(2, 4, 3, stride=2)(torch.randn(1, 2, 9, 9)).shape
        torch.Size([1, 4, 4, 4])
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _conv_forward(self, conv2d, input, weight, bias)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d}
