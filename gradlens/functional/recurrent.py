"""RNN, LSTM and GRU with backprop through time written out by hand, step by step.

Drop-ins for ``torch.rnn_tanh``, ``torch.rnn_relu``, ``torch.lstm`` and ``torch.gru``
(the functions ``torch.nn.RNN/LSTM/GRU`` call): the same positional signature, both
overloads (padded ``input`` or packed ``data, batch_sizes``), multi-layer,
bidirectional, ``batch_first``, dropout between layers, LSTM projections
(``proj_size``) and layers without biases.

Each layer and direction is one ``torch.autograd.Function``. Its forward is a loop
over time steps (the input projection ``x_t W_ih^T + b`` of every step is taken in
one matrix product first); its backward walks the same steps in reverse, carrying
``dL/dh`` (and ``dL/dc``) from step ``t + 1`` into step ``t``:

* RNN:  ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (or relu), so
  ``da_t = dh_t * (1 - h_t^2)`` and ``dh_{t-1} = da_t W_hh``.
* LSTM: ``i, f, g, o = σ, σ, tanh, σ (gates)``, ``c_t = f c_{t-1} + i g``,
  ``h_t = o tanh(c_t)`` (times ``W_hr^T`` with a projection); below each sweep the
  chain rule runs through ``h_t``, ``c_t`` and the four gates.
* GRU:  ``r, z = σ(...)``, ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``,
  ``h_t = (1 - z) n + z h_{t-1}``.

Every step's gate gradient is kept, so the weight gradients are one matrix product
each after the loop: ``dW_ih = Σ_t da_t^T x_t``, ``dW_hh = Σ_t da_t^T h_{t-1}``,
``db = Σ_t da_t``, ``dx_t = da_t W_ih``.

**Two backward paths.** First order (the usual ``loss.backward()``) reads the
activations the forward kept (the LSTM's on padded input are overwritten by its gradients
in place; a second backward through a retained graph replays the forward first). When a graph of the backward is being built
(``create_graph=True``, double backward), the forward sweep is replayed from the
saved inputs with autograd recording, and the very same step-by-step formulas run on
those replayed activations, so second derivatives flow through every gate. Both
paths are tested against torch.

**Per-step gradient norms.** ``hidden_grad_norm=`` takes a tensor of shape
``(num_layers * num_directions, seq_len)``; the backward writes ``‖dL/dh_t‖`` into
it (the gradient reaching the hidden state of step ``t``, over the whole batch):
watch it shrink (vanishing) or grow (exploding) as it travels back in time.

**Dropout between layers** (``train=True``, ``dropout > 0``) multiplies each layer's
output but the last by :func:`gradlens.functional.dropout`'s mask, drawn on the
``(seq_len, batch, num_directions * hidden)`` output as torch's CPU kernel draws it:
with the same seed the result is torch's.

**Packed sequences** (``data, batch_sizes``) run as a padded batch in which step
``t`` of sequence ``b`` is valid when ``b < batch_sizes[t]``; past its end a
sequence's state is carried unchanged (so ``h_n`` is the state after its last valid
step, as in torch) and its output is dropped.

Example:
    >>> import torch
    >>> import gradlens.functional as GF
    >>> lstm = torch.nn.LSTM(3, 4, num_layers=2)
    >>> x, hx = torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4))
    >>> out, h_n, c_n = GF.lstm(x, hx, lstm._flat_weights, True, 2, 0.0, False, False, False)
    >>> ref = torch.lstm(x, hx, lstm._flat_weights, True, 2, 0.0, False, False, False)
    >>> torch.allclose(out, ref[0], atol=1e-6), out.shape
    (True, torch.Size([5, 2, 4]))
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from gradlens.functional._util import check_tensor, plain_torch
from gradlens.functional.dropout import dropout as _dropout

__all__ = ["rnn_tanh", "rnn_relu", "lstm", "gru"]

_T = torch.Tensor
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def _steps(seq_len: int, reverse: bool) -> range:
    """Time indices in the order a direction visits them."""
    return range(seq_len - 1, -1, -1) if reverse else range(seq_len)


def _in_time_order(per_step: List[_T], reverse: bool) -> _T:
    """Stack tensors kept in visiting order as ``(seq_len, ...)`` in time order."""
    return torch.stack(per_step[::-1] if reverse else per_step)


def _input_proj(x: _T, w_ih: _T, b: Optional[_T]) -> _T:
    """``x_t W_ih^T + b`` for every step at once: ``(T, B, I) -> (T, B, G)``."""
    return F.linear(x, w_ih, b)


def _transposed(w: _T) -> _T:
    """``W^T`` laid out contiguously once per sweep: the per-step ``h @ W^T`` is ~1.5x faster on CPU
    than with a transposed view (our measurement, 32x128 @ 128x512, one thread)."""
    return w.t().contiguous()


def _carry(mask_t: Optional[_T], new: _T, old: _T) -> _T:
    """The state after a step: ``new`` where the step is valid, ``old`` past a sequence's end."""
    return new if mask_t is None else torch.where(mask_t, new, old)


def _record_norm(norm_row: Optional[_T], t: int, dh: _T) -> None:
    if norm_row is not None:
        with torch.no_grad():
            norm_row[t] = torch.linalg.vector_norm(dh.detach())


def _arriving(dh: _T, d_out_t: _T, mask_t: Optional[_T], norm_row: Optional[_T], t: int) -> Tuple[_T, Optional[_T]]:
    """``(dL/dh_t, skip)``: the gradient reaching step t's new state, from the output at t and
    from step t+1; past a sequence's end the step is skipped and ``skip`` carries ``dh`` past it."""
    dh_new, skip = dh + d_out_t, None
    if mask_t is not None:
        dh_new, skip = torch.where(mask_t, dh_new, 0.0), torch.where(mask_t, 0.0, dh)
    _record_norm(norm_row, t, dh_new)
    return dh_new, skip


# =============================================================================== RNN
def _rnn_sweep(x, h0, w_ih, w_hh, b_ih, b_hh, relu: bool, reverse: bool, mask):
    """Forward of one RNN layer-direction: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``."""
    gi = _input_proj(x, w_ih, None if b_ih is None else b_ih + b_hh)
    act = torch.relu if relu else torch.tanh
    w_hh_t = _transposed(w_hh)
    h, hs_prev, hs_new, outs = h0, [], [], []
    for t in _steps(x.shape[0], reverse):
        h_new = act(torch.addmm(gi[t], h, w_hh_t))
        hs_prev.append(h)
        hs_new.append(h_new)
        outs.append(h_new if mask is None else torch.where(mask[t], h_new, 0.0))
        h = _carry(None if mask is None else mask[t], h_new, h)
    saved = (torch.stack(hs_prev), torch.stack(hs_new))
    return (_in_time_order(outs, reverse), h), saved


