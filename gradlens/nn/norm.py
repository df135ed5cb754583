"""Normalization modules built on :mod:`gradlens.functional.norm`.

Each class subclasses the torch module of the same name and only replaces
``forward``, so parameters, buffers (``running_mean``, ``running_var``,
``num_batches_tracked``) and ``state_dict`` are torch's. The BatchNorm forward
repeats torch's module logic step for step (``num_batches_tracked`` increment,
``momentum=None`` as a cumulative average, ``track_running_stats=False``, eval with
or without running statistics) and only calls gradlens' ``batch_norm``.

Example:
    >>> import torch, gradlens
    >>> bn = gradlens.nn.BatchNorm2d(3)
    >>> sorted(bn.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
"""

from __future__ import annotations

import torch
from torch import nn

from gradlens.functional import norm as _F

__all__ = ["LayerNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "RMSNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class LayerNorm(nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` computed by :func:`gradlens.functional.layer_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` computed by :func:`gradlens.functional.group_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """:class:`torch.nn.RMSNorm` computed by :func:`gradlens.functional.rms_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


def _batch_norm_forward(module: nn.modules.batchnorm._BatchNorm, input: torch.Tensor) -> torch.Tensor:
    """torch's ``_BatchNorm.forward``, step for step, with gradlens' ``batch_norm``."""
    module._check_input_dim(input)
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:  # cumulative moving average
            factor = 1.0 / float(module.num_batches_tracked)
        else:  # exponential moving average
            factor = module.momentum
    # Batch statistics in training, and in eval when there are no running buffers.
    bn_training = module.training or (module.running_mean is None and module.running_var is None)
    # Buffers are passed only where they are updated (training + tracked) or used (eval).
    use_buffers = not module.training or module.track_running_stats
    return _F.batch_norm(
        input,
        module.running_mean if use_buffers else None,
        module.running_var if use_buffers else None,
        module.weight,
        module.bias,
        bn_training,
        factor,
        module.eps,
    )


class BatchNorm1d(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` computed by :func:`gradlens.functional.batch_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_forward(self, input)


class BatchNorm2d(nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` computed by :func:`gradlens.functional.batch_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_forward(self, input)


class BatchNorm3d(nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` computed by :func:`gradlens.functional.batch_norm`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_forward(self, input)


def _instance_norm(module: nn.modules.instancenorm._InstanceNorm, input: torch.Tensor) -> torch.Tensor:
    """torch's ``_InstanceNorm._apply_instance_norm`` with gradlens' ``instance_norm``."""
    return _F.instance_norm(
        input, module.running_mean, module.running_var, module.weight, module.bias,
        module.training or not module.track_running_stats,
        module.momentum if module.momentum is not None else 0.0, module.eps,
    )


class InstanceNorm1d(nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` computed by :func:`gradlens.functional.instance_norm`.

    torch's ``forward`` (its checks, unbatched input) calls ``_apply_instance_norm``, which this replaces.
    """

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        return _instance_norm(self, input)


class InstanceNorm2d(nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` computed by :func:`gradlens.functional.instance_norm`.

    Example:
        >>> import torch, gradlens
        >>> gradlens.nn.InstanceNorm2d(3, affine=True)(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        return _instance_norm(self, input)


class InstanceNorm3d(nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` computed by :func:`gradlens.functional.instance_norm`."""

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        return _instance_norm(self, input)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {
    nn.LayerNorm: LayerNorm,
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
    nn.InstanceNorm1d: InstanceNorm1d,
    nn.InstanceNorm2d: InstanceNorm2d,
    nn.InstanceNorm3d: InstanceNorm3d,
    nn.GroupNorm: GroupNorm,
    nn.RMSNorm: RMSNorm,
}
