"""gradlens.functional.recurrent against torch.rnn_tanh/rnn_relu/lstm/gru (float32) and gradcheck (float64).

Every case runs the whole stack (layers, directions, dropout between layers,
projections, packed input) through torch's own functions as the reference. The
flat weight list is spread into positional tensors so the shared harness
differentiates every weight, ``h0`` and ``c0``.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch

import gradlens.functional as GF
from gradlens.functional import recurrent as R
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def _problem(kind: str, *, seq=3, batch=2, inp=2, hid=3, layers=1, bidir=False, bias=True, proj=0,
             batch_first=False, dropout=0.0, train=False, lengths: Optional[list] = None, given_h=True):
    """``(ours, theirs, make_inputs)`` for one setting of one recurrent kind.

    Inputs are ``(x[, batch_sizes], h0[, c0], *flat weights)``; ``lengths`` (sorted,
    decreasing) makes a packed problem through torch's ``(data, batch_sizes, ...)`` overload.
    """
    n_dirs = 2 if bidir else 1
    out_size = proj or hid
    g = _GATES[kind] * hid
    packed = lengths is not None

    def make(dtype, device, gen):
        def rnd(*shape):
            return (torch.randn(*shape, generator=gen, dtype=dtype) * 0.7).to(device)

        if packed:
            x = rnd(sum(lengths), inp)
            sizes = torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))])
            head = (x, sizes)
            n_batch = len(lengths)
        else:
            x = rnd(batch, seq, inp) if batch_first else rnd(seq, batch, inp)
            head, n_batch = (x,), batch
        states = [rnd(layers * n_dirs, n_batch, out_size)]
        if kind == "lstm":
            states.append(rnd(layers * n_dirs, n_batch, hid))
        weights = []
        for layer in range(layers):
            in_l = inp if layer == 0 else n_dirs * out_size
            for _ in range(n_dirs):
                weights += [rnd(g, in_l), rnd(g, out_size)]
                if bias:
                    weights += [rnd(g), rnd(g)]
                if proj:
                    weights.append(rnd(proj, hid))
        if not given_h:
            states = [torch.zeros_like(s) for s in states]
        return (*head, *states, *weights)

    def call(fn):
        def run(*args):
            head, rest = (args[:2], args[2:]) if packed else (args[:1], args[1:])
            n_state = 2 if kind == "lstm" else 1
            hx = list(rest[:n_state]) if kind == "lstm" else rest[0]
            weights = list(rest[n_state:])
            tail = (bias, layers, dropout, train, bidir) + (() if packed else (batch_first,))
            return fn(head[0], *head[1:], hx, weights, *tail)

        return run

    return call(getattr(GF, kind)), call(getattr(torch, kind)), make


def _case(case_id: str, kind: str, *, gradgrad: bool = False, seeded: bool = False, **options) -> OpCase:
    ours, theirs, make = _problem(kind, **options)
    return OpCase(f"{kind}-{case_id}", ours, theirs, make, gradgrad=gradgrad, seeded=seeded)


# gradgradcheck replays the whole stack per element of every input: run it on one
# small setting per kind and per feature (each takes 1-10 s); the others run gradcheck.
CASES = []
for _kind in ("rnn_tanh", "rnn_relu", "lstm", "gru"):
    CASES += [
        _case("1layer", _kind, gradgrad=True),
        _case("2layers-bidir", _kind, layers=2, bidir=True, gradgrad=_kind.startswith("rnn")),
        _case("batch_first-nobias", _kind, batch_first=True, bias=False),
        _case("zero-h0", _kind, given_h=False, seq=5),
        _case("3layers-dropout0.5-train", _kind, layers=3, dropout=0.5, train=True, seeded=True),
        _case("2layers-dropout0.5-eval", _kind, layers=2, dropout=0.5, train=False),
        _case("packed", _kind, lengths=[4, 2, 2, 1], gradgrad=_kind != "lstm"),
        _case("packed-bidir-2layers", _kind, lengths=[3, 3, 1], layers=2, bidir=True),
        _case("batch1-long", _kind, batch=1, seq=12, hid=2),
    ]
CASES += [
    _case("proj", "lstm", proj=2, gradgrad=True, seq=2),
    _case("proj-bidir-2layers", "lstm", proj=2, layers=2, bidir=True),
    _case("proj-nobias-batch_first", "lstm", proj=2, bias=False, batch_first=True),
    _case("proj-packed-bidir", "lstm", proj=2, bidir=True, lengths=[3, 1]),
    _case("packed-gradgrad", "lstm", lengths=[2, 1], hid=2, gradgrad=True),
    _case("bidir-gradgrad", "lstm", bidir=True, hid=2, seq=2, gradgrad=True),
    _case("bidir-gradgrad", "gru", bidir=True, hid=2, seq=2, gradgrad=True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_against_torch(case, device, contiguous):
    check_against_torch(case, device, contiguous=contiguous)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradcheck(case, device):
    check_gradcheck(case, device)


def _flat(args):
    return [a for a in args if torch.is_tensor(a) and a.is_floating_point()]


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("setting", [{}, {"bidir": True, "layers": 2}, {"lengths": [3, 2, 1]}], ids=["1layer", "bidir", "packed"])
def test_create_graph_path_matches_torch(kind, setting):
    """The double-backward path (replayed sweep): first and second derivatives equal torch's."""
    ours, theirs, make = _problem(kind, **setting)
    base = make(torch.float64, torch.device("cpu"), torch.Generator().manual_seed(0))
    results = []
    for fn in (ours, theirs):
        args = [a.clone().requires_grad_(a.is_floating_point()) for a in base]
        leaves = _flat(args)
        outs = fn(*args)
        gen = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        assert all(g.requires_grad for g in grads), "create_graph=True must give differentiable gradients"
        second = sum((g * torch.randn(g.shape, generator=gen, dtype=g.dtype)).sum() for g in grads)
        results.append((grads, torch.autograd.grad(second, leaves, allow_unused=True)))
    (g1, gg1), (g2, gg2) = results
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    for a, b in zip(gg1, gg2):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, b)


