"""TensorBoard sink: log10 norm series, a custom-scalars layout, the flow figure, the overview.

Tags follow :mod:`gradlens._tags` exactly (``gradlens report`` reads them back):

* ``{stat}_log10/{pos}:{layer}`` for the norm statistics (``grad_norm``, ``grad_max``,
  ``weight_norm``, ``update_ratio``, ``out_grad_norm``): norms span decades, a
  linear chart shows a vanishing layer as 0; ``{stat}/{pos}:{layer}`` for the rest.
  ``pos`` (input side first, zero-padded) makes TensorBoard's name order the
  network's order;
* counts (``nonfinite``, ``missing_grad``, ``act_nonfinite``): written at a layer's
  first step and again whenever they change, not at every step;
* ``param/...`` per-parameter series only with ``param_scalars=True`` (opt-in);
* ``gradlens/signals/{stat}``: the model-output signals (``StepRecord.signals``),
  linear values, at every step that has them;
* ``gradlens/loss``, ``gradlens/layers`` (JSON list, input side first, written at
  the first record and whenever the layer set changes), ``gradlens/findings``;
* ``gradlens/gradient_flow``: the figure of :mod:`gradlens.sinks.figure` and
  ``gradlens/overview``: the markdown run overview of :mod:`gradlens.sinks.overview`,
  both every ``flow_every`` logged steps and at :meth:`TensorBoardSink.close`;
* a custom-scalars layout (category ``gradlens``): one multi-line chart per
  statistic with every layer, and the loss.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from gradlens import _tags
from gradlens._record import LAYER_STATS, StepRecord
from gradlens.sinks import Sink
from gradlens.sinks.figure import FINITE, MISSING, TB_WIDTH, ZERO, FlowHistory, render_flow

__all__ = ["TensorBoardSink", "layout_proto"]

_log = logging.getLogger("gradlens")
_LOG10 = frozenset(_tags.LOG10_STATS)
_CHANGE_ONLY = frozenset(_tags.CHANGE_ONLY_STATS)
#: chart order in the custom-scalars layout: what a reader looks at first
_CHART_ORDER = ("grad_norm", "update_ratio", "weight_norm", "grad_max", "out_grad_norm", "nonfinite",
                "missing_grad") + tuple(s for s in LAYER_STATS if s.startswith("act_"))


def _log10(v: float) -> float:
    # a zero norm is -inf, NaN stays NaN, +inf stays +inf
    return math.log10(v) if v > 0.0 else (-math.inf if v == 0.0 else math.nan)


def _chart_title(stat: str) -> str:
    return f"{stat} (log10)" if stat in _LOG10 else stat


def _charts(stats: Iterable[str]) -> List[Tuple[str, str]]:
    """(title, tag regex) of each custom-scalars chart, in reading order."""
    present = set(stats)
    charts = [(_chart_title(stat), "^" + _tags.layer_tag(stat, "", log10=stat in _LOG10))
              for stat in _CHART_ORDER if stat in present]
    return charts + [("loss", "^" + _tags.LOSS_TAG + "$")]


def layout_proto(stats: Iterable[str]):
    """The custom-scalars ``Layout``: one multi-line chart per statistic, all layers in it.

    >>> [c.title for c in layout_proto(["nonfinite", "grad_norm"]).category[0].chart]
    ['grad_norm (log10)', 'nonfinite', 'loss']
    """
    from tensorboard.plugins.custom_scalar import layout_pb2

    charts = [layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex]))
              for title, regex in _charts(stats)]
    return layout_pb2.Layout(category=[layout_pb2.Category(title="gradlens", chart=charts)])


def _layout_summary(layout):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto())
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=meta)])


class TensorBoardSink(Sink):
    """Writes :class:`StepRecord` objects to a ``SummaryWriter``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with its
            ``add_scalar``/``add_text``/``add_image``/``add_custom_scalars``/``flush``).
        param_scalars: also write per-parameter series (``param/...``); off by
            default: they triple the tag count of a small CNN and repeat the layers'.
        flow_every: write the gradient-flow figure and the run overview every this
            many logged steps, and at :meth:`close` (0: never).
        flow_window: the most columns in the flow figure; a longer run is merged
            pairwise so that it is shown whole (>= 2).
        owns_writer: close the writer in :meth:`close` (it was created by gradlens).

    Example:
        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> sink = TensorBoardSink(SummaryWriter(tempfile.mkdtemp()), owns_writer=True)
        >>> sink.write(StepRecord(0, ["fc1", "fc2"], {"grad_norm": {"fc1": 1e-6, "fc2": 0.5}}))
        >>> sink.close()
    """

    name = "TensorBoard"

    def __init__(
        self,
        writer: Any,
        *,
        param_scalars: bool = False,
        flow_every: int = 50,
        flow_window: int = 256,
        owns_writer: bool = False,
    ) -> None:
        super().__init__()
        self.writer = writer
        self.param_scalars = param_scalars
        self.flow_every = flow_every
        self.owns_writer = owns_writer
        self._layers: Optional[Tuple[str, ...]] = None
        self._tag: Dict[Tuple[str, str], str] = {}  # (stat, layer) -> tag, for the current layers
        self._ptag: Dict[Tuple[str, str], str] = {}  # (stat, param) -> tag
        self._held: Dict[str, float] = {}  # change-only tag -> last value written
        self._stats_in_layout: frozenset = frozenset()
        self._flow = FlowHistory(flow_window)
        self._findings: List[Any] = []
        self._finding_ids: set = set()
        self._n = 0
        self._last_step: Optional[int] = None
        self._drawn_at: Optional[int] = None
        self._no_figure = False

    # -- public ---------------------------------------------------------------
    def write(self, record: StepRecord) -> None:
        """Write one record (scalars, layer list when it changed, figure on its cadence)."""
        self._guard(self._write, record)

    def write_findings(self, findings: Iterable[Any], step: int) -> None:
        """Write new findings as text at ``gradlens/findings``, one line each; keep them for the figure."""
        findings = list(findings)
        for f in findings:
            if id(f) not in self._finding_ids:  # findings are updated in place while they last
                self._finding_ids.add(id(f))
                self._findings.append(f)
        lines = [str(f) for f in findings]
        if lines:
            self._guard(self.writer.add_text, _tags.FINDINGS_TAG, "  \n".join(lines), step)

    def write_histograms(self, named: Iterable[Tuple[str, Any]], step: int) -> None:
        """Histograms of the given ``(name, tensor)`` pairs at ``grad_hist/{name}`` (opt-in)."""
        for name, values in named:
            self._guard(self.writer.add_histogram, f"grad_hist/{name}", values, step)

    def flush(self) -> None:
        """Flush pending events to disk."""
        self._guard(self.writer.flush)

    def close(self) -> None:
        """Write the final flow figure and overview, flush, and close an owned writer."""
        if self._flow.columns and self.flow_every and self._drawn_at != self._last_step:
            self._guard(self._write_figures, self._last_step)
        self.flush()
        if self.owns_writer:
            self._guard(self.writer.close)

    def figure(self, *, title: Optional[str] = None, width: Optional[int] = TB_WIDTH):
        """The flow figure of what was written so far (a ``PIL.Image.Image``), as written to TensorBoard."""
        layers, spans, state, logv = self._flow.grid()
        img, _layout = render_flow(layers, spans, state, logv, self._findings, title=title, width=width)
        return img

    def overview(self) -> str:
        """The markdown run overview of what was written so far."""
        from gradlens.sinks.overview import overview_markdown, sparkline

        layers, spans, state, logv = self._flow.grid()
        rows = []
        for i, layer in enumerate(layers):
            if layer not in self._flow.first:
                continue
            values = [_linear(s, v) for s, v in zip(state[i], logv[i]) if s != MISSING]
            rows.append({"layer": layer, "first": self._flow.first[layer][1],
                         "last": self._flow.last[layer][1], "trend": sparkline(values)})
        first, last = (spans[0][0], spans[-1][1]) if spans else (None, None)
        return overview_markdown(rows, self._findings, n_steps=self._n, first_step=first, last_step=last)

    # -- internals ------------------------------------------------------------
    def _write(self, record: StepRecord) -> None:
        w, step = self.writer, record.step
        self._last_step = step
        layers = tuple(record.layers)
        if layers != self._layers:
            w.add_text(_tags.LAYERS_TAG, json.dumps(list(layers)), step)
            self._layers = layers
            # (a layer's tags keep the position of its first record: a module that
            # gets a row only on some steps, such as a probed tanh, must not move the
            # other layers' series to new tags)
        stats = frozenset(record.stats)
        if not stats <= self._stats_in_layout:
            self._stats_in_layout |= stats
            self._write_layout(step)
        items = []
        if record.loss is not None:
            items.append((_tags.LOSS_TAG, record.loss))
        for stat, value in record.signals.items():
            items.append((_tags.signal_tag(stat), value))
        for stat, values in record.stats.items():
            items.extend(self._items(stat, values, self._tag, self._new_layer_tag))
        if self.param_scalars:
            for stat, values in record.param_stats.items():
                items.extend(self._items(stat, values, self._ptag, self._new_param_tag))
        self._scalars(items, step)
        if self.flow_every:
            self._flow.add(step, layers, record.stats.get("grad_norm", {}), record.stats.get("nonfinite"))
            self._n += 1
            if self._n % self.flow_every == 0:
                self._write_figures(step)

    def _items(self, stat: str, values: Dict[str, float], tags: Dict[Tuple[str, str], str],
               make_tag: Callable[[str, str, bool], str]) -> List[Tuple[str, float]]:
        """(tag, value) pairs of one statistic: log10 for norms, counts only when they change."""
        log10, held = stat in _LOG10, stat in _CHANGE_ONLY
        out = []
        for name, value in values.items():
            tag = tags.get((stat, name))
            if tag is None:
                tag = tags[(stat, name)] = make_tag(stat, name, log10)
            if held:
                if not self._changed(tag, value):
                    continue
            elif log10:
                value = _log10(value)
            out.append((tag, value))
        return out

    def _new_layer_tag(self, stat: str, layer: str, log10: bool) -> str:
        layers = self._layers or ()
        pos = layers.index(layer) if layer in layers else None
        return _tags.layer_tag(stat, layer, position=pos, width=len(str(len(layers) - 1)), log10=log10)

    @staticmethod
    def _new_param_tag(stat: str, param: str, log10: bool) -> str:
        return _tags.param_tag(stat, param, log10=log10)

    def _changed(self, tag: str, value: float) -> bool:
        last = self._held.get(tag)
        if last is not None and (last == value or (last != last and value != value)):
            return False
        self._held[tag] = value
        return True

    def _write_layout(self, step: int) -> None:
        get_file_writer = getattr(self.writer, "_get_file_writer", None)
        if get_file_writer is None:  # another writer: its own add_custom_scalars (a dict)
            charts = {title: ["Multiline", [regex]] for title, regex in _charts(self._stats_in_layout)}
            self.writer.add_custom_scalars({"gradlens": charts})
            return
        # at the current step: TensorBoard shows the layout of the latest step
        get_file_writer().add_summary(_layout_summary(layout_proto(self._stats_in_layout)), step)

    def _scalars(self, items: List[Tuple[str, float]], step: int) -> None:
        # A torch SummaryWriter gets all scalars of a step as ONE event holding many
        # values (what add_scalar writes, one value per event, costs ~15 us a call);
        # TensorBoard reads both forms the same way. Other writers get add_scalar.
        get_file_writer = getattr(self.writer, "_get_file_writer", None)
        if get_file_writer is None:
            for tag, value in items:
                self.writer.add_scalar(tag, value, step)
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in items])
        get_file_writer().add_summary(summary, step)

    def _image(self, img: Any, step: int) -> None:
        get_file_writer = getattr(self.writer, "_get_file_writer", None)
        if get_file_writer is None:
            import numpy as np

            self.writer.add_image(_tags.FLOW_TAG, np.asarray(img), step, dataformats="HWC")
            return
        import io

        from tensorboard.compat.proto.summary_pb2 import Summary

        # PNG at a low compression level: a few times faster to write than the default,
        # and a flat-coloured figure compresses well anyway
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        summary = Summary(value=[Summary.Value(tag=_tags.FLOW_TAG, image=Summary.Image(
            height=img.height, width=img.width, colorspace=3, encoded_image_string=buf.getvalue()))])
        get_file_writer().add_summary(summary, step)

    def _write_figures(self, step: int) -> None:
        self._drawn_at = step
        if not self._no_figure:
            try:
                img = self.figure()
            except ImportError as exc:  # no Pillow: the rest of the sink goes on
                self._no_figure = True
                _log.warning("gradlens: no gradient-flow image in TensorBoard (%s)", exc)
            else:
                self._image(img, step)
        self.writer.add_text(_tags.OVERVIEW_TAG, self.overview(), step)


def _linear(state: int, logv: float) -> float:
    # back from the figure's cells: finite -> 10**log, zero -> 0, non-finite -> inf
    return 10.0 ** logv if state == FINITE else (0.0 if state == ZERO else math.inf)
