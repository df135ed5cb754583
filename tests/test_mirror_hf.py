"""Tiny Hugging Face models built from config (no downloads): full coverage, torch's numbers.

For each model ``gradlens.mirror(model, strict=True, example_inputs=batch)`` must
judge every trainable parameter covered from the autograd graph (strict raises
otherwise), and the loss and every gradient must equal the original model's (run by
torch's autograd) within rtol 1e-4. Dropout is off so the comparison is exact on any
device; train-mode dropout on CPU is covered by ``tests/functional``.
"""

from __future__ import annotations

import copy

import pytest
import torch

import gradlens
from conftest import DEVICES
from mirror_check import assert_grads_match
from gradlens.nn.hf import twin_class_for

transformers = pytest.importorskip("transformers")

V = 50  # vocabulary


def _ids(g, *shape):
    return torch.randint(0, V, shape, generator=g)


def _gpt2(attn):
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=16, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg), lambda g: {"input_ids": (i := _ids(g, 2, 8)), "labels": i}


def _llama(attn):
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=V, max_position_embeddings=16, attn_implementation=attn,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg), lambda g: {"input_ids": (i := _ids(g, 2, 8)), "labels": i}


def _bert(attn):
    cfg = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=V,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )  # fmt: skip

    def batch(g):
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, 6:] = 0  # padding in the second sequence
        return {"input_ids": _ids(g, 2, 8), "attention_mask": mask, "labels": torch.randint(0, 3, (2,), generator=g)}

    return transformers.BertForSequenceClassification(cfg), batch


def _t5(attn):
    cfg = transformers.T5Config(
        num_layers=2, d_model=32, d_ff=64, num_heads=4, d_kv=8, vocab_size=V, decoder_start_token_id=0,
        pad_token_id=0, dropout_rate=0.0, attn_implementation=attn,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(cfg), lambda g: {"input_ids": _ids(g, 2, 8), "labels": _ids(g, 2, 6)}


def _vit(attn):
    cfg = transformers.ViTConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, image_size=16,
        patch_size=4, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )  # fmt: skip
    return transformers.ViTForImageClassification(cfg), lambda g: {
        "pixel_values": torch.randn(2, 3, 16, 16, generator=g),
        "labels": torch.randint(0, 3, (2,), generator=g),
    }


MODELS = {"gpt2": _gpt2, "llama": _llama, "bert": _bert, "t5": _t5, "vit": _vit}
CASES = [(name, "sdpa") for name in MODELS] + [("gpt2", "eager"), ("llama", "eager"), ("bert", "eager")]


# Torch backward nodes allowed in a mirrored model's graph: data movement only (views,
# copies, indexing, masking), no arithmetic. Anything else (attention, softmax, a loss,
# a matmul) means a routed call stayed torch's.
_DATA_MOVEMENT = {
    "ViewBackward0", "UnsafeViewBackward0", "AliasBackward0", "CloneBackward0", "TransposeBackward0",
    "PermuteBackward0", "SplitBackward0", "UnsqueezeBackward0", "SqueezeBackward0", "SliceBackward0",
    "SelectBackward0", "WhereBackward0", "ExpandBackward0", "AccumulateGrad",
}  # fmt: skip


def _torch_nodes(output):
    """Names of the torch (non-gradlens) backward nodes behind ``output``."""
    from gradlens.mirroring import _is_gradlens_node

    names, stack, seen = set(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if not _is_gradlens_node(node):
            names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


def _build(name, attn, device):
    torch.manual_seed(0)
    model, make_batch = MODELS[name](attn)
    batch = {k: v.to(device) for k, v in make_batch(torch.Generator().manual_seed(1)).items()}
    return model.to(device).train(), batch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, attn", CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_hf_model_fully_covered_and_matches_torch(name, attn, device):
    model, batch = _build(name, attn, device)
    reference = copy.deepcopy(model)
    twin = gradlens.mirror(model, strict=True, example_inputs=batch)  # raises on any uncovered parameter
    cov = twin.gradlens_coverage
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert cov.complete and len(cov.covered) == len(trainable) and cov.unused == ()

    loss_ref = reference(**batch).loss
    loss_ref.backward()
    loss = twin(**batch).loss
    assert _torch_nodes(loss) <= _DATA_MOVEMENT, _torch_nodes(loss) - _DATA_MOVEMENT
    loss.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-6)
    assert_grads_match(twin, reference)


