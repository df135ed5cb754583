"""The labelled scenario suite: every planted problem found, every healthy run silent.

Each scenario runs twice: with statistics from the test-only ReferenceRecorder (plain
``p.grad.norm()`` and forward hooks, independent of the monitor) and live under the
real ``gradlens.watch`` (its fused statistics, its Diagnoser hook-up).
"""

from __future__ import annotations

import math

import pytest

from diag_scenarios import HEALTHY, PROBLEMS, run_reference, run_watch, watch_available

BACKENDS = [
    pytest.param(run_reference, id="reference"),
    pytest.param(run_watch, id="watch", marks=pytest.mark.skipif(
        not watch_available(), reason="gradlens.watch not in this checkout")),
]


@pytest.mark.parametrize("run", BACKENDS)
@pytest.mark.parametrize("sc", PROBLEMS, ids=lambda s: s.name)
def test_problem_is_found_with_its_culprit(sc, run):
    rec = run(sc)
    found = [f for f in rec.findings if f.is_problem]
    main = [f for f in found if f.kind == sc.kind]
    assert main, f"{sc.name}: no {sc.kind} finding; got {[str(f) for f in found]}"
    assert any(f.layer in sc.culprits for f in main), (
        f"{sc.name}: {sc.kind} named {[f.layer for f in main]}, expected one of {sorted(map(str, sc.culprits))}"
    )
    unexpected = [f for f in found if f.kind not in {sc.kind} | set(sc.also)]
    assert not unexpected, f"{sc.name}: unexpected findings {[str(f) for f in unexpected]}"
    for f in main:
        assert f.step <= f.last_step
        assert f.message and (f.threshold is None or f.threshold == f.threshold)


@pytest.mark.parametrize("run", BACKENDS)
@pytest.mark.parametrize("sc", HEALTHY, ids=lambda s: s.name)
def test_healthy_run_is_silent(sc, run):
    rec = run(sc)
    loud = [str(f) for f in rec.findings if f.is_problem]
    assert not loud, f"{sc.name}: false alarms {loud}"
    assert rec.logged_steps >= sc.steps  # the run was really recorded


def test_suite_covers_every_kind():
    kinds = {sc.kind for sc in PROBLEMS}
    assert kinds >= {"vanishing", "exploding", "nonfinite", "dead_units", "saturation",
                     "update_ratio", "divergence"}
    assert len(PROBLEMS) >= 10 and len(HEALTHY) >= 6


@pytest.mark.parametrize("sc", PROBLEMS, ids=lambda s: s.name)
def test_every_findings_value_is_the_number_its_message_reports(sc):
    # value, message and evidence move together while a finding persists (an
    # exploding finding once held 277.1 while its message said 677)
    from gradlens.diagnose.rules.base import fmt

    rec = run_reference(sc)
    assert rec.findings
    for f in rec.findings:
        if math.isnan(f.value):
            continue
        said = (fmt(f.value), fmt(f.value, digits=2), f"{100 * f.value:.1f}%")  # fractions as percents
        assert any(s in f.message for s in said), (f.kind, f.value, f.message)
