"""The vectorized record of a fully measured step equals the general record.

``Monitor._build_record`` takes a fast path when every watched parameter stepped and
had a gradient; the general path handles every other step. Both must give the very
same :class:`StepRecord` and history mask, including NaN/Inf statistics, update ratios
on some steps only, several parameters per layer and block grouping.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradlens
from gradlens.monitor.monitor import Monitor


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.mark.parametrize("group_depth", [None, 1], ids=["layers", "blocks"])
@pytest.mark.parametrize("poison", [False, True], ids=["finite", "nan-grad"])
def test_fast_record_equals_general_record(group_depth, poison, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8)),
        nn.ReLU(),
        nn.Linear(8, 3),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pairs = []
    fast, general = Monitor._build_full_record, Monitor._build_general_record

    def both(self, step, pend):
        saved_origin = self._origin
        ref_pend = {k: (v if k == "layout" else copy.deepcopy(v)) for k, v in pend.items()}
        ref = general(self, step, ref_pend)
        self._origin = saved_origin  # both builders consume the pending origin
        out = fast(self, step, pend)
        pairs.append((ref, out, ref_pend["present"], pend["present"]))
        return out

    monkeypatch.setattr(Monitor, "_build_full_record", both)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the planted NaN is reported, as it should
        with gradlens.watch(model, opt, group_depth=group_depth, update_every=2):
            for step in range(4):
                opt.zero_grad()
                model(torch.randn(5, 6)).pow(2).mean().backward()
                if poison and step == 2:
                    model[2].weight.grad[0, 0] = float("nan")
                opt.step()
    assert len(pairs) == 4  # every step took the fast path
    for ref, out, ref_present, present in pairs:
        for field in ("step", "layers", "loss", "nonfinite_origin"):
            assert getattr(out, field) == getattr(ref, field), field
        assert _same(out.stats, ref.stats)
        assert _same(out.param_stats, ref.param_stats)
        np.testing.assert_array_equal(present, ref_present)
    assert any("update_ratio" in out.stats for _, out, _, _ in pairs)  # measured on some steps ...
    assert not all("update_ratio" in out.stats for _, out, _, _ in pairs)  # ... not on all
    if poison:
        assert any(math.isnan(out.get("grad_norm", "2")) for _, out, _, _ in pairs)
