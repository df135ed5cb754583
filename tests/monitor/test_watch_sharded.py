"""gradlens.watch across ranks: FSDP2, tensor parallel, DDP activations and loss,
one event file, halts and uneven steps. 2 CPU processes on gloo.

One spawn for the module (a few seconds): each rank runs every scenario below in
turn and writes what it saw to a JSON file; the tests compare, in this process,
with an independent reference: the same model trained in one process on the full
batch (the batch the ranks split between them). A hung collective fails the test at
``DEADLINE_S`` instead of hanging pytest.
"""

from __future__ import annotations

import glob
import math
import os
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlens
from watch_helpers import full_batch, gloo_available, mlp, rank_slice, spawn_ranks


pytestmark = pytest.mark.skipif(not gloo_available(), reason="torch.distributed with gloo is unavailable")

WORLD = 2
BATCH = 8  # the full batch; rank r trains on rows [4r, 4r + 4) (tensor parallel: all of it)
STEPS = 3
LR = 0.1
DEADLINE_S = 120
STATS = ("grad_norm", "grad_max", "weight_norm", "update_ratio")
ACT = ("act_mean", "act_std", "act_zero_frac", "act_dead_frac", "act_sat_frac", "act_nonfinite", "out_grad_norm")
NAN_STEP = 2  # halting scenarios: the step where rank 1 goes wrong


def _data():
    return full_batch(BATCH)


def _shard(t, rank):
    return rank_slice(t, rank, WORLD)


def _rows(mon, stats=STATS):
    df = mon.dataframe()
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df[["step", "param", *stats]].to_dict("records")]


def _layer_rows(mon):
    df = mon.dataframe("layer")
    cols = [c for c in ACT if c in df.columns]
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df[["step", "layer", *cols]].to_dict("records")]


def _train(model, opt, mon, x, y, steps=STEPS):
    """Plain training; returns this rank's own losses."""
    own = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        mon.observe_loss(loss)
        own.append(loss.item())
        loss.backward()
        opt.step()
    return own


def _fsdp2(rank, tmp):
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    for i in (0, 2, 4):
        fully_shard(model[i])
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    # gradlens must not gather a parameter: count DTensor.full_tensor/redistribute calls while it watches
    from torch.distributed.tensor import DTensor

    gathers = {"full_tensor": 0, "redistribute": 0}
    saved = {name: getattr(DTensor, name) for name in gathers}

    def counting(name):
        def call(self, *args, **kwargs):
            gathers[name] += 1
            return saved[name](self, *args, **kwargs)
        return call

    for name in gathers:
        setattr(DTensor, name, counting(name))
    try:
        with gradlens.watch(model, opt, update_every=1) as mon:
            _train(model, opt, mon, _shard(x, rank), _shard(y, rank))
    finally:
        for name, fn in saved.items():
            setattr(DTensor, name, fn)
    local = {n: list(p.to_local().shape) for n, p in model.named_parameters()}
    return {"rows": _rows(mon), "losses": [r.loss for r in mon.records()], "local_shapes": local,
            "gathers": gathers}


def _fsdp1(rank, tmp, nested=False):
    # FullyShardedDataParallel (FSDP1) with use_orig_params=True: the original parameters
    # are 1-D views into each rank's flat shard, empty on a rank that holds none of one
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = ModuleWrapPolicy({nn.Linear}) if nested else None
    model = FSDP(mlp(), use_orig_params=True, device_id=torch.device("cpu"), auto_wrap_policy=policy)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    with gradlens.watch(model, opt, update_every=1, activations=1) as mon:
        _train(model, opt, mon, _shard(x, rank), _shard(y, rank))
    local = {n: list(p.shape) for n, p in model.named_parameters()}
    return {"rows": _rows(mon), "losses": [r.loss for r in mon.records()], "local_shapes": local,
            "layers": _layer_rows(mon)}


