"""Dropout with a hand-written backward that reuses the forward's mask."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from gradlens.functional._util import check_tensor

__all__ = ["dropout"]


def _keep_mask(input: torch.Tensor, p: float) -> torch.Tensor:
    """The scaled keep-mask torch's CPU kernel draws: ``bernoulli(1 - p) / (1 - p)``.

    ``torch.empty_like(input).bernoulli_(1 - p)`` consumes the global generator
    exactly as ``torch.nn.functional.dropout`` does on CPU (``at::_dropout``), so with
    the same seed the mask is torch's, bit for bit. ``p == 1`` draws nothing (all zeros).
    """
    if p == 1:
        return torch.zeros((), dtype=input.dtype, device=input.device)
    noise = torch.empty_like(input).bernoulli_(1 - p)
    return noise.div_(1 - p)


class _DropoutFn(torch.autograd.Function):
    """``out = input * mask`` with ``mask`` in ``{0, 1/(1-p)}`` drawn before the call."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, mask: torch.Tensor, inplace: bool) -> torch.Tensor:
        ctx.save_for_backward(mask)
        if inplace:
            ctx.mark_dirty(input)
            return input.mul_(mask)
        return input * mask

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], None, None]:
        (mask,) = ctx.saved_tensors
        # d out / d input = mask (the very mask the forward used)
        grad_input = grad_out * mask if ctx.needs_input_grad[0] else None
        return grad_input, None, None


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    Same semantics as :func:`torch.nn.functional.dropout`: with ``training=False``,
    ``p == 0`` or an empty input it returns ``input`` itself; ``p == 1`` gives zeros
    (and zero gradients). The backward multiplies the incoming gradient by the very
    mask the forward used.

    Random stream: on CPU the mask is drawn exactly like torch's CPU kernel
    (``empty_like(input).bernoulli_(1 - p)``), so after ``torch.manual_seed(s)`` the
    result equals torch's bit for bit. On CUDA torch uses a fused Philox kernel whose
    draws cannot be reproduced from Python; there the mask has the same distribution
    (each element kept independently with probability ``1 - p``) but not torch's values.

    Args:
        input: floating-point tensor.
        p: drop probability in ``[0, 1]``.
        training: apply dropout (``False``: identity).
        inplace: write the result into ``input`` (like torch: ``input`` must not be a
            leaf that requires grad).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> x = torch.ones(8)
        >>> _ = torch.manual_seed(0); a = GF.dropout(x, 0.5)
        >>> _ = torch.manual_seed(0); b = torch.nn.functional.dropout(x, 0.5)
        >>> torch.equal(a, b), sorted(set(a.tolist())) == [0.0, 2.0]
        (True, True)
    """
    check_tensor("dropout", "input", input)
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"dropout(p=...) expects a float, got {type(p).__name__}")
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0 or input.numel() == 0:
        return input
    if not input.is_floating_point():
        raise TypeError(f"dropout(): argument 'input' must be a floating-point tensor, got {input.dtype}")
    return _DropoutFn.apply(input, _keep_mask(input, float(p)), bool(inplace))
