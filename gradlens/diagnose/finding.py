"""The result type of diagnosis: :class:`Finding`, and :class:`TrainingHalted`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

__all__ = ["Finding", "TrainingHalted", "SEVERITIES", "PROBLEM_SEVERITIES", "one_line"]

SEVERITIES = ("info", "warning", "error")
#: Severities that count as a problem: ``gradlens report`` exits 1 on them, the demo prints them.
PROBLEM_SEVERITIES = ("warning", "error")


@dataclass
class Finding:
    """One training problem, named with its culprit and the evidence.

    Attributes:
        kind: what is wrong: ``"vanishing"``, ``"exploding"``, ``"nonfinite"``,
            ``"dead_units"``, ``"saturation"``, ``"update_ratio"``, ``"divergence"``,
            ``"stalled"``, ``"oscillation"`` or ``"unreachable_output"``.
        layer: qualified name of the culprit module or parameter, or ``None`` when
            the problem is global (e.g. the loss diverged).
        step: the first step at which the condition held.
        severity: ``"info"``, ``"warning"`` or ``"error"``.
        value: the measured number the rule compared with its threshold.
        message: one sentence a person can act on (threshold and likely fix).
        threshold: the threshold the value crossed.
        last_step: the latest step at which the condition still held; updated, not
            repeated, while the problem persists.
        evidence: further numbers behind the finding (free-form, JSON-serialisable).
        cause: the earlier finding this one follows, its likely root cause (a NaN at
            step 1 after exploding gradients at step 0), or ``None``. The message then
            says so ("..., after exploding gradients at step 0 (||g|| 1.6e+19 at '0'):
            ...") and gives the cause's advice. See
            :data:`gradlens.diagnose.engine.CAUSES` for which kinds may follow which.

    Example:
        >>> f = Finding("vanishing", "layers.0", 12, "warning", 3e-6, "Gradient dies at layers.0")
        >>> f.kind, f.layer, f.step
        ('vanishing', 'layers.0', 12)
    """

    kind: str
    layer: Optional[str]
    step: int
    severity: str
    value: float
    message: str
    threshold: Optional[float] = None
    last_step: Optional[int] = None
    evidence: Dict[str, Any] = field(default_factory=dict)
    cause: Optional["Finding"] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Finding(severity=...) expects one of {SEVERITIES}, got {self.severity!r}"
            )
        if self.last_step is None:
            self.last_step = self.step

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of every field (``cause``: its kind, layer and step, or None)."""
        return {
            "kind": self.kind,
            "layer": self.layer,
            "step": self.step,
            "last_step": self.last_step,
            "severity": self.severity,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "evidence": dict(self.evidence),
            "cause": None if self.cause is None else {
                "kind": self.cause.kind, "layer": self.cause.layer, "step": self.cause.step,
            },
        }

    @property
    def is_problem(self) -> bool:
        """At warning level or above (see :data:`PROBLEM_SEVERITIES`)."""
        return self.severity in PROBLEM_SEVERITIES

    def __str__(self) -> str:
        return one_line(self, f", step {self.step}")


def one_line(finding: Finding, when: str) -> str:
    """``[severity] kind at layer<when>: message``, as the monitor, report and demo print it.

    ``when`` is inserted as given, separator included; a global finding's layer reads
    ``<global>``.

    Example:
        >>> f = Finding("divergence", None, 7, "warning", 1e3, "the loss diverges")
        >>> one_line(f, " since step 7")
        '[warning] divergence at <global> since step 7: the loss diverges'
    """
    where = finding.layer if finding.layer is not None else "<global>"
    return f"[{finding.severity}] {finding.kind} at {where}{when}: {finding.message}"


class TrainingHalted(RuntimeError):
    """Raised by a monitor when a finding whose kind is in ``halt_on`` appears.

    Attributes:
        finding: the :class:`Finding` that stopped training.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding
