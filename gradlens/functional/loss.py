"""Losses with hand-written backward passes: MSE, cross entropy, NLL, BCE with logits.

Each loss is one ``torch.autograd.Function``. Its ``forward`` calls torch's own fused
kernel (so the loss value is bit-for-bit torch's) and keeps what ``backward`` needs;
``backward`` writes the gradient of every differentiable input out by hand, with the
derivative in a comment above the math. Reductions share one convention: with ``g``
the incoming gradient, an element's loss receives ``g`` (``'sum'``), ``g / D``
(``'mean'``, ``D`` the normaliser torch uses) or ``g[i]`` (``'none'``).

Cross entropy uses the fused "softmax minus target" form: with ``q`` the effective
target distribution (class weights, label smoothing and ignored targets folded in)
and ``p = softmax(x)``, ``dl/dx = p * sum(q) - q``. First-order backward reuses the
softmax recomputed from the saved input by torch's vectorised kernel; when a graph of
the backward is being built (double backward) it is recomputed as
``exp(x - logsumexp(x))`` with differentiable ops instead, so ``gradgradcheck``
passes through every loss here. Likewise, first-order backward passes update their
own fresh temporaries in place (fewer passes over memory); double backward takes
the out-of-place branch.

As in torch, class ``weight`` (cross entropy, NLL) and ``weight``/``pos_weight``
(BCE with logits) are not differentiable: passing one that requires grad raises. The
MSE ``weight`` is differentiable, as it is in torch.

Example:
    >>> import torch
    >>> import gradlens.functional as GF
    >>> logits = torch.randn(4, 3, requires_grad=True)
    >>> labels = torch.tensor([0, 2, 1, 2])
    >>> loss = GF.cross_entropy(logits, labels, label_smoothing=0.1)
    >>> torch.allclose(loss, torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))
    True
    >>> loss.backward()
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd import Function
from torch.nn import _reduction as _Reduction
from torch.nn.functional import logsigmoid

from gradlens.functional._util import check_tensor, sum_to_shape

__all__ = ["mse_loss", "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits"]

# torch's reduction enum (torch/nn/_reduction.py).
_NONE, _MEAN, _SUM = 0, 1, 2


def _reduction_enum(size_average: Optional[bool], reduce: Optional[bool], reduction: str) -> int:
    """torch's mapping: the deprecated ``size_average``/``reduce`` override ``reduction``."""
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)  # warns like torch
    return _Reduction.get_enum(reduction)  # ValueError for an unknown reduction, like torch


def _scale(grad: Tensor, reduction: int, denom: Any) -> Tensor:
    """The gradient each element's loss receives from the reduced loss."""
    # d(sum l)/dl_i = 1;  d(sum l / D)/dl_i = 1 / D;  'none': the element's own gradient.
    return grad / denom if reduction == _MEAN else grad


def _no_grad_arg(fn: str, name: str, value: Optional[Tensor]) -> None:
    """A weight argument: None or a tensor (TypeError naming it otherwise); torch refuses
    a ``requires_grad`` one for these losses, and so do we."""
    if value is None:
        return
    check_tensor(fn, name, value)
    if value.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{fn}(): not differentiable with respect to argument '{name}' (as in torch); "
            f"pass {name}.detach()"
        )


# ----------------------------------------------------------------------------- MSE


