"""The ``scale`` rule: oversized weights, weights or activations growing by orders of magnitude.

Planted cases and their fixed twins on hand-built records, then a tiny Llama built
from config whose embedding is scaled by 1e4: ``scale`` names the embedding and the
``vanishing`` finding it causes links to it.
"""

from __future__ import annotations

import math

import pytest
import torch

import gradlens
from gradlens._record import StepRecord
from gradlens.diagnose import diagnose

from diag_scenarios import quiet

LAYERS = ["emb", "fc1", "fc2", "fc3"]
GRADS = {"emb": 0.5, "fc1": 0.5, "fc2": 0.4, "fc3": 0.3}


def rec(step, weights, grads=GRADS, **stats):
    s = {"grad_norm": dict(grads), "weight_norm": dict(weights)}
    s.update({k: dict(v) for k, v in stats.items()})
    return StepRecord(step, list(LAYERS), s)


def scale_findings(records, **kw):
    return [(f.layer, f.step, f.evidence) for f in diagnose(records, **kw) if f.kind == "scale"]


@pytest.mark.parametrize("factor, found", [
    pytest.param(1e4, True, id="embedding_x1e4"),
    pytest.param(2e3, True, id="embedding_x2e3"),
    pytest.param(30.0, False, id="fixed_twin_x30"),
    pytest.param(1.0, False, id="fixed_twin_x1"),
])
def test_oversized_weights_against_the_other_layers(factor, found):
    w = {"emb": 1.0 * factor, "fc1": 1.0, "fc2": 1.2, "fc3": 0.8}
    got = scale_findings([rec(i, w) for i in range(3)])
    assert [g[:2] for g in got] == ([("emb", 0)] if found else [])
    if found:
        assert got[0][2]["over_median"] == pytest.approx(factor / 1.0, rel=0.25)


def test_oversized_needs_its_window_and_three_layers():
    w = {"emb": 1e4, "fc1": 1.0, "fc2": 1.0, "fc3": 1.0}
    assert scale_findings([rec(i, w) for i in range(2)]) == []
    two = [StepRecord(i, ["a", "b"], {"grad_norm": {"a": 1.0, "b": 1.0}, "weight_norm": {"a": 1e4, "b": 1.0}})
           for i in range(3)]
    assert scale_findings(two) == []


def test_weights_growing_by_orders_of_magnitude():
    records = [rec(i, {"emb": 1.0, "fc1": 1.0 * 10 ** i, "fc2": 1.0, "fc3": 1.0}) for i in range(6)]
    got = scale_findings(records)
    assert got and got[0][0] == "fc1" and got[0][2]["growth"] >= 100
    assert got[0][1] == 2  # 100x at step 2; 1e4 (urgent) would be reported at once


def test_fixed_twin_weights_growing_a_few_times_are_fine():
    records = [rec(i, {"emb": 1.0, "fc1": 1.0 + i, "fc2": 1.0, "fc3": 1.0}) for i in range(10)]  # 10x at most
    assert scale_findings(records) == []


def test_zero_initialised_layers_do_not_count_as_growing():
    records = [rec(i, {"emb": 1.0, "fc1": 1.0, "fc2": 1.0, "fc3": 0.0 if i == 0 else 0.01 * 10 ** i})
               for i in range(6)]
    assert scale_findings(records) == []


def test_activations_growing_from_unit_scale_and_not_from_tiny():
    grow = [rec(i, {"emb": 1.0, "fc1": 1.0, "fc2": 1.0, "fc3": 1.0}, act_std={"fc2": 0.5 * 10 ** i})
            for i in range(6)]
    got = scale_findings(grow)
    assert got and got[0][0] == "fc2" and "act_std" in got[0][2]
    # fixed twin: a tiny-init net whose outputs recover from 1e-8 to 0.1
    tiny = [rec(i, {"emb": 1.0, "fc1": 1.0, "fc2": 1.0, "fc3": 1.0}, act_std={"fc2": 1e-8 * 10 ** i})
            for i in range(8)]
    assert scale_findings(tiny) == []


def test_a_vanishing_finding_behind_an_oversized_layer_links_to_it():
    w = {"emb": 1e4, "fc1": 1.0, "fc2": 1.0, "fc3": 1.0}
    vanish = {"emb": 1e-8, "fc1": 1e-7, "fc2": 1e-2, "fc3": 1.0}
    findings = diagnose([rec(i, w, vanish) for i in range(3)])
    scale = next(f for f in findings if f.kind == "scale")
    van = next(f for f in findings if f.kind == "vanishing")
    assert van.cause is scale
    assert "after weights out of scale at step 0 (||W|| 1.0e+04" in van.message
    assert van.message.endswith("a normalisation after it divides its gradient by the same factor")
    # fixed twin: the same vanishing gradients, weights in scale: no cause
    twin = diagnose([rec(i, {"emb": 1.0, "fc1": 1.0, "fc2": 1.0, "fc3": 1.0}, vanish) for i in range(3)])
    assert [f.cause for f in twin if f.kind == "vanishing"] == [None]


def _tiny_llama(scale, steps=6):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(scale)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(0))
    with quiet():
        with gradlens.watch(model, opt) as mon:
            for _ in range(steps):
                opt.zero_grad()
                out = model(input_ids=x, labels=x)
                mon.observe_loss(out.loss)
                out.loss.backward()
                opt.step()
    return mon.findings


def test_llama_embedding_scaled_by_1e4_is_named_and_causes_the_vanishing():
    findings = _tiny_llama(1e4)
    scale = [f for f in findings if f.kind == "scale"]
    assert [f.layer for f in scale] == ["model.embed_tokens"]
    van = [f for f in findings if f.kind == "vanishing"]
    assert van and all(f.cause is scale[0] for f in van)
    assert all("'model.embed_tokens'" in f.message for f in van)


def test_llama_fixed_twin_raises_nothing():
    assert [str(f) for f in _tiny_llama(1.0) if f.is_problem] == []


def test_scale_thresholds_cite_a_measurement():
    from gradlens.diagnose import THRESHOLDS

    for name in ("scale_oversized", "scale_growth", "urgent_factor"):
        assert "ours:" in THRESHOLDS[name].source and "corpus" in THRESHOLDS[name].source
    assert not math.isnan(THRESHOLDS["scale_oversized"].value)
