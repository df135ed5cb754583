"""The one device packet of a logged step, and its host copy.

Sources write named slots into a :class:`Packet` (``put(kind, ref, tensor)``), on
the device, with no sync. :meth:`Packet.seal` concatenates each device's slots and
copies them to the host once:

* on CPU the copy is the tensor itself, read at once (a short list of floats, or a
  numpy array past ``LIST_MAX`` values);
* on CUDA it is a non-blocking copy into pinned memory with an event behind it,
  read when the step is published (:meth:`HostCopy.get`). A logged step then does
  not wait for the device; ``sync=True`` (a halt or a callback needs the values at
  once) reads it at the step, as on CPU.

A :class:`StepPacket` is one logged step on the host, from its first optimizer's
chunk to its record; :func:`unpack` sorts the host values of many steps into the
per-parameter arrays, handing each slot kind to the source that wrote it.

Under torch.distributed (:mod:`.distributed`) the packet is reduced across ranks
between its last slot and :meth:`Packet.seal`: :meth:`Packet.flat` puts every slot
into one tensor on the collective's device and :meth:`Packet.replace` swaps in the
reduced values, so the host copy that follows is the same as in one process. Each
slot's reduction comes from its kind, or from ``put(..., reduce=...)``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from gradlens._record import GRAD_STATS

__all__ = ["Packet", "HostCopy", "StepPacket", "unpack", "defers", "LIST_MAX"]

#: Host copies of up to this many values are kept as Python lists until published
#: (cheapest to make and check); longer ones as numpy arrays (8 bytes a value, not 32).
LIST_MAX = 1024

Slot = Tuple[str, Any, torch.device, int, int]  # kind, ref, device, start, size


def defers(device: torch.device) -> bool:
    """Whether a copy from ``device`` is left in flight (CUDA; tests may say CPU too)."""
    return device.type == "cuda"


class HostCopy:
    """The host side of one device's part of a packet, copied without blocking.

    :meth:`ready` says (without waiting) whether the copy arrived; :meth:`get`
    waits for it if needed and returns the values (list or numpy array). From a
    CUDA device it is a non-blocking copy into pinned memory followed by an event;
    from any other device, a copy taken at once (the same code path, synchronous).
    """

    __slots__ = ("_host", "_event", "_values")

    def __init__(self, flat: Tensor) -> None:
        self._event: Any = None
        if flat.is_cuda:
            self._host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            self._host.copy_(flat, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = flat.clone()
        self._values: Any = None

    def ready(self) -> bool:
        """Whether the values are on the host (never waits)."""
        return self._values is not None or self._event is None or self._event.query()

    def get(self) -> Any:
        """The values; waits for the copy the first time if it has not arrived."""
        if self._values is None:
            if self._event is not None:
                self._event.synchronize()
            self._values = _host_values(self._host)
            self._host = self._event = None
        return self._values


def _host_values(flat: Tensor) -> Any:
    return flat.tolist() if flat.numel() <= LIST_MAX else flat.numpy().copy()


def resolved(value: Any) -> Any:
    """A host chunk's values, waiting for a :class:`HostCopy` if it is one."""
    return value.get() if isinstance(value, HostCopy) else value


