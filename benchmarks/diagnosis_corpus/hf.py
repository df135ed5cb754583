"""Tiny Hugging Face models built from config: healthy, and with planted problems.

Source: the model classes of ``transformers`` (``GPT2LMHeadModel``,
``BertForSequenceClassification``, ``LlamaForCausalLM``), built from a config (no
download), d_model 32, 2 layers, 2 heads, vocabulary 256, sequences of 16 tokens of
:func:`~.case.tokens` (a noisy cyclic walk from a fixed seed; BERT classifies whether
a sequence's stride is 1), trained on CPU with AdamW at lr 3e-3, 150 steps of 16
sequences (healthy, measured when the corpus was written: GPT-2's loss falls from
5.56 (ln 256 = 5.55) to 1.43, Llama's from 5.56 to 0.43, BERT's from 0.69 to 0.001;
under a second each). Each planted problem changes one thing of the healthy program:

* ``lr_100``: AdamW at lr 100 (issue 12 problem 6: GPT-2's loss goes 6.97 -> 226,258
  at step 1). No layer: the learning rate is global.
* ``exploding_head``: the layer after the last norm (GPT-2's final LayerNorm gain
  ``transformer.ln_f``, BERT's ``classifier``, Llama's ``lm_head``) scaled by 1e3. A
  pre/post-LN transformer is scale-invariant below its norms (scaling a block's weights
  *shrinks* that block's gradients by the same factor, measured: x100 on GPT-2's
  ``h.1.mlp.c_fc`` gives its gradient x0.045), so the one weight whose scale reaches
  the gradients is past the last norm: there every gradient below grows 1e2-1e3x at
  step 0 (measured). The culprit is the scaled layer, where the user should look; the
  gradients that explode are those of every layer below it.
* ``zeroed_norm``: the last norm's weight set to zero (GPT-2 ``transformer.ln_f``, BERT
  ``bert.encoder.layer.1.output.LayerNorm``, Llama ``model.norm``): its output is its
  bias (zero), so every layer below it gets an exactly zero gradient at step 0 and, while
  AdamW regrows the gain by ~lr a step, a gradient scaled by that gain. The culprit is the
  norm layer (its own gradient is finite: it is the boundary where the gradient stops,
  and its weight is what to fix), not a starving layer below it.
* ``llama_embedding_x1e4`` (issue 12 problem 6): Llama's ``model.embed_tokens`` scaled
  by 1e4. Every RMSNorm divides it back, so every block's output is negligible next to
  the residual stream and every gradient below the final norm shrinks ~1e4x. The culprit
  is the embedding.

Layer names are the module names ``gradlens.watch`` records for these models
(``transformer.h.0.attn.c_attn``, ``model.layers.1.mlp.down_proj``, ...).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn

from diagnosis_corpus.case import Case, Program, seed, tokens

SRC = "transformers 5.x model classes built from config"
VOCAB, LENGTH, WIDTH = 256, 16, 32


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=WIDTH, n_layer=2, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=LENGTH, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=LENGTH))


_MODELS = {"gpt2": _gpt2, "bert": _bert, "llama": _llama}
#: the layer past the last norm whose scale reaches every gradient below it
_HEAD = {"gpt2": "transformer.ln_f", "bert": "classifier", "llama": "lm_head"}
#: the last norm of each model
_LAST_NORM = {"gpt2": "transformer.ln_f", "bert": "bert.encoder.layer.1.output.LayerNorm", "llama": "model.norm"}


def _program(arch: str, *, lr: float = 3e-3, scale: Optional[str] = None, by: float = 1.0,
             s: int = 0) -> Callable[[], Program]:
    """``build`` of one HF program: ``arch`` at AdamW ``lr``; ``scale``: a module whose
    weight is multiplied by ``by`` after initialisation (``by=0`` zeroes it)."""
    def build() -> Program:
        import transformers

        transformers.logging.set_verbosity_error()
        seed(500 + s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _MODELS[arch]()
        model.train()
        if scale is not None:
            with torch.no_grad():
                model.get_submodule(scale).weight.mul_(by)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        data = tokens(128, vocab=VOCAB, length=LENGTH, s=500 + s)
        stride1 = ((data[:, 1] - data[:, 0]) % VOCAB == 1).long()  # BERT's label
        batch = 16

        def step(i: int, observe) -> None:
            j = (i * batch) % data.shape[0]
            ids = data[j:j + batch]
            opt.zero_grad()
            if arch == "bert":
                out = model(input_ids=ids, labels=stride1[j:j + batch])
            else:
                out = model(input_ids=ids, labels=ids)
            observe(out.loss.detach())
            out.loss.backward()
            opt.step()
        return model, opt, step
    return build


#: consequences of a planted problem that are true findings too (not counted, never false alarms)
_BLOWUP = frozenset({"divergence", "exploding", "nonfinite", "update_ratio", "dead_units", "saturation",
                     "stalled", "oscillation", "vanishing", "growth", "scale"})
_STARVED = frozenset({"vanishing", "dead_units", "stalled"})

_NAMES = {"gpt2": "GPT-2", "bert": "BERT", "llama": "Llama"}


def _cases(arch: str):
    name = _NAMES[arch]
    head, norm = _HEAD[arch], _LAST_NORM[arch]
    yield Case(f"hf_{arch}_healthy", _program(arch), source="hf", steps=150,
               cite=f"{SRC}: {name}ForX(d=32, 2 layers), AdamW lr 3e-3, 150 steps (the loss falls)")
    yield Case(f"hf_{arch}_lr_100", _program(arch, lr=100.0), source="hf", steps=150, quick=arch == "gpt2",
               cite=f"{SRC}: {name} with AdamW lr 100 (issue 12 problem 6: GPT-2's loss 6.97 -> 226,258 at step 1)",
               bugs=("lr_too_high",), also=_BLOWUP, cause="learning rate 3e4x too high",
               twin=f"hf_{arch}_healthy")
    yield Case(f"hf_{arch}_exploding_head", _program(arch, scale=head, by=1e3), source="hf", steps=150,
               cite=f"{SRC}: {name} with '{head}' (past the last norm) scaled by 1e3: every gradient below "
                    "it 1e2-1e3x the healthy one at step 0",
               bugs=("exploding_gradient",), culprits=frozenset({head}), also=_BLOWUP,
               cause=f"'{head}' weight 1e3x its initial scale", twin=f"hf_{arch}_healthy")
    yield Case(f"hf_{arch}_zeroed_norm", _program(arch, scale=norm, by=0.0), source="hf", steps=150,
               cite=f"{SRC}: {name} with the weight of '{norm}' (the last norm) set to 0: every layer below "
                    "it gets an exactly zero gradient at step 0, then one scaled by the regrowing gain",
               bugs=("zero_gradient", "vanishing_gradient"), culprits=frozenset({norm}), also=_STARVED,
               cause=f"'{norm}'.weight zeroed", twin=f"hf_{arch}_healthy")


CASES = (
    *_cases("gpt2"),
    *_cases("bert"),
    *_cases("llama"),
    Case("hf_llama_embedding_x1e4", _program("llama", scale="model.embed_tokens", by=1e4), source="hf", steps=150,
         cite=f"{SRC}: Llama with 'model.embed_tokens' scaled by 1e4 (issue 12 problem 6, reported there as "
              "'vanishing' at a late MLP layer): every RMSNorm divides it back, every gradient below the "
              "final norm shrinks ~1e4x",
         bugs=("weight_scale", "vanishing_gradient"), culprits=frozenset({"model.embed_tokens"}),
         also=_STARVED | {"growth", "scale"}, cause="embedding 1e4x its initial scale", twin="hf_llama_healthy"),
)
