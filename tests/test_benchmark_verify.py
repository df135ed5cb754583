"""Smoke run of benchmarks/verify_speed.py --quick: it runs, prints the table, verdicts are right."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("verify_speed", ROOT / "benchmarks" / "verify_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_verify_speed_quick(capsys):
    mod = _load()
    assert mod.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "gradcheck exact" in out and "gradlens" in out
    rows = [line for line in out.splitlines() if "->" in line]
    assert len(rows) == 4
    for line in rows:
        cells = line.split("|")
        verdicts = [c.split()[-1] for c in cells[1:5]]  # gradlens, locate=False, fast, exact
        if "correct" in cells[0]:
            assert verdicts == ["pass"] * 4, line
        else:  # the one-element bug: gradlens (both ways) and exact gradcheck catch it
            assert verdicts[0] == verdicts[1] == verdicts[3] == "FAIL", line
