"""``check_model``: find the custom autograd Functions one forward calls and check each on its real inputs."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from gradlens._record import ROOT_LAYER
from gradlens.verify._check import _STE_EXAMPLE, _check_options, _flatten, _map_tensors, check_backward
from gradlens.verify._model_report import FunctionCall, FunctionReport, ModelReport

# Every call of a custom Function runs this code object (``MyFn.apply`` is a bound
# classmethod of torch.autograd.Function), also when the user keeps ``op = MyFn.apply``
# from import time: a profile hook sees it where patching the attribute would not.
_APPLY_CODE = torch.autograd.Function.apply.__func__.__code__
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_GRADLENS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: check_backward's options that check_model forwards (reference and mode are its own business).
_FORWARDED = tuple(
    n for n in inspect.signature(check_backward).parameters if n not in ("fn", "inputs", "reference", "mode", "seed")
)


def _origin(cls: type) -> str:
    """``"torch"``, ``"gradlens"`` or ``""`` (the user's) for a Function class.

    Decided by where its forward and backward are written (a user's subclass that
    overrides only backward is the user's), not by ``__module__``.
    """
    places = set()
    for name in ("forward", "backward"):
        code = getattr(getattr(cls, name, None), "__code__", None)
        if code is None:
            continue
        path = os.path.abspath(code.co_filename)
        places.add("torch" if path.startswith(_TORCH_DIR) else "gradlens" if path.startswith(_GRADLENS_DIR) else "")
    if not places:
        mod = getattr(cls, "__module__", "") or ""
        places = {top for top in ("torch", "gradlens") if mod == top or mod.startswith(top + ".")} or {""}
    for origin in ("", "gradlens", "torch"):
        if origin in places:
            return origin
    return ""


def _describe(t: torch.Tensor) -> str:
    return f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}"


class _Recorder:
    """A profile function: records the custom Function calls of one forward, with copies of their inputs."""

    def __init__(self, model: nn.Module, include_gradlens: bool, max_calls: int) -> None:
        self.modules = {id(m): (name or ROOT_LAYER, m) for name, m in model.named_modules(remove_duplicate=False)}
        self.tensor_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.tensor_names.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})
        self.include_gradlens, self.max_calls = include_gradlens, max_calls
        self.order: List[type] = []  # Function classes, in order of first call
        self.calls: Dict[type, List[Tuple[FunctionCall, Optional[Tuple[Any, Dict[str, Any]]]]]] = {}
        self.counts: Dict[type, int] = {}
        self.excluded: Dict[str, int] = {}
        self._origins: Dict[type, str] = {}
        self._active: List[Any] = []  # frames of the apply calls running now (nested calls are internal)
        self.chain: Optional[Callable[..., Any]] = None  # a profile function set before ours

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if self.chain is not None:
            self.chain(frame, event, arg)
        if event == "call" and frame.f_code is _APPLY_CODE:
            nested = bool(self._active)
            self._active.append(frame)
            if not nested:
                try:
                    self._record(frame)
                except Exception:  # noqa: BLE001 - recording must never break the user's forward
                    pass
        elif event == "return" and self._active and frame is self._active[-1]:
            self._active.pop()

    def _record(self, frame: Any) -> None:
        loc = frame.f_locals
        cls, args, kwargs = loc.get("cls"), loc.get("args", ()), loc.get("kwargs") or {}
        if not isinstance(cls, type):
            return
        origin = self._origins.get(cls)
        if origin is None:
            origin = self._origins[cls] = _origin(cls)
        if origin == "torch" or (origin == "gradlens" and not self.include_gradlens):
            self.excluded[origin] = self.excluded.get(origin, 0) + 1
            return
        if cls not in self.counts:
            self.order.append(cls)
            self.counts[cls] = 0
            self.calls[cls] = []
        index = self.counts[cls]
        self.counts[cls] += 1
        recorded = self.calls[cls]
        if sum(captured is not None for _, captured in recorded) >= self.max_calls:
            return  # counted, not recorded: max_calls bounds the copies kept
        module, module_type, source = self._where(frame.f_back)
        call = FunctionCall(index, module, module_type, source)
        tensors = [(i, a) for i, a in enumerate(args) if torch.is_tensor(a)]
        for i, t in tensors:
            call.inputs.append(f"input {i} = {self.tensor_names.get(id(t), 'activation')} {_describe(t)}")
        needs = [t.requires_grad and (t.is_floating_point() or t.is_complex()) for _, t in tensors]
        if not torch.is_grad_enabled():
            call.skipped = "called with grad disabled: its backward never runs in this forward"
        elif not any(needs):
            call.skipped = "no input requires grad in this call: its backward never runs"
        if call.skipped:
            if not any(c.skipped for c, _ in recorded):  # one skipped call per Function is enough to say why
                recorded.append((call, None))
            return

        def copy(t: torch.Tensor) -> torch.Tensor:
            c = t.detach().clone()
            if t.requires_grad and (t.is_floating_point() or t.is_complex()):
                c.requires_grad_(True)
            return c

        inputs = tuple(_map_tensors(a, copy) if not torch.is_tensor(a) else copy(a) for a in args)
        kw = {k: _map_tensors(v, lambda t: t.detach().clone()) for k, v in kwargs.items()}
        recorded.append((call, (inputs, kw)))

    def _where(self, frame: Any) -> Tuple[str, str, str]:
        """(module qualified name, its class name, "file:line") of the code that called apply."""
        source, module, module_type = "?", "?", "?"
        f = frame
        while f is not None and (source == "?" or module == "?"):
            if source == "?":
                fn = os.path.abspath(f.f_code.co_filename)
                if not (fn.startswith(_TORCH_DIR) or fn.startswith(_GRADLENS_DIR)):
                    source = f"{_short_path(fn)}:{f.f_lineno}"
            if module == "?" and "self" in f.f_code.co_varnames:
                obj = f.f_locals.get("self")
                hit = self.modules.get(id(obj))
                if hit is not None and hit[1] is obj:
                    module, module_type = hit[0], type(obj).__name__
            f = f.f_back
        return module, module_type, source


def _short_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith("..") else rel


def _graph_classes(outs: Any) -> List[type]:
    """The Function classes (``_forward_cls``) in the autograd graph of ``outs``, in discovery order."""
    roots = [t.grad_fn for _, t in _flatten(outs, "out") if t.grad_fn is not None]
    seen, found, stack = set(), [], list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        cls = getattr(node, "_forward_cls", None)
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return found


def _find_reference(references: Mapping[Any, Callable[..., Any]], cls: type) -> Optional[Callable[..., Any]]:
    for key in (cls, cls.__qualname__, cls.__name__, f"{cls.__module__}.{cls.__qualname__}"):
        if key in references:
            return references[key]
    return None


def check_model(
    model: nn.Module,
    *batch: Any,
    loss_fn: Optional[Callable[[Any], Any]] = None,
    references: Optional[Mapping[Any, Callable[..., Any]]] = None,
    include_gradlens: bool = False,
    max_calls: int = 3,
    seed: int = 0,
    **options: Any,
) -> ModelReport:
    """Check the backward of every custom ``torch.autograd.Function`` that ``model(*batch)`` calls.

    One forward of ``model(*batch)`` (then ``loss_fn(output)`` when given) runs with
    grad enabled while a profile function records each call of a user-defined
    Function: its class, a detached copy of its real inputs (the activations and
    parameters it actually gets), the module whose forward called it and the source
    line. Each recorded call is then checked by :func:`gradlens.check_backward`
    (float64 finite differences, or the Function's entry in ``references``), with the
    derived float32/bfloat16 tolerance and the same diagnosis. torch's own Functions
    and gradlens's are left out (``include_gradlens=True`` checks gradlens's too).

    The model is left as it was: parameters and buffers (BatchNorm running statistics
    updated by the forward are restored), the global RNG state, training flags, and
    nothing attached. It needs one copy of the parameters and buffers meanwhile.

    Args:
        model: the ``nn.Module`` to run.
        *batch: its positional arguments, as in training.
        loss_fn: optional ``loss_fn(output)`` run after the forward (custom Functions
            in the loss are found too).
        references: ``{FunctionClass or its name: reference}``: a plain-torch forward
            whose autograd is the intended gradient (needed for straight-through or
            surrogate gradients), called with the same arguments as the Function.
        include_gradlens: also check gradlens's own Functions (``gradlens.mirror``).
        max_calls: calls checked per Function (the first ones); later calls are counted.
        seed: seeds every check; printed in the report.
        **options: passed to :func:`gradlens.check_backward` (``atol``, ``rtol``,
            ``locate``, ``second_order``, ``max_fd_elements``, ...).

    Returns:
        A :class:`ModelReport`; ``report.ok`` is the verdict, ``print(report)`` the details.

    Example:
        >>> import torch, gradlens
        >>> class Square(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x * x
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         (x,) = ctx.saved_tensors
        ...         return 2 * x * g
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 3)
        ...     def forward(self, x):
        ...         return Square.apply(self.fc(x))
        >>> report = gradlens.check_model(Net(), torch.randn(8, 4))
        >>> report.ok, [f.name for f in report.functions]
        (True, ['Square'])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_model(model=...) expects an nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"check_model(loss_fn=...) expects a callable of the model's output or None, got {type(loss_fn).__name__}")
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
        raise ValueError(f"check_model(max_calls=...) expects an int >= 1, got {max_calls!r}")
    if not isinstance(include_gradlens, bool):
        raise TypeError(f"check_model(include_gradlens=...) expects a bool, got {type(include_gradlens).__name__}")
    references = {} if references is None else references
    if not isinstance(references, Mapping):
        raise TypeError(f"check_model(references=...) expects a dict {{Function class or name: callable}}, got {type(references).__name__}")
    for key, ref in references.items():
        if not (isinstance(key, str) or (isinstance(key, type) and issubclass(key, torch.autograd.Function))):
            raise TypeError(f"check_model(references=...) keys must be autograd.Function classes or their names, got {key!r}")
        if not callable(ref):
            raise TypeError(f"check_model(references=...) value for {key!r} must be callable, got {type(ref).__name__}")
    unknown = sorted(set(options) - set(_FORWARDED))
    if unknown:
        hint = " (use references={FunctionClass: ref})" if "reference" in unknown else ""
        raise TypeError(f"check_model() got unexpected option(s) {unknown}{hint}; check_backward options are {list(_FORWARDED)}")
    _check_options("check_model", seed=seed, **options)

    recorder = _Recorder(model, include_gradlens, max_calls)
    graph = _run_forward(model, batch, loss_fn, recorder)
    unseen = [c for c in graph if c not in recorder.counts and _origin(c) == ""]
    functions: List[FunctionReport] = []
    for cls in recorder.order:
        calls = []
        ref = _find_reference(references, cls)
        for call, captured in recorder.calls[cls]:
            if captured is not None:
                inputs, kw = captured
                fn = functools.partial(cls.apply, **kw) if kw else cls.apply
                try:
                    call.report = check_backward(fn, *inputs, reference=ref, seed=seed, **options)
                except (TypeError, ValueError) as err:  # e.g. the Function returns no floating-point tensor
                    call.error = f"could not be checked: {type(err).__name__}: {str(err).splitlines()[0]}"
                if call.report is not None:
                    call.report.fn_name = f"{cls.__qualname__}.apply"
                    _rename_leaves(call)
                    if ref is None:
                        _point_to_references(call, cls)
            calls.append(call)
        functions.append(FunctionReport(cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}", calls, recorder.counts[cls]))
    notes = []
    for cls in unseen:
        notes.append(
            f"{cls.__qualname__} is in the autograd graph but its call was not seen (does it override apply?): not checked"
        )
    if not functions and not unseen:
        notes.append("the forward called no custom autograd.Function: nothing to check")
    ok = all(f.ok for f in functions)
    return ModelReport(ok, functions, type(model).__name__, seed, dict(recorder.excluded), notes)


def _rename_leaves(call: FunctionCall) -> None:
    """``input 1`` -> ``input 1 (fc.weight)`` where the argument is a parameter of the model."""
    names = {}
    for line in call.inputs:
        head, _, rest = line.partition(" = ")
        what = rest.split(" [")[0]
        if what != "activation":
            names[head] = f"{head} ({what})"
    for t in call.report.tensors:
        t.name = names.get(t.name, t.name)


def _point_to_references(call: FunctionCall, cls: type) -> None:
    """The piecewise-constant diagnosis says how to pass the reference through check_model."""
    name = cls.__qualname__
    for t in call.report.tensors:
        t.diagnosis = [
            d.replace(f"pass reference={_STE_EXAMPLE}", f"pass check_model(..., references={{{name}: {_STE_EXAMPLE}}})")
            for d in t.diagnosis
        ]


def _run_forward(model: nn.Module, batch: Tuple[Any, ...], loss_fn: Any, recorder: _Recorder) -> List[type]:
    """One recorded forward; the model's tensors, training flags and the RNG are restored afterwards."""
    state = [(t, t._version, t.detach().clone()) for t in _state_tensors(model)]
    modes = [(m, m.training) for m in model.modules()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    previous = sys.getprofile()
    # A Python profile function already set keeps running (chained); a C profiler
    # (cProfile) pauses during this forward and is re-enabled after it.
    recorder.chain = previous if callable(previous) else None
    try:
        sys.setprofile(recorder)
        try:
            with torch.enable_grad():
                out = model(*batch)
                if loss_fn is not None:
                    out = (out, loss_fn(out))
        finally:
            if previous is None or callable(previous):
                sys.setprofile(previous)
            else:
                sys.setprofile(None)
                getattr(previous, "enable", lambda: None)()
        return _graph_classes(out)
    finally:
        with torch.no_grad():
            for t, version, saved in state:
                # Not the version counter alone: the batch_norm kernel updates running stats without bumping it.
                if t._version != version or not torch.equal(t, saved):
                    t.copy_(saved)
        for m, tr in modes:
            m.training = tr
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _state_tensors(model: nn.Module) -> List[torch.Tensor]:
    seen, out = set(), []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out
