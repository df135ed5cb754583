"""torch.distributed: one truth across ranks, one writer, halts that never hang.

Under DDP, FSDP1 (``FullyShardedDataParallel(use_orig_params=True)``), FSDP2
(``fully_shard``) or tensor parallelism every rank watches its own copy of the
model. What a rank measures is either replicated (DDP's all-reduced gradients, the
weights of a replicated parameter), a shard (the local part of a DTensor parameter
or gradient: FSDP2, ``parallelize_module``; FSDP1's original parameters, which
outside forward and backward are 1-D views of their part of the rank's flat shard,
empty on a rank that holds none of it) or local to the rank (its loss, its
activations). :class:`Distributed` turns each logged step's device packet into the
same global values on every rank, so every rank builds the same records and the
diagnosis finds the same findings.

**The reduction.** The packet's flat tensor is all-gathered and reduced on its
device, element by element, with the operation each value needs (:data:`SUM`,
:data:`NORM`, :data:`MAX`, ...). An all-reduce applies one operation to the whole
tensor; a packet mixes sums, maxima, minima and means, so one all-gather replaces
the two or three all-reduces that would take. Shard norms combine as ``sqrt(sum of
squares / copies)`` (no ``full_tensor()``, no collective per parameter), max|g| as
the max, loss as the mean, activation sums and counts as sums. The one exception:
a gradient with a ``Partial`` placement (``SequenceParallel``'s LayerNorm weights)
holds parts of a sum on each rank, so it is all-reduced to ``Replicate`` when read
(one collective per such gradient per logged step; see :func:`local_tensors`; with
``ranks="local"`` it stays the rank's part, and no collective is made).

**One collective per logged step** (per optimizer of the step), on gloo. Every
collective gradlens makes is a *round* that every rank enters, with a header per
rank: whether it still watches, the round's phase, the size and checksum of its
packet's layout, a halt code. The header rides in front of the data, as exact
float32 values, in one ``all_gather_into_tensor`` of ``header + data padded to the
capacity``. The capacity is the largest packet the ranks agreed on so far; every
rank derives it from the same gathered headers, so every rank always sends the same
size, and nothing ever enters a gather with a size the others do not expect:

* the first logged step (capacity 0) gathers the headers alone, then the data at
  the agreed size (2 collectives); so does a packet larger than any before (an
  unfrozen parameter, the first activation-tracing step when it is not step 0);
* every other logged step: 1 collective, smaller packets (the steps between
  activation-tracing ones) padded to the capacity, which never shrinks;
* ranks whose packets disagree (a data-dependent model traced different modules)
  see it in the headers and keep their own values for that step, with a warning,
  in the same single round, instead of reducing mismatched numbers.

With NCCL the data lives on the GPU, and reading a header there would make the host
wait for the device at every logged step. There the header goes first through a
small gloo all-gather on the host, and the data (NCCL) follows only when the
layouts agree: 2 collectives per logged step, no host sync, so the packet's host
copy stays non-blocking.

**Leaving.** A rank that closes its monitor early (ranks ran different numbers of
steps) keeps entering rounds as "not watching" from :meth:`Distributed.leave`, with
zeros for data and the same capacity rule, until every rank has closed, so neither
``close()`` nor the others' steps hang; the ranks still watching leave its rows out
(a replicated value's copies are then the ranks left).

**Halts** (``halt_on``): one more round per diagnosed record, after the diagnosis,
shares whether any rank found a halting finding, so all ranks raise
:class:`~gradlens.TrainingHalted` in the same ``optimizer.step()``. It cannot ride in
the next step's header: a rank that halts at step S while another goes on would
leave the other waiting in step S+1's all-reduce, and halting everyone one logged
step late would let training run on with the problem. It cannot be skipped either:
the diagnosis has rank-local inputs (per-rank thresholds, the NaN-origin probe runs
on each rank's own forward). So with ``halt_on`` a logged step costs 2 collectives.

**Broken steps.** On a step with a NaN/Inf, the exact non-finite counts (and norms
taken again in float64) come from each rank's own shards; one more round, at that
step (only when the values were reduced, so every rank knows it is one), sums them
over the ranks. With a deferred GPU copy the check happens later, at a time each
rank picks alone, so there the counts stay the rank's own.

Without torch.distributed initialised (or with one process) nothing here runs.
"""

