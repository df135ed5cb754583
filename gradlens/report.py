"""``gradlens report LOGDIR``: re-diagnose a run from the TensorBoard events gradlens wrote.

The event files are read with TensorBoard's own reader (``EventAccumulator``) into a
pandas DataFrame; :class:`~gradlens._record.StepRecord` objects are rebuilt from the
``_tags`` scheme (layer order from the ``gradlens/layers`` text) and run through the
same :class:`~gradlens.diagnose.Diagnoser` the live monitor uses. Prints a per-layer
table (gradient-norm trend, first/last step, min/max) and the findings.

Exit codes: 0 no problem (nothing at warning level), 1 problems found, 2 usage error
(no such directory, no event files). Works on a run that is still being written: a
last step with fewer statistics than the others (a write in progress) is left out.

Example::

    $ gradlens report runs/exp1            # table + findings, exit 0/1
    $ gradlens report runs/exp1 --json     # the same as JSON
    $ gradlens report runs/exp1 --csv stats.csv
    $ gradlens report runs/exp1 --plot flow.png  # the gradient-flow figure
    $ gradlens report runs/exp1 --threshold persist_steps=5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TextIO

from gradlens._record import ACT_STATS, SIGNAL_STATS, StepRecord
from gradlens._tags import CHANGE_ONLY_STATS, LAYERS_TAG, LOSS_TAG, decode_signal_tag, decode_tag
from gradlens.diagnose import Finding, diagnose
from gradlens.diagnose.finding import one_line
from gradlens.diagnose.rules.base import fmt

__all__ = ["RunReport", "load_run", "find_runs", "add_arguments", "run"]

_EVENT_MARK = "tfevents"


@dataclass
class RunReport:
    """Everything ``gradlens report`` derives from one run directory.

    Attributes:
        logdir: the directory holding the event files.
        frame: long-format DataFrame ``step, wall_time, tag, level, stat, name, value``
            (``level``: ``"layer"``, ``"param"``, ``"signal"`` (a model-output
            signal, ``name`` empty) or ``"run"`` (the loss)).
        layers: layer names, input side first.
        records: the rebuilt StepRecords, one per logged step.
        findings: the findings re-derived from ``records``.
        dropped_step: a trailing step left out because it was still being written.
    """

    logdir: str
    frame: Any
    layers: List[str]
    records: List[StepRecord]
    findings: List[Finding] = field(default_factory=list)
    dropped_step: Optional[int] = None

    @property
    def problems(self) -> List[Finding]:
        """Findings at warning level or above."""
        return [f for f in self.findings if f.is_problem]

    def layer_table(self):
        """Per-layer summary of the gradient norm: a pandas DataFrame, input side first."""
        import pandas as pd

        df = self.frame
        rows = []
        gn = df[(df["level"] == "layer") & (df["stat"] == "grad_norm")]
        by_layer = {name: g.sort_values("step") for name, g in gn.groupby("name")}
        for name in self.layers:
            g = by_layer.get(name)
            if g is None or g.empty:
                continue
            values = g["value"].to_numpy()
            finite = values[[math.isfinite(v) for v in values]]
            rows.append({
                "layer": name,
                "first_step": int(g["step"].iloc[0]),
                "last_step": int(g["step"].iloc[-1]),
                "first": float(values[0]),
                "last": float(values[-1]),
                "min": float(finite.min()) if len(finite) else math.nan,
                "max": float(finite.max()) if len(finite) else math.nan,
                "nonfinite_steps": int(len(values) - len(finite)),
                "trend": _sparkline(list(values)),
            })
        return pd.DataFrame(rows, columns=["layer", "first_step", "last_step", "first", "last",
                                           "min", "max", "nonfinite_steps", "trend"])


def find_runs(logdir: str) -> List[str]:
    """Directories under ``logdir`` (itself included) that hold TensorBoard event files."""
    runs = []
    for root, _dirs, files in os.walk(logdir):
        if any(_EVENT_MARK in f for f in files):
            runs.append(root)
    return sorted(runs)


#: Records up to this many bytes (scalars, text) get their data CRC checked here; the
#: CRC is pure Python in TensorBoard's stub (~0.16 s per MiB measured), so larger
#: records (images) are only checked for their length.
_CRC_MAX = 4096


def check_event_file(path: str) -> Optional[str]:
    """What is wrong with one event file, or None when it reads to its end.

    The TFRecord framing is walked record by record (length, its masked CRC-32C,
    data, its CRC for records up to ``_CRC_MAX`` bytes), so a file cut short or
    damaged is named instead of being read silently up to the damage by
    TensorBoard's reader.
    """
    import struct

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    records = 0
    try:
        with open(path, "rb") as fh:
            while True:
                head = fh.read(12)
                if not head:
                    return None
                if len(head) < 12:
                    break
                length, = struct.unpack("<Q", head[:8])
                if struct.unpack("<I", head[8:])[0] != masked_crc32c(head[:8]):
                    return "not a TensorBoard event file" if records == 0 else f"damaged after {records} records"
                if length > _CRC_MAX:  # (an image): skipped over, its CRC left to TensorBoard's reader
                    fh.seek(length, os.SEEK_CUR)
                    if len(fh.read(4)) < 4:
                        break
                    records += 1
                    continue
                body = fh.read(length + 4)
                if len(body) < length + 4:
                    break
                if struct.unpack("<I", body[length:])[0] != masked_crc32c(body[:length]):
                    return f"damaged after {records} records"
                records += 1
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return "not a TensorBoard event file" if records == 0 else f"truncated after {records} records"


def _text_values(acc, tag: str) -> List[tuple]:
    from tensorboard.util import tensor_util

    tags = acc.Tags().get("tensors", [])
    out = []
    for name in (tag, tag + "/text_summary"):
        if name in tags:
            for ev in acc.Tensors(name):
                arr = tensor_util.make_ndarray(ev.tensor_proto)
                text = arr.reshape(-1)[0] if arr.size else b""
                out.append((ev.step, text.decode() if isinstance(text, bytes) else str(text)))
    return out


def load_run(logdir: str, *, thresholds=None) -> RunReport:
    """Read one run directory and re-derive its findings.

    Raises:
        ValueError: ``logdir`` holds no gradlens statistics.
    """
    import numpy as np
    import pandas as pd
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    parts = []
    for tag in acc.Tags().get("scalars", []):
        decoded = decode_tag(tag)
        signal = decode_signal_tag(tag) if decoded is None else None
        if decoded is None and signal is None and tag != LOSS_TAG:
            continue
        if signal is not None:  # a model-output signal: StepRecord.signals
            level, stat, name, log10 = "signal", signal, "", False
        else:
            level, stat, name, log10 = decoded if decoded else ("run", "loss", "", False)
        events = acc.Scalars(tag)
        values = np.array([ev.value for ev in events], dtype=np.float64)
        if log10:
            with np.errstate(over="ignore"):
                values = np.power(10.0, values)  # -inf -> 0, NaN/Inf stay
        parts.append(pd.DataFrame({"step": [ev.step for ev in events], "wall_time": [ev.wall_time for ev in events],
                                   "tag": tag, "level": level, "stat": stat, "name": name, "value": values}))
    columns = ["step", "wall_time", "tag", "level", "stat", "name", "value"]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    if frame.empty or not (frame["level"] == "layer").any():
        raise ValueError(f"no gradlens statistics in {logdir!r} (no '<stat>/<layer>' scalars)")
    # keep the last value written for a (statistic, name, step): a restarted run
    # rewrites steps, and a layer that moved in the layer list has a second tag
    frame = frame.sort_values(["step", "wall_time"], kind="stable")
    frame = frame.drop_duplicates(["level", "stat", "name", "step"], keep="last").reset_index(drop=True)
    dropped = _incomplete_last_step(frame)
    if dropped is not None:
        frame = frame[frame["step"] != dropped].reset_index(drop=True)
    frame = _carry_counts_forward(frame)

    layers: List[str] = []
    texts = _text_values(acc, LAYERS_TAG)
    if texts:
        try:
            parsed_layers = json.loads(max(texts, key=lambda t: t[0])[1])
            if isinstance(parsed_layers, list):
                layers = [str(x) for x in parsed_layers]
        except ValueError:
            layers = []
    seen = set(layers)
    for name in frame.loc[frame["level"] == "layer", "name"]:  # layers missing from the list
        if name not in seen:
            seen.add(name)
            layers.append(name)

    records = _records(frame, layers)
    report = RunReport(logdir, frame, layers, records, dropped_step=dropped)
    report.findings = diagnose(records, thresholds=thresholds)
    return report


#: statistics not expected at every logged step: on their own cadence, or written on change;
#: signals exist only for steps with a recorded forward (dL/d(output) with a backward into it)
_NOT_EVERY_STEP = (frozenset(("update_ratio", "out_grad_norm") + CHANGE_ONLY_STATS) | frozenset(ACT_STATS)
                   | frozenset(SIGNAL_STATS))


def _incomplete_last_step(frame) -> Optional[int]:
    """The last step, when it lacks tags the step before it has (a write in progress).

    Statistics on their own cadence (``update_ratio``, activations) or written only
    when they change (counts) are not expected at every step.
    """
    steps = sorted(frame["step"].unique())
    if len(steps) < 2:
        return None
    regular = frame[~frame["stat"].isin(_NOT_EVERY_STEP)]
    last = set(regular.loc[regular["step"] == steps[-1], "tag"])
    before = set(regular.loc[regular["step"] == steps[-2], "tag"])
    return int(steps[-1]) if not before <= last else None


def _carry_counts_forward(frame):
    """Counts are written when they change: give every step of a layer (parameter) its value.

    A step gets the last value written at or before it; steps before the first
    write get none.
    """
    import pandas as pd

    held = frame["stat"].isin(CHANGE_ONLY_STATS)
    if not held.any():
        return frame
    keys = ["level", "stat", "name"]
    seen = frame.loc[~held & (frame["level"] != "run"), ["step", "level", "name"]].drop_duplicates()
    stats = frame.loc[held, ["level", "stat"]].drop_duplicates()
    left = seen.merge(stats, on="level")
    right = frame.loc[held].rename(columns={"step": "written"})
    left = pd.concat([left, right[["written"] + keys].rename(columns={"written": "step"})], ignore_index=True)
    left = left.drop_duplicates(["step"] + keys).sort_values("step", kind="stable")
    right = right.assign(step=right["written"]).sort_values("step", kind="stable")
    filled = pd.merge_asof(left, right[["step", "wall_time", "tag", "value"] + keys], on="step", by=keys,
                           direction="backward")
    filled = filled.dropna(subset=["tag"])
    out = pd.concat([frame.loc[~held], filled[frame.columns]], ignore_index=True)
    return out.sort_values(["step", "level", "stat", "name"], kind="stable").reset_index(drop=True)


def _records(frame, layers: List[str]) -> List[StepRecord]:
    records = []
    for step, g in frame.groupby("step", sort=True):
        stats: Dict[str, Dict[str, float]] = {}
        params: Dict[str, Dict[str, float]] = {}
        signals: Dict[str, float] = {}
        loss = None
        for level, stat, name, value in zip(g["level"], g["stat"], g["name"], g["value"]):
            if level == "layer":
                stats.setdefault(stat, {})[name] = value
            elif level == "param":
                params.setdefault(stat, {})[name] = value
            elif level == "signal":
                signals[stat] = float(value) if value == value else math.nan
            else:
                loss = value
        records.append(StepRecord(int(step), list(layers), stats, params, loss=loss, signals=signals))
    return records


# ---------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------
def _sparkline(values: List[float], width: int = 16) -> str:
    from gradlens.sinks.overview import ASCII_BARS, BARS, sparkline

    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        BARS.encode(enc)
        bars = BARS
    except (UnicodeEncodeError, LookupError):
        bars = ASCII_BARS
    return sparkline(values, width, bars=bars)


def _fmt(x: float) -> str:
    return fmt(x, digits=2)


def _print_report(rep: RunReport, out: TextIO) -> None:
    table = rep.layer_table()
    steps = sorted({r.step for r in rep.records})
    print(f"gradlens report: {rep.logdir}", file=out)
    span = f"steps {steps[0]}..{steps[-1]}" if steps else "no steps"
    print(f"{len(steps)} logged steps ({span}), {len(table)} layers with gradients", file=out)
    if rep.dropped_step is not None:
        print(f"(step {rep.dropped_step} is still being written: left out)", file=out)
    print("", file=out)
    header = ["layer", "steps", "grad_norm first", "last", "min", "max", "trend (log10)"]
    rows = [
        [r["layer"], f"{r['first_step']}..{r['last_step']}", _fmt(r["first"]), _fmt(r["last"]),
         _fmt(r["min"]), _fmt(r["max"]), r["trend"]]
        for r in table.to_dict("records")
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), file=out)
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip(), file=out)
    print("", file=out)
    if not rep.findings:
        print("findings: none", file=out)
    else:
        print(f"findings ({len(rep.problems)} at warning level or above):", file=out)
        for f in rep.findings:
            steps_txt = f"steps {f.step}..{f.last_step}" if f.last_step != f.step else f"step {f.step}"
            print("  " + one_line(f, ", " + steps_txt), file=out)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradlens report``."""
    parser.epilog = ("exit codes: 0 = no problem found, 1 = problems found (warning or error findings), "
                     "2 = bad arguments, or nothing readable under LOGDIR")
    parser.add_argument("logdir", help="directory with the TensorBoard event files gradlens wrote")
    parser.add_argument("--csv", metavar="FILE", help="also write every statistic (long format, one row per step and layer/parameter) "
                             "to FILE; says how many rows it wrote")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the gradient-flow figure (layers x steps, findings marked) to FILE.png; "
                             "several runs are stacked in one image")
    parser.add_argument("--threshold", metavar="NAME=VALUE", action="append", default=[],
                        help="override a diagnosis threshold (repeatable), e.g. vanishing_ratio=1e-4")


