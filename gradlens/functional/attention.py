"""Scaled dot-product and multi-head attention with a hand-written backward.

One autograd Function, :class:`_AttentionFn`, computes
``S = scale * Q K^T + bias``, ``P = softmax(S)``, ``A = P * keep`` (dropout) and
``O = A V``, and writes the chain rule back through all four steps, softmax's
included: ``dS = P * (dP - rowsum(dP * P))``. :func:`scaled_dot_product_attention`
and :func:`multi_head_attention_forward` are thin shells around it.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch

from gradlens.functional._util import check_tensor, sum_to_shape, unsupported
from gradlens.functional.dropout import _DropoutFn, _keep_mask
from gradlens.functional.linear import linear

__all__ = ["scaled_dot_product_attention", "multi_head_attention_forward"]


class _AttentionFn(torch.autograd.Function):
    """``(O, P)`` with ``P = softmax(scale * Q K^T + bias)`` and ``O = (P * keep) V``.

    ``bias`` (float, broadcastable to the scores; ``-inf`` masks out) and ``keep``
    (the scaled dropout mask) may be None. Rows whose scores are all ``-inf`` get
    ``P = 0`` (torch's ``_safe_softmax``), so they output 0 and pass no gradient.
    ``P`` is returned so that multi-head attention can hand out the weights; it is
    saved as an output, which keeps double backward exact.

    Q, K and V usually arrive as head-split views (``(B, L, H, E) -> (B, H, L, E)``),
    which ``matmul`` copies before each ``bmm``. The forward makes these copies once
    (the scale folded into Q's) and saves them, so the first-order backward reads
    them without copying again; the ``create_graph`` backward uses the saved inputs
    themselves, so that its result stays differentiable in Q, K and V.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: Optional[torch.Tensor],
        keep: Optional[torch.Tensor],
        scale: float,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        # scale * Q, contiguous: one pass over Q instead of a copy plus a pass over the scores
        q_scaled = torch.mul(q, scale, out=torch.empty(q.shape, dtype=q.dtype, device=q.device))
        k_c, v_c = k.contiguous(), v.contiguous()
        scores = torch.matmul(q_scaled, k_c.transpose(-2, -1))
        if bias is not None:
            # in place when the mask broadcasts into the scores (checked by the callers)
            scores = scores.add_(bias) if bias.dim() <= scores.dim() else scores + bias
        probs = torch.softmax(scores, dim=-1)
        if bias is not None:
            # fully masked rows: softmax of all -inf is NaN; torch gives 0 there
            probs.masked_fill_(scores.amax(dim=-1, keepdim=True) == float("-inf"), 0.0)
        attn = probs if keep is None else probs * keep
        out = torch.matmul(attn, v_c)
        ctx.save_for_backward(q, k, v, keep, probs, q_scaled, k_c, v_c)
        ctx.scale = scale
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.set_materialize_grads(False)
        return out, probs

    @staticmethod
    def backward(ctx: Any, grad_out: Optional[torch.Tensor], grad_probs: Optional[torch.Tensor]):
        if not torch.is_grad_enabled():  # first order: the same math on the saved copies, in place
            return _attention_backward_first_order(ctx, grad_out, grad_probs)
        q, k, v, keep, probs = ctx.saved_tensors[:5]
        need_q, need_k, need_v, need_bias = ctx.needs_input_grad[:4]
        grad_q = grad_k = grad_v = grad_bias = None
        if grad_out is not None and need_v:
            # O = A V  =>  dV = A^T dO
            attn = probs if keep is None else probs * keep
            grad_v = sum_to_shape(torch.matmul(attn.transpose(-2, -1), grad_out), v.shape)
        if need_q or need_k or need_bias:
            # O = A V  =>  dA = dO V^T ; A = P * keep  =>  dP = dA * keep (+ grad of the returned P)
            grad_p = None
            if grad_out is not None:
                grad_a = torch.matmul(grad_out, v.transpose(-2, -1))
                grad_p = grad_a if keep is None else grad_a * keep
            if grad_probs is not None:
                grad_p = grad_probs if grad_p is None else grad_p + grad_probs
            if grad_p is not None:
                # P = softmax(S)  =>  dS = P * (dP - rowsum(dP * P)) = dP*P - P * rowsum(dP*P)
                grad_pp = grad_p * probs
                grad_s = torch.addcmul(grad_pp, probs, grad_pp.sum(dim=-1, keepdim=True), value=-1.0)
                # S = scale * Q K^T + bias  =>  dQ = scale dS K ; dK = scale dS^T Q ; dbias = dS
                if need_q:
                    grad_q = sum_to_shape(torch.matmul(grad_s, k) * ctx.scale, q.shape)
                if need_k:
                    grad_k = sum_to_shape(torch.matmul(grad_s.transpose(-2, -1), q) * ctx.scale, k.shape)
                if need_bias:
                    grad_bias = sum_to_shape(grad_s, ctx.bias_shape)
        return grad_q, grad_k, grad_v, grad_bias, None, None


def _attention_backward_first_order(ctx: Any, grad_out: Optional[torch.Tensor], grad_probs: Optional[torch.Tensor]):
    """:class:`_AttentionFn`'s backward without ``create_graph``: the forward's contiguous
    copies of Q (scaled), K and V, and in-place updates of the temporaries it owns."""
    q, k, v, keep, probs, q_scaled, k_c, v_c = ctx.saved_tensors
    need_q, need_k, need_v, need_bias = ctx.needs_input_grad[:4]
    grad_q = grad_k = grad_v = grad_bias = None
    if grad_out is not None:
        grad_out = grad_out.contiguous()  # read by two products below: copy it at most once
    if grad_out is not None and need_v:
        # O = A V  =>  dV = A^T dO
        attn = probs if keep is None else probs * keep
        grad_v = sum_to_shape(torch.matmul(attn.transpose(-2, -1), grad_out), v.shape)
    if not (need_q or need_k or need_bias) or (grad_out is None and grad_probs is None):
        return grad_q, grad_k, grad_v, grad_bias, None, None
    # O = A V  =>  dA = dO V^T ; A = P * keep  =>  dP = dA * keep (+ grad of the returned P)
    if grad_out is not None:
        grad_p = torch.matmul(grad_out, v_c.transpose(-2, -1))
        if keep is not None:
            grad_p.mul_(keep)
        if grad_probs is not None:
            grad_p.add_(grad_probs)
        grad_pp = grad_p.mul_(probs)
    else:
        grad_pp = grad_probs * probs
    # P = softmax(S)  =>  dS = dP*P - P * rowsum(dP*P)
    grad_s = grad_pp.addcmul_(probs, grad_pp.sum(dim=-1, keepdim=True), value=-1.0)
    # S = (scale Q) K^T + bias  =>  dQ = scale dS K ; dK = dS^T (scale Q) ; dbias = dS
    if need_q:
        grad_q = sum_to_shape(torch.matmul(grad_s, k_c).mul_(ctx.scale), q.shape)
    if need_k:
        grad_k = sum_to_shape(torch.matmul(grad_s.transpose(-2, -1), q_scaled), k.shape)
    if need_bias:
        grad_bias = sum_to_shape(grad_s, ctx.bias_shape)
    return grad_q, grad_k, grad_v, grad_bias, None, None


def _check_dropout_p(fn: str, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{fn}(dropout_p=...) expects a float, got {type(p).__name__}")
    if p < 0.0 or p > 1.0:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {p}")
    return float(p)


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    dropout_p: float,
    scale: float,
    *,
    need_weights: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run :class:`_AttentionFn`; returns ``(out, weights after dropout or None)``.

    The dropout mask is drawn over the full weight shape exactly as torch's CPU
    kernels draw it (``empty_like(weights).bernoulli_(1 - p)``), before the call.
    The weights are built only when ``need_weights``.
    """
    keep = None
    if dropout_p > 0.0:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        shape = (*batch, q.shape[-2], k.shape[-2])
        if bias is not None:
            shape = torch.broadcast_shapes(shape, bias.shape)
        keep = _keep_mask(torch.empty(shape, dtype=q.dtype, device=q.device), dropout_p)
    out, probs = _AttentionFn.apply(q, k, v, bias, keep, scale)
    if not need_weights:
        return out, None
    return out, probs if keep is None else _DropoutFn.apply(probs, keep, False)


def _causal_bias(L: int, S: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive ``(L, S)`` mask: 0 where key position <= query position (upper-left aligned), else -inf."""
    causal = torch.ones(L, S, dtype=torch.bool, device=device).tril()
    return torch.zeros(L, S, dtype=dtype, device=device).masked_fill(~causal, float("-inf"))


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``softmax(Q K^T * scale + mask) V``, like :func:`torch.nn.functional.scaled_dot_product_attention`.

    The backward is written by hand (softmax's included); boolean masks (``True``
    takes part), float masks (added to the scores, and differentiable), ``is_causal``
    (upper-left aligned when ``L != S``), a custom ``scale``, broadcastable batch
    dimensions, ``dropout_p`` and ``enable_gqa`` are supported. Rows that are fully
    masked output 0, as in torch.

    Dropout: on CPU the mask is drawn exactly like torch's math kernel, so with the
    same seed the result equals torch's; on CUDA torch's fused kernels draw
    differently (same distribution, different values).

    Args:
        query: ``(..., L, E)``; key: ``(..., S, E)``; value: ``(..., S, Ev)``.
        attn_mask: bool or float (query's dtype), broadcastable to ``(..., L, S)``.
        dropout_p: dropout probability on the attention weights (always applied
            when > 0, as in torch).
        is_causal: mask out key positions after the query position.
        scale: score scale (default ``1 / sqrt(E)``).
        enable_gqa: grouped-query attention (query heads a multiple of key heads).

    Returns:
        ``(..., L, Ev)``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> q, k, v = torch.randn(2, 4, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 3)
        >>> out = GF.scaled_dot_product_attention(q, k, v, is_causal=True)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
        True
    """
    fn = "scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(fn, name, t)
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise RuntimeError(
            "Expected query, key, and value to all be at least 2 dimensional, but got "
            f"query.dim: {query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead."
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(
            "Expected query, key, and value to have the same dtype, but got "
            f"query.dtype: {query.dtype} key.dtype: {key.dtype} and value.dtype: {value.dtype} instead."
        )
    if not query.is_floating_point():
        raise RuntimeError(f"scaled_dot_product_attention(): expected floating-point query, key and value, got {query.dtype}")
    if query.shape[-1] != key.shape[-1]:
        raise RuntimeError(f"scaled_dot_product_attention(): query's last dim {query.shape[-1]} != key's {key.shape[-1]}")
    if key.shape[-2] != value.shape[-2]:
        raise RuntimeError(f"scaled_dot_product_attention(): key's sequence length {key.shape[-2]} != value's {value.shape[-2]}")
    p = _check_dropout_p(fn, dropout_p)
    if attn_mask is not None:
        check_tensor(fn, "attn_mask", attn_mask)
        if attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            raise RuntimeError(
                "Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                f"attn_mask.dtype: {attn_mask.dtype} and query.dtype: {query.dtype} instead."
            )
        if is_causal:
            raise RuntimeError("scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scaled_dot_product_attention(scale=...) expects a float or None, got {type(scale).__name__}")

    gqa = bool(enable_gqa) and query.dim() >= 3 and query.shape[-3] != key.shape[-3]
    if gqa:
        hq, hk = query.shape[-3], key.shape[-3]
        if hk != value.shape[-3] or hq % hk != 0:
            raise RuntimeError(
                f"scaled_dot_product_attention(enable_gqa=True): query heads ({hq}) must be a multiple of key heads "
                f"({hk}) and key and value must have the same number of heads ({value.shape[-3]})"
            )
    L, S = query.shape[-2], key.shape[-2]
    bias = None
    if is_causal:
        bias = _causal_bias(L, S, query.dtype, query.device)
    elif attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attn_mask, float("-inf"))
        else:
            bias = attn_mask
    if bias is not None:
        try:
            kv_batch = (*key.shape[:-3], query.shape[-3]) if gqa else key.shape[:-2]
            scores_shape = (*torch.broadcast_shapes(query.shape[:-2], kv_batch), L, S)
            ok = torch.broadcast_shapes(bias.shape, scores_shape) == torch.Size(scores_shape)
        except RuntimeError:
            ok, scores_shape = False, "?"
        if not ok:
            raise RuntimeError(
                f"scaled_dot_product_attention(attn_mask=...): shape {tuple(bias.shape)} is not broadcastable "
                f"to the attention weights' shape {scores_shape}"
            )

    if gqa:
        # group g of query heads shares key/value head g: broadcast instead of repeating
        q5 = query.unflatten(-3, (hk, hq // hk))
        k5, v5 = key.unsqueeze(-3), value.unsqueeze(-3)
        if bias is not None and bias.dim() >= 3:
            bias = bias.unflatten(-3, (hk, hq // hk)) if bias.shape[-3] == hq else bias.unsqueeze(-3)
        out, _ = _attention(q5, k5, v5, bias, p, float(scale), need_weights=False)
        return out.flatten(-4, -3)
    out, _ = _attention(query, key, value, bias, p, float(scale), need_weights=False)
    return out


# --- multi-head attention --------------------------------------------------------------


def _canonical_mask(mask: Optional[torch.Tensor], name: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """Bool masks (``True`` = masked out) -> additive float masks; float masks pass through."""
    if mask is None:
        return None
    check_tensor("multi_head_attention_forward", name, mask)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"multi_head_attention_forward({name}=...): only bool and floating types are supported, got {mask.dtype}")
    return mask


def multi_head_attention_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Optional[torch.Tensor],
    in_proj_bias: Optional[torch.Tensor],
    bias_k: Optional[torch.Tensor],
    bias_v: Optional[torch.Tensor],
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: Optional[torch.Tensor],
    training: bool = True,
    key_padding_mask: Optional[torch.Tensor] = None,
    need_weights: bool = True,
    attn_mask: Optional[torch.Tensor] = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Optional[torch.Tensor] = None,
    k_proj_weight: Optional[torch.Tensor] = None,
    v_proj_weight: Optional[torch.Tensor] = None,
    static_k: Optional[torch.Tensor] = None,
    static_v: Optional[torch.Tensor] = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Multi-head attention, like :func:`torch.nn.functional.multi_head_attention_forward`.

    Built on gradlens' ``linear`` (the in- and out-projections) and the hand-written
    attention Function behind :func:`scaled_dot_product_attention`. Supported:
    packed (``in_proj_weight``) or separate (``use_separate_proj_weight``) projection
    weights, ``in_proj_bias``/``out_proj_bias``, ``key_padding_mask`` and ``attn_mask``
    (bool: ``True`` masks out; or float, added), ``need_weights`` with
    ``average_attn_weights``, dropout (same CPU random stream as torch) and
    ``is_causal`` (a hint that ``attn_mask`` is causal, as in torch). Not supported yet
    (``NotImplementedError``): ``bias_k``/``bias_v``, ``add_zero_attn``,
    ``static_k``/``static_v``.

    Shapes: ``query (L, N, E)``, ``key``/``value (S, N, E)`` (or unbatched ``(L, E)``,
    ``(S, E)``). Returns ``(output (L, N, E), weights (N, L, S) or (N, H, L, S) or None)``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> mha = torch.nn.MultiheadAttention(8, 2)
        >>> x = torch.randn(5, 3, 8)
        >>> args = (x, x, x, 8, 2, mha.in_proj_weight, mha.in_proj_bias, None, None, False, 0.0,
        ...         mha.out_proj.weight, mha.out_proj.bias)
        >>> ours, w = GF.multi_head_attention_forward(*args)
        >>> theirs, _ = torch.nn.functional.multi_head_attention_forward(*args)
        >>> torch.allclose(ours, theirs, atol=1e-6), tuple(w.shape)
        (True, (3, 5, 5))
    """
    fn = "multi_head_attention_forward"
    if bias_k is not None or bias_v is not None:
        raise unsupported(fn, "bias_k/bias_v", "set")
    if add_zero_attn:
        raise unsupported(fn, "add_zero_attn", add_zero_attn)
    if static_k is not None or static_v is not None:
        raise unsupported(fn, "static_k/static_v", "set")
    for name, t in (("query", query), ("key", key), ("value", value), ("out_proj_weight", out_proj_weight)):
        check_tensor(fn, name, t, floating=True)
    if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(
            f"{fn}(): query, key and value must all be 3-D (batched) or 2-D (unbatched), got "
            f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D"
        )
    is_batched = query.dim() == 3
    if not is_batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    src_len = key.shape[0]
    key_padding_mask = _canonical_mask(key_padding_mask, "key_padding_mask", query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
            "`generate_square_subsequent_mask` to create this mask."
        )
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # as torch: the hint replaces the mask (upper-left causal)
    else:
        attn_mask = _canonical_mask(attn_mask, "attn_mask", query.dtype)
        if key_padding_mask is not None:
            is_causal = False
    if embed_dim != embed_dim_to_check:
        raise ValueError(f"{fn}(): was expecting embedding dimension of {embed_dim_to_check}, but got {embed_dim}")
    if not isinstance(num_heads, int) or num_heads <= 0 or embed_dim % num_heads:
        raise ValueError(f"{fn}(num_heads=...): embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    head_dim = embed_dim // num_heads
    if key.shape[:2] != value.shape[:2] or key.shape[1] != bsz:
        raise ValueError(
            f"{fn}(): key's sequence and batch dims {tuple(key.shape[:2])} must match value's "
            f"{tuple(value.shape[:2])} and query's batch size {bsz}"
        )

    # in-projections (one matmul when query, key and value are the same tensor)
    if not use_separate_proj_weight:
        if in_proj_weight is None:
            raise ValueError(f"{fn}(): use_separate_proj_weight is False but in_proj_weight is None")
        if key.shape != value.shape:
            raise ValueError(f"{fn}(): key shape {tuple(key.shape)} does not match value shape {tuple(value.shape)}")
        if query is key and key is value:
            q, k, v = linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_k, w_v = in_proj_weight.chunk(3)
            b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
            q = linear(query, w_q, b_q)
            if key is value:
                k, v = linear(key, torch.cat([w_k, w_v]), None if in_proj_bias is None else torch.cat([b_k, b_v])).chunk(2, dim=-1)
            else:
                k, v = linear(key, w_k, b_k), linear(value, w_v, b_v)
    else:
        for name, w in (("q_proj_weight", q_proj_weight), ("k_proj_weight", k_proj_weight), ("v_proj_weight", v_proj_weight)):
            if w is None:
                raise ValueError(f"{fn}(): use_separate_proj_weight is True but {name} is None")
        b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        q = linear(query, q_proj_weight, b_q)
        k = linear(key, k_proj_weight, b_k)
        v = linear(value, v_proj_weight, b_v)

    # attention mask: (L, S) or (N*H, L, S), plus key padding (N, S) -> (N or 1, H or 1, L, S)
    bias = None
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be {(tgt_len, src_len)}.")
            bias = attn_mask.view(1, 1, tgt_len, src_len)
        elif attn_mask.dim() == 3:
            if tuple(attn_mask.shape) != (bsz * num_heads, tgt_len, src_len):
                raise RuntimeError(
                    f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be {(bsz * num_heads, tgt_len, src_len)}."
                )
            bias = attn_mask.view(bsz, num_heads, tgt_len, src_len)
        else:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (bsz, src_len):
            raise RuntimeError(
                f"expecting key_padding_mask shape of {(bsz, src_len)}, but got {tuple(key_padding_mask.shape)}"
            )
        pad = key_padding_mask.view(bsz, 1, 1, src_len)
        bias = pad if bias is None else bias + pad
    if is_causal and bias is None:
        bias = _causal_bias(tgt_len, src_len, query.dtype, query.device)

    # (L, N, H*hd) -> (N, H, L, hd)
    q = q.reshape(tgt_len, bsz, num_heads, head_dim).permute(1, 2, 0, 3)
    k = k.reshape(src_len, bsz, num_heads, head_dim).permute(1, 2, 0, 3)
    v = v.reshape(src_len, bsz, num_heads, head_dim).permute(1, 2, 0, 3)
    p = _check_dropout_p(fn, dropout_p) if training else 0.0
    out, weights = _attention(q, k, v, bias, p, 1.0 / math.sqrt(head_dim), need_weights=need_weights)

    out = out.permute(2, 0, 1, 3).reshape(tgt_len * bsz, embed_dim)
    out = linear(out, out_proj_weight, out_proj_bias).view(tgt_len, bsz, -1)
    if weights is not None:
        weights = weights.expand(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    if not is_batched:
        out = out.squeeze(1)
        if weights is not None:
            weights = weights.squeeze(0)
    return out, weights
