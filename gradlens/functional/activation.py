"""Activations with hand-written backward passes (drop-ins for ``torch.nn.functional``).

Each op is a ``torch.autograd.Function``: ``forward`` calls the fast torch kernel,
``backward`` writes the derivative out right below it. Where torch offers
``inplace=True`` we support it too (``ctx.mark_dirty``); the derivative is then
written from the saved *output* wherever that is possible (relu, leaky_relu and elu
with a non-negative slope/alpha); otherwise (silu, negative slope/alpha) the op runs
on a tracked copy that is copied back into the input, which keeps double backward exact.

Example:
    >>> import torch
    >>> import gradlens.functional as GF
    >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
    >>> GF.relu(x).sum().backward()
    >>> x.grad
    tensor([0., 1.])
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from gradlens.functional._util import check_tensor, sum_to_shape

__all__ = [
    "relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax",
    "hardtanh", "relu6", "hardsigmoid", "hardswish", "softplus", "mish", "logsigmoid", "prelu",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


def _inplace_via_copy(fn, input: torch.Tensor) -> torch.Tensor:
    """In-place result for ops whose derivative needs the overwritten input.

    The op runs on a (tracked) copy and its result is copied back, so autograd
    keeps x for the backward pass and double backward stays exact.
    """
    return input.copy_(fn(input.clone()))


def _step(t: torch.Tensor) -> torch.Tensor:
    """1[t > 0] in t's dtype (sign+clamp: faster than a comparison kernel on CPU)."""
    return torch.sign(t).clamp_(min=0)


