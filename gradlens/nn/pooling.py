"""Pooling and flatten modules: torch's classes whose forward runs :mod:`gradlens.functional.pooling`.

Example:
    >>> import torch, gradlens
    >>> pool = gradlens.nn.MaxPool2d(2)
    >>> pool(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 3, 4, 4])
"""

from __future__ import annotations

import torch

from gradlens.functional.pooling import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_avg_pool3d,
    adaptive_max_pool1d,
    adaptive_max_pool2d,
    adaptive_max_pool3d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    flatten,
    max_pool1d,
    max_pool2d,
    max_pool3d,
)

__all__ = ["MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
           "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
           "Flatten"]


class MaxPool1d(torch.nn.MaxPool1d):
    """Twin of :class:`torch.nn.MaxPool1d` running :func:`gradlens.functional.max_pool1d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.MaxPool1d(2)(torch.tensor([[[1.0, 3.0, 2.0, 0.0]]]))
        tensor([[[3., 2.]]])
    """

    def forward(self, input: torch.Tensor):
        return max_pool1d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxPool2d(torch.nn.MaxPool2d):
    """Twin of :class:`torch.nn.MaxPool2d` running :func:`gradlens.functional.max_pool2d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.MaxPool2d(3, stride=2, padding=1)(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 2, 4, 4])
    """

    def forward(self, input: torch.Tensor):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool1d(torch.nn.AvgPool1d):
    """Twin of :class:`torch.nn.AvgPool1d` running :func:`gradlens.functional.avg_pool1d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.AvgPool1d(2)(torch.tensor([[[1.0, 3.0, 2.0, 0.0]]]))
        tensor([[[2., 1.]]])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)


class AvgPool2d(torch.nn.AvgPool2d):
    """Twin of :class:`torch.nn.AvgPool2d` running :func:`gradlens.functional.avg_pool2d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.AvgPool2d(2)(torch.ones(1, 1, 4, 4)).shape
        torch.Size([1, 1, 2, 2])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """Twin of :class:`torch.nn.AdaptiveAvgPool2d` running :func:`gradlens.functional.adaptive_avg_pool2d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.AdaptiveAvgPool2d((1, 1))(torch.randn(2, 3, 5, 7)).shape
        torch.Size([2, 3, 1, 1])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(input, self.output_size)


class MaxPool3d(torch.nn.MaxPool3d):
    """Twin of :class:`torch.nn.MaxPool3d` running :func:`gradlens.functional.max_pool3d`."""

    def forward(self, input: torch.Tensor):
        return max_pool3d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool3d(torch.nn.AvgPool3d):
    """Twin of :class:`torch.nn.AvgPool3d` running :func:`gradlens.functional.avg_pool3d`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return avg_pool3d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool1d(torch.nn.AdaptiveAvgPool1d):
    """Twin of :class:`torch.nn.AdaptiveAvgPool1d` running :func:`gradlens.functional.adaptive_avg_pool1d`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool1d(input, self.output_size)


class AdaptiveAvgPool3d(torch.nn.AdaptiveAvgPool3d):
    """Twin of :class:`torch.nn.AdaptiveAvgPool3d` running :func:`gradlens.functional.adaptive_avg_pool3d`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool3d(input, self.output_size)


class AdaptiveMaxPool1d(torch.nn.AdaptiveMaxPool1d):
    """Twin of :class:`torch.nn.AdaptiveMaxPool1d` running :func:`gradlens.functional.adaptive_max_pool1d`."""

    def forward(self, input: torch.Tensor):
        return adaptive_max_pool1d(input, self.output_size, self.return_indices)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    """Twin of :class:`torch.nn.AdaptiveMaxPool2d` running :func:`gradlens.functional.adaptive_max_pool2d`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.AdaptiveMaxPool2d(1)(torch.randn(2, 3, 5, 7)).shape
        torch.Size([2, 3, 1, 1])
    """

    def forward(self, input: torch.Tensor):
        return adaptive_max_pool2d(input, self.output_size, self.return_indices)


class AdaptiveMaxPool3d(torch.nn.AdaptiveMaxPool3d):
    """Twin of :class:`torch.nn.AdaptiveMaxPool3d` running :func:`gradlens.functional.adaptive_max_pool3d`."""

    def forward(self, input: torch.Tensor):
        return adaptive_max_pool3d(input, self.output_size, self.return_indices)


class Flatten(torch.nn.Flatten):
    """Twin of :class:`torch.nn.Flatten` running :func:`gradlens.functional.flatten`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.Flatten()(torch.zeros(2, 3, 4)).shape
        torch.Size([2, 12])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return flatten(input, self.start_dim, self.end_dim)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {
    torch.nn.MaxPool1d: MaxPool1d,
    torch.nn.MaxPool2d: MaxPool2d,
    torch.nn.AvgPool1d: AvgPool1d,
    torch.nn.AvgPool2d: AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
    torch.nn.MaxPool3d: MaxPool3d,
    torch.nn.AvgPool3d: AvgPool3d,
    torch.nn.AdaptiveAvgPool1d: AdaptiveAvgPool1d,
    torch.nn.AdaptiveAvgPool3d: AdaptiveAvgPool3d,
    torch.nn.AdaptiveMaxPool1d: AdaptiveMaxPool1d,
    torch.nn.AdaptiveMaxPool2d: AdaptiveMaxPool2d,
    torch.nn.AdaptiveMaxPool3d: AdaptiveMaxPool3d,
    torch.nn.Flatten: Flatten,
}
