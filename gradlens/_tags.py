"""The TensorBoard tag scheme gradlens writes and ``gradlens report`` reads.

Stable and documented in the README ("TensorBoard tags"):

===================================  ==============================================
``{stat}_log10/{pos}:{layer}``       log10 of a norm statistic (:data:`LOG10_STATS`),
                                     e.g. ``grad_norm_log10/03:encoder.2``
``{stat}/{pos}:{layer}``             any other per-layer statistic (counts,
                                     fractions, means), e.g. ``nonfinite/00:conv1``
``param/{stat}[_log10]/{param}``     per-parameter statistic (opt-in), same rule
``gradlens/loss``                    the loss, when the monitor is given it
``gradlens/signals/{stat}``          a model-output signal (:data:`SIGNAL_STATS`),
                                     linear, every logged step it was measured,
                                     e.g. ``gradlens/signals/output_grad_norm``
``gradlens/layers``                  text: JSON list of layer names, input side first
``gradlens/findings``                text: one line per finding
``gradlens/overview``                text: markdown run overview (the report table)
``gradlens/gradient_flow``           image: the gradient-flow figure
===================================  ==============================================

``pos`` is the layer's position from the input side, zero-padded (``00``, ``01``,
...), so that TensorBoard, which sorts tags by name, lists layers input side first.
Norms span many orders of magnitude (a vanishing network's layers differ by 1e8),
so they are written as log10: a zero norm is ``-inf``, NaN/Inf stay NaN/Inf. Counts
(:data:`CHANGE_ONLY_STATS`) are written at a layer's first step and then only when
they change; a reader carries the last value forward.

Earlier gradlens versions wrote ``{stat}/{layer}`` with linear values for every
statistic; :func:`decode_tag` still reads those.

Internal contract; not public API.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional, Tuple

from gradlens._record import LAYER_STATS, SIGNAL_STATS

__all__ = [
    "LOSS_TAG",
    "SIGNAL_PREFIX",
    "signal_tag",
    "decode_signal_tag",
    "LAYERS_TAG",
    "FINDINGS_TAG",
    "OVERVIEW_TAG",
    "FLOW_TAG",
    "LOG10_STATS",
    "CHANGE_ONLY_STATS",
    "Tag",
    "layer_tag",
    "param_tag",
    "decode_tag",
    "parse_tag",
]

LOSS_TAG = "gradlens/loss"
LAYERS_TAG = "gradlens/layers"
FINDINGS_TAG = "gradlens/findings"
OVERVIEW_TAG = "gradlens/overview"
FLOW_TAG = "gradlens/gradient_flow"
SIGNAL_PREFIX = "gradlens/signals/"
_PARAM_PREFIX = "param/"
_LOG10_SUFFIX = "_log10"

#: Statistics written as log10 (norms and ratios of norms: they span decades).
LOG10_STATS = ("grad_norm", "grad_max", "weight_norm", "update_ratio", "out_grad_norm")

#: Statistics that are zero on a healthy run: written once, then only when they change.
CHANGE_ONLY_STATS = ("nonfinite", "missing_grad", "act_nonfinite")

_POSITION = re.compile(r"^(\d+):(.+)$")


class Tag(NamedTuple):
    """A decoded gradlens scalar tag."""

    level: str  # "layer" or "param"
    stat: str  # one of LAYER_STATS
    name: str  # the layer or parameter name (position prefix removed)
    log10: bool  # the values are log10 of the statistic


def _position(position: Optional[int], width: int) -> str:
    if position is None:
        return ""
    return f"{position:0{max(2, width)}d}:"


def layer_tag(stat: str, layer: str, *, position: Optional[int] = None, width: int = 2,
              log10: bool = False) -> str:
    """Tag of a per-layer statistic.

    >>> layer_tag("grad_norm", "encoder.0", position=3, log10=True)
    'grad_norm_log10/03:encoder.0'
    >>> layer_tag("nonfinite", "fc", position=0)
    'nonfinite/00:fc'
    >>> layer_tag("grad_norm", "fc")  # the scheme of earlier versions
    'grad_norm/fc'
    """
    suffix = _LOG10_SUFFIX if log10 else ""
    return f"{stat}{suffix}/{_position(position, width)}{layer}"


def param_tag(stat: str, param: str, *, log10: bool = False) -> str:
    """Tag of a per-parameter statistic.

    >>> param_tag("grad_norm", "fc.weight", log10=True)
    'param/grad_norm_log10/fc.weight'
    """
    suffix = _LOG10_SUFFIX if log10 else ""
    return f"{_PARAM_PREFIX}{stat}{suffix}/{param}"


def signal_tag(stat: str) -> str:
    """Tag of a model-output signal.

    >>> signal_tag("output_grad_norm")
    'gradlens/signals/output_grad_norm'
    """
    return SIGNAL_PREFIX + stat


def decode_signal_tag(tag: str) -> Optional[str]:
    """The signal a :func:`signal_tag` names, or ``None`` for any other tag.

    >>> decode_signal_tag("gradlens/signals/output_sat_frac")
    'output_sat_frac'
    >>> decode_signal_tag("gradlens/loss") is None
    True
    """
    if not tag.startswith(SIGNAL_PREFIX):
        return None
    stat = tag[len(SIGNAL_PREFIX):]
    return stat if stat in SIGNAL_STATS else None


def decode_tag(tag: str) -> Optional[Tag]:
    """Decode a gradlens scalar tag, or ``None`` for any other tag (the loss included).

    >>> decode_tag("grad_norm_log10/03:encoder.0")
    Tag(level='layer', stat='grad_norm', name='encoder.0', log10=True)
    >>> decode_tag("param/grad_max/fc.weight")
    Tag(level='param', stat='grad_max', name='fc.weight', log10=False)
    >>> decode_tag("train/accuracy") is None
    True
    """
    level = "layer"
    rest = tag
    if tag.startswith(_PARAM_PREFIX):
        level, rest = "param", tag[len(_PARAM_PREFIX):]
    stat, sep, name = rest.partition("/")
    log10 = stat.endswith(_LOG10_SUFFIX)
    if log10:
        stat = stat[: -len(_LOG10_SUFFIX)]
        if stat not in LOG10_STATS:
            return None
    if not sep or not name or stat not in LAYER_STATS:
        return None
    if level == "layer":
        m = _POSITION.match(name)
        if m:
            name = m.group(2)
    return Tag(level, stat, name, log10)


def parse_tag(tag: str) -> Optional[Tuple[str, str, str]]:
    """Split a gradlens scalar tag into ``(level, stat, name)`` (see :func:`decode_tag`).

    ``level`` is ``"layer"`` or ``"param"``. Returns ``None`` for tags gradlens did
    not write as a per-layer/per-parameter statistic (the loss included).

    >>> parse_tag("grad_norm/encoder.0")
    ('layer', 'grad_norm', 'encoder.0')
    >>> parse_tag("grad_norm_log10/00:encoder.0")
    ('layer', 'grad_norm', 'encoder.0')
    >>> parse_tag("param/grad_max/fc.weight")
    ('param', 'grad_max', 'fc.weight')
    >>> parse_tag("train/accuracy") is None
    True
    """
    decoded = decode_tag(tag)
    return None if decoded is None else decoded[:3]