def _rnn_bptt(saved, d_out, d_hn, w_hh, relu: bool, reverse: bool, mask, norm_row):
    """Backward of :func:`_rnn_sweep`, step by step from the last step to the first."""
    hs_prev, hs_new = saved
    seq_len = d_out.shape[0]
    dh = d_hn  # dL/dh after the last step
    das: List[_T] = [None] * seq_len  # type: ignore[list-item]
    for k, t in reversed(list(enumerate(_steps(seq_len, reverse)))):
        dh_new, dh_skip = _arriving(dh, d_out[t], None if mask is None else mask[t], norm_row, t)
        h = hs_new[k]
        # relu: da = dh 1[h > 0];   tanh: da = dh (1 - h^2)
        da = dh_new * (h > 0) if relu else dh_new * (1 - h * h)
        das[k] = da
        # a_t = ... + W_hh h_{t-1}:  dh_{t-1} = da W_hh
        dh = da.mm(w_hh)
        if mask is not None:
            dh = dh + dh_skip
    d_gates = torch.stack(das)  # visiting order
    return d_gates, d_gates, hs_prev, dh, None, None


# ============================================================================== LSTM
def _lstm_sweep(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool, mask):
    """Forward of one LSTM layer-direction (gate order i, f, g, o, as torch)."""
    hid = c0.shape[-1]
    gi = _input_proj(x, w_ih, None if b_ih is None else b_ih + b_hh)
    w_hh_t = _transposed(w_hh)
    h, c = h0, c0
    hs_prev, cs_prev, sigs, gs, tcs, ms, outs = [], [], [], [], [], [], []
    for t in _steps(x.shape[0], reverse):
        # gates = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
        gates = torch.addmm(gi[t], h, w_hh_t)
        sig = torch.sigmoid(gates)  # i, f, o = σ(.) (the g slice is not used)
        g = torch.tanh(gates[:, 2 * hid:3 * hid])
        i, f, o = sig[:, :hid], sig[:, hid:2 * hid], sig[:, 3 * hid:]
        # c_t = f c_{t-1} + i g
        c_new = torch.addcmul(f * c, i, g)
        # h_t = o tanh(c_t)   (projected: h_t = (o tanh(c_t)) W_hr^T)
        tc = torch.tanh(c_new)
        m = o * tc
        h_new = m if w_hr is None else m.mm(w_hr.t())
        hs_prev.append(h)
        cs_prev.append(c)
        sigs.append(sig)
        gs.append(g)
        tcs.append(tc)
        if w_hr is not None:
            ms.append(m)
        mt = None if mask is None else mask[t]
        outs.append(h_new if mt is None else torch.where(mt, h_new, 0.0))
        h, c = _carry(mt, h_new, h), _carry(mt, c_new, c)
    saved = (torch.stack(hs_prev), torch.stack(cs_prev), torch.stack(sigs), torch.stack(gs),
             torch.stack(tcs), torch.stack(ms) if ms else None)
    return (_in_time_order(outs, reverse), h, c), saved


def _lstm_bptt(saved, d_out, d_hn, d_cn, w_hh, w_hr, reverse: bool, mask, norm_row, need_w_hr: bool):
    """Backward of :func:`_lstm_sweep`, step by step from the last step to the first."""
    hs_prev, cs_prev, sigs, gs, tcs, ms = saved
    hid = cs_prev.shape[-1]
    seq_len = d_out.shape[0]
    # the local derivatives of every step at once (a few large kernels instead of many small ones):
    # σ' = σ (1 - σ) for i, f, o and tanh' = 1 - g^2 for g;  dm -> dc through m = o tanh(c): o (1 - tanh(c)^2)
    d_sig = sigs * (1 - sigs)
    act_grad = torch.cat([d_sig[..., :2 * hid], 1 - gs * gs, d_sig[..., 3 * hid:]], dim=-1)
    dc_dm = sigs[..., 3 * hid:] * (1 - tcs * tcs)
    # c = f c_prev + i g and m = o tanh(c):  di = dc g,  df = dc c_prev,  dg = dc i,  do = dm tanh(c);
    # so d(pre-activation gates) = [dc, dc, dc, dm] * [g, c_prev, i, tanh c] * local'
    through = torch.cat([gs, cs_prev, sigs[..., :hid], tcs], dim=-1) * act_grad
    dh, dc = d_hn, d_cn  # dL/dh, dL/dc after the last step
    das: List[_T] = [None] * seq_len  # type: ignore[list-item]
    dhs: List[_T] = [None] * seq_len  # type: ignore[list-item]
    for k, t in reversed(list(enumerate(_steps(seq_len, reverse)))):
        mt = None if mask is None else mask[t]
        dh_new, dh_skip = _arriving(dh, d_out[t], mt, norm_row, t)
        dc_new, dc_skip = dc, None
        if mt is not None:  # the cell state skips padded steps too
            dc_new, dc_skip = torch.where(mt, dc, 0.0), torch.where(mt, 0.0, dc)
        f = sigs[k][:, hid:2 * hid]
        # projection h = m W_hr^T:  dm = dh W_hr   (dW_hr = Σ_t dh_t^T m_t, after the loop)
        dhs[k] = dh_new
        dm = dh_new if w_hr is None else dh_new.mm(w_hr)
        # m = o tanh(c):  dc += dm o (1 - tanh(c)^2)
        dc_new = torch.addcmul(dc_new, dm, dc_dm[k])
        # d gates = [di, df, dg, do] through the activations = [dc, dc, dc, dm] * through[k]
        da = torch.cat([dc_new, dc_new, dc_new, dm], dim=1) * through[k]
        das[k] = da
        # gates = ... + W_hh h_{t-1}:  dh_{t-1} = da W_hh
        dh, dc = da.mm(w_hh), dc_new * f
        if mask is not None:
            dh, dc = dh + dh_skip, dc + dc_skip
    d_gates = torch.stack(das)  # visiting order
    d_w_hr = None
    if need_w_hr:
        # dW_hr = Σ_t dh_t^T m_t
        d_w_hr = _sum_outer(torch.stack(dhs), ms)
    return d_gates, d_gates, hs_prev, dh, dc, d_w_hr


