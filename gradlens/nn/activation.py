"""Activation modules built on :mod:`gradlens.functional.activation`.

Each class subclasses the torch module of the same name and only replaces
``forward``, so constructor arguments, ``extra_repr`` and ``isinstance`` are torch's.

Example:
    >>> import torch, gradlens
    >>> act = gradlens.nn.ReLU(inplace=True)
    >>> isinstance(act, torch.nn.ReLU), act
    (True, ReLU(inplace=True))
"""

from __future__ import annotations

import torch
from torch import nn

from gradlens.functional import activation as _F

__all__ = ["ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax",
           "Hardtanh", "ReLU6", "Hardsigmoid", "Hardswish", "Softplus", "Mish", "LogSigmoid", "PReLU"]


class ReLU(nn.ReLU):
    """:class:`torch.nn.ReLU` computed by :func:`gradlens.functional.relu`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.relu(input, inplace=self.inplace)


class LeakyReLU(nn.LeakyReLU):
    """:class:`torch.nn.LeakyReLU` computed by :func:`gradlens.functional.leaky_relu`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.leaky_relu(input, self.negative_slope, self.inplace)


class ELU(nn.ELU):
    """:class:`torch.nn.ELU` computed by :func:`gradlens.functional.elu`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.elu(input, self.alpha, self.inplace)


class GELU(nn.GELU):
    """:class:`torch.nn.GELU` computed by :func:`gradlens.functional.gelu`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.gelu(input, approximate=self.approximate)


class SiLU(nn.SiLU):
    """:class:`torch.nn.SiLU` computed by :func:`gradlens.functional.silu`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.silu(input, inplace=self.inplace)


class Tanh(nn.Tanh):
    """:class:`torch.nn.Tanh` computed by :func:`gradlens.functional.tanh`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.tanh(input)


class Sigmoid(nn.Sigmoid):
    """:class:`torch.nn.Sigmoid` computed by :func:`gradlens.functional.sigmoid`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.sigmoid(input)


class Softmax(nn.Softmax):
    """:class:`torch.nn.Softmax` computed by :func:`gradlens.functional.softmax`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(nn.LogSoftmax):
    """:class:`torch.nn.LogSoftmax` computed by :func:`gradlens.functional.log_softmax`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.log_softmax(input, self.dim, _stacklevel=5)


class Hardtanh(nn.Hardtanh):
    """:class:`torch.nn.Hardtanh` computed by :func:`gradlens.functional.hardtanh`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.hardtanh(input, self.min_val, self.max_val, self.inplace)


class ReLU6(nn.ReLU6):
    """:class:`torch.nn.ReLU6` computed by :func:`gradlens.functional.relu6`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.relu6(input, self.inplace)


class Hardsigmoid(nn.Hardsigmoid):
    """:class:`torch.nn.Hardsigmoid` computed by :func:`gradlens.functional.hardsigmoid`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.hardsigmoid(input, self.inplace)


class Hardswish(nn.Hardswish):
    """:class:`torch.nn.Hardswish` computed by :func:`gradlens.functional.hardswish`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.hardswish(input, self.inplace)


class Softplus(nn.Softplus):
    """:class:`torch.nn.Softplus` computed by :func:`gradlens.functional.softplus`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.softplus(input, self.beta, self.threshold)


class Mish(nn.Mish):
    """:class:`torch.nn.Mish` computed by :func:`gradlens.functional.mish`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.mish(input, self.inplace)


class LogSigmoid(nn.LogSigmoid):
    """:class:`torch.nn.LogSigmoid` computed by :func:`gradlens.functional.logsigmoid`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.logsigmoid(input)


class PReLU(nn.PReLU):
    """:class:`torch.nn.PReLU` (a learned negative slope) computed by :func:`gradlens.functional.prelu`.

    Example:
        >>> import torch, gradlens
        >>> act = gradlens.nn.PReLU(num_parameters=3)
        >>> act(torch.randn(2, 3, 4)).shape, sorted(act.state_dict())
        (torch.Size([2, 3, 4]), ['weight'])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.prelu(input, self.weight)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {
    nn.ReLU: ReLU,
    nn.LeakyReLU: LeakyReLU,
    nn.ELU: ELU,
    nn.GELU: GELU,
    nn.SiLU: SiLU,
    nn.Tanh: Tanh,
    nn.Sigmoid: Sigmoid,
    nn.Softmax: Softmax,
    nn.LogSoftmax: LogSoftmax,
    nn.Hardtanh: Hardtanh,
    nn.ReLU6: ReLU6,
    nn.Hardsigmoid: Hardsigmoid,
    nn.Hardswish: Hardswish,
    nn.Softplus: Softplus,
    nn.Mish: Mish,
    nn.LogSigmoid: LogSigmoid,
    nn.PReLU: PReLU,
}
