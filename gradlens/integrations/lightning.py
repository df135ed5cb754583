"""``GradlensCallback`` for ``lightning.pytorch``: gradlens attached to a Trainer.

The statistics of each optimizer step are those of the gradients the update
uses: after gradient accumulation, unscaled under ``precision="16-mixed"``, and
after ``gradient_clip_val`` clipping (Lightning clips right before the update,
and gradlens reads the gradients there). The loss of a step is the mean of its
micro-batches' losses, un-divided by ``accumulate_grad_batches``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from gradlens.integrations import _attach, _require, _watch_options

_pl = _require("lightning.pytorch", "lightning")

__all__ = ["GradlensCallback"]


class GradlensCallback(_pl.Callback):
    """Watch a LightningModule while a ``lightning.pytorch.Trainer`` fits it.

    Args:
        **watch_options: keyword options of :func:`gradlens.watch` (``every``,
            ``activations``, ``group_depth``, ``logdir``, ``halt_on``, ...).

    At fit start the callback attaches to the LightningModule and to
    ``trainer.optimizers``. TensorBoard events go into the Trainer's
    ``TensorBoardLogger`` experiment when it has one, else into ``logdir`` (default
    ``<default_root_dir>/gradlens``); under DDP only global rank 0 writes. The
    monitor is closed at fit end (or when fit raises) and stays readable as
    :attr:`monitor`.

    Example:
        >>> from gradlens.integrations.lightning import GradlensCallback
        >>> cb = GradlensCallback(every=10)
        >>> cb.monitor is None
        True
    """

    def __init__(self, **watch_options: Any) -> None:
        super().__init__()
        self._options = _watch_options("GradlensCallback", watch_options)
        self.monitor: Optional[Any] = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        options = dict(self._options)
        if not trainer.is_global_zero:
            options.pop("logdir", None)
            options.pop("writer", None)
        elif "logdir" not in options and "writer" not in options:
            experiment = None
            for logger in trainer.loggers:
                if isinstance(logger, _pl.loggers.TensorBoardLogger):
                    experiment = logger.experiment
                    break
            if experiment is not None:
                options["writer"] = experiment
            else:
                options["logdir"] = os.path.join(trainer.default_root_dir, "gradlens")
        self.monitor = _attach("GradlensCallback", pl_module, list(trainer.optimizers), options)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self.monitor is None:
            return
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divided it for accumulation
        self.monitor.observe_loss(loss.detach())

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
