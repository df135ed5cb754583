"""Per-layer statistics are built from the parameters' own numbers, checked against torch.

Several parameters per layer, block grouping (``group_depth``), update ratios on some
steps only, and a NaN gradient: every layer value equals the one computed directly
from torch's tensors (norms combine as sqrt of summed squares, max as max, counts add).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradlens


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8)),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def _layer_of(name: str, group_depth) -> str:
    parts = name.split(".")[:-1]  # drop "weight"/"bias"
    return parts[0] if group_depth == 1 else ".".join(parts)


@pytest.mark.parametrize("group_depth", [None, 1], ids=["layers", "blocks"])
@pytest.mark.parametrize("poison", [False, True], ids=["finite", "nan-grad"])
def test_layer_stats_equal_torch(group_depth, poison):
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the planted NaN is reported, as it should
        # (saturation=False: the probe's bounded-module rows are not parameter layers)
        with gradlens.watch(model, opt, group_depth=group_depth, update_every=2, saturation=False) as mon:
            for step in range(4):
                opt.zero_grad()
                model(torch.randn(5, 6)).pow(2).mean().backward()
                if poison and step == 2:
                    model[2].weight.grad[0, 0] = float("nan")
                before = {n: p.detach().clone() for n, p in model.named_parameters()}
                grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
                opt.step()
                after = {n: p.detach().clone() for n, p in model.named_parameters()}
                refs.append((grads, before, after))
    records = mon.records()
    assert len(records) == 4
    for step, (rec, (grads, before, after)) in enumerate(zip(records, refs)):
        layers = {}
        for name in grads:
            layers.setdefault(_layer_of(name, group_depth), []).append(name)
        assert set(rec.layers) == set(layers)
        for layer, names in layers.items():
            gn = math.sqrt(sum(float(grads[n].double().norm()) ** 2 for n in names))
            gm = max(float(grads[n].abs().max()) for n in names) if not any(grads[n].isnan().any() for n in names) else math.nan
            wn = math.sqrt(sum(float(before[n].double().norm()) ** 2 for n in names))
            nf = sum(int((~torch.isfinite(grads[n])).sum()) for n in names)
            for stat, ref in (("grad_norm", gn), ("grad_max", gm), ("weight_norm", wn), ("nonfinite", nf)):
                got = rec.get(stat, layer)
                if math.isnan(ref):
                    assert math.isnan(got), (step, layer, stat)
                else:
                    assert got == pytest.approx(ref, rel=1e-5), (step, layer, stat)
            assert rec.get("missing_grad", layer) == 0
            if step % 2 == 0:  # update_every=2: measured on steps 0 and 2 only
                dw = math.sqrt(sum(float((after[n] - before[n]).double().norm()) ** 2 for n in names))
                got = rec.get("update_ratio", layer)
                if math.isfinite(dw):
                    assert got == pytest.approx(dw / wn, rel=1e-4), (step, layer)
            else:
                assert "update_ratio" not in rec.stats
    if poison:
        assert math.isnan(records[2].get("grad_norm", "2"))