def _fsdp1_flat(rank, tmp):
    # FSDP1 without use_orig_params: one flat parameter, sharded; a warning says so
    import warnings

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = FSDP(mlp(), device_id=torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradlens.watch(model, opt) as mon:
            _train(model, opt, mon, _shard(x, rank), _shard(y, rank))
    return {"rows": _rows(mon, ("grad_norm", "weight_norm")),
            "warned": sum("use_orig_params=True" in str(w.message) for w in caught)}


def _fsdp1_nested(rank, tmp):
    return _fsdp1(rank, tmp, nested=True)


def _tensor_parallel(rank, tmp):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))
    model = mlp()
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    with gradlens.watch(model, opt, update_every=1) as mon:
        _train(model, opt, mon, x, y)  # every rank computes the whole batch
    placements = {n: str(p.placements) if hasattr(p, "placements") else "plain" for n, p in model.named_parameters()}
    return {"rows": _rows(mon), "placements": placements}


def _sp_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))


def _sp_input():
    # (batch, sequence, hidden): SequenceParallel shards the sequence; every rank gets all of it
    return torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(3))


def _sequence_parallel(rank, tmp):
    # SequenceParallel's LayerNorm: replicated weights whose gradients are Partial(sum)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module,
    )

    mesh = init_device_mesh("cpu", (WORLD,))
    model = _sp_model()
    parallelize_module(model, mesh, {"0": SequenceParallel(), "1": ColwiseParallel(input_layouts=Shard(1)),
                                     "3": RowwiseParallel(output_layouts=Shard(1))})
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x = _sp_input()
    from gradlens.monitor import distributed

    summed, plain_summed = {}, distributed._summed

    def counting(t):
        out = plain_summed(t)
        summed[mode] = summed.get(mode, 0) + (out is not t)
        return out

    distributed._summed = counting
    try:
        for mode in ("zero", "local"):  # ranks="local": each rank's own part, and no collective
            with gradlens.watch(model, opt, ranks=mode) as mon:
                for _ in range(STEPS if mode == "zero" else 1):
                    opt.zero_grad()
                    model(x).pow(2).mean().backward()
                    grad_placements = {n: str(p.grad.placements) for n, p in model.named_parameters()}
                    opt.step()
            if mode == "zero":
                rows = _rows(mon, ("grad_norm", "grad_max", "weight_norm"))
    finally:
        distributed._summed = plain_summed
    return {"rows": rows, "grad_placements": grad_placements, "summed": summed}


def _ddp_activations(rank, tmp):
    ddp = nn.parallel.DistributedDataParallel(mlp())
    opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    with gradlens.watch(ddp, opt, activations=1, update_every=1, logdir=str(tmp / "tb_zero")) as mon:
        _train(ddp, opt, mon, _shard(x, rank), _shard(y, rank))
    return {"rows": _rows(mon), "layers": _layer_rows(mon), "losses": [r.loss for r in mon.records()],
            "findings": sorted((f.kind, f.layer, f.step) for f in mon.findings)}


