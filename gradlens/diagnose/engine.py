"""The diagnosis engine: StepRecords in, Findings out (rules arrive with issue 5).

Contract used by ``gradlens.monitor`` (live) and ``gradlens report`` (offline):

    diag = Diagnoser()                 # thresholds: documented defaults, overridable
    new = diag.update(record)          # -> list of *new* Findings for this StepRecord
    diag.findings                      # every finding so far (persisting ones updated in place)

Rules read records only; they never reach back into hooks.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from gradlens._record import StepRecord
from gradlens.diagnose.finding import Finding

__all__ = ["Diagnoser"]


class Diagnoser:
    """Runs every diagnosis rule over a stream of :class:`~gradlens._record.StepRecord`.

    Args:
        thresholds: overrides of the default thresholds, by name.
    """

    def __init__(self, thresholds: Optional[Mapping[str, Any]] = None) -> None:
        self.thresholds = dict(thresholds or {})
        self.findings: List[Finding] = []

    def update(self, record: StepRecord) -> List[Finding]:
        """Feed one logged step; return the findings that start at this step."""
        return []
