"""``GradlensCallback`` for a Hugging Face ``transformers.Trainer``.

The statistics of each optimizer step are those of the gradients the update
uses (after accumulation and after ``max_grad_norm`` clipping; with
``max_grad_norm=0`` the total norm equals the ``grad_norm`` the Trainer logs). The
loss of a step is the mean of the losses the model returned in that step's
forwards (``outputs.loss``), before the Trainer divides it for accumulation.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional

from gradlens.integrations import _attach, _require, _watch_options

_tc = _require("transformers.trainer_callback", "transformers")

__all__ = ["GradlensCallback"]


def _loss_of(output: Any) -> Any:
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if getattr(loss, "numel", lambda: 0)() == 1 else None


class GradlensCallback(_tc.TrainerCallback):
    """Watch the model and optimizer of a ``transformers.Trainer``.

    Args:
        **watch_options: keyword options of :func:`gradlens.watch`.

    At ``on_train_begin`` it attaches to the model and to the optimizer inside the
    Trainer's accelerate wrapper, and writes TensorBoard events to ``logdir``
    (default: ``args.logging_dir`` where the Trainer has one, else
    ``$TENSORBOARD_LOGGING_DIR``, else ``<output_dir>/gradlens``; main process only).
    Each log entry gets ``gradlens_problems`` (the number of warning/error
    findings so far) and, when new ones appeared, ``gradlens_new`` (their one-line
    summaries). The monitor is closed at ``on_train_end`` and stays readable as
    :attr:`monitor`.

    Example:
        >>> from gradlens.integrations.transformers import GradlensCallback
        >>> GradlensCallback(every=5).monitor is None
        True
    """

    def __init__(self, **watch_options: Any) -> None:
        self._options = _watch_options("GradlensCallback", watch_options)
        self.monitor: Optional[Any] = None
        self._handle: Any = None
        self._reported = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            warnings.warn("gradlens: GradlensCallback got no model or optimizer at on_train_begin; "
                          "training goes on without it", RuntimeWarning, stacklevel=2)
            return
        options = dict(self._options)
        if not state.is_world_process_zero:
            options.pop("logdir", None)
            options.pop("writer", None)
        elif "logdir" not in options and "writer" not in options:
            options["logdir"] = (getattr(args, "logging_dir", None) or os.getenv("TENSORBOARD_LOGGING_DIR")
                                 or os.path.join(args.output_dir, "gradlens"))
        monitor = self.monitor = _attach("GradlensCallback", model, optimizer, options)
        if monitor is None:
            return

        def observe(module: Any, inputs: Any, output: Any) -> None:
            loss = _loss_of(output)
            if loss is not None and module.training and loss.requires_grad:
                monitor.observe_loss(loss.detach())

        self._handle = model.register_forward_hook(observe)

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, Any]] = None,
               **kwargs: Any) -> None:
        if self.monitor is None or logs is None:
            return
        problems = [f for f in self.monitor.findings if f.is_problem]
        ours = {"gradlens_problems": len(problems)}
        if len(problems) > self._reported:
            ours["gradlens_new"] = "; ".join(str(f) for f in problems[self._reported:])
            self._reported = len(problems)
        logs.update(ours)  # seen by the callbacks after this one (printer, TensorBoard, ...)
        history = getattr(state, "log_history", None)
        if history and all(history[-1].get(k) == v for k, v in logs.items() if k not in ours):
            history[-1].update(ours)  # the Trainer copied this entry before the callbacks ran

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.monitor is not None:
            self.monitor.close()
