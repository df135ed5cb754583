"""The one data structure that flows from monitoring to diagnosis.

Data flows one way (see STYLE.md): hooks -> one stats tensor per logged step ->
one host copy -> a :class:`StepRecord` -> sinks (TensorBoard, pandas) and rules.
``gradlens report`` rebuilds the same records from TensorBoard event files, so the
live and the offline diagnosis run the very same rules on the very same data.

Internal contract shared by ``gradlens.monitor``, ``gradlens.sinks``,
``gradlens.diagnose`` and ``gradlens.cli``; not public API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = [
    "StepRecord", "ROOT_LAYER", "LAYER_STATS", "GRAD_STATS", "ACT_STATS", "SIGNAL_STATS", "layer_of",
]

#: Name used for parameters owned directly by the root module (qualified name "").
ROOT_LAYER = "(root)"

#: Gradient statistics, per parameter and per layer (aggregated over the layer's
#: own parameters: norms combine as sqrt(sum of squares), max as max, counts add).
GRAD_STATS = (
    "grad_norm",      # L2 norm of the gradient
    "grad_max",       # max |g|
    "nonfinite",      # count of NaN/Inf gradient elements
    "weight_norm",    # L2 norm of the parameter
    "update_ratio",   # ||w_after - w_before|| / ||w_before||; NaN when not measured
    "missing_grad",   # parameters with requires_grad but .grad None at step time
)

#: Forward/backward signal statistics per layer (only with activations=True).
ACT_STATS = (
    "act_mean",        # mean of the layer output
    "act_std",         # standard deviation of the layer output
    "act_zero_frac",   # fraction of exact zeros in the output
    "act_dead_frac",   # fraction of units (features/channels) zero on every sample of the batch
    "act_sat_frac",    # fraction saturated (tanh/sigmoid-like outputs near their limits); NaN otherwise
    "act_nonfinite",   # count of NaN/Inf output elements
    "out_grad_norm",   # L2 norm of the gradient flowing back into the layer output
)

LAYER_STATS = GRAD_STATS + ACT_STATS

#: Model-level signals of one step (``StepRecord.signals``), measured on the root
#: module's output and on the gradient flowing back into it.
SIGNAL_STATS = (
    "output_mean",            # mean of the model output (floating tensors of the output)
    "output_std",             # standard deviation of the model output
    "output_min",             # smallest output element
    "output_max",             # largest output element
    "output_sat_frac",        # fraction of outputs at the limits of a bounded output layer; NaN when unbounded
    "output_nonfinite",       # count of NaN/Inf output elements
    "output_grad_norm",       # L2 norm of dL/d(output)
    "output_grad_nonfinite",  # count of NaN/Inf elements of dL/d(output)
    "output_push_frac",       # fraction of outputs at a limit of the output activation (bounded or ReLU)
                              # that dL/d(output) pushes past it; NaN for other outputs
    "output_sum_push",        # softmax output: mean(dL/dp) / rms(dL/dp), the part a softmax cannot follow; NaN else
)


def layer_of(param_name: str) -> str:
    """The owning module's qualified name of a parameter name (``"a.b.weight"`` -> ``"a.b"``)."""
    head, _, _ = param_name.rpartition(".")
    return head or ROOT_LAYER


@dataclass
class StepRecord:
    """Statistics of one logged step, on the host, as plain floats.

    Attributes:
        step: the optimizer step (0-based count of steps seen by the monitor).
        layers: layer names ordered from the input side to the output side
            (forward execution order when known, else module registration order).
        stats: ``stats[stat][layer] -> float``; ``stat`` is one of :data:`LAYER_STATS`.
            A stat or layer that was not measured is simply absent (or NaN).
        param_stats: ``param_stats[stat][param_name] -> float`` for :data:`GRAD_STATS`.
        loss: the loss seen for this step, if the monitor was given one.
        nonfinite_origin: the first module (in forward order) whose inputs were
            finite and whose output was not, when activations were traced.
        signals: ``signals[name] -> float`` for :data:`SIGNAL_STATS` (absent when
            not measured).
        nonfinite_site: where a NaN/Inf was found and how, when it was located
            (keys, each optional: ``op`` e.g. ``"aten.log"``, ``module``, ``source``
            ``"file.py:42"``, ``phase`` ``"forward"``/``"backward"``, ``input_range``
            ``(min, max)``, ``located_by`` e.g. ``"replayed step 4"``).
    """

    step: int
    layers: List[str]
    stats: Dict[str, Dict[str, float]] = field(default_factory=dict)
    param_stats: Dict[str, Dict[str, float]] = field(default_factory=dict)
    loss: Optional[float] = None
    nonfinite_origin: Optional[str] = None
    signals: Dict[str, float] = field(default_factory=dict)
    nonfinite_site: Optional[Dict[str, Any]] = None

    def get(self, stat: str, layer: str, default: float = math.nan) -> float:
        """``stats[stat][layer]``, or ``default`` when it was not recorded."""
        return self.stats.get(stat, {}).get(layer, default)

    def series(self, stat: str) -> List[float]:
        """The values of ``stat`` over :attr:`layers`, in order (NaN where missing)."""
        values = self.stats.get(stat, {})
        return [values.get(name, math.nan) for name in self.layers]
