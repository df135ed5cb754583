"""The run overview: the ``gradlens report`` table as markdown (TensorBoard's TEXT tab).

One table row per layer, input side first: the first and the last gradient norm and
a trend (a sparkline of log10 norms, ``!`` where a stretch had NaN/Inf), then the
findings. The TensorBoard sink writes it at ``gradlens/overview``; the same text
comes from ``RunReport.overview()`` in :mod:`gradlens.report`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, List, Mapping, Optional, Sequence

__all__ = ["sparkline", "overview_markdown"]

BARS = "▁▂▃▄▅▆▇█"
ASCII_BARS = "_.-~=+*#"


def sparkline(values: Sequence[float], width: int = 16, *, bars: str = BARS) -> str:
    """One bar per stretch of steps: the mean log10 of its finite, positive values.

    ``!``: the stretch had a NaN/Inf; a space: exactly zero. Less than a decade of
    change is drawn small, not full height.

    >>> sparkline([1e-3, 1e-2, 1e-1, 1.0], width=4)
    '▁▃▅█'
    >>> sparkline([1.0, float("nan")], width=2)
    '▄!'
    """
    if not values:
        return ""
    n = len(values)
    k = min(width, n)
    buckets = [values[i * n // k:(i + 1) * n // k] for i in range(k)]
    logs: List[Optional[float]] = []
    for b in buckets:
        good = [math.log10(v) for v in b if math.isfinite(v) and v > 0]
        bad = any(not math.isfinite(v) for v in b)
        logs.append(None if bad else (sum(good) / len(good) if good else -math.inf))
    finite = [x for x in logs if x is not None and math.isfinite(x)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    if hi - lo < 1.0:  # less than a decade of change: draw it small, not full height
        lo = (hi + lo) / 2 - 0.5
        hi = lo + 1.0
    out = []
    for x in logs:
        if x is None:
            out.append("!")  # NaN/Inf in this stretch
        elif not math.isfinite(x):
            out.append(" ")  # exactly zero
        else:
            out.append(bars[int((x - lo) / (hi - lo) * (len(bars) - 1))])
    return "".join(out)


def _num(x: float) -> str:
    from gradlens.diagnose.rules.base import fmt

    return fmt(x, digits=2)


def overview_markdown(rows: Iterable[Mapping[str, Any]], findings: Iterable[Any], *, n_steps: int,
                      first_step: Optional[int], last_step: Optional[int], title: Optional[str] = None) -> str:
    """Markdown: a header line, the per-layer table, the findings.

    ``rows``: dicts with ``layer``, ``first``, ``last`` (gradient norms) and
    ``trend`` (a :func:`sparkline`), input side first; ``n_steps`` logged steps
    from ``first_step`` to ``last_step``.

    >>> row = {"layer": "fc", "first": 1.0, "last": 0.5, "trend": "█▁"}
    >>> print(overview_markdown([row], [], n_steps=2, first_step=0, last_step=1))
    **gradlens run overview**: 2 logged steps (0..1), 1 layers, input side first
    <BLANKLINE>
    | # | layer | grad norm first | last | trend (log10) |
    |---:|---|---:|---:|---|
    | 0 | fc | 1 | 0.5 | `█▁` |
    <BLANKLINE>
    **Findings**: none
    """
    from gradlens.diagnose.finding import one_line

    rows = list(rows)
    findings = list(findings)
    span = f"{n_steps} logged steps ({first_step}..{last_step})" if n_steps else "no steps"
    head = title or "**gradlens run overview**"
    lines = [f"{head}: {span}, {len(rows)} layers, input side first", "",
             "| # | layer | grad norm first | last | trend (log10) |", "|---:|---|---:|---:|---|"]
    for i, r in enumerate(rows):
        layer = str(r["layer"]).replace("|", "\\|")
        lines.append(f"| {i} | {layer} | {_num(r['first'])} | {_num(r['last'])} | `{r['trend']}` |")
    lines.append("")
    if not findings:
        lines.append("**Findings**: none")
    else:
        loud = sum(1 for f in findings if getattr(f, "is_problem", False))
        lines.append(f"**Findings** ({loud} at warning level or above):")
        lines.append("")
        for f in findings:
            steps_txt = f"steps {f.step}..{f.last_step}" if f.last_step != f.step else f"step {f.step}"
            lines.append("- " + one_line(f, ", " + steps_txt).replace("|", "\\|"))
    return "\n".join(lines)
