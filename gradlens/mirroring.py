"""``gradlens.mirror``: swap every supported layer of a model for its gradlens twin.

Three pieces:

* **twins**: a layer whose class has a twin (:mod:`gradlens.nn`, the Hugging Face
  layers of :mod:`gradlens.nn.hf`, or one registered with :func:`register_twin`) is
  replaced by it, sharing its parameters;
* **routing**: inside the mirrored model's forward, the torch functions gradlens
  covers (``F.scaled_dot_product_attention``, ``F.cross_entropy``, ``torch.matmul``,
  ``x + w``, ...) are sent to :mod:`gradlens.functional` (see ``gradlens._routing``);
* **coverage**: :func:`coverage` reads the autograd graph of one forward and says
  which parameters get their gradient from a gradlens backward.

Example:
    >>> import torch, gradlens
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    >>> gradlens.mirroring.coverage(gradlens.mirror(net), torch.randn(2, 3)).complete
    True
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = [
    "mirror",
    "register_twin",
    "coverage",
    "Coverage",
    "TwinRegistration",
    "UnsupportedLayersWarning",
    "MirrorError",
]

# torch containers whose forward only routes to children (no math of their own).
# nn.TransformerEncoder only canonicalizes masks and loops over its layers (plus its
# optional final norm, a child); its nested-tensor fast path runs only without grad.
_PURE_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.TransformerEncoder)


class UnsupportedLayersWarning(UserWarning):
    """Warned by :func:`gradlens.mirror` when some layers or parameters stay plain torch."""


class MirrorError(TypeError):
    """Raised by :func:`gradlens.mirror` with ``strict=True`` when a layer or parameter stays plain torch."""


# ------------------------------------------------------------------------- registry
Factory = Union[type, Callable[[nn.Module], nn.Module]]
_REGISTRY: Dict[type, Factory] = {}


class TwinRegistration:
    """Returned by :func:`register_twin`; ``remove()`` (or leaving a ``with`` block) undoes it.

    Removing twice, or after the class was registered again, is harmless.
    """

    def __init__(self, module_class: type, factory: Factory) -> None:
        self.module_class, self.factory = module_class, factory

    def remove(self) -> None:
        """Forget this registration (only if it is still the current one for the class)."""
        if _REGISTRY.get(self.module_class) is self.factory:
            del _REGISTRY[self.module_class]

    def __enter__(self) -> "TwinRegistration":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def register_twin(module_class: type, factory: Factory, *, replace: bool = False) -> TwinRegistration:
    """Tell :func:`gradlens.mirror` how to mirror your own (or a library's) module class.

    Exactly ``module_class`` is matched (not its subclasses), before gradlens' own
    twins, so a registration can also override one of them.

    Args:
        module_class: an ``nn.Module`` subclass.
        factory: either a twin *class*, an ``nn.Module`` subclass (usually of
            ``module_class``) whose ``forward`` computes the same function with
            gradlens ops: mirror gives the twin the layer's attributes, parameters and
            buffers (the same tensor objects), as it does for torch layers; or a
            *callable* ``factory(module) -> nn.Module`` that returns a new module
            sharing ``module``'s parameters. Children of the result are mirrored too.
        replace: allow replacing an existing registration for ``module_class``.

    Returns:
        A :class:`TwinRegistration` whose ``remove()`` undoes it (also a context manager).

    Example:
        >>> import torch, gradlens
        >>> import gradlens.functional as GF
        >>> class Scale(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = torch.nn.Parameter(torch.ones(3))
        ...     def forward(self, x):
        ...         return torch.mul(x, self.w)
        >>> class ScaleTwin(Scale):
        ...     def forward(self, x):
        ...         return GF.mul(x, self.w)
        >>> with gradlens.register_twin(Scale, ScaleTwin):
        ...     twin = gradlens.mirror(Scale())
        >>> type(twin).__name__
        'ScaleTwin'
    """
    if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
        raise TypeError(f"register_twin(module_class=...) expects an nn.Module subclass, got {module_class!r}")
    if isinstance(factory, type):
        if not issubclass(factory, nn.Module):
            raise TypeError(f"register_twin(factory=...) expects an nn.Module subclass or a callable, got {factory!r}")
    elif not callable(factory):
        raise TypeError(
            f"register_twin(factory=...) expects an nn.Module subclass or a callable, got {type(factory).__name__}"
        )
    if not isinstance(replace, bool):
        raise TypeError(f"register_twin(replace=...) expects a bool, got {type(replace).__name__}")
    if module_class in _REGISTRY and not replace:
        raise ValueError(
            f"register_twin: {module_class.__qualname__} already has a twin ({_REGISTRY[module_class]!r}); "
            "pass replace=True to replace it"
        )
    _REGISTRY[module_class] = factory
    return TwinRegistration(module_class, factory)


def _find_twin(cls: type) -> Optional[Factory]:
    """The registered, built-in or Hugging Face twin of ``cls`` (in that order), or None."""
    if cls in _REGISTRY:
        return _REGISTRY[cls]
    from gradlens.nn import TWINS
    from gradlens.nn.hf import twin_class_for

    twin = TWINS.get(cls)
    return twin if twin is not None else twin_class_for(cls)


def _is_torch_class(cls: type) -> bool:
    return cls.__module__.startswith("torch.")


def _shallow_twin(module: nn.Module, cls: type) -> nn.Module:
    """A new module object of class ``cls`` sharing ``module``'s parameters and buffers.

    The attribute dict and the parameter/buffer/child dicts are copied (so replacing
    a child in the twin leaves the caller's model untouched); the tensors inside them
    are the same objects (so an optimizer built on either model trains both).
    """
    twin = cls.__new__(cls)
    state = dict(module.__dict__)
    for key, value in state.items():
        # _parameters, _buffers, _modules, hook dicts, ...: own containers, same tensors.
        if isinstance(value, (dict, set)):
            state[key] = copy.copy(value)
    twin.__dict__.update(state)
    _drop_own_hooks(twin)
    return twin


def _is_own_hook(hook: Any) -> bool:
    from gradlens._routing import _RoutingHooks

    owner = getattr(hook, "__self__", hook)
    return isinstance(owner, (_RoutingHooks, _CoverageOnFirstForward))


def _drop_own_hooks(module: nn.Module) -> None:
    """Forget the hooks an earlier ``mirror`` put on ``module`` (mirroring a mirror installs its own)."""
    for attr in ("_forward_pre_hooks", "_forward_hooks"):
        hooks = module.__dict__.get(attr)
        if not hooks:
            continue
        for key in [k for k, h in hooks.items() if _is_own_hook(h)]:
            del hooks[key]
            module.__dict__.get("_forward_hooks_always_called", {}).pop(key, None)


def _make_twin(module: nn.Module, factory: Factory) -> nn.Module:
    if isinstance(factory, type):
        return _shallow_twin(module, factory)
    out = factory(module)
    if not isinstance(out, nn.Module) or out is module:
        got = "the module itself" if out is module else type(out).__name__
        raise TypeError(f"mirror: the twin factory {factory!r} must return a new nn.Module, got {got}")
    if out._modules is module._modules:  # never let mirroring the children touch the caller's module
        out._modules = dict(out._modules)
    return out


# ------------------------------------------------------------------------- coverage
@dataclass(frozen=True)
class Coverage:
    """Which trainable parameters get their gradient from a gradlens backward.

    Judged from the autograd graph of one forward: a parameter is *covered* when
    every backward node that consumes it is a gradlens Function (one of
    :mod:`gradlens.functional`); it is *uncovered* when some consumer is a torch
    node (listed by name, e.g. ``AddmmBackward0``); *unused* when that forward did
    not reach it (it gets no gradient from anyone). Frozen parameters
    (``requires_grad=False``) are not counted. Names are ``named_parameters()``
    names; a tied parameter appears once, under its first name.

    Example:
        >>> import torch, gradlens
        >>> cov = gradlens.mirroring.coverage(torch.nn.Linear(2, 2), torch.randn(1, 2))
        >>> cov.covered, sorted(cov.uncovered)
        ((), ['bias', 'weight'])
    """

    covered: Tuple[str, ...]
    uncovered: Mapping[str, Tuple[str, ...]]
    unused: Tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when no parameter used by the forward is left to torch's autograd."""
        return not self.uncovered

    @property
    def fraction(self) -> float:
        """Covered share of the used trainable parameters (1.0 when none was used)."""
        used = len(self.covered) + len(self.uncovered)
        return len(self.covered) / used if used else 1.0

    def summary(self) -> str:
        """One line: ``covered/used``, then each uncovered parameter with its torch nodes."""
        used = len(self.covered) + len(self.uncovered)
        head = f"{len(self.covered)}/{used} trainable parameters get their gradient from a gradlens backward"
        if self.unused:
            head += f" ({len(self.unused)} unused by this forward)"
        if not self.uncovered:
            return head
        listed = ", ".join(f"{name} ({', '.join(nodes)})" for name, nodes in self.uncovered.items())
        return f"{head}; plain torch: {listed}"

    __str__ = summary


def _is_gradlens_node(node: Any) -> bool:
    fwd = getattr(node, "_forward_cls", None)  # set on the backward node of a custom Function
    return fwd is not None and getattr(fwd, "__module__", "").startswith("gradlens.")


def _tensors_in(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) output: tensors, tuples, lists, dicts, ModelOutput, dataclasses."""
    if depth > 8:
        return
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors_in(v, depth + 1)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors_in(v, depth + 1)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _tensors_in(getattr(obj, name, None), depth + 1)


def _coverage_of(model: nn.Module, output: Any) -> Coverage:
    """Walk the autograd graph behind ``output`` and sort ``model``'s trainable parameters."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    consumers: Dict[int, List[Any]] = {}
    stack = [t.grad_fn for t in _tensors_in(output) if t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)  # an AccumulateGrad node: a leaf tensor
            if var is not None:
                consumers.setdefault(id(var), []).append(node)
            else:
                stack.append(nxt)
    covered, uncovered, unused = [], {}, []
    for pid, name in names.items():
        nodes = consumers.get(pid)
        if not nodes:
            unused.append(name)
            continue
        torch_nodes = sorted({type(n).__name__ for n in nodes if not _is_gradlens_node(n)})
        if torch_nodes:
            uncovered[name] = tuple(torch_nodes)
        else:
            covered.append(name)
    return Coverage(tuple(covered), uncovered, tuple(unused))


def _as_call(inputs: Any) -> Tuple[tuple, dict]:
    """``example_inputs`` as (args, kwargs): a dict is keyword arguments, a tuple positional ones."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return (inputs if isinstance(inputs, tuple) else (inputs,)), {}


def coverage(
    model: nn.Module, *args: Any, loss_fn: Optional[Callable[[Any], Any]] = None, **kwargs: Any
) -> Coverage:
    """Run ``model(*args, **kwargs)`` once and report which parameters gradlens differentiates.

    Works on any model (mirrored or not). The forward runs with grad enabled; no
    backward runs, so no ``.grad`` changes. Buffers (BatchNorm running statistics)
    and the random number generators are restored afterwards, so the model and the
    random stream are left exactly as they were.

    Args:
        model: the model to run.
        *args, **kwargs: its inputs (a sample batch).
        loss_fn: optional ``loss_fn(output) -> tensor``; its graph is walked too (e.g.
            a loss written with torch ops on parameters outside the model).

    Returns:
        A :class:`Coverage`.

    Example:
        >>> import torch, gradlens
        >>> class Biased(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin, self.shift = torch.nn.Linear(2, 2), torch.nn.Parameter(torch.zeros(2))
        ...     def forward(self, x):
        ...         return torch.special.expit(self.lin(x) + self.shift)
        >>> cov = gradlens.mirroring.coverage(gradlens.mirror(Biased()), torch.randn(3, 2))
        >>> cov.covered, dict(cov.uncovered)
        (('shift', 'lin.weight', 'lin.bias'), {})
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"coverage(model=...) expects an nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"coverage(loss_fn=...) expects a callable, got {type(loss_fn).__name__}")
    global _measuring
    buffers = [b for b in model.buffers()]
    saved = [b.detach().clone() for b in buffers]
    devices = sorted({str(t.device) for t in (*model.parameters(), *buffers) if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        outer, _measuring = _measuring, True  # a mirror's first-forward judgement waits for a real forward
        try:
            output = model(*args, **kwargs)
            if loss_fn is not None:
                output = (output, loss_fn(output))
            return _coverage_of(model, output)
        finally:
            _measuring = outer
            with torch.no_grad():
                for b, s in zip(buffers, saved):
                    b.copy_(s)


_measuring = False  # True while coverage() runs its forward


def _report(result: nn.Module, cov: Coverage, strict: bool, stacklevel: int) -> None:
    object.__setattr__(result, "gradlens_coverage", cov)
    if cov.complete:
        return
    if strict:
        raise MirrorError(f"mirror(strict=True): {cov}")
    warnings.warn(f"gradlens.mirror: {cov}", UnsupportedLayersWarning, stacklevel=stacklevel)


class _CoverageOnFirstForward:
    """Forward hook: the coverage of the first forward run with grad, then it removes itself."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.handle: Any = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if _measuring or not torch.is_grad_enabled():
            return
        if self.handle is not None:
            self.handle.remove()
        _report(module, _coverage_of(module, output), self.strict, stacklevel=6)


# --------------------------------------------------------------------------- mirror
def mirror(
    model: nn.Module,
    strict: bool = False,
    *,
    example_inputs: Any = None,
    route_functional: bool = True,
) -> nn.Module:
    """Return a model in which every supported layer is replaced by its gradlens twin.

    The twin layers (:mod:`gradlens.nn`) compute the same function as torch's, with
    backward passes written by hand in :mod:`gradlens.functional`. The returned model
    shares the caller's ``Parameter`` and buffer objects, so an optimizer built on
    either model trains both (and BatchNorm running statistics update in both); the
    caller's model object itself is not modified.

    What gets a twin: torch layers with a :mod:`gradlens.nn` twin; Hugging Face
    ``Conv1D``, RMS norms and activations (:mod:`gradlens.nn.hf`, recognised without
    importing transformers); classes registered with :func:`register_twin`.
    Containers and other modules are handled through their children, and their own
    ``forward`` code is *routed*: while the mirrored model's forward runs, the torch
    calls gradlens covers (``F.linear``, ``F.scaled_dot_product_attention``,
    ``F.softmax``, ``F.cross_entropy``, ``torch.matmul``/``addmm``/``bmm``, ``+``, ``*``,
    ``torch.cat``, ``expand``, ...) go to :mod:`gradlens.functional`.

    Coverage: which parameters really get their gradient from a gradlens backward is
    read from the autograd graph (:func:`coverage`) and stored as
    ``result.gradlens_coverage``. With ``example_inputs`` it is computed here, on
    that batch (without side effects); otherwise on the first forward that runs with
    grad enabled (until then the attribute is ``None``). Uncovered parameters are
    named, with the torch nodes that consume them, in an
    :class:`UnsupportedLayersWarning`, or a :class:`MirrorError` with ``strict=True``
    (raised by that first forward when there are no ``example_inputs``). Torch layers
    without a twin are also listed at once, as ``result.gradlens_unsupported``.

    Args:
        model: the model to mirror.
        strict: raise instead of warning when a layer or a parameter stays plain torch.
        example_inputs: a sample batch to measure coverage on now: a tuple of
            positional arguments, a dict of keyword arguments (e.g.
            ``{"input_ids": ids, "labels": ids}``) or a single tensor.
        route_functional: route torch calls inside the forward to gradlens
            (default); ``False`` swaps layers only.

    Returns:
        The mirrored model (the same class as ``model`` at the top, or its twin).

    Example:
        >>> import torch, gradlens
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> twin = gradlens.mirror(net, example_inputs=torch.randn(3, 4))
        >>> type(twin[0]).__module__, twin[0].weight is net[0].weight
        ('gradlens.nn.linear', True)
        >>> twin.gradlens_coverage.fraction
        1.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"mirror(model=...) expects an nn.Module, got {type(model).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"mirror(strict=...) expects a bool, got {type(strict).__name__}")
    if not isinstance(route_functional, bool):
        raise TypeError(f"mirror(route_functional=...) expects a bool, got {type(route_functional).__name__}")
    if example_inputs is not None and not isinstance(example_inputs, (tuple, Mapping, torch.Tensor)):
        raise TypeError(
            "mirror(example_inputs=...) expects a tuple of positional arguments, a dict of keyword "
            f"arguments or a tensor, got {type(example_inputs).__name__}"
        )

    unsupported: List[str] = []
    memo: Dict[int, nn.Module] = {}  # a module shared between parents is mirrored once

    def visit(module: nn.Module, name: str) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        cls = type(module)
        factory = _find_twin(cls)
        if factory is not None:
            out = _make_twin(module, factory)
        else:
            out = _shallow_twin(module, cls)
            # a torch layer with math of its own and no twin (an already mirrored layer
            # is a gradlens class, so it never counts)
            own_math = _is_torch_class(cls) and not isinstance(module, _PURE_CONTAINERS)
            if own_math:
                unsupported.append(f"{name or '(root)'} ({cls.__name__})")
        memo[id(module)] = out
        for child_name, child in list(out._modules.items()):
            if child is not None:
                qual = f"{name}.{child_name}" if name else child_name
                out._modules[child_name] = visit(child, qual)
        return out

    result = visit(model, "")
    if unsupported:
        listed = ", ".join(unsupported)
        if strict:
            raise MirrorError(f"mirror(strict=True): no gradlens twin for {listed}")
        warnings.warn(
            f"gradlens.mirror: {len(unsupported)} layer(s) stay plain torch (no gradlens twin yet): {listed}",
            UnsupportedLayersWarning,
            stacklevel=2,
        )
    object.__setattr__(result, "gradlens_unsupported", tuple(unsupported))
    object.__setattr__(result, "gradlens_coverage", None)
    if route_functional:
        from gradlens import _routing

        _routing.install(result)
    if example_inputs is not None:
        args, kwargs = _as_call(example_inputs)
        _report(result, coverage(result, *args, **kwargs), strict, stacklevel=3)
    else:
        hook = _CoverageOnFirstForward(strict)
        hook.handle = result.register_forward_hook(hook)
    return result
