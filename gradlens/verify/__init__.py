"""Verify hand-written backward passes: :func:`check_backward` (one function, the inputs you give) and
:func:`check_model` (every custom Function a model's forward calls, on the inputs it really gets).

Example:
    >>> import torch, gradlens
    >>> x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    >>> report = gradlens.check_backward(torch.sin, x)
    >>> report.ok
    True
"""

from gradlens.verify._check import check_backward
from gradlens.verify._model import check_model
from gradlens.verify._model_report import FunctionCall, FunctionReport, ModelReport
from gradlens.verify._report import BackwardReport, TensorCheck

__all__ = ["check_backward", "BackwardReport", "TensorCheck", "check_model", "ModelReport", "FunctionReport", "FunctionCall"]
