"""Replay of a broken step: where a NaN/Inf is born, before the optimizer spreads it.

The forward that produced a step's gradients is kept by reference (a root forward
pre-hook stores its ``args``/``kwargs``; a tensor hook on the root output stores a
reference to dL/d(output)). When the statistics of a logged step show a non-finite
gradient while the weights are still finite, right before the update (the step
pre-hook, or the first closure evaluation), :class:`Replay` runs that forward once
more:

1. the inputs themselves: a non-finite floating input means the NaN came with the
   data (``phase`` ``"input"``);
2. the forward under ``no_grad`` and a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
   that checks each op's floating outputs: the first op that makes a NaN out of
   NaN-free inputs, or an Inf out of finite ones, is the birth (its op, the
   innermost module whose forward ran it, the user's source line, the range of its
   inputs; ``phase`` ``"forward"``);
3. with a finite forward: a non-finite dL/d(output) means the loss made it
   (``phase`` ``"loss"``); else the forward with grad enabled and the backward of
   the captured dL/d(output) (``torch.autograd.grad`` on the parameters, so no
   ``.grad`` is touched): the first backward node whose incoming gradients are
   finite and whose outgoing ones are not (``phase`` ``"backward"``).

Each replay runs with the RNG forked (CPU, the CUDA devices involved, Python's and
numpy's), in the autocast regions the original forward ran in, every buffer replaced
by a clone for its duration (BatchNorm running statistics and
``num_batches_tracked`` stay as they were), and gradlens's own hooks standing aside.
The CPU generator is set to its state at the original forward (kept at each forward:
a 5 KB copy), so CPU dropout draws the same masks; a CUDA generator is not kept, so
random ops on CUDA draw new numbers (a NaN that depends on one mask may then not be
reproduced: the site says so and the rule falls back). The user's code runs once
more: side effects outside buffers (counters, in-place changes of the inputs, the
user's own hooks) are repeated. Any exception in a replay becomes a warning and a
fallback site.

Cost: nothing on a healthy step but the references (kept from the forward to the end
of its step: dL/d(output) then outlives the backward by the rest of the step) and one
node prehook per forward; the check reads the step's gradient statistics, which on CPU are already
on the host. On CUDA that read is a host sync, so it is made only when the monitor
reads every step at once anyway (``on_finding``/``halt_on``), or with
``replay_nonfinite="sync"`` (one sync per logged step). The replay itself runs on
broken steps only, at most :data:`MAX_REPLAYS` times per monitor (after the last one
nothing is kept and the root forward hook is off).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import sys
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradlens._nested import floating as _floating
from gradlens._nested import named_tensors as _tensors
from gradlens._record import ROOT_LAYER
from gradlens.monitor import packet as _packet
from gradlens.monitor import stats as _stats
from gradlens.monitor.attach import HookSet, standing_aside
from gradlens.monitor.publish import user_stacklevel
from gradlens.monitor.sources.base import Cycle, Source, Work

__all__ = ["Replay", "locate", "MAX_REPLAYS"]

#: Replays per monitor at most (a run whose weights stay finite under repeated
#: non-finite gradients would otherwise pay one replay per step).
MAX_REPLAYS = 4

#: Output tensors of the root whose gradient is kept (a reference each).
_MAX_OUTPUTS = 8

#: Top-level packages whose frames are not the user's source line.
_LIBRARY_FRAMES = ("torch", "gradlens")

#: Statistics vectors up to this length are summed in Python (cheaper than a torch
#: or numpy call below it; measured: 2.1 us against 4.6 us for 24 floats).
_SHORT = 256

#: Ops whose output holds no computed value (uninitialised memory may be NaN).
_UNINITIALISED = ("empty", "set_", "resize")


def _finite(t: Tensor) -> bool:
    return t.numel() == 0 or bool(torch.isfinite(t).all())


def _flags(values: Sequence[Any]) -> Tuple[bool, bool]:
    """(any NaN, any non-finite) over floating tensors and Python numbers."""
    nan = bad = False
    for v in values:
        if isinstance(v, Tensor):
            if _floating(v) and v.numel() and not _finite(v):
                bad = True
                nan = nan or bool(torch.isnan(v).any())
        elif isinstance(v, float) and not math.isfinite(v):
            bad = True
            nan = nan or math.isnan(v)
    return nan, bad


def _leaves(args: Any, kwargs: Any) -> List[Any]:
    flat: List[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        else:
            flat.append(v)

    walk(args)
    walk(kwargs)
    return flat


def _range(values: Sequence[Any]) -> Optional[Tuple[float, float]]:
    """(min, max) over the floating tensors and Python floats among ``values``."""
    lo, hi = math.inf, -math.inf
    seen = False
    for v in values:
        if isinstance(v, Tensor) and v.is_floating_point() and v.numel():
            with torch.no_grad():
                mn, mx = torch.aminmax(v.detach().float())
            lo, hi, seen = min(lo, float(mn)), max(hi, float(mx)), True
        elif isinstance(v, float):
            lo, hi, seen = min(lo, v), max(hi, v), True
    return (lo, hi) if seen else None


def _user_line() -> Optional[str]:
    """``file.py:42`` of the first frame outside torch and gradlens."""
    frame = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".")[0] not in _LIBRARY_FRAMES:
            return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _absmax(value: Any) -> float:
    """The largest |x| over the floating tensors of ``value`` when it is finite, else -1."""
    best = -1.0
    for _, t in _tensors(value):
        if _floating(t) and t.numel():
            m = float(t.detach().abs().max())
            if math.isfinite(m) and m > best:
                best = m
    return best


class _Stack:
    """The qualified names of the modules whose forward is running (temporary hooks), and
    the leaf module whose output grew most above unit scale (``max(|out|, 1) / max(|in|, 1)``,
    finite values only) so far: where the values of an overflow came from."""

    def __init__(self, named: Sequence[Tuple[str, nn.Module]]) -> None:
        self.names: List[str] = []
        self.hooks = HookSet()
        self.grew: Optional[Tuple[float, str, float, float]] = None  # (factor, module, |in|, |out|)
        self._in: Dict[str, float] = {}
        for name, module in named:
            if name:
                leaf = next(module.children(), None) is None
                self.hooks.add(module.register_forward_pre_hook(self._push(name, leaf), prepend=True))
                self.hooks.add(module.register_forward_hook(self._pop(name, leaf), always_call=True))

    def _push(self, name: str, leaf: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.names.append(name)
            if leaf:
                self._in[name] = _absmax(args)

        return hook

    def _pop(self, name: str, leaf: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.names and self.names[-1] == name:
                self.names.pop()
            seen = self._in.pop(name, -1.0) if leaf else -1.0
            out = _absmax(output) if seen >= 0 else -1.0
            if out >= 0:
                factor = max(out, 1.0) / max(seen, 1.0)
                if factor > 1.0 and (self.grew is None or factor > self.grew[0]):
                    self.grew = (factor, name, seen, out)

        return hook

    def growth(self) -> Optional[Dict[str, Any]]:
        """``{"module", "from", "to"}`` of the largest growth so far, or None."""
        if self.grew is None:
            return None
        _, name, seen, out = self.grew
        return {"module": name, "from": seen, "to": out}

    @property
    def top(self) -> str:
        return self.names[-1] if self.names else ROOT_LAYER


class _FirstNonFinite(TorchDispatchMode):
    """Records the first op that makes a NaN out of NaN-free inputs, or an Inf out
    of finite inputs (an Inf from a non-finite scalar, ``masked_fill(-inf)``, is
    not a birth); later ops are not checked."""

    def __init__(self, stack: _Stack) -> None:
        super().__init__()
        self.stack = stack
        self.found: Optional[Dict[str, Any]] = None

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.found is not None or any(u in func.__name__ for u in _UNINITIALISED):
            return func(*args, **kwargs)
        inputs = _leaves(args, kwargs)
        mutable = func._schema.is_mutable
        before = _flags(inputs) if mutable else None  # an in-place op overwrites its input
        out = func(*args, **kwargs)
        outs = [t for _, t in _tensors(out) if _floating(t)]
        if not outs or all(_finite(t) for t in outs):
            return out
        out_nan, _ = _flags(outs)
        in_nan, in_bad = before if before is not None else _flags(inputs)
        if (out_nan and not in_nan) or not in_bad:
            self.found = {
                "op": str(func.overloadpacket),
                "module": self.stack.top,
                "source": _user_line(),
                "input_range": None if mutable else _range(inputs),
                "grew_at": self.stack.growth(),  # (an overflow's values grew there first)
            }
        return out


class _Tagger(TorchDispatchMode):
    """Notes, for every autograd node made in a forward, the op, module, source line
    and inputs that made it (the node is read at the next op, once autograd set it)."""

    def __init__(self, stack: _Stack) -> None:
        super().__init__()
        self.stack = stack
        self.nodes: Dict[int, Tuple[Any, Dict[str, Any]]] = {}
        self._pending: List[Tuple[Tensor, Dict[str, Any]]] = []

    def resolve(self) -> None:
        for t, info in self._pending:
            node = t.grad_fn
            if node is not None and id(node) not in self.nodes:
                self.nodes[id(node)] = (node, info)
        self._pending = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        self.resolve()
        out = func(*args, **kwargs)
        outs = [t for _, t in _tensors(out) if _floating(t)]
        if outs:
            info = {
                "op": str(func.overloadpacket),
                "module": self.stack.top,
                "source": _user_line(),
                "inputs": [v for v in _leaves(args, kwargs) if isinstance(v, (Tensor, float))],
            }
            self._pending.extend((t, info) for t in outs)
        return out


@contextlib.contextmanager
def _isolated(
    root: nn.Module, devices: Sequence[int], rng: Optional[Tensor] = None, autocast: Sequence[Tuple[str, Any]] = (),
) -> Iterator[None]:
    """RNG forked (and set to ``rng``, the CPU generator's state at the original
    forward, when given), buffers replaced by clones, the original forward's autocast
    regions entered again, gradlens's hooks standing aside."""
    swapped: List[Tuple[Dict[str, Any], str, Tensor]] = []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.no_grad():
            for module in root.modules():
                for name, buf in list(module._buffers.items()):
                    if buf is not None:
                        swapped.append((module._buffers, name, buf))
                        module._buffers[name] = buf.clone()
        with torch.random.fork_rng(devices=list(devices)), standing_aside(), contextlib.ExitStack() as regions:
            if rng is not None:
                torch.default_generator.set_state(rng)
            for dev, dtype in autocast:
                regions.enter_context(torch.autocast(dev, dtype=dtype))
            yield
    finally:
        for table, name, buf in reversed(swapped):
            table[name] = buf
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _forward(
    root: nn.Module, stack: _Stack, mode: TorchDispatchMode, args: Any, kwargs: Any, devices: Sequence[int],
    rng: Optional[Tensor], autocast: Sequence[Tuple[str, Any]], *, grad: bool,
) -> Iterator[Any]:
    """Yields the output of one more forward of ``root`` under ``mode``, :func:`_isolated`
    and grad mode ``grad`` (both last until the block ends: a backward runs inside)."""
    with _isolated(root, devices, rng, autocast), torch.set_grad_enabled(grad):
        stack.names = []
        with mode:
            out = root(*args, **kwargs)
        yield out


