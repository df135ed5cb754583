"""Model-output signals: statistics of the root module's output and of dL/d(output).

On by default, on every :data:`OUTPUT_EVERY`-th (5th) logged step, the first one
included (``watch(output_stats=N)``: every N-th logged step, ``1``: all of them;
``False``: off). Device side: one forward hook on the model as called and, on each
recorded forward whose output requires grad, one tensor hook on that output. The
forward hook is on only while a recorded step runs (armed at the end of the step
before it), so other steps run no gradlens code at all. Host side: ``StepRecord.signals`` (:data:`SIGNAL_STATS`).

What is recorded:

* **which tensor**: a tensor output itself; a dict (an HF ``ModelOutput``
  included) its ``"logits"`` value, else its first floating tensor value that is
  not ``"loss"``; a tuple/list its first floating tensor (depth first). Only that
  tensor is measured.
* **which forwards**: every forward of the root that runs with grad mode on,
  between the previous step and the gradients being final (this step's optimizer
  pre-hook), pooled as one output: gradient accumulation's micro-batches all
  count (weighted by their element counts). Forwards after the pre-hook (the
  further closure evaluations of LBFGS inside ``step()``) are not recorded: the
  signals belong to the forward whose gradients the step's statistics show (for
  ``step(closure)``: the closure's first evaluation). Forwards under
  ``torch.no_grad()``/``inference_mode`` (evaluation) are never recorded. A forward
  whose output does not require grad (a frozen model) has its output statistics
  and no ``output_grad_*``. Under ``torch.compile`` tracing the hook does nothing
  (``compiling()``); a compiled model watched as such is hooked outside its graph.
* **saturation** (``output_sat_frac``): the fraction of output elements within
  ``SAT_BAND`` (1%) of the range from a limit of a bounded output layer, decided
  from the output's autograd node, looking through views and slices:
  ``SigmoidBackward0``/``HardsigmoidBackward0`` (0, 1), ``TanhBackward0`` (-1, 1),
  ``HardtanhBackward0`` (its min/max, ReLU6 included), ``SoftmaxBackward0`` (0, 1)
  with the band divided by the number of classes K (a healthy K-way softmax sits
  near 1/K, which the plain band would call saturated once K > 100). Without an
  autograd node (an output that does not require grad), or with the node of a
  ``torch.compile``'d graph, the model's last registered module decides
  (``nn.Sigmoid``, ``nn.Tanh``, ...). Any other output: NaN.
* **pushed past a limit** (``output_push_frac``): the fraction of output elements
  that sit at a limit of the output activation while dL/d(output) pushes them past it
  (a gradient step would move them where the activation cannot go): within the
  saturation band of a bounded output's limit with the gradient pointing outward, or,
  for a ReLU output (``ReluBackward0``, lower limit 0, no band), at 0 with a positive
  gradient (the loss wants the output negative: for MSE, L1 or Huber only a negative
  target does that). NaN for any other output. Measured in the output-gradient hook
  from a mask kept from the forward (one op there, three in the backward).
* **softmax sum push** (``output_sum_push``): for a softmax output, the mean of
  dL/d(output) over its elements over their root mean square, ``mean(g) / rms(g)``
  (in [-1, 1]). A softmax's rows sum to 1, so it cannot follow the part of the
  gradient along the all-ones direction (its Jacobian maps that direction to 0):
  0 for MSE on one-hot targets, negative when the targets' rows sum to more than 1
  (multi-label targets), ``-1/sqrt(K)`` for NLL on ``log(p)`` over K classes at any
  point, and positive for Keras-style cross-entropy on ``p / sum(p)`` once it learns
  (scale-invariant: its gradient is orthogonal to ``p``, not to the ones). One op (a
  sum) in the output-gradient hook. NaN for any other output.
* **non-finite counts** count NaN and Inf elements together (like ``nonfinite``).
  ``output_grad_norm`` is accumulated in float64, so a norm of finite elements
  past float32's range shows as Inf with ``output_grad_nonfinite`` 0.
* **mean and std**: per forward the mean and the variance (``torch.var_mean`` for
  small CPU outputs, else two passes: no cancellation either way); pooled over
  forwards as the weighted mean of the variances plus the spread of the means; std
  with Bessel's correction over the pooled element count.

Under torch.distributed the values are reduced across ranks with the reduction
each one needs: counts (``output_nonfinite``, ``output_grad_nonfinite``, the
element count) as sums, min/max as min/max (exact); mean, variance, squared mean
and saturated fraction as the mean over ranks, which
is the global value only when every rank has the same batch size (so are the std,
which adds the spread of the ranks' means, and the saturated fraction);
``output_grad_norm`` as ``sqrt(sum of squares) / ranks``, the norm of the gradient
of the ranks' mean loss (DDP's convention), exact. In one process, where nothing is
reduced, each direction is one packet slot (fewer ops on the hot path).

Cost (CPU, one thread): a recorded step adds ~15 us per small op inside a training
step (cold caches), ~3 points of the MLP step of ``benchmarks/overhead.py``; hence
the default cadence. Figures in ``benchmarks/README.md``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from gradlens.monitor import stats as _stats
from gradlens.monitor.attach import compiling
from gradlens.monitor.packet import Packet, StepPacket
from gradlens.monitor.sources._tracer import SCRATCH_MAX_NUMEL, sat_limits
from gradlens.monitor.stats import near_limits
from gradlens.monitor.sources.base import Cycle, Source, Work

__all__ = ["OutputSignals", "output_tensor", "output_limits", "OUTPUT_EVERY"]

#: autograd nodes of a ReLU output: lower limit 0, no upper one (only ``output_push_frac``)
_RELU_NODES = frozenset(("ReluBackward0",))

#: ``watch(output_stats=True)`` records the signals on every this many logged steps
#: (the first included; an int picks another cadence, 1: every logged step). Measured
#: on every logged step they add ~3 points to the CPU MLP step of
#: ``benchmarks/overhead.py`` (~15 us per small op inside a training step; see
#: ``benchmarks/README.md``); every 5th keeps the default within 1 point.
OUTPUT_EVERY = 5

# Autograd nodes of bounded outputs -> their limits (Softmax: "softmax").
_BOUNDED_NODES: Dict[str, Any] = {
    "SigmoidBackward0": (0.0, 1.0),
    "HardsigmoidBackward0": (0.0, 1.0),
    "TanhBackward0": (-1.0, 1.0),
    "SoftmaxBackward0": "softmax",
    "HardtanhBackward0": "hardtanh",
}
# Nodes that only move, view or select elements: looked through (a few at most).
_VIEW_NODES = frozenset((
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "SqueezeBackward0", "SqueezeBackward1",
    "SqueezeBackward2", "UnsqueezeBackward0", "SliceBackward0", "SelectBackward0", "TransposeBackward0",
    "PermuteBackward0", "CloneBackward0", "ExpandBackward0", "TBackward0",
))
_MAX_HOPS = 4

# Slot refs (stable objects: the packet's structure key uses their identity). Per
# forward the device vector is (mean, [sat_frac,] var, nonfinite, count, min, max), var
# the population variance; per backward (||g||, nonfinite). In one
# process each is one slot (_FWD/_FWD_SAT, _GRAD; with several forwards _MSQ, the
# weighted mean of the forwards' squared means, too); under torch.distributed they are
# split into slots by their cross-rank reduction.
_FWD, _FWD_SAT, _GRAD = "forward", "forward_sat", "grad"
# per backward into an output with a limit: (||g||, nonfinite, pushed element count[, sum of g
# for a softmax]) in one slot; under torch.distributed the last ones in their own
_GRAD_PUSH, _GRAD_SOFTMAX, _PUSH_N, _PUSH_SUM = "grad_push", "grad_softmax", "push_count", "push_sum"
_MEANS, _MEANS_SAT, _MSQ, _SUMS, _MIN, _MAX, _GNORM, _GNF = (
    "means", "means_sat", "msq", "sums", "min", "max", "grad_norm", "grad_nonfinite")
#: outputs up to this many elements get fresh temporaries (cheaper than the scratch
#: buffer's view); larger ones reuse the scratch buffer (page faults otherwise)
_SCRATCH_MIN_NUMEL = 1 << 16

# float32 resolution: a between-forward (or between-rank) variance term
# E[m^2] - E[m]^2 smaller than this many units of E[m^2]'s last place is rounding.
_ULPS = 4 * 2.0 ** -23


def output_tensor(output: Any) -> Optional[Tensor]:
    """The tensor of a model's output that the signals measure (see the module doc)."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, dict):
        logits = output.get("logits")
        if isinstance(logits, Tensor) and logits.is_floating_point():
            return logits
        for key, value in output.items():
            if key != "loss":
                t = output_tensor(value)
                if t is not None:
                    return t
        return None
    if isinstance(output, (list, tuple)):
        for value in output:
            t = output_tensor(value)
            if t is not None:
                return t
    return None