def _findings_data():
    """The full batch with rank 1's half scaled by 100 and rank 0's by 10: the Tanh ("3")
    saturates on 31% of rank 0's outputs, 94% of rank 1's, 62% of the full batch's (the
    threshold is 50%), so only pooled activations give every rank the full batch's findings."""
    x, y = _data()
    x = x.clone()
    x[: BATCH // 2] *= 10
    x[BATCH // 2:] *= 100
    return x, y


#: saturation judged on the first step, on the fraction alone (3 steps leave no loss history)
_AT_ONCE = {"saturation_min_losses": 1, "saturation_samples": 1, "saturation_max_drop": 1.0}


def _ddp_findings(rank, tmp):
    x, y = _findings_data()
    out = {}
    for ranks in ("zero", "local"):
        ddp = nn.parallel.DistributedDataParallel(mlp())
        opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
        with gradlens.watch(ddp, opt, activations=1, update_every=1, ranks=ranks, thresholds=_AT_ONCE) as mon:
            _train(ddp, opt, mon, _shard(x, rank), _shard(y, rank))
        out[ranks] = sorted([f.kind, f.layer, f.step] for f in mon.findings)
    return out


def _ranks_all(rank, tmp):
    ddp = nn.parallel.DistributedDataParallel(mlp())
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    x, y = _data()
    with gradlens.watch(ddp, opt, logdir=str(tmp / "tb_all"), ranks="all") as mon:
        own = _train(ddp, opt, mon, _shard(x, rank), _shard(y, rank))
    pooled = [r.loss for r in mon.records()]
    with gradlens.watch(ddp, opt, ranks="local") as mon:  # no collective: this rank's own loss
        own_local = _train(ddp, opt, mon, _shard(x, rank), _shard(y, rank), steps=1)
    return {"own": own, "pooled": pooled, "own_local": own_local, "local": [r.loss for r in mon.records()]}


def _halting(rank, poison, **options):
    """A plain (unsynchronised) model per rank; rank 1 goes wrong at NAN_STEP."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    halted, t0 = None, None
    mon = gradlens.watch(model, opt, **options)
    try:
        for step in range(6):
            xs = _shard(x, rank).clone()
            if step == NAN_STEP:
                t0 = time.monotonic()
                if rank == 1:
                    poison(xs, model)
            opt.zero_grad()
            loss = F.mse_loss(model(xs), _shard(y, rank))
            mon.observe_loss(loss)
            loss.backward()
            opt.step()
    except gradlens.TrainingHalted as exc:
        halted = {"step": exc.finding.step, "kind": exc.finding.kind, "seconds": time.monotonic() - t0,
                  "steps_seen": mon.steps_seen}
    finally:
        mon.close()
    return {"halted": halted}


def _halt_nan(rank, tmp):
    def poison(xs, model):
        xs[0, 0] = float("nan")

    return _halting(rank, poison, halt_on={"nonfinite"})


def _halt_rank_local(rank, tmp):
    # a halting condition only rank 1 sees: its own thresholds (every gradient counts as exploding there)
    def poison(xs, model):
        pass

    # (urgent_factor 0: no urgent path, the finding waits for its window as before)
    thresholds = {"exploding_relative": 1e-9, "urgent_factor": 0} if rank == 1 else None
    return _halting(rank, poison, halt_on={"exploding"}, thresholds=thresholds)


def _callback_raises(rank, tmp):
    # with halt_on, rank 1's on_finding raises at its first finding, inside the diagnosis: before the
    # halt round rank 0 waits in. Rank 1 leaves through `with` (close() during the
    # exception); rank 0 gets its answer from leave() and trains on alone.
    import torch.distributed as dist

    class Boom(Exception):
        pass

    def on_finding(finding):
        raise Boom(finding.kind)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    thresholds = {"exploding_relative": 1e-9} if rank == 1 else None  # findings on rank 1 only
    raised, t0 = None, time.monotonic()
    try:
        with gradlens.watch(model, opt, halt_on={"nonfinite"}, thresholds=thresholds,
                            on_finding=on_finding if rank == 1 else None) as mon:
            for _ in range(5):
                _train(model, opt, mon, _shard(x, rank), _shard(y, rank), steps=1)
    except Boom as exc:
        raised = str(exc)
    seconds = time.monotonic() - t0
    dist.barrier()  # still in step after both closed
    return {"raised": raised, "steps": [r.step for r in mon.records()], "seconds": seconds}


def _uneven(rank, tmp, fused=True):
    # rank 1 closes after 2 steps; rank 0 then unfreezes layer 0, so its packet grows
    # while rank 1 answers from leave(): the round at the new capacity must not hang
    import torch.distributed as dist

    model = mlp()
    model[0].weight.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    xs, ys = _shard(x, rank), _shard(y, rank)
    steps = 5 if rank == 0 else 2
    own_first = []
    t0 = time.monotonic()
    with gradlens.watch(model, opt, activations=2) as mon:
        mon._dist.fused = fused  # (False: NCCL's protocol, on gloo here)
        for step in range(steps):
            if step == 3:
                model[0].weight.requires_grad_(True)
            opt.zero_grad()
            loss = F.mse_loss(model(xs), ys)
            mon.observe_loss(loss)
            loss.backward()
            if model[0].weight.grad is not None:
                own_first.append(model[0].weight.grad.norm().item())
            opt.step()
    seconds = time.monotonic() - t0
    dist.barrier()  # the ranks' collectives are still in step after both closed
    first = [r.param_stats["grad_norm"].get("0.weight") for r in mon.records()]
    return {"steps": [r.step for r in mon.records()], "losses": [r.loss for r in mon.records()],
            "seconds": seconds, "first": first, "own_first": own_first}


def _nonfinite(rank, tmp):
    # a NaN/Inf in the gradient of 2.weight at step 1: rank 0 poisons 2 elements of what it
    # holds, rank 1 poisons 3 (sharded: 5 in all); DDP: the same 3 on both ranks (3 in all)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import fully_shard

    out = {}
    for engine in ("fsdp2", "fsdp1", "ddp"):
        if engine == "fsdp2":
            model = mlp()
            for i in (0, 2, 4):
                fully_shard(model[i])
            fully_shard(model)
        elif engine == "fsdp1":
            model = FSDP(mlp(), use_orig_params=True, device_id=torch.device("cpu"))
        else:
            model = nn.parallel.DistributedDataParallel(mlp())
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        x, y = _data()
        with gradlens.watch(model, opt) as mon:
            for step in range(2):
                opt.zero_grad()
                F.mse_loss(model(_shard(x, rank)), _shard(y, rank)).backward()
                if step == 1:
                    grad = dict(model.named_parameters())[
                        {"fsdp2": "2.weight", "fsdp1": "_fsdp_wrapped_module.2.weight", "ddp": "module.2.weight"}[engine]
                    ].grad
                    flat = (grad.to_local() if hasattr(grad, "to_local") else grad).view(-1)
                    flat[: 3 if engine == "ddp" else 2 + rank] = float("nan")
                    flat[-1] = float("inf") if engine != "ddp" else flat[-1]
                opt.step()
        out[engine] = _rows(mon, ("nonfinite", "grad_norm"))
    return out


def _uneven_unfused(rank, tmp):
    return _uneven(rank, tmp, fused=False)


def _overflow(rank, tmp):
    # FSDP2, a 100x100 weight (past the batched path: float32 norms) whose gradient is 1e20
    # everywhere at step 1: its norm (1e22) overflows float32 and is taken again in float64
    # from each rank's half, then combined
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100))
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(rank)
    with gradlens.watch(model, opt) as mon:
        for step in range(2):
            opt.zero_grad()
            model(torch.randn(4, 100, generator=gen)).pow(2).mean().backward()
            if step == 1:
                model[0].weight.grad.to_local().fill_(1e20)
            opt.step()
    return {"rows": _rows(mon, ("grad_norm", "nonfinite"))}


class _Branchy(nn.Module):
    """mlp(), then a Tanh (``branch="a"``), a Sigmoid (``"b"``: outputs of the same size
    from another module) or neither (None): a model whose traced modules depend on the data."""

    def __init__(self):
        super().__init__()
        self.body, self.tail_a, self.tail_b, self.branch = mlp(), nn.Tanh(), nn.Sigmoid(), None

    def forward(self, x):
        h = self.body(x)
        return {"a": self.tail_a, "b": self.tail_b}[self.branch](h) if self.branch else h


def _mismatch(rank, tmp, usual=None, odd="a"):
    # at step 1 only rank 1 takes the ``odd`` branch: the ranks' packets differ there
    import warnings

    ddp = nn.parallel.DistributedDataParallel(_Branchy())
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    x, y = _data()
    own, per_step = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradlens.watch(ddp, opt, activations=1) as mon:
            for step in range(3):
                ddp.module.branch = odd if rank == 1 and step == 1 else usual
                before = mon._dist.collectives
                own += _train(ddp, opt, mon, _shard(x, rank), _shard(y, rank), steps=1)
                per_step.append(mon._dist.collectives - before)
    return {"own": own, "losses": [r.loss for r in mon.records()], "per_step": per_step,
            "warned": sum("different layouts" in str(w.message) for w in caught)}


def _mismatch_same_size(rank, tmp):
    return _mismatch(rank, tmp, usual="a", odd="b")


def _collectives(rank, tmp):
    # collectives per logged step: traced (activations=2) and untraced steps, with and
    # without halt_on, and "unfused": the header first, then the data (what NCCL does)
    x, y = _data()
    out = {}
    for name, options in {"plain": {}, "halt_on": {"halt_on": {"nonfinite"}}, "unfused": {}}.items():
        ddp = nn.parallel.DistributedDataParallel(mlp())
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        mon = gradlens.watch(ddp, opt, activations=2, update_every=1, **options)
        if name == "unfused":
            mon._dist.fused = False
        per_step = []
        for _ in range(5):
            before = mon._dist.collectives
            _train(ddp, opt, mon, _shard(x, rank), _shard(y, rank), steps=1)
            per_step.append(mon._dist.collectives - before)
        before = mon._dist.collectives
        mon.close()
        out[name] = {"per_step": per_step, "close": mon._dist.collectives - before, "fused": mon._dist.fused,
                     "traced": [bool(r.layers and "1" in r.layers) for r in mon.records()],
                     "rows": _rows(mon), "layers": _layer_rows(mon)}
    return out


SCENARIOS = {
    "fsdp2": _fsdp2, "fsdp1": _fsdp1, "fsdp1_nested": _fsdp1_nested, "fsdp1_flat": _fsdp1_flat,
    "tensor_parallel": _tensor_parallel, "sequence_parallel": _sequence_parallel, "ddp_activations": _ddp_activations, "ddp_findings": _ddp_findings,
    "ranks_all": _ranks_all, "halt_nan": _halt_nan, "halt_rank_local": _halt_rank_local,
    "callback_raises": _callback_raises, "uneven": _uneven, "uneven_unfused": _uneven_unfused, "mismatch": _mismatch,
    "mismatch_same_size": _mismatch_same_size, "collectives": _collectives, "nonfinite": _nonfinite,
    "overflow": _overflow,
}


def _run_rank(rank, out_dir):
    from pathlib import Path

    out = {}
    for name, scenario in SCENARIOS.items():
        try:
            out[name] = scenario(rank, Path(out_dir))
        except Exception as exc:  # noqa: BLE001 - reported by the test of that scenario
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            raise
    return out


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Spawn the 2 ranks once: their JSON results (by rank) and the output folder."""
    tmp = tmp_path_factory.mktemp("sharded")
    return spawn_ranks(_run_rank, tmp, world=WORLD, deadline_s=DEADLINE_S), tmp


@pytest.fixture(scope="module")
def ranks(spawned):
    return spawned[0]


def _reference(full_batch_per_rank: bool = False, activations: bool = False):
    """One process, the full batch: per (step, parameter) STATS, losses, per (step, layer) ACT."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    with gradlens.watch(model, opt, update_every=1, activations=1 if activations else 0) as mon:
        _train(model, opt, mon, x, y)
    return _rows(mon), _layer_rows(mon) if activations else None, [r.loss for r in mon.records()]


def _by_key(rows, key="param"):
    return {(r["step"], r[key]): r for r in rows}


def _assert_rows_equal(got_rows, ref_rows, stats, key="param", rel=1e-5):
    got, ref = _by_key(got_rows, key), _by_key(ref_rows, key)
    assert set(got) == set(ref)
    for k, r in ref.items():
        for stat in stats:
            if r.get(stat) is None:
                assert got[k].get(stat) is None, (k, stat)
            else:
                assert got[k][stat] == pytest.approx(r[stat], rel=rel, abs=1e-7), (k, stat)


def test_the_torch_engines_shard_as_the_tests_expect(ranks):
    # Guards the other tests' power: FSDP2 really holds shards of different sizes
    # (so local statistics differ from global ones), TP mixes shards and replicas.
    shapes = [r["fsdp2"]["local_shapes"] for r in ranks]
    assert shapes[0]["0.weight"] == [4, 6] and shapes[1]["0.weight"] == [4, 6]
    assert shapes[0]["4.bias"] == [2] and shapes[1]["4.bias"] == [1]
    # FSDP1: flat 1-D views, some of them empty on one rank, names wrapped
    shapes = [r["fsdp1"]["local_shapes"] for r in ranks]
    assert shapes[0]["_fsdp_wrapped_module.0.weight"] == [48] and shapes[1]["_fsdp_wrapped_module.0.weight"] == [0]
    assert shapes[0]["_fsdp_wrapped_module.2.weight"] == [22] and shapes[1]["_fsdp_wrapped_module.2.weight"] == [42]
    assert all(len(v) == 1 for r in shapes for v in r.values())
    nested = ranks[0]["fsdp1_nested"]["local_shapes"]
    assert "_fsdp_wrapped_module.0._fsdp_wrapped_module.weight" in nested, nested
    placements = ranks[0]["tensor_parallel"]["placements"]
    assert "Shard(dim=0)" in placements["0.weight"] and "Shard(dim=1)" in placements["2.weight"]
    assert "Replicate" in placements["2.bias"] and placements["4.weight"] == "plain"


@pytest.mark.parametrize("engine", ["fsdp2", "fsdp1", "fsdp1_nested", "tensor_parallel"])
def test_sharded_parameters_get_the_full_batch_norms_under_their_own_names(ranks, engine):
    ref_rows, _, ref_losses = _reference()
    for rank, result in enumerate(ranks):
        _assert_rows_equal(result[engine]["rows"], ref_rows, STATS)
    assert ranks[0][engine]["rows"] == ranks[1][engine]["rows"]  # every rank, the same numbers
    if engine != "tensor_parallel":
        for result in ranks:
            assert result[engine]["losses"] == pytest.approx(ref_losses, rel=1e-5)  # the mean of the halves
    if engine == "fsdp2":  # from the local shards: no parameter gathered
        assert [r["fsdp2"]["gathers"] for r in ranks] == [{"full_tensor": 0, "redistribute": 0}] * WORLD


def test_partial_gradients_of_sequence_parallel_are_summed_before_their_norms(ranks):
    # reference: plain autograd, one process, the same input (tensor parallel: every rank has
    # all of it). Each rank's loss is the mean over its half of the sequence (the output is
    # Shard(1), handed back as the local tensor), and backward runs on each: the gradient is
    # that of the halves' means summed, WORLD times the full mean's.
    model = _sp_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x = _sp_input()
    expected = {}
    for step in range(STEPS):
        opt.zero_grad()
        (WORLD * model(x).pow(2).mean()).backward()
        for n, p in model.named_parameters():
            expected[(step, n)] = (p.grad.norm().item(), p.grad.abs().max().item(), p.detach().norm().item())
        opt.step()
    for result in ranks:
        res = result["sequence_parallel"]
        assert "Partial" in res["grad_placements"]["0.weight"]  # (what makes this test bite)
        assert res["summed"] == {"zero": 2 * STEPS}  # LayerNorm's weight and bias; none with ranks="local"
        got = {(r["step"], r["param"]): (r["grad_norm"], r["grad_max"], r["weight_norm"]) for r in res["rows"]}
        assert set(got) == set(expected)
        for key, want in expected.items():
            assert got[key] == pytest.approx(want, rel=1e-5), key
    assert ranks[0]["sequence_parallel"]["rows"] == ranks[1]["sequence_parallel"]["rows"]


def test_fsdp1_without_orig_params_gives_the_flat_parameters_global_norms_and_warns(ranks):
    # the unit's flat parameter holds every parameter: its norms are those of all of them together
    ref_rows, _, _ = _reference()
    for result in ranks:
        res = result["fsdp1_flat"]
        assert res["warned"] == 1
        assert {r["param"] for r in res["rows"]} == {"_flat_param"}
        for step in range(STEPS):
            got = next(r for r in res["rows"] if r["step"] == step)
            for stat in ("grad_norm", "weight_norm"):
                expected = math.sqrt(sum(r[stat] ** 2 for r in ref_rows if r["step"] == step))
                assert got[stat] == pytest.approx(expected, rel=1e-5), (step, stat)


@pytest.mark.parametrize("engine", ["fsdp1", "fsdp1_nested"])
def test_fsdp1_activation_statistics_are_those_of_the_full_batch(ranks, engine):
    _, ref_layers, _ = _reference(activations=True)
    for result in ranks:
        _assert_rows_equal(result[engine]["layers"], ref_layers, ACT, key="layer", rel=1e-4)


def test_ddp_activation_statistics_are_those_of_the_full_batch(ranks):
    ref_rows, ref_layers, ref_losses = _reference(activations=True)
    for result in ranks:
        res = result["ddp_activations"]
        _assert_rows_equal(res["rows"], ref_rows, STATS)
        # sums, counts and per-unit counts pool exactly; the std to float32 rounding
        _assert_rows_equal(res["layers"], ref_layers, ACT, key="layer", rel=1e-4)
        assert res["losses"] == pytest.approx(ref_losses, rel=1e-5)
    assert ranks[0]["ddp_activations"]["findings"] == ranks[1]["ddp_activations"]["findings"]


def test_every_rank_finds_the_full_batch_findings_from_rank_local_activations(ranks):
    # reference: one process on the full batch (the two halves together)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = _findings_data()
    with gradlens.watch(model, opt, activations=1, update_every=1, thresholds=_AT_ONCE) as mon:
        _train(model, opt, mon, x, y)
    expected = sorted([f.kind, f.layer, f.step] for f in mon.findings)
    assert ["saturation", "3", 0] in expected
    for result in ranks:
        assert result["ddp_findings"]["zero"] == expected
    # guard: each rank's own activations disagree (rank 0 alone sees no saturation)
    local = [r["ddp_findings"]["local"] for r in ranks]
    assert not any(f[0] == "saturation" for f in local[0]) and ["saturation", "3", 0] in local[1], local


def test_the_loss_is_the_mean_of_the_ranks_losses_and_ranks_local_keeps_its_own(ranks):
    res = [r["ranks_all"] for r in ranks]
    for step in range(STEPS):
        own = [r["own"][step] for r in res]
        assert abs(own[0] - own[1]) > 1e-4  # the halves differ (by 100x the tolerance below): pooling is tested
        for r in res:
            assert r["pooled"][step] == pytest.approx(sum(own) / WORLD, rel=1e-6)
    for r in res:
        assert r["local"] == pytest.approx(r["own_local"], rel=1e-6)


def test_rank_zero_writes_the_one_event_file(spawned):
    _, tmp = spawned
    files = glob.glob(str(tmp / "tb_zero" / "**" / "events.out.tfevents.*"), recursive=True)
    assert len(files) == 1, files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(files[0])
    acc.Reload()
    assert "gradlens/loss" in acc.Tags()["scalars"]


def test_ranks_all_writes_one_subdirectory_per_rank(spawned):
    _, tmp = spawned
    files = sorted(os.path.relpath(f, tmp / "tb_all")
                   for f in glob.glob(str(tmp / "tb_all" / "**" / "events.out.tfevents.*"), recursive=True))
    assert [os.path.dirname(f) for f in files] == ["rank0", "rank1"], files


@pytest.mark.parametrize("scenario", ["halt_nan", "halt_rank_local"])
def test_a_problem_on_one_rank_halts_both_at_the_same_step(ranks, scenario):
    halts = [r[scenario]["halted"] for r in ranks]
    assert all(h is not None for h in halts), halts
    # both raise from the same optimizer.step(): no rank goes on to the next step
    assert halts[0]["steps_seen"] == halts[1]["steps_seen"]
    if scenario == "halt_nan":
        assert [h["step"] for h in halts] == [NAN_STEP, NAN_STEP]
        assert halts[0]["steps_seen"] == NAN_STEP + 1
        assert all(h["seconds"] < 30 for h in halts)
    assert {h["kind"] for h in halts} == {"nonfinite" if scenario == "halt_nan" else "exploding"}


@pytest.mark.parametrize("scenario", ["uneven", "uneven_unfused"])
def test_ranks_with_different_step_counts_close_without_hanging(ranks, scenario):
    long, short = ranks[0][scenario], ranks[1][scenario]
    assert long["steps"] == [0, 1, 2, 3, 4] and short["steps"] == [0, 1]
    assert long["losses"][:2] == pytest.approx(short["losses"], rel=1e-6)  # pooled while both watched
    # after rank 1 left, rank 0's losses are its own again (rank 1's zeros are left out)
    assert all(math.isfinite(v) and v > 0 for v in long["losses"])
    assert long["seconds"] < 60 and short["seconds"] < 60
    # layer 0 unfrozen at step 3, after rank 1 left: rank 0's own gradients, from a larger packet
    assert long["first"][:3] == [None, None, None] and short["first"] == [None, None]
    assert long["first"][3:] == pytest.approx(long["own_first"], rel=1e-6)


def test_an_exception_in_one_ranks_diagnosis_does_not_hang_the_other(ranks):
    stays, raises = ranks[0]["callback_raises"], ranks[1]["callback_raises"]
    assert raises["raised"] == "exploding"
    assert 0 < len(raises["steps"]) < 5 and raises["steps"] == list(range(len(raises["steps"])))  # stopped early
    assert stays["raised"] is None and stays["steps"] == [0, 1, 2, 3, 4]
    assert stays["seconds"] < 30 and raises["seconds"] < 30


@pytest.mark.parametrize("engine", ["fsdp2", "fsdp1", "ddp"])
def test_non_finite_counts_of_a_broken_step_are_global(ranks, engine):
    # sharded: the elements every rank poisoned in its own part, summed (2 + 3 NaN and one
    # Inf a rank); replicated (DDP): the 3 elements, counted once. The other parameters: 0.
    expected = 3 if engine == "ddp" else 2 + 3 + 2
    for result in ranks:
        rows = {(r["step"], r["param"]): r for r in result["nonfinite"][engine]}
        assert rows[(1, "2.weight")]["nonfinite"] == expected
        assert rows[(1, "2.weight")]["grad_norm"] is None  # (NaN: no norm retaken)
        assert rows[(0, "2.weight")]["nonfinite"] == 0
        assert all(r["nonfinite"] == 0 for (step, name), r in rows.items() if name != "2.weight"), rows
    assert ranks[0]["nonfinite"][engine] == ranks[1]["nonfinite"][engine]


def test_an_overflowed_shard_norm_is_taken_again_globally(ranks):
    for result in ranks:
        row = next(r for r in result["overflow"]["rows"] if r["step"] == 1 and r["param"] == "0.weight")
        assert row["grad_norm"] == pytest.approx(1e22, rel=1e-5)  # not one half's 7.07e21
        assert row["nonfinite"] == 0  # finite elements: an overflowed norm, not a NaN/Inf
    assert ranks[0]["overflow"]["rows"] == ranks[1]["overflow"]["rows"]


@pytest.mark.parametrize("scenario", ["mismatch", "mismatch_same_size"])
def test_ranks_whose_layouts_differ_keep_their_own_values_for_that_step(ranks, scenario):
    # mismatch: one more module traced on rank 1; same size: another module, outputs of the same size
    res = [r[scenario] for r in ranks]
    for r in res:
        assert r["warned"] == 1
        assert r["losses"][1] == pytest.approx(r["own"][1], rel=1e-6)  # its own: the packets differed
        for step in (0, 2):  # pooled before and after
            assert r["losses"][step] == pytest.approx((res[0]["own"][step] + res[1]["own"][step]) / 2, rel=1e-6)
    assert abs(res[0]["own"][1] - res[1]["own"][1]) > 1e-4  # (so the step-1 check can fail)
    assert res[0]["per_step"] == res[1]["per_step"] == [2, 1, 1]  # one round, also where they differ


def test_one_collective_per_logged_step_once_the_layout_is_agreed(ranks):
    for result in ranks:
        res = result["collectives"]
        assert res["plain"]["fused"]
        assert res["plain"]["traced"] == [True, False, True, False, True]  # (so layouts alternate)
        # the first logged step agrees on the layout (header round, then data); then one round
        # a step, traced steps and untraced ones alike (the smaller packet rides padded)
        assert res["plain"]["per_step"] == [2, 1, 1, 1, 1]
        # halt_on: one more round after each diagnosis (see gradlens.monitor.distributed)
        assert res["halt_on"]["per_step"] == [3, 2, 2, 2, 2]
        assert res["plain"]["close"] == res["halt_on"]["close"] == 1  # leave(): all ranks close together
        # unfused (NCCL's protocol, here on gloo): a header round, then the data; the same values
        assert not res["unfused"]["fused"]
        assert res["unfused"]["per_step"] == [2, 2, 2, 2, 2] and res["unfused"]["close"] == 1
        for variant in ("halt_on", "unfused"):
            assert res[variant]["rows"] == res["plain"]["rows"]
            assert res[variant]["layers"] == res["plain"]["layers"]
    assert ranks[0]["collectives"]["plain"]["rows"] == ranks[1]["collectives"]["plain"]["rows"]


def test_a_round_header_survives_its_float32_encoding_exactly():
    # the fused round carries its header as float32 values in front of the data: sizes and
    # checksums up to 32 bits come back exactly (a float32 holds integers up to 2**24 only)
    import numpy as np

    from gradlens.monitor import distributed

    rows = [(1, 1, 2**31 - 1, 0xFFFFFFFF, 7), (0, 2, 0, 0, 0), (1, 3, 65536, 65535, 1), (1, 1, 2**24 + 1, 2**24 + 3, 0)]
    head = np.array([distributed._encode(*r) for r in rows], dtype=np.float32)
    assert distributed._decode(head).tolist() == [list(r) for r in rows]
