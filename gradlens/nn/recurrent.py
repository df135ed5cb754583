"""``gradlens.nn.RNN`` / ``LSTM`` / ``GRU``: torch's recurrent modules run by :mod:`gradlens.functional.recurrent`.

Each twin subclasses the torch module, so constructor arguments, parameter names
(``weight_ih_l0``, ``weight_hh_l0_reverse``, ``weight_hr_l0``, ...) and ``state_dict``
are torch's. ``forward`` repeats torch's module logic (unbatched input, ``hx=None``,
``batch_first``, ``PackedSequence`` with its sorted/unsorted indices, torch's own
argument checks) and calls gradlens' hand-written backprop through time.

Set ``track_hidden_grad_norm = True`` on a twin to have each backward fill
``twin.hidden_grad_norm``, a ``(num_layers * num_directions, seq_len)`` tensor of
``‖dL/dh_t‖`` per layer-direction and time step (allocated by every forward).

Example:
    >>> import torch, gradlens
    >>> lstm = gradlens.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    >>> lstm.track_hidden_grad_norm = True
    >>> out, (h_n, c_n) = lstm(torch.randn(2, 7, 3))
    >>> out[:, -1].sum().backward()
    >>> lstm.hidden_grad_norm.shape
    torch.Size([2, 7])
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from gradlens.functional import recurrent as _F

__all__ = ["RNN", "LSTM", "GRU"]


def _recurrent_forward(module: nn.RNNBase, fn: Callable[..., Any], input: Any, hx: Any) -> Any:
    """torch's ``RNN/LSTM/GRU.forward``, step for step, with gradlens' recurrent function."""
    name = type(module).__name__
    is_lstm = isinstance(module, nn.LSTM)
    n_dirs = 2 if module.bidirectional else 1
    out_size = module.proj_size if module.proj_size > 0 else module.hidden_size
    packed = isinstance(input, PackedSequence)
    is_batched = True
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        batch, seq_len = int(batch_sizes[0]), len(batch_sizes)
    else:
        data, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
        if not torch.is_tensor(data):
            raise TypeError(f"{name}(input=...) expects a Tensor or PackedSequence, got {type(data).__name__}")
        if data.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {data.dim()}D tensor instead")
        is_batched = data.dim() == 3
        batch_dim = 0 if module.batch_first else 1
        if not is_batched:
            data = data.unsqueeze(batch_dim)
        batch, seq_len = data.size(batch_dim), data.size(1 - batch_dim)
    if hx is None:
        shape = (module.num_layers * n_dirs, batch)
        h0 = torch.zeros(shape + (out_size,), dtype=data.dtype, device=data.device)
        hx = (h0, torch.zeros(shape + (module.hidden_size,), dtype=data.dtype, device=data.device)) if is_lstm else h0
    else:
        if not packed:
            states = hx if is_lstm else (hx,)
            want = 3 if is_batched else 2
            if any(t.dim() != want for t in states):
                dims = ", ".join(f"{t.dim()}-D" for t in states)
                raise RuntimeError(f"For {'batched 3-D' if is_batched else 'unbatched 2-D'} input, hx should also "
                                   f"be {want}-D but got ({dims}) tensor(s)")
            if not is_batched:
                hx = tuple(t.unsqueeze(1) for t in hx) if is_lstm else hx.unsqueeze(1)
        # each batch row of the hidden state matches the sequence the user passed there
        hx = module.permute_hidden(hx, sorted_indices)
    module.check_forward_args(data, hx, batch_sizes)
    weights = [getattr(module, w) for w in module._flat_weights_names]
    norms = None
    if getattr(module, "track_hidden_grad_norm", False):
        norms = torch.zeros(module.num_layers * n_dirs, seq_len, dtype=data.dtype, device=data.device)
        module.hidden_grad_norm = norms
    options = (module.bias, module.num_layers, float(module.dropout), module.training, module.bidirectional)
    if packed:
        result = fn(data, batch_sizes, hx, weights, *options, hidden_grad_norm=norms)
    else:
        result = fn(data, hx, weights, *options, module.batch_first, hidden_grad_norm=norms)
    output = result[0]
    hidden = (result[1], result[2]) if is_lstm else result[1]
    if packed:
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), \
            module.permute_hidden(hidden, unsorted_indices)
    if not is_batched:
        output = output.squeeze(0 if module.batch_first else 1)
        hidden = tuple(t.squeeze(1) for t in hidden) if is_lstm else hidden.squeeze(1)
    return output, hidden


class _Tracking:
    """The opt-in per-step gradient-norm attributes shared by the three twins."""

    #: Set True to have every backward fill :attr:`hidden_grad_norm`.
    track_hidden_grad_norm: bool = False
    #: ``(num_layers * num_directions, seq_len)``: ``‖dL/dh_t‖`` of the last backward.
    hidden_grad_norm: Optional[torch.Tensor] = None


class RNN(_Tracking, nn.RNN):
    """Twin of :class:`torch.nn.RNN` (tanh or relu) with hand-written backprop through time.

    Example:
        >>> import torch, gradlens
        >>> rnn = gradlens.nn.RNN(3, 4, nonlinearity="relu", bidirectional=True)
        >>> out, h_n = rnn(torch.randn(5, 3))        # unbatched (seq, feature)
        >>> out.shape, h_n.shape
        (torch.Size([5, 8]), torch.Size([2, 4]))
    """

    def forward(self, input: Any, hx: Optional[torch.Tensor] = None) -> Any:
        fn = _F.rnn_tanh if self.nonlinearity == "tanh" else _F.rnn_relu
        return _recurrent_forward(self, fn, input, hx)


class LSTM(_Tracking, nn.LSTM):
    """Twin of :class:`torch.nn.LSTM` (``proj_size`` included) with hand-written backprop through time.

    Example:
        >>> import torch, gradlens
        >>> lstm = gradlens.nn.LSTM(3, 4, proj_size=2)
        >>> out, (h_n, c_n) = lstm(torch.randn(5, 1, 3))
        >>> out.shape, c_n.shape
        (torch.Size([5, 1, 2]), torch.Size([1, 1, 4]))
    """

    def forward(self, input: Any, hx: Optional[Any] = None) -> Any:
        return _recurrent_forward(self, _F.lstm, input, hx)


class GRU(_Tracking, nn.GRU):
    """Twin of :class:`torch.nn.GRU` with hand-written backprop through time.

    Example:
        >>> import torch, gradlens
        >>> gru = gradlens.nn.GRU(3, 4, num_layers=2)
        >>> out, h_n = gru(torch.randn(5, 2, 3))
        >>> out.shape, h_n.shape
        (torch.Size([5, 2, 4]), torch.Size([2, 2, 4]))
    """

    def forward(self, input: Any, hx: Optional[torch.Tensor] = None) -> Any:
        return _recurrent_forward(self, _F.gru, input, hx)


#: torch module class -> gradlens twin class, collected by gradlens.mirror.
TWINS: dict = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}
