"""Diagnosis: turn recorded statistics into :class:`Finding` objects."""

from gradlens.diagnose.finding import Finding, TrainingHalted

__all__ = ["Finding", "TrainingHalted"]
