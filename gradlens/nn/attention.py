"""Attention twins: MultiheadAttention, its out-projection, TransformerEncoderLayer.

``MultiheadAttention`` runs :func:`gradlens.functional.multi_head_attention_forward`.
``TransformerEncoderLayer`` runs torch's slow path through its children
(``self_attn``, ``linear1``, ``dropout``, ``linear2``, ``norm1``, ``norm2``,
``dropout1``, ``dropout2``), so the children :func:`gradlens.mirror` swapped in are the
ones used; it never takes torch's fused fast path.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear as _TorchOutProj

import gradlens.functional.activation as GF
from gradlens.functional.attention import multi_head_attention_forward
from gradlens.functional.linear import linear

__all__ = ["MultiheadAttention", "NonDynamicallyQuantizableLinear", "TransformerEncoderLayer"]


class NonDynamicallyQuantizableLinear(_TorchOutProj):
    """Twin of torch's ``NonDynamicallyQuantizableLinear`` (``MultiheadAttention.out_proj``).

    A plain ``Linear`` computed by gradlens' ``linear``; it only exists so that
    :func:`gradlens.mirror` can swap ``out_proj`` (an exact-class match) too.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)


class MultiheadAttention(torch.nn.MultiheadAttention):
    """:class:`torch.nn.MultiheadAttention` computed by gradlens (torch's slow path, never the fast path).

    Same constructor, parameters (``in_proj_weight``/``in_proj_bias`` or
    ``q/k/v_proj_weight``, ``out_proj.weight``/``out_proj.bias``) and ``state_dict``
    as torch's. Supports ``batch_first``, ``key_padding_mask``, ``attn_mask``,
    ``need_weights``, ``average_attn_weights`` and ``is_causal``; ``add_bias_kv`` and
    ``add_zero_attn`` raise ``NotImplementedError`` at call time.

    Example:
        >>> import torch, gradlens
        >>> mha = gradlens.nn.MultiheadAttention(8, 2, batch_first=True)
        >>> x = torch.randn(3, 5, 8)
        >>> out, weights = mha(x, x, x)
        >>> tuple(out.shape), tuple(weights.shape)
        ((3, 5, 8), (3, 5, 5))
    """

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:
            # transpose so that "query is key is value" survives (packed in-projection)
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        separate = not self._qkv_same_embed_dim
        out, weights = multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            self.out_proj.weight,
            self.out_proj.bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            use_separate_proj_weight=separate,
            q_proj_weight=self.q_proj_weight if separate else None,
            k_proj_weight=self.k_proj_weight if separate else None,
            v_proj_weight=self.v_proj_weight if separate else None,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, weights


# torch's functional activations -> gradlens.functional's. Modules (e.g. ``nn.GELU()``)
# are children and are mirrored on their own; other callables are the user's and stay.
_ACTIVATIONS = {F.relu: GF.relu, F.gelu: GF.gelu}


def _gradlens_activation(activation: Callable[..., Any]) -> Callable[..., Any]:
    """gradlens.functional's relu/gelu for torch's, any other callable as it is."""
    return _ACTIVATIONS.get(activation, activation)


class TransformerEncoderLayer(torch.nn.TransformerEncoderLayer):
    """:class:`torch.nn.TransformerEncoderLayer` run through its children (no fused fast path).

    Same constructor, children and ``state_dict`` as torch's. ``forward`` is torch's
    slow path written out: ``self_attn`` (need_weights=False), ``dropout1``, ``norm1``,
    ``linear1``, activation, ``dropout``, ``linear2``, ``dropout2``, ``norm2``, with
    ``norm_first`` and ``batch_first``. ``activation="relu"``/``"gelu"`` (torch's
    functional) runs gradlens.functional's ``relu``/``gelu``; an activation module is
    a child (mirrored like the others); any other callable is called as is.

    Example:
        >>> import torch, gradlens
        >>> layer = gradlens.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        >>> layer(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def forward(
        self,
        src: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
            is_causal=is_causal,
        )[0]
        return self.dropout1(x)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        activation = _gradlens_activation(self.activation)
        x = self.linear2(self.dropout(activation(self.linear1(x))))
        return self.dropout2(x)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {
    torch.nn.MultiheadAttention: MultiheadAttention,
    _TorchOutProj: NonDynamicallyQuantizableLinear,
    torch.nn.TransformerEncoderLayer: TransformerEncoderLayer,
}
