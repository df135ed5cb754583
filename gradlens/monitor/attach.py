"""Everything gradlens hooks into, and nothing else.

* :class:`OptimizerTaps`: each optimizer's step pre/post hooks and its
  ``zero_grad`` tap, which also detects the steps a ``GradScaler`` skipped;
* :func:`order_probe`: one forward with a pre-hook on every module (forward order);
* :func:`on_root_forward`: a hook on the root module's forward (pre or post).

Every registration returns a handle kept in a :class:`HookSet`;
:meth:`HookSet.remove` removes them all (twice is safe), so ``Monitor.close()``
leaves the model and the optimizers exactly as they were. The module hooks of
activation tracing are the activations source's own (``sources/_tracer.py``).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "HookSet", "ZeroGradTap", "OptimizerTaps", "order_probe", "on_root_forward", "compiling", "claim",
    "standing_aside",
]

# torch.compiler.is_compiling from torch 2.3 on; torch._dynamo's before (pyproject allows 2.2)
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling

#: The latest open monitor of each watched model (a second one is warned about).
_CLAIMS: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()


def claim(root: nn.Module, monitor: Any) -> Callable[[], None]:
    """Note that ``monitor`` watches ``root``, warning when an open monitor already
    does (the second one records on its own); returns the release function."""
    other = _CLAIMS.get(root)
    if other is not None and other() is not None and not other()._closed:
        warnings.warn(
            f"gradlens.watch: this {type(root).__name__} is already watched by {other()!r}; this "
            "second monitor records on its own (its own hooks, history and event files). Close "
            "the first one (mon.close(), or leave its `with` block) if that is not what you want",
            UserWarning,
            stacklevel=4,
        )
    ref = _CLAIMS[root] = weakref.ref(monitor)

    def release() -> None:
        if _CLAIMS.get(root) is ref:
            del _CLAIMS[root]

    return release


#: Depth of :func:`standing_aside` (a replay of a broken step runs inside it).
_ASIDE = [0]


def compiling() -> bool:
    """Whether torch.compile is tracing the code that runs now, or gradlens replays a
    forward (:func:`standing_aside`). gradlens's module hooks then do nothing (a model
    compiled after ``watch`` would otherwise trace them into its graph, with graph
    breaks at their host reads); they run again in eager code."""
    return _ASIDE[0] > 0 or _is_compiling()


@contextlib.contextmanager
def standing_aside() -> Iterator[None]:
    """gradlens's own module hooks do nothing inside (the replay of a broken step,
    ``monitor/replay.py``, must not be traced or counted as a forward of the run)."""
    _ASIDE[0] += 1
    try:
        yield
    finally:
        _ASIDE[0] -= 1


class HookSet:
    """A list of removable handles with one :meth:`remove`."""

    def __init__(self) -> None:
        self._handles: List[Any] = []

    def add(self, handle: Any) -> Any:
        """Keep ``handle`` (anything with ``.remove()``) and return it."""
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        """Remove every handle, newest first; safe to call twice."""
        while self._handles:
            handle = self._handles.pop()
            try:
                handle.remove()
            except Exception:  # noqa: BLE001 - a dead handle (freed module) is already gone
                pass

    def __len__(self) -> int:
        return len(self._handles)


class ZeroGradTap:
    """Calls ``before()``/``after()`` around ``optimizer.zero_grad()`` (to catch skipped steps).

    Optimizers have no zero_grad hook, so the tap is an instance attribute that
    shadows the class method. :meth:`remove` restores what was there; if someone
    wrapped ``zero_grad`` again on top of the tap, the tap cannot be unlinked and
    becomes a pass-through instead.
    """

    def __init__(
        self, optimizer: Any, before: Callable[[], None], after: Callable[[], None]
    ) -> None:
        self._optimizer = optimizer
        self._before = before
        self._after = after
        self._had_attr = "zero_grad" in vars(optimizer)
        self._previous = vars(optimizer).get("zero_grad")
        self._inner = optimizer.zero_grad  # bound method (or an earlier tap)
        self._active = True

        def zero_grad(*args: Any, **kwargs: Any) -> Any:
            if self._active:
                self._before()
            result = self._inner(*args, **kwargs)
            if self._active:
                self._after()
            return result

        zero_grad._gradlens_tap = self  # type: ignore[attr-defined]
        self._wrapper = zero_grad
        optimizer.zero_grad = zero_grad

    def remove(self) -> None:
        """Restore ``optimizer.zero_grad`` (or turn into a pass-through)."""
        self._active = False
        opt = self._optimizer
        if vars(opt).get("zero_grad") is self._wrapper:
            had, previous = self._had_attr, self._previous
            # skip earlier taps that were removed while this one sat on top of them
            tap = getattr(previous, "_gradlens_tap", None)
            while had and tap is not None and not tap._active:
                had, previous = tap._had_attr, tap._previous
                tap = getattr(previous, "_gradlens_tap", None)
            if had:
                opt.zero_grad = previous
            else:
                del opt.zero_grad


def _grad_identity(optimizer: Any) -> Any:
    # cheap identity of the gradients: (id, version) of the first few grads
    snap = []
    for g in optimizer.param_groups:
        for p in g["params"]:
            if p.grad is not None:
                snap.append((id(p.grad), p.grad._version))
                if len(snap) >= 4:
                    return tuple(snap)
    return tuple(snap) if snap else "zeroed"


class OptimizerTaps:
    """The step hooks and the ``zero_grad`` tap of each optimizer, as one :class:`HookSet`.

    ``pre(k)`` runs right before optimizer ``k`` updates (its gradients are final),
    ``post(k, skipped)`` right after. When ``step(closure)`` is given a closure (as
    Lightning always does, and LBFGS needs), the gradients are only computed inside
    it: the closure is wrapped, ``pre(k)`` runs when its first evaluation returns
    (LBFGS evaluates it several times: the first one is the gradient at the step's
    starting point, from which its update is computed), and ``closure_result(k,
    value)`` gets what that evaluation returned (the loss, by convention). A ``GradScaler`` skips ``optimizer.step()``
    when gradients overflowed, so the step hooks never fire: if the gradients
    changed since the last step/zero_grad and the optimizer did not step, that step
    was skipped, and ``pre(k)``/``post(k, True)`` run at the next ``zero_grad``,
    from the (already unscaled) gradients, before they are cleared. ``zero_grad(k)``
    (optional) runs first at every ``zero_grad``.
    """

    def __init__(
        self,
        optimizers: Sequence[Any],
        pre: Callable[[int], None],
        post: Callable[[int, bool], None],
        zero_grad: Callable[[int], None] = lambda k: None,
        closure_result: Callable[[int, Any], None] = lambda k, value: None,
    ) -> None:
        self._optimizers = list(optimizers)
        self._pre, self._post, self._zero_grad = pre, post, zero_grad
        self._closure_result = closure_result
        self._stepped = [False] * len(self._optimizers)
        self._in_step = [False] * len(self._optimizers)  # between the step's pre- and post-hook
        self._snap: List[Any] = [_grad_identity(opt) for opt in self._optimizers]
        self.hooks = HookSet()
        self.active = True
        for k, opt in enumerate(self._optimizers):
            self.hooks.add(opt.register_step_pre_hook(self._make_pre(k)))
            self.hooks.add(opt.register_step_post_hook(self._make_post(k)))
            self.hooks.add(ZeroGradTap(opt, *self._make_zero_grad(k)))

    def remove(self) -> None:
        """Remove every hook and the taps (safe twice)."""
        self.active = False
        self.hooks.remove()

    def updating(self, k: int) -> bool:
        """Whether optimizer ``k`` is inside its ``step()``, about to update (False at
        the ``zero_grad`` of a step the GradScaler skipped; True for ``k = -1``,
        ``Monitor.step()``)."""
        return k < 0 or self._in_step[k]

    def _make_pre(self, k: int) -> Callable[..., Any]:
        def hook(opt: Any, args: Any, kwargs: Any) -> Any:
            if not self.active:
                return None
            self._in_step[k] = True
            if kwargs.get("closure") is not None:
                return args, {**kwargs, "closure": self._wrap(k, kwargs["closure"])}
            i = 1 if args and args[0] is opt else 0  # (torch passes the optimizer itself first)
            if len(args) > i and callable(args[i]):
                return (*args[:i], self._wrap(k, args[i]), *args[i + 1:]), kwargs
            self._pre(k)
            return None

        return hook

    def _wrap(self, k: int, closure: Callable[..., Any]) -> Callable[..., Any]:
        first = [True]

        def closure_then_record(*args: Any, **kwargs: Any) -> Any:
            value = closure(*args, **kwargs)
            if first[0] and self.active:
                first[0] = False
                self._pre(k)  # the gradients this evaluation computed
                self._closure_result(k, value)
            return value

        return closure_then_record

    def _make_post(self, k: int) -> Callable[..., None]:
        def hook(opt: Any, args: Any, kwargs: Any) -> None:
            self._in_step[k] = False
            if self.active:
                self._stepped[k] = True
                self._snap[k] = _grad_identity(self._optimizers[k])
                self._post(k, False)

        return hook

    def _make_zero_grad(self, k: int) -> Tuple[Callable[[], None], Callable[[], None]]:
        def before() -> None:
            if not self.active:
                return
            self._zero_grad(k)
            if self._in_step[k]:
                return  # inside step(closure): the closure clears and recomputes the gradients
            if not self._stepped[k] and _grad_identity(self._optimizers[k]) != self._snap[k]:
                self._pre(k)
                self._post(k, True)
            self._stepped[k] = False

        def after() -> None:
            self._snap[k] = _grad_identity(self._optimizers[k])

        return before, after


def order_probe(modules: Sequence[Tuple[str, nn.Module]], root: nn.Module, saw: Callable[[str], None]) -> HookSet:
    """Pre-hooks that call ``saw(name)`` as each module runs, for one forward of ``root``
    only: they remove themselves when it returns. Returns their :class:`HookSet`."""
    probe = HookSet()

    def make(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if not compiling():
                saw(name)

        return hook

    for name, module in modules:
        if name:
            probe.add(module.register_forward_pre_hook(make(name)))

    def done(module: nn.Module, args: Any, output: Any) -> None:
        if not compiling():
            probe.remove()

    probe.add(root.register_forward_hook(done))
    return probe


def on_root_forward(root: nn.Module, fn: Callable[..., None], *, pre: bool = False, with_kwargs: bool = False) -> Any:
    """Register ``fn`` as a forward hook (``pre=True``: pre-hook) of ``root``; returns the
    handle. ``with_kwargs``: ``fn`` also gets the forward's keyword arguments."""
    if pre:
        return root.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
    return root.register_forward_hook(fn, with_kwargs=with_kwargs)
