"""``gradlens.watch``: attach to a model (and its optimizers) and record gradient health.

Only wiring: :mod:`.attach` hooks the optimizers (and the model's root forward),
:mod:`.collect` runs the step cycle over the :mod:`.sources`, which write one
:mod:`.packet` per logged step, and :mod:`.publish` turns closed steps into records
for the sinks and the diagnosis. Names and groups come from :mod:`.layout`.
"""

from __future__ import annotations

import atexit
import functools
import os
import weakref
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from gradlens._record import StepRecord
from gradlens.diagnose import engine as _engine
from gradlens.diagnose.finding import Finding
from gradlens.monitor import options as _options
from gradlens.monitor import distributed as _distributed
from gradlens.monitor import stats as _stats
from gradlens.monitor.attach import HookSet, OptimizerTaps, claim, compiling, on_root_forward, order_probe
from gradlens.monitor.collect import Collector
from gradlens.monitor.layout import LayerOrder, Layouts
from gradlens.monitor import packet as _packet
from gradlens.monitor.packet import StepPacket
from gradlens.monitor.publish import Publisher, publish_at_exit
from gradlens.monitor.replay import Replay
from gradlens.monitor.sources.activations import ACTIVATIONS_EVERY, Activations
from gradlens.monitor.sources.gradients import Gradients
from gradlens.monitor.sources.loss import Loss
from gradlens.monitor.sources.output import OutputSignals
from gradlens.monitor.sources.updates import Updates
from gradlens.sinks.dataframe import DEFAULT_MAX_HISTORY, HistorySink

__all__ = ["watch", "Monitor", "ACTIVATIONS_EVERY"]



