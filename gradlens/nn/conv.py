"""``gradlens.nn.Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d``: torch's conv modules run by gradlens.functional.

Example:
    >>> import torch, gradlens
    >>> layer = gradlens.nn.Conv2d(3, 8, 3, padding=1)
    >>> layer(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from gradlens.functional.conv import conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


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


class Conv3d(torch.nn.Conv3d):
    """Twin of :class:`torch.nn.Conv3d` (same constructor, parameters and ``state_dict``).

    ``forward`` runs :func:`gradlens.functional.conv3d`; other padding modes pad first, as torch.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.Conv3d(2, 4, 3, padding=1)(torch.randn(1, 2, 4, 4, 4)).shape
        torch.Size([1, 4, 4, 4, 4])
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _conv_forward(self, conv3d, input, weight, bias)


def _conv_transpose_forward(module: torch.nn.modules.conv._ConvTransposeNd, fn: Callable, nd: int,
                            input: torch.Tensor, output_size: Optional[List[int]]) -> torch.Tensor:
    """torch's ``ConvTransposeNd.forward``: the output padding that gives ``output_size``, then the op."""
    if module.padding_mode != "zeros":
        raise ValueError(f"Only 'zeros' padding mode is supported for {type(module).__name__}")
    output_padding = module._output_padding(
        input, output_size, module.stride, module.padding, module.kernel_size, nd, module.dilation
    )
    return fn(input, module.weight, module.bias, module.stride, module.padding, output_padding,
              module.groups, module.dilation)


class ConvTranspose1d(torch.nn.ConvTranspose1d):
    """Twin of :class:`torch.nn.ConvTranspose1d`, run by :func:`gradlens.functional.conv_transpose1d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.ConvTranspose1d(2, 3, 3, stride=2)(torch.randn(1, 2, 5), output_size=[12]).shape
        torch.Size([1, 3, 12])
    """

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        return _conv_transpose_forward(self, conv_transpose1d, 1, input, output_size)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """Twin of :class:`torch.nn.ConvTranspose2d`, run by :func:`gradlens.functional.conv_transpose2d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)(torch.randn(1, 4, 8, 8)).shape
        torch.Size([1, 2, 16, 16])
    """

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        return _conv_transpose_forward(self, conv_transpose2d, 2, input, output_size)


class ConvTranspose3d(torch.nn.ConvTranspose3d):
    """Twin of :class:`torch.nn.ConvTranspose3d`, run by :func:`gradlens.functional.conv_transpose3d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.ConvTranspose3d(2, 1, 2, stride=2)(torch.randn(1, 2, 3, 3, 3)).shape
        torch.Size([1, 1, 6, 6, 6])
    """

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        return _conv_transpose_forward(self, conv_transpose3d, 3, input, output_size)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {
    torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d,
    torch.nn.ConvTranspose1d: ConvTranspose1d, torch.nn.ConvTranspose2d: ConvTranspose2d,
    torch.nn.ConvTranspose3d: ConvTranspose3d,
}
