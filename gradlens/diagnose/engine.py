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

Two exceptions to the window and one link between findings:

* **urgent** conditions (``Condition.urgent``: orders of magnitude past their
  threshold, ``urgent_factor``) are reported at once: gradients of 1e12 at step 0
  leave no time for a window, the weights are NaN one step later. Other pending
  conditions are never promoted early, not even by a NaN.
* **root causes**: a new finding that follows a live finding of a kind listed for it
  in :data:`CAUSES` (and the rule's ``follows``) links to it (:attr:`Finding.cause`,
  the earliest such one; a cause reported later than the finding it explains, having
  waited for its window, is linked then). Its message then says so, "..., after exploding gradients
  at step 0 (||g|| 1.6e+19 at '0'): <the cause's advice>", and the advice comes from
  the cause, not from the symptom. A cause is live when it still held at the new
  finding's first step or at the logged step before it.

Rules read records only; they never reach back into hooks.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from gradlens._record import StepRecord
from gradlens.diagnose.finding import SEVERITIES, Finding
from gradlens.diagnose.rules import DEFAULT_RULES, Condition, Rule
from gradlens.diagnose.rules.base import fmt
from gradlens.diagnose.thresholds import resolve_thresholds

__all__ = ["Diagnoser", "diagnose", "CAUSES"]

#: kind -> the kinds of earlier findings it may follow (its root causes, most direct first).
#: A NaN follows gradients or updates that blew up, or weights that grew out of range; the
#: loss diverges for the same reasons; gradients vanish behind an oversized layer (a norm
#: divides them by its input's scale) or saturated units; ReLUs die after a step too large;
#: gradients explode behind oversized weights; training stalls behind any of the gradient
#: problems. Kinds that no rule produces are harmless here.
CAUSES: Dict[str, Tuple[str, ...]] = {
    "nonfinite": ("exploding", "update_ratio", "scale"),
    "divergence": ("exploding", "update_ratio", "scale"),
    "vanishing": ("scale", "saturation"),
    "dead_units": ("update_ratio", "exploding", "scale"),
    "exploding": ("scale",),
    "saturation": ("scale",),
    "stalled": ("vanishing", "dead_units", "saturation", "scale"),
    "oscillation": ("update_ratio",),
}


#: logged steps remembered to find the one before a finding's first step (longer than any window)
_KEEP_STEPS = 64


@dataclass
class _Track:
    rule: Rule
    pending: List[Tuple[int, Condition]] = field(default_factory=list)
    finding: Optional[Finding] = None
    cond: Optional[Condition] = None  # the condition the finding's message now reports
    cause_text: Optional[Tuple[str, str]] = None  # ("after <cause> at step N (...)", its advice)


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
        # (rule, whether it has its own observed(): the base one is always True)
        self._plan: List[Tuple[Rule, bool]] = [
            (rule, type(rule).observed is not Rule.observed) for rule in self.rules]
        self.findings: List[Finding] = []
        self._tracks: Dict[Tuple[str, str], _Track] = {}
        self._by_id: Dict[int, _Track] = {}  # id(finding) -> its track
        self._steps: Deque[int] = deque(maxlen=_KEEP_STEPS)  # the latest logged steps, oldest first

    def reset(self) -> None:
        """Forget every finding and every rule's state."""
        self.findings.clear()
        self._tracks.clear()
        self._by_id.clear()
        self._steps.clear()
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
        for rule, own_observed in self._plan:
            # (observed() may keep state: it is asked first, as always; the base one is
            # True and not called)
            if (own_observed and not rule.observed(record)) or (poisoned and not rule.runs_when_poisoned):
                skipped.add(rule.kind)
                continue
            conds = rule.check(record)
            if not conds:  # (most records: nothing holds)
                continue
            for cond in conds:
                poisoned = poisoned or cond.poisoned
                key = (rule.kind, cond.key)
                held.add(key)
                track = self._tracks.setdefault(key, _Track(rule))
                if track.finding is not None:
                    _refresh(track, record.step, cond)
                    continue
                track.pending.append((record.step, cond))
                window = max(1, int(self.thresholds[rule.window_for(cond.key)]))
                if len(track.pending) >= window or cond.urgent:
                    track.finding, track.cond = _to_finding(rule.kind, track.pending)
                    if cond.urgent and len(track.pending) < window:
                        track.finding.evidence["reported"] = (
                            f"at once, without waiting {window} steps: orders of magnitude past the threshold")
                    self._by_id[id(track.finding)] = track
                    track.pending = []
                    self.findings.append(track.finding)
                    new.append(track.finding)
        for key, track in self._tracks.items():
            if track.pending and key not in held and key[0] not in skipped:
                track.pending.clear()  # not in a row any more: start again
        for finding in new:
            self._link(finding)
        if new:
            # a cause that needed its window may be reported after what it caused (an urgent
            # explosion at step 0 behind a layer oversized since step 0): link it late
            fresh = {id(f) for f in new}
            for finding in self.findings:
                if finding.cause is None and id(finding) not in fresh:
                    self._link(finding, among=new)
        self._steps.append(record.step)
        return new

    def _link(self, finding: Finding, among: Optional[List[Finding]] = None) -> None:
        """Attach the earliest live finding (of ``among``, default all) of a kind ``finding``
        may follow, and say so."""
        track = self._by_id.get(id(finding))
        if track is None:
            return
        kinds = tuple(CAUSES.get(finding.kind, ())) + tuple(track.rule.follows)
        if not kinds:
            return
        # live when the effect began: held at its first step or at the logged step before it
        before = [s for s in self._steps if s < finding.step]
        since = before[-1] if before else finding.step
        live = [
            f for f in (self.findings if among is None else among)
            if f is not finding and f.kind in kinds and f.step <= finding.step
            and f.last_step >= since and f.cause is not finding
        ]
        if not live:
            return
        finding.cause = min(live, key=lambda f: (f.step, kinds.index(f.kind)))
        _render(track, self._by_id)

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


