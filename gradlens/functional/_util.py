"""Small helpers shared by the op families (argument checks, broadcasting)."""

from __future__ import annotations

import contextlib
from typing import Any, Sequence, Tuple, Union

import torch


def unsupported(fn: str, option: str, value: Any) -> NotImplementedError:
    """The error for an option gradlens does not implement yet (never a wrong result)."""
    return NotImplementedError(
        f"gradlens.functional.{fn}: {option}={value!r} is not supported yet; "
        f"use torch.nn.functional.{fn} for this call"
    )


def check_tensor(fn: str, name: str, value: Any, *, floating: bool = False) -> None:
    """Raise a torch-like ``TypeError`` naming the argument when it is not a (floating) tensor."""
    if not torch.is_tensor(value):
        raise TypeError(f"{fn}(): argument '{name}' must be Tensor, not {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{fn}(): argument '{name}' must be a floating-point tensor, got {value.dtype}")


def sum_to_shape(grad: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Reduce a broadcast gradient back to ``shape`` (the adjoint of broadcasting)."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    lead = grad.dim() - len(shape)
    if lead > 0:
        grad = grad.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad


def records_grad(*tensors: Any) -> bool:
    """Whether autograd would record this call (else torch's op alone gives the same result)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def expand_tuple(value: Union[int, Sequence[int]], nd: int) -> Tuple[int, ...]:
    """``3 -> (3, 3)``; ``[3] -> (3, 3)``; ``(1, 2) -> (1, 2)`` (lengths already checked by torch)."""
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(int(v) for v in value)
    return value * nd if len(value) == 1 else value


def plain_torch() -> Any:
    """A context in which torch calls skip every ``__torch_function__`` mode and subclass override.

    Inside a Function's forward, gradlens' router (:mod:`gradlens._routing`) is still on the
    mode stack while grad mode is off: it routes nothing there, but every torch call would still
    pay a Python round trip through it (~20 % of an LSTM step on CPU, our measurement).
    """
    disable = getattr(torch._C, "DisableTorchFunction", None)
    return contextlib.nullcontext() if disable is None else disable()