class Monitor:
    """Records per-parameter and per-layer gradient statistics of a model.

    Create it with :func:`gradlens.watch`; see there for every option. Use it as a
    context manager or call :meth:`close` when done.

    Example:
        >>> import torch, gradlens
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with gradlens.watch(model, opt) as mon:
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         model(torch.randn(16, 4)).pow(2).mean().backward()
        ...         opt.step()
        >>> mon.dataframe()[["step", "param"]].head(2).values.tolist()
        [[0, '0.weight'], [0, '0.bias']]
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: List[torch.optim.Optimizer],
        *,
        writer: Any,
        owns_writer: bool,
        every: int,
        activations: int,
        include: Optional[Tuple[str, ...]],
        exclude: Optional[Tuple[str, ...]],
        group_depth: Union[None, int, str],
        update_every: int,
        max_history: int,
        param_scalars: Optional[bool],
        flow_every: int,
        histogram_every: int,
        on_finding: Optional[Callable[[Finding], Any]],
        halt_on: Tuple[str, ...],
        thresholds: Optional[Dict[str, Any]],
        ranks: str = "zero",
        output_stats: int = 0,
        replay_nonfinite: Union[bool, str] = True,
        saturation: int = 0,
    ) -> None:
        self.model = model
        self.every = every
        self._closed = False
        layouts = self._layouts = Layouts(model, optimizers, include, exclude, group_depth)
        self._release = claim(layouts.root, self)
        layouts.warn_if_nothing_matches()  # before any hook, in case warnings are errors
        compiled = layouts.compiled
        if activations and compiled:
            # forward hooks there would be traced into the graph
            warnings.warn(
                "gradlens.watch(activations=True) is unavailable for torch.compile'd models "
                "(forward hooks would be traced into the graph); only gradient statistics are recorded",
                RuntimeWarning,
                stacklevel=3,
            )
            activations = 0
        if compiled:
            saturation = 0  # (the same: its forward hooks would be traced into the graph)
        self._tb = None
        if writer is not None:
            from gradlens.sinks.tensorboard import TensorBoardSink

            # per-parameter series are opt-in (the tag budget: a 10-layer CNN keeps ~60 tags)
            self._tb = TensorBoardSink(writer, param_scalars=bool(param_scalars), flow_every=flow_every,
                                       owns_writer=owns_writer)
        self._history = HistorySink(max_history)

        # the sources, in slot order (a new statistic is one more entry here)
        order = LayerOrder(layouts)
        self._loss = Loss()
        self._activations = Activations(
            layouts, order, activations, probe=not compiled, saturation=saturation, output_signals=bool(output_stats)
        )
        hist = self._tb.write_histograms if self._tb is not None else None
        sources = [Gradients(histogram_every, hist), Updates(update_every), self._activations, self._loss]
        output = None
        if output_stats:  # the root's output and dL/d(output), on by default
            *_, last = layouts.root.modules()
            output = OutputSignals(model, last, every=output_stats)
            sources.append(output)
        # a callback or a halt must see each finding at its step: no batching then
        eager = self._eager = on_finding is not None or bool(halt_on)
        self._replay = _replay_source(model, layouts, replay_nonfinite, eager)
        if self._replay is not None:
            sources.append(self._replay)  # after Gradients: it reads their statistics
        self._sources = sources
        collector = self._collector = Collector(
            layouts, sources, n_optimizers=len(optimizers), every=every, sync=eager,
            closed=self._closed_step, urgent=self._publish,
        )
        # torch.distributed: sharded parameters (FSDP1, DTensors) are read as their local shards, and
        # each logged packet is reduced across ranks before its host copy
        self._dist = _distributed.context(ranks, layouts.root)
        collector.local = _distributed.local_reader(layouts.root, sum_partial=self._dist is not None)
        if self._dist is not None:
            collector.reduce = self._dist.reduce_packet
            collector.reduce_broken = self._dist.reduce_broken
            collector.readers.update(dict.fromkeys(_distributed.NumelReader.kinds, _distributed.NumelReader()))
        self._publisher = Publisher(
            collector.readers, order, history=self._history, tb=self._tb,
            diagnoser=_engine.Diagnoser(thresholds=thresholds), eager=eager,
            on_finding=on_finding, halt_on=halt_on, finish=collector.finish,
            check=functools.partial(collector.poll, wait=True),
            after_record=collector.after_record,
            share_halt=self._dist.share_halt if self._dist is not None else None,
        )

        # a script that never calls close() still gets its last steps published
        self._at_exit = functools.partial(publish_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

        self._optimizers = list(optimizers)
        self._taps = OptimizerTaps(
            optimizers, collector.pre, collector.post, lambda k: self._poll(), closure_result=lambda k, value: self._loss.closure_value(value, collector)
        )
        if self._replay is not None:
            self._replay.stepping = self._taps.updating  # not the steps a GradScaler skipped
            self._replay.logged = collector.is_logged_step
            self._replay.attach()
        self._hooks = HookSet()
        # each forward of the model notes its step (a loss observed after step()
        # belongs to the step of its forward); deferred GPU copies are checked there
        # too, the last moment to count NaN/Inf elements exactly (the gradients change
        # after it). On the model as called, outside any torch.compile'd region.
        self._deferred = not eager and any(_packet.defers(p.device) for p in layouts.root.parameters())
        self._hooks.add(on_root_forward(model, self._on_forward, pre=True, with_kwargs=True))
        if output is not None:  # (hooks go on last: a bad option raised before any)
            output.start(collector)
        self._activations.start()
        if not activations and not compiled:
            # forward order of modules from one probed forward (input side first)
            named = [(layouts.name(n), m) for n, m in layouts.root.named_modules()]
            self._hooks.add(order_probe(named, layouts.root, order.saw))

    # ------------------------------------------------------------------ public
    @property
    def findings(self) -> List[Finding]:
        """Every finding of the diagnosis engine so far (see :mod:`gradlens.diagnose`)."""
        if not self._closed:
            self._publisher.publish()
        return self._publisher.findings

    @property
    def steps_seen(self) -> int:
        """Number of optimizer steps (or :meth:`step` calls) seen, logged or not."""
        return self._collector.steps_seen

    def step(self) -> None:
        """Record the current ``.grad`` values as one step (monitors without an optimizer).

        With an optimizer, steps are recorded automatically right before
        ``optimizer.step()``; calling this as well raises ``RuntimeError``.
        """
        self._check_open("step")
        if self._optimizers:
            raise RuntimeError(
                "mon.step() is only for monitors without an optimizer; this monitor records "
                "automatically at each optimizer.step()"
            )
        self._collector.pre(-1)
        self._collector.post(-1)

    def observe_loss(self, loss: Union[Tensor, float]) -> None:
        """Give the monitor the loss of the current step (logged as ``gradlens/loss``).

        Stays on the device until the step's single host copy. Called several times
        per optimizer step (gradient accumulation), the mean is recorded. It may be
        called before or after ``optimizer.step()``: the loss goes to the step whose
        forward computed it (after ``step()`` it waits for the record of the step
        just closed; with ``on_finding``/``halt_on``, which publish each step at
        once, call it before ``step()``).
        """
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(f"observe_loss(loss=...) expects a scalar, got shape {tuple(loss.shape)}")
        elif not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise TypeError(f"observe_loss(loss=...) expects a tensor or float, got {type(loss).__name__}")
        if not self._closed:
            self._loss.route(loss, self._collector, self._publisher.queued)

    def dataframe(self, level: str = "param") -> Any:
        """The recorded history as a long-format pandas DataFrame.

        Args:
            level: ``"param"`` (default): one row per (step, parameter) with columns
                ``step, layer, param, grad_norm, grad_max, nonfinite, weight_norm,
                update_ratio, missing_grad, loss``. ``"layer"``: one row per
                (step, layer) with every per-layer statistic (activations included).
                ``"signals"``: one row per step with the model-output signals
                (``output_mean`` ... ``output_grad_nonfinite``, NaN where not
                measured) and ``loss``.

        Memory is bounded (``max_history``); older steps are thinned.
        """
        if level not in ("param", "layer", "signals"):
            raise ValueError(f"dataframe(level=...) expects 'param', 'layer' or 'signals', got {level!r}")
        self._flush_pending()
        return self._history.dataframe(level)

    def plot(self, **kwargs: Any) -> Any:
        """The gradient-flow figure of the history so far (a ``PIL.Image``; a
        notebook shows it as it is): layers from the input side against steps, log10
        colour scale, NaN/Inf marked, each finding boxed at its layer and steps.
        Keyword arguments go to :func:`gradlens.sinks.figure.flow_figure`
        (``title``, ``max_columns``, ``width``); ``gradlens report LOGDIR --plot
        FILE.png`` draws the same figure from event files."""
        from gradlens.sinks.figure import flow_figure

        return flow_figure(self.records(), self.findings, **kwargs)

    def records(self) -> List[StepRecord]:
        """The kept history as :class:`~gradlens._record.StepRecord` objects."""
        self._flush_pending()
        return self._history.records()

    def close(self) -> None:
        """Remove every hook from model and optimizers; flush and close what gradlens opened.

        Safe to call twice. Afterwards the model computes bit-identical results to a
        model that was never watched.
        """
        if self._closed:
            return
        try:
            self._flush_pending()
        finally:
            if self._dist is not None:  # the other ranks may still step: answer them until they close
                self._dist.leave()
            self._closed = True
            self._release()
            self._taps.remove()
            self._hooks.remove()
            for source in self._sources:
                source.close()
            if self._tb is not None:
                self._tb.close()
            _stats.release_cache()  # buffers of the batched statistics (rebuilt on demand)
            atexit.unregister(self._at_exit)
        if self._collector.logged == 0:
            how = ("no optimizer step ran" if self._optimizers
                   else "no optimizer was given and mon.step() was never called")
            warnings.warn(f"gradlens: {self!r} recorded no step: {how}", UserWarning, stacklevel=2)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Monitor({type(self.model).__name__}, every={self.every}, steps={self.steps_seen}, {state})"

    # ------------------------------------------------------------------ wiring
    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"mon.{what}() called after mon.close()")

    def _closed_step(self, step: int, pend: Optional[StepPacket]) -> None:
        if pend is not None:
            self._publisher.add(step, pend)
        if self._publisher.due():
            # the step that just closed waits (its loss may come after its step()),
            # unless a callback or a halt needs every step at once
            self._publisher.publish(wait=False, keep_last=pend is not None and not self._eager)

    def _on_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self._closed or compiling():
            return None
        if self._replay is not None:
            self._replay.capture(args, kwargs)
        self._loss.forward_step = self._collector.step
        if self._deferred:
            self._collector.poll(last_chance=True)

    def _publish(self) -> None:
        self._publisher.publish()

    def _poll(self, last_chance: bool = False) -> None:
        if not self._closed:
            self._collector.poll(last_chance=last_chance)

    def _flush_pending(self) -> None:
        """Publish every step seen so far (a multi-optimizer step whose other
        optimizers did not step yet included)."""
        if self._collector.open and not self._closed:
            self._collector.finish_step()
        self._publisher.publish()


def _replay_source(model: nn.Module, layouts: Layouts, option: Union[bool, str], eager: bool) -> Optional[Replay]:
    """The replay of broken steps (``monitor/replay.py``), or None: off, or a sharded
    model (FSDP, DTensor: its inner forward cannot run alone)."""
    if option is False or any(_distributed.is_sharded(p) for p in layouts.root.parameters()):
        return None
    inner = layouts.root
    while isinstance(inner, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = inner.module
    if type(inner).__name__ == "FullyShardedDataParallel":
        return None
    named = [(layouts.name(n), m) for n, m in layouts.root.named_modules()]
    # under torch.distributed the backward is not replayed (its hooks may communicate),
    # nor a forward that communicates (SyncBatchNorm: a rank whose batch holds the NaN
    # does not run it)
    single = _distributed.rank_world()[1] <= 1
    if not single and any(isinstance(m, nn.SyncBatchNorm) for _, m in named):
        return None
    return Replay(model, inner, [(n, m) for n, m in named if n], read_device=eager or option == "sync",
                  backward=single)


def watch(
    model: nn.Module,
    optimizer: Union[None, torch.optim.Optimizer, Sequence[torch.optim.Optimizer]] = None,
    *,
    logdir: Union[None, str, "os.PathLike[str]"] = None,
    writer: Any = None,
    every: int = 1,
    activations: Union[bool, int] = False,
    include: Union[None, str, Sequence[str]] = None,
    exclude: Union[None, str, Sequence[str]] = None,
    group_depth: Union[None, int, str] = None,
    update_every: int = 10,
    max_history: int = DEFAULT_MAX_HISTORY,
    param_scalars: Optional[bool] = None,
    flow_every: int = 50,
    histogram_every: int = 0,
    on_finding: Optional[Callable[[Finding], Any]] = None,
    halt_on: Iterable[str] = (),
    thresholds: Optional[Dict[str, Any]] = None,
    ranks: str = "zero",
    output_stats: Union[bool, int] = True,
    replay_nonfinite: Union[bool, str] = True,
    saturation: Union[bool, int] = True,
) -> Monitor:
    """Attach gradlens to ``model`` and record its gradient health at every optimizer step.

    Statistics are taken right before each ``optimizer.step()`` (a step pre-hook),
    so they see the gradients the optimizer uses (after DDP's all-reduce, after
    gradient accumulation, unscaled under ``GradScaler``; a step the GradScaler
    skips is still recorded, at the next ``optimizer.zero_grad()``). With
    ``optimizer.step(closure)`` (Lightning, LBFGS) they are taken when the closure's
    first evaluation returns, and what it returns is the step's loss unless
    :meth:`Monitor.observe_loss` gave one.

    Args:
        model: the ``nn.Module`` to watch; a ``torch.compile``'d, ``DataParallel``,
            ``DistributedDataParallel`` or ``FullyShardedDataParallel`` one works too,
            and names are those of the model inside (``0.weight``, not
            ``module.0.weight``), so runs with and without the wrapper line up.
        optimizer: an optimizer, a list of them (GAN: ``[opt_g, opt_d]``), or None:
            then call :meth:`Monitor.step` after each backward. Wrappers holding a
            torch optimizer as ``.optimizer`` (accelerate's ``AcceleratedOptimizer``,
            Lightning's ``LightningOptimizer``) are unwrapped.
        logdir: write TensorBoard events there (creates a ``SummaryWriter``).
        writer: or use your own ``SummaryWriter`` (not closed by gradlens).
        every: record every N-th step; unlogged steps cost nothing per parameter.
            A NaN born on an unlogged step is reported at the next logged step
            (it persists in weights, gradients and loss).
        activations: also trace forward statistics and the gradient flowing back
            into each layer's output (``act_*``, ``out_grad_norm``) and name the
            module where non-finite values first appear. ``True``: on every
            ``ACTIVATIONS_EVERY``-th (10th) logged step, the first one included;
            an int N: on every N-th logged step (``1``: all of them); ``False``/0:
            off. Tracing reads each traced output four times and its gradient once
            (on CPU: +20-30% on a step where it runs, see ``benchmarks/README.md``),
            hence its own cadence. A NaN/Inf on an untraced step still gets its
            origin: the next forward is probed for it.
        include, exclude: glob patterns on parameter/module names (``"encoder.*"``).
            Patterns that leave no parameter give a ``UserWarning`` listing the names.
        group_depth: aggregate per block: ``2`` reports ``encoder.layer.3`` as one
            row (numeric ModuleList indices stay with the name before them).
            ``"auto"``: the level of the model's repeated blocks (``transformer.h.0``
            for GPT-2, ``bert.encoder.layer.0`` for BERT, ``model.layers.0`` for
            Llama), which keeps a 100-block model at about 100 rows; recommended for
            transformers. Default None: every module keeps its own row.
        update_every: measure ``update_ratio`` on every N-th logged step (it copies
            the weights for the duration of one ``step()``); 0 turns it off.
        max_history: logged steps kept in memory for :meth:`Monitor.dataframe`;
            older ones are thinned.
        param_scalars: also write per-parameter TensorBoard scalars (``True``); by
            default only the per-layer ones are written (a 10-layer CNN: 61 tags
            instead of 181). ``mon.dataframe()`` always has per-parameter rows.
        flow_every: write the gradient-flow image every N logged steps (0: never).
        histogram_every: write gradient histograms every N logged steps (0: never).
            Under torch.distributed they are the writing rank's own tensors (under
            FSDP or tensor parallel: its local shards), not reduced across ranks.
        on_finding: called with each new :class:`~gradlens.Finding`, at the step
            where it is found.
        halt_on: finding kinds that raise :class:`~gradlens.TrainingHalted` from the
            ``optimizer.step()`` where they are found.
        thresholds: overrides of the diagnosis thresholds.
        ranks: under torch.distributed (DDP, FSDP1 ``use_orig_params=True``, FSDP2
            ``fully_shard``, tensor parallel; call ``watch`` on every rank, with the
            same options), who writes TensorBoard. ``"zero"`` (default): rank 0 writes ``logdir``, the
            other ranks write nothing (a ``writer=`` is used on rank 0 only).
            ``"all"``: every rank writes ``logdir/rank{r}``. Either way every rank
            records the same global statistics and finds the same findings: each
            logged step's packet is reduced across ranks before its host copy (one
            all-gather of a few floats per parameter, see
            :mod:`gradlens.monitor.distributed`), so shards give the norms of the
            whole parameter, under their original names, and the loss and activation statistics are
            those of the global batch (the mean loss, pooled sums and counts);
            ``halt_on`` stops all ranks at the same step. ``"local"``: no
            collective, each rank records its own values into ``logdir/rank{r}``.
            A rank that closes its monitor early waits in ``close()`` until every
            rank closed. In one process this option changes nothing.
        output_stats: record the model-output signals (``StepRecord.signals``,
            ``mon.dataframe("signals")``, TensorBoard ``gradlens/signals/...``):
            mean, std, min, max, saturated fraction and NaN/Inf count of the root
            module's output, and the norm and NaN/Inf count of dL/d(output), from
            one forward hook on the model and one tensor hook per recorded output.
            ``True`` (default): on every ``OUTPUT_EVERY``-th (5th) logged step, the
            first one included; an int N: every N-th logged step (``1``: all of
            them, ~3 points on the CPU MLP step of ``benchmarks/overhead.py``);
            ``False``/0: off. Which tensor and which forwards are recorded is
            documented in :mod:`gradlens.monitor.sources.output`.
        replay_nonfinite: name where a NaN/Inf is born at the step it is born, before
            the optimizer spreads it into every weight. A reference to the last
            forward's inputs is kept (and one to dL/d(output)); on a logged step whose
            gradients hold a NaN/Inf while the weights are still finite, that forward is
            run once more, right before the update, under ``no_grad`` with the RNG
            forked and every buffer replaced by a clone (BatchNorm statistics stay as
            they were), and each op's output is checked: the finding names the op
            (``aten.log``), its module, your source line and the op's input range
            ("replayed step 4"), or says that the NaN came with the data or from the
            loss. A NaN born in the backward only (``sqrt`` at 0) is found by replaying
            forward and backward (``torch.autograd.grad``: no ``.grad`` is touched).
            Parameters, buffers, the RNG state and the optimizer state are left
            bit-identical; but your forward runs once more, so side effects outside
            buffers (counters, in-place changes of the inputs, your own hooks) are
            repeated. CPU dropout draws the masks of the original forward (the CPU
            generator's state is kept at each forward); random ops on CUDA draw new
            numbers (a NaN that depends on one mask may not be reproduced there; the
            finding then says "fallback"). At most 4 replays per monitor, never on a
            step a GradScaler skipped; a failing replay is a warning, never an error.
            ``True`` (default): where the check is free: CPU, or CUDA when
            ``on_finding`` or ``halt_on`` already read every step at once; ``"sync"``:
            on CUDA too, at one host sync per logged step; ``False``: off (the finding
            then names where the NaN is first seen, as a fallback). Not for sharded
            (FSDP, DTensor) models; under torch.distributed only the forward is
            replayed.
        saturation: probe the saturation of the bounded activation modules
            (``nn.Tanh``, ``nn.Sigmoid``, ``nn.Hardtanh``/``ReLU6``,
            ``nn.Hardsigmoid``, ``nn.Softsign``), hidden ones included, for the
            ``saturation`` finding: on a probed step a forward hook on each of them
            counts its outputs near the limits (``act_sat_frac``; nothing else is
            measured, no gradient hook), armed only for that step's forward (the
            output layer's saturation comes from ``output_stats``, when on).
            ``True`` (default): every ``SATURATION_EVERY``-th (10th) logged step, the
            first one included; an int N: every N-th logged step; ``False``/0: off.
            Independent of ``activations`` (a step it traces measures saturation
            itself); a model without a bounded module gets no hook. Off for
            ``torch.compile``'d models.

    Statistics are computed at each logged step; turning them into records, writing
    them to TensorBoard and diagnosing them is done in batches of up to
    ``PUBLISH_BATCH`` (40) logged steps, or once the oldest waiting step is
    ``PUBLISH_SECONDS`` (1 s) old, which keeps that Python work cheap. So a finding's
    warning can come a few steps after the step it names. A step with a NaN/Inf,
    reading ``findings``, :meth:`Monitor.dataframe` or :meth:`Monitor.records`,
    :meth:`Monitor.close`, and a monitor given ``on_finding`` or ``halt_on``
    publish at once.

    Watching a model that an open monitor already watches gives a ``UserWarning``;
    the second monitor then records on its own (its own hooks, history and event
    files), and closing either leaves the other working. :meth:`Monitor.close`
    warns when the monitor recorded no step at all.

    Returns:
        A :class:`Monitor` (also a context manager).

    Example:
        >>> import torch, gradlens
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with gradlens.watch(model, opt) as mon:
        ...     model(torch.ones(2, 3)).sum().backward()
        ...     opt.step()
        >>> round(float(mon.dataframe().loc[0, "grad_norm"]), 4)  # ||dL/dW|| = ||(2, 2, 2)||
        3.4641
    """
    optimizers, options = _options.parse(
        model, optimizer, logdir=logdir, writer=writer, every=every, activations=activations,
        include=include, exclude=exclude, group_depth=group_depth, update_every=update_every,
        max_history=max_history, param_scalars=param_scalars, flow_every=flow_every,
        histogram_every=histogram_every, on_finding=on_finding, halt_on=halt_on, thresholds=thresholds,
        ranks=ranks, output_stats=output_stats, replay_nonfinite=replay_nonfinite, saturation=saturation,
    )
    return Monitor(model, optimizers, **options)
