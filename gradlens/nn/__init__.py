"""``torch.nn`` modules built on :mod:`gradlens.functional`.

Each ``gradlens.nn.<TorchName>`` subclasses the torch module of the same name and
only replaces ``forward`` with the gradlens function, so constructor arguments,
parameter names, buffers, ``state_dict`` and ``isinstance`` checks are exactly
torch's: a checkpoint loads either way.

Example:
    >>> import torch, gradlens
    >>> layer = gradlens.nn.Linear(3, 2)
    >>> isinstance(layer, torch.nn.Linear), sorted(layer.state_dict())
    (True, ['bias', 'weight'])
"""

from __future__ import annotations

import importlib
from typing import Dict

_FAMILIES = ("linear", "conv", "activation", "norm", "pooling", "sparse", "dropout", "attention", "loss", "recurrent", "resample")

__all__: list = []
#: Exact torch module class -> gradlens twin class (used by :func:`gradlens.mirror`).
TWINS: Dict[type, type] = {}
for _family in _FAMILIES:
    _module = importlib.import_module(f"gradlens.nn.{_family}")
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
    __all__.extend(_module.__all__)
    TWINS.update(_module.TWINS)
del _family, _module