def _parse_thresholds(items: List[str]) -> Dict[str, float]:
    from gradlens.diagnose.thresholds import resolve_thresholds

    out: Dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--threshold expects NAME=NUMBER, got {item!r}")
    resolve_thresholds(out)  # validates names and values
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of ``gradlens report``; returns the exit code (0 ok, 1 problems, 2 usage)."""
    out, err = sys.stdout, sys.stderr
    logdir = args.logdir
    if not os.path.isdir(logdir):
        print(f"gradlens report: {logdir!r} is not a directory", file=err)
        return 2
    try:
        thresholds = _parse_thresholds(getattr(args, "threshold", []) or [])
    except (TypeError, ValueError) as exc:
        print(f"gradlens report: {exc}", file=err)
        return 2
    csv = getattr(args, "csv", None)
    if csv:
        problem = _unwritable(csv)
        if problem:
            print(f"gradlens report: --csv {csv}: {problem}", file=err)
            return 2
    runs = find_runs(logdir)
    damaged = {}
    for path in runs:
        for name in sorted(os.listdir(path)):
            if _EVENT_MARK in name:
                what = check_event_file(os.path.join(path, name))
                if what is not None:
                    damaged[os.path.join(path, name)] = what
                    print(f"gradlens report: {os.path.join(path, name)}: {what}"
                          + ("" if what.startswith(("not a", "unreadable")) else "; reporting what could be read"),
                          file=err)
    if not runs:
        print(f"gradlens report: no TensorBoard event files (events.out.tfevents.*) under {logdir!r}; "
              f"pass the logdir given to gradlens.watch(logdir=...)", file=err)
        return 2
    reports = []
    for path in runs:
        try:
            reports.append(load_run(path, thresholds=thresholds))
        except ValueError as exc:
            if len(runs) == 1:
                unreadable = [f for f in damaged if os.path.dirname(f) == path]
                print(f"gradlens report: {exc}" + (" (its event files could not be read)" if unreadable else ""),
                      file=err)
                return 2
    if not reports:
        print(f"gradlens report: no gradlens statistics in any run under {logdir!r}", file=err)
        return 2
    wrote = None
    if csv:
        import pandas as pd

        frames = [r.frame.assign(run=os.path.relpath(r.logdir, logdir)) for r in reports]
        table = pd.concat(frames, ignore_index=True)
        try:
            table.to_csv(csv, index=False)
        except OSError as exc:
            print(f"gradlens report: --csv {csv}: {exc.strerror or exc}", file=err)
            return 2
        wrote = f"wrote {len(table)} rows ({len(table.columns)} columns) to {csv}"
    if getattr(args, "plot", None):
        try:
            _plot(reports, logdir, args.plot)
        except (ImportError, OSError, ValueError) as exc:
            print(f"gradlens report: --plot {args.plot}: {exc}", file=err)
            return 2
    code = 1 if any(r.problems for r in reports) else 0
    try:
        _print_all(args, reports, out, wrote)
    except BrokenPipeError:  # ``gradlens report RUN | head``: the reader left; the verdict stands
        try:
            sys.stdout = open(os.devnull, "w")  # silence the flush at interpreter exit
        except OSError:
            pass
    return code


def _unwritable(path: str) -> Optional[str]:
    """Why ``path`` cannot be written as a file, or None."""
    if os.path.isdir(path):
        return "is a directory; give a file name"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"directory {parent!r} does not exist"
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "not writable"
    return None


def _print_all(args: argparse.Namespace, reports: List[RunReport], out: TextIO, wrote: Optional[str]) -> None:
    if args.json:
        if wrote:
            print(f"gradlens report: {wrote}", file=sys.stderr)  # stdout stays pure JSON
        payload = {
            "runs": [
                {
                    "logdir": r.logdir,
                    "steps": len(r.records),
                    "layers": json.loads(r.layer_table().drop(columns=["trend"]).to_json(orient="records")),
                    "findings": [f.to_dict() for f in r.findings],
                    "dropped_step": r.dropped_step,
                }
                for r in reports
            ],
            "problems": sum(len(r.problems) for r in reports),
        }
        json.dump(_clean(payload), out, indent=2, allow_nan=False)
        out.write("\n")
    else:
        for i, rep in enumerate(reports):
            if i:
                print("", file=out)
            _print_report(rep, out)
        if getattr(args, "plot", None):
            print(f"\ngradient-flow figure: {args.plot}", file=out)
        if wrote:
            print(f"\n{wrote}", file=out)
    out.flush()  # a closed pipe shows here, inside run()'s BrokenPipeError handler


def _plot(reports: List[RunReport], logdir: str, path: str) -> None:
    """The gradient-flow figure of each run, stacked top to bottom, saved as a PNG."""
    from gradlens.sinks.figure import flow_figure

    images = []
    for rep in reports:
        name = os.path.relpath(rep.logdir, logdir)
        name = os.path.basename(os.path.abspath(rep.logdir)) if name == "." else name
        images.append(flow_figure(rep.records, rep.findings,
                                  title=f"{name}: log10 gradient norm per layer (input side at the top) x step"))
    if len(images) == 1:
        images[0].save(path, format="PNG")
        return
    from PIL import Image

    sheet = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), (255, 255, 255))
    y = 0
    for img in images:
        sheet.paste(img, (0, y))
        y += img.height
    sheet.save(path, format="PNG")


def _clean(x):
    """JSON-safe copy: NaN/Inf become the strings "nan"/"inf"/"-inf" (strict JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x