class _MSELossFn(Function):
    """``l_i = w_i (x_i - t_i)^2``, reduced by sum, mean (``/ N`` or ``/ sum(w)``) or none."""

    @staticmethod
    def forward(ctx, input: Tensor, target: Tensor, weight: Optional[Tensor], reduction: int) -> Tensor:
        ctx.reduction = reduction
        ctx.save_for_backward(input, target, weight)
        if weight is None:
            return torch._C._nn.mse_loss(*torch.broadcast_tensors(input, target), reduction)
        sq = (input - target).square() * weight
        if reduction == _NONE:
            return sq
        if reduction == _SUM:
            return sq.sum()
        return sq.sum() / weight.sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        input, target, weight = ctx.saved_tensors
        need_x, need_t, need_w = ctx.needs_input_grad[:3]
        fast = not torch.is_grad_enabled()  # first order: in place on our own temporaries
        diff = input - target
        if weight is None:
            g = _scale(grad, ctx.reduction, diff.numel())
            wg = g
        else:
            g = _scale(grad, ctx.reduction, weight.sum())
            wg = weight * g
        grad_input = grad_target = grad_weight = None
        if need_x or need_t:
            # dl/dx = 2 w (x - t) = -dl/dt
            if fast and not need_w:
                gd = diff.mul_(wg * 2) if weight is None else diff.mul_(wg).mul_(2)
            else:
                gd = 2 * diff * wg
            if need_x:
                grad_input = sum_to_shape(gd, input.shape)
            if need_t:
                grad_target = sum_to_shape(-gd, target.shape)
        if need_w:
            sq = diff.square()
            # dl/dw = (x - t)^2
            grad_weight = sum_to_shape(sq * g, weight.shape)
            if ctx.reduction == _MEAN:
                # L = sum(w d^2) / sum(w):  dL/dw_i = (sum of d^2 over w_i's elements - L) / sum(w)
                grad_weight = grad_weight - (sq * weight).sum() / weight.sum() * g
        return grad_input, grad_target, grad_weight, None


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    weight: Optional[Tensor] = None,
) -> Tensor:
    """Mean squared error, optionally weighted per element; drop-in for ``F.mse_loss``.

    ``input`` and ``target`` broadcast (with torch's warning when their sizes
    differ); ``weight`` must have ``input``'s size, and ``'mean'`` then divides by
    ``weight.sum()``. Gradients flow into ``input``, ``target`` and ``weight``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> x, t = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
        >>> GF.mse_loss(x, t), GF.mse_loss(x, t, reduction="sum")
        (tensor(2.5000), tensor(5.))
    """
    check_tensor("mse_loss", "input", input)
    check_tensor("mse_loss", "target", target)
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=2,
        )
    red = _reduction_enum(size_average, reduce, reduction)
    if weight is not None:
        check_tensor("mse_loss", "weight", weight)
        if weight.size() != input.size():
            raise ValueError("Weights and input must have the same size.")
    return _MSELossFn.apply(input, target, weight, red)


# ------------------------------------------------------------------ NLL / cross entropy


def _apply_batched(
    fn: Any, input: Tensor, target: Tensor, prob: bool, weight: Optional[Tensor], reduction: int, *rest: Any
) -> Tensor:
    """``fn.apply`` with an unbatched ``(C,)`` input (and its target) given a batch dimension of 1;
    the unreduced loss of an unbatched input is 0-dim, as in torch."""
    unbatched = input.dim() == 1
    if unbatched:
        input = input.unsqueeze(0)
        if prob or target.dim() == 0:
            target = target.unsqueeze(0)
    out = fn.apply(input, target, weight, reduction, *rest)
    return out.reshape(()) if unbatched and reduction == _NONE else out


def _class_shape(x: Tensor) -> Tuple[int, ...]:
    """Shape that broadcasts a ``(C,)`` class vector along dim 1 of ``x``."""
    return (x.shape[1],) + (1,) * (x.dim() - 2)


def _prob_count(x: Tensor) -> int:
    """torch's 'mean' normaliser for probability targets: elements without the class dim (0 -> NaN)."""
    return x.numel() // x.shape[1] if x.shape[1] else 0


def _index_terms(target: Tensor, weight: Optional[Tensor], ignore_index: int):
    """Mask of kept targets, class indices safe to gather with, and each target's class weight.

    ``w_y`` is None without ``weight`` (every kept target weighs 1).
    """
    kept = target != ignore_index
    safe = torch.where(kept, target, 0).long()
    w_y = None if weight is None else weight[safe] * kept
    return kept, safe, w_y


def _kept_weight_sum(kept: Tensor, w_y: Optional[Tensor]) -> Tensor:
    """The 'mean' normaliser of index targets: summed class weights of kept targets."""
    return kept.sum() if w_y is None else w_y.sum()