from __future__ import annotations

import os
import warnings
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Distributed", "context", "rank_world", "local_tensors", "local_reader", "fsdp1_shards", "is_sharded",
    "copies", "writer_logdir", "NumelReader",
    "RANKS", "SUM", "NORM", "NORM_REP", "MAX", "MIN", "MEAN", "NORM_MEAN",
]

#: Accepted values of ``watch(ranks=...)``.
RANKS = ("zero", "all", "local")

# Element-wise reductions of the gathered packet (codes of the ops vector).
SUM = 0  # counts, activation sums: the sum over ranks
NORM = 1  # a shard's norm: sqrt(sum of squares / copies), copies given per element
NORM_REP = 2  # a replicated tensor's norm: sqrt(mean of squares) (= the value when the ranks agree)
MAX = 3  # max|g|, a max part
MIN = 4  # a min part (CPU max|g| is max(max, -min))
MEAN = 5  # the loss, and slot kinds that say nothing else
NORM_MEAN = 6  # the output gradients' norm of the ranks' mean loss: sqrt(sum of squares) / ranks
_N_OPS = 7
_OP_NAMES = {"sum": SUM, "norm": NORM_REP, "max": MAX, "min": MIN, "mean": MEAN, "norm_mean": NORM_MEAN}

# a round's header: [watching, phase, size, checksum, halt code]
_PACKET, _HALT, _COUNTS = 1, 2, 3
# ... in a fused round, as exact float32 values in front of the data (size and checksum in 16-bit halves)
_HEAD = 7


def _encode(watching: int, phase: int, size: int, checksum: int, code: int) -> List[float]:
    return [float(watching), float(phase), float(size >> 16), float(size & 0xFFFF),
            float(checksum >> 16), float(checksum & 0xFFFF), float(code)]


def _decode(head: np.ndarray) -> np.ndarray:
    h = head.astype(np.int64)
    return np.stack([h[:, 0], h[:, 1], (h[:, 2] << 16) | h[:, 3], (h[:, 4] << 16) | h[:, 5], h[:, 6]], axis=1)


def rank_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def writer_logdir(logdir: str, ranks: str) -> Optional[str]:
    """Where this rank writes TensorBoard events for ``watch(logdir=..., ranks=...)``:
    ``logdir`` itself in one process and on rank 0 with ``ranks="zero"`` (None on the
    other ranks), ``logdir/rank{r}`` on every rank with ``"all"`` or ``"local"``."""
    rank, world = rank_world()
    if world == 1:
        return logdir
    if ranks == "zero":
        return logdir if rank == 0 else None
    return os.path.join(logdir, f"rank{rank}")


def context(ranks: str, root: Any = None) -> Optional["Distributed"]:
    """The :class:`Distributed` of this process for the model ``root``, or None in
    one process (or with ``ranks="local"``: every rank records its own values, no
    collective)."""
    if ranks == "local":
        return None
    _, world = rank_world()
    return Distributed(root=root) if world > 1 else None


def _dtensor_type() -> Optional[type]:
    import sys

    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a DTensor (FSDP2, tensor parallel parameters and gradients)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def _local(t: Tensor) -> Tensor:
    # (under no_grad to_local() is the local tensor itself: same storage, same version counter)
    with torch.no_grad():
        return t.to_local()


