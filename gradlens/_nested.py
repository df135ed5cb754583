"""Tensors inside nested outputs and inputs (lists, tuples, dicts; a HF ``ModelOutput`` is a
dict), shared by ``gradlens.verify`` and the monitor's replay. Internal, not public API."""

from __future__ import annotations

from typing import Any, List, Tuple

from torch import Tensor

__all__ = ["named_tensors", "floating"]


def named_tensors(value: Any, path: str = "") -> List[Tuple[str, Tensor]]:
    """Every tensor in ``value``, depth first, with its path (``path[0]['logits']``).

    >>> import torch
    >>> [p for p, _ in named_tensors({"a": torch.zeros(1), "b": [torch.ones(1), 3]}, "out")]
    ["out['a']", "out['b'][0]"]
    """
    if isinstance(value, Tensor):
        return [(path, value)]
    if isinstance(value, (list, tuple)):
        return [t for i, v in enumerate(value) for t in named_tensors(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in named_tensors(v, f"{path}[{k!r}]")]
    return []


def floating(t: Tensor) -> bool:
    """Whether ``t`` holds real or complex floating values (the ones with gradients)."""
    return t.is_floating_point() or t.is_complex()
