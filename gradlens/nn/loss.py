"""Loss modules whose forward runs :mod:`gradlens.functional.loss`.

Each twin subclasses the torch loss of the same name and replaces only ``forward``,
so constructor arguments (deprecated ``size_average``/``reduce`` included), the
``weight``/``pos_weight`` buffers, ``state_dict`` and ``isinstance`` are torch's.

Example:
    >>> import torch, gradlens
    >>> loss_fn = gradlens.nn.CrossEntropyLoss(label_smoothing=0.1)
    >>> logits = torch.randn(4, 3, requires_grad=True)
    >>> loss = loss_fn(logits, torch.tensor([0, 1, 2, 1]))
    >>> loss.backward()
    >>> isinstance(loss_fn, torch.nn.CrossEntropyLoss)
    True
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from gradlens.functional import loss as _F

__all__ = ["MSELoss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss"]


class MSELoss(torch.nn.MSELoss):
    """``torch.nn.MSELoss`` computed by :func:`gradlens.functional.mse_loss`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.MSELoss(reduction="sum")(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(5.)
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _F.mse_loss(input, target, reduction=self.reduction)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by :func:`gradlens.functional.cross_entropy`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.CrossEntropyLoss()(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _F.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class NLLLoss(torch.nn.NLLLoss):
    """``torch.nn.NLLLoss`` computed by :func:`gradlens.functional.nll_loss`.

    Example:
        >>> import torch, gradlens
        >>> logp = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> gradlens.nn.NLLLoss()(logp, torch.tensor([1]))
        tensor(0.6931)
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` computed by :func:`gradlens.functional.binary_cross_entropy_with_logits`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.BCEWithLogitsLoss()(torch.zeros(2), torch.tensor([0.0, 1.0]))
        tensor(0.6931)
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _F.binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: Dict[type, type] = {
    torch.nn.MSELoss: MSELoss,
    torch.nn.CrossEntropyLoss: CrossEntropyLoss,
    torch.nn.NLLLoss: NLLLoss,
    torch.nn.BCEWithLogitsLoss: BCEWithLogitsLoss,
}