# ===================================================== LSTM, first order: one buffer per quantity
# The path the usual ``loss.backward()`` takes for an LSTM on padded input. Same chain rule as
# :func:`_lstm_sweep` / :func:`_lstm_bptt`, laid out so that a step costs as few kernels as possible:
# every step writes into preallocated (T, B, .) buffers (no per-step allocation, no stacking), the
# activations overwrite the pre-activations in place (6 kernels a forward step), and the backward
# loop does only the recurrence (4 kernels a step); the local derivatives of every step are taken
# block by block before the loop and the weight gradients after it, each in one large kernel (the
# bias gradient in the same product as dW_ih). The backward turns the forward's activation buffer
# into the gradient buffer in place (on CPU a fresh full-size buffer costs page faults, about a pass
# over the data; our measurement), so the buffers are kept on ``ctx`` rather than saved, and a
# second backward through the same graph (``retain_graph=True``) replays the forward. On CPU the
# buffers, with their per-step views, go back to a small pool after the backward, for the next
# step of the same shape (:class:`_LstmBuffers`).
def _double_g(w: Optional[_T], hid: int) -> Optional[_T]:
    """Rows of a gate-stacked weight (order i, f, g, o) with the ``g`` rows times -2.

    The scaled rows give ``-2 a_g``, so that the one sigmoid that covers all four gates gives
    ``s = σ(-2 a_g)`` in the ``g`` slot, and ``tanh(a_g) = 1 - 2 s`` (scaling by -2 is exact in
    floating point). torch's CPU ``tanh`` costs ~4x a ``sigmoid`` per element (our measurement, one
    thread); and ``i g = i - 2 i s`` enters ``c_t = f c_{t-1} + i g`` as two ``addcmul`` without
    forming ``g`` (the backward forms it, for all the steps of a block at once).
    """
    if w is None:
        return None
    return torch.cat([w[:2 * hid], w[2 * hid:3 * hid] * -2, w[3 * hid:]])


class _LstmBuffers:
    """The working memory of one first-order LSTM layer-direction, and the per-step views into it.

    ``A`` (T, B, 5H), ``C`` (T, B, H), ``M`` (with a projection: T, B, H), ``X`` (T*B, I+1, with
    biases), ``Fg`` and ``DH`` (T, B, H; ``DM`` with a projection) belong to it; ``x_rows`` (``X``
    or, without biases, the input's own rows) is set by each forward. The views (``fwd``, ``bwd``)
    are made on first use and kept: on CPU a buffer set goes back to a small pool after its
    backward (see ``_LSTM_POOL_SIZE``), so that the next step of the same shape reuses memory that
    is already mapped and cached, and its ~1,000 views.
    """

    __slots__ = ("key", "A", "C", "M", "X", "x_rows", "Fg", "DH", "DM", "fwd", "bwd")

    def __init__(self, key: tuple, x: _T, hid: int, proj: bool, bias: bool) -> None:
        seq_len, batch, n_in = x.shape
        self.key = key
        self.A = x.new_empty(seq_len, batch, 5 * hid)
        self.C = x.new_empty(seq_len, batch, hid)
        self.M = torch.empty_like(self.C) if proj else None
        self.X = x.new_empty(seq_len * batch, n_in + 1) if bias else None
        if bias:
            self.X[:, n_in].fill_(1)
        self.x_rows: Optional[_T] = None
        self.Fg = self.DH = self.DM = None
        self.fwd: Optional[list] = None
        self.bwd: Optional[list] = None


# Buffer sets the CPU pool keeps (all shapes together, the least recently used shapes dropped
# first), at most ``_LSTM_POOL_SIZE`` sets and ``_LSTM_POOL_BYTES`` bytes: a stacked, bidirectional
# LSTM has one set in flight per layer-direction; a set larger than the byte limit is never kept.
# Our measurement, LSTM(64,128) x 32x50x64, one thread: reusing the buffers and their views saves
# ~0.5 ms of a ~13 ms step (the views alone: ~0.6 us each, 15 a step); each set of it is ~6 MiB.
_LSTM_POOL_SIZE = 8
_LSTM_POOL_BYTES = 256 * 2**20
_LSTM_POOL: "OrderedDict[tuple, List[_LstmBuffers]]" = OrderedDict()
_LSTM_POOL_LOCK = threading.Lock()


def _lstm_buffers(x: _T, hid: int, out_size: int, proj: bool, bias: bool, reverse: bool) -> _LstmBuffers:
    """A buffer set for this shape: from the pool when one is free (CPU), else a new one."""
    key = (x.device, x.dtype, tuple(x.shape), hid, out_size, proj, bias, reverse)
    if x.device.type == "cpu":
        with _LSTM_POOL_LOCK:
            free = _LSTM_POOL.get(key)
            if free:
                return free.pop()
    return _LstmBuffers(key, x, hid, proj, bias)


def _nbytes(bufs: _LstmBuffers) -> int:
    """Bytes held by a buffer set (``DM`` is ``DH`` without a projection: counted once)."""
    held = {id(t): t for t in (bufs.A, bufs.C, bufs.M, bufs.X, bufs.Fg, bufs.DH, bufs.DM) if t is not None}
    return sum(t.numel() * t.element_size() for t in held.values())


def _lstm_release(bufs: _LstmBuffers) -> None:
    """Give a buffer set back to the pool once its backward is done (CPU only, within the limits)."""
    bufs.x_rows = None
    if bufs.key[0].type != "cpu" or _nbytes(bufs) > _LSTM_POOL_BYTES:
        return
    with _LSTM_POOL_LOCK:
        _LSTM_POOL.setdefault(bufs.key, []).append(bufs)
        _LSTM_POOL.move_to_end(bufs.key)
        count = sum(len(v) for v in _LSTM_POOL.values())
        size = sum(_nbytes(b) for v in _LSTM_POOL.values() for b in v)
        while count > _LSTM_POOL_SIZE or size > _LSTM_POOL_BYTES:  # drop the least recently used shapes' sets
            oldest = next(iter(_LSTM_POOL))
            free = _LSTM_POOL[oldest]
            if free:
                size -= _nbytes(free.pop(0))
                count -= 1
            if not free:
                del _LSTM_POOL[oldest]


