"""TensorBoard sink: scalars, layer list, findings and the gradient-flow image.

Tags follow :mod:`gradlens._tags` exactly (``gradlens report`` reads them back):

* ``{stat}/{layer}`` per layer, ``param/{stat}/{param}`` per parameter,
* ``gradlens/loss``, ``gradlens/layers`` (JSON list, input side first, written at
  the first record and whenever the layer set changes), ``gradlens/findings``,
* ``gradlens/gradient_flow``: an image of log10 gradient norm, one row per layer
  (input side at the top), one column per logged step (the last ``flow_window``),
* a custom-scalars layout with one multi-line chart per statistic (all layers).
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any, Deque, Iterable, List, Optional, Tuple

import numpy as np

from gradlens import _tags
from gradlens._record import LAYER_STATS, StepRecord
from gradlens.sinks import Sink

__all__ = ["TensorBoardSink", "flow_image"]

# A small perceptually ordered colour ramp (dark blue -> green -> yellow), sampled
# from viridis; values in between are interpolated linearly.
_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
_NONFINITE_RGB = (255, 0, 255)  # magenta: NaN/Inf gradient
_MISSING_RGB = (0, 0, 0)  # black: not measured


def flow_image(columns: List[List[float]], *, cell_w: int = 4, cell_h: int = 8) -> np.ndarray:
    """RGB uint8 image (H, W, 3) of log10 gradient norms; ``columns[t][layer]``.

    Finite values are mapped linearly between the smallest and the largest log10
    norm in the window; NaN/Inf (a non-finite gradient) are magenta, absent layers
    black. Zero norms map to the bottom of the ramp.
    """
    grid = np.array(columns, dtype=np.float64).T  # layers x steps
    if grid.size == 0:
        return np.zeros((cell_h, cell_w, 3), dtype=np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        logv = np.log10(grid)
    finite = np.isfinite(logv)
    lo = logv[finite].min() if finite.any() else 0.0
    hi = logv[finite].max() if finite.any() else 1.0
    span = hi - lo if hi > lo else 1.0
    pos = np.clip(np.where(finite, (logv - lo) / span, 0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    i0 = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - i0)[..., None]
    rgb = _RAMP[i0] * (1 - frac) + _RAMP[i0 + 1] * frac
    zero = grid == 0
    rgb[zero] = _RAMP[0]
    rgb[~finite & ~zero & ~np.isnan(grid)] = _NONFINITE_RGB  # +-inf norm
    rgb[np.isnan(grid)] = _MISSING_RGB
    img = rgb.astype(np.uint8)
    return np.repeat(np.repeat(img, cell_h, axis=0), cell_w, axis=1)


class TensorBoardSink(Sink):
    """Writes :class:`StepRecord` objects to a ``SummaryWriter``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with its
            ``add_scalar``/``add_text``/``add_image``/``add_custom_scalars``/``flush``).
        param_scalars: also write per-parameter scalars (``param/{stat}/{param}``).
        flow_every: write the gradient-flow image every this many logged steps
            (0: never).
        flow_window: number of most recent logged steps shown in that image.
        owns_writer: close the writer in :meth:`close` (it was created by gradlens).
    """

    name = "TensorBoard"

    def __init__(
        self,
        writer: Any,
        *,
        param_scalars: bool = True,
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
        self._flow: Deque[Tuple[Tuple[str, ...], dict]] = deque(maxlen=flow_window)
        self._n = 0
        self._guard(self._write_layout)

    # -- public ---------------------------------------------------------------
    def write(self, record: StepRecord) -> None:
        """Write one record (scalars, layer list when it changed, flow image on cadence)."""
        self._guard(self._write, record)

    def write_findings(self, findings: Iterable[Any], step: int) -> None:
        """Write new findings as text at ``gradlens/findings``, one line each."""
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
        """Write the final gradient-flow image, flush, and close an owned writer."""
        if self._flow and self.flow_every:
            self._guard(self._write_flow, self._last_step)
        self.flush()
        if self.owns_writer:
            self._guard(self.writer.close)

    # -- internals ------------------------------------------------------------
    def _write_layout(self) -> None:
        charts = {}
        for stat in LAYER_STATS:
            charts[stat] = ["Multiline", [f"^{stat}/"]]
        self.writer.add_custom_scalars({"gradlens": charts})

    def _write(self, record: StepRecord) -> None:
        w, step = self.writer, record.step
        self._last_step = step
        layers = tuple(record.layers)
        if layers != self._layers:
            w.add_text(_tags.LAYERS_TAG, json.dumps(list(layers)), step)
            self._layers = layers
        items = []
        if record.loss is not None:
            items.append((_tags.LOSS_TAG, record.loss))
        for stat, values in record.stats.items():
            items.extend((_tags.layer_tag(stat, layer), value) for layer, value in values.items())
        if self.param_scalars:
            for stat, values in record.param_stats.items():
                items.extend((_tags.param_tag(stat, param), value) for param, value in values.items())
        self._scalars(items, step)
        if self.flow_every:
            norms = dict(record.stats.get("grad_norm", {}))
            for layer, bad in record.stats.get("nonfinite", {}).items():
                if bad > 0:
                    norms[layer] = math.inf
            self._flow.append((layers, norms))
            self._n += 1
            if self._n % self.flow_every == 0:
                self._write_flow(step)

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

    def _write_flow(self, step: int) -> None:
        layers = self._flow[-1][0]
        columns = [[norms.get(layer, math.nan) for layer in layers] for _, norms in self._flow]
        img = flow_image(columns)
        self.writer.add_image(_tags.FLOW_TAG, img, step, dataformats="HWC")
