"""Thin callbacks over :func:`gradlens.watch` for the training frameworks people use.

* :mod:`gradlens.integrations.lightning`: ``GradlensCallback`` for a
  ``lightning.pytorch.Trainer`` (extra: ``pip install gradlens[lightning]``);
* :mod:`gradlens.integrations.transformers`: ``GradlensCallback`` for a Hugging Face
  ``transformers.Trainer`` (extra: ``pip install gradlens[transformers]``).

Neither framework is imported by ``import gradlens``; each module imports its own
framework and names the extra to install when it is missing.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict

__all__: list = []


def _require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ImportError naming the gradlens extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"gradlens.integrations.{extra} needs {module!r}; install it with: pip install 'gradlens[{extra}]'"
        ) from exc


def _attach(owner: str, model: Any, optimizers: Any, options: Dict[str, Any]) -> Any:
    """``gradlens.watch(model, optimizers, **options)``, or None with a warning when it
    cannot attach: a callback runs inside the user's training loop, which gradlens
    must never stop."""
    import warnings

    import gradlens

    try:
        return gradlens.watch(model, optimizers, **options)
    except (TypeError, ValueError) as exc:
        warnings.warn(f"gradlens: {owner} could not attach ({exc}); training goes on without it",
                      RuntimeWarning, stacklevel=3)
        return None


def _watch_options(owner: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Check that ``options`` are keyword options of :func:`gradlens.watch`."""
    from gradlens.monitor.monitor import watch

    allowed = [n for n, p in inspect.signature(watch).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{owner}() got unknown watch option(s) {unknown}; expected some of {allowed}")
    return dict(options)