def _lstm_sweep_fast(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse: bool):
    """Forward of one LSTM layer-direction on padded input.

    Returns ``(out, h_n, c_n)`` and the :class:`_LstmBuffers` the backward reads (and overwrites):
    ``A`` (T, B, 5H) = ``[σ(a_i), σ(a_f), σ(-2 a_g), σ(a_o), tanh(c_t)]``, ``C`` (c_t), ``M`` (``o tanh(c)``,
    ``None`` without a projection: then it is the output ``O``) and ``x_rows`` (T*B, I[+1]): the input
    rows, with a column of ones when there are biases.
    """
    seq_len, batch, n_in = x.shape
    hid = c0.shape[-1]
    out_size = h0.shape[-1]
    bufs = _lstm_buffers(x, hid, out_size, w_hr is not None, b_ih is not None, reverse)
    A, C = bufs.A, bufs.C
    # A[t, :, :4H]: pre-activations x_t W_ih^T + b + h_{t-1} W_hh^T (the g rows times -2), then in place σ(.)
    pre = A.view(seq_len * batch, 5 * hid)[:, :4 * hid]
    w_ih2 = _double_g(w_ih, hid)
    if b_ih is None:
        X = x.reshape(seq_len * batch, n_in)
        torch.mm(X, w_ih2.t(), out=pre)
    else:
        # [x_t, 1] [W_ih, b]^T = x_t W_ih^T + b: the bias rides in the product, which writes the
        # gate rows in place (addmm's bias would first be broadcast over all T*B rows, one more pass
        # over A: 0.65 against 0.92 ms here, 50x32x64 -> 512, our measurement); the backward reads
        # db from the same ones column (dW_ih and db in one product)
        X = bufs.X
        X[:, :n_in].view(seq_len, batch, n_in).copy_(x)
        torch.mm(X, torch.cat([w_ih2, _double_g(b_ih + b_hh, hid).unsqueeze(1)], 1).t(), out=pre)
    bufs.x_rows = X
    w_hh_t = _transposed(_double_g(w_hh, hid))
    O = x.new_empty(seq_len, batch, out_size)  # h_t, the output
    M = O if w_hr is None else bufs.M  # o_t tanh(c_t) (= h_t without a projection)
    H = hid
    if bufs.fwd is None:
        # the views of every step into the buffers, made once (unbind), in visiting order
        views = [A[..., :4 * H], A[..., :H], A[..., H:2 * H], A[..., 2 * H:3 * H], A[..., 3 * H:4 * H],
                 A[..., 4 * H:], C]
        if w_hr is not None:
            views.append(M)
        bufs.fwd = list(zip(*(v.unbind(0) for v in views)))
        if reverse:
            bufs.fwd.reverse()
    # and the output's (new every call)
    out_steps = list(O.unbind(0))
    if reverse:
        out_steps.reverse()
    per_step = [v + (o,) for v, o in zip(bufs.fwd, out_steps)]
    addcmul, mul, tanh = torch.addcmul, torch.mul, torch.tanh
    h, c = h0, c0
    w_hr_t = None if w_hr is None else _transposed(w_hr)
    for a, i, f, s, o, tc, c_new, m, *h_new in per_step:
        # gates = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh;  i, f, o = σ(.);  s = σ(-2 a_g), g = tanh(a_g) = 1 - 2 s
        a.addmm_(h, w_hh_t)
        a.sigmoid_()
        # c_t = f c_{t-1} + i g = (i + f c_{t-1}) - 2 i s
        addcmul(i, f, c, out=c_new).addcmul_(i, s, value=-2)
        # h_t = o tanh(c_t)   (projected: h_t = (o tanh(c_t)) W_hr^T; without a projection h_t is m)
        tanh(c_new, out=tc)
        mul(o, tc, out=m)
        if h_new:
            m = torch.mm(m, w_hr_t, out=h_new[0])
        h, c = m, c_new
    return (O, h.clone(), c.clone()), bufs


# Elements of D (the (T, B, 5H) gradient buffer) per block of steps whose local derivatives the
# first-order LSTM backward takes just before its loop visits them, so that the loop reads them from
# cache: 160 Ki elements (8 steps of a 32x128 LSTM, 640 KiB in float32). Our measurement,
# LSTM(64,128) x 32x50x64, one thread, paired against torch: 1.17-1.22x with blocks of 160 Ki,
# 1.21-1.25x with blocks of 320 Ki, 1.22-1.27x as one block, 1.47x with blocks of 32 Ki.
_LSTM_BLOCK = 160 * 1024


