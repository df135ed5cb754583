"""Tensor arithmetic with hand-written backward passes: the ops parameters flow through.

Real models feed parameters into more than layers: ``x + position_embeddings``,
``weight * hidden`` (RMS norms written as arithmetic), ``torch.addmm(bias, x, W)``
(Hugging Face's ``Conv1D``), ``q @ k.transpose(-1, -2)`` (attention),
``torch.cat([cls_token.expand(B, -1, -1), x], 1)`` (ViT). These drop-ins for the torch
ops of the same names (``torch.add``, ``torch.matmul``, ...) compute the forward
with torch's own kernel and write the backward out next to it: broadcasting is
undone by summing the gradient back to each input's shape, type promotion by
casting it back to each input's dtype. When autograd would record nothing they
call torch's op as is. :func:`gradlens.mirror` routes the torch calls to them inside
a mirrored model's forward.

Example:
    >>> import torch, gradlens.functional as GF
    >>> a = torch.ones(2, 3, requires_grad=True)
    >>> b = torch.ones(3, requires_grad=True)
    >>> GF.mul(a, b).sum().backward()
    >>> b.grad  # summed over the broadcast dim
    tensor([2., 2., 2.])
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch

from gradlens.functional._util import check_tensor, records_grad, sum_to_shape, unsupported

__all__ = [
    "add", "sub", "rsub", "mul", "div", "matmul", "mm", "bmm", "addmm", "baddbmm",
    "neg", "cat", "expand", "permute", "transpose", "t", "reshape",
]  # fmt: skip

Number = Union[int, float, bool]
_Meta = Optional[Tuple[torch.Size, torch.dtype, torch.device]]


def _meta(t: Any) -> _Meta:
    """What backward needs to give ``t`` its gradient: shape, dtype, device (None: a number)."""
    return (t.shape, t.dtype, t.device) if torch.is_tensor(t) else None


def _reduce(grad: torch.Tensor, meta: _Meta) -> Optional[torch.Tensor]:
    """The adjoint of broadcasting and type promotion: ``grad`` back in ``meta``'s shape and dtype."""
    if meta is None:
        return None
    shape, dtype, device = meta
    grad = sum_to_shape(grad, shape)
    if grad.dtype != dtype or grad.device != device:
        grad = grad.to(device=device, dtype=dtype)
    return grad


def _binary_records_grad(fn: str, input: Any, other: Any) -> bool:
    """Check ``input`` (a tensor) and ``other`` (a tensor or a real number, as torch accepts);
    whether autograd would record ``fn(input, other)``."""
    check_tensor(fn, "input", input)
    if torch.is_tensor(other):
        return records_grad(input, other)
    if isinstance(other, numbers.Complex) and not isinstance(other, numbers.Real):
        raise unsupported(fn, "other", other)  # a complex scalar would make the result complex
    if not isinstance(other, numbers.Real):
        raise TypeError(f"{fn}(): argument 'other' must be Tensor or Number, not {type(other).__name__}")
    return records_grad(input)