def _signed(dim: int) -> int:
    # autograd exposes a saved int64 dim as unsigned (-1 reads as 2**64 - 1)
    return dim - 2**64 if dim >= 2**63 else dim


def _source_node(node: Any) -> Any:
    """The autograd node that made an output, looking through a few view/select nodes."""
    for _ in range(_MAX_HOPS):
        if type(node).__name__ not in _VIEW_NODES:
            return node
        nxt = node.next_functions
        if not nxt or nxt[0][0] is None:
            return None
        node = nxt[0][0]
    return node


def _push_mask(x: Tensor, node: Any) -> Optional[Tuple[Tensor, bool]]:
    """What the output-gradient hook needs for ``output_push_frac`` of an output without
    saturation limits: ``(mask, True)`` for a ReLU output, ``mask`` being ``x <= 0`` (pushed
    where ``g > 0`` too); None for other outputs.

    (A bounded output's mask comes from :func:`_forward_stats`: ``x - mid`` where ``x`` is
    within the band of a limit, 0 elsewhere, so that ``mask * g < 0`` marks an element
    pushed outward.) ``node``: the output's source node (:func:`_source_node`), or None."""
    if node is not None and type(node).__name__ in _RELU_NODES:
        return torch.le(x, 0), True
    return None


def _banded(limits: Optional[Tuple[float, float]]) -> Optional[Tuple[float, float, float]]:
    """``(lo, hi, band)`` with the plain saturation band of ``limits`` (None stays None)."""
    if limits is None:
        return None
    lo, hi = limits
    return lo, hi, _stats.SAT_BAND * (hi - lo)


