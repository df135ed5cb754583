"""The small base every diagnosis rule is built on (one rule per file).

A rule looks at one :class:`~gradlens._record.StepRecord` at a time and returns the
:class:`Condition` objects that hold *at this step*. It knows nothing about
persistence or reporting: the :class:`~gradlens.diagnose.engine.Diagnoser` keeps a
condition pending until it has held for the rule's window, then turns it into a
:class:`~gradlens.diagnose.finding.Finding` once and updates it while it persists.
"""

from __future__ import annotations

import functools
import math
from numbers import Real
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from gradlens._record import StepRecord, layer_of

__all__ = [
    "Condition", "Rule", "FirstWeights", "grad_layers", "largest_step", "fmt", "median", "is_real",
    "finite", "urgent", "kernel_grad_norm", "largest_over_median",
]


@dataclass
class Condition:
    """A problem that holds at one step.

    Attributes:
        key: what persistence is tracked by (``""`` for a rule-wide condition, the
            layer name for per-layer ones). Culprits may move within one key.
        layer: culprit layer (or ``None`` when global).
        value: the measured number compared with ``threshold``.
        threshold: the threshold it crossed.
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        message: one actionable sentence.
        evidence: further numbers (JSON-serialisable).
        poisoned: the record's statistics are meaningless for the other rules (NaN/Inf
            in the weights or activations): the engine skips them at this step.
        urgent: the value is orders of magnitude past its threshold (``urgent_factor``
            times or more): the engine reports it at once instead of waiting for the
            persistence window (what follows it, a NaN at the next step, is then
            linked to it).
        advice: the fix, when the message ends with ``": " + advice``; a finding that
            follows another one (:attr:`Finding.cause`) takes its cause's advice instead.
        summary: the key numbers in a few words (``"||g|| 1.6e+19, update ratio 1e+10"``),
            quoted by the findings that follow this one.
    """

    key: str
    layer: Optional[str]
    value: float
    threshold: Optional[float]
    severity: str
    message: str
    evidence: Dict[str, Any] = field(default_factory=dict)
    poisoned: bool = False
    urgent: bool = False
    advice: str = ""
    summary: str = ""


class Rule:
    """Base class of a diagnosis rule.

    Subclasses set :attr:`kind` and :attr:`window` (the name of the threshold
    giving the persistence window) and implement :meth:`check`. Rules may keep
    state across steps (baselines); :meth:`reset` clears it.

    Example:
        >>> from gradlens._record import StepRecord
        >>> class LossIsNegative(Rule):
        ...     kind = "negative_loss"
        ...     def check(self, record):
        ...         if record.loss is not None and record.loss < 0:
        ...             return [Condition("", None, record.loss, 0.0, "warning", "negative loss")]
        ...         return []
        >>> rule = LossIsNegative({"persist_steps": 3})
        >>> [c.value for c in rule.check(StepRecord(step=0, layers=[], loss=-1.0))]
        [-1.0]
    """

    kind: ClassVar[str] = ""
    window: ClassVar[str] = "persist_steps"
    #: still runs on a step another rule declared poisoned (see Condition.poisoned)
    runs_when_poisoned: ClassVar[bool] = False
    #: how a finding of this kind reads when another one follows it
    #: ("nonfinite at step 1, after *exploding gradients* at step 0 ..."); default: the kind
    phrase: ClassVar[str] = ""
    #: kinds whose earlier finding a finding of this kind may follow (its root cause),
    #: added to the engine's table :data:`gradlens.diagnose.engine.CAUSES`
    follows: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, thresholds: Mapping[str, float]) -> None:
        self.t = dict(thresholds)
        self.reset()

    def reset(self) -> None:
        """Forget any state kept across steps."""

    def observed(self, record: StepRecord) -> bool:
        """Whether ``record`` carries what this rule reads.

        On a step where it does not (update ratios measured on their own cadence, a
        loss not given, activations not traced) the rule is skipped and its pending
        conditions keep their count instead of starting again.
        """
        return True

    def window_for(self, key: str) -> str:
        """Name of the threshold giving the persistence window of condition ``key``."""
        return self.window

    def check(self, record: StepRecord) -> List[Condition]:  # pragma: no cover - abstract
        """The conditions of this rule that hold at ``record``'s step."""
        raise NotImplementedError


