"""Where recorded statistics go: TensorBoard (:mod:`.tensorboard`) and pandas (:mod:`.dataframe`).

The gradient-flow figure (:mod:`.figure`) and the run overview (:mod:`.overview`) are drawn
for TensorBoard, ``gradlens report --plot`` and notebooks alike.

Sinks receive host-side :class:`~gradlens._record.StepRecord` objects only; they
never touch tensors on the device. A sink that fails (full disk, closed writer)
warns once and then goes quiet (:class:`Sink`), so training never breaks.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

__all__ = ["Sink"]

_log = logging.getLogger("gradlens")


class Sink:
    """Base class: :meth:`_guard` runs a write and swallows failures after one warning."""

    name = "sink"

    def __init__(self) -> None:
        self.failed = False

    def _guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a sink must never break training
            self.failed = True
            msg = (
                f"gradlens: the {self.name} sink failed ({type(exc).__name__}: {exc}); "
                "it is disabled for the rest of this run, training goes on"
            )
            _log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            return None
