"""The report returned by :func:`gradlens.check_backward`: data first, text on ``str()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple


@dataclass
class TensorCheck:
    """The verdict for one differentiated tensor (an input, a parameter or a buffer).

    Attributes:
        name: ``"input 0"``, ``"input 1['w']"`` or a parameter name such as ``"weight"``
            (prefixed by ``"[train] "`` / ``"[eval] "`` when both modes are checked).
        shape, dtype: the tensor's own shape and dtype.
        ok: no element outside tolerance (kinks excepted) and no structural problem.
        max_abs_error, max_rel_error: worst absolute and relative error over the elements
            that were compared exactly (``None`` when nothing could be compared).
        n_mismatched, n_checked: elements outside tolerance / elements compared exactly.
        worst: up to ``top_k`` ``(index, got, expected)`` triples of mismatched elements,
            worst first (empty when every element is right).
        diagnosis: short sentences naming the error's shape (sign flipped, x 1/6, ...).
        method: ``"reference"``, ``"finite differences (all elements)"``, ...
        atol, rtol: the tolerance used (derived unless overridden).
    """

    name: str
    shape: Tuple[int, ...]
    dtype: str
    ok: bool = True
    max_abs_error: Optional[float] = None
    max_rel_error: Optional[float] = None
    n_mismatched: int = 0
    n_checked: int = 0
    worst: List[Tuple[Tuple[int, ...], float, float]] = field(default_factory=list)
    diagnosis: List[str] = field(default_factory=list)
    method: str = ""
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def fraction_mismatched(self) -> float:
        """``n_mismatched / n_checked`` (0.0 when nothing was checked)."""
        return self.n_mismatched / self.n_checked if self.n_checked else 0.0

    def _lines(self) -> List[str]:
        head = f"  {'ok  ' if self.ok else 'FAIL'} {self.name}  {list(self.shape)} {self.dtype}"
        out = [head]
        if self.max_abs_error is not None:
            out.append(
                f"       max abs err {self.max_abs_error:.3g}, max rel err {self.max_rel_error:.3g}, "
                f"mismatched {self.n_mismatched}/{self.n_checked} ({100 * self.fraction_mismatched:.3g}%)"
                f"  [atol {self.atol:.2g}, rtol {self.rtol:.2g}; {self.method}]"
            )
        elif self.method:
            out.append(f"       [{self.method}]")
        for d in self.diagnosis:
            out.append(f"       -> {d}")
        if not self.ok and self.worst:
            out.append("       worst elements (index: got vs expected):")
            for idx, got, exp in self.worst:
                out.append(f"         {list(idx)}: {got:.6g} vs {exp:.6g}")
        return out


@dataclass
class BackwardReport:
    """What :func:`gradlens.check_backward` found. ``report.ok`` is the verdict.

    ``print(report)`` gives one block per input and parameter (never only the first
    failure), then the function-level findings (grad_output mutated or ignored,
    non-determinism, second-order / forward-mode results), the warnings (kinks) and
    the seed, so that ``check_backward(..., seed=report.seed)`` repeats the run.

    Attributes:
        ok: every tensor and every function-level check passed.
        tensors: one :class:`TensorCheck` per differentiated tensor.
        problems: function-level failures (sentences).
        warnings: things that do not fail the check but deserve a look (kinks).
        notes: informative lines (fallbacks, what was run).
        seed: the seed of every random draw.
        method: ``"reference"`` or ``"finite differences"``.
        fn_name: the checked function's name.
    """

    ok: bool
    tensors: List[TensorCheck]
    problems: List[str]
    warnings: List[str]
    notes: List[str]
    seed: int
    method: str
    fn_name: str = "fn"

    def __getitem__(self, name: str) -> TensorCheck:
        """The :class:`TensorCheck` called ``name`` (e.g. ``report["weight"]``)."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no checked tensor named {name!r}; have {[t.name for t in self.tensors]}")

    @property
    def diagnoses(self) -> List[str]:
        """Every diagnosis sentence, tensor-level and function-level, in report order."""
        out = [d for t in self.tensors for d in t.diagnosis]
        return out + list(self.problems)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = "backward OK" if self.ok else "backward WRONG"
        lines = [f"gradlens.check_backward({self.fn_name}): {verdict}  (checked against {self.method}, seed={self.seed})"]
        for t in self.tensors:
            lines.extend(t._lines())
        for p in self.problems:
            lines.append(f"  FAIL {p}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    __repr__ = __str__
