"""Names and groups: which parameters are watched, what they are called, in what order.

* Names are those of the user's model inside any wrapper (DDP, DataParallel, FSDP,
  ``torch.compile``): ``0.weight``, never ``module.0.weight``.
* ``include``/``exclude`` glob patterns select parameters and modules;
  ``group_depth`` folds module paths into blocks (``encoder.layer.3``).
* A :class:`Layout` is the set of watched parameters at one moment (which ones
  have ``requires_grad``, which optimizer owns each), with the indices the per-layer
  reductions need. :class:`Layouts` hands out the current one, cached by signature.
* :class:`LayerOrder` orders layers from the input side (forward order, found by
  one probed forward, else registration order).

Nothing here touches a tensor's values or registers a hook.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import operator
import sys
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch import nn

from gradlens._record import ROOT_LAYER, layer_of

__all__ = ["Layout", "Layouts", "LayerOrder", "group_name", "auto_depth", "wrapper_types", "strip_wrappers"]

_REQUIRES_GRAD = operator.attrgetter("requires_grad")

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


def wrapper_types() -> List[Tuple[type, str]]:
    """(class, attribute of the wrapped module) of each wrapper class imported so far."""
    found = []
    for module, cls_name, attr in _WRAPPERS:
        cls = getattr(sys.modules.get(module), cls_name, None)
        if isinstance(cls, type):
            found.append((cls, attr))
    return found


def strip_wrappers(name: str, root: nn.Module, wrappers: Sequence[Tuple[type, str]]) -> str:
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


def _split_levels(layer: str) -> List[List[str]]:
    # a numeric part (a ModuleList/Sequential index) stays with the name before it
    levels: List[List[str]] = []
    for part in layer.split("."):
        if part.isdigit() and levels and len(levels[-1]) == 1 and not levels[-1][0].isdigit():
            levels[-1].append(part)
        else:
            levels.append([part])
    return levels


def group_name(layer: str, depth: Optional[int]) -> str:
    """Truncate a module path to ``depth`` levels; a numeric part (a ModuleList/Sequential
    index) stays attached to the name right before it, so ``encoder.layer.3.attn.q`` at
    depth 2 is ``encoder.layer.3``. An index after an index is a level of its own, so
    a Sequential of Sequentials groups too: ``12.3`` at depth 1 is ``12``."""
    if depth is None or "." not in layer:
        return layer
    return ".".join(p for level in _split_levels(layer)[:depth] for p in level)


def auto_depth(root: nn.Module, name: Callable[[str], str] = lambda n: n) -> Optional[int]:
    """The ``group_depth`` of the shallowest repeated block: a ``ModuleList`` or
    ``Sequential`` holding at least two children of one class that own parameters
    (``transformer.h.0`` for GPT-2: 2, ``bert.encoder.layer.0`` for BERT: 3,
    ``model.layers.0`` for Llama, ``encoder.block.0`` for T5: 2). None when the
    model has no such block (every layer keeps its own row)."""
    best: Optional[int] = None
    for qual, module in root.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = [c for c in module.children() if any(True for _ in c.parameters())]
        if len(children) < 2 or len({type(c) for c in children}) != 1 or not any(True for _ in children[0].children()):
            continue  # (a Sequential of single layers is a stack of rows already)
        first = next(n for n, c in module.named_children() if c is children[0])
        depth = len(_split_levels(name(f"{qual}.{first}" if qual else first)))
        best = depth if best is None else min(best, depth)
    return best


def _matches(name: str, patterns: Tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


class Layout:
    """The watched parameters at one moment: names, layers, per-optimizer indices."""

    def __init__(
        self,
        named: List[Tuple[str, nn.Parameter]],
        opt_params: List[List[nn.Parameter]],
        group_depth: Optional[int],
    ) -> None:
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.layers = [group_name(layer_of(n), group_depth) for n in self.names]
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


class Layouts:
    """Names the model's parameters and modules and hands out the current :class:`Layout`.

    Args:
        model: the model as given to ``watch`` (possibly wrapped).
        optimizers: the optimizers whose parameters are watched (none: every
            parameter of the model, for ``Monitor.step()``).
        include, exclude: glob patterns (None: no filter).
        group_depth: see :func:`group_name`; ``"auto"``: :func:`auto_depth`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        include: Optional[Tuple[str, ...]],
        exclude: Optional[Tuple[str, ...]],
        group_depth: Union[None, int, str],
    ) -> None:
        self.model = model
        self.root: nn.Module = getattr(model, "_orig_mod", model)
        self.wrappers = wrapper_types()
        self._optimizers = list(optimizers)
        self.include, self.exclude = include, exclude
        if group_depth == "auto":
            group_depth = auto_depth(self.root, self.name)
        self.group_depth: Optional[int] = group_depth
        self._current: Optional[Layout] = None
        self._current_sig: Any = None
        self._by_sig: Dict[Any, Layout] = {}  # by signature (requires_grad of each parameter)
        self._unions: Dict[Tuple[int, int], Layout] = {}  # of two layouts met in one step

    @property
    def compiled(self) -> bool:
        """Whether a ``torch.compile``'d module sits anywhere in the model."""
        compiled = tuple(cls for cls, attr in self.wrappers if attr == "_orig_mod")
        return bool(compiled) and any(isinstance(m, compiled) for m in self.model.modules())

    def name(self, name: str) -> str:
        """A parameter/module name of the root as the user's unwrapped model has it."""
        return strip_wrappers(name, self.root, self.wrappers)

    def selected(self, name: str) -> bool:
        """Whether ``name`` passes the include=/exclude= patterns."""
        return (self.include is None or _matches(name, self.include)) and (
            self.exclude is None or not _matches(name, self.exclude)
        )

    def warn_if_nothing_matches(self) -> None:
        """One warning when include=/exclude= leave none of the model's parameters."""
        if self.include is None and self.exclude is None:
            return
        names = [self.name(n) for n, _ in self.root.named_parameters()]
        if not names or any(self.selected(n) for n in names):
            return
        given = ", ".join(
            f"{arg}={list(pats)!r}"
            for arg, pats in (("include", self.include), ("exclude", self.exclude))
            if pats is not None
        )
        shown = ", ".join(repr(n) for n in names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        wrapped = self.root is not self.model or any(isinstance(self.root, cls) for cls, _ in self.wrappers)
        hint = " (without the wrapper's 'module.' or '_orig_mod.' prefix)" if wrapped else ""
        warnings.warn(
            f"gradlens.watch({given}) leaves none of the model's parameters, so no gradient "
            f"statistics will be recorded; parameter names are{hint}: {shown}",
            UserWarning,
            stacklevel=4,
        )

    def modules(self, skip: Tuple[type, ...] = ()) -> List[Tuple[str, nn.Module]]:
        """The selected modules whose outputs are worth a row (leaves and modules that
        own parameters, grouped by ``group_depth``, not of a ``skip`` type)."""
        mods = []
        seen: Set[str] = set()
        named = {self.name(n): m for n, m in self.root.named_modules()}
        for name, module in named.items():
            if name == "":
                continue
            leaf = not any(True for _ in module.children())
            owns = any(True for _ in module.parameters(recurse=False))
            if not (leaf or owns) or isinstance(module, skip):
                continue
            if not self.selected(name):
                continue
            group = group_name(name, self.group_depth)
            if group in seen or group not in named:
                continue
            seen.add(group)
            mods.append((group, named[group]))
        return mods

    def current(self) -> Layout:
        """The layout of this moment (a parameter (un)frozen or added changes it)."""
        if self._optimizers:
            # params added to an optimizer later, or (un)frozen, change the signature
            groups = (g["params"] for opt in self._optimizers for g in opt.param_groups)
            sig = tuple(map(_REQUIRES_GRAD, itertools.chain.from_iterable(groups)))
        else:
            sig = tuple(map(_REQUIRES_GRAD, self.root.parameters()))
        if self._current is not None and sig == self._current_sig:
            return self._current
        # (a GAN freezing D for G's step flips between two signatures every step:
        # the same layout objects come back, so their steps still batch together)
        layout = self._by_sig.get(sig)
        if layout is None:
            layout = self._by_sig[sig] = self._layout_of(lambda p: p.requires_grad)
            if len(self._by_sig) > 8:
                self._by_sig.pop(next(iter(self._by_sig)))
                self._unions.clear()
        self._current, self._current_sig = layout, sig
        return layout

    def union(self, a: Layout, b: Layout) -> Layout:
        """The layout holding the parameters of both ``a`` and ``b`` (cached)."""
        key = (id(a), id(b))
        union = self._unions.get(key)
        if union is None:
            ids = set(a.index) | set(b.index)
            union = self._unions[key] = self._layout_of(lambda p: id(p) in ids)
        return union

    def _layout_of(self, want: Callable[[nn.Parameter], bool]) -> Layout:
        """The layout of the watched parameters (optimizer-owned, selected) that ``want``."""
        owned: Optional[Set[int]] = None
        opt_params = [[p for g in opt.param_groups for p in g["params"]] for opt in self._optimizers]
        if self._optimizers:
            owned = {id(p) for ps in opt_params for p in ps}
        named = []
        for n, p in self.root.named_parameters():
            n = self.name(n)
            if not want(p) or (owned is not None and id(p) not in owned):
                continue
            if not self.selected(n):
                continue
            named.append((n, p))
        if not self._optimizers:
            opt_params = [[p for _, p in named]]
        return Layout(named, opt_params, self.group_depth)


class LayerOrder:
    """Orders layer names from the input side: forward order where a forward was
    seen (:meth:`saw`), else the order in which the modules were registered."""

    def __init__(self, layouts: Layouts) -> None:
        self._group_depth = layouts.group_depth
        self._reg = {layouts.name(n): i for i, (n, _) in enumerate(layouts.root.named_modules())}
        self.forward: Dict[str, int] = {}  # module name -> position in the first forward
        self._cache: Dict[Any, Tuple[List[str], np.ndarray]] = {}

    def saw(self, name: str) -> None:
        """Note that module ``name`` ran (its first call fixes its position)."""
        if name not in self.forward:
            self.forward[name] = len(self.forward)

    def of(self, layers: List[str]) -> Tuple[List[str], np.ndarray]:
        """``layers`` ordered input side first, and the position of each input in that order."""
        key = (tuple(layers), len(self.forward))
        cached = self._cache.get(key)
        if cached is None:
            ordered = self.sorted(layers)
            row_of = {name: i for i, name in enumerate(ordered)}
            cached = self._cache[key] = (ordered, np.array([row_of[n] for n in layers], dtype=np.int64))
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
        return list(cached[0]), cached[1]

    def sorted(self, layers: Iterable[str]) -> List[str]:
        """``layers`` (deduplicated) in input-side-first order."""
        def pos(name: str) -> Tuple[float, float]:
            # a group's position is that of its first member module in forward order
            fwd = self.forward.get(name)
            if fwd is None and self._group_depth is not None:
                members = [v for k, v in self.forward.items() if k == name or k.startswith(name + ".")]
                fwd = min(members) if members else None
            reg = self._reg.get("" if name == ROOT_LAYER else name, math.inf)
            return (fwd if fwd is not None else math.inf, reg)

        return sorted(set(layers), key=pos)
