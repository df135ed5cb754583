"""Forward/backward signal tracing (the activations source's hooks): per-module output statistics and NaN origin.

A :class:`Tracer` puts a forward pre-hook and a forward hook on each traced
module. For every call it keeps, on the device, a small vector of output
statistics (:func:`gradlens.monitor.stats.activation_stats`) and registers a
tensor hook on the output for the norm of the gradient flowing back into it (not
a module full-backward hook: those break on in-place ops and re-entrant calls).

Non-finite origin: for every call it also notes where its tensor inputs came
from. An input that is the output of an earlier traced call (same tensor object)
reuses that call's non-finite count; any other input (the model input, the result
of functional code between modules) gets its own count. The origin is the first
call, in forward order, whose inputs were all finite and whose output was not.

Saturation probe (``sat_only=True``): only the forward hook, on the bounded modules
(:func:`sat_limits`), and only the count of saturated output elements (plus the
exact zeros of a ReLU6-like module, whose lower limit is ReLU's dead region): no
pre-hook, no input counts, no tensor hook. It is what ``watch(saturation=...)``
runs by default (see :mod:`gradlens.monitor.sources.activations`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from gradlens.monitor import stats as _stats
from gradlens.monitor.stats import near_limits
from gradlens.monitor.attach import HookSet, compiling

__all__ = ["Tracer", "Traced", "sat_limits", "features_last", "near_limits", "saturated_count", "SCRATCH_MAX_NUMEL"]

#: Outputs up to this many elements (16 MiB in float32) reuse one scratch buffer per
#: device for their statistics' temporaries; larger ones allocate per call. The
#: buffer is shaped per call as a view, so a run with varying shapes (sequence
#: lengths, last batches) keeps at most this much per device, never one per shape.
SCRATCH_MAX_NUMEL = 4 * 2**20

_BOUNDED: Tuple[Tuple[type, Tuple[float, float]], ...] = (
    (nn.Tanh, (-1.0, 1.0)),
    (nn.Sigmoid, (0.0, 1.0)),
    (nn.Hardsigmoid, (0.0, 1.0)),
    (nn.Softsign, (-1.0, 1.0)),
)
_FEATURES_LAST = (nn.Linear, nn.Bilinear, nn.Embedding, nn.LayerNorm, nn.EmbeddingBag)


def sat_limits(module: nn.Module) -> Optional[Tuple[float, float]]:
    """Output limits of a tanh/sigmoid-like module, or None for unbounded ones."""
    if isinstance(module, nn.Hardtanh):  # includes ReLU6
        return (float(module.min_val), float(module.max_val))
    for cls, limits in _BOUNDED:
        if isinstance(module, cls):
            return limits
    return None


def features_last(module: nn.Module) -> bool:
    """Whether the module's unit axis is the last one (Linear-like) rather than dim 1."""
    return isinstance(module, _FEATURES_LAST)


def _zero_is_dead(limits: Tuple[float, float]) -> bool:
    # a lower limit of exactly 0 on a Hardtanh (ReLU6): its exact zeros are ReLU's dead
    # region (the dead_units rule's business), counted apart so the rule can subtract them
    return limits[0] == 0.0


def saturated_count(x: Tensor, limits: Tuple[float, float], *, zeros: bool = False,
                    scratch: Optional[Tensor] = None) -> Tensor:
    """Elements of ``x`` within ``SAT_BAND`` of the range from either limit (the band of
    :func:`gradlens.monitor.stats.activation_stats`), as a float32 1-element tensor on
    ``x``'s device; ``zeros``: followed by the count of exact zeros (2 elements).

    Three ops into one scratch buffer (two for limits symmetric around 0): the
    distance from the middle, compared with ``half - band``, summed. No boolean
    reduction (slow on CPU, see ``activation_stats``).

    Example:
        >>> saturated_count(torch.tensor([-1.0, -0.99, 0.0, 0.5, 0.999]), (-1.0, 1.0))
        tensor([3.])
    """
    with torch.no_grad():
        xf = x.detach()
        if xf.dtype != torch.float32:
            xf = xf.float()
        buf = scratch if scratch is not None else torch.empty_like(xf)
        lo, hi = limits
        sat = near_limits(xf, lo, hi, _stats.SAT_BAND * (hi - lo), buf).sum()
        if not zeros:
            return sat.reshape(1)
        zero = torch.eq(xf, 0, out=buf).sum()
        return torch.stack([sat, zero])