class Packet:
    """The device-side slots one optimizer's step writes, until :meth:`seal`."""

    __slots__ = ("slots", "reduce_ops", "deferred", "_by_device", "_sizes", "_tensors")

    def __init__(self) -> None:
        self.slots: List[Slot] = []
        self.reduce_ops: List[Optional[str]] = []  # per slot: its cross-rank reduction, if declared
        self.deferred = False  # whether seal() left a copy in flight
        self._by_device: Dict[torch.device, List[Tensor]] = {}
        self._sizes: Dict[torch.device, int] = {}
        self._tensors: List[Tensor] = []  # per slot, its 1-D values

    def put(self, kind: str, ref: Any, t: Tensor, *, reduce: Optional[str] = None, first: bool = False) -> None:
        """Add the values of ``t`` (detached, float32 or float64) as a slot of ``kind``;
        ``ref`` is the writer's own key for them (e.g. parameter indices).

        ``reduce``: how the values combine across ranks under torch.distributed
        (``"sum"``, ``"mean"``, ``"max"``, ``"min"``, ``"norm"``: sqrt of the mean of
        squares, for replicated norms; ``"norm_mean"``: sqrt of the sum of squares
        over the ranks, divided by the ranks); None: what :mod:`.distributed` knows of
        ``kind`` (``"mean"`` for a kind it does not know). ``first``: put the slot
        before the others (it is read first, see :func:`unpack`)."""
        flat = t if t.dim() == 1 else t.reshape(-1)
        dev, n = t.device, t.numel()
        on_dev = self._by_device.setdefault(dev, [])
        if first:  # in front: the slots of the same device move up by n
            self.slots = [(k, r, d, s + n if d == dev else s, m) for k, r, d, s, m in self.slots]
            at, start = 0, 0
            on_dev.insert(0, flat)
        else:
            at, start = len(self.slots), self._sizes.get(dev, 0)
            on_dev.append(flat)
        self._sizes[dev] = self._sizes.get(dev, 0) + n
        self.slots.insert(at, (kind, ref, dev, start, n))
        self.reduce_ops.insert(at, reduce)
        self._tensors.insert(at, flat)

    def flat(self, device: torch.device) -> Tensor:
        """Every slot's values, in slot order, as one float32 tensor on ``device``
        (the packet itself is unchanged)."""
        ts = [t if t.device == device and t.dtype == torch.float32 else t.to(device, torch.float32)
              for t in self._tensors]
        if not ts:
            return torch.zeros(0, device=device)
        return ts[0] if len(ts) == 1 else torch.cat(ts)

    def replace(self, flat: Tensor, device: torch.device) -> None:
        """Swap every slot's values for ``flat`` (as :meth:`flat` laid them out, e.g.
        reduced across ranks): one device, ``device``, holds them all from now on."""
        slots, start = [], 0
        for kind, ref, _, _, n in self.slots:
            slots.append((kind, ref, device, start, n))
            start += n
        self.slots = slots
        self._by_device, self._sizes = {device: [flat]}, {device: flat.numel()}
        self._tensors = [flat[s[3] : s[3] + s[4]] for s in slots]

    def seal(self, *, sync: bool) -> Dict[torch.device, Any]:
        """The one host copy per device: values now (CPU, or ``sync``), else a
        :class:`HostCopy` read when published."""
        host: Dict[torch.device, Any] = {}
        for dev, lst in self._by_device.items():
            flat = lst[0] if len(lst) == 1 else torch.cat(lst)
            if not sync and defers(dev):
                host[dev] = HostCopy(flat)
                self.deferred = True
            else:
                host[dev] = _host_values(flat.cpu())
        return host


