"""The gradient-flow figure: log10 gradient norm per layer (rows) and step (columns).

One renderer serves TensorBoard (the ``gradlens/gradient_flow`` image), ``gradlens
report LOGDIR --plot FILE.png`` and notebooks (:func:`flow_figure`, which returns a
``PIL.Image.Image``; Jupyter shows it inline). It draws with Pillow directly rather
than matplotlib: Pillow already comes with TensorBoard, a figure costs a few
milliseconds (it is drawn inside the training process, on the ``flow_every``
cadence), and every user gets the same pixels without an extra to install.

What the figure shows:

* rows: layers, input side at the top, named on the left;
* columns: logged steps, the step axis at the bottom (long runs are merged pairwise
  into at most ``max_columns`` columns, so the whole run stays visible);
* colour: log10 of the gradient norm, with a colour bar in decades on the right;
* magenta: a non-finite gradient (NaN/Inf); black: an exactly zero gradient; light
  grey: not logged for that layer;
* findings: a red box around each finding's layer and steps, numbered above the
  plot and listed under it (a global finding such as divergence: a red column).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = ["flow_figure", "FlowHistory", "PLOT_WIDTH", "TB_WIDTH"]

# viridis sampled at 9 points (dark blue -> green -> yellow); linear in between.
_RAMP = np.array(
    [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64,
)
_NONFINITE_RGB = (255, 0, 255)
_ZERO_RGB = (0, 0, 0)
_MISSING_RGB = (224, 224, 224)
_FINDING_RGB = (228, 26, 28)
_TEXT_RGB = (33, 33, 33)
_BG_RGB = (255, 255, 255)

# cell states
MISSING, FINITE, ZERO, NONFINITE = 0, 1, 2, 3

#: Width of the plot area in pixels (the steps are spread over it).
PLOT_WIDTH = 600
#: Width of the figure written to TensorBoard: its IMAGES cards are 350 pixels wide
#: and scale wider images down, so this one is shown at its own size.
TB_WIDTH = 350
_ROW_H = 18  # per layer, while the layers fit
_MAX_PLOT_H = 720
_FONT_SIZE = 13
_MAX_LISTED = 8  # findings listed under the figure


_Cell = Tuple[int, float, int]  # (state, mean log10 of its finite values, how many)


def _state(value: float) -> _Cell:
    """The cell of one recorded norm (NaN/Inf: a non-finite gradient)."""
    if not math.isfinite(value):
        return NONFINITE, math.nan, 0
    if value <= 0.0:
        return ZERO, -math.inf, 0
    return FINITE, math.log10(value), 1


class FlowHistory:
    """The columns of a flow figure, kept bounded: pairs of the oldest are merged.

    ``add(step, layers, norms, nonfinite)`` appends one logged step; at most
    ``max_columns`` columns are kept: when full, neighbouring columns are merged
    in pairs (a non-finite cell stays non-finite, finite ones average in log10),
    so a long run is shown whole at a coarser resolution. Also keeps the first
    and the last norm of every layer (the run overview).
    """

    def __init__(self, max_columns: int = 512) -> None:
        if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 2:
            raise ValueError(f"FlowHistory(max_columns=...) expects an int >= 2, got {max_columns!r}")
        self.max_columns = max_columns
        # [first step, last step, logged steps in it, {layer: (state, log10)}]
        self.columns: List[list] = []
        self.layers: List[str] = []
        self.first: Dict[str, Tuple[int, float]] = {}
        self.last: Dict[str, Tuple[int, float]] = {}
        self._stride = 1  # logged steps per full column
        self._seen_layers: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.columns)

    def add(self, step: int, layers: Sequence[str], norms: Dict[str, float],
            nonfinite: Optional[Dict[str, float]] = None) -> None:
        """Append one logged step: ``norms[layer]``; ``nonfinite[layer] > 0`` marks it non-finite.
        A layer in ``layers`` with neither (a row of activation statistics only: a traced or
        probed module without parameters) is no row of the figure."""
        layers = tuple(name for name in layers if name in norms or (nonfinite is not None and name in nonfinite))
        if layers != self._seen_layers:  # newest order first, layers gone since after it
            self._seen_layers = layers
            self.layers = list(layers) + [name for name in self.layers if name not in set(layers)]
        cells: Dict[str, _Cell] = {}
        for layer, value in norms.items():
            cells[layer] = _state(value)
            if layer not in self.first:
                self.first[layer] = (step, value)
            self.last[layer] = (step, value)
        if nonfinite:
            for layer, bad in nonfinite.items():
                if bad > 0:  # a NaN count compares False: left alone
                    cells[layer] = (NONFINITE, math.nan, 0)
        if self.columns and self.columns[-1][2] < self._stride:
            col = self.columns[-1]
            col[1], col[2], col[3] = step, col[2] + 1, _merge_cells(col[3], cells)
        else:
            self.columns.append([step, step, 1, cells])
        if len(self.columns) > self.max_columns:
            cols = self.columns
            self.columns = [[a[0], b[1], a[2] + b[2], _merge_cells(a[3], b[3])]
                            for a, b in zip(cols[0::2], cols[1::2])] + ([cols[-1]] if len(cols) % 2 else [])
            self._stride *= 2

    def grid(self) -> Tuple[List[str], List[Tuple[int, int]], np.ndarray, np.ndarray]:
        """``(layers, [(first_step, last_step)] per column, state[L, C], log10[L, C])``."""
        layers = list(self.layers)
        index = {name: i for i, name in enumerate(layers)}
        state = np.zeros((len(layers), len(self.columns)), dtype=np.int8)
        logv = np.full(state.shape, np.nan)
        for c, (_a, _b, _n, cells) in enumerate(self.columns):
            for layer, (s, v, _n) in cells.items():
                i = index.get(layer)
                if i is None:
                    continue
                state[i, c], logv[i, c] = s, v
        spans = [(a, b) for a, b, _n, _c in self.columns]
        return layers, spans, state, logv


def _merge_cells(a: Dict[str, _Cell], b: Dict[str, _Cell]) -> Dict[str, _Cell]:
    """One column from two: NaN/Inf wins, finite norms average in log10 (geometric mean)."""
    out = dict(a)
    for layer, (sb, vb, nb) in b.items():
        sa, va, na = out.get(layer, (MISSING, math.nan, 0))
        if NONFINITE in (sa, sb):
            out[layer] = (NONFINITE, math.nan, 0)
        elif FINITE in (sa, sb):
            total = (va * na if na else 0.0) + (vb * nb if nb else 0.0)
            out[layer] = (FINITE, total / (na + nb), na + nb)
        elif ZERO in (sa, sb):
            out[layer] = (ZERO, -math.inf, 0)
        else:
            out[layer] = (MISSING, math.nan, 0)
    return out


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------
class _Layout(NamedTuple):
    """Where things are in a rendered figure (pixel coordinates, for tests)."""

    width: int
    height: int
    plot: Tuple[int, int, int, int]  # left, top, right, bottom of the heat map
    row_h: int
    col_edges: Tuple[int, ...]  # x of each column's left edge, then the right edge
    colorbar: Tuple[int, int, int, int]
    lo: float  # log10 at the bottom of the colour bar
    hi: float  # log10 at its top


def _pil():
    """Pillow's Image and ImageDraw, or an ImportError that names the extra to install."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:  # pragma: no cover - Pillow comes with TensorBoard >= 2.15
        raise ImportError("the gradient-flow figure needs Pillow: pip install 'gradlens[plot]'") from exc
    return Image, ImageDraw