def local_tensors(tensors: Sequence[Any], *, sum_partial: bool = False) -> List[Any]:
    """``tensors`` with every DTensor replaced by its local shard (None stays None).

    A DTensor with a ``Partial`` placement (the gradient of a replicated parameter
    under ``SequenceParallel``, such as a LayerNorm weight's) holds on each rank a
    part of a sum, whose norm no combination of the parts' norms gives. With
    ``sum_partial`` it is all-reduced to ``Replicate`` first (one collective per
    such tensor, which every rank makes at the same logged step, as the optimizer's
    update would anyway); without, the rank's part is what it gives."""
    cls = _dtensor_type()
    if cls is None:
        return list(tensors)
    return [_local(_summed(t) if sum_partial else t) if isinstance(t, cls) else t for t in tensors]


def _summed(t: Any) -> Any:
    """``t`` with its ``Partial`` placements reduced to ``Replicate`` (else ``t`` itself)."""
    if not any(p.is_partial() for p in t.placements):
        return t
    from torch.distributed.tensor import Replicate

    with torch.no_grad():
        return t.redistribute(t.device_mesh, [Replicate() if p.is_partial() else p for p in t.placements])


def fsdp1_shards(root: Any, *, warn: bool = False) -> Dict[int, int]:
    """``id(parameter) -> ranks it is sharded over`` for the original parameters of
    every ``FullyShardedDataParallel(use_orig_params=True)`` unit in ``root`` with a
    sharded strategy (FSDP1: outside forward and backward each one is a 1-D view of
    its part of the rank's flat shard, maybe empty, and its gradient likewise, None
    where the part is empty). Without ``use_orig_params`` each unit's flat parameter
    is the one parameter there is (``warn``: say so once). Empty without FSDP1."""
    import sys

    cls = getattr(sys.modules.get("torch.distributed.fsdp"), "FullyShardedDataParallel", None)
    if cls is None:
        return {}
    import torch.distributed as dist

    out: Dict[int, int] = {}
    flat_only = False
    for module in root.modules():
        handle = getattr(module, "_handle", None) if isinstance(module, cls) else None
        flat = getattr(handle, "flat_param", None)
        if flat is None or not handle.uses_sharded_strategy:
            continue
        params = list(getattr(flat, "_params", None) or ()) + list(getattr(flat, "_shared_params", None) or ())
        shards = dist.get_world_size(handle.process_group)
        if not params:  # use_orig_params=False: the unit's one flat parameter is what there is
            flat_only = True
            params = [flat]
        out.update((id(p), shards) for p in params)
    if flat_only and warn:
        warnings.warn(
            "gradlens: FullyShardedDataParallel without use_orig_params=True shows gradlens one flat "
            "parameter per FSDP unit ('..._flat_param'), so its statistics are those of the unit's parameters "
            "together; pass use_orig_params=True for per-parameter statistics under their own names",
            UserWarning, stacklevel=4,
        )
    return out


def local_reader(
    root: Any, *, sum_partial: bool = False,
) -> Optional[Callable[[List[Any], List[Any]], Tuple[List[Any], List[Any]]]]:
    """What the collector reads for ``(weights, grads)`` of a model with sharded
    parameters, or None when it has none: the local shards of DTensors (FSDP2,
    tensor parallel; ``sum_partial``: gradients with a ``Partial`` placement summed
    first, see :func:`local_tensors`), and for FSDP1's original parameters an empty
    gradient where this rank's part is empty (its gradient is None there), so that
    every rank's packet has every parameter in it."""
    fsdp1 = fsdp1_shards(root, warn=True)
    dtensors = any(is_sharded(p) for p in root.parameters())
    if not fsdp1 and not dtensors:
        return None

    def read(weights: List[Any], grads: List[Any]) -> Tuple[List[Any], List[Any]]:
        if dtensors:
            weights, grads = local_tensors(weights), local_tensors(grads, sum_partial=sum_partial)
        if fsdp1:
            # (the empty view itself stands for the empty gradient: never written, 0 for every statistic)
            grads = [w if g is None and w.numel() == 0 and id(w) in fsdp1 else g for w, g in zip(weights, grads)]
        return weights, grads

    return read


