"""Activations: per-layer output statistics, the gradient flowing back into each
output, and the module where a NaN/Inf is born.

Device side: the tracer's module hooks (``_tracer.py``), on only while a traced
step runs (every ``every``-th logged step); their per-call vectors are the step's
``act`` slots. Host side: the ``act_*`` and ``out_grad_norm`` columns and
``StepRecord.nonfinite_origin``. After a broken step whose next forward is not
traced, a one-forward probe (non-finite counts only) names the origin there.

Saturation probe (``watch(saturation=...)``, on by default, independent of
``activations``): on every ``saturation``-th logged step (:data:`SATURATION_EVERY`,
10, the first one included) that the tracer does not trace, a forward hook on each
bounded module (``nn.Tanh``, ``nn.Sigmoid``, ``nn.Hardtanh``/``ReLU6``,
``nn.Hardsigmoid``, ``nn.Softsign``; see :func:`~gradlens.monitor.sources._tracer.sat_limits`)
counts its saturated outputs, armed only for that step's forward: the record gets
``act_sat_frac`` (and ``act_zero_frac`` for ReLU6-like modules) for those modules and
nothing else. The output layer (the model's last registered module) is left to the
model-output signals when they are on (``output_stats``, every 5th logged step: a
superset of the probe's steps). A model without a hidden bounded module gets no hook. Cost: three ops
per bounded module on a probed step (figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from gradlens.monitor.attach import HookSet, compiling, on_root_forward
from gradlens.monitor.layout import LayerOrder, Layouts
from gradlens.monitor.packet import Packet, StepPacket
from gradlens.monitor.sources._tracer import Tracer
from gradlens.monitor.sources.base import Cycle, Source, Work

__all__ = ["Activations", "ACTIVATIONS_EVERY", "SATURATION_EVERY"]

_log = logging.getLogger("gradlens")

#: ``activations=True`` traces every this many logged steps (an int picks another
#: cadence; 1 is every logged step).
ACTIVATIONS_EVERY = 10

#: ``saturation=True`` (the default) probes the bounded modules' saturation on every
#: this many logged steps, the first one included. 10: the saturation rule judges a
#: sampled step against the loss of the steps before it (``saturation_min_losses``),
#: and needs two such samples (``saturation_samples``), so a finding comes at logged
#: step 20; a denser cadence only costs more.
SATURATION_EVERY = 10

#: Modules that only reshape their input; their outputs are not traced (a view of
#: a traced output is still recognised as finite input by the NaN-origin rule).
_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)


class Activations(Source):
    """Activation tracing on every ``every``-th logged step (0: off, only the
    NaN-origin probe after broken steps), and the origin probe.

    Args:
        layouts: names and selection of the model's modules.
        order: the layer order, told which modules ran.
        every: the tracing cadence in logged steps (0: no tracing).
        probe: whether the origin probe may run (False for compiled models).
        saturation: the saturation probe's cadence in logged steps (0: off).
        output_signals: the model-output signals measure the output's saturation
            (``output_stats`` on): the probe leaves the model's last registered module,
            its output layer, to them.
    """

    kinds = ("act",)

    def __init__(
        self, layouts: Layouts, order: LayerOrder, every: int, *, probe: bool = True, saturation: int = 0,
        output_signals: bool = False,
    ) -> None:
        self._layouts, self._order = layouts, order
        self.every = every
        self.sat_every = saturation
        self._may_probe = probe
        self._hooks = HookSet()
        self.origin_probe: Optional[Tracer] = None
        self._origin: Optional[str] = None  # named by the probe, for the next record
        self._announced: set = set()  # origins already logged (once each)
        self._replayed: Optional[str] = None  # the module where a replay located the birth (monitor/replay.py)
        # armed for step 0, which is traced
        self.tracer: Optional[Tracer] = Tracer(layouts.modules(skip=_RESHAPES)) if every else None
        # the saturation probe, armed for step 0 by start() unless the tracer traces it; None
        # without a hidden bounded module (then it costs nothing)
        self.sat_probe: Optional[Tracer] = None
        if saturation:
            modules = layouts.modules(skip=_RESHAPES)
            if output_signals:
                *_, last = layouts.root.modules()
                modules = [(n, m) for n, m in modules if m is not last]
            # (unarmed until start(): no hook before every option was validated)
            sat = Tracer(modules, sat_only=True, armed=False)
            self.sat_probe = sat if sat.modules else None

    def start(self) -> None:
        """Arm the saturation probe for step 0 (the monitor's hooks go on last)."""
        if self.sat_probe is not None:
            self.sat_probe.arm(self.tracer is None)

    def traced(self, cycle: Cycle) -> bool:
        """Whether the upcoming step is traced."""
        # (cycle.logged is the index the upcoming record will have among logged ones)
        return self.tracer is not None and cycle.is_logged_step() and cycle.logged % self.every == 0

    def sat_probed(self, cycle: Cycle) -> bool:
        """Whether the upcoming step runs the saturation probe (a probe step the tracer
        traces gets the tracer's statistics, saturation included, instead)."""
        return (
            self.sat_probe is not None and cycle.is_logged_step() and cycle.logged % self.sat_every == 0
            and not self.traced(cycle)
        )

    def after_update(self, cycle: Cycle, work: Work, pend: StepPacket, packet: Packet, skipped: bool) -> None:
        if pend.traced is not None or pend.act is not None:
            return  # (a second optimizer's chunk: the forward was traced once)
        for tracer in (self.tracer, self.sat_probe):
            if tracer is None:
                continue
            if not tracer.calls:
                tracer.clear()
                continue
            for t in tracer.device_tensors():
                packet.put("act", None, t)
            pend.traced = tracer.take()  # summarized with the values, by read()
            if tracer is self.tracer:
                for name in pend.traced.grad_counts:  # traced modules, in forward order
                    self._order.saw(name)
            return  # one of them per step (they are armed on different steps)

    def read(
        self, slots: List[Tuple[Any, np.ndarray]], rows: np.ndarray, p: np.ndarray, dw: np.ndarray,
        pends: Sequence[StepPacket], members: List[int],
    ) -> None:
        vals = np.concatenate([v for _, v in slots])  # (values, steps)
        for j, b in enumerate(members):
            pend = pends[b]
            if pend.traced is not None:
                pend.act, pend.origin = pend.traced.summarize(vals[:, j])
                pend.traced = None

    def step_done(self, cycle: Cycle) -> None:
        if self.tracer is not None:
            # calls made after this step's collection (a second optimizer's forward)
            # belong to no record: dropped, not left for the next step
            self.tracer.clear()
            # module hooks only while a traced step runs; others run no gradlens code
            self.tracer.arm(self.traced(cycle))
        if self.sat_probe is not None:
            self.sat_probe.clear()
            self.sat_probe.arm(self.sat_probed(cycle))

    def finish(self, pend: StepPacket) -> None:
        """The origin of ``pend``'s record: its own, or the probe's latest."""
        pend.origin = pend.origin or self._origin
        self._origin = None

    def after_record(self, cycle: Cycle, record: Any) -> None:
        """A record with NaN/Inf gradients or loss was published: probe the next
        forward unless it is traced (broken steps are published at once, so the
        "next" step is the one to come)."""
        broken = any(v > 0 for v in record.stats.get("nonfinite", {}).values()) or (
            record.loss is not None and not math.isfinite(record.loss)
        )
        next_traced = self.traced(cycle)
        if broken and not next_traced and self._may_probe and self.origin_probe is None:
            # (once a replay found the birth, the probe's answers, taken after the update
            # spread the NaN, are logged only where they agree with it)
            site = getattr(record, "nonfinite_site", None) or {}
            if self._replayed is None and str(site.get("located_by", "")).startswith("replayed"):
                self._replayed = str(site.get("module"))
            self._arm_origin_probe(agree=self._replayed)

    def _arm_origin_probe(self, agree: Optional[str] = None) -> None:
        """Trace non-finite counts per module for the next grad-enabled forward only
        (``agree``: log its answer only if it names this module)."""
        probe = Tracer(self._layouts.modules(skip=_RESHAPES), stats=False)
        self.origin_probe = probe

        def done(module: nn.Module, args: Any, output: Any) -> None:
            if not probe.calls or compiling():
                return
            handle.remove()
            probe.remove()
            with torch.no_grad():
                host = torch.cat([t.float().cpu() for t in probe.device_tensors()]).tolist()
            _, origin = probe.take().summarize(host)
            self.origin_probe = None
            if origin is not None:
                self._origin = origin
                if origin not in self._announced and agree in (None, origin):
                    self._announced.add(origin)
                    _log.warning("gradlens: non-finite values first appear in the output of %s", origin)

        handle = self._hooks.add(on_root_forward(self._layouts.root, done))

    def close(self) -> None:
        self._hooks.remove()
        for tracer in (self.tracer, self.origin_probe, self.sat_probe):
            if tracer is not None:
                tracer.remove()
