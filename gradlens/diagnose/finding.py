"""The result type of diagnosis: :class:`Finding`, and :class:`TrainingHalted`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

__all__ = ["Finding", "TrainingHalted", "SEVERITIES"]

SEVERITIES = ("info", "warning", "error")


@dataclass
class Finding:
    """One training problem, named with its culprit and the evidence.

    Attributes:
        kind: what is wrong: ``"vanishing"``, ``"exploding"``, ``"nonfinite"``,
            ``"dead_units"``, ``"saturation"``, ``"update_ratio"`` or ``"divergence"``.
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

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Finding(severity=...) expects one of {SEVERITIES}, got {self.severity!r}"
            )
        if self.last_step is None:
            self.last_step = self.step

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of every field."""
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
        }

    def __str__(self) -> str:
        where = self.layer if self.layer is not None else "<global>"
        return f"[{self.severity}] {self.kind} at {where}, step {self.step}: {self.message}"


class TrainingHalted(RuntimeError):
    """Raised by a monitor when a finding whose kind is in ``halt_on`` appears.

    Attributes:
        finding: the :class:`Finding` that stopped training.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(str(finding))
        self.finding = finding
