"""Owned hook handles, and the one tap gradlens puts on ``optimizer.zero_grad``.

Every registration returns a handle kept by its owner; :meth:`HookSet.remove`
removes them all (twice is safe), so ``Monitor.close()`` leaves the model and the
optimizer exactly as they were.
"""

from __future__ import annotations

from typing import Any, Callable, List

__all__ = ["HookSet", "ZeroGradTap"]


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
