"""Smoke test of benchmarks/diagnosis_eval.py and its corpus: the tables come out, end to end.

Scores are never asserted (they are what the eval measures); the shape of the output,
the corpus' bookkeeping and the scoring of one hand-made run are.
"""

from __future__ import annotations

import io
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import diagnosis_eval  # noqa: E402
from diagnosis_corpus import INDEPENDENT, LABELS, SOURCES, Case, cases, counts  # noqa: E402
from diagnosis_corpus.__init__ import Run  # noqa: E402


def test_quick_evaluation_prints_a_table_per_source():
    out = io.StringIO()
    summary = diagnosis_eval.evaluate(quick=True, max_steps=6, out=out)
    text = out.getvalue()
    for source in SOURCES:
        assert f"\n== {source} (" in text, source
        assert source in summary
        row = [ln for ln in text.splitlines() if ln.startswith(f"{source} ")]
        assert len(row) == 1, (source, row)
    assert "== summary per source" in text and "\nall " in text
    assert "overall: recall with the right kind" in text
    assert "\nindependent " in text and "corpus (every case" in text
    assert summary["independent"]["buggy"] == sum(summary[s]["buggy"] for s in INDEPENDENT)
    total = summary["all"]
    assert total["buggy"] == sum(summary[s]["buggy"] for s in SOURCES)
    assert total["healthy"] == sum(summary[s]["healthy"] for s in SOURCES)
    assert 0 <= total["found"] <= total["buggy"] and 0 <= total["culprit_ok"] <= total["layered"]
    assert total["crashes"] == 0, text


def test_every_case_is_labelled_and_cited():
    everything = cases()
    assert len({c.name for c in everything}) == len(everything)
    for c in everything:
        assert c.cite and c.source in SOURCES, c.name
        assert all(b in LABELS for b in c.bugs), c.name
        assert not (c.healthy and c.culprits), c.name
    by_name = {c.name: c for c in everything}
    for c in everything:  # twins point at each other and have opposite health
        if c.twin is not None:
            assert c.twin in by_name, c.name
            assert by_name[c.twin].healthy != c.healthy or by_name[c.twin].twin == c.name, c.name


def test_case_rejects_bad_labels_and_sources():
    build = cases("own")[0].build
    with pytest.raises(ValueError, match="unknown labels"):
        Case("x", build, source="own", cite="-", bugs=("not_a_label",))
    with pytest.raises(TypeError, match="culprits"):
        Case("x", build, source="own", cite="-", culprits={"0"})
    with pytest.raises(ValueError, match="source"):
        cases("nowhere")
    with pytest.raises(ValueError, match="sources"):
        diagnosis_eval.evaluate(sources=["nowhere"], out=io.StringIO())


class _F:
    def __init__(self, kind, layer, step=0, severity="warning"):
        self.kind, self.layer, self.step, self.severity = kind, layer, step, severity

    @property
    def is_problem(self):
        return self.severity in ("warning", "error")


def test_score_uses_the_first_reported_right_kind_finding():
    case = Case("x", cases("own")[0].build, source="own", cite="-", bugs=("dying_relu",),
                culprits=frozenset({"2"}), also=frozenset({"vanishing"}))
    early_wrong, late_right = _F("dead_units", "4", step=1), _F("dead_units", "2.weight", step=0)
    other, info = _F("exploding", "0"), _F("dead_units", "2", severity="info")
    run = Run(findings=[late_right, early_wrong, other, info, _F("vanishing", "0")],
              reported_at={id(early_wrong): 3, id(late_right): 5, id(other): 1})
    row = diagnosis_eval.score(case, run)
    assert row["found"] and row["kind"] == "dead_units"
    assert row["named"] == "4" and row["culprit_ok"] is False  # the first reported one counts
    assert row["at"] == 3 and row["since"] == 1
    assert row["others"] == ["exploding@0"]  # 'vanishing' is a listed consequence, info is quiet
    run.reported_at[id(late_right)] = 2
    row = diagnosis_eval.score(case, run)
    assert row["culprit_ok"] is True  # '2.weight' is a parameter of culprit '2'
    healthy = Case("h", case.build, source="own", cite="-")
    # on a healthy program every warning is a false alarm, listed in the order reported
    assert diagnosis_eval.score(healthy, run)["others"] == ["exploding@0", "dead_units@2.weight",
                                                            "dead_units@4", "vanishing@0"]


def test_the_independent_corpus_holds_40_buggy_and_20_healthy_programs():
    # issue 12: "The corpus holds at least 40 buggy programs and 20 fixed or healthy ones"
    c = counts()
    assert "own" not in INDEPENDENT and "hf" in INDEPENDENT
    assert c["independent"]["buggy"] >= 40, c
    assert c["independent"]["healthy"] >= 20, c
    assert c["independent"]["buggy"] == sum(not x.healthy for s in INDEPENDENT for x in cases(s))
    assert c["all"]["buggy"] + c["all"]["healthy"] == len(cases())


@pytest.mark.parametrize("source", INDEPENDENT)
def test_every_culprit_is_a_module_of_the_built_model(source):
    # a culprit that names no module (a typo, a renamed HF layer) could never be matched: the case
    # would score 'WRONG' whatever gradlens names
    for c in cases(source):
        if not c.culprits:
            continue
        model = c.build()[0]
        names = {n for n, _ in model.named_modules()}
        missing = sorted(c.culprits - names)
        assert not missing, (c.name, missing)


def test_the_culprit_is_judged_on_a_layered_labels_finding():
    # lr_too_high has no layer: its update_ratio finding (reported first) is not judged against
    # the dead layer; the dead_units finding of the layered dying_relu label is
    case = Case("x", cases("own")[0].build, source="own", cite="-", bugs=("lr_too_high", "dying_relu"),
                culprits=frozenset({"0"}))
    assert case.layer_kinds == {"dead_units"} and case.kinds == {"dead_units", "update_ratio", "divergence"}
    lr, dead = _F("update_ratio", "4", step=0), _F("dead_units", "0", step=2)
    run = Run(findings=[lr, dead], reported_at={id(lr): 1, id(dead): 3})
    row = diagnosis_eval.score(case, run)
    assert row["kind"] == "update_ratio" and row["at"] == 1  # found at the first right-kind finding
    assert row["named"] == "0" and row["culprit_ok"] is True
    run = Run(findings=[lr], reported_at={id(lr): 1})
    row = diagnosis_eval.score(case, run)
    assert row["found"] and row["culprit_ok"] is False  # no finding of the layered kind: not right
    only_lr = Case("y", case.build, source="own", cite="-", bugs=("lr_too_high",))
    assert only_lr.layer_kinds == only_lr.kinds  # no layered label: every kind counts
    assert diagnosis_eval.score(only_lr, run)["culprit_ok"] is None