def _lstm_bptt_fast(bufs, x, h0, c0, w_ih, w_hh, w_hr, O, d_out, d_hn, d_cn, reverse: bool, norm_row, need):
    """First-order backward of :func:`_lstm_sweep_fast`: the gradients of all its inputs (``None`` where not needed).

    Overwrites ``bufs`` (the forward's ``A`` becomes the gradient buffer, ``C`` a temporary), and
    gives them back to the pool at the end.
    """
    A, C, X = bufs.A, bufs.C, bufs.x_rows
    M = O if bufs.M is None else bufs.M
    seq_len, batch, hid = C.shape
    H = hid
    S_i, S_f, G, S_o, TC = (A[..., k * H:(k + 1) * H] for k in range(5))
    first, last = (seq_len - 1, 0) if reverse else (0, seq_len - 1)  # the steps visited first and last

    # D[t] = A[t] becomes first the local derivatives of step t, order i, f, g, o, c (torch's gate
    # order, then the cell), in place over the activations they are made of:
    #   d a_i = dc g σ_i(1-σ_i),  d a_f = dc c_{t-1} σ_f(1-σ_f),  d a_g = dc i (1-g^2),
    #   d a_o = dm tanh(c) σ_o(1-σ_o),  and through m = o tanh(c):  dc += dm o (1-tanh(c)^2)
    # then, in the loop, [d a_i, d a_f, d a_g, d a_o, dL/dc_t] per step.
    D = A
    if bufs.Fg is None:
        bufs.Fg, bufs.DH = torch.empty_like(C), x.new_empty(seq_len, batch, O.shape[-1])
        bufs.DM = bufs.DH if w_hr is None else torch.empty_like(C)
    Fg = bufs.Fg
    Fg.copy_(S_f)  # σ_f, read by the dc recurrence

    one = A.new_ones(())

    def local_derivatives(a: int, b: int) -> None:
        """Steps ``a:b`` (time order) of D, in place: run for a block just before the loop visits it,
        so the block's data is still in cache when the loop reads it (see ``_LSTM_BLOCK``)."""
        s_f, s_o, s_i, g, tc, m, c = S_f[a:b], S_o[a:b], S_i[a:b], G[a:b], TC[a:b], M[a:b], C[a:b]
        # c_{t-1} σ_f (1 - σ_f) = (σ_f - σ_f σ_f) c_{t-1}, over σ_f (c_{t-1}: the step visited before,
        # c0 for the first visited; C of the block's neighbour is still intact, it is visited later)
        s_f.addcmul_(s_f, s_f, value=-1)
        if reverse:
            hi = min(b, seq_len - 1)
            if hi > a:
                S_f[a:hi].mul_(C[a + 1:hi + 1])
        else:
            lo = max(a, 1)
            if b > lo:
                S_f[lo:b].mul_(C[lo - 1:b - 1])
        if a <= first < b:
            S_f[first].mul_(c0)
        # o (1 - tanh(c)^2) = o - m tanh(c)   (m = o tanh(c)), over tanh(c)
        torch.addcmul(s_o, m, tc, value=-1, out=tc)
        # tanh(c) σ_o (1 - σ_o) = m - m σ_o, over σ_o
        torch.addcmul(m, m, s_o, value=-1, out=s_o)
        # g = tanh(a_g) = 1 - 2 σ(-2 a_g), over σ(-2 a_g)
        torch.add(one, g, alpha=-2, out=g)
        # with u = i g (in C, free now):  i (1 - g^2) = i - u g  over g;  g σ_i (1 - σ_i) = u - u σ_i  over σ_i
        torch.mul(s_i, g, out=c)
        torch.addcmul(s_i, c, g, value=-1, out=g)
        torch.addcmul(c, c, s_i, value=-1, out=s_i)

    # DH[t] = dL/dh_t: from the output at t, from step t+1 (added in the loop) and d_hn at the end
    DH = bufs.DH
    DH.copy_(d_out)
    DH[last] += d_hn
    DM = bufs.DM  # dL/dm_t = dL/dh_t W_hr with a projection (else DH itself)
    D4, D_c = D[..., :4 * H], D[..., 4 * H:]
    visits = list(_steps(seq_len, not reverse))  # backward visiting order: time indices
    if bufs.bwd is None:
        # the views of every step, made once (unbind), in the order the loop visits them (the reverse
        # of the forward's), each with dL/dh of the step visited next (its h_{t-1}: None for the last
        # one). dc, f and dm are (B, 1, H) views, broadcast over the gates they multiply.
        views = [D[..., :3 * H].unflatten(-1, (3, H)), D[..., 3 * H:].unflatten(-1, (2, H)), D_c.unsqueeze(2), D4,
                 Fg.unsqueeze(2), DM.unsqueeze(2)]
        if w_hr is not None:
            views.append(DH)
        per_time = list(zip(*(v.unbind(0) for v in views)))
        dh_time = DH.unbind(0)
        bufs.bwd = [per_time[t] + (dh_time[visits[k + 1]] if k + 1 < seq_len else None,) for k, t in enumerate(visits)]
    items = bufs.bwd
    block = max(1, _LSTM_BLOCK // max(1, batch * 5 * H))  # steps per block
    dc_next, f_next = d_cn.unsqueeze(1), None
    for k0 in range(0, seq_len, block):
        k1 = min(k0 + block, seq_len)
        t0, t1 = visits[k0], visits[k1 - 1]
        local_derivatives(min(t0, t1), max(t0, t1) + 1)  # the block of visits k0 .. k1 - 1
        for d_ifg, d_oc, dc, d4, f, dm, *dh, dh_prev in items[k0:k1]:
            if dh:
                # projection h = m W_hr^T:  dm = dh W_hr
                torch.mm(dh[0], w_hr, out=dm.squeeze(1))
            # [d a_o, dc] = dm [tanh(c) σ_o', o (1-tanh(c)^2)];  then dc += dL/dc_{t+1} f_{t+1}
            d_oc.mul_(dm)
            if f_next is None:
                dc.add_(dc_next)
            else:
                dc.addcmul_(dc_next, f_next)
            # [d a_i, d a_f, d a_g] = dc [g σ_i', c_{t-1} σ_f', i (1-g^2)]
            d_ifg.mul_(dc)
            if dh_prev is not None:
                # gates = ... + W_hh h_{t-1}:  dL/dh_{t-1} += d a_t W_hh
                dh_prev.addmm_(d4, w_hh)
            dc_next, f_next = dc, f
    if norm_row is not None:
        with torch.no_grad():
            norm_row.copy_(torch.linalg.vector_norm(DH, dim=(1, 2)))

    flat = D4.reshape(-1, 4 * H)  # a view: the (T, B) dimensions of D merge
    grads = [None] * 8  # x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
    if need[0]:
        # gi_t = x_t W_ih^T + b:  dx_t = d a_t W_ih
        grads[0] = flat.mm(w_ih).view(seq_len, batch, -1)
    if need[1]:
        grads[1] = D4[first].mm(w_hh)
    if need[2]:
        grads[2] = D[first, :, 4 * H:] * Fg[first]
    n_in = x.shape[-1]
    if need[3] or need[5] or need[6]:
        # dW_ih = Σ_t d a_t^T x_t, and with biases (they come in pairs; X = [x_t, 1]):
        # [dW_ih, db] = Σ_t d a_t^T [x_t, 1]
        dw_b = flat.t().mm(X)
        grads[3] = dw_b[:, :n_in] if need[3] else None
    if need[4]:
        # dW_hh = Σ_t d a_t^T h_{t-1}  (h_{t-1} = h0 for the first visited step): the steps
        # visited after the first (here) and the neighbour visited before each (prev)
        prev = slice(1, None) if reverse else slice(None, -1)
        here = slice(None, -1) if reverse else slice(1, None)
        rest = D4[here].reshape(-1, 4 * H)
        grads[4] = torch.addmm(D4[first].t().mm(h0), rest.t(), O[prev].reshape(-1, O.shape[-1]))
    if need[5] or need[6]:
        # db_ih = db_hh = Σ_t d a_t
        db = dw_b[:, n_in]
        grads[5] = db if need[5] else None
        grads[6] = (db.clone() if need[5] else db) if need[6] else None
    if need[7]:
        # dW_hr = Σ_t dh_t^T m_t
        grads[7] = _sum_outer(DH, M)
    _lstm_release(bufs)  # no gradient above is a view of the buffers
    return grads


# =============================================================================== GRU
def _gru_sweep(x, h0, w_ih, w_hh, b_ih, b_hh, reverse: bool, mask):
    """Forward of one GRU layer-direction (gate order r, z, n, as torch)."""
    hid = h0.shape[-1]
    gi = _input_proj(x, w_ih, b_ih)
    w_hh_t = _transposed(w_hh)
    h, hs_prev, rzs, ns, ghns, outs = h0, [], [], [], [], []
    for t in _steps(x.shape[0], reverse):
        # gh = W_hh h_{t-1} + b_hh;   r, z = σ(gi_rz + gh_rz)
        gh = h.mm(w_hh_t) if b_hh is None else torch.addmm(b_hh, h, w_hh_t)
        rz = torch.sigmoid(gi[t][:, :2 * hid] + gh[:, :2 * hid])
        r, z = rz[:, :hid], rz[:, hid:]
        # n = tanh(gi_n + r gh_n)
        ghn = gh[:, 2 * hid:]
        n = torch.tanh(torch.addcmul(gi[t][:, 2 * hid:], r, ghn))
        # h_t = (1 - z) n + z h_{t-1} = n + z (h_{t-1} - n)
        h_new = torch.addcmul(n, z, h - n)
        hs_prev.append(h)
        rzs.append(rz)
        ns.append(n)
        ghns.append(ghn)
        mt = None if mask is None else mask[t]
        outs.append(h_new if mt is None else torch.where(mt, h_new, 0.0))
        h = _carry(mt, h_new, h)
    saved = (torch.stack(hs_prev), torch.stack(rzs), torch.stack(ns), torch.stack(ghns))
    return (_in_time_order(outs, reverse), h), saved


def _gru_bptt(saved, d_out, d_hn, w_hh, reverse: bool, mask, norm_row):
    """Backward of :func:`_gru_sweep`, step by step from the last step to the first."""
    hs_prev, rzs, ns, ghns = saved
    hid = ns.shape[-1]
    seq_len = d_out.shape[0]
    dh = d_hn  # dL/dh after the last step
    dgis: List[_T] = [None] * seq_len  # type: ignore[list-item]
    dghs: List[_T] = [None] * seq_len  # type: ignore[list-item]
    for k, t in reversed(list(enumerate(_steps(seq_len, reverse)))):
        dh_new, dh_skip = _arriving(dh, d_out[t], None if mask is None else mask[t], norm_row, t)
        rz, n, ghn, h = rzs[k], ns[k], ghns[k], hs_prev[k]
        r, z = rz[:, :hid], rz[:, hid:]
        # h_t = (1 - z) n + z h:  dn = dh (1 - z),  dz = dh (h - n),  dh_prev gets dh z directly
        dn, dz = dh_new * (1 - z), dh_new * (h - n)
        # n = tanh(gi_n + r gh_n):  da_n = dn (1 - n^2),  dr = da_n gh_n,  d gh_n = da_n r
        da_n = dn * (1 - n * n)
        dr = da_n * ghn
        # r, z = σ(a):  da = d(.) σ (1 - σ)
        da_rz = torch.cat([dr, dz], dim=1) * rz * (1 - rz)
        dgis[k] = torch.cat([da_rz, da_n], dim=1)
        dghs[k] = torch.cat([da_rz, da_n * r], dim=1)
        # gh = W_hh h_{t-1} + b_hh:  dh_{t-1} = dh z + d gh W_hh
        dh = torch.addmm(dh_new * z, dghs[k], w_hh)
        if mask is not None:
            dh = dh + dh_skip
    return torch.stack(dgis), torch.stack(dghs), hs_prev, dh, None, None


# ======================================================== one layer-direction as a Function
def _sum_outer(a: _T, b: _T) -> _T:
    """``Σ_{t,b} a[t, b]^T b[t, b]``: ``(T, B, G), (T, B, K) -> (G, K)``."""
    return a.reshape(-1, a.shape[-1]).t().mm(b.reshape(-1, b.shape[-1]))


def _sweep(kind: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, mask):
    if kind == "lstm":
        return _lstm_sweep(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, mask)
    if kind == "gru":
        return _gru_sweep(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, mask)
    return _rnn_sweep(x, h0, w_ih, w_hh, b_ih, b_hh, kind == "rnn_relu", reverse, mask)


class _RecurrentLayerFn(torch.autograd.Function):
    """One layer, one direction: ``x (T, B, I), h0 (B, H)[, c0] -> out (T, B, H), h_n[, c_n]``."""

    @staticmethod
    def forward(ctx: Any, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, kind: str, reverse: bool, mask, norm_row):  # type: ignore[override]
        ctx.fast = kind == "lstm" and mask is None
        with plain_torch():  # a few hundred small kernels: none of them goes through a torch-function mode
            if ctx.fast:
                outputs, ctx.buffers = _lstm_sweep_fast(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
                saved = (outputs[0],)  # O: the output, and h_{t-1} of the weight gradient
            else:
                outputs, saved = _sweep(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, mask)
        ctx.kind, ctx.reverse, ctx.norm_row = kind, reverse, norm_row
        # inputs (for dW_ih, dx and the double-backward replay) and the kept activations
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, mask, *saved)
        return outputs

    @staticmethod
    def backward(ctx: Any, d_out, d_hn, d_cn=None):  # type: ignore[override]
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, mask, *saved = ctx.saved_tensors
        kind, reverse = ctx.kind, ctx.reverse
        if torch.is_grad_enabled():
            # building a graph of the backward: replay the sweep with autograd recording,
            # so the activations below depend on the inputs (second derivatives through every gate)
            _, saved = _sweep(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, mask)
        elif ctx.fast:
            buffers, ctx.buffers = ctx.buffers, None  # this backward overwrites them: a second one replays
            with plain_torch():
                if buffers is None:
                    _, buffers = _lstm_sweep_fast(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
                grads = _lstm_bptt_fast(buffers, x, h0, c0, w_ih, w_hh, w_hr, saved[0], d_out, d_hn, d_cn, reverse,
                                        ctx.norm_row, ctx.needs_input_grad)
            return (*grads, None, None, None, None)
        if kind == "lstm":
            d_gi, d_gh, hs_prev, dh0, dc0, d_w_hr = _lstm_bptt(
                saved, d_out, d_hn, d_cn, w_hh, w_hr, reverse, mask, ctx.norm_row, ctx.needs_input_grad[7])
        elif kind == "gru":
            d_gi, d_gh, hs_prev, dh0, dc0, d_w_hr = _gru_bptt(saved, d_out, d_hn, w_hh, reverse, mask, ctx.norm_row)
        else:
            d_gi, d_gh, hs_prev, dh0, dc0, d_w_hr = _rnn_bptt(
                saved, d_out, d_hn, w_hh, kind == "rnn_relu", reverse, mask, ctx.norm_row)
        need = ctx.needs_input_grad
        dx = d_w_ih = d_w_hh = d_b_ih = d_b_hh = None
        # the per-step gate gradients were kept in visiting order: put the input side in time order
        d_gi_time = d_gi.flip(0) if reverse else d_gi
        if need[0]:
            # gi_t = x_t W_ih^T + b:  dx_t = d gi_t W_ih
            dx = d_gi_time.matmul(w_ih)
        if need[3]:
            # dW_ih = Σ_t d gi_t^T x_t
            d_w_ih = _sum_outer(d_gi_time, x)
        if need[4]:
            # dW_hh = Σ_t d gh_t^T h_{t-1}
            d_w_hh = _sum_outer(d_gh, hs_prev)
        if need[5]:
            # db_ih = Σ_t d gi_t
            d_b_ih = d_gi.sum((0, 1))
        if need[6]:
            # db_hh = Σ_t d gh_t
            d_b_hh = d_gh.sum((0, 1))
        return (dx, dh0 if need[1] else None, dc0 if need[2] else None, d_w_ih, d_w_hh, d_b_ih, d_b_hh,
                d_w_hr, None, None, None, None)


# ===================================================================== the full stack
def _layer_params(kind: str, params: Sequence[_T], has_biases: bool, n_layer_dirs: int):
    """Split torch's flat weight list into per layer-direction ``(w_ih, w_hh, b_ih, b_hh, w_hr)``."""
    per, rem = divmod(len(params), n_layer_dirs)
    base = 4 if has_biases else 2
    allowed = (base, base + 1) if kind == "lstm" else (base,)
    if rem or per not in allowed:
        raise ValueError(
            f"{kind}(params=...): expected {' or '.join(str(a * n_layer_dirs) for a in allowed)} tensors for "
            f"{n_layer_dirs} layer-direction(s) with has_biases={has_biases}, got {len(params)}"
        )
    out = []
    for k in range(n_layer_dirs):
        w = list(params[k * per:(k + 1) * per])
        w_ih, w_hh = w[0], w[1]
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        w_hr = w[-1] if per == base + 1 else None
        out.append((w_ih, w_hh, b_ih, b_hh, w_hr))
    return out


def _check_layer(kind: str, k: int, weights, in_size: int, hid: int, out_size: int) -> None:
    gates = _GATES[kind]
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    expected = [("weight_ih", w_ih, (gates * hid, in_size)), ("weight_hh", w_hh, (gates * hid, out_size)),
                ("bias_ih", b_ih, (gates * hid,)), ("bias_hh", b_hh, (gates * hid,)), ("weight_hr", w_hr, (out_size, hid))]
    for name, t, shape in expected:
        if t is None:
            continue
        check_tensor(kind, f"params ({name} of layer-direction {k})", t, floating=True)
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{kind}(params=...): {name} of layer-direction {k} should have shape {list(shape)}, got {list(t.shape)}"
            )


def _as_packed(args: tuple) -> bool:
    """Torch's packed overload passes ``batch_sizes`` (a 1-D integer tensor) second."""
    return len(args) > 1 and torch.is_tensor(args[1]) and not args[1].is_floating_point() and args[1].dim() == 1


def _run(kind: str, input: _T, hx: Tuple[_T, ...], params: Sequence[_T], has_biases: bool, num_layers: int,
         dropout: float, train: bool, bidirectional: bool, batch_first: bool,
         batch_sizes: Optional[_T], hidden_grad_norm: Optional[_T]):
    """The whole stack: layers, directions, dropout between layers; returns ``(out, h_n[, c_n])``."""
    check_tensor(kind, "input", input, floating=True)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"{kind}(num_layers=...) expects a positive int, got {num_layers!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"{kind}(dropout=...) expects a probability in [0, 1], got {dropout!r}")
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"{kind}(params=...) expects a list of tensors, got {type(params).__name__}")
    n_dirs = 2 if bidirectional else 1
    layers = _layer_params(kind, params, bool(has_biases), num_layers * n_dirs)

    mask = None
    if batch_sizes is not None:
        # packed: step t of sequence b is valid when b < batch_sizes[t] (sequences sorted by length)
        if input.dim() != 2:
            raise ValueError(f"{kind}(data=...) expects packed data of shape (sum of lengths, input_size), got {list(input.shape)}")
        sizes = batch_sizes.to(device=input.device, dtype=torch.long)
        valid = torch.arange(int(batch_sizes[0]), device=input.device) < sizes[:, None]  # (T, B)
        x = input.new_zeros(valid.shape + (input.shape[-1],))
        x = x.index_put((valid,), input)  # packed rows come in (t, b) order: exactly valid's order
        mask = valid.unsqueeze(-1)
    else:
        if input.dim() != 3:
            raise ValueError(f"{kind}(input=...) expects a 3-D tensor (seq, batch, feature), got {input.dim()}-D")
        x = input.transpose(0, 1) if batch_first else input
    if x.shape[0] == 0:
        raise ValueError(f"{kind}(input=...): expected sequence length to be larger than 0")
    seq_len = x.shape[0]
    if hidden_grad_norm is not None:
        check_tensor(kind, "hidden_grad_norm", hidden_grad_norm, floating=True)
        if tuple(hidden_grad_norm.shape) != (num_layers * n_dirs, seq_len):
            raise ValueError(f"{kind}(hidden_grad_norm=...) expects shape {[num_layers * n_dirs, seq_len]}, "
                             f"got {list(hidden_grad_norm.shape)}")

    h_out: List[_T] = []
    c_out: List[_T] = []
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(n_dirs):
            k = layer * n_dirs + d
            w_ih, w_hh, b_ih, b_hh, w_hr = layers[k]
            hid = w_hh.shape[1] if w_hr is None else w_hr.shape[1]
            out_size = w_hh.shape[1]
            _check_layer(kind, k, layers[k], layer_in.shape[-1], hid, out_size)
            h0 = hx[0][k]
            c0 = hx[1][k] if kind == "lstm" else None
            norm_row = None if hidden_grad_norm is None else hidden_grad_norm[k]
            res = _RecurrentLayerFn.apply(layer_in, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, kind, d == 1, mask, norm_row)
            outs.append(res[0])
            h_out.append(res[1])
            if kind == "lstm":
                c_out.append(res[2])
        layer_out = outs[0] if n_dirs == 1 else torch.cat(outs, dim=2)
        if dropout and train and layer < num_layers - 1:
            layer_out = _dropout(layer_out, float(dropout), True)
        layer_in = layer_out

    if batch_sizes is not None:
        output = layer_in[valid]  # back to packed rows
    else:
        output = layer_in.transpose(0, 1) if batch_first else layer_in
    if kind == "lstm":
        return output, torch.stack(h_out), torch.stack(c_out)
    return output, torch.stack(h_out)


