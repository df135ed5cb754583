"""Embedding lookup with a hand-written backward (an ``index_add`` of gradient rows)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from gradlens.functional._util import check_tensor, unsupported

__all__ = ["embedding"]


class _EmbeddingFn(torch.autograd.Function):
    """``out[..., :] = weight[input[...], :]``; only ``weight`` is differentiable."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, indices: torch.Tensor, padding_idx: int, scale_grad_by_freq: bool) -> torch.Tensor:
        # torch's own lookup: fastest, and it raises torch's errors for bad indices/dtypes.
        out = torch.embedding(weight, indices, padding_idx, scale_grad_by_freq, False)
        ctx.save_for_backward(indices)
        ctx.num_weights = weight.shape[0]
        ctx.padding_idx = padding_idx
        ctx.scale_grad_by_freq = scale_grad_by_freq
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (indices,) = ctx.saved_tensors
        flat = indices.reshape(-1)
        rows = grad_out.reshape(flat.numel(), grad_out.shape[-1])
        if ctx.scale_grad_by_freq:
            # scale_grad_by_freq: each row's gradient is divided by how often its index occurs
            # (index_add, not bincount: no host sync on CUDA)
            counts = rows.new_zeros(ctx.num_weights).index_add_(0, flat, torch.ones_like(flat, dtype=rows.dtype))
            rows = rows / counts[flat].unsqueeze(1)
        # d out[n] / d weight[input[n]] = I: weight row j collects the grad rows that looked it up
        # (in place on our own zeros: still differentiable in grad_out for double backward)
        grad_weight = rows.new_zeros(ctx.num_weights, rows.shape[1]).index_add_(0, flat, rows)
        if ctx.padding_idx >= 0:
            # the padding row receives no gradient
            grad_weight[ctx.padding_idx] = 0
        return grad_weight, None, None, None


def embedding(
    input: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: Optional[int] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> torch.Tensor:
    """Look up rows of ``weight`` by index, like :func:`torch.nn.functional.embedding`.

    The backward adds each output-gradient row into the weight row it was read from
    (an ``index_add``); the ``padding_idx`` row gets no gradient, and with
    ``scale_grad_by_freq=True`` each row's gradient is divided by the number of times
    its index occurs in ``input``. ``max_norm`` and ``sparse=True`` are not supported
    yet (``NotImplementedError``).

    Args:
        input: integer tensor of indices, any shape.
        weight: ``(num_embeddings, embedding_dim)`` floating-point matrix.
        padding_idx: row that receives no gradient (negative counts from the end).
        max_norm, norm_type: not supported yet (``max_norm`` must be None).
        scale_grad_by_freq: scale gradients by the inverse index frequency.
        sparse: must be False (dense gradients only).

    Returns:
        ``input.shape + (embedding_dim,)``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> w = torch.randn(10, 3, requires_grad=True)
        >>> GF.embedding(torch.tensor([[1, 2], [4, 1]]), w, padding_idx=4).sum().backward()
        >>> w.grad[1].tolist(), w.grad[4].tolist()
        ([2.0, 2.0, 2.0], [0.0, 0.0, 0.0])
    """
    check_tensor("embedding", "input", input)
    check_tensor("embedding", "weight", weight)
    if max_norm is not None:
        raise unsupported("embedding", "max_norm", max_norm)
    if sparse:
        raise unsupported("embedding", "sparse", sparse)
    if weight.dim() != 2:
        raise RuntimeError(f"embedding(): 'weight' must be 2-D, got a {weight.dim()}-D tensor")
    if padding_idx is None:
        padding_idx = -1
    else:
        num = weight.shape[0]
        if not -num <= padding_idx < num:
            raise ValueError(f"embedding(padding_idx=...) must be within num_embeddings ({num}), got {padding_idx}")
        if padding_idx < 0:
            padding_idx += num
    return _EmbeddingFn.apply(weight, input, padding_idx, bool(scale_grad_by_freq))
