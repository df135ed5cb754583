"""Monitoring: :func:`watch` attaches to a model and records gradient statistics.

Modules: :mod:`.monitor` (the :class:`Monitor` and :func:`watch`), :mod:`.stats`
(fused device statistics), :mod:`.tracer` (activations, NaN origin) and
:mod:`.hooks` (owned handles).
"""

from gradlens.monitor.monitor import Monitor, watch

__all__ = ["watch", "Monitor"]