# --------------------------------------------------------------------------- relu
class _ReluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if inplace:
            out = x.relu_()
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (out,) = ctx.saved_tensors
        # d relu(x)/dx = 1[x > 0] = sign(out), since out >= 0 (sign is a much faster kernel than a compare)
        if torch.is_grad_enabled():
            return g * torch.sign(out), None
        # first order: in place on the fresh sign, one full-size allocation instead of two
        return torch.sign(out).mul_(g), None


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``max(x, 0)``; same signature as :func:`torch.nn.functional.relu`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.relu(torch.tensor([-1.0, 3.0]))
        tensor([0., 3.])
    """
    check_tensor("relu", "input", input)
    return _ReluFn.apply(input, bool(inplace))


# --------------------------------------------------------------------- leaky_relu
class _LeakyReluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float, inplace: bool) -> torch.Tensor:
        ctx.slope = slope
        # From the output when sign(out) == sign(x) (slope >= 0); otherwise keep the input.
        from_out = slope >= 0
        if inplace:
            out = torch.nn.functional.leaky_relu_(x, slope)
            ctx.mark_dirty(x)
        else:
            out = torch.nn.functional.leaky_relu(x, slope)
        ctx.save_for_backward(out if from_out else x)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (t,) = ctx.saved_tensors
        # d leaky_relu(x)/dx = 1 if x > 0 else slope  (t > 0 <=> x > 0)
        return g * _step(t).mul(1 - ctx.slope).add(ctx.slope), None, None


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """``x if x > 0 else negative_slope * x``; as :func:`torch.nn.functional.leaky_relu`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.leaky_relu(torch.tensor([-2.0, 3.0]), 0.5)
        tensor([-1.,  3.])
    """
    check_tensor("leaky_relu", "input", input)
    if inplace and negative_slope < 0:
        return _inplace_via_copy(lambda t: _LeakyReluFn.apply(t, float(negative_slope), False), input)
    return _LeakyReluFn.apply(input, float(negative_slope), bool(inplace))


# ---------------------------------------------------------------------------- elu
class _EluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float, inplace: bool) -> torch.Tensor:
        ctx.alpha = alpha
        # With alpha >= 0, x > 0 <=> out > 0 and for x <= 0: alpha*exp(x) = out + alpha.
        ctx.from_out = alpha >= 0
        if inplace:
            out = torch.nn.functional.elu_(x, alpha)
            ctx.mark_dirty(x)
        else:
            out = torch.nn.functional.elu(x, alpha)
        ctx.save_for_backward(out if ctx.from_out else x)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (t,) = ctx.saved_tensors
        alpha = ctx.alpha
        if ctx.from_out:
            # d elu/dx = 1 if x > 0 else alpha*exp(x) = out + alpha
            neg = t + alpha
        else:
            # d elu/dx = 1 if x > 0 else alpha*exp(x)
            neg = alpha * torch.exp(t)
        m = _step(t)
        return g * (m + (1 - m) * neg), None, None


def elu(input: torch.Tensor, alpha: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """``x if x > 0 else alpha * (exp(x) - 1)``; as :func:`torch.nn.functional.elu`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.elu(torch.tensor([0.0, 2.0]))
        tensor([0., 2.])
    """
    check_tensor("elu", "input", input)
    if inplace and alpha < 0:
        return _inplace_via_copy(lambda t: _EluFn.apply(t, float(alpha), False), input)
    return _EluFn.apply(input, float(alpha), bool(inplace))


# --------------------------------------------------------------------------- gelu
# Elements per chunk of a CPU first-order GELU backward. Its ~8 elementwise passes each stream
# x, g and two temporaries: over a whole activation (a transformer MLP's is megabytes) every
# pass goes to memory; chunks of 32768 elements (128 KiB an array) keep them in the core's L2.
# Our measurement, one thread, 8x64x512 float32: 0.97 ms whole, 0.60 ms in chunks of 32768,
# 0.73 ms of 16384 (more kernel calls), torch's fused kernel 0.52 ms.
_GELU_CPU_CHUNK = 32768


def _gelu_exact_grad(x, g, out, cdf, gauss) -> None:
    """out = g (Φ(x) + x φ(x)) on one chunk, with two temporaries."""
    # Φ(x) = (1 + erf(x/√2))/2
    torch.mul(x, _INV_SQRT_2, out=cdf).erf_()
    torch.add(cdf.new_full((), 0.5), cdf, alpha=0.5, out=cdf)
    # φ(x) √(2π) = exp(-x²/2)
    torch.mul(x, x, out=gauss).mul_(-0.5).exp_()
    cdf.addcmul_(x, gauss, value=_INV_SQRT_2PI)
    torch.mul(cdf, g, out=out)


def _gelu_tanh_grad(x, g, out, x2, t, dy) -> None:
    """out = g ((1 + t)/2 + x/2 (1 - t^2) k (1 + 3 c x^2)) on one chunk, t = tanh(k (x + c x^3))."""
    torch.mul(x, x, out=x2)
    torch.mul(x2, _GELU_C, out=t).add_(1).mul_(x).mul_(_SQRT_2_OVER_PI).tanh_()
    slope = x2.mul_(3 * _GELU_C).add_(1).mul_(x).mul_(0.5 * _SQRT_2_OVER_PI)  # x/2 k (1 + 3 c x^2)
    torch.mul(t, t, out=dy).neg_().add_(1).mul_(slope)  # (1 - t^2) * slope
    dy.add_(t, alpha=0.5).add_(0.5)
    torch.mul(dy, g, out=out)


def _gelu_grad_first_order(x: torch.Tensor, g: torch.Tensor, approximate: str) -> torch.Tensor:
    """First-order GELU backward: the formulas of ``_GeluFn.backward``, on temporaries reused
    chunk after chunk on CPU (contiguous tensors), on whole-size ones elsewhere."""
    step, n_tmp = (_gelu_tanh_grad, 3) if approximate == "tanh" else (_gelu_exact_grad, 2)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n, chunk = x.numel(), _GELU_CPU_CHUNK
    if n == 0:
        return out
    if x.device.type != "cpu" or n <= chunk or not (x.is_contiguous() and g.is_contiguous()):
        step(x, g, out, *(torch.empty_like(x) for _ in range(n_tmp)))
        return out
    xf, gf, of = x.view(-1), g.view(-1), out.view(-1)
    tmps = [torch.empty_like(xf[:chunk]) for _ in range(n_tmp)]
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        step(xf[start:start + k], gf[start:start + k], of[start:start + k], *(t[:k] for t in tmps))
    return out


class _GeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, approximate: str) -> torch.Tensor:
        ctx.approximate = approximate
        ctx.save_for_backward(x)
        return torch.nn.functional.gelu(x, approximate=approximate)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        if not torch.is_grad_enabled():  # first order: the same terms below, on reused temporaries
            return _gelu_grad_first_order(x, g, ctx.approximate), None
        if ctx.approximate == "tanh":
            # y = x/2 (1 + tanh u), u = k (x + c x^3):  dy/dx = (1 + t)/2 + x/2 (1 - t^2) k (1 + 3 c x^2)
            x2 = x * x
            t = torch.tanh(_SQRT_2_OVER_PI * x * (1 + _GELU_C * x2))
            dy = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x2)
            return g * dy, None
        # y = x Phi(x):  dy/dx = Phi(x) + x phi(x),  Phi = (1 + erf(x/sqrt2))/2,  phi = exp(-x^2/2)/sqrt(2 pi)
        cdf = torch.erf(x * _INV_SQRT_2).mul(0.5).add(0.5)
        gauss = torch.exp((x * x).mul(-0.5))
        return g * torch.addcmul(cdf, x, gauss, value=_INV_SQRT_2PI), None


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Gaussian error linear unit ``x * Phi(x)`` (``approximate="tanh"``: tanh form).

    Same signature as :func:`torch.nn.functional.gelu`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.gelu(torch.tensor([0.0]))
        tensor([0.])
    """
    check_tensor("gelu", "input", input)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu(approximate=...) expects 'none' or 'tanh', got {approximate!r}")
    return _GeluFn.apply(input, approximate)