#: whether any autocast region is on (one call; None on a torch without it)
_any_autocast: Callable[[], bool] = getattr(torch._C, "_is_any_autocast_enabled", None) or (lambda: True)


def _autocast_state() -> List[Tuple[str, Any]]:
    """(device type, dtype) of every autocast region the code runs in now."""
    on = []
    for dev in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(dev):
                on.append((dev, torch.get_autocast_dtype(dev)))
        except (TypeError, AttributeError, RuntimeError):  # torch < 2.4: no device argument
            pass
    return on


def _cuda_devices(root: nn.Module, tensors: Sequence[Tensor]) -> List[int]:
    devs = {t.device.index or 0 for t in list(root.parameters()) + list(root.buffers()) + list(tensors)
            if t.device.type == "cuda"}
    if devs:
        devs.add(torch.cuda.current_device())
    return sorted(devs)


def _bad_input(args: Any, kwargs: Any) -> Optional[Dict[str, Any]]:
    for path, t in _tensors(args, "args") + _tensors(kwargs, "kwargs"):
        if _floating(t) and t.numel() and not _finite(t):
            count = int((~torch.isfinite(t)).sum())
            return {"op": None, "module": ROOT_LAYER, "phase": "input", "input": path,
                    "nonfinite_elements": count}
    return None