def output_limits(out: Tensor, fallback: Optional[Tuple[float, float]] = None) -> Optional[Tuple[float, float, float]]:
    """``(lo, hi, band)`` of a bounded output (``band``: the saturation band in
    output units), from its autograd node; ``fallback`` limits (the last module's)
    for an output without one; None for an unbounded output."""
    node = out.grad_fn
    if node is None:
        return _banded(fallback)
    return _node_limits(_source_node(node), fallback)


def _node_limits(node: Any, fallback: Optional[Tuple[float, float]]) -> Optional[Tuple[float, float, float]]:
    """:func:`output_limits` of an output that has an autograd node, from its source node
    (:func:`_source_node`; None: the walk ended on a leaf, unbounded)."""
    if node is None:
        return None
    kind = _BOUNDED_NODES.get(type(node).__name__)
    if kind is None:  # (a torch.compile'd graph: the last module's limits)
        return _banded(fallback) if "CompiledFunction" in type(node).__name__ else None
    if kind == "softmax":
        result = node._saved_result
        k = result.shape[_signed(node._saved_dim)] if result.dim() else 1
        return 0.0, 1.0, _stats.SAT_BAND / max(k, 1)
    if kind == "hardtanh":
        return _banded((float(node._saved_min_val), float(node._saved_max_val)))
    return _banded(kind)


