"""gradlens.nn.RNN/LSTM/GRU against torch's modules: forward, gradients, state_dict, mirror, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gradlens
import gradlens.nn as gnn

SETTINGS = [
    pytest.param(nn.RNN, {}, id="rnn"),
    pytest.param(nn.RNN, {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}, id="rnn-relu-2layers-bidir"),
    pytest.param(nn.RNN, {"bias": False, "batch_first": True}, id="rnn-nobias-batch_first"),
    pytest.param(nn.LSTM, {}, id="lstm"),
    pytest.param(nn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}, id="lstm-2layers-bidir-bf"),
    pytest.param(nn.LSTM, {"proj_size": 2, "num_layers": 2}, id="lstm-proj-2layers"),
    pytest.param(nn.LSTM, {"proj_size": 2, "bias": False, "bidirectional": True}, id="lstm-proj-nobias-bidir"),
    pytest.param(nn.GRU, {}, id="gru"),
    pytest.param(nn.GRU, {"num_layers": 3, "bidirectional": True, "batch_first": True}, id="gru-3layers-bidir-bf"),
    pytest.param(nn.GRU, {"bias": False}, id="gru-nobias"),
]


def _pair(cls, kwargs, dtype=torch.float32):
    torch.manual_seed(0)
    ref = cls(3, 4, **kwargs).to(dtype)
    return ref, gradlens.mirror(copy.deepcopy(ref))


def _hidden(mod, batch, dtype, unbatched=False):
    n = mod.num_layers * (2 if mod.bidirectional else 1)
    shape = (n,) if unbatched else (n, batch)
    h = torch.randn(*shape, mod.proj_size or mod.hidden_size, dtype=dtype)
    if isinstance(mod, nn.LSTM):
        return (h, torch.randn(*shape, mod.hidden_size, dtype=dtype))
    return h


def _loss(out, hidden):
    out = pad_packed_sequence(out)[0] if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return (out * weights).sum() + sum((s * s).sum() for s in states)


def _compare(ref, twin, make_input, hx=None, *, seed=None):
    results = []
    for mod in (ref, twin):
        x = make_input()
        leaves = [x] if x.requires_grad else []
        h = None
        if hx is not None:
            h = tuple(t.clone().requires_grad_() for t in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
            leaves += list(h) if isinstance(h, tuple) else [h]
        if seed is not None:
            torch.manual_seed(seed)
        out, hidden = mod(_packed(x) if getattr(make_input, "packed", False) else x, h)
        loss = _loss(out, hidden)
        grads = torch.autograd.grad(loss, leaves + list(mod.parameters()))
        results.append((loss.detach(), grads))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


_LENGTHS = torch.tensor([3, 5, 1, 4])


def _packed(x):
    return pack_padded_sequence(x, _LENGTHS, enforce_sorted=False)


@pytest.mark.parametrize("cls,kwargs", SETTINGS)
@pytest.mark.parametrize("mode", ["batched", "unbatched", "given-hx", "packed", "dropout-train", "eval"])
def test_twin_matches_torch(cls, kwargs, mode):
    kwargs = dict(kwargs)
    if mode in ("dropout-train", "eval"):
        kwargs.update(num_layers=max(2, kwargs.get("num_layers", 1)), dropout=0.4)
    ref, twin = _pair(cls, kwargs)
    if mode == "eval":
        ref.eval(), twin.eval()
    bf = kwargs.get("batch_first", False)

    def make_input():
        shape = (3,) if mode == "unbatched" else ((4, 5) if bf else (5, 4))
        return torch.randn(*shape, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()

    if mode == "packed":
        def make_input():  # noqa: F811  (packed: always time-major padded input)
            return torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()

        make_input.packed = True  # a PackedSequence ignores the module's batch_first, as in torch
    hx = None
    if mode in ("given-hx", "packed"):
        hx = _hidden(ref, 4, torch.float32)
    if mode == "unbatched":
        hx = _hidden(ref, 1, torch.float32, unbatched=True)
    _compare(ref, twin, make_input, hx, seed=7 if mode == "dropout-train" else None)


def test_state_dict_and_isinstance():
    for cls, twin_cls in ((nn.RNN, gnn.RNN), (nn.LSTM, gnn.LSTM), (nn.GRU, gnn.GRU)):
        ref = cls(3, 4, num_layers=2, bidirectional=True)
        twin = twin_cls(3, 4, num_layers=2, bidirectional=True)
        assert isinstance(twin, cls)
        assert list(twin.state_dict()) == list(ref.state_dict())
        twin.load_state_dict(ref.state_dict())
        ref.load_state_dict(twin.state_dict())
        x = torch.randn(5, 2, 3)
        torch.testing.assert_close(twin(x)[0], ref(x)[0])


def test_mirror_swaps_recurrent_layers_and_shares_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4, batch_first=True)
            self.gru = nn.GRU(4, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.gru(self.lstm(x)[0])[0][:, -1])

    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = gradlens.mirror(net)
    assert twin.gradlens_unsupported == ()
    assert type(twin.lstm) is gnn.LSTM and type(twin.gru) is gnn.GRU
    assert all(a is b for a, b in zip(net.parameters(), twin.parameters()))
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(twin(x), net(x))
    assert type(net.lstm) is nn.LSTM  # the caller's model is untouched


def test_mirrored_model_is_bit_identical_after_use():
    net = nn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    before = net(x)[0]
    twin = gradlens.mirror(net)
    twin(x)[0].sum().backward()
    assert torch.equal(net(x)[0], before)


def test_track_hidden_grad_norm():
    twin = gnn.GRU(3, 4, num_layers=2, bidirectional=True)
    assert twin.hidden_grad_norm is None
    twin.track_hidden_grad_norm = True
    out, _ = twin(torch.randn(6, 2, 3))
    out[-1].sum().backward()
    norms = twin.hidden_grad_norm
    assert norms.shape == (4, 6)
    assert torch.all(norms[2] > 0)  # the top forward direction: the last step's loss reaches every step
    assert torch.count_nonzero(norms[3]) == 1  # the top reverse direction: only its first visited step (t = 5)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        pytest.param(lambda: gnn.LSTM(3, 4)(torch.randn(2, 2, 2, 3)), ValueError, "2D or 3D", id="input-4d"),
        pytest.param(lambda: gnn.GRU(3, 4)(torch.randn(5, 2, 3), torch.zeros(2, 4)), RuntimeError, "3-D", id="hx-2d"),
        pytest.param(lambda: gnn.RNN(3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 3, 4)), RuntimeError, "Expected hidden size",
                     id="hx-batch"),
        pytest.param(lambda: gnn.LSTM(3, 4)(torch.randn(5, 2, 2)), RuntimeError, "input.size\\(-1\\)", id="input-size"),
        pytest.param(lambda: gnn.LSTM(3, 4)([1.0]), TypeError, "Tensor or PackedSequence", id="input-list"),
    ],
)
def test_bad_module_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _consumers(loss, params):
    """Names of the backward nodes that consume each parameter, walking the autograd graph."""
    ids = {id(p): name for name, p in params}
    found, seen, stack = {}, set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is not None and id(getattr(nxt, "variable", None)) in ids:
                found.setdefault(ids[id(nxt.variable)], set()).add(type(fn).__name__)
            if nxt is not None:
                stack.append(nxt)
    return found


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_every_recurrent_parameter_gets_its_gradient_from_gradlens(packed):
    """Judged from the autograd graph: each weight is consumed only by the hand-written BPTT node."""
    net = nn.ModuleDict({"lstm": nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2),
                         "gru": nn.GRU(4, 3, bias=False), "rnn": nn.RNN(3, 3, nonlinearity="relu")})
    twin = gradlens.mirror(net)
    x = torch.randn(5, 4, 3)
    h = _packed(x) if packed else x
    out = twin["lstm"](h)[0]
    out = twin["gru"](out)[0]
    out = twin["rnn"](out)[0]
    out = pad_packed_sequence(out)[0] if packed else out
    found = _consumers(out.sum(), list(twin.named_parameters()))
    assert set(found) == {name for name, _ in twin.named_parameters()}
    assert all(names == {"_RecurrentLayerFnBackward"} for names in found.values()), found