def locate(
    root: nn.Module,
    named: Sequence[Tuple[str, nn.Module]],
    args: Any,
    kwargs: Any,
    out_grads: Optional[List[Optional[Tensor]]],
    step: int,
    *,
    backward: bool = True,
    rng: Optional[Tensor] = None,
    autocast: Sequence[Tuple[str, Any]] = (),
) -> Dict[str, Any]:
    """Replay one forward of ``root`` (and its backward) and say where a NaN/Inf is born.

    Args:
        root: the module to call (the model inside any DDP/compile wrapper).
        named: ``(qualified name, module)`` pairs to attribute ops to.
        args, kwargs: the forward's inputs (references of the original call).
        out_grads: dL/d(output) for the root's floating outputs, in ``_tensors``
            order (None where no gradient arrived), or None when none was captured.
        step: the step being replayed (``located_by``).
        backward: whether the backward may be replayed.
        rng: the CPU generator's state at the original forward (its dropout masks
            are then drawn again), or None (new random numbers).
        autocast: the autocast regions ``(device type, dtype)`` the original forward
            ran in (entered again for the replay).

    Returns:
        A ``StepRecord.nonfinite_site`` dict; ``located_by`` is ``"replayed step K"``
        when the birth was found, else starts with ``"fallback:"`` and says why.
        ``phase`` is ``"input"`` (with ``input``, the argument's path such as
        ``"args[0]"``, and ``nonfinite_elements``), ``"forward"``, ``"loss"`` or
        ``"backward"`` (with ``grad_fn``, the backward node's name); ``op``,
        ``module``, ``source`` and ``input_range`` as in the record's contract.
    """
    how = f"replayed step {step}"
    site = _bad_input(args, kwargs)
    if site is not None:
        return {**site, "located_by": how}
    devices = _cuda_devices(root, [t for _, t in _tensors(args) + _tensors(kwargs)])
    stack = _Stack(named)
    try:
        mode = _FirstNonFinite(stack)
        with _forward(root, stack, mode, args, kwargs, devices, rng, autocast, grad=False) as out:
            pass
        if mode.found is not None:
            return {**mode.found, "phase": "forward", "located_by": how}
        if not all(_finite(t) for _, t in _tensors(out) if _floating(t)):
            return {"located_by": f"fallback: {how}: an output is non-finite but no op made it"}
        del out
        if not out_grads or all(g is None for g in out_grads):
            return {"located_by": f"fallback: {how}: the forward is finite (no output gradient was kept)"}
        if not all(_finite(g) for g in out_grads if g is not None):
            return {"op": None, "module": None, "phase": "loss", "located_by": how}
        if not backward:
            return {"located_by": f"fallback: {how}: the forward is finite (backward not replayed here)"}
        return _backward(root, stack, args, kwargs, out_grads, devices, how, rng, autocast)
    finally:
        stack.hooks.remove()


