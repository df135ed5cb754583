"""Diagnosis: turn recorded statistics into :class:`Finding` objects.

:class:`Diagnoser` runs the rules of :mod:`gradlens.diagnose.rules` with the
thresholds of :mod:`gradlens.diagnose.thresholds` over a stream of step records.
"""

from gradlens.diagnose.engine import Diagnoser, diagnose
from gradlens.diagnose.finding import Finding, TrainingHalted
from gradlens.diagnose.thresholds import THRESHOLDS

__all__ = ["Diagnoser", "diagnose", "Finding", "TrainingHalted", "THRESHOLDS"]