class StepPacket:
    """One logged step on the host, from its first optimizer's chunk to its record."""

    __slots__ = (
        "layout", "chunks", "skipped", "broken", "checked", "traced", "act", "origin", "loss", "p", "dW",
        "present", "layer_rows", "grads", "late_loss", "loss_count", "signals", "site",
    )

    def __init__(self, layout: Any) -> None:
        self.layout = layout
        # (slots, host values per device, missing parameter indices) per optimizer
        self.chunks: List[Tuple[List[Slot], Dict[torch.device, Any], List[int]]] = []
        self.skipped = False  # a step the GradScaler skipped
        self.broken = False  # a non-finite value (published at once)
        self.checked = True  # its host values were checked for NaN/Inf (deferred copies: later)
        self.traced: Any = None  # activations traced at this step, until summarized
        self.act: Optional[Dict[str, Dict[str, float]]] = None
        self.origin: Optional[str] = None
        self.loss: Optional[float] = None
        self.p: Optional[np.ndarray] = None  # (params, GRAD_STATS)
        self.dW: Optional[np.ndarray] = None  # ||w_after - w_before|| per parameter
        self.present: Optional[np.ndarray] = None  # which entries of p were measured
        self.layer_rows: Optional[Tuple[np.ndarray, np.ndarray]] = None  # the history's layer arrays
        # per chunk, the gradients behind it with their versions, kept until the
        # host copy was checked (exact non-finite counts need them)
        self.grads: List[Any] = []
        self.late_loss: List[Tensor] = []  # losses observed after the step closed (device)
        self.loss_count = 0  # how many losses the loss slot averages
        self.signals: Optional[Dict[str, float]] = None  # model-output signals (sources/output.py)
        self.site: Optional[Dict[str, Any]] = None  # where a NaN/Inf was born (monitor/replay.py)

    def ready(self) -> bool:
        """Whether every host copy of the step has arrived (never waits)."""
        return all(not isinstance(h, HostCopy) or h.ready() for _, host, _ in self.chunks for h in host.values())

    def finite(self, hosts: Optional[Sequence[Dict[torch.device, Any]]] = None) -> bool:
        """Whether every host value (of ``hosts``, default: every chunk's) is finite;
        waits for deferred copies."""
        for host in hosts if hosts is not None else [host for _, host, _ in self.chunks]:
            for h in host.values():
                h = resolved(h)
                # a NaN/Inf anywhere makes the sum non-finite (overflow of finite
                # statistics only costs an exact count that comes back 0)
                if not math.isfinite(sum(h) if isinstance(h, list) else h.sum(dtype=np.float64)):
                    return False
        return True


def unpack(pends: Sequence[StepPacket], readers: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """Sort the host values of ``pends`` (steps with one layout) into arrays.

    Returns ``(p, dW)`` shaped (steps, params, GRAD_STATS) and (steps, params);
    each step packet's ``p``/``dW`` become views of its row. Steps whose host copies
    have the same structure (usually all of them) are sorted with one numpy op per
    statistic; the slots of each kind go to ``readers[kind].read(slots, rows, p, dw,
    pends, members)`` (the interface of :class:`gradlens.monitor.sources.base.Source`).
    """
    n = len(pends[0].layout.names)
    p = np.full((len(pends), n, len(GRAD_STATS)), np.nan)
    dw = np.full((len(pends), n), np.nan)  # ||w_after - w_before||
    groups: Dict[Any, List[int]] = {}
    for b, pend in enumerate(pends):
        if pend.p is not None:  # sorted before (a step with a NaN/Inf), then maybe more chunks
            p[b], dw[b] = pend.p, pend.dW
        if pend.chunks:
            key = tuple(
                (tuple((kind, id(ref), dev, start, size) for kind, ref, dev, start, size in slots), tuple(missing))
                for slots, _, missing in pend.chunks
            )
            groups.setdefault(key, []).append(b)
    miss_col = GRAD_STATS.index("missing_grad")
    for members in groups.values():
        rows = np.array(members)
        for c, (slots, lists, missing) in enumerate(pends[members[0]].chunks):
            # (steps, values) per device; a slot's values are its columns
            host = {
                dev: np.array([resolved(pends[b].chunks[c][1][dev]) for b in members], dtype=np.float64)
                for dev in lists
            }
            by_kind: Dict[str, List[Tuple[Any, np.ndarray]]] = {}
            for kind, ref, dev, start, size in slots:
                by_kind.setdefault(kind, []).append((ref, host[dev][:, start : start + size].T))
            for kind, kind_slots in by_kind.items():
                readers[kind].read(kind_slots, rows, p, dw, pends, members)
            if missing:
                p[rows[:, None], np.asarray(missing), miss_col] = 1.0
    for b, pend in enumerate(pends):
        pend.p, pend.dW, pend.chunks = p[b], dw[b], []
    return p, dw
