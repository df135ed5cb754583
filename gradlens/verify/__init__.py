"""Verify hand-written backward passes: :func:`check_backward` and its :class:`BackwardReport`.

Example:
    >>> import torch, gradlens
    >>> x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    >>> report = gradlens.check_backward(torch.sin, x)
    >>> report.ok
    True
"""

from gradlens.verify._check import check_backward
from gradlens.verify._report import BackwardReport, TensorCheck

__all__ = ["check_backward", "BackwardReport", "TensorCheck"]