def test_hf_model_is_left_alone():
    model, batch = _build("gpt2", "sdpa", "cpu")
    torch.manual_seed(3)
    before = model(**batch).logits
    twin = gradlens.mirror(model, example_inputs=batch)
    twin(**batch).loss.backward()
    assert type(model.transformer.h[0].attn.c_attn) is transformers.pytorch_utils.Conv1D
    assert not model._forward_hooks and not model._forward_pre_hooks
    torch.manual_seed(3)
    assert torch.equal(model(**batch).logits, before)


def test_hf_gradient_checkpointing():
    # The recomputation during backward must run through gradlens too (same saved tensors).
    model, batch = _build("llama", "sdpa", "cpu")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = copy.deepcopy(model)
    twin = gradlens.mirror(model, strict=True, example_inputs=batch)
    twin(**batch).loss.backward()
    reference(**batch).loss.backward()
    assert_grads_match(twin, reference)


# ------------------------------------------------------------------------- the twins
def test_conv1d_twin():
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(6, 4)
    twin = gradlens.mirror(layer)
    assert isinstance(twin, Conv1D) and type(twin).__module__ == "gradlens.nn.hf" and twin.weight is layer.weight
    x = torch.randn(2, 3, 4, requires_grad=True)
    out = twin(x)
    assert type(out.grad_fn).__name__ == "ViewBackward0" and out.grad_fn.next_functions[0][0].name() == "_AddMatmulFnBackward"
    torch.testing.assert_close(out, layer(x), rtol=0, atol=0)


def _rms_classes():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    return [LlamaRMSNorm, MistralRMSNorm, T5LayerNorm]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("index", range(3), ids=["llama", "mistral", "t5"])
def test_rms_norm_twins_match_the_library(index, dtype):
    cls = _rms_classes()[index]
    norm = cls(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    norm = norm.to(dtype)
    twin = gradlens.mirror(norm)
    assert isinstance(twin, cls) and type(twin).__module__ == "gradlens.nn.hf"
    x = torch.randn(3, 5, 8, dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = twin(x), norm(x_ref)
    if dtype is torch.float32:
        assert type(out.grad_fn).__name__ == "_RMSNormFnBackward"
    else:  # the library's own arithmetic (bit-identical), its weight product still routed
        assert torch.equal(out, ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    cot = torch.randn_like(out)
    g = torch.autograd.grad(out, [x, twin.weight], cot)
    r = torch.autograd.grad(ref, [x_ref, norm.weight], cot)
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_norms_that_compute_something_else_get_no_twin():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm  # x * (1 + w)

    assert twin_class_for(GemmaRMSNorm) is None
    assert twin_class_for(transformers.models.llama.modeling_llama.LlamaMLP) is None


_ACTS = [
    "GELUActivation", "NewGELUActivation", "FastGELUActivation", "GELUTanh", "SiLUActivation",
    "QuickGELUActivation", "ReLUSquaredActivation",
]  # fmt: skip


@pytest.mark.parametrize("name", _ACTS)
def test_activation_twins_match_the_library(name):
    import transformers.activations as A

    if not hasattr(A, name):
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    act = getattr(A, name)()
    twin = gradlens.mirror(act)
    assert type(twin).__module__ == "gradlens.nn.hf" and isinstance(twin, type(act))
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True) * 3
    out, ref = twin(x), act(x)
    assert "Fn" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0], rtol=1e-8, atol=1e-9)
