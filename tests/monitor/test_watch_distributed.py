"""gradlens.watch under DistributedDataParallel: 2 CPU processes, gloo backend.

One spawn per module (a few seconds): each rank trains a DDP copy of the same
model on its own half of a fixed batch, with ``gradlens.watch(ddp_model, opt)``,
then closes the monitor and trains on. Each rank writes what it saw to a JSON file;
the tests assert in this process against an independent reference: a plain,
single-process copy of the model trained on the full batch. After DDP's all-reduce
every rank holds the full-batch mean gradient, so that is what gradlens must record.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlens
from watch_helpers import full_batch, gloo_available, mlp, rank_slice, spawn_ranks


pytestmark = pytest.mark.skipif(not gloo_available(), reason="torch.distributed with gloo is unavailable")

WORLD = 2
BATCH = 8  # full batch; rank r trains on rows [r * 4, r * 4 + 4)
WATCHED_STEPS = 3
STEPS_AFTER_CLOSE = 2
LR = 0.1
#: gradlens.watch options per scenario; "activations" adds forward hooks to the DDP model
SCENARIOS = {"default": {}, "activations": {"activations": 1, "update_every": 1}}
DEADLINE_S = 90  # a hung collective fails the test instead of hanging pytest


def _data():
    return full_batch(BATCH)


def _shard(t, rank):
    return rank_slice(t, rank, WORLD)


def _grad_norms(model):
    return {n: p.grad.norm().item() for n, p in model.named_parameters()}


def _hooks(model, opt):
    """Every hook count gradlens could leave on the model (all modules, all params) or optimizer."""
    counts = {}
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            counts[f"{name or '(root)'}/{attr}"] = len(getattr(m, attr))
    for name, p in model.named_parameters():
        counts[f"{name}/tensor_hooks"] = len(p._backward_hooks or {})
        counts[f"{name}/post_accumulate_hooks"] = len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
    counts["opt/step_pre"] = len(opt._optimizer_step_pre_hooks)
    counts["opt/step_post"] = len(opt._optimizer_step_post_hooks)
    counts["opt/zero_grad_patched"] = int("zero_grad" in vars(opt))
    return counts


def _run_rank(rank, out_dir):
    """One DDP rank: watched steps, close, unwatched steps; what it saw, per scenario."""
    x, y = _data()
    xs, ys = _shard(x, rank), _shard(y, rank)
    out = {}
    for scenario, options in SCENARIOS.items():
        ddp = nn.parallel.DistributedDataParallel(mlp())
        opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
        before = _hooks(ddp, opt)
        mon = gradlens.watch(ddp, opt, **options)
        open_hooks = _hooks(ddp, opt)
        for _ in range(WATCHED_STEPS):
            opt.zero_grad()
            F.mse_loss(ddp(xs), ys).backward()
            opt.step()
        df = mon.dataframe()
        layers = mon.records()[-1].layers
        mon.close()
        after = _hooks(ddp, opt)
        grads_after_close = []
        for _ in range(STEPS_AFTER_CLOSE):
            opt.zero_grad()
            F.mse_loss(ddp(xs), ys).backward()
            grads_after_close.append(_grad_norms(ddp))
            opt.step()
        out[scenario] = {
            "rows": df[["step", "param", "layer", "grad_norm"]].to_dict("records"),
            "layers": layers,
            "rows_after_close": len(mon.dataframe()),
            "hooks": {"before": before, "open": open_hooks, "after": after},
            "grads_after_close": grads_after_close,
            "weights": {n: p.detach().flatten().tolist() for n, p in ddp.named_parameters()},
        }
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Spawn the 2 ranks once; their JSON results, indexed by rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    return spawn_ranks(_run_rank, tmp, world=WORLD, deadline_s=DEADLINE_S)


@pytest.fixture(scope="module")
def reference():
    """Plain single-process training on the full batch: grad norms per step, final weights."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    x, y = _data()
    norms, shard_norms = [], []
    for _ in range(WATCHED_STEPS + STEPS_AFTER_CLOSE):
        # what each rank's local gradient would be before the all-reduce
        local = []
        for rank in range(WORLD):
            opt.zero_grad()
            F.mse_loss(model(_shard(x, rank)), _shard(y, rank)).backward()
            local.append(_grad_norms(model))
        shard_norms.append(local)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        norms.append(_grad_norms(model))
        opt.step()
    weights = {n: p.detach().flatten().tolist() for n, p in model.named_parameters()}
    return {"norms": norms, "shard_norms": shard_norms, "weights": weights, "names": list(norms[0])}


def _recorded(result):
    """grad_norm per (step, parameter name) from one rank's dataframe rows."""
    return {(row["step"], row["param"]): row["grad_norm"] for row in result["rows"]}


def test_shards_give_ranks_different_local_gradients(reference):
    # Guards the other tests' power: statistics taken before the all-reduce would
    # differ between ranks and from the full-batch value by far more than rtol.
    for step in range(WATCHED_STEPS):
        local = reference["shard_norms"][step]
        for name, full in reference["norms"][step].items():
            assert local[0][name] != pytest.approx(local[1][name], rel=1e-2), (step, name)
            for rank in range(WORLD):
                assert local[rank][name] != pytest.approx(full, rel=1e-2), (step, rank, name)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_grad_norm_is_the_all_reduced_full_batch_gradient(ranks, reference, scenario):
    per_rank = [_recorded(r[scenario]) for r in ranks]
    expected = {(s, n): reference["norms"][s][n] for s in range(WATCHED_STEPS) for n in reference["names"]}
    for rank, got in enumerate(per_rank):
        assert set(got) == set(expected), rank
        for key, ref in expected.items():
            assert got[key] == pytest.approx(ref, rel=1e-5), (rank, key)
    for key in expected:  # the ranks agree with each other, tighter than with the reference
        assert per_rank[0][key] == pytest.approx(per_rank[1][key], rel=1e-6), key


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_names_are_the_unwrapped_models(ranks, reference, scenario):
    # gradlens names parameters and layers as the model inside DDP does (no
    # "module." prefix, as with torch.compile's "_orig_mod."), so a DDP run lines
    # up with a single-process one. Same names on every rank.
    names = reference["names"]
    for result in ranks:
        rows = result[scenario]["rows"]
        assert sorted({r["param"] for r in rows}) == sorted(names)
        for r in rows:
            assert r["layer"] == r["param"].rpartition(".")[0]
    traced = ["0", "1", "2", "3", "4"]
    expected_layers = traced if SCENARIOS[scenario].get("activations") else ["0", "2", "4"]
    assert [r[scenario]["layers"] for r in ranks] == [expected_layers] * WORLD


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_close_removes_every_hook_and_ddp_trains_on(ranks, reference, scenario):
    for rank, result in enumerate(ranks):
        res = result[scenario]
        hooks = res["hooks"]
        assert hooks["open"] != hooks["before"], rank  # the check below can fail
        assert hooks["after"] == hooks["before"], rank
        assert res["rows_after_close"] == len(res["rows"])  # nothing recorded after close
        # the all-reduce still runs: full-batch gradients, then the same weights as the reference
        for i, norms in enumerate(res["grads_after_close"]):
            ref = reference["norms"][WATCHED_STEPS + i]
            for name, value in norms.items():
                assert value == pytest.approx(ref[name[len("module."):]], rel=1e-5), (rank, i, name)
        for name, value in res["weights"].items():
            ref = reference["weights"][name[len("module."):]]
            assert len(value) == len(ref)
            assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(value, ref)), (rank, name)