def _to_finding(kind: str, pending: List[Tuple[int, Condition]]) -> Tuple[Finding, Condition]:
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
    ), cond


def _refresh(track: _Track, step: int, cond: Condition) -> None:
    # the value, the message that reports it and the evidence move together, so a
    # finding never says one number and holds another (its layer stays the first one)
    finding = track.finding
    finding.last_step = step
    if cond.layer == finding.layer or SEVERITIES.index(cond.severity) > SEVERITIES.index(finding.severity):
        reported = finding.evidence.get("reported")
        finding.value, finding.message = cond.value, cond.message
        finding.threshold, finding.evidence = cond.threshold, dict(cond.evidence)
        if reported is not None:
            finding.evidence["reported"] = reported
        track.cond = cond
        if finding.cause is not None:
            _render(track, None)
    if SEVERITIES.index(cond.severity) > SEVERITIES.index(finding.severity):
        finding.severity = cond.severity


def _advice(cond: Condition) -> Tuple[str, str]:
    """``(what was seen, advice)`` of a condition's message ``"<seen>: <advice>"``."""
    msg = cond.message
    if cond.advice and msg.endswith(": " + cond.advice):
        return msg[: -len(cond.advice) - 2], cond.advice
    seen, sep, advice = msg.rpartition(": ")
    return (seen, advice) if sep else (msg, "")


def _render(track: _Track, by_id: Optional[Dict[int, _Track]]) -> None:
    """Rewrite a linked finding's message: what it saw, the cause and the cause's advice.

    The cause's part is written once, when the link is made (``by_id`` given): its numbers
    are the ones seen when this finding began; a refresh (``by_id`` None) keeps it."""
    finding, cause = track.finding, track.finding.cause
    seen, own_advice = _advice(track.cond)
    if by_id is not None or track.cause_text is None:
        cause_track = by_id.get(id(cause)) if by_id is not None else None
        phrase, summary, advice = cause.kind, "", ""
        if cause_track is not None and cause_track.cond is not None:
            phrase = cause_track.rule.phrase or cause.kind
            summary = cause_track.cond.summary
            advice = _advice(cause_track.cond)[1]
        if not summary:
            summary = f"{cause.kind} {fmt(cause.value)}"
        at = f" at {cause.layer!r}" if cause.layer is not None else ""
        track.cause_text = (f"after {phrase} at step {cause.step} ({summary}{at})", advice)
    text, advice = track.cause_text
    finding.message = f"{seen}, {text}: {advice or own_advice}"