# --------------------------------------------------------------------------- silu
class _SiluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.nn.functional.silu(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        # d (x s(x))/dx = s (1 + x (1 - s))
        if torch.is_grad_enabled():
            return g * (s * (1 + x * (1 - s)))
        return torch.sub(1, s).mul_(x).add_(1).mul_(s).mul_(g)  # first order: in place


def silu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x * sigmoid(x)``; same signature as :func:`torch.nn.functional.silu`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.silu(torch.tensor([0.0]))
        tensor([0.])
    """
    check_tensor("silu", "input", input)
    if inplace:
        return _inplace_via_copy(_SiluFn.apply, input)
    return _SiluFn.apply(input)


# ---------------------------------------------------------------------- tanh / sigmoid
class _TanhFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (y,) = ctx.saved_tensors
        # d tanh/dx = 1 - y^2
        if torch.is_grad_enabled():
            return g * (1 - y * y)
        return torch.addcmul(g, g, y * y, value=-1)  # first order: g - g y^2, one fewer temporary


def tanh(input: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent; same signature as :func:`torch.nn.functional.tanh`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.tanh(torch.tensor([0.0]))
        tensor([0.])
    """
    check_tensor("tanh", "input", input)
    return _TanhFn.apply(input)


class _SigmoidFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (y,) = ctx.saved_tensors
        # d sigmoid/dx = y (1 - y)
        if torch.is_grad_enabled():
            return g * (y * (1 - y))
        return torch.sub(1, y).mul_(y).mul_(g)  # first order: in place


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid; same signature as :func:`torch.nn.functional.sigmoid`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.sigmoid(torch.tensor([0.0]))
        tensor([0.5000])
    """
    check_tensor("sigmoid", "input", input)
    return _SigmoidFn.apply(input)


# ------------------------------------------------------- hardtanh / relu6 / hardsigmoid
class _ClampFn(torch.autograd.Function):
    """``y = scale * clamp(x + shift, lo, hi)`` (hardtanh, relu6: shift 0, scale 1; hardsigmoid: relu6(x + 3) / 6)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float, shift: float, scale: float, inplace: bool) -> torch.Tensor:
        ctx.scale = scale
        if inplace:
            out = x.add_(shift).clamp_(lo, hi).mul_(scale) if (shift or scale != 1) else x.clamp_(lo, hi)
            ctx.mark_dirty(x)
        else:
            out = torch.clamp(x + shift, lo, hi) * scale if (shift or scale != 1) else torch.clamp(x, lo, hi)
        ctx.lo, ctx.hi = lo * scale, hi * scale
        ctx.save_for_backward(out)  # lo < x + shift < hi  <=>  lo < out/scale < hi
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (out,) = ctx.saved_tensors
        # dy/dx = scale inside (lo, hi), 0 on and beyond the limits (as torch)
        inside = (out > ctx.lo) & (out < ctx.hi)
        return g * inside * ctx.scale, None, None, None, None, None


