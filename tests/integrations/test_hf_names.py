"""Names and rows on HF models built from config: tied parameters once under their
first owner, no rows for modules no gradient flows through (references: the
models' own parameter objects and torch's gradients)."""

from __future__ import annotations

import warnings

import pytest
import torch

import gradlens

T = pytest.importorskip("transformers")


def test_a_tied_weight_is_reported_once_under_its_first_owner():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = T.BertForMaskedLM(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=37))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradlens.watch(model, opt, activations=1) as mon:
        ids = torch.randint(0, 64, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        ref = model.bert.embeddings.word_embeddings.weight.grad.norm().item()  # both uses summed
        opt.step()
    params = mon.dataframe()
    tied = params[params.param.str.endswith("word_embeddings.weight") | params.param.str.contains("decoder.weight")]
    assert tied.param.tolist() == ["bert.embeddings.word_embeddings.weight"]
    assert tied.grad_norm.iloc[0] == pytest.approx(ref, rel=1e-5)
    assert not params[["grad_norm", "weight_norm"]].isna().any().any()  # no row of NaN statistics


def test_modules_no_gradient_flows_through_are_not_rows():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, num_key_value_heads=2,
                                                 intermediate_size=37))
    assert not any(True for _ in model.model.rotary_emb.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradlens.watch(model, opt, activations=1) as mon:
        ids = torch.randint(0, 64, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    layers = set(mon.dataframe("layer").layer)
    assert "model.rotary_emb" not in layers
    assert "model.layers.0.mlp.act_fn" in layers  # a parameter-free module gradients flow through stays
