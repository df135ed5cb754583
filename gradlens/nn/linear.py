"""``gradlens.nn.Linear``: ``torch.nn.Linear`` whose forward runs :func:`gradlens.functional.linear`.

Example:
    >>> import torch, gradlens
    >>> layer = gradlens.nn.Linear(3, 2)
    >>> layer(torch.randn(4, 3)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

import torch

from gradlens.functional.linear import linear

__all__ = ["Linear"]


class Linear(torch.nn.Linear):
    """Twin of :class:`torch.nn.Linear` (same constructor, parameters and ``state_dict``).

    Only ``forward`` differs: it runs the hand-written backward of
    :func:`gradlens.functional.linear`.

    Example:
        >>> import torch, gradlens
        >>> layer = gradlens.nn.Linear(3, 2, bias=False)
        >>> isinstance(layer, torch.nn.Linear), sorted(layer.state_dict())
        (True, ['weight'])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {torch.nn.Linear: Linear}