def _backward(
    root: nn.Module, stack: _Stack, args: Any, kwargs: Any, out_grads: List[Optional[Tensor]],
    devices: Sequence[int], how: str, rng: Optional[Tensor], autocast: Sequence[Tuple[str, Any]],
) -> Dict[str, Any]:
    found: List[Any] = []
    hooks = HookSet()
    try:
        tagger = _Tagger(stack)
        with _forward(root, stack, tagger, args, kwargs, devices, rng, autocast, grad=True) as out:
            tagger.resolve()
            pairs = [(t, g) for (_, t), g in zip(_tensors(out), out_grads)
                     if g is not None and _floating(t) and t.requires_grad]
            params = [p for p in root.parameters() if p.requires_grad]
            if not pairs or not params:
                return {"located_by": f"fallback: {how}: the forward is finite and nothing to differentiate"}

            def make(node: Any, info: Optional[Dict[str, Any]]) -> Callable[..., None]:
                def hook(grad_inputs: Any, grad_outputs: Any) -> None:
                    if found:
                        return
                    incoming = [g for g in grad_outputs if g is not None]
                    outgoing = [g for g in grad_inputs if g is not None]
                    if all(_finite(g) for g in incoming) and not all(_finite(g) for g in outgoing):
                        found.append((node, info))

                return hook

            # every node of the graph, tagged or not (a custom Function's own node)
            todo = [t.grad_fn for t, _ in pairs if t.grad_fn is not None]
            seen = set()
            while todo:
                node = todo.pop()
                if node is None or id(node) in seen:
                    continue
                seen.add(id(node))
                if type(node).__name__ != "AccumulateGrad":
                    info = tagger.nodes.get(id(node), (None, None))[1]
                    hooks.add(node.register_hook(make(node, info)))
                todo.extend(n for n, _ in node.next_functions)
            torch.autograd.grad([t for t, _ in pairs], params, grad_outputs=[g for _, g in pairs],
                                allow_unused=True)
    finally:
        hooks.remove()
    if not found:
        return {"located_by": f"fallback: {how}: forward and backward replayed finite"}
    node, info = found[0]
    site: Dict[str, Any] = {"op": None, "module": None, "source": None, "input_range": None}
    if info is not None:
        site.update(op=info["op"], module=info["module"], source=info["source"], input_range=_range(info["inputs"]))
    return {**site, "grad_fn": node.name(), "phase": "backward", "located_by": how}


