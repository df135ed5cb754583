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
    with gradlens.watch(model, opt, update_every=1) as mon:
        _train(model, opt, mon, _shard(x, rank), _shard(y, rank))
    local = {n: list(p.to_local().shape) for n, p in model.named_parameters()}
    return {"rows": _rows(mon), "losses": [r.loss for r in mon.records()], "local_shapes": local}


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


def _ddp_activations(rank, tmp):
    ddp = nn.parallel.DistributedDataParallel(mlp())
    opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    with gradlens.watch(ddp, opt, activations=1, update_every=1, logdir=str(tmp / "tb_zero")) as mon:
        _train(ddp, opt, mon, _shard(x, rank), _shard(y, rank))
    return {"rows": _rows(mon), "layers": _layer_rows(mon), "losses": [r.loss for r in mon.records()],
            "findings": sorted((f.kind, f.layer, f.step) for f in mon.findings)}


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


def _uneven(rank, tmp):
    import torch.distributed as dist

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = _data()
    steps = 5 if rank == 0 else 2
    t0 = time.monotonic()
    with gradlens.watch(model, opt, activations=2) as mon:
        _train(model, opt, mon, _shard(x, rank), _shard(y, rank), steps=steps)
    seconds = time.monotonic() - t0
    dist.barrier()  # the ranks' collectives are still in step after both closed
    return {"steps": [r.step for r in mon.records()], "losses": [r.loss for r in mon.records()],
            "seconds": seconds}


SCENARIOS = {
    "fsdp2": _fsdp2, "tensor_parallel": _tensor_parallel, "ddp_activations": _ddp_activations,
    "ranks_all": _ranks_all, "halt_nan": _halt_nan, "halt_rank_local": _halt_rank_local, "uneven": _uneven,
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
    placements = ranks[0]["tensor_parallel"]["placements"]
    assert "Shard(dim=0)" in placements["0.weight"] and "Shard(dim=1)" in placements["2.weight"]
    assert "Replicate" in placements["2.bias"] and placements["4.weight"] == "plain"


@pytest.mark.parametrize("engine", ["fsdp2", "tensor_parallel"])
def test_sharded_parameters_get_the_full_batch_norms_under_their_own_names(ranks, engine):
    ref_rows, _, ref_losses = _reference()
    for rank, result in enumerate(ranks):
        _assert_rows_equal(result[engine]["rows"], ref_rows, STATS)
    assert ranks[0][engine]["rows"] == ranks[1][engine]["rows"]  # every rank, the same numbers
    if engine == "fsdp2":
        for result in ranks:
            assert result["fsdp2"]["losses"] == pytest.approx(ref_losses, rel=1e-5)  # the mean of the halves


def test_ddp_activation_statistics_are_those_of_the_full_batch(ranks):
    ref_rows, ref_layers, ref_losses = _reference(activations=True)
    for result in ranks:
        res = result["ddp_activations"]
        _assert_rows_equal(res["rows"], ref_rows, STATS)
        # sums, counts and per-unit counts pool exactly; the std to float32 rounding
        _assert_rows_equal(res["layers"], ref_layers, ACT, key="layer", rel=1e-4)
        assert res["losses"] == pytest.approx(ref_losses, rel=1e-5)
    assert ranks[0]["ddp_activations"]["findings"] == ranks[1]["ddp_activations"]["findings"]


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


def test_ranks_with_different_step_counts_close_without_hanging(ranks):
    long, short = ranks[0]["uneven"], ranks[1]["uneven"]
    assert long["steps"] == [0, 1, 2, 3, 4] and short["steps"] == [0, 1]
    assert long["losses"][:2] == pytest.approx(short["losses"], rel=1e-6)  # pooled while both watched
    # after rank 1 left, rank 0's losses are its own again (rank 1's zeros are left out)
    assert all(math.isfinite(v) and v > 0 for v in long["losses"])
    assert long["seconds"] < 60 and short["seconds"] < 60