def _first_tensor(value: Any) -> Optional[Tensor]:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _tensors(value: Any) -> List[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


@dataclass
class _Call:
    name: str
    numel: int
    stats: Optional[Tensor]  # ACT_FIELDS + per-unit non-zero counts, float32, on the output's device
    inputs: List[Any] = field(default_factory=list)  # int (earlier call) or Tensor (count)
    units: int = 0  # units for the dead-unit fraction (0: not measured)
    size: int = 0  # numel of ``stats``
    grad: bool = True  # the output is part of the autograd graph (no: a row of no chart)


class Tracer:
    """Collects per-call output statistics of ``modules`` while armed (:meth:`arm`).

    Args:
        modules: ``(name, module)`` pairs to trace.
        stats: compute the full statistics (False: only non-finite counts, used by
            the one-forward origin probe).
        sat_only: the saturation probe: forward hooks only, on the bounded modules of
            ``modules`` only (the others are ignored), saturated counts only.
        armed: put the hooks on now (False: at the first ``arm(True)``).
    """

    def __init__(
        self, modules: List[Tuple[str, nn.Module]], *, stats: bool = True, sat_only: bool = False,
        armed: bool = True,
    ) -> None:
        self.calls: List[_Call] = []
        self.grad_norms: Dict[str, List[Tensor]] = {}
        self._sat_only = sat_only
        self._full = stats and not sat_only
        if sat_only:
            modules = [(name, m) for name, m in modules if sat_limits(m) is not None]
        self._producers: Dict[int, Tuple["weakref.ref[Tensor]", int]] = {}
        self._pending_inputs: Dict[int, List[List[Any]]] = {}
        self._hooks = HookSet()
        self._buffers: Dict[Any, Tensor] = {}
        self.enabled = True
        self._limits = {name: sat_limits(module) for name, module in modules}
        self._modules = modules
        self.arm(armed)

    def arm(self, on: bool) -> None:
        """Put the module hooks on, or take them off until the next ``arm(True)`` (a
        forward between traced steps then runs no gradlens code at all)."""
        if not self.enabled or on == (len(self._hooks) > 0):
            return
        if on:
            # first among the module's hooks, every time: re-arming must not move them
            # behind hooks the user added meanwhile (those could change the output seen)
            for name, module in self._modules:
                if self._sat_only:
                    self._hooks.add(module.register_forward_hook(self._sat_post(name, module), prepend=True))
                    continue
                self._hooks.add(module.register_forward_pre_hook(self._pre(name), prepend=True))
                self._hooks.add(module.register_forward_hook(self._post(name, module), prepend=True))
        else:
            self._hooks.remove()

    def remove(self) -> None:
        """Remove every hook (tensor hooks on live graphs turn into no-ops)."""
        self.enabled = False
        self._hooks.remove()
        self._buffers = {}

    def clear(self) -> None:
        """Forget collected calls (the next logged step starts fresh)."""
        self.calls = []
        self.grad_norms = {}
        self._producers = {}
        self._pending_inputs = {}

    def _scratch(self, x: Tensor) -> Optional[Tensor]:
        # One reusable flat float32 buffer per device (the statistics of one call run
        # one after another), grown to the largest output seen up to SCRATCH_MAX_NUMEL
        # elements, and viewed in the shape of each output.
        n = x.numel()
        if n > SCRATCH_MAX_NUMEL:
            return None
        buf = self._buffers.get(x.device)
        if buf is None or buf.numel() < n:
            buf = self._buffers[x.device] = torch.empty(n, dtype=torch.float32, device=x.device)
        return buf[:n].view(x.shape)

    # -- hooks ----------------------------------------------------------------
    def _on(self) -> bool:
        return self.enabled and torch.is_grad_enabled() and not compiling()

    def _pre(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if not self._on():
                return
            sources: List[Any] = []
            for t in _tensors(args):
                if not t.is_floating_point():
                    continue
                prod = self._producers.get(id(t))
                if prod is None and t._base is not None:  # a view (Flatten) of a traced output
                    t = t._base
                    prod = self._producers.get(id(t))
                if prod is not None and prod[0]() is t:
                    sources.append(prod[1])
                else:
                    with torch.no_grad():
                        d = t.detach()
                        sources.append(_stats.nonfinite_count(d, d.sum()))
            self._pending_inputs.setdefault(id(module), []).append(sources)

        return hook

    def _post(self, name: str, module: nn.Module) -> Any:
        limits = self._limits[name]
        flast = features_last(module)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            stack = self._pending_inputs.get(id(module))
            if not stack:
                return  # not traced at the pre-hook (inactive then)
            sources = stack.pop()
            out = _first_tensor(output)
            if out is None or not out.is_floating_point() or out.numel() == 0:
                return
            if name not in self.grad_norms:  # first call: forward order is the dict's order
                self.grad_norms[name] = []
            units = 0
            if self._full:
                x = out if out.dim() >= 2 else out.reshape(1, -1)
                vec, units = _stats.activation_stats(
                    x, limits=limits, features_last=flast, scratch=self._scratch(x)
                )
            else:
                with torch.no_grad():
                    d = out.detach()
                    vec = _stats.nonfinite_count(d, d.sum()).reshape(1)
            idx = len(self.calls)
            self.calls.append(
                _Call(name, out.numel(), vec, sources, units=units if out.dim() >= 2 else 0, size=vec.numel(),
                      grad=out.requires_grad)
            )
            self._producers[id(out)] = (weakref.ref(out), idx)
            if self._full and out.requires_grad:
                norms = self.grad_norms[name]

                def grad_hook(grad: Tensor) -> None:
                    if self.enabled:
                        with torch.no_grad():
                            norms.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32))

                out.register_hook(grad_hook)

        return hook

    def _sat_post(self, name: str, module: nn.Module) -> Any:
        limits = self._limits[name]
        zeros = _zero_is_dead(limits) and isinstance(module, nn.Hardtanh)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._on():
                return
            out = _first_tensor(output)
            if out is None or not out.is_floating_point() or out.numel() == 0 or not out.requires_grad:
                return  # (no gradient flows through it: nothing to saturate)
            vec = saturated_count(out, limits, zeros=zeros, scratch=self._scratch(out))
            if name not in self.grad_norms:  # forward order, as for the full tracer
                self.grad_norms[name] = []
            self.calls.append(_Call(name, out.numel(), vec, size=vec.numel()))

        return hook

    @property
    def modules(self) -> List[Tuple[str, nn.Module]]:
        """The ``(name, module)`` pairs this tracer hooks (the saturation probe: the bounded ones)."""
        return list(self._modules)

    # -- host side ------------------------------------------------------------
    def device_tensors(self) -> List[Tensor]:
        """Every device tensor the host needs, as 1-D tensors, in :meth:`summarize` order:
        call vectors, then (stacked) input counts and output-gradient norms."""
        out: List[Tensor] = [call.stats for call in self.calls]
        scalars = [s for call in self.calls for s in call.inputs if isinstance(s, Tensor)]
        scalars += [g for norms in self.grad_norms.values() for g in norms]
        by_dev: Dict[torch.device, List[Tensor]] = {}
        for t in scalars:
            by_dev.setdefault(t.device, []).append(t)
        if len(by_dev) <= 1:
            out.extend(torch.stack(ts) for ts in by_dev.values())
        else:  # model spread over devices: keep the order, one tensor each
            out.extend(t.reshape(1) for t in scalars)
        return out

    def take(self) -> "Traced":
        """What was traced since the last :meth:`take`/:meth:`clear`, for :meth:`Traced.summarize`
        once the host has the values of :meth:`device_tensors`; the tracer starts fresh."""
        for call in self.calls:
            call.stats = None  # the host copy has it; keep no device memory
            call.inputs = [s if isinstance(s, int) else None for s in call.inputs]
        traced = Traced(
            self.calls, {name: len(norms) for name, norms in self.grad_norms.items()}, self._limits, self._full,
            sat_only=self._sat_only,
        )
        self.clear()
        return traced