def urgent(value: float, threshold: float, thresholds: Mapping[str, float], *, below: bool = False) -> bool:
    """Whether ``value`` is ``urgent_factor`` times past ``threshold`` (``below``: under it).

    Example:
        >>> urgent(2e4, 100.0, {"urgent_factor": 100.0}), urgent(5e3, 100.0, {"urgent_factor": 100.0})
        (True, False)
    """
    factor = thresholds.get("urgent_factor", math.inf)
    if not (finite(value) and finite(threshold)) or threshold <= 0 or factor <= 0:
        return False
    return value <= threshold / factor if below else value >= threshold * factor


def is_real(x: Any) -> bool:
    """A real number (float, int, numpy scalar), not a bool; fast for plain floats."""
    t = type(x)
    if t is float or t is int:
        return True
    if x is None:  # a layer without the statistic: skip the ABC check
        return False
    return isinstance(x, Real) and t is not bool


def finite(x: Any) -> bool:
    """A real, finite number (NaN, inf, None and non-numbers are not); fast for floats and None
    (what the rules read on every record)."""
    if type(x) is float:
        return math.isfinite(x)
    if x is None:
        return False
    return is_real(x) and math.isfinite(x)


class FirstWeights:
    """The first finite weight norm seen for each layer, to recognise zero-initialised ones.

    Layers whose weights start at exactly zero (zero-initialised heads, residual branch
    outputs, LoRA ``B``) have huge ratios to ``||W||`` on their first updates whatever
    the training does; rules leave them out of those tests.

    Example:
        >>> fw = FirstWeights()
        >>> fw.update(StepRecord(0, ["a", "b"], {"weight_norm": {"a": 0.0, "b": 2.0}}))
        >>> fw.update(StepRecord(1, ["a", "b"], {"weight_norm": {"a": 0.5, "b": 2.0}}))
        >>> fw.started_at_zero("a"), fw.started_at_zero("b"), fw.started_at_zero("unseen")
        (True, False, False)
    """

    def __init__(self) -> None:
        self._first: Dict[str, float] = {}

    def update(self, record: StepRecord) -> None:
        """Remember the weight norm of each layer seen finite for the first time."""
        for name, w in record.stats.get("weight_norm", {}).items():
            if name not in self._first and finite(w):
                self._first[name] = float(w)

    def first(self, name: str) -> Optional[float]:
        """The first finite weight norm of ``name`` (None while unseen)."""
        return self._first.get(name)

    def started_at_zero(self, name: str) -> bool:
        """Whether the first finite weight norm of ``name`` was zero (unseen layers: no)."""
        return self._first.get(name, 1.0) <= 0

    def sized(self, names: Iterable[str], weights: Mapping[str, Any]) -> List[Tuple[str, float]]:
        """``(layer, ||W||)`` for the layers of ``names`` whose weight norm is finite and
        positive and did not start at zero (the layers a scale comparison can judge)."""
        return [(n, float(weights[n])) for n in names
                if finite(weights.get(n)) and weights[n] > 0 and not self.started_at_zero(n)]


def largest_over_median(
    sized: Sequence[Tuple[str, float]], keep: Callable[[str], bool]
) -> Optional[Tuple[str, float, float]]:
    """``(layer, ||W||, ratio)``: the largest weight norm of ``sized`` among the layers ``keep``
    accepts, and its ratio to the median of all the other layers of ``sized``; None when
    ``keep`` accepts none.

    Example:
        >>> largest_over_median([("a", 1.0), ("b", 2.0), ("c", 300.0)], lambda n: True)
        ('c', 300.0, 200.0)
    """
    name, w = max(((n, v) for n, v in sized if keep(n)), key=lambda x: x[1], default=(None, 0.0))
    if name is None:
        return None
    return name, w, w / median([v for n, v in sized if n != name])


