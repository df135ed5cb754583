"""gradlens: look inside backpropagation.

Four capabilities, one small API:

* ``gradlens.watch(model, optimizer)`` records per-layer gradient statistics while
  a model trains and logs them to TensorBoard and pandas.
* ``mon.findings`` names training problems (vanishing/exploding gradients, NaN
  origins, dead units, ...) with their culprit layer and step.
* ``gradlens.check_backward(fn, *inputs)`` verifies a hand-written backward pass
  and says where and how it is wrong.
* ``gradlens.functional`` / ``gradlens.nn`` / ``gradlens.mirror(model)`` are torch
  layers re-implemented as autograd Functions with hand-written backward passes.

Example:
    >>> import torch, gradlens
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> twin = gradlens.mirror(model)
    >>> x = torch.randn(8, 4)
    >>> torch.allclose(twin(x), model(x))
    True

Heavy submodules (pandas, tensorboard) are imported lazily, on first use of the
name that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradlens._version import __version__

# Public name -> module that defines it. Submodules are imported on first access
# so that ``import gradlens`` stays cheap and does not pull in tensorboard/pandas.
_LAZY = {
    "watch": "gradlens.monitor",
    "Monitor": "gradlens.monitor",
    "mirror": "gradlens.mirroring",
    "register_twin": "gradlens.mirroring",
    "check_backward": "gradlens.verify",
    "BackwardReport": "gradlens.verify",
    "check_model": "gradlens.verify",
    "ModelReport": "gradlens.verify",
    "Finding": "gradlens.diagnose.finding",
    "TrainingHalted": "gradlens.diagnose.finding",
}
_SUBMODULES = ("functional", "nn", "testing", "diagnose", "monitor", "verify")

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"gradlens.{name}")
    raise AttributeError(f"module 'gradlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
