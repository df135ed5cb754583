"""group_depth="auto" finds the repeated-block level of real HF models built from
config (reference: the block names each library's own code uses)."""

from __future__ import annotations

import warnings

import pytest
import torch

import gradlens

T = pytest.importorskip("transformers")


def _models():
    return {
        "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=32)),
                 "transformer.h.", 2),
        "bert": (lambda: T.BertForMaskedLM(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                                        num_attention_heads=2, intermediate_size=37)),
                 "bert.encoder.layer.", 3),
        "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                                           num_attention_heads=2, num_key_value_heads=2,
                                                           intermediate_size=37)),
                  "model.layers.", 2),
        "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=64, d_model=32, d_ff=37, num_layers=3,
                                                               num_heads=2, d_kv=16)),
               "encoder.block.", 2),
    }


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "t5"])
def test_auto_groups_at_the_repeated_block(name):
    build, prefix, depth = _models()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = gradlens.watch(model, opt, group_depth="auto")
    assert mon._layouts.group_depth == depth
    ids = torch.randint(0, 64, (2, 8))
    kw = dict(decoder_input_ids=ids) if name == "t5" else {}
    model(input_ids=ids, labels=ids, **kw).loss.backward()
    opt.step()
    mon.close()
    layers = set(mon.dataframe("layer").layer)
    assert {f"{prefix}{i}" for i in range(3)} <= layers
    assert not any(layer.startswith(prefix + "0.") for layer in layers)  # nothing below the block
    assert len(layers) < 15


def test_auto_on_a_model_without_blocks_keeps_every_layer():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    mon = gradlens.watch(model, group_depth="auto")
    assert mon._layouts.group_depth is None
    mon.close()


def test_a_bad_group_depth_string_is_rejected():
    with pytest.raises(ValueError, match="expects an int >= 1, 'auto' or None"):
        gradlens.watch(torch.nn.Linear(2, 2), group_depth="deep")
