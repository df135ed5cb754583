"""A test-only recorder: StepRecords computed the plain way, from ``.grad`` and hooks.

It is the independent reference for the diagnosis rules (and stands in for
``gradlens.watch`` where the monitor is not available): per-layer gradient norms
straight from ``p.grad`` (one ``.norm()`` per parameter, no fusion), activation
statistics from forward hooks, update ratios from weight copies around
``optimizer.step()``. One StepRecord per optimizer step, like the monitor.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from gradlens._record import StepRecord
from gradlens.diagnose import Diagnoser

_SAT_TOL = 0.01  # an output within 1% of a tanh/sigmoid limit counts as saturated


def _units_dim(t: torch.Tensor) -> int:
    return -1 if t.dim() == 3 else 1


def _act_stats(module: nn.Module, y: torch.Tensor) -> Dict[str, float]:
    y = y.detach().float()
    out = {"act_nonfinite": float((~torch.isfinite(y)).sum())}
    if y.numel() == 0:
        return out
    out["act_mean"] = float(y.mean())
    out["act_std"] = float(y.std()) if y.numel() > 1 else 0.0
    out["act_zero_frac"] = float((y == 0).float().mean())
    if y.dim() >= 2:
        d = _units_dim(y) % y.dim()
        z = (y == 0).movedim(d, 0).reshape(y.shape[d], -1)
        out["act_dead_frac"] = float(z.all(dim=1).float().mean())
    if isinstance(module, nn.Tanh):
        out["act_sat_frac"] = float((y.abs() >= 1 - _SAT_TOL).float().mean())
    elif isinstance(module, nn.Sigmoid):
        out["act_sat_frac"] = float(((y <= _SAT_TOL) | (y >= 1 - _SAT_TOL)).float().mean())
    else:
        out["act_sat_frac"] = math.nan
    return out


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


class ReferenceRecorder:
    """Records StepRecords of ``model`` at every step of ``optimizers`` and diagnoses them.

    Layers are the modules that own parameters directly, plus parameterless leaf
    modules (activations), in forward execution order.
    """

    def __init__(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], *,
                 activations: bool = True, thresholds=None) -> None:
        self.model = model
        self.diagnoser = Diagnoser(thresholds)
        self.records: List[StepRecord] = []
        self._names = {m: n or "(root)" for n, m in model.named_modules()}
        self._order: List[str] = []
        self._acts: Dict[str, Dict[str, float]] = {}
        self._origin: Optional[str] = None
        self._loss: Optional[float] = None
        self._before: Dict[nn.Parameter, torch.Tensor] = {}
        self._step = 0
        self.detected_at: Dict[int, int] = {}  # id(finding) -> step at which it was reported
        self._handles = []
        for name, m in model.named_modules():
            owns = any(True for _ in m.parameters(recurse=False))
            leaf = not any(True for _ in m.children())
            if owns or (leaf and activations):
                self._handles.append(m.register_forward_hook(self._fwd))
        for opt in optimizers:
            self._handles.append(opt.register_step_pre_hook(self._pre))
            self._handles.append(opt.register_step_post_hook(self._post))

    # -- hooks ---------------------------------------------------------------
    def _fwd(self, module, inputs, output):
        name = self._names[module]
        if name not in self._order:
            self._order.append(name)
        y = _first_tensor(output)
        if y is None or not y.is_floating_point():
            return
        self._acts[name] = _act_stats(module, y)
        if self._origin is None and self._acts[name]["act_nonfinite"] > 0:
            ins = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
            if all(bool(torch.isfinite(t).all()) for t in ins):
                self._origin = name

    def observe_loss(self, loss) -> None:
        self._loss = float(loss)

    def _params_of(self, opt):
        return [p for g in opt.param_groups for p in g["params"]]

    def _pre(self, opt, args, kwargs):
        stats: Dict[str, Dict[str, float]] = {k: {} for k in
                                              ("grad_norm", "grad_max", "nonfinite", "weight_norm", "missing_grad")}
        sq: Dict[str, float] = {}
        owned = {id(p) for p in self._params_of(opt)}
        self._before = {}
        for pname, p in self.model.named_parameters():
            if id(p) not in owned or not p.requires_grad:
                continue
            layer = pname.rpartition(".")[0] or "(root)"
            stats["missing_grad"][layer] = stats["missing_grad"].get(layer, 0.0)
            stats["weight_norm"][layer] = math.hypot(stats["weight_norm"].get(layer, 0.0), float(p.detach().norm()))
            self._before[p] = p.detach().clone()
            if p.grad is None:
                stats["missing_grad"][layer] += 1
                continue
            g = p.grad.detach()
            sq[layer] = sq.get(layer, 0.0) + float(g.double().norm()) ** 2
            stats["grad_max"][layer] = max(stats["grad_max"].get(layer, 0.0), float(g.abs().max()))
            stats["nonfinite"][layer] = stats["nonfinite"].get(layer, 0.0) + float((~torch.isfinite(g)).sum())
        stats["grad_norm"] = {k: math.sqrt(v) for k, v in sq.items()}
        self._pending = stats

    def _post(self, opt, args, kwargs):
        stats = self._pending
        num: Dict[str, float] = {}
        den: Dict[str, float] = {}
        for pname, p in self.model.named_parameters():
            if p not in self._before:
                continue
            layer = pname.rpartition(".")[0] or "(root)"
            w0 = self._before[p]
            num[layer] = num.get(layer, 0.0) + float((p.detach() - w0).double().norm()) ** 2
            den[layer] = den.get(layer, 0.0) + float(w0.double().norm()) ** 2
        stats["update_ratio"] = {k: math.sqrt(num[k]) / math.sqrt(den[k]) if den[k] > 0 else math.nan for k in num}
        for name, a in self._acts.items():
            for k, v in a.items():
                stats.setdefault(k, {})[name] = v
        layers = list(self._order)
        record = StepRecord(self._step, layers, stats, loss=self._loss, nonfinite_origin=self._origin)
        self.records.append(record)
        for f in self.diagnoser.update(record):
            self.detected_at[id(f)] = record.step
        self._step += 1
        self._origin = None

    @property
    def logged_steps(self) -> int:
        return len({r.step for r in self.records})

    @property
    def findings(self):
        return self.diagnoser.findings

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
