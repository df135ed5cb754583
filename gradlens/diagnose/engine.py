"""The diagnosis engine: StepRecords in, Findings out.

Contract used by ``gradlens.monitor`` (live) and ``gradlens report`` (offline)::

    diag = Diagnoser()                 # thresholds: documented defaults, overridable
    new = diag.update(record)          # -> list of *new* Findings for this StepRecord
    diag.findings                      # every finding so far (persisting ones updated in place)

Each rule (``gradlens/diagnose/rules/``) says which conditions hold at a step. A
condition becomes a :class:`Finding` only after it has held on the rule's window of
logged steps in a row (``persist_steps``; ``nonfinite_persist_steps`` for NaN/Inf),
so one-step blips are never reported. Once NaN/Inf reaches the weights or the
activations, the other statistics are meaningless: only ``nonfinite`` and
``divergence`` run on such steps (rules run in the order of ``DEFAULT_RULES``). The finding is reported once, with ``step``
the first step of the run; while the condition keeps holding the same finding is
updated in place (``last_step``, ``value``, ``severity`` escalates), never repeated.

Rules read records only; they never reach back into hooks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from gradlens._record import StepRecord
from gradlens.diagnose.finding import SEVERITIES, Finding
from gradlens.diagnose.rules import DEFAULT_RULES, Condition, Rule
from gradlens.diagnose.thresholds import resolve_thresholds

__all__ = ["Diagnoser", "diagnose"]


@dataclass
class _Track:
    pending: List[Tuple[int, Condition]] = field(default_factory=list)
    finding: Optional[Finding] = None


class Diagnoser:
    """Runs every diagnosis rule over a stream of :class:`~gradlens._record.StepRecord`.

    Args:
        thresholds: overrides of the default thresholds, by name (see
            :data:`gradlens.diagnose.thresholds.THRESHOLDS`).
        rules: rule classes to run (default: every built-in rule).

    Example:
        >>> from gradlens._record import StepRecord
        >>> diag = Diagnoser()
        >>> grads = {"fc1": 1e-7, "fc2": 1e-3, "fc3": 1.0}
        >>> for step in range(3):
        ...     new = diag.update(StepRecord(step, ["fc1", "fc2", "fc3"], {"grad_norm": grads}))
        >>> [(f.kind, f.layer, f.step) for f in diag.findings]
        [('vanishing', 'fc1', 0)]
    """

    def __init__(
        self,
        thresholds: Optional[Mapping[str, Any]] = None,
        *,
        rules: Optional[Sequence[Type[Rule]]] = None,
    ) -> None:
        self.thresholds = resolve_thresholds(thresholds)
        rule_classes = DEFAULT_RULES if rules is None else tuple(rules)
        for cls in rule_classes:
            if not (isinstance(cls, type) and issubclass(cls, Rule)):
                raise TypeError(
                    f"Diagnoser(rules=...) expects Rule subclasses, got {cls!r}"
                )
        self.rules: List[Rule] = [cls(self.thresholds) for cls in rule_classes]
        self.findings: List[Finding] = []
        self._tracks: Dict[Tuple[str, str], _Track] = {}

    def reset(self) -> None:
        """Forget every finding and every rule's state."""
        self.findings.clear()
        self._tracks.clear()
        for rule in self.rules:
            rule.reset()

    def update(self, record: StepRecord) -> List[Finding]:
        """Feed one logged step; return the findings that start being reported at it."""
        if not isinstance(record, StepRecord):
            raise TypeError(
                f"Diagnoser.update(record=...) expects a StepRecord, got {type(record).__name__}"
            )
        new: List[Finding] = []
        held = set()
        skipped = set()
        poisoned = False
        for rule in self.rules:
            if not rule.observed(record) or (poisoned and not rule.runs_when_poisoned):
                skipped.add(rule.kind)
                continue
            for cond in rule.check(record):
                poisoned = poisoned or cond.poisoned
                key = (rule.kind, cond.key)
                held.add(key)
                track = self._tracks.setdefault(key, _Track())
                if track.finding is not None:
                    _refresh(track.finding, record.step, cond)
                    continue
                track.pending.append((record.step, cond))
                window = max(1, int(self.thresholds[rule.window_for(cond.key)]))
                if len(track.pending) >= window:
                    track.finding = _to_finding(rule.kind, track.pending)
                    track.pending = []
                    self.findings.append(track.finding)
                    new.append(track.finding)
        for key, track in self._tracks.items():
            if key not in held and key[0] not in skipped:
                track.pending.clear()  # not in a row any more: start again
        return new

    def run(self, records: Iterable[StepRecord]) -> List[Finding]:
        """Feed many records; return :attr:`findings`."""
        for record in records:
            self.update(record)
        return self.findings


def diagnose(records: Iterable[StepRecord], *, thresholds: Optional[Mapping[str, Any]] = None) -> List[Finding]:
    """Every finding in a sequence of records (offline; what ``gradlens report`` runs).

    >>> diagnose([])
    []
    """
    return Diagnoser(thresholds).run(records)


def _to_finding(kind: str, pending: List[Tuple[int, Condition]]) -> Finding:
    # Culprit: the layer named most often over the window (the latest on ties), so a
    # culprit that flickers between two neighbours does not delay the report.
    counts = Counter(c.layer for _, c in pending)
    best = max(counts.values())
    cond = next(c for _, c in reversed(pending) if counts[c.layer] == best)
    last_step = pending[-1][0]
    severity = max((c.severity for _, c in pending), key=SEVERITIES.index)
    return Finding(
        kind=kind,
        layer=cond.layer,
        step=pending[0][0],
        severity=severity,
        value=cond.value,
        message=cond.message,
        threshold=cond.threshold,
        last_step=last_step,
        evidence=dict(cond.evidence),
    )


def _refresh(finding: Finding, step: int, cond: Condition) -> None:
    # the value, the message that reports it and the evidence move together, so a
    # finding never says one number and holds another (its layer stays the first one)
    finding.last_step = step
    if cond.layer == finding.layer or SEVERITIES.index(cond.severity) > SEVERITIES.index(finding.severity):
        finding.value, finding.message = cond.value, cond.message
        finding.threshold, finding.evidence = cond.threshold, dict(cond.evidence)
    if SEVERITIES.index(cond.severity) > SEVERITIES.index(finding.severity):
        finding.severity = cond.severity
