"""The report returned by :func:`gradlens.check_model`: one entry per custom autograd Function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from gradlens.verify._report import BackwardReport


@dataclass
class FunctionCall:
    """One call of a custom Function in the model's forward, and its check.

    Attributes:
        index: position among this Function's calls in the forward (0 = first).
        module: qualified name of the module whose forward made the call
            (``"blocks.0.attn"``; ``"(root)"`` for the model itself; ``"?"`` outside any).
        module_type: that module's class name.
        source: ``"path/to/file.py:LINE"``, the first line outside torch and gradlens
            on the way to the call.
        inputs: one line per tensor argument: ``"input 1 = fc.weight [16, 8] float32"``.
        report: the :class:`~gradlens.verify.BackwardReport` of this call
            (``None`` when it was not checked).
        skipped: why the call was not checked (empty when it was).
        error: what went wrong when the check itself could not run.
    """

    index: int
    module: str
    module_type: str
    source: str
    inputs: List[str] = field(default_factory=list)
    report: Optional[BackwardReport] = None
    skipped: str = ""
    error: str = ""

    @property
    def checked(self) -> bool:
        """Whether check_backward ran on this call's inputs."""
        return self.report is not None

    @property
    def ok(self) -> bool:
        """No failure: the check passed, or the call was skipped for a stated reason."""
        if self.error:
            return False
        return self.report.ok if self.report is not None else True

    def where(self) -> str:
        """``"module clip (RowClip) at model.py:57"``."""
        return f"module {self.module} ({self.module_type}) at {self.source}"


@dataclass
class FunctionReport:
    """Every checked call of one custom ``torch.autograd.Function``.

    Attributes:
        name: the Function's qualified class name (``"RowClip"``, ``"Outer.Inner"``).
        qualname: ``module.qualname`` of the class, unambiguous.
        calls: the recorded calls (checked or skipped), in forward order.
        n_calls: how many times the forward called it (more than ``len(calls)`` when
            ``max_calls`` bounded the recording).
    """

    name: str
    qualname: str
    calls: List[FunctionCall]
    n_calls: int

    @property
    def ok(self) -> bool:
        """Every recorded call passed (or was skipped for a stated reason)."""
        return all(c.ok for c in self.calls)

    @property
    def checked(self) -> bool:
        """Whether at least one call was checked."""
        return any(c.checked for c in self.calls)

    @property
    def failed(self) -> List[FunctionCall]:
        """The calls whose check failed."""
        return [c for c in self.calls if not c.ok]

    def _lines(self) -> List[str]:
        n_checked = sum(c.checked for c in self.calls)
        if not self.ok:
            tag = "FAIL"
        elif n_checked:
            tag = "ok  "
        else:
            tag = "skip"
        head = f"  {tag} {self.name}  ({self.n_calls} call{'s' * (self.n_calls != 1)} in the forward, {n_checked} checked"
        if self.failed:
            head += f"; failed: {', '.join(f'call {c.index}' for c in self.failed)}"
        out = [head + ")"]
        for c in self.calls:
            verdict = "FAIL" if not c.ok else ("ok" if c.checked else "not checked")
            out.append(f"       call {c.index}: {verdict}  {c.where()}")
            if c.skipped:
                out.append(f"         -> {c.skipped}")
            if c.error:
                out.append(f"         -> {c.error}")
            if c.report is not None and not c.report.ok:
                out.extend(f"         {line}" for line in c.inputs)
                body = str(c.report).splitlines()[1:]  # the header repeats what we print above
                out.extend(f"       {line}" for line in body)
        return out


@dataclass
class ModelReport:
    """What :func:`gradlens.check_model` found. ``report.ok`` is the verdict.

    ``print(report)`` lists every custom Function the forward called, each call with the
    module that made it and its source line, and for failing calls the full
    :class:`~gradlens.verify.BackwardReport` (where and how the backward is wrong).

    Attributes:
        ok: every checked call of every Function passed.
        functions: one :class:`FunctionReport` per custom Function, in order of first call.
        model_name: the model's class name.
        seed: the seed of every check (``check_model(..., seed=report.seed)`` repeats it).
        excluded: Functions left out by default, ``{"torch": n, "gradlens": m}`` calls.
        notes: informative lines.

    Example:
        >>> import torch, gradlens
        >>> class Double(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         return 2 * x
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         return 3 * g  # wrong: should be 2 * g
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 4)
        ...     def forward(self, x):
        ...         return Double.apply(self.fc(x))
        >>> report = gradlens.check_model(Net(), torch.randn(2, 4))
        >>> report.ok, [f.name for f in report.failed], report["Double"].calls[0].module
        (False, ['Double'], '(root)')
    """

    ok: bool
    functions: List[FunctionReport]
    model_name: str
    seed: int
    excluded: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> FunctionReport:
        """The :class:`FunctionReport` of the Function called ``name`` (class name or qualname)."""
        for f in self.functions:
            if name in (f.name, f.qualname):
                return f
        raise KeyError(f"no custom Function named {name!r} was called; have {[f.name for f in self.functions]}")

    @property
    def failed(self) -> List[FunctionReport]:
        """The Functions with at least one failing call."""
        return [f for f in self.functions if not f.ok]

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        n = len(self.functions)
        n_bad = len(self.failed)
        n_calls = sum(c.checked for f in self.functions for c in f.calls)
        if not n:
            verdict = "no custom autograd.Function called"
        elif n_bad:
            verdict = f"{n_bad} of {n} custom Function{'s' * (n != 1)} WRONG"
        else:
            verdict = f"{n} custom Function{'s' * (n != 1)} OK"
        lines = [f"gradlens.check_model({self.model_name}): {verdict}  ({n_calls} call{'s' * (n_calls != 1)} checked, seed={self.seed})"]
        for f in self.functions:
            lines.extend(f._lines())
        if self.excluded:
            parts = ", ".join(f"{v} call{'s' * (v != 1)} of {k}'s own Functions" for k, v in sorted(self.excluded.items()))
            lines.append(f"  note: not checked by default: {parts}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    __repr__ = __str__
