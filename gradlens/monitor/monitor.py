"""``gradlens.watch``: attach to a model (and its optimizers) and record gradient health.

Data flows one way: optimizer step pre-hook -> fused statistics on the device
(:mod:`gradlens.monitor.stats`) -> one host copy per logged step (per device) ->
a :class:`~gradlens._record.StepRecord` -> sinks (pandas history, TensorBoard) and
the diagnosis engine. Nothing is computed on unlogged steps.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import itertools
import logging
import math
import operator
import os
import sys
import time
import warnings
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from gradlens._record import GRAD_STATS, LAYER_STATS, ROOT_LAYER, StepRecord, layer_of
from gradlens.diagnose import engine as _engine
from gradlens.diagnose.finding import Finding, TrainingHalted
from gradlens.monitor import stats as _stats
from gradlens.monitor.hooks import HookSet, ZeroGradTap
from gradlens.monitor.tracer import Traced, Tracer
from gradlens.sinks.dataframe import DEFAULT_MAX_HISTORY, HistorySink

__all__ = ["watch", "Monitor"]

_log = logging.getLogger("gradlens")
# columns of the per-parameter array (GRAD_STATS order)
_GN, _GM, _NF, _WN, _UR, _MISS = (GRAD_STATS.index(s) for s in GRAD_STATS)
_LAYER_COL = {stat: j for j, stat in enumerate(LAYER_STATS)}  # history column of each layer stat
_REQUIRES_GRAD = operator.attrgetter("requires_grad")
#: Per-parameter TensorBoard scalars are written by default up to this many parameters.
PARAM_SCALARS_AUTO_LIMIT = 64
#: Weight copies for update ratios up to this many bytes are kept between measurements.
UPDATE_BUFFER_BYTES = 256 * 2**20
#: Logged steps are turned into records, written to the sinks and diagnosed in
#: batches of up to this many steps, or once the oldest waiting step is
#: ``PUBLISH_SECONDS`` old. Batching runs that Python work once for many steps,
#: with warm caches (MLP benchmark, host work per logged step: ~260 us one by one,
#: ~100 us in batches of 8, ~55 us in batches of 40). A step with a NaN/Inf,
#: reading the monitor (findings, dataframe, records), close(), and monitors with
#: ``on_finding``/``halt_on`` publish at once.
PUBLISH_BATCH = 40
PUBLISH_SECONDS = 1.0
#: Host copies of up to this many values are kept as Python lists until published
#: (cheapest to make and check); longer ones as numpy arrays (8 bytes a value, not 32).
_LIST_MAX = 1024
#: ``activations=True`` traces every this many logged steps (an int picks another
#: cadence; 1 is every logged step).
ACTIVATIONS_EVERY = 10


#: Modules that only reshape their input; their outputs are not traced (a view of
#: a traced output is still recognised as finite input by the NaN-origin rule).
_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)


#: Wrappers that hold the user's model as one child, with the attribute holding it.
#: Their segment is left out of every name, so ``watch(DDP(model))`` reports the
#: names ``watch(model)`` does. Classes from modules not yet imported can't wrap
#: anything yet, so they are looked up in ``sys.modules`` (importing them is slow).
_WRAPPERS: Tuple[Tuple[str, str, str], ...] = (
    ("torch.nn.parallel.data_parallel", "DataParallel", "module"),
    ("torch.nn.parallel.distributed", "DistributedDataParallel", "module"),
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),  # torch.compile
    ("torch.distributed.fsdp", "FullyShardedDataParallel", "_fsdp_wrapped_module"),
)


def _wrapper_types() -> List[Tuple[type, str]]:
    """(class, attribute of the wrapped module) of each wrapper class imported so far."""
    found = []
    for module, cls_name, attr in _WRAPPERS:
        cls = getattr(sys.modules.get(module), cls_name, None)
        if isinstance(cls, type):
            found.append((cls, attr))
    return found


def _strip(name: str, root: nn.Module, wrappers: Sequence[Tuple[type, str]]) -> str:
    """``name`` (relative to ``root``) without the segments of wrapped modules.

    ``module.0.weight`` of a ``DistributedDataParallel`` root is ``0.weight``; so is
    ``_orig_mod.module.0.weight`` (compiled DDP) or ``enc._orig_mod.weight`` for a
    compiled submodule ``enc``. A wrapper and the module it wraps share one name.
    """
    if not name:
        return name
    kept = []
    module: Optional[nn.Module] = root
    for seg in name.split("."):
        attr = next((a for cls, a in wrappers if isinstance(module, cls)), None)
        children = getattr(module, "_modules", None) if module is not None else None
        child = children.get(seg) if isinstance(children, dict) else None
        if not (attr == seg and child is not None):
            kept.append(seg)
        module = child
    return ".".join(kept)


def _group_name(layer: str, depth: Optional[int]) -> str:
    """Truncate a module path to ``depth`` levels; a numeric part (a ModuleList/Sequential
    index) stays attached to the name right before it, so ``encoder.layer.3.attn.q`` at
    depth 2 is ``encoder.layer.3``. An index after an index is a level of its own, so
    a Sequential of Sequentials groups too: ``12.3`` at depth 1 is ``12``."""
    if depth is None or "." not in layer:
        return layer
    parts = layer.split(".")
    levels: List[List[str]] = []
    for part in parts:
        if part.isdigit() and levels and len(levels[-1]) == 1 and not levels[-1][0].isdigit():
            levels[-1].append(part)
        else:
            levels.append([part])
    return ".".join(p for level in levels[:depth] for p in level)


def _stat_dicts(names: Sequence[str], values: np.ndarray, mask: np.ndarray) -> List[Dict[str, Dict[str, float]]]:
    """Per step, ``{stat: {name: value}}`` for the GRAD_STATS columns of ``values``
    (steps, names, GRAD_STATS) where ``mask`` is set; a stat set nowhere is left out."""
    out = []
    cols = values.transpose(0, 2, 1).tolist()  # [step][stat][name], as floats
    every, some = mask.all(axis=1).tolist(), mask.any(axis=1).tolist()
    for b in range(len(cols)):
        stats = {}
        for j, stat in enumerate(GRAD_STATS):
            if every[b][j]:
                stats[stat] = dict(zip(names, cols[b][j]))
            elif some[b][j]:
                col = cols[b][j]
                stats[stat] = {names[i]: col[i] for i in np.flatnonzero(mask[b, :, j]).tolist()}
        out.append(stats)
    return out


def _patterns(value: Any, arg: str) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"watch({arg}=...) expects a glob pattern string or a list of them, got {type(value).__name__}")


def _matches(name: str, patterns: Tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


class _Layout:
    """The watched parameters at one moment: names, layers, per-optimizer indices."""

    def __init__(
        self,
        named: List[Tuple[str, nn.Parameter]],
        opt_params: List[List[nn.Parameter]],
        group_depth: Optional[int],
    ) -> None:
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.layers = [_group_name(layer_of(n), group_depth) for n in self.names]
        self.key = (tuple(self.names), tuple(self.layers))  # the history's layout key
        index = self.index = {id(p): i for i, p in enumerate(self.params)}
        by_opt = [[index[id(p)] for p in ps if id(p) in index] for ps in opt_params]
        # per optimizer: its watched parameters and their indices (as an array)
        self.opt_params = [[self.params[i] for i in idxs] for idxs in by_opt]
        self.opt_idx = [np.array(idxs, dtype=np.int64) for idxs in by_opt]
        # layers in first-seen order, and where each parameter's layer is in it
        pos = self.layer_pos = {layer: j for j, layer in enumerate(dict.fromkeys(self.layers))}
        self.layer_names = list(pos)
        layer_ids = np.array([pos[layer] for layer in self.layers], dtype=np.int64)
        # the parameters sorted by layer (None: they already are), and where each
        # layer's run starts, for per-layer reductions with ``ufunc.reduceat``
        order = np.argsort(layer_ids, kind="stable")
        self.by_layer: Optional[np.ndarray] = None if (order == np.arange(len(order))).all() else order
        self.layer_starts = np.searchsorted(layer_ids[order], np.arange(len(self.layer_names)))


class _Pending:
    """One logged step on the host, from its first optimizer's copy to its record."""

    __slots__ = (
        "layout", "chunks", "skipped", "broken", "traced", "act", "origin", "loss", "p", "dW", "present", "layer_rows",
    )

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        # (slots, host values per device, missing parameter indices) per optimizer,
        # sorted into p/dW by Monitor._unpack
        self.chunks: List[Tuple[List[Tuple[str, Any, torch.device, int, int]], Dict[torch.device, Any], List[int]]] = []
        self.skipped = False  # a step the GradScaler skipped
        self.broken = False  # a non-finite statistic (published at once)
        self.traced: Optional[Traced] = None  # activations traced at this step, until summarized
        self.act: Optional[Dict[str, Dict[str, float]]] = None
        self.origin: Optional[str] = None
        self.loss: Optional[float] = None
        self.p: Optional[np.ndarray] = None  # (params, GRAD_STATS)
        self.dW: Optional[np.ndarray] = None  # ||w_after - w_before|| per parameter
        self.present: Optional[np.ndarray] = None  # which entries of p were measured
        self.layer_rows: Optional[Tuple[np.ndarray, np.ndarray]] = None  # the history's layer arrays