def _keep(grads: List[Optional[Tensor]], i: int, grad: Tensor) -> None:
    grads[i] = grad


def _keep_nth(grads: List[Optional[Tensor]], i: int, nr: int, grad_outputs: Any) -> None:
    grads[i] = grad_outputs[nr]


class Replay(Source):
    """The replay of broken steps (see the module docstring).

    Args:
        model: the model as called (a forward hook on it keeps dL/d(output)).
        root: the module to replay (inside DDP/DataParallel/compile wrappers).
        named: ``(qualified name, module)`` pairs of ``root``'s modules.
        read_device: whether statistics on a CUDA device may be read at the step
            (a host sync; False: CUDA steps are not checked).
        stepping: ``stepping(k)`` says whether optimizer ``k`` is really about to
            update (False for a step a GradScaler skipped).
        backward: whether a backward may be replayed (False under torch.distributed).
    """

    def __init__(
        self, model: nn.Module, root: nn.Module, named: Sequence[Tuple[str, nn.Module]], *,
        read_device: bool, stepping: Callable[[int], bool] = lambda k: True, backward: bool = True,
    ) -> None:
        self._root, self._named = root, list(named)
        self._read_device, self._backward = read_device, backward
        self.stepping = stepping
        #: whether the step being collected is logged (only those are checked)
        self.logged: Callable[[], bool] = lambda: True
        self._args: Any = None
        self._kwargs: Any = None
        self._grads: Optional[List[Optional[Tensor]]] = None
        self._rng: Optional[Tensor] = None
        self._autocast: List[Tuple[str, Any]] = []
        self.replays = 0
        self._site: Optional[Tuple[int, Dict[str, Any]]] = None
        self.enabled = False  # (set by attach)
        self._post_due = False  # capture() kept this forward: its output's gradient is wanted
        self._model = model
        self._hooks = HookSet()

    def attach(self) -> None:
        """Put the root forward hook on (once the monitor is built: a bad option must
        leave no hook behind), unless the statistics cannot be read at the step (a
        CUDA model without ``read_device``: then nothing is kept at all). The inputs
        come from the monitor's own root pre-hook, which calls :meth:`capture`."""
        self.enabled = self._read_device or not any(_packet.defers(p.device) for p in self._root.parameters())
        if self.enabled:
            self._hooks.add(self._model.register_forward_hook(self._on_post))

    # -- capture (every forward: references only) ------------------------------
    def capture(self, args: Any, kwargs: Any) -> None:
        """Keep references to a root forward's inputs (called by the monitor's root
        pre-hook, which does nothing while torch.compile traces or a replay runs)."""
        # (each test and call here runs on every forward, with the training's data in
        # the caches: ~10x its cost in a micro-benchmark, see benchmarks/README.md)
        if not self.enabled or not torch.is_grad_enabled() or not self.logged():
            self._post_due = False
            return  # a forward without grad made no gradient; unlogged steps are not checked
        self._post_due = True  # (the forward hook keeps dL/d(output) of this forward)
        self._args, self._kwargs, self._grads = args, kwargs, None
        # the CPU generator's state (a 5 KB copy, ~1.5 us): the replay draws the same
        # dropout masks as this forward (CUDA generators are not kept)
        self._rng = torch.default_generator.get_state()
        # (the step usually runs outside autocast: one call says so)
        self._autocast = _autocast_state() if _any_autocast() else []

    def _on_post(self, module: nn.Module, args: Any, output: Any) -> None:
        # capture() decided for this forward (grad mode, logged step, not compiling:
        # the same at the forward's end as at its start)
        if not self._post_due:
            return
        self._post_due = False
        outs = [output] if isinstance(output, Tensor) else [t for _, t in _tensors(output)][:_MAX_OUTPUTS]
        grads: List[Optional[Tensor]] = [None] * len(outs)
        self._grads = grads
        for i, t in enumerate(outs):
            if not t.requires_grad or not _floating(t):
                continue
            node = t.grad_fn
            if node is None:  # (a leaf returned as it is)
                t.register_hook(functools.partial(_keep, grads, i))
            else:  # a prehook of its node: half the cost of Tensor.register_hook
                node.register_prehook(functools.partial(_keep_nth, grads, i, t.output_nr))

    # -- the step ----------------------------------------------------------------
    def before_update(self, cycle: Cycle, work: Work) -> None:
        if self._args is None or self.replays >= MAX_REPLAYS or not self.stepping(work.k):
            return
        if self._site is not None and self._site[0] == cycle.step:
            return  # (a second optimizer of the same step)
        verdict = self._verdict(work)
        if verdict != "grads":
            return
        self.replays += 1
        if self.replays >= MAX_REPLAYS:  # the last one: nothing is kept from now on
            self.enabled = False
            self._hooks.remove()
        try:
            site = locate(self._root, self._named, self._args, self._kwargs or {}, self._grads, cycle.step,
                          backward=self._backward, rng=self._rng, autocast=self._autocast)
        except Exception as exc:  # noqa: BLE001 - the replay must never stop training
            warnings.warn(
                f"gradlens: the replay of step {cycle.step} failed ({type(exc).__name__}: {exc}); "
                "the NaN/Inf is located by the fallback", RuntimeWarning, stacklevel=user_stacklevel(),
            )
            site = {"located_by": f"fallback: the replay of step {cycle.step} failed ({type(exc).__name__})"}
        self._site = (cycle.step, site)

    def _verdict(self, work: Work) -> Optional[str]:
        """``"grads"``: a gradient element is non-finite and every weight is finite;
        ``"weights"``: a weight is non-finite already (not the birth step); None:
        finite, or not readable without a sync."""
        bad_grads = False
        for part in work.parts:
            vec = part.data.get("grad")
            if vec is None:
                return None
            if not vec.is_cpu:  # CUDA: reading it is a host sync (a CPU one never is)
                if not self._read_device:
                    return None
                vec = vec.cpu()
            # NaN/Inf propagate into the sum (one that overflows is checked below); a
            # Python sum of a short list is the cheapest read of a CPU tensor
            total = sum(vec.tolist()) if vec.numel() <= _SHORT else float(vec.sum())
            if math.isfinite(total):
                continue
            arr = vec.numpy()
            if np.isfinite(arr).all():
                continue
            _, gm, wn = _stats.split_grad_stats(arr, len(part.grads))
            if not np.isfinite(wn).all() and any(not _finite(w) for w in part.weights):
                return "weights"
            bad_grads = bad_grads or not np.isfinite(gm).all()
        return "grads" if bad_grads else None

    def after_update(self, cycle: Cycle, work: Work, pend: Any, packet: Any, skipped: bool) -> None:
        if self._site is not None and self._site[0] == cycle.step and pend.site is None:
            pend.site = self._site[1]

    def step_done(self, cycle: Cycle) -> None:
        # the references live from the forward to the end of its step, not longer
        # (dL/d(output) of a language model's logits is large)
        self._args = self._kwargs = self._grads = self._rng = None

    def close(self) -> None:
        self._hooks.remove()
        self._args = self._kwargs = self._grads = self._rng = None
        self._model = None