def hardtanh(input: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """``clamp(x, min_val, max_val)``; as :func:`torch.nn.functional.hardtanh`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.hardtanh(torch.tensor([-3.0, 0.5, 2.0]))
        tensor([-1.0000,  0.5000,  1.0000])
    """
    check_tensor("hardtanh", "input", input)
    if min_val > max_val:
        raise ValueError(f"hardtanh(): min_val ({min_val}) cannot be greater than max_val ({max_val})")
    return _ClampFn.apply(input, float(min_val), float(max_val), 0.0, 1.0, bool(inplace))


def relu6(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``min(max(x, 0), 6)``; as :func:`torch.nn.functional.relu6`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.relu6(torch.tensor([-1.0, 3.0, 9.0]))
        tensor([0., 3., 6.])
    """
    check_tensor("relu6", "input", input)
    return _ClampFn.apply(input, 0.0, 6.0, 0.0, 1.0, bool(inplace))


def hardsigmoid(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``relu6(x + 3) / 6``; as :func:`torch.nn.functional.hardsigmoid`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.hardsigmoid(torch.tensor([-4.0, 0.0, 4.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    check_tensor("hardsigmoid", "input", input)
    return _ClampFn.apply(input, 0.0, 6.0, 3.0, 1.0 / 6.0, bool(inplace))


# ------------------------------------------------------------------------- hardswish
class _HardswishFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.nn.functional.hardswish(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        # y = x relu6(x + 3) / 6:  dy/dx = 0 for x < -3,  (2x + 3) / 6 for -3 <= x <= 3,  1 for x > 3
        middle = (x >= -3) & (x <= 3)
        return g * torch.where(middle, x / 3 + 0.5, (x > 3).to(x.dtype))


def hardswish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x * relu6(x + 3) / 6``; as :func:`torch.nn.functional.hardswish`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.hardswish(torch.tensor([-4.0, 0.0, 4.0]))
        tensor([-0., 0., 4.])
    """
    check_tensor("hardswish", "input", input)
    if inplace:
        return _inplace_via_copy(_HardswishFn.apply, input)
    return _HardswishFn.apply(input)


# ----------------------------------------------------------- softplus / mish / logsigmoid
class _SoftplusFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
        ctx.beta, ctx.threshold = beta, threshold
        ctx.save_for_backward(x)
        return torch.nn.functional.softplus(x, beta, threshold)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        bx = x * ctx.beta
        # y = log(1 + exp(beta x)) / beta:  dy/dx = sigmoid(beta x);  1 where beta x > threshold (linear there)
        return g * torch.where(bx > ctx.threshold, torch.ones_like(bx), torch.sigmoid(bx)), None, None


def softplus(input: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """``log(1 + exp(beta x)) / beta``, linear beyond ``beta x > threshold``; as :func:`torch.nn.functional.softplus`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.softplus(torch.tensor([0.0, 30.0]))
        tensor([ 0.6931, 30.0000])
    """
    check_tensor("softplus", "input", input)
    return _SoftplusFn.apply(input, float(beta), float(threshold))


class _MishFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.nn.functional.mish(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        # y = x tanh(sp(x)), sp = softplus:  dy/dx = tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)
        t = torch.tanh(torch.nn.functional.softplus(x))
        return g * (t + x * torch.sigmoid(x) * (1 - t * t))


def mish(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x * tanh(softplus(x))``; as :func:`torch.nn.functional.mish`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.mish(torch.tensor([0.0]))
        tensor([0.])
    """
    check_tensor("mish", "input", input)
    if inplace:
        return _inplace_via_copy(_MishFn.apply, input)
    return _MishFn.apply(input)


class _LogSigmoidFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.nn.functional.logsigmoid(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        # y = log sigmoid(x) = -softplus(-x):  dy/dx = 1 - sigmoid(x) = sigmoid(-x)
        return g * torch.sigmoid(-x)


def logsigmoid(input: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(x))``, computed stably; as :func:`torch.nn.functional.logsigmoid`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.logsigmoid(torch.tensor([0.0]))
        tensor([-0.6931])
    """
    check_tensor("logsigmoid", "input", input)
    return _LogSigmoidFn.apply(input)


# ---------------------------------------------------------------------------- prelu
class _PReluFn(torch.autograd.Function):
    """``y = x if x > 0 else w x``, one learned slope per channel (dim 1) or one for all."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, wshape) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.wshape = wshape
        return torch.where(x > 0, x, x * weight.reshape(wshape))

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight = ctx.saved_tensors
        pos = x > 0
        dx = dw = None
        if ctx.needs_input_grad[0]:
            # dy/dx = 1 where x > 0, else w
            dx = g * torch.where(pos, torch.ones_like(x), weight.reshape(ctx.wshape).to(x.dtype))
        if ctx.needs_input_grad[1]:
            # dy/dw = x where x <= 0 (summed over everything but the channel)
            dw = sum_to_shape(torch.where(pos, torch.zeros_like(x), g * x), ctx.wshape).reshape(weight.shape)
        return dx, dw, None


def prelu(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Parametric ReLU; as :func:`torch.nn.functional.prelu` (``weight``: 1 slope, or one per channel).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.prelu(torch.tensor([[-2.0, 3.0]]), torch.tensor([0.25]))
        tensor([[-0.5000,  3.0000]])
    """
    check_tensor("prelu", "input", input)
    check_tensor("prelu", "weight", weight)
    n = weight.numel()
    if weight.dim() > 1:
        raise ValueError(f"prelu(weight=...) expects a 0-D or 1-D tensor, got shape {list(weight.shape)}")
    if n == 1:
        wshape = (1,) * max(input.dim(), 1) if input.dim() else ()
    else:
        channels = input.shape[1] if input.dim() >= 2 else 1  # torch: a 0-D/1-D input has one channel
        if n != channels:
            raise RuntimeError(f"prelu(): mismatch of parameter numbers and input channel size: weight has {n} "
                               f"entries, input has {channels} channels")
        wshape = (n,) + (1,) * (input.dim() - 2) if input.dim() >= 2 else (n,)
    return _PReluFn.apply(input, weight, wshape)


# ------------------------------------------------------------- softmax / log_softmax
def _softmax_dim(name: str, input: torch.Tensor, dim: Optional[int], stacklevel: int) -> int:
    """torch's implicit-dim rule (deprecated there too): 0 for 0-, 1- and 3-D input, else 1."""
    if dim is None:
        warnings.warn(
            f"Implicit dimension choice for {name} has been deprecated. "
            "Change the call to include dim=X as an argument.",
            stacklevel=stacklevel + 1,
        )
        return 0 if input.dim() in (0, 1, 3) else 1
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name}(): argument 'dim' must be int or None, not {type(dim).__name__}")
    nd = max(input.dim(), 1)
    if not -nd <= dim < nd:
        raise IndexError(f"{name}(dim={dim}): dimension out of range (expected to be in range of [{-nd}, {nd - 1}])")
    return dim


class _SoftmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        out = torch.softmax(x, dim)
        ctx.dim = dim
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (y,) = ctx.saved_tensors
        # dx_i = y_i (g_i - sum_j g_j y_j)
        if torch.is_grad_enabled():
            return y * (g - (g * y).sum(ctx.dim, keepdim=True)), None
        gy = g * y  # first order: dx = g y - y sum(g y), in place on one temporary
        return gy.addcmul_(y, gy.sum(ctx.dim, keepdim=True), value=-1), None


class _LogSoftmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        out = torch.log_softmax(x, dim)
        ctx.dim = dim
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (y,) = ctx.saved_tensors
        # dx_i = g_i - softmax_i * sum_j g_j
        if torch.is_grad_enabled():
            return g - torch.exp(y) * g.sum(ctx.dim, keepdim=True), None
        # first order: in place on the one temporary exp(y)
        return torch.exp(y).mul_(g.sum(ctx.dim, keepdim=True).neg_()).add_(g), None


def _cast(name: str, input: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    if dtype is None:
        return input
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name}(): argument 'dtype' must be torch.dtype, not {type(dtype).__name__}")
    return input.to(dtype)  # differentiable cast; the gradient comes back in input's dtype


def softmax(input: torch.Tensor, dim: Optional[int] = None, _stacklevel: int = 3, dtype: Optional[int] = None) -> torch.Tensor:
    """Softmax along ``dim``; same signature as :func:`torch.nn.functional.softmax`.

    ``dim=None`` follows torch's deprecated implicit choice (with its warning);
    ``dtype`` casts the input first.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.softmax(torch.zeros(2), dim=0)
        tensor([0.5000, 0.5000])
    """
    check_tensor("softmax", "input", input)
    d = _softmax_dim("softmax", input, dim, _stacklevel)
    return _SoftmaxFn.apply(_cast("softmax", input, dtype), d)


def log_softmax(input: torch.Tensor, dim: Optional[int] = None, _stacklevel: int = 3, dtype: Optional[int] = None) -> torch.Tensor:
    """Log of softmax along ``dim``; same signature as :func:`torch.nn.functional.log_softmax`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.log_softmax(torch.zeros(2), dim=0).exp()
        tensor([0.5000, 0.5000])
    """
    check_tensor("log_softmax", "input", input)
    d = _softmax_dim("log_softmax", input, dim, _stacklevel)
    return _LogSoftmaxFn.apply(_cast("log_softmax", input, dtype), d)