def copies(t: Any, world: int, fsdp1: Optional[Dict[int, int]] = None) -> float:
    """How many ranks hold each element of ``t``: ``world`` for a plain (replicated)
    tensor, ``world / shards`` for a DTensor (product of the mesh sizes of its
    ``Shard`` dimensions) or an FSDP1 parameter (``fsdp1``: :func:`fsdp1_shards`)."""
    if not is_sharded(t):
        return world / fsdp1.get(id(t), 1) if fsdp1 else float(world)
    shards = 1
    for dim, placement in enumerate(t.placements):
        if placement.is_shard():
            shards *= t.device_mesh.size(dim)
    return world / shards


def _collective_device(backend: str, root: Any) -> torch.device:
    """Where the packet's collective runs: the host with gloo; with NCCL the GPU of the
    model's parameters (a rank that never called ``torch.cuda.set_device`` still
    gathers on its own GPU, not on every rank's ``cuda:0``), else the current one."""
    if "nccl" not in backend:
        return torch.device("cpu")
    for p in root.parameters() if root is not None else ():
        if p.device.type == "cuda":
            return torch.device("cuda", p.device.index if p.device.index is not None else torch.cuda.current_device())
    return torch.device("cuda", torch.cuda.current_device())


class Distributed:
    """The collectives of one monitor under torch.distributed (see the module doc).

    Args:
        group: the process group (default: the world).
        root: the watched model (its FSDP1 units shard their parameters).

    Attributes:
        rank, world: this process and the number of processes.
        fused: whether a round's header rides in front of its data (gloo: the
            data on the host) or goes first through gloo on its own (NCCL).
        left: whether :meth:`leave` ran (this rank no longer watches).
        collectives: the collectives issued so far (what the tests and
            ``benchmarks/distributed_overhead.py`` count).
    """

    def __init__(self, group: Any = None, root: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        # torch 2.13 deprecates all_gather_into_tensor (a FutureWarning per call) for all_gather_single
        self._all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        backend = str(dist.get_backend(group))
        # the data collective runs where the backend runs (NCCL: the current GPU);
        # the control one on the host, through gloo (no device sync to read it)
        self.device = _collective_device(backend, root)
        self._control_group = group if backend == "gloo" else dist.new_group(backend="gloo")
        # on the host (gloo) a round's header rides in front of its data: one collective
        self.fused = self.device.type == "cpu"
        self._cap = 0  # a fused round's data capacity (the largest agreed packet so far)
        self._plans: Dict[Tuple, Tuple[Tensor, Tensor, int]] = {}  # layout key -> (ops, 1/copies, checksum)
        self._copies_cache: Dict[int, Tuple[Any, Any, Tuple[float, ...]]] = {}
        self._fsdp1 = fsdp1_shards(root) if root is not None else {}
        self._local_steps: Dict[int, Any] = {}  # the last step packets some chunk of which was not reduced
        self._warned = False
        self.left = False
        self.collectives = 0  # collectives issued so far (the benchmark counts them too)

    # -- the rounds -------------------------------------------------------------------
    def _control(self, watching: int, phase: int, size: int = 0, checksum: int = 0, code: int = 0) -> np.ndarray:
        row = torch.tensor([watching, phase, size, checksum, code], dtype=torch.int64)
        out = torch.empty(self.world * 5, dtype=torch.int64)
        self._all_gather(out, row, group=self._control_group)
        self.collectives += 1
        return out.view(self.world, 5).numpy()

    def _gather(self, flat: Tensor) -> Tensor:
        out = flat.new_empty(self.world * flat.numel())
        self._all_gather(out, flat, group=self.group)
        self.collectives += 1
        return out.view(self.world, flat.numel())

    def _round(
        self, watching: int, phase: int, size: int = 0, checksum: int = 0, code: int = 0,
        flat: Optional[Tensor] = None,
    ) -> Tuple[np.ndarray, Optional[Tensor]]:
        """One round of the protocol, which every rank enters (a rank that left with
        ``watching=0``): every rank's header ``[watching, phase, size, checksum, code]``
        (``(world, 5)`` ints) and, when the watching ranks sent packets of one layout,
        the gathered packets (``(world, size)``, rows of ranks that left are zeros;
        else None). ``flat``: this rank's packet (``size`` values), or None.

        Fused (the data lives on the host, gloo): one all-gather of ``header +
        data padded to the capacity``; the capacity is the largest agreed packet so
        far, the same on every rank because every rank derives it from the same
        gathered headers. A packet that does not fit (the first one, a larger layout)
        costs one more round at the new capacity. Not fused (NCCL): the header
        goes first through gloo, then, when the layouts agree, the data alone."""
        if not self.fused:
            rows = self._control(watching, phase, size, checksum, code)
            n = self._data_round(rows)
            if n is None:
                return rows, None
            send = flat if flat is not None and flat.numel() == n else torch.zeros(n, device=self.device)
            return rows, self._gather(send)
        head = torch.tensor(_encode(watching, phase, size, checksum, code), dtype=torch.float32)
        while True:
            cap = self._cap
            send = torch.zeros(_HEAD + cap)  # header, then the packet where it fits, zeros after it
            send[:_HEAD] = head
            if flat is not None and flat.numel() <= cap:
                send[_HEAD:_HEAD + flat.numel()] = flat
            out = self._gather(send)
            rows = _decode(out[:, :_HEAD].numpy())
            n = self._data_round(rows)
            if n is None:
                return rows, None
            if n <= cap:
                return rows, out[:, _HEAD : _HEAD + n]
            self._cap = n  # (every rank, from the same headers) the data follows at the new capacity

    @staticmethod
    def _data_round(rows: np.ndarray) -> Optional[int]:
        """The size of the watching ranks' agreed packet in a round's headers, or
        None when there is none (no watching rank sent a packet, or their packets differ)."""
        live = rows[rows[:, 0] == 1]
        if not len(live) or live[0, 1] not in (_PACKET, _COUNTS) or (live[:, 1] != live[0, 1]).any():
            return None  # (a round with data of every watching rank, or none)
        if live[0, 2] == 0:
            return None
        if (live[:, 2] != live[0, 2]).any() or (live[:, 3] != live[0, 3]).any():
            return None
        return int(live[0, 2])

    # -- the packet -------------------------------------------------------------------
    def reduce_packet(self, packet: Any, pend: Any, work: Any) -> None:
        """Reduce ``packet`` (one optimizer's slots of a logged step) across ranks, in
        place, before its host copy (called by the collector)."""
        flat, ops, inv_copies, checksum = self._flatten(packet, pend, work)
        rows, gathered = self._round(1, _PACKET, flat.numel(), checksum, flat=flat)
        if gathered is None:
            self._local_steps[id(pend)] = pend  # (its values are this rank's: no counts round either)
            for old in list(self._local_steps)[:-4]:
                del self._local_steps[old]
            if flat.numel() and not self._warned:
                self._warned = True
                warnings.warn(
                    "gradlens: the ranks' statistics of a logged step have different layouts "
                    "(a model whose traced modules depend on the data?); each rank keeps its own values where "
                    "that happens", RuntimeWarning, stacklevel=2,
                )
            return
        alive = np.flatnonzero(rows[:, 0] == 1)
        if len(alive) < self.world:  # ranks that left: their rows are zeros, left out, and
            gathered = gathered[torch.as_tensor(alive, device=gathered.device)]
            inv_copies = inv_copies * (self.world / len(alive))  # a replicated tensor's copies are the ranks left
        packet.replace(_reduce(gathered, ops, inv_copies), self.device)

    def _flatten(self, packet: Any, pend: Any, work: Any) -> Tuple[Tensor, Tensor, Tensor, int]:
        """The packet as one float32 tensor on the collective's device, the reduction
        of each element, ``1 / copies`` per element (shard norms) and the checksum of
        its layout (the same on every rank for the same layout)."""
        traced = getattr(pend, "traced", None)
        grad_norms = sum(traced.grad_counts.values()) if traced is not None else 0
        if traced is not None and any(kind == "act" for kind, *_ in packet.slots):
            # the summed activation sums divide by the summed element counts (see NumelReader)
            numels = torch.tensor([float(c.numel) for c in traced.calls], dtype=torch.float32)
            packet.put("dist_numel", None, numels.to(self.device, non_blocking=True), reduce="sum", first=True)
        spec: List[Tuple[int, Optional[Tuple[float, ...]], int]] = []  # runs of (op, copies, count)
        act_left = sum(size for kind, _, _, _, size in packet.slots if kind == "act")
        key: List[Any] = []
        for (kind, ref, _, _, size), declared in zip(packet.slots, packet.reduce_ops):
            per: Optional[Tuple[float, ...]] = None
            if declared is not None:
                spec.append((_OP_NAMES[declared], None, size))
            elif kind in ("grad", "update"):
                per = self._copies(work.layout, ref)
                m = len(ref)
                spec.append((NORM, per, m))  # ||g|| (update: ||dW||)
                if kind == "grad":
                    spec += [(NORM, per, m), (MAX, None, m)]  # ||w||, max|g| (or the maxes)
                    if size == 4 * m:  # CPU per-tensor path: the maxes, then the mins (stats.grad_stats)
                        spec.append((MIN, None, m))
            elif kind == "act":  # the tracer's sums and counts, its output-gradient norms last
                norms_here = max(0, min(size, grad_norms - (act_left - size)))
                act_left -= size
                spec += [(SUM, None, size - norms_here), (NORM_MEAN, None, norms_here)]
            else:  # the loss; kinds that declare nothing
                spec.append((MEAN, None, size))
            key.append((kind, size, declared, per))
        if traced is not None:  # which modules were traced, in order: the same sizes may come from other modules
            key.append((tuple(c.name for c in traced.calls), tuple(traced.grad_counts.items())))
        key_t = tuple(key)
        plan = self._plans.get(key_t)
        if plan is None:
            codes: List[int] = []
            inv: List[float] = []
            for op, per, count in spec:
                codes += [op] * count
                inv += [1.0 / c for c in per] if per is not None else [1.0] * count
            plan = (torch.tensor(codes, dtype=torch.int64, device=self.device),
                    torch.tensor(inv, dtype=torch.float64, device=self.device), zlib.crc32(repr(key_t).encode()))
            self._plans[key_t] = plan
            for old in list(self._plans)[:-16]:  # a few layouts at a time
                del self._plans[old]
        return packet.flat(self.device), plan[0], plan[1], plan[2]

    def _copies(self, layout: Any, idx: Any) -> Tuple[float, ...]:
        """``copies`` of each parameter ``layout.params[idx]`` (cached per index array)."""
        cached = self._copies_cache.get(id(idx))
        if cached is None or cached[0] is not idx or cached[1] is not layout:
            params = layout.params
            cached = (idx, layout, tuple(copies(params[i], self.world, self._fsdp1) for i in idx.tolist()))
            self._copies_cache[id(idx)] = cached
            if len(self._copies_cache) > 64:
                self._copies_cache.pop(next(iter(self._copies_cache)))
        return cached[2]

    def reduce_broken(self, pend: Any, parts: Sequence[Any], reduced: np.ndarray) -> None:
        """Make what a broken step (a NaN/Inf in its reduced values) took again from
        the tensors of ``parts`` global (``reduced``: ``pend.p`` before that).

        Each rank counted the NaN/Inf elements of its own shards of the gradients,
        and took again in float64 a norm that overflowed where its shard has none;
        one more round sums the counts over the ranks (divided by each parameter's
        copies: a replicated gradient counts once) and combines the retaken norms as
        shard norms where every rank could retake its part (else the reduced value
        stays). Called by the collector right after the step's check, which every rank
        makes at the same step (the reduced values are the same on every rank); a step
        whose packet was not reduced keeps its own values, with no round."""
        if id(pend) in self._local_steps or pend.p is None:
            return
        from gradlens._record import GRAD_STATS

        nf, gn, wn = (GRAD_STATS.index(c) for c in ("nonfinite", "grad_norm", "weight_norm"))
        idx = [part.idx for part in parts]
        at = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
        n = len(at)
        mine = torch.tensor(pend.p[at][:, [nf, gn, wn]].T.reshape(-1), dtype=torch.float32, device=self.device)
        checksum = zlib.crc32(repr(("broken", n)).encode())
        rows, gathered = self._round(1, _COUNTS, mine.numel(), checksum, flat=mine)
        if gathered is None or not n:
            return
        alive = np.flatnonzero(rows[:, 0] == 1)
        g = gathered.cpu().double().numpy()[alive].reshape(len(alive), 3, n)
        per = np.array([c for i in idx for c in self._copies(pend.layout, i)], dtype=np.float64)
        scale = self.world / (per * len(alive))  # 1 / copies among the ranks left (see reduce_packet)
        pend.p[at, nf] = np.round(g[:, 0].sum(0) * scale)
        with np.errstate(over="ignore", invalid="ignore"):
            for k, col in ((1, gn), (2, wn)):
                before = reduced[at, col]
                retaken = np.isfinite(g[:, k]).all(0) & ~np.isfinite(before)
                pend.p[at, col] = np.where(retaken, np.sqrt(np.square(g[:, k]).sum(0) * scale), before)

    # -- halts and leaving ------------------------------------------------------------
    def share_halt(self, code: int) -> int:
        """Every rank's halt decision for one diagnosed record (0: go on); returns the
        largest, the same on every rank."""
        rows, _ = self._round(1, _HALT, code=code)
        return int(rows[rows[:, 0] == 1, 4].max())

    def leave(self) -> None:
        """Stop watching: answer the other ranks' collectives as "not watching" until
        every rank has left (called by ``close()``; returns at once when all ranks
        close together)."""
        if self.left or not (self._dist.is_available() and self._dist.is_initialized()):
            self.left = True
            return
        self.left = True
        while True:
            rows, _ = self._round(0, 0)
            if not (rows[:, 0] == 1).any():
                return


def _reduce(gathered: Tensor, ops: Tensor, inv_copies: Tensor) -> Tensor:
    """Element-wise reduction of the gathered rows (ranks x values), on their device."""
    ranks = gathered.shape[0]
    acc = torch.float32 if gathered.device.type == "mps" else torch.float64
    x = gathered.to(acc)
    s = x.sum(0)
    q = x.square().sum(0)
    out = torch.stack([
        s,
        (q * inv_copies.to(acc)).sqrt(),
        (q / ranks).sqrt(),
        x.amax(0),
        x.amin(0),
        s / ranks,
        q.sqrt() / ranks,
    ])
    return out.gather(0, ops.view(1, -1)).view(-1).float()


class NumelReader:
    """Reads the summed element counts of the traced calls back into the step's
    ``traced`` calls before the activations source summarises them (slot kind
    ``dist_numel``, first in the packet, so read first)."""

    kinds = ("dist_numel",)

    def read(self, slots, rows, p, dw, pends, members) -> None:  # noqa: ANN001 - Source.read's interface
        """Set each traced call's ``numel`` of the steps ``members`` to the summed count."""
        for _, vals in slots:
            for j, b in enumerate(members):
                traced = pends[b].traced
                if traced is not None:
                    for call, n in zip(traced.calls, vals[:, j].tolist()):
                        call.numel = int(round(n))
