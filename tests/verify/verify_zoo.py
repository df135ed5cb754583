"""Correct and deliberately broken autograd Functions for the check_backward tests.

Each broken Function differs from its correct twin by one realistic bug; BUGS maps a
readable id to ``(fn, make_inputs, reference, expected diagnosis substring)``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch


def _fn(forward: Callable, backward: Callable, name: str) -> Callable:
    """A torch.autograd.Function from a forward and a backward(ctx, *grads)."""

    def fwd(ctx, *args):
        ctx.save_for_backward(*[a for a in args if torch.is_tensor(a)])
        return forward(*args)

    cls = type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(backward)})
    return cls.apply


# --------------------------------------------------------------------------- correct
def _sin_bw(ctx, g):
    (x,) = ctx.saved_tensors
    # d sin(x) = cos(x)
    return g * x.cos()


Sin = _fn(torch.sin, _sin_bw, "Sin")


def _mm_bw(ctx, g):
    x, w = ctx.saved_tensors
    # y = x @ w: dx = g w^T, dw = x^T g
    return g @ w.t(), x.t() @ g


MatMul = _fn(torch.matmul, _mm_bw, "MatMul")


def _linear_bw(ctx, g):
    x, w, b = ctx.saved_tensors
    # y = x w^T + b
    return g @ w, g.t() @ x, g.sum(0)


Linear = _fn(lambda x, w, b: x @ w.t() + b, _linear_bw, "Linear")


def _lse_fwd(x):
    m = x.amax(-1, keepdim=True)
    return (m + (x - m).exp().sum(-1, keepdim=True).log()).squeeze(-1)


def _lse_bw(ctx, g):
    (x,) = ctx.saved_tensors
    # d logsumexp = softmax
    return g.unsqueeze(-1) * torch.softmax(x, -1)


LogSumExp = _fn(_lse_fwd, _lse_bw, "LogSumExp")


def _sum_bw(ctx, g):
    (x,) = ctx.saved_tensors
    return g.unsqueeze(-1).expand_as(x).clone()


RowSum = _fn(lambda x: x.sum(-1), _sum_bw, "RowSum")


def _cumsum_bw(ctx, g):
    # d cumsum: reversed cumulative sum of the gradient
    return g.flip(1).cumsum(1).flip(1)


CumSum = _fn(lambda x: x.cumsum(1), _cumsum_bw, "CumSum")


def _piece_fwd(x):
    return torch.where(x < 1, x * x, 2 * x - 1)


def _piece_bw(ctx, g):
    (x,) = ctx.saved_tensors
    # f = x^2 (x < 1), 2x - 1 (x >= 1): f' = 2x, 2
    return g * torch.where(x < 1, 2 * x, torch.full_like(x, 2.0))


Piece = _fn(_piece_fwd, _piece_bw, "Piece")


def _res_bw(ctx, g):
    x, w = ctx.saved_tensors
    # y = x * w + x: dx = g w + g, dw = g x
    return g * w + g, g * x


Residual = _fn(lambda x, w: x * w + x, _res_bw, "Residual")


def _relu_bw(ctx, g):
    (x,) = ctx.saved_tensors
    return g * (x > 0).to(g.dtype)


Relu = _fn(torch.relu, _relu_bw, "Relu")


def _two_bw(ctx, ga, gb):
    x, y = ctx.saved_tensors
    # a = x * y, b = sin(y)
    return ga * y, ga * x + gb * y.cos()


TwoOut = _fn(lambda x, y: (x * y, y.sin()), _two_bw, "TwoOut")


# --------------------------------------------------------------------------- broken
def _b_sign(ctx, g):
    (x,) = ctx.saved_tensors
    return -g * x.cos()


def _b_transpose(ctx, g):
    x, w = ctx.saved_tensors
    return g @ w.t(), (x.t() @ g).t()  # bug: transposed weight gradient


def _b_mean(ctx, g):
    (x,) = ctx.saved_tensors
    return g.unsqueeze(-1).expand_as(x) / x.shape[-1]  # bug: a mean's backward for a sum


def _b_forgot(ctx, g):
    x, w = ctx.saved_tensors
    return g * w, g * x  # bug: forgot the identity term of dx


def _b_edge(ctx, g):
    (x,) = ctx.saved_tensors
    return g * torch.where(x < 0.5, 2 * x, torch.full_like(x, 2.0))  # bug: edge at 0.5, not 1


def _b_cumsum(ctx, g):
    return g.cumsum(1)  # bug: accumulated in the forward direction


def _b_one(ctx, g):
    (x,) = ctx.saved_tensors
    out = g * x.cos()
    out.view(-1)[13] *= 2  # bug: one element scaled
    return out


def _b_tail(ctx, g):
    (x,) = ctx.saved_tensors
    out = torch.zeros_like(g)
    chunk = 1024
    for start in range(0, (g.numel() // chunk) * chunk, chunk):  # bug: drops the partial last chunk
        out[start : start + chunk] = 2 * g[start : start + chunk]
    return out


def _b_cols(ctx, g):
    (x,) = ctx.saved_tensors
    out = g * x.cos()
    out[:, 3:5] = g[:, 3:5]  # bug: last columns take a stale/wrong formula
    return out


def _b_mutate(ctx, g):
    (x,) = ctx.saved_tensors
    return g.mul_(x.cos())  # bug: in place on grad_output (the result itself is right)


def _b_missing(ctx, g):
    x, w = ctx.saved_tensors
    return g * w + g, None  # bug: no gradient for w


def _b_spurious(ctx, g):
    x, y = ctx.saved_tensors
    return 2 * g, g  # bug: y is unused by the forward


def _b_ignore(ctx, g):
    (x,) = ctx.saved_tensors
    return x.cos()  # bug: d(sum(out))/dx, grad_output ignored


def _b_nondet(ctx, g):
    (x,) = ctx.saved_tensors
    return g * x.cos() + 1e-3 * torch.randn_like(x)  # bug: noise (a racy kernel)


def _b_dtype(ctx, g):
    (x,) = ctx.saved_tensors
    return (g * x.cos()).double()  # bug: float64 gradient for a float32 input


def _b_shape(ctx, g):
    (x,) = ctx.saved_tensors
    return (g * x.cos()).unsqueeze(-1)  # bug: extra dim


def _in(*shapes, scale=1.0, offset=0.0, low=None, high=None):
    def make(dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(len(shapes) * 7 + int(scale))
        out = []
        for s in shapes:
            if low is not None:
                t = torch.rand(s, generator=gen, dtype=torch.float64) * (high - low) + low
            else:
                t = torch.randn(s, generator=gen, dtype=torch.float64) * scale + offset
            out.append(t.to(dtype).requires_grad_(True))
        return tuple(out)

    return make


def _relu_inputs(dtype):
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[0, 0] = 0.0
    x[2, 3] = 0.0
    return (x.to(dtype).requires_grad_(True),)


def _tail_in(dtype):
    return (torch.randn(4100, generator=torch.Generator().manual_seed(5)).to(dtype).requires_grad_(True),)


#: id -> (fn, make_inputs(dtype), reference)
CORRECT: Dict[str, Tuple[Callable, Callable, Any]] = {
    "sin": (Sin, _in((3, 4)), torch.sin),
    "matmul-square": (MatMul, _in((5, 5), (5, 5)), torch.matmul),
    "linear": (Linear, _in((7, 4), (3, 4), (3,)), torch.nn.functional.linear),
    "logsumexp-large": (LogSumExp, _in((4, 9), scale=30.0, offset=1e4), lambda x: torch.logsumexp(x, -1)),
    "rowsum": (RowSum, _in((4, 6)), lambda x: x.sum(-1)),
    "cumsum": (CumSum, _in((3, 8)), lambda x: x.cumsum(1)),
    "piecewise": (Piece, _in((200,), low=-2.0, high=3.0), _piece_fwd),
    "residual": (Residual, _in((4, 5), (4, 5)), lambda x, w: x * w + x),
    "two-outputs": (TwoOut, _in((3, 4), (3, 4)), lambda x, y: (x * y, y.sin())),
}

#: id -> (fn, make_inputs(dtype), reference, diagnosis substring)
BUGS: Dict[str, Tuple[Callable, Callable, Any, str]] = {
    "wrong-sign": (_fn(torch.sin, _b_sign, "SinWrongSign"), _in((3, 4)), torch.sin, "sign flipped"),
    "missing-transpose": (_fn(torch.matmul, _b_transpose, "MatMulT"), _in((5, 5), (5, 5)), torch.matmul, "transposed"),
    "mean-for-sum": (_fn(lambda x: x.sum(-1), _b_mean, "SumMean"), _in((4, 6)), lambda x: x.sum(-1), "x 1/6"),
    "forgotten-term": (_fn(lambda x, w: x * w + x, _b_forgot, "ResidualForgot"), _in((4, 5), (4, 5)), lambda x, w: x * w + x, "forgotten term"),
    "wrong-edge": (_fn(_piece_fwd, _b_edge, "PieceEdge"), _in((200,), low=-2.0, high=3.0), _piece_fwd, "piecewise edge"),
    "reversed-cumsum": (_fn(lambda x: x.cumsum(1), _b_cumsum, "CumSumRev"), _in((3, 8)), lambda x: x.cumsum(1), "reversed along dim 1"),
    "one-element": (_fn(torch.sin, _b_one, "SinOne"), _in((5, 6)), torch.sin, "wrong only at element [2, 1]"),
    "dropped-tail": (_fn(lambda x: 2 * x, _b_tail, "Chunked"), _tail_in, lambda x: 2 * x, "4096..4099 of 4100"),
    "wrong-columns": (_fn(torch.sin, _b_cols, "SinCols"), _in((6, 5)), torch.sin, "index 3..4 along dim 1"),
    "mutated-grad-output": (_fn(torch.sin, _b_mutate, "SinMutate"), _in((3, 4)), torch.sin, "mutates grad_output"),
    "missing-gradient": (_fn(lambda x, w: x * w + x, _b_missing, "ResidualNoW"), _in((4, 5), (4, 5)), lambda x, w: x * w + x, "gradient missing"),
    "spurious-gradient": (_fn(lambda x, y: 2 * x, _b_spurious, "Spurious"), _in((3, 4), (3, 4)), lambda x, y: 2 * x, "none should be"),
    "ignores-grad-output": (_fn(torch.sin, _b_ignore, "SinIgnore"), _in((3, 4)), torch.sin, "ignores grad_output"),
    "non-deterministic": (_fn(torch.sin, _b_nondet, "SinNoise"), _in((3, 4)), torch.sin, "non-deterministic"),
}

RELU = (Relu, _relu_inputs)
DTYPE_BUG = _fn(torch.sin, _b_dtype, "SinF64Grad")
SHAPE_BUG = _fn(torch.sin, _b_shape, "SinShape")