@functools.lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except TypeError:  # pragma: no cover - older Pillow: the small bitmap font
        return ImageFont.load_default()


def _text_w(_draw, text: str, font) -> int:
    return _measure(text, font)


@functools.lru_cache(maxsize=4096)
def _measure(text: str, font) -> int:
    # layer names repeat from one figure to the next: measured once
    left, _top, right, _bottom = font.getbbox(text)
    return int(right - left)


def _colours(state: np.ndarray, logv: np.ndarray, lo: float, hi: float) -> np.ndarray:
    pos = np.clip((np.nan_to_num(logv, nan=lo, neginf=lo, posinf=hi) - lo) / (hi - lo), 0.0, 1.0)
    pos = pos * (len(_RAMP) - 1)
    i0 = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - i0)[..., None]
    rgb = _RAMP[i0] * (1 - frac) + _RAMP[i0 + 1] * frac
    rgb[state == ZERO] = _ZERO_RGB
    rgb[state == NONFINITE] = _NONFINITE_RGB
    rgb[state == MISSING] = _MISSING_RGB
    return np.rint(rgb).astype(np.uint8)


def _decades(logv: np.ndarray, state: np.ndarray) -> Tuple[float, float]:
    finite = logv[state == FINITE]
    if finite.size == 0:
        return -1.0, 0.0
    lo, hi = math.floor(float(finite.min())), math.ceil(float(finite.max()))
    if hi - lo < 1:
        hi = lo + 1
    return float(lo), float(hi)


