"""Torch layers as custom autograd Functions with hand-written backward passes.

``gradlens.functional`` is a drop-in for ``torch.nn.functional``: every public
function has the signature and defaults of its torch counterpart. Each op is a
``torch.autograd.Function`` whose ``forward`` computes the op with torch primitives
and whose ``backward`` writes the chain rule out by hand, next to it, in the same
module. Backward passes are themselves differentiable (double backward works)
unless the function's docstring says otherwise. An option not supported yet raises
``NotImplementedError`` naming it; it never gives a wrong result.

One module per op family: ``linear``, ``conv``, ``activation``, ``norm``,
``pooling``, ``sparse`` (embedding), ``dropout``, ``attention``, ``loss``, and
``tensor_ops`` (``add``, ``mul``, ``matmul``, ``addmm``, ``cat``, ``expand``, ...: the
torch ops parameters flow through outside layers).

Example:
    >>> import torch
    >>> import gradlens.functional as GF
    >>> x = torch.randn(4, 3, requires_grad=True)
    >>> w = torch.randn(2, 3, requires_grad=True)
    >>> y = GF.linear(x, w)
    >>> torch.allclose(y, torch.nn.functional.linear(x, w))
    True
"""

from __future__ import annotations

import importlib

_FAMILIES = ("linear", "conv", "activation", "norm", "pooling", "sparse", "dropout", "attention", "loss",
             "tensor_ops", "recurrent", "resample")

__all__: list = []
for _family in _FAMILIES:
    _module = importlib.import_module(f"gradlens.functional.{_family}")
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
    __all__.extend(_module.__all__)
del _family, _module
