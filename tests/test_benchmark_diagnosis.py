"""Smoke test of benchmarks/diagnosis_eval.py (the table must come out, end to end)."""

from __future__ import annotations

import io
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import diagnosis_eval  # noqa: E402


def test_quick_evaluation_prints_the_table():
    out = io.StringIO()
    summary = diagnosis_eval.evaluate(quick=True, out=out)
    text = out.getvalue()
    assert "recall (kind + culprit)" in text and "precision" in text
    for kind in ("vanishing", "exploding", "nonfinite", "dead_units", "saturation", "update_ratio", "divergence"):
        assert f"\n{kind} " in text
    # the suite's own labels: every planted problem caught and every healthy run silent
    assert summary["recall"] == 1.0
    assert summary["healthy_silent"] == 1.0
