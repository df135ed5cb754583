"""nn twins: Embedding, Dropout, MultiheadAttention, TransformerEncoderLayer vs torch's modules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from torch import nn

import gradlens
import gradlens.functional as GF
import gradlens.nn as gnn


def _twin_of(torch_module, twin_cls):
    """A twin with torch_module's weights (via state_dict: the checkpoint path users take)."""
    twin = twin_cls.__new__(twin_cls)
    twin.__dict__.update(copy.deepcopy(torch_module).__dict__)
    return twin


def _assert_same_state_dict_layout(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key


def _grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


def _assert_grads_equal(ours, theirs, rtol=1e-4, atol=1e-6):
    g_ours, g_theirs = _grads(ours), _grads(theirs)
    assert list(g_ours) == list(g_theirs)
    for name in g_theirs:
        if g_theirs[name] is None:
            assert g_ours[name] is None, name
            continue
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# --- Embedding ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs", [{}, {"padding_idx": 1}, {"scale_grad_by_freq": True}], ids=["plain", "padding", "freq"])
def test_embedding_twin(kwargs, device):
    torch.manual_seed(0)
    ref = nn.Embedding(9, 4, **kwargs).to(device)
    twin = gnn.Embedding(9, 4, **kwargs).to(device)
    _assert_same_state_dict_layout(twin, ref)
    twin.load_state_dict(ref.state_dict())
    ref.load_state_dict(twin.state_dict())
    idx = torch.tensor([[1, 2, 1], [8, 0, 1]], device=device)
    out_t, out_r = twin(idx), ref(idx)
    torch.testing.assert_close(out_t, out_r)
    g = torch.randn_like(out_r)
    out_t.backward(g)
    out_r.backward(g)
    _assert_grads_equal(twin, ref)
    assert isinstance(twin, nn.Embedding) and twin.extra_repr() == ref.extra_repr()


def test_embedding_twin_unsupported_option_raises():
    with pytest.raises(NotImplementedError, match="max_norm"):
        gnn.Embedding(5, 2, max_norm=1.0)(torch.tensor([1]))


# --- Dropout ------------------------------------------------------------------------------


def test_dropout_twin_matches_torch_on_cpu():
    ref, twin = nn.Dropout(0.3), gnn.Dropout(0.3)
    assert twin.extra_repr() == ref.extra_repr() and isinstance(twin, nn.Dropout)
    x = torch.randn(6, 5)
    torch.manual_seed(4)
    a = twin(x)
    torch.manual_seed(4)
    b = ref(x)
    assert torch.equal(a, b)
    twin.eval()
    assert twin(x) is x


# --- MultiheadAttention -------------------------------------------------------------------

MHA_SETTINGS = [
    pytest.param({}, {}, id="seq-first"),
    pytest.param({"batch_first": True}, {}, id="batch-first"),
    pytest.param({"kdim": 3, "vdim": 5}, {}, id="separate-kdim-vdim"),
    pytest.param({"bias": False, "batch_first": True}, {"average_attn_weights": False}, id="no-bias-per-head"),
    pytest.param({}, {"key_padding_mask": "kpm", "attn_mask": "bool"}, id="masks"),
    pytest.param({"batch_first": True}, {"attn_mask": "causal", "is_causal": True, "need_weights": False}, id="causal"),
]


def _mha_call_kwargs(spec, L, S, N, device):
    out = dict(spec)
    if out.get("key_padding_mask") == "kpm":
        m = torch.rand(N, S) > 0.6
        m[:, 0] = False
        out["key_padding_mask"] = m.to(device)
    if out.get("attn_mask") == "bool":
        m = torch.rand(L, S) > 0.6
        m[:, 0] = False
        out["attn_mask"] = m.to(device)
    elif out.get("attn_mask") == "causal":
        out["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(L, device=device)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ctor, call", MHA_SETTINGS)
def test_multihead_attention_twin(ctor, call, device):
    torch.manual_seed(0)
    E, H, N, L = 8, 2, 3, 4
    ref = nn.MultiheadAttention(E, H, **ctor).to(device)
    twin = gnn.MultiheadAttention(E, H, **ctor).to(device)
    _assert_same_state_dict_layout(twin, ref)
    twin.load_state_dict(ref.state_dict())
    self_attn = call.get("is_causal", False) or "kdim" not in ctor
    S = L if self_attn else 5
    bf = ctor.get("batch_first", False)
    shape = (lambda T, D: (N, T, D)) if bf else (lambda T, D: (T, N, D))
    q = torch.randn(shape(L, E), device=device)
    if self_attn:
        k = v = q
    else:
        k, v = torch.randn(shape(S, ctor["kdim"]), device=device), torch.randn(shape(S, ctor["vdim"]), device=device)
    kwargs = _mha_call_kwargs(call, L, S, N, device)
    out_t, w_t = twin(q, k, v, **kwargs)
    out_r, w_r = ref(q, k, v, **kwargs)
    torch.testing.assert_close(out_t, out_r, rtol=1e-4, atol=1e-6)
    assert (w_t is None) == (w_r is None)
    loss_t = (out_t**2).sum() + (0 if w_t is None else (w_t * torch.arange(w_t.numel(), device=device).view_as(w_t)).sum())
    loss_r = (out_r**2).sum() + (0 if w_r is None else (w_r * torch.arange(w_r.numel(), device=device).view_as(w_r)).sum())
    if w_t is not None:
        torch.testing.assert_close(w_t, w_r, rtol=1e-4, atol=1e-6)
    loss_t.backward()
    loss_r.backward()
    # atol 1e-5: the key part of in_proj_bias has an exactly-zero gradient (softmax is
    # shift-invariant per row), so both sides hold float32 rounding noise (~1e-6) there.
    _assert_grads_equal(twin, ref, atol=1e-5)


def test_multihead_attention_twin_dropout_matches_torch_on_cpu():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(8, 2, dropout=0.3)
    twin = _twin_of(ref, gnn.MultiheadAttention)
    x = torch.randn(4, 2, 8)
    for need_weights in (True, False):
        torch.manual_seed(5)
        a = twin(x, x, x, need_weights=need_weights)[0]
        torch.manual_seed(5)
        b = ref(x, x, x, need_weights=need_weights)[0]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_multihead_attention_twin_unsupported_options_raise():
    x = torch.randn(3, 1, 4)
    with pytest.raises(NotImplementedError, match="bias_k"):
        gnn.MultiheadAttention(4, 2, add_bias_kv=True)(x, x, x)
    with pytest.raises(NotImplementedError, match="add_zero_attn"):
        gnn.MultiheadAttention(4, 2, add_zero_attn=True)(x, x, x)


def test_mirror_swaps_multihead_attention_and_out_proj():
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "emb": nn.Embedding(7, 8), "drop": nn.Dropout(0.1)})
    twin = gradlens.mirror(model, strict=True)
    assert type(twin["attn"]) is gnn.MultiheadAttention
    assert type(twin["attn"].out_proj) is gnn.NonDynamicallyQuantizableLinear
    assert type(twin["emb"]) is gnn.Embedding and type(twin["drop"]) is gnn.Dropout
    assert twin["attn"].in_proj_weight is model["attn"].in_proj_weight
    assert type(model["attn"]) is nn.MultiheadAttention  # caller's model untouched
    x = twin["emb"](torch.tensor([[1, 2, 3], [4, 5, 6]]))
    torch.testing.assert_close(twin["attn"](x, x, x)[0], model["attn"](x, x, x)[0], rtol=1e-4, atol=1e-6)
    y = torch.randn(2, 3, 8)
    torch.testing.assert_close(twin["attn"].out_proj(y), model["attn"].out_proj(y))