class Traced:
    """The host side of one traced step: which calls were made, turned into statistics
    by :meth:`summarize` (possibly later, from :meth:`Tracer.device_tensors`' values)."""

    def __init__(
        self,
        calls: List[_Call],
        grad_counts: Dict[str, int],
        limits: Dict[str, Optional[Tuple[float, float]]],
        full: bool,
        *,
        sat_only: bool = False,
    ) -> None:
        self.sat_only = sat_only
        self.calls = calls
        self.grad_counts = grad_counts  # traced module -> output gradients seen, in forward order
        self._limits = limits
        self._full = full

    def summarize(self, host: Sequence[float]) -> Tuple[Dict[str, Dict[str, float]], Optional[str]]:
        """Per-module statistics and the non-finite origin from host values.

        ``host`` is the concatenation of :meth:`device_tensors`, on the host (a list
        or a float64 array; the per-unit counts are reduced with numpy).
        """
        host = np.asarray(host, dtype=np.float64)
        vecs, pos = [], 0
        for call in self.calls:
            vecs.append(host[pos : pos + call.size])
            pos += call.size
        if self.sat_only:
            return self._sat_rows(vecs), None
        nf_out = [float(v[2]) if self._full else float(v[0]) for v in vecs]
        in_counts: List[List[Any]] = []
        for call in self.calls:
            ins = []
            for s in call.inputs:
                if isinstance(s, int):
                    ins.append(("call", s))
                else:  # a count, copied to the host
                    ins.append(("count", float(host[pos])))
                    pos += 1
            in_counts.append(ins)
        gnorms: Dict[str, List[float]] = {}
        for name, k in self.grad_counts.items():
            gnorms[name] = host[pos : pos + k].tolist()
            pos += k

        origin = None
        for i, call in enumerate(self.calls):
            if nf_out[i] > 0:
                inputs_bad = any(
                    (v > 0) if kind == "count" else (nf_out[v] > 0) for kind, v in in_counts[i]
                )
                if not inputs_bad:
                    origin = call.name
                    break

        per: Dict[str, Dict[str, float]] = {}
        if not self._full:
            return per, origin
        groups: Dict[str, List[int]] = {}
        for i, call in enumerate(self.calls):
            groups.setdefault(call.name, []).append(i)
        for name in self.grad_counts:
            idxs = groups.get(name, [])
            if not any(self.calls[i].grad for i in idxs):
                continue  # no gradient flows through it (rotary tables, masks): origin only
            n_tot = sum(self.calls[i].numel for i in idxs)
            total = float(sum(vecs[i][0] for i in idxs))
            sumsq = float(sum(vecs[i][1] for i in idxs))
            mean = total / n_tot
            # pooled over the calls; the clamp absorbs float32 rounding at std ~ 0
            var = max(sumsq - n_tot * mean * mean, 0.0) / (n_tot - 1) if n_tot > 1 else math.nan
            std = math.sqrt(var) if math.isfinite(var) else math.nan
            # per-unit non-zero counts follow the ACT_FIELDS: their sum and how many are > 0
            per_unit = [vecs[i][len(_stats.ACT_FIELDS):] for i in idxs]
            nonzero = float(sum(u.sum() for u in per_unit))
            dead = [
                1.0 - int(np.count_nonzero(u > 0)) / self.calls[i].units
                for i, u in zip(idxs, per_unit)
                if self.calls[i].units
            ]
            row = {
                "act_mean": mean,
                "act_std": std,
                "act_zero_frac": 1.0 - nonzero / n_tot,
                "act_nonfinite": sum(nf_out[i] for i in idxs),
            }
            if dead:
                row["act_dead_frac"] = sum(dead) / len(dead)
            if self._limits.get(name) is not None:
                row["act_sat_frac"] = float(sum(vecs[i][3] for i in idxs)) / n_tot
            g = gnorms.get(name, [])
            if g:
                row["out_grad_norm"] = math.sqrt(sum(v * v for v in g))
            per[name] = row
        return per, origin

    def _sat_rows(self, vecs: List[np.ndarray]) -> Dict[str, Dict[str, float]]:
        # the probe's rows: act_sat_frac pooled over a module's calls (act_zero_frac too
        # where the exact zeros were counted: ReLU6-like modules)
        per: Dict[str, Dict[str, float]] = {}
        groups: Dict[str, List[int]] = {}
        for i, call in enumerate(self.calls):
            groups.setdefault(call.name, []).append(i)
        for name, idxs in groups.items():
            n_tot = sum(self.calls[i].numel for i in idxs)
            row = {"act_sat_frac": float(sum(vecs[i][0] for i in idxs)) / n_tot}
            if all(len(vecs[i]) > 1 for i in idxs):
                row["act_zero_frac"] = float(sum(vecs[i][1] for i in idxs)) / n_tot
            per[name] = row
        return per