def grad_layers(record: StepRecord, *, positive: bool = True) -> List[Tuple[str, float]]:
    """``(layer, grad_norm)`` for layers that have a finite gradient norm, input side first.

    Layers without parameters (ReLU, ...) carry no ``grad_norm`` and are skipped;
    with ``positive`` (default) exact zeros are skipped too (they are dead, not small).
    """
    values = record.stats.get("grad_norm", {})
    out = []
    for name in record.layers:
        g = values.get(name)
        if finite(g) and (g > 0 or not positive):
            out.append((name, float(g)))
    return out


def largest_step(
    gl: Sequence[Tuple[str, float]], *, rise: bool
) -> Tuple[str, str, float, List[float]]:
    """Where the gradient norm changes most between adjacent layers of ``gl`` (at least two).

    ``gl`` is input side first (from :func:`grad_layers`). Step ``i`` is
    ``log10(g[i] / g[i+1])`` with ``rise`` (the gradient grows going backward from
    layer ``i+1`` to layer ``i``), else ``log10(g[i+1] / g[i])`` (it drops). Returns
    ``(layer, after, factor, steps)``: the input-side layer of the largest step (the
    first on ties), its output-side neighbour, ``10 ** step`` and every step.

    Example:
        >>> largest_step([("a", 1e-6), ("b", 1e-3), ("c", 1e-2)], rise=False)[:3]
        ('a', 'b', 1000.0)
    """
    logs = [math.log10(g) for _, g in gl]
    steps = [(logs[i] - logs[i + 1]) if rise else (logs[i + 1] - logs[i]) for i in range(len(gl) - 1)]
    i = max(range(len(steps)), key=steps.__getitem__)
    return gl[i][0], gl[i + 1][0], 10 ** steps[i], steps


def fmt(x: float, *, digits: int = 1) -> str:
    """Compact human formatting of a number for messages (``3.2e-06``, ``0.42``, ``71``).

    Numbers below 1e-2 or from 1e4 up are written in scientific notation with
    ``digits`` digits after the point, the others with 3 significant digits.

    Example:
        >>> fmt(3.21e-6), fmt(3.21e-6, digits=2), fmt(0.4213), fmt(0.0)
        ('3.2e-06', '3.21e-06', '0.421', '0')
    """
    if not finite(x):
        return str(x)
    ax = abs(x)
    if ax != 0 and (ax < 1e-2 or ax >= 1e4):
        return f"{x:.{digits}e}"
    return f"{x:.3g}"


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence of floats."""
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


def kernel_grad_norm(record: StepRecord, layer: str, layer_norm: float) -> float:
    """The gradient norm of ``layer``'s parameters other than biases (``layer_norm``, its
    layer norm, when the record has no per-parameter norms of it, or only biases).

    Example:
        >>> r = StepRecord(0, ["fc"], {"grad_norm": {"fc": 5.0}},
        ...                param_stats={"grad_norm": {"fc.weight": 3.0, "fc.bias": 4.0}})
        >>> kernel_grad_norm(r, "fc", 5.0)
        3.0
    """
    params = record.param_stats.get("grad_norm", {})
    if not params:
        return layer_norm
    kernels = _kernels_of(tuple(params)).get(layer)
    if not kernels:
        return layer_norm
    total = 0.0
    for name in kernels:
        g = params[name]
        if finite(g):
            total += g * g
    return math.sqrt(total)


@functools.lru_cache(maxsize=8)
def _kernels_of(names: Tuple[str, ...]) -> Dict[str, List[str]]:
    """layer -> its non-bias parameter names (one pass per parameter layout, cached)."""
    out: Dict[str, List[str]] = {}
    for name in names:
        if not name.rpartition(".")[2].startswith("bias"):
            out.setdefault(layer_of(name), []).append(name)
    return out
