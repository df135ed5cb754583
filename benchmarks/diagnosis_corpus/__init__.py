"""An evaluation corpus for gradlens diagnosis: published buggy/fixed training programs, ported.

Each module is one source; each holds a ``CASES`` tuple of :class:`~.case.Case`:

* ``autotrainer``: the demo cases and motivating examples of AUTOTRAINER (Zhang et al.,
  ICSE 2021, github.com/shiningrain/AUTOTRAINER);
* ``deepdiagnosis``: the AUTOTRAINER models as published with DeepDiagnosis (Wardat et al.,
  ICSE 2022, github.com/DeepDiagnosis/ICSE2022, "AUTOTRAINER Model Code");
* ``deepfd``: Stack Overflow programs of DeepFD's benchmark (Cao et al., ICSE 2022,
  github.com/ArabelaTso/DeepFD, ``Benchmark/Benchmark-with-patches.xlsx``), by post id, with
  their patched (fixed) twins; the programs themselves from DeepLocalize's copies of the posts
  (Wardat et al., ICSE 2021, github.com/Wardat-ISU/DeepLocalize, ``Benchmark/StackOverflow``);
* ``hf``: tiny GPT-2, BERT and Llama built from config (``transformers``), healthy and with
  planted problems (lr 100, a 1e3-scaled head, a zeroed last norm, a 1e4-scaled embedding);
* ``own``: the repository's scenario suite (``tests/diagnose/diag_scenarios.py``), written with
  gradlens' rules in view: :data:`INDEPENDENT` leaves it out.

Programs are written anew in torch, with data made in code; nothing is downloaded.
:func:`run_case` trains one case under ``gradlens.watch(model, optimizer)`` at its
default settings and returns what was found.

Example:
    >>> from diagnosis_corpus import cases
    >>> len(cases("autotrainer")) > 0
    True
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from diagnosis_corpus.case import LABELS, Case, kinds_of

__all__ = ["SOURCES", "INDEPENDENT", "cases", "counts", "run_case", "Run", "Case", "LABELS", "kinds_of"]

#: source name -> module of this package, in the order the eval prints them.
SOURCES = ("autotrainer", "deepdiagnosis", "deepfd", "hf", "own")
#: the sources written independently of gradlens' rules (issue 12's corpus targets count these)
INDEPENDENT = tuple(s for s in SOURCES if s != "own")


def cases(source: Optional[str] = None, *, quick: bool = False) -> List[Case]:
    """Every case of ``source`` (all sources when None); ``quick``: the quick subset only.

    Raises:
        ValueError: ``source`` is not one of :data:`SOURCES`.
    """
    if source is not None and source not in SOURCES:
        raise ValueError(f"cases(source=...) expects one of {SOURCES}, got {source!r}")
    out: List[Case] = []
    for name in (SOURCES if source is None else (source,)):
        mod = importlib.import_module(f"diagnosis_corpus.{name}")
        out.extend(c for c in mod.CASES if c.quick or not quick)
    names = [c.name for c in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate case names: {sorted(dup)}")
    return out


def counts(sources=None) -> Dict[str, Dict[str, int]]:
    """``{source: {"buggy": n, "healthy": n}}`` for ``sources`` (default: all), plus ``"independent"``
    (the sources of :data:`INDEPENDENT` among them) and ``"all"``.

    >>> c = counts()
    >>> c["all"]["buggy"] == sum(c[s]["buggy"] for s in SOURCES)
    True
    """
    sources = list(sources or SOURCES)
    out: Dict[str, Dict[str, int]] = {}
    for s in sources:
        cs = cases(s)
        out[s] = {"buggy": sum(not c.healthy for c in cs), "healthy": sum(c.healthy for c in cs)}
    for key, names in (("independent", [s for s in sources if s in INDEPENDENT]), ("all", sources)):
        out[key] = {k: sum(out[s][k] for s in names) for k in ("buggy", "healthy")}
    return out


@dataclass
class Run:
    """What one case's training under gradlens produced.

    Attributes:
        findings: every finding of the run (all severities).
        reported_at: ``id(finding) -> logged step`` at which ``on_finding`` was called.
        error: the traceback's last line when training or gradlens raised, else None.
        seconds: wall time of build + training.
        losses: the observed losses (first and last few), for the report.
    """

    findings: List[Any] = field(default_factory=list)
    reported_at: Dict[int, int] = field(default_factory=dict)
    error: Optional[str] = None
    seconds: float = 0.0
    losses: List[float] = field(default_factory=list)


def run_case(case: Case, *, steps: Optional[int] = None, loss: bool = True, watch_options=None) -> Run:
    """Train ``case`` under ``gradlens.watch(model, optimizer)`` (defaults) and collect findings.

    Args:
        case: the case.
        steps: override ``case.steps``.
        loss: hand the step's loss to ``mon.observe_loss`` (the corpus' loss policy);
            False passes nothing, so only gradients and the model output are seen.
        watch_options: extra keyword arguments for ``watch`` (none by default: the
            corpus measures the defaults).
    """
    import gradlens

    run = Run()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster and steadier on a busy machine
    logger = logging.getLogger("gradlens")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the monitor logs each finding; we collect them instead
    t0 = time.perf_counter()
    step_no = [0]
    try:
        model, opt, step = case.build()

        def on_finding(f):
            run.reported_at[id(f)] = step_no[0]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mon = gradlens.watch(model, opt, on_finding=on_finding, **(watch_options or {}))
            try:
                def observe(value):
                    v = float(value)
                    if len(run.losses) < 3:
                        run.losses.append(v)
                    else:
                        run.losses[3:] = [v]
                    if loss:
                        mon.observe_loss(value)
                for i in range(steps or case.steps):
                    step_no[0] = i
                    step(i, observe)
            finally:
                mon.close()
            run.findings = list(mon.findings)
    except Exception as exc:  # a crash is a result: the eval reports it
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{fr.filename.split('/')[-1]}:{fr.lineno}" for fr in reversed(tb)
                      if "/gradlens/" in fr.filename), "")
        run.error = f"{type(exc).__name__}: {exc}"[:160] + (f" (in gradlens {where})" if where else "")
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)
        run.seconds = time.perf_counter() - t0
    return run
