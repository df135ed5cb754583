"""The deferred host copy (what a GPU gets: non-blocking into pinned memory, read
when published), exercised on CPU by making CPU copies deferred too and holding
them "in flight" until a test lets them arrive.

References: the same training run with the ordinary synchronous copy (records
must be identical), and torch's own NaN counts of the gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import gradlens
import gradlens.monitor.packet as packet_mod
import gradlens.monitor.publish as publish_mod
from watch_helpers import mlp, train

BATCH = publish_mod.PUBLISH_BATCH


class _Flight:
    """Controls when deferred copies arrive, and counts the reads that wait."""

    def __init__(self, monkeypatch) -> None:
        self.arrived = False
        self.made = 0
        self.reads = 0
        flight = self
        real_init, real_get = packet_mod.HostCopy.__init__, packet_mod.HostCopy.get

        def init(copy, flat):
            flight.made += 1
            real_init(copy, flat)

        def get(copy):
            if copy._values is None:
                flight.reads += 1
            return real_get(copy)

        monkeypatch.setattr(packet_mod, "defers", lambda device: True)
        monkeypatch.setattr(packet_mod.HostCopy, "__init__", init)
        monkeypatch.setattr(packet_mod.HostCopy, "ready", lambda copy: copy._values is not None or flight.arrived)
        monkeypatch.setattr(packet_mod.HostCopy, "get", get)
        monkeypatch.setattr(publish_mod, "PUBLISH_SECONDS", math.inf)


@pytest.fixture
def flight(monkeypatch):
    return _Flight(monkeypatch)


def _run(steps: int, **kw):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradlens.watch(model, opt, **kw) as mon:
        train(model, opt, steps, mon=mon)
    return mon


def test_deferred_copies_give_the_records_of_the_synchronous_copy(monkeypatch):
    kw = dict(activations=3, update_every=2)
    reference = _run(2 * BATCH + 7, **kw)
    with monkeypatch.context() as m:
        flight = _Flight(m)
        flight.arrived = True  # arrived, but only read when published
        deferred = _run(2 * BATCH + 7, **kw)
    assert flight.made == 2 * BATCH + 7
    for level in ("param", "layer"):
        pd.testing.assert_frame_equal(deferred.dataframe(level), reference.dataframe(level))
    assert [r.loss for r in deferred.records()] == [r.loss for r in reference.records()]


def test_nothing_is_read_at_the_step_while_copies_are_in_flight(flight):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradlens.watch(model, opt)
    train(model, opt, BATCH + 3, mon=mon)
    assert flight.reads == 0  # no logged step waited for its copy
    assert len(mon._publisher.queue) == BATCH + 3  # due, but nothing arrived: kept
    flight.arrived = True
    train(model, opt, 1, mon=mon)  # the next due batch publishes what arrived ...
    # ... but the newest step, whose loss may still come after its step()
    # (its own copy, just made, is checked at the next zero_grad or forward, not read yet)
    assert [s for s, _ in mon._publisher.queue] == [BATCH + 3] and flight.reads == BATCH + 3
    refs = train(model, opt, 2, mon=mon)
    flight.arrived = False
    df = mon.dataframe().set_index(["step", "param"])  # reading waits for the rest
    assert df.loc[(BATCH + 5, "0.weight"), "grad_norm"] == pytest.approx(refs[1]["0.weight"][0], rel=1e-6)
    mon.close()


def test_a_callback_reads_each_step_at_once(flight):
    mon = _run(3, on_finding=lambda f: None)
    assert flight.made == 0  # values needed at the step: the synchronous copy
    assert len(mon.records()) == 3


def _nan_step(model, opt, mon):
    """One step whose gradients hold 3 NaN (0.weight) and an overflowing norm (2.weight)."""
    opt.zero_grad()
    model(torch.randn(5, 6)).pow(2).mean().backward()
    model[0].weight.grad[0, :3] = float("nan")
    model[2].weight.grad.fill_(1e30)  # every element finite, ||g|| = inf in float32
    opt.step()


def test_a_nan_found_at_zero_grad_gets_exact_counts(flight):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = gradlens.watch(model, opt)
    train(model, opt, 2, mon=mon)
    _nan_step(model, opt, mon)
    assert not any(f.kind == "nonfinite" for f in mon._publisher.findings)
    flight.arrived = True
    with pytest.warns(RuntimeWarning, match="nonfinite"):
        opt.zero_grad()  # the copy arrived: checked here, while the gradients still exist
    assert mon._publisher.queue == []  # a broken step is published at once
    df = mon.dataframe().set_index(["step", "param"])
    assert df.loc[(2, "0.weight"), "nonfinite"] == 3
    assert df.loc[(2, "2.weight"), "nonfinite"] == 0  # overflow, not NaN/Inf
    assert df.loc[(2, "0.bias"), "nonfinite"] == 0
    mon.close()


def test_a_nan_found_after_the_gradients_moved_on_is_still_reported(flight):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = gradlens.watch(model, opt)
    _nan_step(model, opt, mon)
    opt.zero_grad()
    model(torch.randn(5, 6))  # the next forward: the last chance passed, still in flight
    assert mon._collector._unchecked and mon._collector._unchecked[0].grads is None
    flight.arrived = True
    with pytest.warns(RuntimeWarning, match="nonfinite"):
        df = mon.dataframe().set_index(["step", "param"])
    assert df.loc[(0, "0.weight"), "nonfinite"] == 1  # a lower bound: max|g| is NaN
    assert df.loc[(0, "2.weight"), "nonfinite"] == 0  # exact: max|g| is finite
    assert np.isnan(df.loc[(0, "0.weight"), "grad_norm"])
    assert [f.kind for f in mon.findings] == ["nonfinite"]
    mon.close()


def test_gradients_zeroed_in_place_before_the_copy_arrived_give_bounds(flight):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = gradlens.watch(model, opt)
    _nan_step(model, opt, mon)
    opt.zero_grad(set_to_none=False)  # not arrived yet; then the values are gone
    flight.arrived = True
    with pytest.warns(RuntimeWarning, match="nonfinite"):
        df = mon.dataframe().set_index(["step", "param"])
    assert df.loc[(0, "0.weight"), "nonfinite"] == 1
    mon.close()


def test_close_leaves_nothing_in_flight(flight):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = (len(model._forward_pre_hooks), len(opt._optimizer_step_pre_hooks))
    mon = gradlens.watch(model, opt)
    assert len(model._forward_pre_hooks) == before[0] + 1  # the forward poll of deferred copies
    train(model, opt, 3, mon=mon)
    mon.close()
    assert mon._collector._unchecked == [] and mon._publisher.queue == []
    assert (len(model._forward_pre_hooks), len(opt._optimizer_step_pre_hooks)) == before
    assert [r.step for r in mon.records()] == [0, 1, 2]
