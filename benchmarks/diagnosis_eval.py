"""Precision/recall and steps-to-detection of gradlens diagnosis on the labelled suite.

Runs every scenario of ``tests/diagnose/diag_scenarios.py`` (planted problems and
healthy models) and prints, per scenario, what was found, whether the kind and the
culprit layer are right, and at which logged step it was reported; then a per-kind
precision/recall table.

* recall: planted problems whose kind was reported with the right culprit layer;
* precision: findings (warning level or above) that are true: in a problem run, of
  its planted kind or a listed consequence (an exploding net also diverges); in a
  healthy run every finding is a false alarm.

Usage::

    python benchmarks/diagnosis_eval.py            # full suite
    python benchmarks/diagnosis_eval.py --quick    # 12 steps per scenario (smoke test)
    python benchmarks/diagnosis_eval.py --backend reference   # test-only recorder
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "diagnose")]

import diag_scenarios as S  # noqa: E402


def _run(sc, backend: str, steps: int):
    if backend == "watch":
        return S.run_watch(sc, steps=steps)
    return S.run_reference(sc, steps=steps)


def evaluate(*, quick: bool = False, backend: str = "auto", out=sys.stdout) -> Dict[str, float]:
    """Run the suite, print the tables, return the summary numbers."""
    if backend == "auto":
        backend = "watch" if S.watch_available() else "reference"
    rows: List[dict] = []
    t_start = time.perf_counter()
    for sc in S.ALL:
        steps = min(sc.steps, 12) if quick else sc.steps
        t0 = time.perf_counter()
        rec = _run(sc, backend, steps)
        took = time.perf_counter() - t0
        loud = [f for f in rec.findings if f.is_problem]
        ok_kinds = set() if sc.healthy else {sc.kind} | set(sc.also)
        main = [f for f in loud if f.kind == sc.kind]
        hit = [f for f in main if f.layer in sc.culprits]
        rows.append({
            "name": sc.name,
            "kind": sc.kind or "healthy",
            "found": bool(main),
            "culprit_ok": bool(hit),
            "named": main[0].layer if main else None,
            "detected_at": rec.detected_at.get(id(hit[0] if hit else main[0])) if main else None,
            "since": (hit[0] if hit else main[0]).step if main else None,
            "true_findings": sum(f.kind in ok_kinds for f in loud),
            "false_findings": [f"{f.kind}@{f.layer}" for f in loud if f.kind not in ok_kinds],
            "seconds": took,
        })
    total = time.perf_counter() - t_start

    print(f"gradlens diagnosis evaluation ({backend} statistics, {'quick' if quick else 'full'})", file=out)
    print("", file=out)
    head = f"{'scenario':26} {'planted':13} {'found':6} {'culprit':16} {'since':>5} {'reported':>8}  false alarms"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        culprit = "-" if r["kind"] == "healthy" else (
            f"{r['named']} ok" if r["culprit_ok"] else f"{r['named']} WRONG")
        found = "-" if r["kind"] == "healthy" else ("yes" if r["found"] else "MISSED")
        since = "" if r["since"] is None else str(r["since"])
        det = "" if r["detected_at"] is None else str(r["detected_at"])
        print(f"{r['name']:26} {r['kind']:13} {found:6} {culprit:16} {since:>5} {det:>8}  "
              f"{', '.join(r['false_findings']) or '-'}", file=out)

    problems = [r for r in rows if r["kind"] != "healthy"]
    healthy = [r for r in rows if r["kind"] == "healthy"]
    tp = sum(r["culprit_ok"] for r in problems)
    true_f = sum(r["true_findings"] for r in rows)
    false_f = sum(len(r["false_findings"]) for r in rows)
    recall = tp / len(problems) if problems else float("nan")
    precision = true_f / (true_f + false_f) if true_f + false_f else float("nan")
    print("", file=out)
    print(f"{'kind':13} {'planted':>7} {'found':>5} {'culprit ok':>10} {'false alarms':>12} "
          f"{'median steps to report':>22}", file=out)
    kinds = sorted({r["kind"] for r in problems})
    for kind in kinds:
        rs = [r for r in problems if r["kind"] == kind]
        fa = sum(1 for r in rows for x in r["false_findings"] if x.startswith(kind + "@"))
        dets = sorted(r["detected_at"] + 1 for r in rs if r["detected_at"] is not None)
        med = dets[len(dets) // 2] if dets else float("nan")
        print(f"{kind:13} {len(rs):>7} {sum(r['found'] for r in rs):>5} "
              f"{sum(r['culprit_ok'] for r in rs):>10} {fa:>12} {med:>22}", file=out)
    silent = sum(not r["false_findings"] for r in healthy)
    print("", file=out)
    print(f"recall (kind + culprit): {tp}/{len(problems)} = {recall:.2f}", file=out)
    print(f"precision (findings at warning level): {true_f}/{true_f + false_f} = {precision:.2f}", file=out)
    print(f"healthy runs silent: {silent}/{len(healthy)}", file=out)
    print(f"total time: {total:.1f}s", file=out)
    return {"recall": recall, "precision": precision, "healthy_silent": silent / max(1, len(healthy)),
            "seconds": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 steps per scenario (smoke test)")
    p.add_argument("--backend", choices=["auto", "watch", "reference"], default="auto",
                   help="statistics from gradlens.watch or from the test-only reference recorder")
    args = p.parse_args(argv)
    evaluate(quick=args.quick, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