def _hidden_checked(kind: str, hx: Any, n_state: int) -> Tuple[_T, ...]:
    if n_state == 2:
        if not isinstance(hx, (list, tuple)) or len(hx) != 2 or not all(torch.is_tensor(t) for t in hx):
            raise TypeError(f"{kind}(hx=...) expects a pair of tensors (h0, c0), got {type(hx).__name__}")
        hx = tuple(hx)
    else:
        check_tensor(kind, "hx", hx, floating=True)
        hx = (hx,)
    for name, t in zip(("h0", "c0"), hx):
        if t.dim() != 3:
            raise ValueError(f"{kind}(hx=...): {name} should be 3-D (num_layers * num_directions, batch, hidden), "
                             f"got {t.dim()}-D")
    return hx


def _dispatch(kind: str, n_state: int, args: tuple, hidden_grad_norm: Optional[_T]):
    """Both of torch's overloads: ``(input, hx, params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first)`` and ``(data, batch_sizes, hx, params, has_biases, num_layers,
    dropout, train, bidirectional)``."""
    if _as_packed(args):
        if len(args) != 9:
            raise TypeError(f"{kind}(data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, "
                            f"bidirectional) takes 9 arguments, got {len(args)}")
        data, batch_sizes, hx, *rest = args
        hx = _hidden_checked(kind, hx, n_state)
        return _run(kind, data, hx, *rest, False, batch_sizes, hidden_grad_norm)
    if len(args) != 9:
        raise TypeError(f"{kind}(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, "
                        f"batch_first) takes 9 arguments, got {len(args)}")
    input, hx, *rest = args
    hx = _hidden_checked(kind, hx, n_state)
    return _run(kind, input, hx, *rest, None, hidden_grad_norm)


