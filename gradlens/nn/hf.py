"""Twins for Hugging Face ``transformers`` layers, recognised without importing transformers.

:func:`gradlens.mirror` asks :func:`twin_class_for` about every class it meets. A
class from a ``transformers.*`` module gets a twin when it is one of:

* ``Conv1D`` (GPT-2, GPT, ...): ``addmm(bias, x, weight)`` through
  :func:`gradlens.functional.addmm`;
* an RMS norm whose ``forward`` is ``LlamaRMSNorm``'s or ``T5LayerNorm``'s line for line
  (its bytecode is compared with the copies below, so the ~140 norms that
  transformers copies from Llama are all recognised, and a norm that computes
  something else, e.g. Gemma's ``x * (1 + w)``, is not): one
  :func:`gradlens.functional.rms_norm` in float32; other dtypes run the class's own
  arithmetic (whose ``weight *`` product mirror's routing still sends to gradlens);
* an activation of ``transformers.activations``: ``GELUActivation``,
  ``NewGELUActivation``/``FastGELUActivation``/``GELUTanh`` (tanh approximation),
  ``SiLUActivation``, ``QuickGELUActivation``, ``ReLUSquaredActivation``.

The twin class subclasses the original (``isinstance`` checks, ``state_dict`` keys and
``extra_repr`` stay the library's) and only replaces ``forward``.

Example:
    >>> import torch
    >>> from gradlens.nn.hf import twin_class_for
    >>> twin_class_for(torch.nn.Linear) is None   # not a transformers class
    True
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

import gradlens.functional as GF

__all__ = ["twin_class_for"]


# ------------------------------------------------------------ the layers' own forwards
# Copies of transformers' forward methods (v4.40 to v5): only their bytecode is used,
# to recognise a class that computes exactly this. Never called.
def _llama_rms_norm_forward(self, hidden_states):  # pragma: no cover - compared, not run
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


def _t5_layer_norm_forward(self, hidden_states):  # pragma: no cover - compared, not run
    variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)

    if self.weight.dtype in [torch.float16, torch.bfloat16]:
        hidden_states = hidden_states.to(self.weight.dtype)

    return self.weight * hidden_states


def _fingerprint(fn: Any) -> Optional[tuple]:
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return (code.co_code, code.co_names, code.co_varnames, code.co_argcount, code.co_consts)


_RMS_FORWARDS = {_fingerprint(_llama_rms_norm_forward), _fingerprint(_t5_layer_norm_forward)}


# ------------------------------------------------------------------- twin forwards
def _conv1d_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # y = b + x W with W of shape (nx, nf): Linear with the weight transposed
    size_out = x.size()[:-1] + (self.nf,)
    return GF.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


def _rms_norm_forward(library_forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if hidden_states.dtype is torch.float32 and w.dtype is torch.float32 and w.shape == hidden_states.shape[-1:]:
            # y = x / sqrt(mean(x^2) + eps) * w: the library's math, in the dtype it computes in
            return GF.rms_norm(hidden_states, w.shape, w, float(self.variance_epsilon))
        return library_forward(self, hidden_states)

    return forward


def _act(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:
        return fn(input)

    return forward


_ACTIVATIONS: Dict[str, Callable[..., torch.Tensor]] = {
    "GELUActivation": _act(GF.gelu),
    "NewGELUActivation": _act(lambda x: GF.gelu(x, approximate="tanh")),
    "FastGELUActivation": _act(lambda x: GF.gelu(x, approximate="tanh")),
    "GELUTanh": _act(lambda x: GF.gelu(x, approximate="tanh")),
    "PytorchGELUTanh": _act(lambda x: GF.gelu(x, approximate="tanh")),
    "SiLUActivation": _act(GF.silu),
    # x * sigmoid(1.702 x)
    "QuickGELUActivation": _act(lambda x: GF.mul(x, GF.sigmoid(GF.mul(x, 1.702)))),
    # relu(x)^2
    "ReLUSquaredActivation": _act(lambda x: (lambda r: GF.mul(r, r))(GF.relu(x))),
}


def _twin_forward(cls: type) -> Optional[Callable[..., torch.Tensor]]:
    """The gradlens forward for a transformers class, or None when it has none."""
    name, module = cls.__name__, cls.__module__
    if name == "Conv1D":
        return _conv1d_forward
    if module == "transformers.activations" and name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    if _fingerprint(getattr(cls, "forward", None)) in _RMS_FORWARDS:
        return _rms_norm_forward(cls.forward)
    return None


_CACHE: "weakref.WeakKeyDictionary[type, Optional[type]]" = weakref.WeakKeyDictionary()


def twin_class_for(cls: type) -> Optional[type]:
    """The gradlens twin class of a ``transformers`` layer class, or ``None``.

    The twin subclasses ``cls`` and replaces only ``forward``; it is built once per
    class. Classes outside ``transformers.*`` modules always give ``None``.

    Example:
        >>> from torch import nn
        >>> twin_class_for(nn.ReLU) is None
        True
    """
    if not isinstance(cls, type) or not cls.__module__.startswith("transformers."):
        return None
    if cls in _CACHE:
        return _CACHE[cls]
    forward = _twin_forward(cls)
    twin = None
    if forward is not None:
        twin = type(cls.__name__, (cls,), {"forward": forward, "__module__": __name__, "__qualname__": cls.__qualname__})
    _CACHE[cls] = twin
    return twin