def _forward_stats(
    x: Tensor, limits: Optional[Tuple[float, float, float]], count: Tensor, zero: Tensor,
    buf: Optional[Tensor] = None, keep: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """(mean, [sat_frac,] var, nonfinite, count, min, max) of ``x``, float32, on its
    device (``var``: the population variance), and, with ``keep`` and ``limits``, the
    push mask of a bounded output (:func:`_push_mask`, from the same ops as the saturated
    fraction), else None. ``count`` and ``zero``: cached 0-d float32 tensors on ``x``'s
    device (its element count, 0). ``buf``: an optional float32 scratch buffer shaped
    like ``x``.

    Small CPU outputs (below ``_SCRATCH_MIN_NUMEL`` elements) take ``torch.var_mean``,
    one op: in a training step every small op costs ~15 us (cold caches; measured in
    the MLP of ``benchmarks/overhead.py``), so the op count is the cost there. Larger
    outputs and other devices take the mean and the mean of squared deviations (two
    passes, no cancellation): ``torch.var_mean`` is 8x slower on 1M CPU elements
    (8.6 vs 1.1 ms, torch 2.13) and its mean of an output holding +-inf is NaN, which
    the small path corrects on its (rare, host-checked) non-finite branch.
    """
    xf = x if x.dtype == torch.float32 else x.float()
    n = xf.numel()
    cpu = x.device.type == "cpu"
    if cpu and n < _SCRATCH_MIN_NUMEL:
        var, mean = torch.var_mean(xf, correction=0)
    else:
        if buf is None:
            buf = torch.empty_like(xf)
        mean = xf.mean()
        flat = torch.sub(xf, mean, out=buf).view(-1)
        var = torch.dot(flat, flat).div_(n)
    lo_x, hi_x = torch.aminmax(xf)
    # NaN/Inf elements make the mean non-finite; on CPU that is a host value (no
    # sync), so the exact count runs only then (elsewhere always: no branch on the device)
    if cpu and math.isfinite(float(mean)):
        nf = zero
    else:
        nf = _stats.nonfinite_count(xf, mean)
        if cpu:
            mean = xf.mean()  # (var_mean's mean of +-inf is NaN; the plain mean is +-inf)
    if limits is None:
        return torch.stack([mean, var, nf, count, lo_x, hi_x]), None
    lo, hi, band = limits
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    # saturated: within `band` of either limit, i.e. |x - mid| > half - band
    if keep:  # the push mask (see _push_mask) outlives the step's forward: a fresh tensor
        d = torch.sub(xf, mid)
        at = torch.gt(d.abs(), half - band)
        sat = at.mean(dtype=torch.float32)
        return torch.stack([mean, sat, var, nf, count, lo_x, hi_x]), d.mul_(at)
    sat = near_limits(xf, lo, hi, band, buf if buf is not None else torch.empty_like(xf)).mean()
    return torch.stack([mean, sat, var, nf, count, lo_x, hi_x]), None


class OutputSignals(Source):
    """The root's output and dL/d(output) on logged steps (``StepRecord.signals``).

    Args:
        model: the module as called (hooked outside any compiled region).
        last_module: the model's last registered module; its limits decide the
            saturation of an output without an autograd node.
        every: record on every this many logged steps (the first one included).

    The forward hook goes on at :meth:`start`, given the step cycle.
    """

    kinds = ("signal",)

    def __init__(self, model: nn.Module, last_module: Optional[nn.Module] = None, every: int = OUTPUT_EVERY) -> None:
        self._model = model
        self._every = every
        self._cycle: Any = None
        self._fallback = sat_limits(last_module) if last_module is not None else None
        self._handle: Any = None  # the forward hook, while armed
        self._fwd: List[Tensor] = []  # per recorded forward of the step, its device vector
        self._n: List[int] = []  # ... and its element count
        self._bounded: Optional[bool] = None  # the step's forwards' boundedness (the first one's)
        self._grads: List[Tensor] = []  # per backward into a recorded output: (||g||, nonfinite)
        self._open = True  # forwards still belong to the step (until its pre-hook)
        self._consts: Dict[Tuple[int, torch.device], Tuple[Tensor, Tensor]] = {}  # (count, 0) on a device
        self._buffers: Dict[torch.device, Tensor] = {}  # scratch for the statistics' temporaries

    def start(self, cycle: Cycle) -> None:
        """Hook the model's forward; ``cycle`` says which step is collected (its
        ``step``, ``every`` and ``logged``)."""
        self._cycle = cycle
        self._arm(self._due(cycle))

    def _due(self, cycle: Any) -> bool:
        # a logged step, on the signals' cadence among logged steps (cycle.logged:
        # the upcoming record's index among logged ones)
        return cycle.is_logged_step() and cycle.logged % self._every == 0

    def _arm(self, on: bool) -> None:
        """The forward hook is on only while a recorded step runs (other forwards run
        no gradlens code at all). First among the model's forward hooks, every time:
        it sees the output the model's own forward returned, and re-arming does not
        move it behind hooks the user added meanwhile."""
        if on and self._handle is None:
            self._handle = self._model.register_forward_hook(self._on_output, prepend=True)
        elif not on and self._handle is not None:
            self._handle.remove()
            self._handle = None

    # -- device side ------------------------------------------------------------
    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        # (compiling() first: under torch.compile tracing nothing else may be read,
        # or the graph would guard on this source's state and recompile)
        # (armed only for a recorded step: step_done decided, and the cycle's step and
        # logged count change only when the next step_done runs)
        if compiling() or not self._open or not torch.is_grad_enabled():
            return
        out = output_tensor(output)
        if out is None or out.numel() == 0:
            return
        # (the output's source node, walked once: its limits, a ReLU's push mask, softmax)
        grad_fn = out.grad_fn
        node = _source_node(grad_fn) if grad_fn is not None else None
        limits = _banded(self._fallback) if grad_fn is None else _node_limits(node, self._fallback)
        if self._bounded is None:
            self._bounded = limits is not None
        elif self._bounded != (limits is not None):
            # the step's forwards disagree (rare): the first one's layout holds; an
            # unbounded forward of a bounded step adds no saturated element
            limits = (0.0, 0.0, -math.inf) if self._bounded else None
        n = out.numel()
        consts = self._constants(n, out.device)
        with torch.no_grad():
            x = out.detach()
            vec, mask = _forward_stats(x, limits, consts[0], consts[1], self._scratch(out), keep=out.requires_grad)
            self._fwd.append(vec)
            push = None
            if mask is not None:
                push = (mask, False)
            elif out.requires_grad and limits is None:
                push = _push_mask(x, node)
        self._n.append(n)
        if out.requires_grad:
            grads = self._grads
            softmax = push is not None and type(node).__name__ == "SoftmaxBackward0"
            out.register_hook(lambda g: self._on_grad(g, grads, push, softmax))

    def _on_grad(self, grad: Tensor, grads: List[Tensor], push: Optional[Tuple[Tensor, bool]] = None,
                 softmax: bool = False) -> None:
        if compiling() or grads is not self._grads:
            return  # a backward after its step closed (or the source was closed)
        with torch.no_grad():
            g = grad.detach()
            norm = torch.linalg.vector_norm(g, dtype=torch.float64).float()
            if g.device.type == "cpu" and math.isfinite(float(norm)):
                nf = self._constants(1, g.device)[1]
            else:  # (an overflowed norm over finite elements counts 0 here)
                nf = _stats.nonfinite_count(g, norm)
            if push is None:
                grads.append(torch.stack([norm, nf]))
            else:
                mask, relu = push
                # pushed: a ReLU output at 0 whose gradient is positive (descent wants it negative);
                # a bounded one within the band of a limit whose gradient points outward
                if relu:
                    count = torch.gt(g, 0).logical_and_(mask).sum(dtype=torch.float32)
                else:
                    count = torch.mul(mask, g).lt_(0).sum(dtype=torch.float32)
                # (one stack, one slot; never a NaN placeholder: a NaN in the packet makes the
                # host check the step as broken, ~1 ms)
                if softmax:
                    grads.append(torch.stack([norm, nf, count, g.sum(dtype=torch.float32)]))
                else:
                    grads.append(torch.stack([norm, nf, count]))

    def _scratch(self, x: Tensor) -> Optional[Tensor]:
        # one reusable float32 buffer per device for the temporaries of large outputs
        # (a fresh output-sized allocation costs page faults on CPU), up to SCRATCH_MAX_NUMEL
        n = x.numel()
        if n < _SCRATCH_MIN_NUMEL or n > SCRATCH_MAX_NUMEL:
            return None
        buf = self._buffers.get(x.device)
        if buf is None or buf.numel() < n:
            buf = self._buffers[x.device] = torch.empty(n, dtype=torch.float32, device=x.device)
        return buf[:n].view(x.shape)

    def _constants(self, n: int, device: torch.device) -> Tuple[Tensor, Tensor]:
        """(n, 0) as cached 0-d float32 tensors on ``device``."""
        consts = self._consts.get((n, device))
        if consts is None:
            if len(self._consts) > 32:  # varying batch sizes: keep a few
                self._consts.clear()
            consts = self._consts[(n, device)] = (
                torch.full((), float(n), device=device), torch.zeros((), device=device))
        return consts

    def before_update(self, cycle: Cycle, work: Work) -> None:
        self._open = False  # the gradients are final: later forwards are not this step's

    def after_update(self, cycle: Cycle, work: Work, pend: StepPacket, packet: Packet, skipped: bool) -> None:
        if not self._fwd and not self._grads:
            return  # (or a later optimizer's chunk of the step: written once, by the first)
        fwd, ns, grads = self._fwd, self._n, self._grads
        self._fwd, self._n, self._grads = [], [], []
        split = getattr(cycle, "reduce", None) is not None  # torch.distributed: per-value reductions
        if fwd:
            bounded = bool(self._bounded)
            k = 3 if bounded else 2  # the means: mean[, sat], var
            msq: Optional[Tensor] = None
            if len(fwd) == 1:
                v = fwd[0]
                if split:
                    msq = v[:1] * v[:1]
            else:  # several forwards: means weighted by element counts, counts summed, min/max
                stacked = torch.stack(fwd)
                w = torch.tensor([n / sum(ns) for n in ns], device=stacked.device).unsqueeze(1)
                means = stacked[:, :k]
                v = torch.cat([(means * w).sum(0), stacked[:, k : k + 2].sum(0),
                               stacked[:, k + 2].amin().reshape(1), stacked[:, k + 3].amax().reshape(1)])
                msq = (means[:, :1].square() * w).sum(0)
            if not split:  # one process: nothing is reduced, one slot
                packet.put("signal", _FWD_SAT if bounded else _FWD, v)
                if msq is not None:
                    packet.put("signal", _MSQ, msq)
            else:
                packet.put("signal", _MEANS_SAT if bounded else _MEANS, v[:k], reduce="mean")
                packet.put("signal", _MSQ, msq, reduce="mean")
                packet.put("signal", _SUMS, v[k : k + 2], reduce="sum")  # non-finite count, element count
                packet.put("signal", _MIN, v[k + 2 : k + 3], reduce="min")
                packet.put("signal", _MAX, v[k + 3 : k + 4], reduce="max")
        if grads:
            # per backward (||g||, nonfinite[, pushed count, sum of g]); backwards that disagree
            # (rare: a forward with a limit and one without) keep the common part only
            if len({t.numel() for t in grads}) > 1:
                k = min(t.numel() for t in grads)
                grads = [t[:k] for t in grads]
            g = grads[0] if len(grads) == 1 else torch.stack(grads)
            if g.dim() == 2:  # several backwards: one norm over all, counts (and sums) added
                g = torch.cat([g[:, 0].double().square().sum().sqrt().float().reshape(1), g[:, 1:].sum(0)])
            if not split:
                packet.put("signal", (_GRAD, _GRAD_PUSH, _GRAD_SOFTMAX)[g.numel() - 2], g)
            else:
                packet.put("signal", _GNORM, g[:1], reduce="norm_mean")
                packet.put("signal", _GNF, g[1:2], reduce="sum")
                if g.numel() > 2:
                    packet.put("signal", _PUSH_N, g[2:3], reduce="sum")
                if g.numel() > 3:  # the sum of g as a mean over ranks: over the norm_mean norm, global
                    packet.put("signal", _PUSH_SUM, g[3:], reduce="mean")

    def step_done(self, cycle: Cycle) -> None:
        self._fwd, self._n, self._grads = [], [], []
        self._bounded = None
        self._open = True
        if self._cycle is not None:
            self._arm(self._due(cycle))

    # -- host side --------------------------------------------------------------
    def read(
        self, slots: List[Tuple[Any, np.ndarray]], rows: np.ndarray, p: np.ndarray, dw: np.ndarray,
        pends: Sequence[StepPacket], members: List[int],
    ) -> None:
        by_ref = {ref: vals for ref, vals in slots}
        for j, b in enumerate(members):
            pends[b].signals = _signals({ref: vals[:, j].tolist() for ref, vals in by_ref.items()})

    def close(self) -> None:
        self._cycle = None
        self._arm(False)
        self._grads = []  # tensor hooks still on live graphs see a list that is not theirs
        self._fwd, self._n, self._consts, self._buffers = [], [], {}, {}


def _signals(v: Dict[str, List[float]]) -> Dict[str, float]:
    """``StepRecord.signals`` from one step's host values, by slot ref."""
    out: Dict[str, float] = {}
    fwd = v.get(_FWD_SAT) or v.get(_FWD)
    if fwd is not None:
        k = 3 if _FWD_SAT in v else 2
        means, (nonfinite, n, lo, hi) = fwd[:k], fwd[k:]
    elif _SUMS in v:
        means = v.get(_MEANS_SAT) or v[_MEANS]
        (nonfinite, n), lo, hi = v[_SUMS], v[_MIN][0], v[_MAX][0]
    if fwd is not None or _SUMS in v:
        mean, var = means[0], means[-1]
        # pooled variance: E[var] + (E[m^2] - E[m]^2), the spread of the forwards' (or
        # ranks') means (0 for one forward in one process); below float32 resolution
        # that term is rounding of the reductions, not variance
        between = 0.0
        if _MSQ in v:
            msq = v[_MSQ][0]
            between = msq - float(np.float32(mean * mean))
            if abs(between) <= _ULPS * abs(msq):
                between = 0.0
        pop = var + between
        if math.isfinite(pop):
            std = math.sqrt(max(pop, 0.0) * n / (n - 1)) if n > 1 else math.nan
        else:
            std = math.inf if pop > 0 else math.nan
        # (std rounded to float32 like every other value: TensorBoard stores float32,
        # so ``gradlens report`` rebuilds the very same signals)
        out["output_mean"], out["output_std"] = mean, float(np.float32(std))
        out["output_min"], out["output_max"] = lo, hi
        out["output_sat_frac"] = means[1] if len(means) > 2 else math.nan
        out["output_nonfinite"] = nonfinite
    grad = v.get(_GRAD) or v.get(_GRAD_PUSH) or v.get(_GRAD_SOFTMAX)
    if grad is None and _GNORM in v:
        grad = [v[_GNORM][0], v[_GNF][0]]
    if grad is not None:
        out["output_grad_norm"], out["output_grad_nonfinite"] = grad[0], grad[1]
        push = None  # (pushed count, sum of g or NaN)
        if len(grad) > 2:
            push = [grad[2], grad[3] if len(grad) > 3 else math.nan]
        elif _PUSH_N in v:
            push = [v[_PUSH_N][0], v[_PUSH_SUM][0] if _PUSH_SUM in v else math.nan]
        frac = offset = math.nan
        if push is not None and (fwd is not None or _SUMS in v):
            count, total = push
            frac = count / n if n > 0 else math.nan
            # mean(g) / rms(g) = sum(g) / (||g|| sqrt(n)); NaN without a gradient or a softmax
            offset = total / (grad[0] * math.sqrt(n)) if n > 0 and grad[0] > 0 and math.isfinite(grad[0]) else math.nan
        out["output_push_frac"] = float(np.float32(frac))
        out["output_sum_push"] = float(np.float32(offset))
    return out
