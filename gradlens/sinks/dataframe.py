"""In-memory, bounded history of records and its pandas view.

Memory is bounded: at most ``max_history`` logged steps are kept (default
:data:`DEFAULT_MAX_HISTORY`). When the cap is reached, every second step of the
older half is dropped, so recent steps stay at full resolution and older ones are
thinned geometrically (a million-step run keeps ~``max_history`` rows per
parameter, spread over the whole run). Each kept step costs
``5 * (6 * n_params + 13 * n_layers)`` bytes (float32 values and a recorded-mask),
not Python floats, plus ``SIGNAL_STATS`` float64 values when the step has
model-output signals.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from gradlens._record import GRAD_STATS, LAYER_STATS, SIGNAL_STATS, StepRecord
from gradlens.sinks import Sink

__all__ = ["HistorySink", "DEFAULT_MAX_HISTORY"]

#: Default cap on the number of logged steps kept in memory.
DEFAULT_MAX_HISTORY = 10_000

_Layout = Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]  # params, their layers, layers


class HistorySink(Sink):
    """Keeps a thinned history of :class:`StepRecord` objects as float32 arrays.

    Args:
        max_history: the most logged steps kept (>= 2).
    """

    name = "history"

    def __init__(self, max_history: int = DEFAULT_MAX_HISTORY) -> None:
        super().__init__()
        self.max_history = max_history
        # (step, layout id, (param values, mask), (layer values, mask), loss, (origin, site),
        # signals: SIGNAL_STATS values, NaN where absent, or None);
        # the mask says which entries were recorded, so a measured NaN survives.
        self._rows: List[Tuple[int, int, Any, Any, Optional[float], Tuple[Optional[str], Any], Any]] = []
        self._layouts: List[_Layout] = []
        self._layout_ids: Dict[_Layout, int] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def write(
        self,
        record: StepRecord,
        layout: Tuple[Tuple[str, ...], Tuple[str, ...]],
        params: Tuple[np.ndarray, np.ndarray],
        layers: Tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Append one record (thinning the older half when the cap is reached).

        ``layout``: the parameter names and each one's layer. ``params``: the
        per-parameter values (rows in ``layout`` order, columns in ``GRAD_STATS``
        order) and their recorded-mask; ``layers``: the same per layer (rows in
        ``record.layers`` order, columns in ``LAYER_STATS`` order). The monitor has
        them as arrays already, so the record's dicts are not read back.
        """
        key = (layout[0], layout[1], tuple(record.layers))
        lid = self._layout_ids.get(key)
        if lid is None:
            lid = self._layout_ids[key] = len(self._layouts)
            self._layouts.append(key)
        # copies: the caller's arrays may be views of a larger (batch) array
        p = (params[0].astype(np.float32), params[1].copy())
        loss = None if record.loss is None else float(record.loss)
        signals = None
        if record.signals:  # (absent signals stay absent: a mask of what was measured)
            signals = (np.array([record.signals.get(k, np.nan) for k in SIGNAL_STATS]),
                       np.array([k in record.signals for k in SIGNAL_STATS]))
        self._rows.append((record.step, lid, p, layers, loss, (record.nonfinite_origin, record.nonfinite_site), signals))
        if len(self._rows) >= self.max_history:
            half = len(self._rows) // 2
            old = self._rows[:half]
            self._rows = old[::2] + self._rows[half:]

    def dataframe(self, level: str = "param") -> Any:
        """Long-format DataFrame: one row per (step, parameter) or (step, layer);
        ``level="signals"``: one row per step with the model-output signals."""
        import pandas as pd

        if level == "signals":
            cols = ["step", *SIGNAL_STATS, "loss"]
            rows = [[step, *(sig[0] if sig is not None else [np.nan] * len(SIGNAL_STATS)),
                     np.nan if loss is None else loss]
                    for step, _, _, _, loss, _, sig in self._rows]
            return pd.DataFrame(rows, columns=cols).astype({k: "float64" for k in cols[1:]})
        frames = []
        for step, lid, p, lay, loss, _, _ in self._rows:
            params, players, layers = self._layouts[lid]
            p, lay = p[0], lay[0]
            if level == "param":
                if not params:
                    continue
                df = pd.DataFrame(p.astype(np.float64), columns=list(GRAD_STATS))
                df.insert(0, "param", list(params))
                df.insert(0, "layer", list(players))
            else:
                if not layers:
                    continue
                df = pd.DataFrame(lay.astype(np.float64), columns=list(LAYER_STATS))
                df.insert(0, "layer", list(layers))
            df.insert(0, "step", step)
            df["loss"] = np.nan if loss is None else loss
            frames.append(df)
        if not frames:
            cols = ["step", "layer", "param", *GRAD_STATS] if level == "param" else ["step", "layer", *LAYER_STATS]
            return pd.DataFrame(columns=cols + ["loss"])
        out = pd.concat(frames, ignore_index=True)
        for col in ("nonfinite", "missing_grad"):
            if col in out:
                out[col] = out[col].astype("float64")
        return out

    def records(self) -> List[StepRecord]:
        """The kept history rebuilt as :class:`StepRecord` objects (oldest first)."""
        out = []
        for step, lid, p, lay, loss, (origin, site), sig in self._rows:
            params, _, layers = self._layouts[lid]
            stats = _unpack(lay, LAYER_STATS, layers)
            pstats = _unpack(p, GRAD_STATS, params)
            out.append(
                StepRecord(
                    step=step,
                    layers=list(layers),
                    stats={k: v for k, v in stats.items() if v},
                    param_stats={k: v for k, v in pstats.items() if v},
                    loss=loss,
                    nonfinite_origin=origin,
                    # (NaN as math.nan itself: records of the same run compare equal)
                    signals={} if sig is None else {
                        k: float(v) if v == v else math.nan for k, v, m in zip(SIGNAL_STATS, *sig) if m},
                    nonfinite_site=site,
                )
            )
        return out



def _unpack(packed: Tuple[np.ndarray, np.ndarray], names_stats: Tuple[str, ...], names: Tuple[str, ...]) -> Dict[str, Dict[str, float]]:
    values, present = packed
    out: Dict[str, Dict[str, float]] = {}
    for j, stat in enumerate(names_stats):
        d = {name: float(values[i, j]) for i, name in enumerate(names) if present[i, j]}
        if d:
            out[stat] = d
    return out