def test_dropout_mask_is_torchs_for_the_same_seed():
    """Training with dropout: torch's exact mask (and not the identity)."""
    ours, theirs, make = _problem("lstm", layers=2, dropout=0.5, train=True, seq=6, batch=4, hid=8)
    args = make(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    a = ours(*args)[0]
    torch.manual_seed(5)
    b = theirs(*args)[0]
    torch.manual_seed(6)
    c = ours(*args)[0]
    eval_ours, _, _ = _problem("lstm", layers=2, dropout=0.5, train=False, seq=6, batch=4, hid=8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c), "another seed must give another mask"
    assert not torch.allclose(a, eval_ours(*args)[0]), "train=True must drop something"


def _cell_reference(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """An independent unrolled loop of torch cells; returns (output, [h_t with retained grads])."""
    hs, h, c = [], h0, c0
    for t in range(x.shape[0]):
        if kind == "lstm":
            h, c = torch.lstm_cell(x[t], (h, c), w_ih, w_hh, b_ih, b_hh)
        elif kind == "gru":
            h = torch.gru_cell(x[t], h, w_ih, w_hh, b_ih, b_hh)
        else:
            h = getattr(torch, f"{kind}_cell")(x[t], h, w_ih, w_hh, b_ih, b_hh)
        h.retain_grad()
        hs.append(h)
    return torch.stack(hs), hs


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_hidden_grad_norm_is_norm_of_dl_dh_t(kind):
    """``hidden_grad_norm`` equals ‖dL/dh_t‖ of an unrolled torch-cell loop (loss on the last output)."""
    ours, _, make = _problem(kind, seq=6, batch=3, hid=4, inp=3)
    args = make(torch.float64, torch.device("cpu"), torch.Generator().manual_seed(0))
    x, h0 = args[0], args[1]
    c0 = args[2] if kind == "lstm" else None
    weights = args[3:] if kind == "lstm" else args[2:]
    norms = torch.zeros(1, 6, dtype=torch.float64)
    hx = [h0, c0] if kind == "lstm" else h0
    out = getattr(GF, kind)(x, hx, [w.requires_grad_() for w in weights], True, 1, 0.0, False, False, False,
                            hidden_grad_norm=norms)
    out[0][-1].pow(2).sum().backward()
    ref_out, hs = _cell_reference(kind, x, h0[0], None if c0 is None else c0[0], *weights)
    ref_out[-1].pow(2).sum().backward()
    expected = torch.stack([h.grad.norm() for h in hs])
    torch.testing.assert_close(norms[0], expected)
    assert not torch.allclose(expected[0], expected[-1])  # not trivial: it changes over time


def test_hidden_grad_norm_reverse_direction_is_in_time_order():
    ours, _, make = _problem("gru", bidir=True, seq=5)
    args = make(torch.float64, torch.device("cpu"), torch.Generator().manual_seed(0))
    norms = torch.zeros(2, 5, dtype=torch.float64)
    weights = [w.requires_grad_() for w in args[2:]]
    out = GF.gru(args[0], args[1], weights, True, 1, 0.0, False, True, False, hidden_grad_norm=norms)
    out[0][0].sum().backward()  # loss on time step 0 only
    # forward direction: only step 0 gets a gradient; reverse direction: reaches every step from t=0 back to T-1
    assert torch.count_nonzero(norms[0]) == 1 and norms[0, 0] > 0
    assert torch.all(norms[1] > 0)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_needs_input_grad_skips_weight_gradients(kind, monkeypatch):
    """Only x requires grad: the weight-gradient products are never formed (and x's gradient is right)."""
    ours, theirs, make = _problem(kind, proj=2 if kind == "lstm" else 0)
    args = make(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    calls = []
    real = R._sum_outer
    monkeypatch.setattr(R, "_sum_outer", lambda a, b: calls.append(1) or real(a, b))
    grads = []
    for fn in (ours, theirs):
        x = args[0].clone().requires_grad_()
        out = fn(x, *args[1:])
        grads.append(torch.autograd.grad(out[0].sum(), x)[0])
    assert calls == []
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_empty_batch_like_torch(kind):
    ours, theirs, make = _problem(kind, batch=0)
    args = make(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    a, b = ours(*args), theirs(*args)
    for o, r in zip(a, b):
        assert o.shape == r.shape


def _lstm_args(**over):
    m = torch.nn.LSTM(2, 3)
    args = dict(input=torch.randn(4, 1, 2), hx=[torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)], params=list(m._flat_weights),
                has_biases=True, num_layers=1, dropout=0.0, train=False, bidirectional=False, batch_first=False)
    args.update(over)
    return list(args.values())


BAD_INPUTS = [
    pytest.param(lambda: GF.lstm(*_lstm_args(input=[1.0])), TypeError, "input", id="input-list"),
    pytest.param(lambda: GF.lstm(*_lstm_args(input=torch.randn(4, 2))), ValueError, "3-D", id="input-2d"),
    pytest.param(lambda: GF.lstm(*_lstm_args(input=torch.randn(0, 1, 2))), ValueError, "sequence length", id="seq-0"),
    pytest.param(lambda: GF.lstm(*_lstm_args(input=torch.ones(4, 1, 2, dtype=torch.long))), TypeError, "floating",
                 id="input-int"),
    pytest.param(lambda: GF.lstm(*_lstm_args(hx=torch.zeros(1, 1, 3))), TypeError, "pair", id="lstm-hx-tensor"),
    pytest.param(lambda: GF.lstm(*_lstm_args(hx=[torch.zeros(1, 3), torch.zeros(1, 3)])), ValueError, "3-D", id="hx-2d"),
    pytest.param(lambda: GF.lstm(*_lstm_args(params=list(torch.nn.LSTM(2, 3)._flat_weights)[:3])), ValueError,
                 "expected 4 or 5 tensors", id="params-count"),
    pytest.param(lambda: GF.lstm(*_lstm_args(params=list(torch.nn.LSTM(5, 3)._flat_weights))), ValueError,
                 "weight_ih of layer-direction 0 should have shape", id="params-shape"),
    pytest.param(lambda: GF.lstm(*_lstm_args(params=torch.nn.LSTM(2, 3)._flat_weights[0])), TypeError, "list",
                 id="params-tensor"),
    pytest.param(lambda: GF.lstm(*_lstm_args(num_layers=0)), ValueError, "num_layers", id="layers-0"),
    pytest.param(lambda: GF.lstm(*_lstm_args(dropout=1.5)), ValueError, "dropout", id="dropout-range"),
    pytest.param(lambda: GF.lstm(*_lstm_args()[:8]), TypeError, "9 arguments", id="too-few-args"),
    pytest.param(lambda: GF.gru(torch.randn(3, 1, 2), torch.zeros(1, 1, 3), list(torch.nn.LSTM(2, 3)._flat_weights),
                                True, 1, 0.0, False, False, False), ValueError, "should have shape", id="gru-lstm-weights"),
    pytest.param(lambda: GF.rnn_tanh(torch.randn(3, 1, 2), torch.zeros(1, 1, 3), list(torch.nn.RNN(2, 3)._flat_weights),
                                     True, 1, 0.0, False, False, False, hidden_grad_norm=torch.zeros(1, 4)),
                 ValueError, "hidden_grad_norm", id="norm-shape"),
    pytest.param(lambda: GF.rnn_tanh(torch.randn(3, 2, 2), torch.tensor([2, 1]), torch.zeros(1, 2, 3),
                                     list(torch.nn.RNN(2, 3)._flat_weights), True, 1, 0.0, False, False),
                 ValueError, "packed data", id="packed-3d-data"),
]


@pytest.mark.parametrize("call,exc,match", BAD_INPUTS)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _lstm_runs(seed=0, **problem):
    """A float32 LSTM problem (``_problem`` settings) run by ours, then by torch: yields, one side at a
    time (so each side's backward can run before the other's forward), fresh ``requires_grad`` clones
    of the inputs, the outputs and a random linear loss of them."""
    ours, theirs, make = _problem("lstm", **problem)
    base = make(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(seed))
    for fn in (ours, theirs):
        args = [a.clone().requires_grad_() for a in base]
        outs = fn(*args)
        gen = torch.Generator().manual_seed(seed + 1)
        yield args, outs, sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)


@pytest.mark.parametrize("setting", [{}, {"proj": 2}, {"bidir": True, "layers": 2, "batch_first": True}],
                         ids=["1layer", "proj", "bidir-2layers"])
def test_lstm_second_backward_through_retained_graph(setting):
    """The first-order LSTM backward overwrites its forward buffers: a second backward through the
    same graph (``retain_graph=True``) replays the forward and gives torch's gradients again."""
    grads = []
    for args, _, loss in _lstm_runs(seq=5, batch=3, hid=4, **setting):
        first = torch.autograd.grad(loss, args, retain_graph=True)
        second = torch.autograd.grad(loss, args)
        grads.append((first, second))
    (o1, o2), (t1, _) = grads
    for a, b, c in zip(o1, o2, t1):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_steps", [1, 2, 3])
@pytest.mark.parametrize("setting", [{}, {"bidir": True, "layers": 2}, {"proj": 2, "bidir": True},
                                     {"batch_first": True, "given_h": False}],
                         ids=["1layer", "bidir-2layers", "proj-bidir", "batch_first-zero-h0"])
def test_lstm_first_order_in_blocks_matches_torch(block_steps, setting, monkeypatch):
    """The first-order LSTM backward takes the local derivatives block by block of steps (the
    tests above fit one block): several blocks, in either direction, with a ragged last block."""
    hid, batch = 4, 3
    monkeypatch.setattr(R, "_LSTM_BLOCK", block_steps * batch * 5 * hid)
    case = _case("blocks", "lstm", seq=7, batch=batch, hid=hid, **setting)
    check_against_torch(case, "cpu")


def _lstm_step(seq, batch=3, hid=4, proj=0, bidir=False, seed=0):
    """One first-order forward and backward of a float32 LSTM: (outputs, grads) as fresh clones and as returned."""
    return [(outs, torch.autograd.grad(loss, args))
            for args, outs, loss in _lstm_runs(seed, seq=seq, batch=batch, hid=hid, proj=proj, bidir=bidir)]


@pytest.mark.parametrize("setting", [{}, {"proj": 2, "bidir": True}], ids=["1layer", "proj-bidir"])
def test_lstm_buffer_pool_reuse_leaves_earlier_results_alone(setting):
    """On CPU the first-order LSTM reuses its working buffers from step to step (a small pool):
    a second step of the same shape reuses them, is right again, and leaves the first step's
    outputs and gradients (which the caller may keep) untouched."""
    R._LSTM_POOL.clear()
    (out1, g1), (ref_out1, ref_g1) = _lstm_step(5, **setting)
    kept = [t.detach().clone() for t in (*out1, *g1)]
    assert sum(len(v) for v in R._LSTM_POOL.values()) >= 1  # the buffers went back to the pool
    pooled = {id(b) for v in R._LSTM_POOL.values() for b in v}
    (out2, g2), (ref_out2, ref_g2) = _lstm_step(5, seed=7, **setting)
    assert pooled & {id(b) for v in R._LSTM_POOL.values() for b in v}  # the same sets came back
    for a, b in zip((*out2, *g2), (*ref_out2, *ref_g2)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip((*out1, *g1), kept):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip((*out1, *g1), (*ref_out1, *ref_g1)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lstm_buffer_pool_two_graphs_in_flight_and_bounded():
    """Two forwards of one shape before either backward get separate buffers; the pool keeps at
    most ``_LSTM_POOL_SIZE`` sets over many shapes."""
    ours, theirs, make = _problem("lstm", seq=4, batch=2, hid=3)
    base = make(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    _lstm_step(4, batch=2, hid=3)  # one set of this shape is in the pool now
    runs = []
    for fn in (ours, ours, theirs):
        args = [a.clone().requires_grad_() for a in base]
        runs.append((args, fn(*args)))
    grads = [torch.autograd.grad(outs[0].pow(2).sum(), args) for args, outs in runs]
    for a, b, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-5)
    for seq in range(2, 2 + 2 * R._LSTM_POOL_SIZE):
        _lstm_step(seq, batch=1, hid=2)
    assert sum(len(v) for v in R._LSTM_POOL.values()) <= R._LSTM_POOL_SIZE


def test_lstm_buffer_pool_byte_limit(monkeypatch):
    """A buffer set larger than ``_LSTM_POOL_BYTES`` is not kept; smaller ones are, within the limit."""
    R._LSTM_POOL.clear()
    monkeypatch.setattr(R, "_LSTM_POOL_BYTES", 6000)
    _lstm_step(3, batch=2, hid=3)  # a small set: kept
    small = sum(R._nbytes(b) for v in R._LSTM_POOL.values() for b in v)
    assert 0 < small <= 6000
    _lstm_step(40, batch=4, hid=6)  # a set larger than the limit: not kept
    assert all(R._nbytes(b) <= 6000 for v in R._LSTM_POOL.values() for b in v)
    assert sum(R._nbytes(b) for v in R._LSTM_POOL.values() for b in v) <= 6000