# --- TransformerEncoderLayer --------------------------------------------------------------


class _Block(nn.Module):
    """A user's transformer block: an encoder layer and a linear head (mirrored through its children)."""

    def __init__(self, layer, head):
        super().__init__()
        self.layer, self.head = layer, head

    def forward(self, x, **masks):
        return self.head(self.layer(x, **masks))


LAYER_SETTINGS = [
    pytest.param({}, id="post-norm-relu"),
    pytest.param({"norm_first": True, "batch_first": True}, id="pre-norm-batch-first"),
    pytest.param({"activation": "gelu", "batch_first": True}, id="gelu"),
    pytest.param({"activation": torch.tanh}, id="callable"),
    pytest.param({"activation": nn.GELU(approximate="tanh"), "norm_first": True}, id="module"),
]


def _encoder_inputs(layer, device, masks):
    N, L, E = 2, 5, layer.self_attn.embed_dim
    x = torch.randn((N, L, E) if layer.self_attn.batch_first else (L, N, E), device=device)
    kwargs = {}
    if masks:
        pad = torch.zeros(N, L, dtype=torch.bool, device=device)
        pad[1, -2:] = True
        causal = torch.ones(L, L, dtype=torch.bool, device=device).triu(1)  # True: masked out
        kwargs = {"src_mask": causal, "src_key_padding_mask": pad}
    return x, kwargs


