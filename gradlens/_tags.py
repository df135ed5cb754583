"""The TensorBoard tag scheme gradlens writes and ``gradlens report`` reads.

Stable and documented in the README ("TensorBoard tags"):

===========================  ==============================================
``{stat}/{layer}``           per-layer statistic, e.g. ``grad_norm/encoder.0``
``param/{stat}/{param}``     per-parameter statistic, e.g. ``param/grad_norm/fc.weight``
``gradlens/loss``            the loss, when the monitor is given it
``gradlens/layers``          text: JSON list of layer names, input side first
``gradlens/findings``        text: one line per finding
``gradlens/gradient_flow``   image: log10 gradient norm, layers x steps
===========================  ==============================================

TensorBoard groups tags by their first path component, so every statistic gets
its own section with one chart per layer, and the custom-scalars layout adds one
multi-line chart per statistic with all layers.

Internal contract; not public API.
"""

from __future__ import annotations

from typing import Optional, Tuple

from gradlens._record import LAYER_STATS

__all__ = [
    "LOSS_TAG",
    "LAYERS_TAG",
    "FINDINGS_TAG",
    "FLOW_TAG",
    "layer_tag",
    "param_tag",
    "parse_tag",
]

LOSS_TAG = "gradlens/loss"
LAYERS_TAG = "gradlens/layers"
FINDINGS_TAG = "gradlens/findings"
FLOW_TAG = "gradlens/gradient_flow"
_PARAM_PREFIX = "param/"


def layer_tag(stat: str, layer: str) -> str:
    """Tag of a per-layer statistic."""
    return f"{stat}/{layer}"


def param_tag(stat: str, param: str) -> str:
    """Tag of a per-parameter statistic."""
    return f"{_PARAM_PREFIX}{stat}/{param}"


def parse_tag(tag: str) -> Optional[Tuple[str, str, str]]:
    """Split a gradlens scalar tag into ``(level, stat, name)``.

    ``level`` is ``"layer"`` or ``"param"``. Returns ``None`` for tags gradlens did
    not write as a per-layer/per-parameter statistic (the loss included).

    >>> parse_tag("grad_norm/encoder.0")
    ('layer', 'grad_norm', 'encoder.0')
    >>> parse_tag("param/grad_max/fc.weight")
    ('param', 'grad_max', 'fc.weight')
    >>> parse_tag("train/accuracy") is None
    True
    """
    level = "layer"
    rest = tag
    if tag.startswith(_PARAM_PREFIX):
        level, rest = "param", tag[len(_PARAM_PREFIX):]
    stat, sep, name = rest.partition("/")
    if not sep or not name or stat not in LAYER_STATS:
        return None
    return level, stat, name
