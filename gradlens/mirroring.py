"""``gradlens.mirror``: swap every supported layer of a model for its gradlens twin."""

from __future__ import annotations

import copy
import warnings
from typing import Dict, List

from torch import nn

__all__ = ["mirror", "UnsupportedLayersWarning", "MirrorError"]

# torch containers whose forward only routes to children (no math of their own).
# nn.TransformerEncoder only canonicalizes masks and loops over its layers (plus its
# optional final norm, a child); its nested-tensor fast path runs only without grad.
_PURE_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.TransformerEncoder)


class UnsupportedLayersWarning(UserWarning):
    """Warned by :func:`gradlens.mirror` when some layers stay plain torch layers."""


class MirrorError(TypeError):
    """Raised by :func:`gradlens.mirror` with ``strict=True`` when a layer has no twin."""


def _is_torch_class(cls: type) -> bool:
    return cls.__module__.startswith("torch.")


def _shallow_twin(module: nn.Module, cls: type) -> nn.Module:
    """A new module object of class ``cls`` sharing ``module``'s parameters and buffers.

    The attribute dict and the parameter/buffer/child dicts are copied (so replacing
    a child in the twin leaves the caller's model untouched); the tensors inside them
    are the same objects (so an optimizer built on either model trains both).
    """
    twin = cls.__new__(cls)
    state = dict(module.__dict__)
    for key, value in state.items():
        # _parameters, _buffers, _modules, hook dicts, ...: own containers, same tensors.
        if isinstance(value, (dict, set)):
            state[key] = copy.copy(value)
    twin.__dict__.update(state)
    return twin


def mirror(model: nn.Module, strict: bool = False) -> nn.Module:
    """Return a model in which every supported layer is replaced by its gradlens twin.

    The twin layers (:mod:`gradlens.nn`) compute the same function as torch's, with
    backward passes written by hand in :mod:`gradlens.functional`. The returned model
    shares the caller's ``Parameter`` and buffer objects, so an optimizer built on
    either model trains both (and BatchNorm running statistics update in both); the
    caller's model object itself is not modified.

    Containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) and the
    user's own modules are handled through their children. A torch layer without a
    twin stays as it is and is listed in an :class:`UnsupportedLayersWarning` (or a
    :class:`MirrorError` with ``strict=True``). The qualified names of those layers
    are also stored on the result as ``result.gradlens_unsupported``.

    Args:
        model: the model to mirror.
        strict: raise instead of warning when a layer has no gradlens twin.

    Returns:
        The mirrored model (the same class as ``model`` at the top, or its twin).

    Example:
        >>> import torch, gradlens
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> twin = gradlens.mirror(net)
        >>> type(twin[0]).__module__
        'gradlens.nn.linear'
        >>> twin[0].weight is net[0].weight
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mirror(model=...) expects an nn.Module, got {type(model).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"mirror(strict=...) expects a bool, got {type(strict).__name__}")

    from gradlens.nn import TWINS

    unsupported: List[str] = []
    memo: Dict[int, nn.Module] = {}  # a module shared between parents is mirrored once

    def visit(module: nn.Module, name: str) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        cls = type(module)
        twin_cls = TWINS.get(cls)
        if twin_cls is not None:
            out = _shallow_twin(module, twin_cls)
        else:
            out = _shallow_twin(module, cls)
            # a torch layer with math of its own and no twin (an already mirrored layer
            # is a gradlens class, so it never counts)
            own_math = _is_torch_class(cls) and not isinstance(module, _PURE_CONTAINERS)
            if own_math:
                unsupported.append(f"{name or '(root)'} ({cls.__name__})")
        memo[id(module)] = out
        for child_name, child in module._modules.items():
            if child is not None:
                qual = f"{name}.{child_name}" if name else child_name
                out._modules[child_name] = visit(child, qual)
        return out

    result = visit(model, "")
    if unsupported:
        listed = ", ".join(unsupported)
        if strict:
            raise MirrorError(f"mirror(strict=True): no gradlens twin for {listed}")
        warnings.warn(
            f"gradlens.mirror: {len(unsupported)} layer(s) stay plain torch (no gradlens twin yet): {listed}",
            UnsupportedLayersWarning,
            stacklevel=2,
        )
    object.__setattr__(result, "gradlens_unsupported", tuple(unsupported))
    return result
