"""``gradlens.nn.Embedding``: torch's Embedding computed by :func:`gradlens.functional.embedding`."""

from __future__ import annotations

import torch

from gradlens.functional.sparse import embedding

__all__ = ["Embedding"]


class Embedding(torch.nn.Embedding):
    """:class:`torch.nn.Embedding` whose lookup and backward are gradlens'.

    Same constructor, parameter (``weight``) and ``state_dict`` as torch's; only
    ``forward`` differs. ``max_norm`` and ``sparse=True`` raise ``NotImplementedError``
    at call time.

    Example:
        >>> import torch, gradlens
        >>> emb = gradlens.nn.Embedding(10, 3, padding_idx=0)
        >>> emb(torch.tensor([[0, 4, 4]])).shape
        torch.Size([1, 3, 3])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return embedding(
            input,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {torch.nn.Embedding: Embedding}