def _index_grads(grad: Tensor, target: Tensor, weight: Optional[Tensor], reduction: int, ignore_index: int):
    """The gradient each index target's loss receives: unweighted ``g`` and class-weighted ``wg``.

    Both are exactly 0 for ignored targets, even when 'mean' divides by 0. Also returns
    the class indices safe to gather with and each target's class weight ``w_y``
    (None without ``weight``).
    """
    kept, safe, w_y = _index_terms(target, weight, ignore_index)
    if reduction == _MEAN:
        grad = grad / _kept_weight_sum(kept, w_y)
    g = torch.where(kept, grad, 0)
    wg = g if w_y is None else torch.where(kept, w_y * grad, 0)
    return safe, w_y, g, wg


class _NLLLossFn(Function):
    """``l_i = -w_{y_i} x[i, y_i]`` (0 where ``y_i == ignore_index``); mean divides by ``sum w_{y_i}``."""

    @staticmethod
    def forward(ctx, input, target, weight, reduction: int, ignore_index: int):
        out = torch._C._nn.nll_loss_nd(input, target, weight, reduction, ignore_index)
        ctx.reduction, ctx.ignore_index, ctx.input_shape = reduction, ignore_index, input.shape
        ctx.save_for_backward(target, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        target, weight = ctx.saved_tensors
        safe, _, _, wg = _index_grads(grad, target, weight, ctx.reduction, ctx.ignore_index)
        # dl/dx[i, c] = -w_{y_i} [c == y_i]
        zeros = grad.new_zeros(ctx.input_shape)
        grad_input = zeros.scatter(1, safe.unsqueeze(1), -wg.unsqueeze(1))
        return grad_input, None, None, None, None


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of class indices; drop-in for ``F.nll_loss``.

    ``input`` holds log-probabilities, shaped ``(C,)``, ``(N, C)`` or
    ``(N, C, d1, ..., dK)``; ``target`` the class indices, shaped ``()``, ``(N,)`` or
    ``(N, d1, ..., dK)``. ``'mean'`` divides by the summed class weights of the
    targets that are not ``ignore_index`` (NaN when every target is ignored, as in torch).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
        >>> GF.nll_loss(logp, torch.tensor([0, 1]), reduction="none")
        tensor([0.6931, 0.2877])
    """
    check_tensor("nll_loss", "input", input)
    check_tensor("nll_loss", "target", target)
    red = _reduction_enum(size_average, reduce, reduction)
    if input.dim() < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {input.dim()})")
    _no_grad_arg("nll_loss", "weight", weight)
    return _apply_batched(_NLLLossFn, input, target, False, weight, red, int(ignore_index))


class _CrossEntropyFn(Function):
    """``l = -sum_c q_c log softmax(x)_c`` for the effective target distribution ``q``.

    Class indices: ``q = m w_c ((1 - e) [c == y] + e / C)`` with ``m = [y != ignore_index]``
    and ``e`` the label smoothing. Class probabilities: ``q = w_c ((1 - e) t_c + e / C)``.
    """

    @staticmethod
    def forward(ctx, input, target, weight, reduction: int, ignore_index: int, smoothing: float, prob: bool):
        n_classes = input.shape[1]
        logp = torch.log_softmax(input, 1)
        ctx.reduction, ctx.ignore_index, ctx.smoothing, ctx.prob = reduction, ignore_index, smoothing, prob
        # Index targets need only softmax(x) in backward (recomputed); probability
        # targets also need log softmax(x) for the target's gradient.
        ctx.save_for_backward(input, target, weight, logp if prob else None)
        if prob:
            w_c = None if weight is None else weight.view(_class_shape(input))
            q = target * (1 - smoothing) + smoothing / n_classes if smoothing > 0 else target
            prod = logp * q if w_c is None else logp * q * w_c
            if reduction == _NONE:
                return -prod.sum(1)
            if reduction == _SUM:
                return -prod.sum()
            return -prod.sum() / _prob_count(input)
        out = torch._C._nn.nll_loss_nd(logp, target, weight, reduction, ignore_index)
        if smoothing <= 0:
            return out
        # torch's label smoothing: (1 - e) * nll + e / C * (sum over classes of -w_c logp_c)
        smooth = -(logp.sum(1) if weight is None else (logp * weight.view(_class_shape(input))).sum(1))
        smooth = smooth.masked_fill(target == ignore_index, 0.0)
        if reduction == _SUM:
            smooth = smooth.sum()
        elif reduction == _MEAN:
            kept, _, w_y = _index_terms(target, weight, ignore_index)
            smooth = smooth.sum() / _kept_weight_sum(kept, w_y)
        return (1 - smoothing) * out + smooth * (smoothing / n_classes)

    @staticmethod
    def backward(ctx, grad):
        need_x, need_t = ctx.needs_input_grad[:2]
        if not (need_x or need_t):
            return None, None, None, None, None, None, None
        input, target, weight, logp = ctx.saved_tensors
        fast = not torch.is_grad_enabled()
        if fast:
            # softmax(x) = exp(log softmax(x)); torch's fused softmax kernel is ~1.6x faster
            # on CPU than an elementwise exp of the saved log-probabilities.
            p = torch.softmax(input, 1) if need_x else None
        else:
            # Building a graph of this backward (double backward): recompute from the input
            # with differentiable ops; tensors computed in forward are not connected to it.
            logp = input - input.logsumexp(1, keepdim=True)
            p = logp.exp()
        n_classes, e = input.shape[1], ctx.smoothing
        w_c = None if weight is None else weight.view(_class_shape(input))
        grad_input = grad_target = None

        if ctx.prob:
            g = _scale(grad, ctx.reduction, _prob_count(input))
            g = g.unsqueeze(1) if ctx.reduction == _NONE else g
            q = target * (1 - e) + e / n_classes if e > 0 else target
            if w_c is not None:
                q = q * w_c
            if need_x:
                # dl/dx = softmax(x) * sum_c q_c - q
                if fast:
                    grad_input = p.mul_(q.sum(1, keepdim=True)).sub_(q).mul_(g)
                else:
                    grad_input = (p * q.sum(1, keepdim=True) - q) * g
            if need_t:
                # dl/dt_c = -(1 - e) w_c log softmax(x)_c
                gt = logp * g if w_c is None else logp * w_c * g
                grad_target = -(1 - e) * gt if e > 0 else -gt
            return grad_input, grad_target, None, None, None, None, None

        safe, w_y, g, wg = _index_grads(grad, target, weight, ctx.reduction, ctx.ignore_index)
        idx = safe.unsqueeze(1)
        if e <= 0:
            # dl/dx = w_y (softmax(x) - onehot(y))
            a = wg.unsqueeze(1)
            if fast:
                grad_input = p.mul_(a).scatter_add_(1, idx, a.neg_())
            else:
                grad_input = (p * a).scatter_add(1, idx, -a)
        else:
            # dl/dx = softmax(x) * sum_c q_c - q,   sum_c q_c = (1 - e) w_y + e / C sum(w)  (1 without w)
            qg = g if weight is None else ((1 - e) * w_y + (e / n_classes) * weight.sum()) * g
            smooth = (e / n_classes) * g.unsqueeze(1)
            smooth = smooth if w_c is None else smooth * w_c
            onehot = -(1 - e) * wg.unsqueeze(1)
            if fast:
                grad_input = p.mul_(qg.unsqueeze(1)).sub_(smooth).scatter_add_(1, idx, onehot)
            else:
                grad_input = (p * qg.unsqueeze(1) - smooth).scatter_add(1, idx, onehot)
        return grad_input, None, None, None, None, None, None


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross entropy of logits against class indices or class probabilities; drop-in for ``F.cross_entropy``.

    ``input`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``. A ``target`` of the
    same shape holds class probabilities (floating point; differentiable);
    otherwise it holds class indices (``long`` or ``uint8``), shaped like ``input``
    without the class dimension. ``weight`` rescales classes, ``ignore_index`` drops
    targets (indices only) and ``label_smoothing`` mixes the target with the uniform
    distribution. With class indices, ``'mean'`` divides by the summed weights of
    the kept targets (NaN when all are ignored, as in torch); with probabilities,
    by the number of elements without the class dimension.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> logits = torch.zeros(2, 4)
        >>> GF.cross_entropy(logits, torch.tensor([1, 3]))
        tensor(1.3863)
        >>> GF.cross_entropy(logits, torch.full((2, 4), 0.25))
        tensor(1.3863)
    """
    check_tensor("cross_entropy", "input", input)
    check_tensor("cross_entropy", "target", target)
    red = _reduction_enum(size_average, reduce, reduction)
    if not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool):
        raise TypeError(
            f"cross_entropy(): argument 'label_smoothing' must be float, not {type(label_smoothing).__name__}"
        )
    smoothing = float(label_smoothing)
    if smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {smoothing}")
    smoothing = max(smoothing, 0.0)  # torch smooths only when label_smoothing > 0
    _no_grad_arg("cross_entropy", "weight", weight)

    if input.dim() < 1:
        raise IndexError("cross_entropy(): 'input' needs a class dimension, got a 0-dim tensor")
    prob = input.shape == target.shape
    if prob:
        if not target.is_floating_point():
            raise RuntimeError(f"Expected floating point type for target with class probabilities, got {target.dtype}")
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        n_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
        if weight is not None and (weight.dim() != 1 or weight.numel() != n_classes):
            raise RuntimeError(
                f"cross_entropy: weight tensor should be defined either for all {n_classes} classes "
                f"or no classes but got weight tensor of shape: {list(weight.shape)}"
            )
    if not input.is_floating_point():
        raise TypeError(f"cross_entropy(): argument 'input' must be a floating-point tensor, got {input.dtype}")
    return _apply_batched(_CrossEntropyFn, input, target, prob, weight, red, int(ignore_index), smoothing, prob)