def _nice_ticks(first: int, last: int, max_ticks: int = 8) -> List[int]:
    """Round step numbers between ``first`` and ``last`` (``first`` included)."""
    raw = max(1, last - first) / max(1, max_ticks - 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = int(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw))
    ticks = [first] + [s for s in range(-(-first // step) * step, last + 1, step) if s - first >= step / 2]
    return ticks


def render_flow(layers: Sequence[str], spans: Sequence[Tuple[int, int]], state: np.ndarray,
                logv: np.ndarray, findings: Iterable[Any] = (), *, title: Optional[str] = None,
                width: Optional[int] = None):
    """Draw the figure; returns ``(PIL.Image.Image, _Layout)``. See :func:`flow_figure`."""
    Image, ImageDraw = _pil()

    compact = width is not None and width < 520
    fs = _FONT_SIZE - 2 if compact else _FONT_SIZE
    font, small = _font(fs), _font(fs - 1 if compact else fs - 2)
    n_layers, n_cols = state.shape
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_full = fs + 3 if compact else _ROW_H
    max_h = _MAX_PLOT_H // 2 if compact else _MAX_PLOT_H
    row_h = row_full if n_layers * row_full <= max_h else max(2, max_h // max(1, n_layers))
    label_every = max(1, math.ceil((fs + 2) / row_h))
    label_w = max([_text_w(probe, str(name), font) for name in layers] + [20])
    findings = [f for f in findings]
    lo, hi = _decades(logv, state)
    tick_w = max(_text_w(probe, f"{v:g}", small) for v in (lo, hi, (lo + hi) / 2))
    pad = 8 if compact else 12

    left = pad + label_w + 6
    top = 8 + (fs + 8) + (fs + 3)  # the heading, then a line for the finding numbers and 'log10'
    right_part = (14 if compact else 24) + 12 + 6 + max(tick_w, _text_w(probe, "log10", small)) + pad
    plot_w = PLOT_WIDTH if width is None else max(120, width - left - right_part)
    plot_h = max(row_h, n_layers * row_h)
    right, bottom = left + plot_w, top + plot_h
    cb_left = right + (14 if compact else 24)
    cb = (cb_left, top, cb_left + 12, top + max(plot_h, 80 if compact else 120))
    width = max(width or 0, cb[2] + 6 + tick_w + pad, left + plot_w + 40)
    listed = findings[:_MAX_LISTED]
    legend_y = max(bottom, cb[3]) + (2 * fs + 10)
    line_h = fs + 4
    height = legend_y + line_h + 6 + (len(listed) + (1 if len(findings) > len(listed) else 0)) * line_h + 6

    img = Image.new("RGB", (width, height), _BG_RGB)
    draw = ImageDraw.Draw(img)
    heading = title or "log10 gradient norm per layer (input side at the top) x step"
    draw.text((pad, 8), _fit(heading, width - 2 * pad, draw, font), fill=_TEXT_RGB, font=font)

    # heat map: each column spread over the plot width
    edges = [left + round(c * plot_w / max(1, n_cols)) for c in range(n_cols + 1)] if n_cols else [left, right]
    if n_cols:
        rgb = _colours(state, logv, lo, hi)
        widths = np.diff(np.array(edges))
        cells = np.repeat(np.repeat(rgb, row_h, axis=0), widths, axis=1)
        img.paste(Image.fromarray(cells, "RGB"), (left, top))
    else:
        draw.rectangle([left, top, right - 1, bottom - 1], fill=_MISSING_RGB)
    draw.rectangle([left - 1, top - 1, right, bottom], outline=_TEXT_RGB)

    # layer names, input side first
    for i, name in enumerate(layers):
        if i % label_every:
            continue
        y = top + i * row_h + row_h // 2
        w = _text_w(draw, str(name), font)
        draw.text((left - 6 - w, y), str(name), fill=_TEXT_RGB, font=font, anchor="lm")

    # step axis
    if n_cols:
        first, last = spans[0][0], spans[-1][1]
        for s in _nice_ticks(first, last):
            c = _column_of(spans, s)
            x = (edges[c] + edges[c + 1]) // 2
            draw.line([x, bottom, x, bottom + 4], fill=_TEXT_RGB)
            draw.text((x, bottom + 6), str(s), fill=_TEXT_RGB, font=small, anchor="mt")
        draw.text(((left + right) // 2, bottom + fs + 8), "step", fill=_TEXT_RGB, font=small, anchor="mt")

    # colour bar, in decades
    bar_h = cb[3] - cb[1]
    ramp_pos = np.linspace(hi, lo, bar_h)[:, None]
    bar = _colours(np.full((bar_h, 1), FINITE, dtype=np.int8), ramp_pos, lo, hi)
    img.paste(Image.fromarray(np.repeat(bar, cb[2] - cb[0], axis=1), "RGB"), (cb[0], cb[1]))
    draw.rectangle([cb[0] - 1, cb[1] - 1, cb[2], cb[3]], outline=_TEXT_RGB)
    draw.text((cb[0] - 4, cb[1] - 8), "log10", fill=_TEXT_RGB, font=small, anchor="lb")
    step_dec = max(1, math.ceil((hi - lo) / 6))
    for v in np.arange(hi, lo - 1e-9, -step_dec):
        y = cb[1] + round((hi - v) / (hi - lo) * (bar_h - 1))
        draw.line([cb[2], y, cb[2] + 3, y], fill=_TEXT_RGB)
        draw.text((cb[2] + 5, y), f"{v:g}", fill=_TEXT_RGB, font=small, anchor="lm")

    # findings: a box around layer x steps, numbered above the plot
    rows = {name: i for i, name in enumerate(layers)}
    for k, f in enumerate(findings, start=1):
        if not n_cols:
            break
        c0 = _column_of(spans, int(getattr(f, "step", 0)))
        c1 = _column_of(spans, int(getattr(f, "last_step", None) or getattr(f, "step", 0)))
        x0, x1 = edges[c0], edges[c1 + 1] - 1
        layer = getattr(f, "layer", None)
        if layer in rows:
            y0, y1 = top + rows[layer] * row_h, top + (rows[layer] + 1) * row_h - 1
        else:  # a global finding: the whole column
            y0, y1 = top, bottom - 1
        draw.rectangle([x0, y0, x1, y1], outline=_FINDING_RGB, width=2)
        tx = min(max(x0 + 2 + 12 * ((k - 1) % 3), left), right - 10)
        draw.text((tx, top - 3), str(k), fill=_FINDING_RGB, font=small, anchor="lb")

    # legend and the list of findings
    x, box = pad, fs - 1
    entries = [(_NONFINITE_RGB, None, "NaN/Inf"), (_ZERO_RGB, None, "zero"), (_MISSING_RGB, None, "not logged")]
    if findings:
        entries.append((None, _FINDING_RGB, "finding"))
    for fill, outline, label in entries:
        draw.rectangle([x, legend_y, x + box, legend_y + box], fill=fill, outline=outline or _TEXT_RGB,
                       width=2 if outline else 1)
        draw.text((x + box + 4, legend_y + box // 2), label, fill=_TEXT_RGB, font=small, anchor="lm")
        x += box + 4 + _text_w(draw, label, small) + (10 if compact else 18)
    y = legend_y + line_h + 6
    for k, f in enumerate(listed, start=1):
        draw.text((pad, y), _fit(_finding_text(k, f), width - 2 * pad, draw, small), fill=_TEXT_RGB, font=small)
        y += line_h
    if len(findings) > len(listed):
        draw.text((pad, y), f"... and {len(findings) - len(listed)} more", fill=_TEXT_RGB, font=small)

    layout = _Layout(width, height, (left, top, right, bottom), row_h, tuple(edges), cb, lo, hi)
    return img, layout


def _column_of(spans: Sequence[Tuple[int, int]], step: int) -> int:
    """The column holding ``step`` (the nearest one when it holds none)."""
    for c, (a, b) in enumerate(spans):
        if step <= b:
            return c if step >= a or c == 0 else (c if a - step < step - spans[c - 1][1] else c - 1)
    return len(spans) - 1


def _finding_text(k: int, f: Any) -> str:
    step, last = getattr(f, "step", None), getattr(f, "last_step", None)
    steps = f"steps {step}..{last}" if last not in (None, step) else f"step {step}"
    layer = getattr(f, "layer", None)
    where = f"layer {layer}" if layer is not None else "whole model"
    return f"{k}  [{getattr(f, 'severity', '?')}] {getattr(f, 'kind', '?')}, {where}, {steps}: {getattr(f, 'message', '')}"


def _fit(text: str, max_w: int, draw, font) -> str:
    """``text``, cut with ``...`` to fit ``max_w`` pixels."""
    if _text_w(draw, text, font) <= max_w:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if _text_w(draw, text[:mid] + "...", font) <= max_w:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "..."


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------
def flow_figure(data: Any, findings: Iterable[Any] = (), *, title: Optional[str] = None,
                max_columns: int = 512, width: Optional[int] = None):
    """The gradient-flow figure of a run, as a ``PIL.Image.Image``.

    Args:
        data: the run's records (``mon.records()``, ``gradlens.report.load_run(d).records``,
            any iterable of :class:`~gradlens._record.StepRecord`) or a pandas DataFrame
            from ``mon.dataframe()`` (``level="layer"``, or the default per-parameter one,
            whose norms are combined per layer).
        findings: the findings to mark (``mon.findings``).
        title: the heading; by default it says what is drawn.
        max_columns: the most columns; longer runs are merged pairwise (>= 2).
        width: the figure's width in pixels; by default the plot is 600 pixels wide.
            Below 520 the figure is compact (smaller type), as TensorBoard's IMAGES
            cards show it (``TB_WIDTH``, 350 pixels).

    Returns:
        The figure: ``img.save("flow.png")``; a notebook shows it inline.

    Raises:
        TypeError: ``data`` is neither records nor a DataFrame.
        ValueError: ``data`` holds no gradient norms.
        ImportError: Pillow is missing (``pip install 'gradlens[plot]'``).

    Example:
        >>> from gradlens._record import StepRecord
        >>> recs = [StepRecord(s, ["fc1", "fc2"], {"grad_norm": {"fc1": 1e-6, "fc2": 1.0}}) for s in range(5)]
        >>> img = flow_figure(recs)
        >>> img.size[0] > 600 and img.mode
        'RGB'
    """
    img, _layout = _flow_figure(data, findings, title=title, max_columns=max_columns, width=width)
    return img


def _flow_figure(data: Any, findings: Iterable[Any] = (), *, title: Optional[str] = None,
                 max_columns: int = 512, width: Optional[int] = None):
    if isinstance(max_columns, bool) or not isinstance(max_columns, int) or max_columns < 2:
        raise ValueError(f"flow_figure(max_columns=...) expects an int >= 2, got {max_columns!r}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 200):
        raise ValueError(f"flow_figure(width=...) expects None or an int >= 200, got {width!r}")
    history = FlowHistory(max_columns)
    for step, layers, norms, nonfinite in _steps_of(data):
        history.add(step, layers, norms, nonfinite)
    if not history.columns:
        raise ValueError("flow_figure(data=...) holds no gradient norms (no 'grad_norm' values)")
    layers, spans, state, logv = history.grid()
    return render_flow(layers, spans, state, logv, findings, title=title, width=width)


def _steps_of(data: Any):
    """Yield ``(step, layers, norms, nonfinite)`` from records or a DataFrame."""
    if hasattr(data, "columns") and hasattr(data, "groupby"):
        yield from _steps_of_frame(data)
        return
    try:
        items = list(data)
    except TypeError:
        raise TypeError(f"flow_figure(data=...) expects StepRecords or a DataFrame, got {type(data).__name__}") from None
    for r in items:
        stats = getattr(r, "stats", None)
        if not isinstance(stats, dict) or not hasattr(r, "step"):
            raise TypeError(f"flow_figure(data=...) expects StepRecords or a DataFrame, got a list of {type(r).__name__}")
        norms = stats.get("grad_norm")
        if norms:
            yield r.step, list(r.layers), norms, stats.get("nonfinite")


def _steps_of_frame(df: Any):
    cols = set(df.columns)
    if not {"step", "layer", "grad_norm"} <= cols:
        raise ValueError("flow_figure(data=...) expects a DataFrame with columns step, layer, grad_norm "
                         f"(mon.dataframe()), got {sorted(cols)}")
    import pandas as pd

    frame = df[["step", "layer", "grad_norm"] + (["nonfinite"] if "nonfinite" in cols else [])]
    frame = frame.dropna(subset=["layer"])
    if "nonfinite" in frame:  # rows without gradient statistics (activation-only modules)
        frame = frame[~(frame["grad_norm"].isna() & frame["nonfinite"].isna())]
    if "param" in cols:  # per-parameter rows: norms combine as sqrt(sum of squares)
        frame = frame.assign(grad_norm=frame["grad_norm"].astype(float) ** 2)
        agg = {"grad_norm": "sum"}
        if "nonfinite" in frame:
            agg["nonfinite"] = "sum"
        frame = frame.groupby(["step", "layer"], sort=False, as_index=False).agg(agg)
        frame["grad_norm"] = frame["grad_norm"] ** 0.5
    for step, g in frame.groupby("step", sort=True):
        layers = [str(x) for x in pd.unique(g["layer"])]
        norms = dict(zip(layers, (float(v) for v in g["grad_norm"])))
        bad = dict(zip(layers, (float(v) for v in g["nonfinite"]))) if "nonfinite" in g else None
        yield int(step), layers, norms, bad
