"""Validation of :func:`gradlens.watch`'s arguments: every bad value raises a
``TypeError``/``ValueError`` that names the argument and what was expected,
before anything is attached."""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn

from gradlens.monitor.sources.activations import ACTIVATIONS_EVERY, SATURATION_EVERY
from gradlens.monitor.sources.output import OUTPUT_EVERY

__all__ = ["parse"]


def _check_int(value: Any, arg: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"watch({arg}=...) expects an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"watch({arg}=...) expects an int >= {minimum}, got {value}")
    return value


def _cadence(value: Any, arg: str, default_every: int) -> int:
    """A bool-or-int cadence option as "every N-th logged step" (0: off; True: the default)."""
    if isinstance(value, bool):
        return default_every if value else 0
    if not isinstance(value, int):
        raise TypeError(f"watch({arg}=...) expects a bool or an int >= 0, got {type(value).__name__}")
    return _check_int(value, arg, 0)


def _patterns(value: Any, arg: str) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"watch({arg}=...) expects a glob pattern string or a list of them, got {type(value).__name__}")


def _unwrap(optimizer: Any, i: int) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers such as accelerate's ``AcceleratedOptimizer``
    or Lightning's ``LightningOptimizer`` (anything whose ``.optimizer`` or
    ``._optimizer`` is one); a wrapper that subclasses Optimizer without calling its
    ``__init__`` has no hook registry of its own, so it is unwrapped too."""
    seen = set()
    obj = optimizer
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if isinstance(obj, torch.optim.Optimizer) and hasattr(obj, "_optimizer_step_pre_hooks"):
            return obj
        obj = vars(obj).get("optimizer", vars(obj).get("_optimizer")) if hasattr(obj, "__dict__") else None
    raise TypeError(
        f"watch(optimizer=...) expects a torch.optim.Optimizer (or a wrapper holding one as "
        f"`.optimizer`), got {type(optimizer).__name__}" + (f" at position {i}" if i else "")
    )


def _optimizers(model: nn.Module, optimizer: Any) -> List[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    if isinstance(optimizer, (list, tuple)):
        if not optimizer:
            raise TypeError("watch(optimizer=...) expects an optimizer, a non-empty list of them, or None, got []")
        optimizers = [_unwrap(o, i) for i, o in enumerate(optimizer)]
    else:
        optimizers = [_unwrap(optimizer, 0)]
    if len({id(o) for o in optimizers}) != len(optimizers):
        raise ValueError("watch(optimizer=...) got the same optimizer twice")
    model_params = {id(p) for p in model.parameters()}
    for i, opt in enumerate(optimizers):
        if not any(id(p) in model_params for g in opt.param_groups for p in g["params"]):
            raise ValueError(
                f"watch(optimizer=...): optimizer #{i} ({type(opt).__name__}) owns none of the "
                "model's parameters; pass the optimizer that trains this model"
            )
    return optimizers


def parse(
    model: Any,
    optimizer: Any,
    *,
    logdir: Any,
    writer: Any,
    every: Any,
    activations: Any,
    include: Any,
    exclude: Any,
    group_depth: Any,
    update_every: Any,
    max_history: Any,
    param_scalars: Any,
    flow_every: Any,
    histogram_every: Any,
    on_finding: Any,
    halt_on: Union[str, Iterable[str]],
    thresholds: Any,
    ranks: Any = "zero",
    output_stats: Any = True,
    replay_nonfinite: Any = True,
    saturation: Any = True,
) -> Tuple[List[torch.optim.Optimizer], Dict[str, Any]]:
    """Validate ``watch``'s arguments; returns the optimizers and the Monitor's
    keyword arguments (a ``SummaryWriter`` is created for ``logdir``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"watch(model=...) expects an nn.Module, got {type(model).__name__}")
    optimizers = _optimizers(model, optimizer)
    every = _check_int(every, "every", 1)
    update_every = _check_int(update_every, "update_every", 0)
    max_history = _check_int(max_history, "max_history", 2)
    flow_every = _check_int(flow_every, "flow_every", 0)
    histogram_every = _check_int(histogram_every, "histogram_every", 0)
    if group_depth is not None and group_depth != "auto":
        if isinstance(group_depth, str):
            raise ValueError(f"watch(group_depth=...) expects an int >= 1, 'auto' or None, got {group_depth!r}")
        group_depth = _check_int(group_depth, "group_depth", 1)
    activations = _cadence(activations, "activations", ACTIVATIONS_EVERY)
    output_stats = _cadence(output_stats, "output_stats", OUTPUT_EVERY)
    saturation = _cadence(saturation, "saturation", SATURATION_EVERY)
    if param_scalars is not None and not isinstance(param_scalars, bool):
        raise TypeError(f"watch(param_scalars=...) expects a bool or None, got {type(param_scalars).__name__}")
    inc = _patterns(include, "include")
    exc = _patterns(exclude, "exclude")
    if on_finding is not None and not callable(on_finding):
        raise TypeError(f"watch(on_finding=...) expects a callable, got {type(on_finding).__name__}")
    if isinstance(halt_on, str):
        halt: Tuple[str, ...] = (halt_on,)
    else:
        try:
            halt = tuple(halt_on)
        except TypeError:
            raise TypeError(f"watch(halt_on=...) expects finding kinds (strings), got {type(halt_on).__name__}") from None
        if not all(isinstance(h, str) for h in halt):
            raise TypeError("watch(halt_on=...) expects finding kinds (strings)")
    from gradlens.diagnose.rules import DEFAULT_RULES

    kinds = sorted({rule.kind for rule in DEFAULT_RULES})
    unknown = [h for h in halt if h not in kinds]
    if unknown:
        raise ValueError(f"watch(halt_on=...) got unknown finding kind(s) {unknown}; expected some of {kinds}")
    if not isinstance(replay_nonfinite, (bool, str)):
        raise TypeError(
            f"watch(replay_nonfinite=...) expects True, False or 'sync', got {type(replay_nonfinite).__name__}"
        )
    if isinstance(replay_nonfinite, str) and replay_nonfinite != "sync":
        raise ValueError(f"watch(replay_nonfinite=...) expects True, False or 'sync', got {replay_nonfinite!r}")
    if thresholds is not None and not isinstance(thresholds, dict):
        raise TypeError(f"watch(thresholds=...) expects a dict, got {type(thresholds).__name__}")
    from gradlens.monitor import distributed as _distributed

    if not isinstance(ranks, str):
        raise TypeError(f"watch(ranks=...) expects one of {list(_distributed.RANKS)}, got {type(ranks).__name__}")
    if ranks not in _distributed.RANKS:
        raise ValueError(f"watch(ranks=...) expects one of {list(_distributed.RANKS)}, got {ranks!r}")
    if logdir is not None and writer is not None:
        raise ValueError("watch() takes logdir=... or writer=..., not both")
    owns = False
    if logdir is not None:
        if not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"watch(logdir=...) expects a path, got {type(logdir).__name__}")
        path = _distributed.writer_logdir(os.fspath(logdir), ranks)  # None: another rank writes
        if path is not None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=path)
            owns = True
    elif writer is not None:
        if not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"watch(writer=...) expects a SummaryWriter, got {type(writer).__name__}")
        if ranks == "zero" and _distributed.rank_world()[0] != 0:
            writer = None  # rank 0 writes
    return optimizers, dict(
        writer=writer, owns_writer=owns, every=every, activations=activations, include=inc, exclude=exc,
        group_depth=group_depth, update_every=update_every, max_history=max_history,
        param_scalars=param_scalars, flow_every=flow_every, histogram_every=histogram_every,
        on_finding=on_finding, halt_on=halt, thresholds=thresholds, ranks=ranks, output_stats=output_stats,
        replay_nonfinite=replay_nonfinite, saturation=saturation,
    )
