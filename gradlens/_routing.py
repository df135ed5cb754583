"""Functional routing: torch calls inside a mirrored model's forward go to gradlens.

Module twins cover ``nn.Linear`` and friends, but real models also call
``F.scaled_dot_product_attention``, ``F.cross_entropy``, ``torch.matmul``,
``x + self.position_embeddings`` ... from their own ``forward``. :class:`_Router` is a
:class:`torch.overrides.TorchFunctionMode` that sends each such call to its
:mod:`gradlens.functional` drop-in (same signature), and everything else to torch.
:func:`gradlens.mirror` installs it on the mirrored root only, as a forward
pre-hook that enters the mode and an always-called forward hook that leaves it: it
is active exactly while that forward runs (and while activation checkpointing
re-runs a block of it during backward), and nothing is attached to the caller's
model.

In-place arithmetic (``x.add_(w)``, ``x *= w``, ...) computes the out-of-place Function
and copies its result into ``x`` with grad on: ``x`` is the same tensor, mutated (views
see it), and autograd raises where torch would (a leaf that requires grad).

A call is routed only while grad mode is on (inside a gradlens Function's own
forward it is off, so the kernels there stay torch's) and without an ``out=``
tensor. A call the gradlens function does not take (an option it lacks:
``NotImplementedError``; an argument form it rejects: ``TypeError``/``ValueError``)
goes to torch instead, so routing never breaks a forward that torch runs; the
coverage report then shows any parameter that call consumed as plain torch.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import gradlens.functional as GF
from gradlens.functional.tensor_ops import _add_, _div_, _mul_, _rdiv, _sub_, _view

_T = torch.Tensor


def _softmax_method(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``torch.softmax(x, dim, dtype=None)`` / ``x.softmax(dim)``: dtype is the third positional."""

    def call(input: torch.Tensor, dim: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return fn(input, dim, dtype=dtype)

    return call


def _on_parameters(fn: Callable[..., torch.Tensor], torch_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Route a view op (``w.t()``, ``w.view(...)``) only when its input is a parameter (a leaf
    that requires grad): then it is the parameter's consumer and decides its coverage.
    Views of activations stay torch's (they are many, cheap, and consume no parameter)."""

    def call(input: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if torch.is_tensor(input) and input.is_leaf and input.requires_grad:
            return fn(input, *args, **kwargs)
        return torch_fn(input, *args, **kwargs)

    return call


def _build_routes() -> Dict[Any, Callable[..., Any]]:
    routes: Dict[Any, Callable[..., Any]] = {}

    def route(ours: Callable[..., Any], *theirs: Any) -> None:
        for fn in theirs:
            routes[fn] = ours

    # torch.nn.functional drop-ins (identical signatures)
    route(GF.linear, F.linear)
    route(GF.conv1d, F.conv1d)
    route(GF.conv2d, F.conv2d)
    route(GF.layer_norm, F.layer_norm)
    route(GF.group_norm, F.group_norm)
    route(GF.batch_norm, F.batch_norm)
    if hasattr(F, "rms_norm"):  # torch >= 2.4
        route(GF.rms_norm, F.rms_norm)
    route(GF.embedding, F.embedding)
    route(GF.dropout, F.dropout)
    route(GF.scaled_dot_product_attention, F.scaled_dot_product_attention)
    route(GF.softmax, F.softmax)
    route(GF.log_softmax, F.log_softmax)
    route(_softmax_method(GF.softmax), torch.softmax, _T.softmax)
    route(_softmax_method(GF.log_softmax), torch.log_softmax, _T.log_softmax)
    route(GF.relu, F.relu, torch.relu, _T.relu)
    route(GF.leaky_relu, F.leaky_relu)
    route(GF.elu, F.elu)
    route(GF.gelu, F.gelu)
    route(GF.silu, F.silu)
    route(GF.tanh, torch.tanh, _T.tanh, F.tanh)
    route(GF.sigmoid, torch.sigmoid, _T.sigmoid, F.sigmoid)
    route(GF.cross_entropy, F.cross_entropy)
    route(GF.nll_loss, F.nll_loss)
    route(GF.mse_loss, F.mse_loss)
    route(GF.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits)
    # the matmul family
    route(GF.matmul, torch.matmul, _T.matmul, _T.__matmul__)
    route(GF.mm, torch.mm, _T.mm)
    route(GF.bmm, torch.bmm, _T.bmm)
    route(GF.addmm, torch.addmm, _T.addmm)
    route(GF.baddbmm, torch.baddbmm, _T.baddbmm)
    # tensor arithmetic that parameters flow through (a + b, 2 * x, ... dispatch here too)
    route(GF.add, torch.add, _T.add, _T.__add__, _T.__radd__)
    route(GF.sub, torch.sub, torch.subtract, _T.sub, _T.__sub__)
    route(GF.rsub, torch.rsub, _T.__rsub__)
    route(GF.mul, torch.mul, torch.multiply, _T.mul, _T.__mul__, _T.__rmul__)
    route(GF.div, torch.div, torch.true_divide, _T.div, _T.__truediv__)
    route(_rdiv, _T.__rdiv__, _T.__rtruediv__)
    route(GF.neg, torch.neg, torch.negative, _T.neg, _T.__neg__)
    route(GF.cat, torch.cat, torch.concat)
    # in-place arithmetic (x.mul_(w), x += w; ``+=`` reaches the mode as add_): the
    # out-of-place Function's result copied into x, with torch's in-place checks and errors
    route(_add_, _T.add_, _T.__iadd__)
    route(_sub_, _T.sub_, _T.subtract_, _T.__isub__)
    route(_mul_, _T.mul_, _T.multiply_, _T.__imul__)
    route(_div_, _T.div_, _T.true_divide_, _T.__itruediv__)
    route(GF.expand, _T.expand)
    # view ops, for parameters only (see _on_parameters)
    for ours, theirs in (
        (GF.t, (torch.t, _T.t)),
        (GF.transpose, (torch.transpose, _T.transpose)),
        (GF.permute, (torch.permute, _T.permute)),
        (GF.reshape, (torch.reshape, _T.reshape)),
        (_view, (_T.view,)),
    ):
        for fn in theirs:
            routes[fn] = _on_parameters(ours, fn)
    return routes


_ROUTES = _build_routes()


class _Router(TorchFunctionMode):
    """Send the torch calls gradlens covers to :mod:`gradlens.functional` (see the module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if kwargs is None:
            kwargs = {}
        ours = _ROUTES.get(func)
        # Inside this method the mode is off, so torch calls made here (ours included) run plainly.
        if ours is not None and "out" not in kwargs and torch.is_grad_enabled():
            try:
                return ours(*args, **kwargs)
            except (NotImplementedError, TypeError, ValueError):
                # An option gradlens lacks (or an argument form it does not take): torch's op
                # runs instead, and coverage reports any parameter it consumed. Errors of the
                # computation itself (RuntimeError) are torch's own and would repeat there.
                pass
        return func(*args, **kwargs)


_state = threading.local()  # depth: how many routed modules' forwards are running on this thread


class _RoutingHooks:
    """The pair of forward hooks that keeps :class:`_Router` on while the owner's forward runs.

    Only the outermost routed forward on a thread enters a mode (one mode, however
    deep the nesting); inner ones just count. A picklable object (not closures), so
    a mirrored model can still be saved whole.
    """

    def __init__(self) -> None:
        self._active: List[Optional[_Router]] = []  # one per running call of the owner

    def enter(self, module: torch.nn.Module, args: Any) -> None:
        depth = getattr(_state, "depth", 0)
        router = None
        if depth == 0:
            router = _Router()
            router.__enter__()
        self._active.append(router)
        _state.depth = depth + 1

    def leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not self._active:  # a pre-hook before ours raised
            return
        router = self._active.pop()
        _state.depth = getattr(_state, "depth", 1) - 1
        if router is not None:
            router.__exit__(None, None, None)

    def __getstate__(self) -> Dict[str, Any]:
        return {"_active": []}


def install(model: torch.nn.Module) -> None:
    """Route ``model``'s forward (and everything it calls) to gradlens while it runs.

    The hooks go on the root and on every module that is not a gradlens twin:
    activation checkpointing (``torch.utils.checkpoint``, Hugging Face's
    ``gradient_checkpointing_enable``) re-runs a block's forward during backward,
    outside the root's forward, and that recomputation must be routed like the
    first run (else its saved tensors differ). Twins compute with gradlens already.

    The entering pre-hook goes last among the pre-hooks and the leaving hook first
    among the forward hooks (and it also runs when the forward raises), so the mode
    covers exactly ``forward`` and is never left on the stack.
    """
    for module in model.modules():
        if module is model or not type(module).__module__.startswith("gradlens."):
            hooks = _RoutingHooks()
            module.register_forward_pre_hook(hooks.enter)
            module.register_forward_hook(hooks.leave, prepend=True, always_call=True)