# ------------------------------------------------------------------ BCE with logits


class _BCEWithLogitsFn(Function):
    """``l = w ((1 - t) x - (1 + (p - 1) t) log sigmoid(x))`` with ``p`` the pos_weight (1 if absent)."""

    @staticmethod
    def forward(ctx, input, target, weight, pos_weight, reduction: int):
        # torch's kernel: log sigmoid via softplus, stable for large |x|.
        out = torch.binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction)
        ctx.reduction = reduction
        ctx.save_for_backward(input, target, weight, pos_weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        need_x, need_t = ctx.needs_input_grad[:2]
        if not (need_x or need_t):
            return None, None, None, None, None
        x, t, w, pw = ctx.saved_tensors
        g = _scale(grad, ctx.reduction, x.numel())
        if w is not None:
            g = w * g
        grad_input = grad_target = None
        if need_x:
            if pw is None:
                # dl/dx = sigmoid(x) - t
                gx = torch.sigmoid(x)
                gx = gx.sub_(t).mul_(g) if not torch.is_grad_enabled() else (gx - t) * g
            else:
                # dl/dx = (1 - t) - (1 + (p - 1) t) sigmoid(-x)
                gx = ((1 - t) - ((pw - 1) * t + 1) * torch.sigmoid(-x)) * g
            grad_input = sum_to_shape(gx, x.shape)
        if need_t:
            # dl/dt = -x - (p - 1) log sigmoid(x)
            gt = -x if pw is None else -x - (pw - 1) * logsigmoid(x)
            grad_target = sum_to_shape(gt * g, t.shape)
        return grad_input, grad_target, None, None, None


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    pos_weight: Optional[Tensor] = None,
) -> Tensor:
    """Binary cross entropy on logits; drop-in for ``F.binary_cross_entropy_with_logits``.

    Numerically stable for large logits (``log sigmoid`` through softplus).
    ``weight`` and ``pos_weight`` broadcast to ``input``'s shape and, as in torch, are
    not differentiable; gradients flow into ``input`` and ``target``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> # confidently wrong logits: a finite loss of 100, not log(0) = inf
        >>> GF.binary_cross_entropy_with_logits(torch.tensor([100.0, -100.0]), torch.tensor([0.0, 1.0]))
        tensor(100.)
    """
    check_tensor("binary_cross_entropy_with_logits", "input", input)
    check_tensor("binary_cross_entropy_with_logits", "target", target)
    red = _reduction_enum(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        _no_grad_arg("binary_cross_entropy_with_logits", name, value)
    return _BCEWithLogitsFn.apply(input, target, weight, pos_weight, red)