def rnn_tanh(*args: Any, hidden_grad_norm: Optional[_T] = None) -> Tuple[_T, _T]:
    """Drop-in for ``torch.rnn_tanh`` (what ``nn.RNN`` calls): ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    Call it as torch does: ``rnn_tanh(input, hx, params, has_biases, num_layers, dropout,
    train, bidirectional, batch_first)`` or, packed, ``rnn_tanh(data, batch_sizes, hx, params,
    has_biases, num_layers, dropout, train, bidirectional)``. ``params`` is the module's flat
    weight list (``module._flat_weights``: per layer and direction ``weight_ih, weight_hh
    [, bias_ih, bias_hh]``). Returns ``(output, h_n)``.

    Args:
        hidden_grad_norm: optional ``(num_layers * num_directions, seq_len)`` tensor the
            backward fills with ``‖dL/dh_t‖`` per layer-direction and step.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> rnn = torch.nn.RNN(3, 4)
        >>> x, h0 = torch.randn(6, 2, 3), torch.zeros(1, 2, 4)
        >>> out, h_n = GF.rnn_tanh(x, h0, rnn._flat_weights, True, 1, 0.0, False, False, False)
        >>> torch.allclose(out, rnn(x)[0], atol=1e-6)
        True
    """
    return _dispatch("rnn_tanh", 1, args, hidden_grad_norm)