# ------------------------------------------------------------------ add / sub / rsub
class _AffineFn(torch.autograd.Function):
    """``y = ca * a + cb * b`` (add, sub, rsub), the value from torch's own op ``op(a, b)``."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: Any, ca: Number, cb: Number, op: Callable[..., torch.Tensor]):
        ctx.metas, ctx.coef = (_meta(a), _meta(b)), (ca, cb)
        return op(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        (meta_a, meta_b), (ca, cb) = ctx.metas, ctx.coef
        need_a, need_b = ctx.needs_input_grad[:2]
        # dy/da = ca, dy/db = cb
        ga = _reduce(g if ca == 1 else g * ca, meta_a) if need_a else None
        gb = _reduce(g if cb == 1 else g * cb, meta_b) if need_b else None
        return ga, gb, None, None, None


def _affine(fn: str, input: torch.Tensor, other: Any, alpha: Number, ca: Number, cb: Number, op: Callable[..., Any]):
    needs_graph = _binary_records_grad(fn, input, other)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{fn}(alpha=...) expects a real number, got {type(alpha).__name__}")
    if not needs_graph:
        return op(input, other)
    return _AffineFn.apply(input, other, ca, cb, op)


def add(input: torch.Tensor, other: Union[torch.Tensor, Number], *, alpha: Number = 1) -> torch.Tensor:
    """Drop-in for :func:`torch.add`: ``input + alpha * other`` (broadcasting, scalars).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.add(torch.ones(2), torch.ones(2), alpha=3)
        tensor([4., 4.])
    """
    return _affine("add", input, other, alpha, 1, alpha, lambda a, b: torch.add(a, b, alpha=alpha))


def sub(input: torch.Tensor, other: Union[torch.Tensor, Number], *, alpha: Number = 1) -> torch.Tensor:
    """Drop-in for :func:`torch.sub`: ``input - alpha * other``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.sub(torch.ones(2), 3.0)
        tensor([-2., -2.])
    """
    return _affine("sub", input, other, alpha, 1, -alpha, lambda a, b: torch.sub(a, b, alpha=alpha))


def rsub(input: torch.Tensor, other: Union[torch.Tensor, Number], *, alpha: Number = 1) -> torch.Tensor:
    """Drop-in for :func:`torch.rsub`: ``other - alpha * input`` (what ``1 - x`` calls).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.rsub(torch.ones(2), 3.0)
        tensor([2., 2.])
    """
    return _affine("rsub", input, other, alpha, -alpha, 1, lambda a, b: torch.rsub(a, b, alpha=alpha))


# ------------------------------------------------------------------------- mul / div
class _MulFn(torch.autograd.Function):
    """``y = a * b`` (``b`` a tensor or a number)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: Any):
        need_a, need_b = ctx.needs_input_grad
        ctx.metas = (_meta(a), _meta(b))
        ctx.b_number = None if torch.is_tensor(b) else b
        # dL/da needs b only, dL/db needs a only
        ctx.save_for_backward(a if need_b else None, b if need_a and torch.is_tensor(b) else None)
        return torch.mul(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        a, b = ctx.saved_tensors
        if b is None:
            b = ctx.b_number
        need_a, need_b = ctx.needs_input_grad
        # dy/da = b, dy/db = a
        ga = _reduce(g * b, ctx.metas[0]) if need_a else None
        gb = _reduce(g * a, ctx.metas[1]) if need_b else None
        return ga, gb


def mul(input: torch.Tensor, other: Union[torch.Tensor, Number]) -> torch.Tensor:
    """Drop-in for :func:`torch.mul`: ``input * other`` (broadcasting, scalars).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.mul(torch.tensor([1.0, 2.0]), 3)
        tensor([3., 6.])
    """
    if not _binary_records_grad("mul", input, other):
        return torch.mul(input, other)
    return _MulFn.apply(input, other)


class _DivFn(torch.autograd.Function):
    """``y = n / d`` for a numerator ``n`` and a denominator ``d`` (one may be a number)."""

    @staticmethod
    def forward(ctx: Any, n: Any, d: Any, op: Callable[..., torch.Tensor]):
        need_n, need_d = ctx.needs_input_grad[:2]
        ctx.metas = (_meta(n), _meta(d))
        ctx.numbers = (None if torch.is_tensor(n) else n, None if torch.is_tensor(d) else d)
        ctx.save_for_backward(n if need_d and torch.is_tensor(n) else None, d if torch.is_tensor(d) else None)
        return op(n, d)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        n, d = ctx.saved_tensors
        n = ctx.numbers[0] if n is None else n
        d = ctx.numbers[1] if d is None else d
        need_n, need_d = ctx.needs_input_grad[:2]
        # dy/dn = 1 / d
        gn = _reduce(g / d, ctx.metas[0]) if need_n else None
        # dy/dd = -n / d^2
        gd = _reduce(-g * n / (d * d), ctx.metas[1]) if need_d else None
        return gn, gd, None


def div(input: torch.Tensor, other: Union[torch.Tensor, Number], *, rounding_mode: Optional[str] = None) -> torch.Tensor:
    """Drop-in for :func:`torch.div` (true division; ``rounding_mode`` is not supported yet).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.div(torch.tensor([1.0, 2.0]), 4)
        tensor([0.2500, 0.5000])
    """
    needs_graph = _binary_records_grad("div", input, other)
    if rounding_mode is not None:
        raise unsupported("div", "rounding_mode", rounding_mode)
    if not needs_graph:
        return torch.div(input, other)
    return _DivFn.apply(input, other, torch.div)


def _rdiv(input: torch.Tensor, other: Union[torch.Tensor, Number]) -> torch.Tensor:
    """``other / input`` computed as torch's ``Tensor.__rdiv__`` does (what ``2 / x`` calls)."""
    if not _binary_records_grad("rdiv", input, other):
        return torch.Tensor.__rdiv__(input, other)
    return _DivFn.apply(other, input, lambda n, d: torch.Tensor.__rdiv__(d, n))


class _NegFn(torch.autograd.Function):
    """``y = -x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor):
        return torch.neg(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        # dy/dx = -1
        return torch.neg(g)


def neg(input: torch.Tensor) -> torch.Tensor:
    """Drop-in for :func:`torch.neg` (and ``-x``; Llama's rotary ``rotate_half`` uses it).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.neg(torch.tensor([1.0, -2.0]))
        tensor([-1.,  2.])
    """
    check_tensor("neg", "input", input)
    if not records_grad(input):
        return torch.neg(input)
    return _NegFn.apply(input)


# ------------------------------------------------- in-place add_ / sub_ / mul_ / div_
def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` may alias ``a``'s memory (then torch's in-place op runs as is)."""
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, subclasses: say yes, torch decides
        return True


def _casts_in_place(input: torch.Tensor, other: Any) -> bool:
    """Whether torch would write ``op(input, other)``'s result type into ``input``'s dtype
    (``copy_`` would cast silently, e.g. a float product into an integer tensor). A result
    shape other than ``input``'s makes ``copy_`` raise torch's own error."""
    try:
        return torch.can_cast(torch.result_type(input, other), input.dtype)
    except (RuntimeError, TypeError):
        return False


def _in_place(
    fn: str, out_of_place: Callable[..., torch.Tensor], input: torch.Tensor, other: Any,
    saves_input: bool, **kwargs: Any,
) -> torch.Tensor:
    """``input.<fn>(other)``: the out-of-place gradlens Function's result copied into ``input``.

    ``input.copy_(out)`` runs with grad on, so autograd records it on ``input``'s new
    version (``CopyBackwards``, ``CopySlices`` for a view) and the gradient flows into
    the gradlens Function, the only node that consumes ``other``. ``copy_`` makes the
    same checks as torch's in-place op (a leaf or a view of a leaf that requires grad,
    a view from ``no_grad`` or from a multi-output op: the same ``RuntimeError``) and
    bumps the version counter; views of ``input`` see the new values. Where the op
    saves ``input`` for ``other``'s gradient it reads a clone (the copy overwrites
    ``input``), as torch's own in-place ops save the original ``self``. Nothing to
    record, an operand aliasing ``input``, or a result type torch would not write into
    ``input``: torch's op runs as is, with its own result or error.
    """
    if (
        not _binary_records_grad(fn, input, other)  # (checks input and other first)
        or (torch.is_tensor(other) and _shares_memory(input, other))
        or not _casts_in_place(input, other)
    ):
        return getattr(input, fn)(other, **kwargs)
    src = input.clone() if saves_input and torch.is_tensor(other) and other.requires_grad else input
    return input.copy_(out_of_place(src, other, **kwargs))


def _add_(input: torch.Tensor, other: Union[torch.Tensor, Number], *, alpha: Number = 1) -> torch.Tensor:
    """``input.add_(other, alpha=alpha)`` (and ``input += other``) through :func:`add`."""
    return _in_place("add_", add, input, other, False, alpha=alpha)


def _sub_(input: torch.Tensor, other: Union[torch.Tensor, Number], *, alpha: Number = 1) -> torch.Tensor:
    """``input.sub_(other, alpha=alpha)`` (and ``input -= other``) through :func:`sub`."""
    return _in_place("sub_", sub, input, other, False, alpha=alpha)


def _mul_(input: torch.Tensor, other: Union[torch.Tensor, Number]) -> torch.Tensor:
    """``input.mul_(other)`` (and ``input *= other``) through :func:`mul`."""
    # mul saves input for other's gradient (dy/db = a): it must read a's value before the copy
    return _in_place("mul_", mul, input, other, True)


def _div_(input: torch.Tensor, other: Union[torch.Tensor, Number], *, rounding_mode: Optional[str] = None) -> torch.Tensor:
    """``input.div_(other)`` (and ``input /= other``) through :func:`div` (true division only)."""
    # div saves the numerator for the denominator's gradient (dy/dd = -n / d^2)
    if rounding_mode is not None:
        raise unsupported("div_", "rounding_mode", rounding_mode)
    return _in_place("div_", div, input, other, True)


# ------------------------------------------------------------------- matmul family
def _as_matrices(a_dim: int, b_dim: int, g: torch.Tensor) -> torch.Tensor:
    """``g`` with the dims that matmul drops for 1-D operands put back (as size 1)."""
    if a_dim == 1 and b_dim == 1:
        return g.reshape(1, 1)
    if a_dim == 1:
        return g.unsqueeze(-2)  # (..., p) -> (..., 1, p)
    if b_dim == 1:
        return g.unsqueeze(-1)  # (..., n) -> (..., n, 1)
    return g


class _MatmulFn(torch.autograd.Function):
    """``y = a @ b`` (matmul, mm, bmm: ``op`` gives torch's value and its shape errors)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, op: Callable[..., torch.Tensor]):
        need_a, need_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if need_b else None, b if need_a else None)
        ctx.metas = (_meta(a), _meta(b))
        return op(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        a, b = ctx.saved_tensors
        meta_a, meta_b = ctx.metas
        need_a, need_b = ctx.needs_input_grad[:2]
        a_dim, b_dim = len(meta_a[0]), len(meta_b[0])
        g2 = _as_matrices(a_dim, b_dim, g)
        ga = gb = None
        if need_a:
            b2 = b.unsqueeze(-1) if b_dim == 1 else b
            # dL/da = g b^T, summed over the batch dims a was broadcast along
            ga = _reduce(g2.matmul(b2.mT), (_matrix_shape(meta_a[0], 0), *meta_a[1:])).reshape(meta_a[0])
        if need_b:
            a2 = a.unsqueeze(0) if a_dim == 1 else a
            # dL/db = a^T g
            gb = _reduce(a2.mT.matmul(g2), (_matrix_shape(meta_b[0], 1), *meta_b[1:])).reshape(meta_b[0])
        return ga, gb, None


def _matrix_shape(shape: torch.Size, side: int) -> torch.Size:
    """A 1-D operand's shape as matmul treats it: ``(1, n)`` on the left, ``(n, 1)`` on the right."""
    if len(shape) != 1:
        return shape
    return torch.Size((1, shape[0])) if side == 0 else torch.Size((shape[0], 1))


def _matmul(fn: str, op: Callable[..., torch.Tensor], input: torch.Tensor, other: torch.Tensor, names=("input", "other")):
    check_tensor(fn, names[0], input)
    check_tensor(fn, names[1], other)
    if not records_grad(input, other):
        return op(input, other)
    return _MatmulFn.apply(input, other, op)


def matmul(input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Drop-in for :func:`torch.matmul` (and ``a @ b``): 1-D operands, broadcast batch dims.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.matmul(torch.ones(5, 2, 3), torch.ones(3)).shape
        torch.Size([5, 2])
    """
    return _matmul("matmul", torch.matmul, input, other)


def mm(input: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    """Drop-in for :func:`torch.mm`: the product of two matrices.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.mm(torch.ones(2, 3), torch.ones(3, 4)).shape
        torch.Size([2, 4])
    """
    return _matmul("mm", torch.mm, input, mat2, ("input", "mat2"))


def bmm(input: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    """Drop-in for :func:`torch.bmm`: batched matrix products, ``(b, n, m) @ (b, m, p)``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.bmm(torch.ones(4, 2, 3), torch.ones(4, 3, 5)).shape
        torch.Size([4, 2, 5])
    """
    return _matmul("bmm", torch.bmm, input, mat2, ("input", "mat2"))


class _AddMatmulFn(torch.autograd.Function):
    """``y = beta * c + alpha * (m1 @ m2)`` (addmm, baddbmm)."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, beta: Number, alpha: Number, op):
        _, need_m1, need_m2 = ctx.needs_input_grad[:3]
        ctx.save_for_backward(m1 if need_m2 else None, m2 if need_m1 else None)
        ctx.c_meta, ctx.beta, ctx.alpha = _meta(c), beta, alpha
        return op(c, m1, m2, beta=beta, alpha=alpha)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        m1, m2 = ctx.saved_tensors
        need_c, need_m1, need_m2 = ctx.needs_input_grad[:3]
        beta, alpha = ctx.beta, ctx.alpha
        alpha_g = g if alpha == 1 else g * alpha
        # dL/dc = beta g, summed back over the dims c was broadcast along
        gc = _reduce(g if beta == 1 else g * beta, ctx.c_meta) if need_c else None
        # dL/dm1 = alpha g m2^T
        ga = alpha_g.matmul(m2.mT) if need_m1 else None
        # dL/dm2 = alpha m1^T g
        gb = m1.mT.matmul(alpha_g) if need_m2 else None
        return gc, ga, gb, None, None, None


def _add_matmul(fn: str, op, input, m1, m2, beta, alpha, names):
    for name, t in zip(("input", *names), (input, m1, m2)):
        check_tensor(fn, name, t)
    for name, v in (("beta", beta), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{fn}({name}=...) expects a real number, got {type(v).__name__}")
    if not records_grad(input, m1, m2):
        return op(input, m1, m2, beta=beta, alpha=alpha)
    return _AddMatmulFn.apply(input, m1, m2, beta, alpha, op)


def addmm(
    input: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, *, beta: Number = 1, alpha: Number = 1
) -> torch.Tensor:
    """Drop-in for :func:`torch.addmm`: ``beta * input + alpha * (mat1 @ mat2)``.

    This is what Hugging Face's ``Conv1D`` (GPT-2) computes: ``addmm(bias, x, weight)``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.addmm(torch.zeros(4), torch.ones(2, 3), torch.ones(3, 4))
        tensor([[3., 3., 3., 3.],
                [3., 3., 3., 3.]])
    """
    return _add_matmul("addmm", torch.addmm, input, mat1, mat2, beta, alpha, ("mat1", "mat2"))


def baddbmm(
    input: torch.Tensor, batch1: torch.Tensor, batch2: torch.Tensor, *, beta: Number = 1, alpha: Number = 1
) -> torch.Tensor:
    """Drop-in for :func:`torch.baddbmm`: ``beta * input + alpha * (batch1 @ batch2)``, batched.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.baddbmm(torch.zeros(2, 1, 1), torch.ones(2, 1, 3), torch.ones(2, 3, 1), alpha=0.5).flatten()
        tensor([1.5000, 1.5000])
    """
    return _add_matmul("baddbmm", torch.baddbmm, input, batch1, batch2, beta, alpha, ("batch1", "batch2"))


# --------------------------------------------------------------------- cat / expand
class _CatFn(torch.autograd.Function):
    """``y = [t_1, ..., t_k]`` joined along ``dim``."""

    @staticmethod
    def forward(ctx: Any, dim: int, *tensors: torch.Tensor):
        out = torch.cat(tensors, dim)
        d = dim % out.dim()
        # torch skips legacy empty 1-D inputs (shape [0]) when joining higher-dim tensors
        ctx.slices = [(t.shape[d] if t.dim() == out.dim() else None, _meta(t)) for t in tensors]
        ctx.dim = d
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        grads = [None]
        start = 0
        for need, (size, meta) in zip(ctx.needs_input_grad[1:], ctx.slices):
            if size is None:
                grads.append(torch.zeros(meta[0], dtype=meta[1], device=meta[2]) if need else None)
                continue
            # dL/dt_i = the slice of g that t_i filled
            grads.append(_reduce(g.narrow(ctx.dim, start, size), meta) if need else None)
            start += size
        return tuple(grads)


def cat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """Drop-in for :func:`torch.cat`: join ``tensors`` along ``dim`` (type promotion as torch).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.cat([torch.zeros(1, 2), torch.ones(2, 2)]).shape
        torch.Size([3, 2])
    """
    if torch.is_tensor(tensors) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat(): argument 'tensors' must be tuple of Tensors, not {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        check_tensor("cat", f"tensors[{i}]", t)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"cat(): argument 'dim' must be int, not {type(dim).__name__}")
    if not records_grad(*tensors):
        return torch.cat(tensors, dim)
    return _CatFn.apply(dim, *tensors)


class _ExpandFn(torch.autograd.Function):
    """``y = x`` broadcast to a larger shape (a view: no copy)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: Tuple[int, ...]):
        ctx.meta = _meta(x)
        return x.expand(sizes)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        # dL/dx = g summed over every broadcast dim
        return _reduce(g, ctx.meta), None


def expand(input: torch.Tensor, *sizes: Any) -> torch.Tensor:
    """Drop-in for :meth:`torch.Tensor.expand`: ``input`` broadcast to ``sizes`` (-1 keeps a dim).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> cls = torch.zeros(1, 1, 4, requires_grad=True)
        >>> GF.expand(cls, 3, -1, -1).sum().backward()
        >>> cls.grad
        tensor([[[3., 3., 3., 3.]]])
    """
    check_tensor("expand", "input", input)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = tuple(sizes[0])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        raise TypeError(f"expand(): 'sizes' must be ints, got {tuple(type(s).__name__ for s in sizes)}")
    if not records_grad(input):
        return input.expand(sizes)
    return _ExpandFn.apply(input, tuple(sizes))


# ------------------------------------------------------- permute / transpose / reshape
class _PermuteFn(torch.autograd.Function):
    """``y = x`` with its dims reordered by ``perm`` (a view: no copy)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, perm: Tuple[int, ...]):
        ctx.inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
        return x.permute(perm)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        # dL/dx = g with the dims put back (the inverse permutation)
        return g.permute(ctx.inverse), None


def permute(input: torch.Tensor, *dims: Any) -> torch.Tensor:
    """Drop-in for :func:`torch.permute` / :meth:`torch.Tensor.permute`.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.permute(torch.zeros(2, 3, 4), 2, 0, 1).shape
        torch.Size([4, 2, 3])
    """
    check_tensor("permute", "input", input)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"permute(): 'dims' must be ints, got {tuple(type(d).__name__ for d in dims)}")
    nd = input.dim()
    if len(dims) != nd or sorted(d % max(nd, 1) for d in dims) != list(range(nd)):
        return input.permute(dims)  # torch's own error for a bad permutation
    if not records_grad(input):
        return input.permute(dims)
    return _PermuteFn.apply(input, tuple(d % nd for d in dims))


def transpose(input: torch.Tensor, dim0: int, dim1: int) -> torch.Tensor:
    """Drop-in for :func:`torch.transpose`: swap ``dim0`` and ``dim1``.

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.transpose(torch.zeros(2, 3, 4), 0, -1).shape
        torch.Size([4, 3, 2])
    """
    check_tensor("transpose", "input", input)
    if not records_grad(input):
        return torch.transpose(input, dim0, dim1)
    nd = input.dim()
    if nd == 0:
        return torch.transpose(input, dim0, dim1)  # torch's rules for 0-d
    perm = list(range(nd))
    a, b = dim0 % nd if -nd <= dim0 < nd else dim0, dim1 % nd if -nd <= dim1 < nd else dim1
    if not (0 <= a < nd and 0 <= b < nd):
        return torch.transpose(input, dim0, dim1)  # torch's own IndexError
    perm[a], perm[b] = perm[b], perm[a]
    return _PermuteFn.apply(input, tuple(perm))


def t(input: torch.Tensor) -> torch.Tensor:
    """Drop-in for :func:`torch.t`: the transpose of a matrix (0-D and 1-D as they are).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.t(torch.zeros(2, 3)).shape
        torch.Size([3, 2])
    """
    check_tensor("t", "input", input)
    if input.dim() > 2 or not records_grad(input):
        return torch.t(input)  # torch's error for > 2 dims
    return _PermuteFn.apply(input, (1, 0)) if input.dim() == 2 else _PermuteFn.apply(input, tuple(range(input.dim())))


class _ReshapeFn(torch.autograd.Function):
    """``y = x`` with a new shape (``op`` is torch's reshape or view)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, shape: Tuple[int, ...], op: Callable[..., torch.Tensor]):
        ctx.x_shape = x.shape
        return op(x, shape)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        # dL/dx = g in x's shape
        return g.reshape(ctx.x_shape), None, None


def _shape_arg(fn: str, shape: Tuple[Any, ...]) -> Tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"{fn}(): 'shape' must be ints, got {tuple(type(s).__name__ for s in shape)}")
    return tuple(shape)


def reshape(input: torch.Tensor, *shape: Any) -> torch.Tensor:
    """Drop-in for :func:`torch.reshape` / :meth:`torch.Tensor.reshape` (a view where possible).

    Example:
        >>> import torch, gradlens.functional as GF
        >>> GF.reshape(torch.zeros(2, 3), -1).shape
        torch.Size([6])
    """
    check_tensor("reshape", "input", input)
    size = _shape_arg("reshape", shape)
    if not records_grad(input):
        return input.reshape(size)
    return _ReshapeFn.apply(input, size, torch.reshape)


def _view(input: torch.Tensor, *shape: Any) -> Any:
    """``input.view(*shape)`` (a dtype argument is torch's alone: ``NotImplementedError`` hands it back)."""
    if len(shape) == 1 and isinstance(shape[0], torch.dtype):
        raise unsupported("view", "dtype", shape[0])
    size = _shape_arg("view", shape)
    if not records_grad(input):
        return input.view(size)
    return _ReshapeFn.apply(input, size, torch.Tensor.view)