class Monitor:
    """Records per-parameter and per-layer gradient statistics of a model.

    Create it with :func:`gradlens.watch`; see there for every option. Use it as a
    context manager or call :meth:`close` when done.

    Example:
        >>> import torch, gradlens
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with gradlens.watch(model, opt) as mon:
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         model(torch.randn(16, 4)).pow(2).mean().backward()
        ...         opt.step()
        >>> mon.dataframe()[["step", "param"]].head(2).values.tolist()
        [[0, '0.weight'], [0, '0.bias']]
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: List[torch.optim.Optimizer],
        *,
        writer: Any,
        owns_writer: bool,
        every: int,
        activations: int,
        include: Optional[Tuple[str, ...]],
        exclude: Optional[Tuple[str, ...]],
        group_depth: Optional[int],
        update_every: int,
        max_history: int,
        param_scalars: Optional[bool],
        flow_every: int,
        histogram_every: int,
        on_finding: Optional[Callable[[Finding], Any]],
        halt_on: Tuple[str, ...],
        thresholds: Optional[Dict[str, Any]],
    ) -> None:
        self.model = model
        self._root = getattr(model, "_orig_mod", model)
        self._wrappers = _wrapper_types()
        # torch.compile'd anywhere (the root, inside DDP, a submodule): forward hooks
        # there would be traced into the graph, so activation tracing stays off.
        compiled = tuple(cls for cls, attr in self._wrappers if attr == "_orig_mod")
        self._compiled = bool(compiled) and any(isinstance(m, compiled) for m in model.modules())
        self._optimizers = list(optimizers)
        self.every = every
        self._include, self._exclude = include, exclude
        self._warn_if_nothing_matches()  # before any hook, in case warnings are errors
        self._group_depth = group_depth
        self._update_every = update_every
        self._histogram_every = histogram_every
        self._on_finding = on_finding
        self._halt_on = halt_on
        self._warned: Set[Tuple[str, Optional[str]]] = set()
        self._hooks = HookSet()
        self._closed = False

        self._step = 0  # index of the record being built
        self._logged = 0  # logged records so far
        self._layout: Optional[_Layout] = None
        self._layout_sig: Any = None
        self._layouts: Dict[Any, _Layout] = {}  # by signature (requires_grad of each parameter)
        self._unions: Dict[Tuple[int, int], _Layout] = {}  # of two layouts met in one step
        self._contrib: Set[int] = set()
        self._pending: Optional[_Pending] = None  # the step being collected
        self._queue: List[Tuple[int, _Pending]] = []  # closed steps waiting for their records
        self._queued_at = 0.0
        # a callback or a halt must see each finding at its step: no batching then
        self._eager = on_finding is not None or bool(halt_on)
        self._dev: Dict[int, Any] = {}  # optimizer index -> device-side work of this step
        self._loss: List[Tensor] = []
        self._origin: Optional[str] = None
        self._stepped = [False] * len(self._optimizers)
        self._grad_snap: List[Any] = [None] * len(self._optimizers)

        self._update_bufs: Dict[Any, List[Tensor]] = {}
        self._update_buf_bytes = 0
        self._history = HistorySink(max_history)
        self._diagnoser = _engine.Diagnoser(thresholds=thresholds)
        self._diagnoser_failed = False
        self._tb = None
        if writer is not None:
            from gradlens.sinks.tensorboard import TensorBoardSink

            n_params = sum(1 for _ in self._root.parameters())
            ps = param_scalars if param_scalars is not None else n_params <= PARAM_SCALARS_AUTO_LIMIT
            self._tb = TensorBoardSink(writer, param_scalars=ps, flow_every=flow_every, owns_writer=owns_writer)

        # forward order of modules, found on the first forward (input side first)
        self._reg_order = {self._name(n): i for i, (n, _) in enumerate(self._root.named_modules())}
        self._fwd_order: Dict[str, int] = {}
        self._order_cache: Dict[Any, Tuple[List[str], np.ndarray]] = {}
        self._probe: Optional[HookSet] = None

        # a script that never calls close() still gets its last steps published
        self._at_exit = functools.partial(_publish_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

        for k, opt in enumerate(self._optimizers):
            self._hooks.add(opt.register_step_pre_hook(self._make_pre(k)))
            self._hooks.add(opt.register_step_post_hook(self._make_post(k)))
            self._grad_snap[k] = self._snapshot(k)
            self._hooks.add(ZeroGradTap(opt, *self._make_zero_grad(k)))

        self._tracer: Optional[Tracer] = None
        self._origin_probe: Optional[Tracer] = None
        self._activations = activations
        if activations and self._compiled:
            warnings.warn(
                "gradlens.watch(activations=True) is unavailable for torch.compile'd models "
                "(forward hooks would be traced into the graph); only gradient statistics are recorded",
                RuntimeWarning,
                stacklevel=3,
            )
            self._activations = False
        if self._activations:
            self._tracer = Tracer(self._traced_modules())  # armed for step 0, which is traced
        elif not self._compiled:
            self._arm_order_probe()

    # ------------------------------------------------------------------ public
    @property
    def findings(self) -> List[Finding]:
        """Every finding of the diagnosis engine so far (see :mod:`gradlens.diagnose`)."""
        if not self._closed:
            self._publish_queued()
        return self._diagnoser.findings

    @property
    def steps_seen(self) -> int:
        """Number of optimizer steps (or :meth:`step` calls) seen, logged or not."""
        return self._step + (1 if self._contrib else 0)

    def step(self) -> None:
        """Record the current ``.grad`` values as one step (monitors without an optimizer).

        With an optimizer, steps are recorded automatically right before
        ``optimizer.step()``; calling this as well raises ``RuntimeError``.
        """
        self._check_open("step")
        if self._optimizers:
            raise RuntimeError(
                "mon.step() is only for monitors without an optimizer; this monitor records "
                "automatically at each optimizer.step()"
            )
        self._pre(-1)
        self._post(-1)

    def observe_loss(self, loss: Union[Tensor, float]) -> None:
        """Give the monitor the loss of the current step (logged as ``gradlens/loss``).

        Stays on the device until the step's single host copy. Called several times
        per optimizer step (gradient accumulation), the mean is recorded.
        """
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(f"observe_loss(loss=...) expects a scalar, got shape {tuple(loss.shape)}")
        elif not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise TypeError(f"observe_loss(loss=...) expects a tensor or float, got {type(loss).__name__}")
        if self._closed or not self._is_logged_step():
            return
        if isinstance(loss, Tensor):
            self._loss.append(loss.detach().reshape(()).float())
        else:
            self._loss.append(torch.tensor(float(loss)))

    def dataframe(self, level: str = "param") -> Any:
        """The recorded history as a long-format pandas DataFrame.

        Args:
            level: ``"param"`` (default): one row per (step, parameter) with columns
                ``step, layer, param, grad_norm, grad_max, nonfinite, weight_norm,
                update_ratio, missing_grad, loss``. ``"layer"``: one row per
                (step, layer) with every per-layer statistic (activations included).

        Memory is bounded (``max_history``); older steps are thinned.
        """
        if level not in ("param", "layer"):
            raise ValueError(f"dataframe(level=...) expects 'param' or 'layer', got {level!r}")
        self._flush_pending()
        return self._history.dataframe(level)

    def records(self) -> List[StepRecord]:
        """The kept history as :class:`~gradlens._record.StepRecord` objects."""
        self._flush_pending()
        return self._history.records()

    def close(self) -> None:
        """Remove every hook from model and optimizers; flush and close what gradlens opened.

        Safe to call twice. Afterwards the model computes bit-identical results to a
        model that was never watched.
        """
        if self._closed:
            return
        try:
            self._flush_pending()
        finally:
            self._closed = True
            self._hooks.remove()
            for tracer in (self._tracer, self._origin_probe):
                if tracer is not None:
                    tracer.remove()
            if self._probe is not None:
                self._probe.remove()
            if self._tb is not None:
                self._tb.close()
            _stats.release_cache()  # buffers of the batched statistics (rebuilt on demand)
            atexit.unregister(self._at_exit)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Monitor({type(self.model).__name__}, every={self.every}, steps={self.steps_seen}, {state})"

    # --------------------------------------------------------------- internals
    def _name(self, name: str) -> str:
        """A parameter/module name of ``self._root`` as the user's unwrapped model has it."""
        return _strip(name, self._root, self._wrappers)

    def _selected(self, name: str) -> bool:
        """Whether ``name`` passes the include=/exclude= patterns."""
        return (self._include is None or _matches(name, self._include)) and (
            self._exclude is None or not _matches(name, self._exclude)
        )

    def _warn_if_nothing_matches(self) -> None:
        """One warning when include=/exclude= leave none of the model's parameters."""
        if self._include is None and self._exclude is None:
            return
        names = [self._name(n) for n, _ in self._root.named_parameters()]
        if not names or any(self._selected(n) for n in names):
            return
        given = ", ".join(
            f"{arg}={list(pats)!r}"
            for arg, pats in (("include", self._include), ("exclude", self._exclude))
            if pats is not None
        )
        shown = ", ".join(repr(n) for n in names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        wrapped = self._root is not self.model or any(isinstance(self._root, cls) for cls, _ in self._wrappers)
        hint = " (without the wrapper's 'module.' or '_orig_mod.' prefix)" if wrapped else ""
        warnings.warn(
            f"gradlens.watch({given}) leaves none of the model's parameters, so no gradient "
            f"statistics will be recorded; parameter names are{hint}: {shown}",
            UserWarning,
            stacklevel=4,
        )

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"mon.{what}() called after mon.close()")

    def _is_logged_step(self) -> bool:
        return self._step % self.every == 0

    def _is_traced_step(self) -> bool:
        # activations on every `activations`-th logged step (self._logged is the
        # index the upcoming record will have among logged ones)
        return self._is_logged_step() and self._logged % self._activations == 0

    def _traced_modules(self) -> List[Tuple[str, nn.Module]]:
        mods = []
        seen: Set[str] = set()
        named = {self._name(n): m for n, m in self._root.named_modules()}
        for name, module in named.items():
            if name == "":
                continue
            leaf = not any(True for _ in module.children())
            owns = any(True for _ in module.parameters(recurse=False))
            if not (leaf or owns) or isinstance(module, _RESHAPES):
                continue  # reshapes repeat their input's numbers: not traced
            if not self._selected(name):
                continue
            group = _group_name(name, self._group_depth)
            if group in seen or group not in named:
                continue
            seen.add(group)
            mods.append((group, named[group]))
        return mods

    # forward-order probe: one forward with pre-hooks on every module, then removed
    def _arm_order_probe(self) -> None:
        probe = HookSet()
        modules = [(self._name(n), m) for n, m in self._root.named_modules()]

        def make(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: Any) -> None:
                if name not in self._fwd_order:
                    self._fwd_order[name] = len(self._fwd_order)

            return hook

        for name, module in modules:
            if name:
                probe.add(module.register_forward_pre_hook(make(name)))

        def done(module: nn.Module, args: Any, output: Any) -> None:
            probe.remove()
            self._probe = None

        probe.add(self._root.register_forward_hook(done))
        self._probe = probe

    def _current_layout(self) -> _Layout:
        if self._optimizers:
            # params added to an optimizer later, or (un)frozen, change the signature
            groups = (g["params"] for opt in self._optimizers for g in opt.param_groups)
            sig = tuple(map(_REQUIRES_GRAD, itertools.chain.from_iterable(groups)))
        else:
            sig = tuple(map(_REQUIRES_GRAD, self._root.parameters()))
        if self._layout is not None and sig == self._layout_sig:
            return self._layout
        # (a GAN freezing D for G's step flips between two signatures every step:
        # the same layout objects come back, so their steps still batch together)
        layout = self._layouts.get(sig)
        if layout is None:
            layout = self._layouts[sig] = self._layout_of(lambda p: p.requires_grad)
            if len(self._layouts) > 8:
                self._layouts.pop(next(iter(self._layouts)))
                self._unions.clear()
        self._layout, self._layout_sig = layout, sig
        return layout

    def _layout_of(self, want: Callable[[nn.Parameter], bool]) -> _Layout:
        """The layout of the watched parameters (optimizer-owned, selected) that ``want``."""
        owned: Optional[Set[int]] = None
        opt_params = [[p for g in opt.param_groups for p in g["params"]] for opt in self._optimizers]
        if self._optimizers:
            owned = {id(p) for ps in opt_params for p in ps}
        named = []
        for n, p in self._root.named_parameters():
            n = self._name(n)
            if not want(p) or (owned is not None and id(p) not in owned):
                continue
            if not self._selected(n):
                continue
            named.append((n, p))
        if not self._optimizers:
            opt_params = [[p for _, p in named]]
        return _Layout(named, opt_params, self._group_depth)

    def _merge_into(self, pend: "_Pending", layout: _Layout, work: Dict[str, Any]) -> None:
        """Record ``work`` (made on ``layout``) in ``pend`` (another layout of the same
        step: a parameter was frozen or unfrozen between two optimizers' steps): both
        move to the union of the two layouts, indices remapped by parameter."""
        key = (id(pend.layout), id(layout))
        union = self._unions.get(key)
        if union is None:
            ids = set(pend.layout.index) | set(layout.index)
            union = self._unions[key] = self._layout_of(lambda p: id(p) in ids)
        old = np.array([union.index[id(p)] for p in pend.layout.params], dtype=np.int64)
        new = np.array([union.index[id(p)] for p in layout.params], dtype=np.int64)
        remap = lambda idx, to: to[idx] if isinstance(idx, np.ndarray) else idx  # noqa: E731
        pend.chunks = [
            ([(kind, remap(ref, old), dev, start, n) for kind, ref, dev, start, n in slots], host, old[missing].tolist())
            for slots, host, missing in pend.chunks
        ]
        if pend.p is not None:  # sorted already (a step with a NaN/Inf)
            p, dw = np.full((len(union.names), len(GRAD_STATS)), np.nan), np.full(len(union.names), np.nan)
            p[old], dw[old] = pend.p, pend.dW
            pend.p, pend.dW = p, dw
        for part in work["parts"]:
            part["idx"] = new[part["idx"]]
        work["missing"] = new[work["missing"]].tolist()
        pend.layout = union

    def _layer_order(self, layers: List[str]) -> Tuple[List[str], np.ndarray]:
        """``layers`` ordered input side first, and the position of each input in that order."""
        key = (tuple(layers), len(self._fwd_order))
        cached = self._order_cache.get(key)
        if cached is None:
            ordered = self._sorted_layers(layers)
            row_of = {name: i for i, name in enumerate(ordered)}
            cached = self._order_cache[key] = (ordered, np.array([row_of[n] for n in layers], dtype=np.int64))
            if len(self._order_cache) > 64:
                self._order_cache.pop(next(iter(self._order_cache)))
        return list(cached[0]), cached[1]

    def _sorted_layers(self, layers: Iterable[str]) -> List[str]:
        def pos(name: str) -> Tuple[float, float]:
            # a group's position is that of its first member module in forward order
            fwd = self._fwd_order.get(name)
            if fwd is None and self._group_depth is not None:
                members = [v for k, v in self._fwd_order.items() if k == name or k.startswith(name + ".")]
                fwd = min(members) if members else None
            reg = self._reg_order.get("" if name == ROOT_LAYER else name, math.inf)
            return (fwd if fwd is not None else math.inf, reg)

        return sorted(set(layers), key=pos)

    # optimizer hooks -------------------------------------------------------------
    def _make_pre(self, k: int) -> Callable[..., None]:
        def hook(opt: Any, args: Any, kwargs: Any) -> None:
            if not self._closed:
                self._pre(k)

        return hook

    def _make_post(self, k: int) -> Callable[..., None]:
        def hook(opt: Any, args: Any, kwargs: Any) -> None:
            if not self._closed:
                self._stepped[k] = True
                self._grad_snap[k] = self._snapshot(k)
                self._post(k)

        return hook

    def _make_zero_grad(self, k: int) -> Tuple[Callable[[], None], Callable[[], None]]:
        # A GradScaler skips optimizer.step() when gradients overflowed, so the step
        # hooks never fire. If gradients changed since the last step/zero_grad and
        # the optimizer did not step, that step was skipped: record it now, from the
        # (already unscaled) gradients, before zero_grad clears them.
        def before() -> None:
            if self._closed:
                return
            if not self._stepped[k] and self._snapshot(k) != self._grad_snap[k]:
                self._pre(k)
                self._post(k, skipped=True)
            self._stepped[k] = False

        def after() -> None:
            self._grad_snap[k] = self._snapshot(k)

        return before, after

    def _snapshot(self, k: int) -> Any:
        # cheap identity of the gradients: (id, version) of the first few grads
        snap = []
        for g in self._optimizers[k].param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    snap.append((id(p.grad), p.grad._version))
                    if len(snap) >= 4:
                        return tuple(snap)
        return tuple(snap) if snap else "zeroed"

    # the step itself -------------------------------------------------------------
    def _pre(self, k: int) -> None:
        kk = max(k, 0)
        if kk in self._contrib:
            self._finish_step()
        self._contrib.add(kk)
        if not self._is_logged_step():
            return
        layout = self._current_layout()
        weights = layout.opt_params[kk]
        grads = [p.grad for p in weights]
        present = layout.opt_idx[kk]
        missing: List[int] = []
        if any(g is None or g.is_sparse for g in grads):  # rare: keep the dense, present ones
            keep = [j for j, g in enumerate(grads) if g is not None]
            missing = [int(present[j]) for j, g in enumerate(grads) if g is None]
            grads = [grads[j].coalesce().values() if grads[j].is_sparse else grads[j] for j in keep]
            weights = [weights[j] for j in keep]
            present = present[keep]
        parts = []
        measure_update = (
            self._update_every > 0 and self._logged % self._update_every == 0 and k >= 0
        )
        for members in _stats.grouped(grads).values():
            if len(members) == len(grads):
                gs, ws, idx = grads, weights, present
            else:  # parameters on several devices or in several dtypes
                gs = [grads[j] for j in members]
                ws = [weights[j] for j in members]
                idx = present[members]
            vec = _stats.grad_stats(gs, ws)
            before = self._weight_copy(ws) if measure_update else None
            parts.append({"idx": idx, "vec": vec, "ws": ws, "before": before, "grads": gs})
        self._dev[kk] = {"parts": parts, "missing": missing, "layout": layout}

    def _weight_copy(self, ws: List[Tensor]) -> List[Tensor]:
        # Copy of the weights for ||w_after - w_before||. Fresh allocations cost
        # page faults (measured: a 1.3M-parameter MLP's clone + sub took ~60% of a
        # step on CPU), so copies of up to UPDATE_BUFFER_BYTES in total are kept
        # and reused; larger models allocate them for the one step only.
        key = tuple((w.shape, w.dtype, w.device) for w in ws)
        bufs = self._update_bufs.get(key)
        if bufs is None:
            bufs = [torch.empty_like(w) for w in ws]
            nbytes = sum(b.numel() * b.element_size() for b in bufs)
            if self._update_buf_bytes + nbytes <= UPDATE_BUFFER_BYTES:
                self._update_bufs[key] = bufs
                self._update_buf_bytes += nbytes
        with torch.no_grad():
            torch._foreach_copy_(bufs, ws)
        return bufs

    def _post(self, k: int, skipped: bool = False) -> None:
        kk = max(k, 0)
        work = self._dev.pop(kk, None)
        if work is not None:
            self._collect(kk, work, skipped)
        if len(self._contrib) >= max(len(self._optimizers), 1):
            self._finish_step()

    def _collect(self, kk: int, work: Dict[str, Any], skipped: bool) -> None:
        """Finish the device work of one optimizer: one host copy per device.

        The host arrays are kept as they are (:meth:`_unpack` sorts them into the
        step's arrays when its record is built) unless a value is not finite: then
        the exact non-finite counts are taken now, while the gradients still exist.
        """
        layout = work["layout"]
        pend = self._pending
        if pend is None:
            pend = self._pending = _Pending(layout)
        elif layout is not pend.layout:
            self._merge_into(pend, layout, work)
            layout = pend.layout
        pend.skipped |= skipped
        by_device: Dict[torch.device, List[Tensor]] = {}
        sizes: Dict[torch.device, int] = {}
        slots: List[Tuple[str, Any, torch.device, int, int]] = []

        def put(kind: str, ref: Any, t: Tensor) -> None:
            dev, n = t.device, t.numel()
            start = sizes.get(dev, 0)
            by_device.setdefault(dev, []).append(t if t.dim() == 1 else t.reshape(-1))
            sizes[dev] = start + n
            slots.append((kind, ref, dev, start, n))

        # (every tensor put here is already detached: no autograd graph is built)
        for part in work["parts"]:
            put("grad", part["idx"], part["vec"])
            if part["before"] is not None and not skipped:
                with torch.no_grad():  # before <- before - after, in place (not needed again)
                    torch._foreach_sub_(part["before"], part["ws"])
                put("update", part["idx"], torch.stack(_stats.norms(part["before"])))
        act_tracer = self._tracer if (self._tracer is not None and pend.traced is None and pend.act is None) else None
        if act_tracer is not None and act_tracer.calls:
            for t in act_tracer.device_tensors():
                put("act", None, t)
        if self._loss:
            put("loss", None, torch.stack([t.to(self._loss[0].device) for t in self._loss]).mean())
            self._loss = []
        host: Dict[torch.device, Any] = {}  # a list of floats, or a numpy array
        for dev, lst in by_device.items():
            # the one host copy per logged step (per device); a short list of
            # floats is cheaper to make and to check here than a numpy array
            flat = (lst[0] if len(lst) == 1 else torch.cat(lst)).cpu()
            host[dev] = flat.tolist() if flat.numel() <= _LIST_MAX else flat.numpy().copy()

        pend.chunks.append((slots, host, work["missing"]))
        if act_tracer is not None:
            if act_tracer.calls:
                pend.traced = act_tracer.take()  # summarized with the values, by _unpack
                for name in pend.traced.grad_counts:  # traced modules, in forward order
                    if name not in self._fwd_order:
                        self._fwd_order[name] = len(self._fwd_order)
            else:
                act_tracer.clear()
        # a NaN/Inf anywhere makes the sum non-finite (overflow of finite statistics
        # would only cost an exact count that comes back 0)
        if not all(math.isfinite(sum(h) if isinstance(h, list) else h.sum(dtype=np.float64)) for h in host.values()):
            # exact non-finite counts, for the gradients whose norm is not finite
            pend.broken = True
            self._unpack([pend])
            p = pend.p
            for part in work["parts"]:
                bad = np.flatnonzero(~np.isfinite(p[part["idx"], _GN]))
                if len(bad):
                    counts = _stats.nonfinite_counts([part["grads"][j] for j in bad.tolist()])
                    p[part["idx"][bad], _NF] = counts
        if self._histogram_every and self._tb is not None and self._logged % self._histogram_every == 0:
            named = (
                (layout.names[i], g) for part in work["parts"] for i, g in zip(part["idx"].tolist(), part["grads"])
            )
            self._tb.write_histograms(named, self._step)

    @staticmethod
    def _unpack(pends: Sequence["_Pending"]) -> Tuple[np.ndarray, np.ndarray]:
        """Sort the host values of ``pends`` (steps with one layout) into arrays.

        Returns ``(p, dW)`` shaped (steps, params, GRAD_STATS) and (steps, params);
        each pending's ``p``/``dW`` become views of its row, its loss and activation
        statistics are set. Steps whose host copies have the same structure (usually
        all of them) are sorted with one numpy op per statistic.
        """
        n = len(pends[0].layout.names)
        p = np.full((len(pends), n, len(GRAD_STATS)), np.nan)
        dw = np.full((len(pends), n), np.nan)  # ||w_after - w_before||
        groups: Dict[Any, List[int]] = {}
        for b, pend in enumerate(pends):
            if pend.p is not None:  # sorted before (a step with a NaN/Inf), then maybe more chunks
                p[b], dw[b] = pend.p, pend.dW
            if pend.chunks:
                key = tuple(
                    (tuple((kind, id(ref), dev, start, size) for kind, ref, dev, start, size in slots), tuple(missing))
                    for slots, _, missing in pend.chunks
                )
                groups.setdefault(key, []).append(b)
        for members in groups.values():
            rows = np.array(members)
            for c, (slots, lists, missing) in enumerate(pends[members[0]].chunks):
                # (steps, values) per device; a slot's values are its columns
                host = {dev: np.array([pends[b].chunks[c][1][dev] for b in members], dtype=np.float64) for dev in lists}
                for kind, ref, dev, start, size in slots:
                    vals = host[dev][:, start : start + size].T  # (values, steps)
                    if kind == "grad":
                        r, i = np.ix_(rows, ref)
                        gn, gm, wn = _stats.split_grad_stats(vals, len(ref))
                        p[r, i, _GN], p[r, i, _GM], p[r, i, _WN] = gn.T, gm.T, wn.T
                        p[r, i, _NF] = 0.0
                        p[r, i, _MISS] = 0.0
                    elif kind == "update":
                        r, i = np.ix_(rows, ref)
                        dw[r, i] = vals.T
                        with np.errstate(divide="ignore", invalid="ignore"):
                            p[r, i, _UR] = vals.T / p[r, i, _WN]
                    elif kind == "loss":
                        for b, loss in zip(members, vals[0].tolist()):
                            pends[b].loss = loss
                if missing:
                    p[rows[:, None], np.asarray(missing), _MISS] = 1.0
                for b in members:
                    pend = pends[b]
                    if pend.traced is not None:
                        own = pend.chunks[c][1]
                        act = [own[dev][start : start + size] for kind, _, dev, start, size in slots if kind == "act"]
                        if act:
                            pend.act, pend.origin = pend.traced.summarize(np.concatenate(act))
                            pend.traced = None
        for b, pend in enumerate(pends):
            pend.p, pend.dW, pend.chunks = p[b], dw[b], []
        return p, dw

    def _flush_pending(self) -> None:
        """Publish every step seen so far (a multi-optimizer step whose other
        optimizers did not step yet included)."""
        if self._contrib and not self._closed:
            self._finish_step()
        self._publish_queued()

    def _finish_step(self) -> None:
        """Close the current step; its record is published now or with the next batch."""
        pend = self._pending
        step = self._step
        self._pending = None
        self._contrib = set()
        self._dev = {}
        self._step += 1
        if pend is not None:
            self._logged += 1
        if self._tracer is not None:
            # calls made after this step's collection (a second optimizer's forward)
            # belong to no record: dropped, not left for the next step
            self._tracer.clear()
            # module hooks only while a traced step runs; others run no gradlens code
            self._tracer.arm(self._is_traced_step())
        if pend is not None:
            self._queue.append((step, pend))
            if len(self._queue) == 1:
                self._queued_at = time.monotonic()
        if not self._queue:
            return
        if (
            self._eager
            or (pend is not None and pend.broken)
            or len(self._queue) >= PUBLISH_BATCH
            or time.monotonic() - self._queued_at >= PUBLISH_SECONDS
        ):
            self._publish_queued()

    def _publish_queued(self) -> None:
        """Build the queued steps' records and send them to the sinks and the rules, in order."""
        while self._queue:
            # the queued steps with the same parameter layout are built together
            layout = self._queue[0][1].layout
            n = 1
            while n < len(self._queue) and self._queue[n][1].layout is layout:
                n += 1
            batch = self._queue[:n]
            del self._queue[:n]  # taken first: steps that cannot be built are not retried forever
            try:
                records = self._build_records(batch)
            except Exception as exc:  # noqa: BLE001 - a gradlens bug must not stop training
                msg = (f"gradlens: the records of steps {batch[0][0]}-{batch[-1][0]} could not be built "
                       f"({type(exc).__name__}: {exc}); they are left out")
                _log.warning(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                continue
            # (with on_finding/halt_on every step is published alone: a halt loses nothing)
            for (_, pend), record in zip(batch, records):
                self._history.write(record, pend.layout.key, (pend.p, pend.present), pend.layer_rows)
                if self._tb is not None:
                    self._tb.write(record)
                self._after_record(record)

    def _build_records(self, batch: List[Tuple[int, "_Pending"]]) -> List[StepRecord]:
        """The records of ``batch`` (steps with one layout), in order, with one numpy
        pass for all; each pending also gets the history's arrays (``present``,
        ``layer_rows``)."""
        layout = batch[0][1].layout
        names, lnames = layout.names, layout.layer_names
        p, dw = self._unpack([pend for _, pend in batch])  # (steps, params, GRAD_STATS), (steps, params)
        miss = p[:, :, _MISS]
        seen = ~np.isnan(miss)  # the parameter's optimizer stepped in this record
        m = miss == 0  # ... and it had a gradient
        has_dw = m & ~np.isnan(dw)
        present = np.stack([m, m, m, m, m & ~np.isnan(p[:, :, _UR]), seen], axis=2)
        # per layer, from the parameters' numbers: norms combine as sqrt(sum of
        # squares), max as max, counts add; unmeasured entries are left out (zeroed),
        # a NaN of a measured one propagates to its layer only
        sq = np.stack([p[:, :, _GN] ** 2, p[:, :, _NF], p[:, :, _WN] ** 2, dw * dw, miss], axis=2)
        keep = np.stack([m, m, m, has_dw, seen], axis=2)
        cols = np.concatenate([np.where(keep, sq, 0.0), keep], axis=2)
        gmax = np.where(m, p[:, :, _GM], -np.inf)
        if layout.by_layer is not None:
            cols, gmax = cols[:, layout.by_layer], gmax[:, layout.by_layer]
        sums = np.add.reduceat(cols, layout.layer_starts, axis=1)  # (steps, layers, 10)
        with np.errstate(invalid="ignore", divide="ignore"):
            lay_gm = np.maximum.reduceat(gmax, layout.layer_starts, axis=1)  # NaN propagates
            lay_wn = np.sqrt(sums[:, :, 2])
            lay_vals = np.stack(
                [np.sqrt(sums[:, :, 0]), lay_gm, sums[:, :, 1], lay_wn, np.sqrt(sums[:, :, 3]) / lay_wn, sums[:, :, 4]],
                axis=2,
            )
        n_meas, n_dw, n_seen = sums[:, :, 5] > 0, sums[:, :, 8] > 0, sums[:, :, 9] > 0
        lay_mask = np.stack([n_meas, n_meas, n_meas, n_meas, n_dw, n_seen], axis=2)
        param_dicts = _stat_dicts(names, p, present)
        layer_dicts = _stat_dicts(lnames, lay_vals, lay_mask)
        records = []
        for b, (step, pend) in enumerate(batch):
            pend.present = present[b]
            stats = layer_dicts[b]
            act = pend.act or {}
            for layer, row in act.items():
                for stat, v in row.items():
                    stats.setdefault(stat, {})[layer] = float(v)
            layers, pos = self._layer_order(lnames + [a for a in act if a not in layout.layer_pos])
            # the history's per-layer arrays: rows in record order, columns in LAYER_STATS order
            hist_vals = np.full((len(layers), len(LAYER_STATS)), np.nan, dtype=np.float32)
            hist_mask = np.zeros(hist_vals.shape, dtype=bool)
            grad_rows = pos[: len(lnames)]  # the layout's layers come first in the ordered input
            hist_vals[grad_rows, : len(GRAD_STATS)] = lay_vals[b]
            hist_mask[grad_rows, : len(GRAD_STATS)] = lay_mask[b]
            if act:
                row_of = dict(zip(layers, range(len(layers))))
                for layer, row in act.items():
                    for stat, v in row.items():
                        hist_vals[row_of[layer], _LAYER_COL[stat]] = v
                        hist_mask[row_of[layer], _LAYER_COL[stat]] = True
            pend.layer_rows = (hist_vals, hist_mask)
            origin = pend.origin or self._origin
            self._origin = None
            records.append(StepRecord(
                step=step,
                layers=layers,
                stats=stats,
                param_stats=param_dicts[b],
                loss=pend.loss,
                nonfinite_origin=origin,
            ))
        return records

    def _after_record(self, record: StepRecord) -> None:
        broken = any(v > 0 for v in record.stats.get("nonfinite", {}).values()) or (
            record.loss is not None and not math.isfinite(record.loss)
        )
        # the next forward is not traced (no tracer, or off its cadence): probe it
        # (broken steps are published at once, so the "next" step is the one to come)
        next_traced = self._tracer is not None and self._is_traced_step()
        if broken and not next_traced and not self._compiled and self._origin_probe is None:
            self._arm_origin_probe()
        if self._diagnoser_failed:
            return
        try:
            new = list(self._diagnoser.update(record) or ())
        except Exception as exc:  # noqa: BLE001 - diagnosis must never break training
            self._diagnoser_failed = True
            msg = f"gradlens: diagnosis failed ({type(exc).__name__}: {exc}); it is off for this run"
            _log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
            return
        if not new:
            return
        if self._tb is not None:
            self._tb.write_findings(new, record.step)
        for finding in new:
            _log.warning("%s", finding)
            key = (finding.kind, finding.layer)
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(str(finding), RuntimeWarning, stacklevel=4)
            if self._on_finding is not None:
                self._on_finding(finding)
        for finding in new:
            if finding.kind in self._halt_on:
                raise TrainingHalted(finding)

    def _arm_origin_probe(self) -> None:
        """Trace non-finite counts per module for the next grad-enabled forward only."""
        probe = Tracer(self._traced_modules(), stats=False)
        self._origin_probe = probe

        def done(module: nn.Module, args: Any, output: Any) -> None:
            if not probe.calls:
                return
            handle.remove()
            probe.remove()
            with torch.no_grad():
                host = torch.cat([t.float().cpu() for t in probe.device_tensors()]).tolist()
            _, origin = probe.take().summarize(host)
            self._origin_probe = None
            if origin is not None:
                self._origin = origin
                _log.warning("gradlens: non-finite values first appear in the output of %s", origin)

        handle = self._root.register_forward_hook(done)
        self._hooks.add(handle)


def _publish_at_exit(ref: "weakref.ref[Monitor]") -> None:
    """Publish and flush what a monitor that was never closed still holds."""
    mon = ref()
    if mon is None or mon._closed:
        return
    try:
        mon._flush_pending()
        if mon._tb is not None:
            mon._tb.flush()
    except Exception:  # noqa: BLE001 - nothing to report to at interpreter exit
        pass


def _check_int(value: Any, arg: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"watch({arg}=...) expects an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"watch({arg}=...) expects an int >= {minimum}, got {value}")
    return value


def watch(
    model: nn.Module,
    optimizer: Union[None, torch.optim.Optimizer, Sequence[torch.optim.Optimizer]] = None,
    *,
    logdir: Union[None, str, "os.PathLike[str]"] = None,
    writer: Any = None,
    every: int = 1,
    activations: Union[bool, int] = False,
    include: Union[None, str, Sequence[str]] = None,
    exclude: Union[None, str, Sequence[str]] = None,
    group_depth: Optional[int] = None,
    update_every: int = 10,
    max_history: int = DEFAULT_MAX_HISTORY,
    param_scalars: Optional[bool] = None,
    flow_every: int = 50,
    histogram_every: int = 0,
    on_finding: Optional[Callable[[Finding], Any]] = None,
    halt_on: Iterable[str] = (),
    thresholds: Optional[Dict[str, Any]] = None,
) -> Monitor:
    """Attach gradlens to ``model`` and record its gradient health at every optimizer step.

    Statistics are taken right before each ``optimizer.step()`` (a step pre-hook),
    so they see the gradients the optimizer uses (after DDP's all-reduce, after
    gradient accumulation, unscaled under ``GradScaler``; a step the GradScaler
    skips is still recorded, at the next ``optimizer.zero_grad()``).

    Args:
        model: the ``nn.Module`` to watch; a ``torch.compile``'d, ``DataParallel``,
            ``DistributedDataParallel`` or ``FullyShardedDataParallel`` one works too,
            and names are those of the model inside (``0.weight``, not
            ``module.0.weight``), so runs with and without the wrapper line up.
        optimizer: an optimizer, a list of them (GAN: ``[opt_g, opt_d]``), or None:
            then call :meth:`Monitor.step` after each backward.
        logdir: write TensorBoard events there (creates a ``SummaryWriter``).
        writer: or use your own ``SummaryWriter`` (not closed by gradlens).
        every: record every N-th step; unlogged steps cost nothing per parameter.
            A NaN born on an unlogged step is reported at the next logged step
            (it persists in weights, gradients and loss).
        activations: also trace forward statistics and the gradient flowing back
            into each layer's output (``act_*``, ``out_grad_norm``) and name the
            module where non-finite values first appear. ``True``: on every
            ``ACTIVATIONS_EVERY``-th (10th) logged step, the first one included;
            an int N: on every N-th logged step (``1``: all of them); ``False``/0:
            off. Tracing reads each traced output four times and its gradient once
            (on CPU: +20-30% on a step where it runs, see ``benchmarks/README.md``),
            hence its own cadence. A NaN/Inf on an untraced step still gets its
            origin: the next forward is probed for it.
        include, exclude: glob patterns on parameter/module names (``"encoder.*"``).
            Patterns that leave no parameter give a ``UserWarning`` listing the names.
        group_depth: aggregate per block: ``2`` reports ``encoder.layer.3`` as one
            row (numeric ModuleList indices stay with the name before them).
        update_every: measure ``update_ratio`` on every N-th logged step (it copies
            the weights for the duration of one ``step()``); 0 turns it off.
        max_history: logged steps kept in memory for :meth:`Monitor.dataframe`;
            older ones are thinned.
        param_scalars: write per-parameter TensorBoard scalars; default: only when
            the model has at most 64 parameters (per-layer ones are always written).
        flow_every: write the gradient-flow image every N logged steps (0: never).
        histogram_every: write gradient histograms every N logged steps (0: never).
        on_finding: called with each new :class:`~gradlens.Finding`, at the step
            where it is found.
        halt_on: finding kinds that raise :class:`~gradlens.TrainingHalted` from the
            ``optimizer.step()`` where they are found.
        thresholds: overrides of the diagnosis thresholds.

    Statistics are computed at each logged step; turning them into records, writing
    them to TensorBoard and diagnosing them is done in batches of up to
    ``PUBLISH_BATCH`` (40) logged steps, or once the oldest waiting step is
    ``PUBLISH_SECONDS`` (1 s) old, which keeps that Python work cheap. So a finding's
    warning can come a few steps after the step it names. A step with a NaN/Inf,
    reading ``findings``, :meth:`Monitor.dataframe` or :meth:`Monitor.records`,
    :meth:`Monitor.close`, and a monitor given ``on_finding`` or ``halt_on``
    publish at once.

    Returns:
        A :class:`Monitor` (also a context manager).

    Example:
        >>> import torch, gradlens
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with gradlens.watch(model, opt) as mon:
        ...     model(torch.ones(2, 3)).sum().backward()
        ...     opt.step()
        >>> round(float(mon.dataframe().loc[0, "grad_norm"]), 4)  # ||dL/dW|| = ||(2, 2, 2)||
        3.4641
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"watch(model=...) expects an nn.Module, got {type(model).__name__}")
    if optimizer is None:
        optimizers: List[torch.optim.Optimizer] = []
    elif isinstance(optimizer, torch.optim.Optimizer):
        optimizers = [optimizer]
    elif isinstance(optimizer, (list, tuple)) and optimizer and all(
        isinstance(o, torch.optim.Optimizer) for o in optimizer
    ):
        optimizers = list(optimizer)
    else:
        raise TypeError(
            "watch(optimizer=...) expects a torch.optim.Optimizer, a non-empty list of them, "
            f"or None, got {type(optimizer).__name__}"
        )
    if len({id(o) for o in optimizers}) != len(optimizers):
        raise ValueError("watch(optimizer=...) got the same optimizer twice")
    model_params = {id(p) for p in model.parameters()}
    for i, opt in enumerate(optimizers):
        if not any(id(p) in model_params for g in opt.param_groups for p in g["params"]):
            raise ValueError(
                f"watch(optimizer=...): optimizer #{i} ({type(opt).__name__}) owns none of the "
                "model's parameters; pass the optimizer that trains this model"
            )
    every = _check_int(every, "every", 1)
    update_every = _check_int(update_every, "update_every", 0)
    max_history = _check_int(max_history, "max_history", 2)
    flow_every = _check_int(flow_every, "flow_every", 0)
    histogram_every = _check_int(histogram_every, "histogram_every", 0)
    if group_depth is not None:
        group_depth = _check_int(group_depth, "group_depth", 1)
    if isinstance(activations, bool):
        activations = ACTIVATIONS_EVERY if activations else 0
    elif isinstance(activations, int):
        activations = _check_int(activations, "activations", 0)
    else:
        raise TypeError(
            f"watch(activations=...) expects a bool or an int >= 0, got {type(activations).__name__}"
        )
    if param_scalars is not None and not isinstance(param_scalars, bool):
        raise TypeError(f"watch(param_scalars=...) expects a bool or None, got {type(param_scalars).__name__}")
    inc = _patterns(include, "include")
    exc = _patterns(exclude, "exclude")
    if on_finding is not None and not callable(on_finding):
        raise TypeError(f"watch(on_finding=...) expects a callable, got {type(on_finding).__name__}")
    if isinstance(halt_on, str):
        halt = (halt_on,)
    else:
        try:
            halt = tuple(halt_on)
        except TypeError:
            raise TypeError(f"watch(halt_on=...) expects finding kinds (strings), got {type(halt_on).__name__}") from None
        if not all(isinstance(h, str) for h in halt):
            raise TypeError("watch(halt_on=...) expects finding kinds (strings)")
    if thresholds is not None and not isinstance(thresholds, dict):
        raise TypeError(f"watch(thresholds=...) expects a dict, got {type(thresholds).__name__}")
    if logdir is not None and writer is not None:
        raise ValueError("watch() takes logdir=... or writer=..., not both")
    owns = False
    if logdir is not None:
        if not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"watch(logdir=...) expects a path, got {type(logdir).__name__}")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=os.fspath(logdir))
        owns = True
    elif writer is not None and not callable(getattr(writer, "add_scalar", None)):
        raise TypeError(f"watch(writer=...) expects a SummaryWriter, got {type(writer).__name__}")
    return Monitor(
        model,
        optimizers,
        writer=writer,
        owns_writer=owns,
        every=every,
        activations=activations,
        include=inc,
        exclude=exc,
        group_depth=group_depth,
        update_every=update_every,
        max_history=max_history,
        param_scalars=param_scalars,
        flow_every=flow_every,
        histogram_every=histogram_every,
        on_finding=on_finding,
        halt_on=halt,
        thresholds=thresholds,
    )