def rnn_relu(*args: Any, hidden_grad_norm: Optional[_T] = None) -> Tuple[_T, _T]:
    """Drop-in for ``torch.rnn_relu`` (``nn.RNN(nonlinearity="relu")``); arguments as :func:`rnn_tanh`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> rnn = torch.nn.RNN(3, 4, nonlinearity="relu")
        >>> x, h0 = torch.randn(6, 2, 3), torch.zeros(1, 2, 4)
        >>> out, h_n = GF.rnn_relu(x, h0, rnn._flat_weights, True, 1, 0.0, False, False, False)
        >>> torch.allclose(out, rnn(x)[0], atol=1e-6)
        True
    """
    return _dispatch("rnn_relu", 1, args, hidden_grad_norm)


def lstm(*args: Any, hidden_grad_norm: Optional[_T] = None) -> Tuple[_T, _T, _T]:
    """Drop-in for ``torch.lstm`` (what ``nn.LSTM`` calls); returns ``(output, h_n, c_n)``.

    Arguments as :func:`rnn_tanh`, with ``hx = (h0, c0)``. With a projection
    (``proj_size > 0``) each layer-direction's weights end with ``weight_hr``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> m = torch.nn.LSTM(3, 4, proj_size=2)
        >>> x, hx = torch.randn(6, 2, 3), (torch.zeros(1, 2, 2), torch.zeros(1, 2, 4))
        >>> out, h_n, c_n = GF.lstm(x, hx, m._flat_weights, True, 1, 0.0, False, False, False)
        >>> out.shape, c_n.shape
        (torch.Size([6, 2, 2]), torch.Size([1, 2, 4]))
    """
    return _dispatch("lstm", 2, args, hidden_grad_norm)


def gru(*args: Any, hidden_grad_norm: Optional[_T] = None) -> Tuple[_T, _T]:
    """Drop-in for ``torch.gru`` (what ``nn.GRU`` calls); arguments as :func:`rnn_tanh`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> m = torch.nn.GRU(3, 4, bidirectional=True)
        >>> x, h0 = torch.randn(6, 2, 3), torch.zeros(2, 2, 4)
        >>> out, h_n = GF.gru(x, h0, m._flat_weights, True, 1, 0.0, False, True, False)
        >>> torch.allclose(out, m(x)[0], atol=1e-6)
        True
    """
    return _dispatch("gru", 1, args, hidden_grad_norm)