def _compare_layers(ours, ref, device, masks, seed=None):
    x, kwargs = _encoder_inputs(getattr(ref, "layer", ref), device, masks)
    if seed is not None:
        torch.manual_seed(seed)
    out_o = ours(x, **kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    out_r = ref(x, **kwargs)
    torch.testing.assert_close(out_o, out_r, rtol=1e-4, atol=1e-5)
    w = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(1)).to(device)
    loss_o, loss_r = (out_o * w).sum(), (out_r * w).sum()
    torch.testing.assert_close(loss_o, loss_r, rtol=1e-4, atol=1e-5)
    loss_o.backward()
    loss_r.backward()
    _assert_grads_equal(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("masks", [False, True], ids=["nomask", "masks"])
@pytest.mark.parametrize("ctor", LAYER_SETTINGS)
def test_transformer_encoder_layer_twin(ctor, masks, device):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **ctor).to(device)
    twin = _twin_of(ref, gnn.TransformerEncoderLayer)
    _assert_same_state_dict_layout(twin, ref)
    fresh = gnn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, **ctor).to(device)
    fresh.load_state_dict(ref.state_dict())
    ref.load_state_dict(fresh.state_dict())
    _compare_layers(fresh, ref, device, masks)


def test_transformer_encoder_layer_twin_dropout_matches_torch_on_cpu():
    """Same random stream order as torch's slow path: attention, dropout1, dropout, dropout2."""
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.2)
    twin = _twin_of(ref, gnn.TransformerEncoderLayer)
    _compare_layers(twin, ref, "cpu", masks=True, seed=11)


def test_transformer_encoder_layer_twin_never_takes_fast_path():
    """In eval + no_grad torch may fuse the layer; the twin still runs its (swappable) children."""
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).eval()
    twin = _twin_of(ref, gnn.TransformerEncoderLayer)
    calls = []
    twin.linear1.register_forward_hook(lambda *a: calls.append("linear1"))
    twin.self_attn.register_forward_hook(lambda *a: calls.append("self_attn"))
    with torch.no_grad():
        x = torch.randn(2, 5, 8)
        torch.testing.assert_close(twin(x), ref(x), rtol=1e-4, atol=1e-5)
    assert calls == ["self_attn", "linear1"]


def test_functional_activation_maps_to_gradlens():
    from gradlens.nn.attention import _gradlens_activation

    assert _gradlens_activation(F.relu) is GF.relu
    assert _gradlens_activation(F.gelu) is GF.gelu
    assert _gradlens_activation(torch.tanh) is torch.tanh


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ctor", LAYER_SETTINGS[:3])
def test_mirror_transformer_block(ctor, device):
    """A transformer block mirrored with strict=True: every child is a gradlens twin, same loss and gradients."""
    torch.manual_seed(0)
    E = 8
    model = _Block(nn.TransformerEncoderLayer(E, 2, dim_feedforward=16, dropout=0.0, **ctor), nn.Linear(E, 3)).to(device)
    ref = copy.deepcopy(model)
    twin = gradlens.mirror(model, strict=True)
    layer = twin.layer
    assert type(layer) is gnn.TransformerEncoderLayer
    for name in ("self_attn", "self_attn.out_proj", "linear1", "linear2", "norm1", "norm2", "dropout", "dropout1", "dropout2"):
        assert type(layer.get_submodule(name)).__module__.startswith("gradlens.nn"), name
    assert type(twin.head).__module__.startswith("gradlens.nn")
    _compare_layers(twin, ref, device, masks=True)
