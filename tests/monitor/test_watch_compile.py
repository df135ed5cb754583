"""watch() on a torch.compile'd model adds no graph break and no recompilation
(counted with torch._dynamo's own counters), logged steps and unlogged alike."""

from __future__ import annotations

import warnings

import torch

import gradlens


def _train(cm, opt, n, mon=None):
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        opt.zero_grad()
        loss = cm(torch.randn(4, 6, generator=gen)).pow(2).mean()
        if mon is not None:
            mon.observe_loss(loss)
        loss.backward()
        opt.step()


def test_no_graph_breaks_and_no_recompiles_under_watch():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cm = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _train(cm, opt, 2)  # compiled once, before gradlens
        counters.clear()
        with gradlens.watch(cm, opt, every=2, activations=True) as mon:  # (tracing is off for compiled models)
            _train(cm, opt, 6, mon)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 0  # nothing compiled again
    assert [r.step for r in mon.records()] == [0, 2, 4]


import pytest  # noqa: E402


@pytest.mark.parametrize("activations", [False, 2], ids=["default", "activations"])
def test_compiling_after_watch_traces_no_gradlens_code(activations):
    # gradlens's module hooks are registered first, so torch.compile traces them: they
    # must do nothing while compiling (they had .item() graph breaks and removed
    # handles inside the graph)
    import logging

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mon = gradlens.watch(model, opt, every=2, activations=activations)
        cm = torch.compile(model, backend="eager")
        counters.clear()
        _train(cm, opt, 12, mon)
        mon.close()
    assert dict(counters["graph_break"]) == {}
    # tracing's hooks are on only on traced steps: two graphs, each compiled once and
    # reused as the cadence toggles (no recompilation per step, no recompile limit)
    # (default: the model-output hook is armed on its own cadence too, every 5th logged
    # step: graphs with the order probe's and output hooks, the output hook alone, none)
    # (with activations: the tracer's hooks and the NaN replay's output capture make 3 graphs
    # too, the same count after 40 steps: bounded, not one per step)
    assert counters["stats"]["unique_graphs"] == 3
    assert [r.step for r in mon.records()] == [0, 2, 4, 6, 8, 10]
    assert all(r.loss is not None for r in mon.records())
