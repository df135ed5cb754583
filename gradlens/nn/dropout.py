"""``gradlens.nn.Dropout``: torch's Dropout computed by :func:`gradlens.functional.dropout`."""

from __future__ import annotations

import torch

from gradlens.functional.dropout import dropout

__all__ = ["Dropout"]


class Dropout(torch.nn.Dropout):
    """:class:`torch.nn.Dropout` whose mask and backward are gradlens'.

    Identity in ``eval()`` mode; in training, the same CPU random stream as torch
    (see :func:`gradlens.functional.dropout`).

    Example:
        >>> import torch, gradlens
        >>> drop = gradlens.nn.Dropout(0.5).eval()
        >>> x = torch.randn(4)
        >>> drop(x) is x
        True
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dropout(input, self.p, self.training, self.inplace)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {torch.nn.Dropout: Dropout}
