"""gradlens.functional losses against torch: mse_loss, cross_entropy, nll_loss, BCE with logits.

Every case runs float32 forward/backward against torch's autograd (contiguous and
not) and float64 gradcheck + gradgradcheck of ours. Targets that torch differentiates
(MSE target and weight, probability targets, BCE target) are differentiated here too.
Class weights of CE/NLL and BCE's weight/pos_weight are not differentiable in torch,
so they are passed as plain tensors (``grad_args`` leaves them out).
"""

from __future__ import annotations

import inspect
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from harness import OpCase, check_against_torch, check_gradcheck

import gradlens.functional as GF

# ----------------------------------------------------------------------------- inputs


def _randn(gen, shape, dtype, device, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=dtype) * scale).to(device)


def _indices(gen, n_classes, shape, device, ignore=None):
    """Class indices; with ``ignore``, every third target from the second is ``ignore``.

    (A single target is never ignored here: all-ignored is its own test below.)
    """
    y = torch.randint(n_classes, shape, generator=gen)
    if ignore is not None:
        flat = y.view(-1)
        flat[1::3] = ignore
    return y.to(device)


def _probs(gen, shape, dtype, device):
    class_dim = 0 if len(shape) == 1 else 1
    return torch.randn(shape, generator=gen, dtype=dtype).softmax(class_dim).to(device)


def _class_weight(gen, n_classes, dtype, device):
    return (torch.rand(n_classes, generator=gen, dtype=dtype) + 0.5).to(device)


# Input shape (class dim 1, or 0 for the unbatched (C,)) and the matching target shape.
SHAPES = {
    "C": ((5,), ()),
    "NC": ((3, 5), (3,)),
    "batch1": ((1, 5), (1,)),
    "NCd": ((2, 3, 3), (2, 3)),
    "NCdd": ((2, 3, 2, 2), (2, 2, 2)),
}

# ------------------------------------------------------------------------ cross entropy


def _ce_index_case(shape, reduction, weighted, ignore, smoothing, scale=1.0):
    in_shape, t_shape = SHAPES[shape]
    n_classes = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    ignore_index = {None: -100, "default": -100, "inrange": 1}[ignore]

    def make(dtype, device, gen):
        x = _randn(gen, in_shape, dtype, device, scale)
        y = _indices(gen, n_classes, t_shape, device, ignore=None if ignore is None else ignore_index)
        w = _class_weight(gen, n_classes, dtype, device) if weighted else None
        return x, y, w

    kw = dict(reduction=reduction, ignore_index=ignore_index, label_smoothing=smoothing)
    parts = ["ce-idx", shape, reduction, "w" if weighted else "", f"ign-{ignore}" if ignore else "", f"ls{smoothing}" if smoothing else ""]
    if scale != 1.0:
        parts.append(f"x{scale:g}")
    return OpCase(
        id="-".join(p for p in parts if p),
        ours=GF.cross_entropy,
        theirs=F.cross_entropy,
        make_inputs=make,
        kwargs=kw,
        grad_args=(0,),
    )


def _ce_prob_case(shape, reduction, weighted, smoothing):
    in_shape, _ = SHAPES[shape]
    n_classes = in_shape[0] if len(in_shape) == 1 else in_shape[1]

    def make(dtype, device, gen):
        x = _randn(gen, in_shape, dtype, device)
        t = _probs(gen, in_shape, dtype, device)
        w = _class_weight(gen, n_classes, dtype, device) if weighted else None
        return x, t, w

    parts = ["ce-prob", shape, reduction, "w" if weighted else "", f"ls{smoothing}" if smoothing else ""]
    return OpCase(
        id="-".join(p for p in parts if p),
        ours=GF.cross_entropy,
        theirs=F.cross_entropy,
        make_inputs=make,
        kwargs=dict(reduction=reduction, label_smoothing=smoothing),
        grad_args=(0, 1),
    )


REDUCTIONS = ("none", "sum", "mean")

CE_CASES = (
    # Every option combination on (N, C) ...
    [
        _ce_index_case("NC", r, w, ign, ls)
        for r, w, ign, ls in itertools.product(REDUCTIONS, (False, True), (None, "default", "inrange"), (0.0, 0.2))
    ]
    # ... every shape with the options that touch the shape logic ...
    + [
        _ce_index_case(s, r, w, ign, ls)
        for s in ("C", "batch1", "NCd", "NCdd")
        for r, (w, ign, ls) in itertools.product(REDUCTIONS, ((False, None, 0.0), (True, "default", 0.1)))
    ]
    + [_ce_prob_case("NC", r, w, ls) for r, w, ls in itertools.product(REDUCTIONS, (False, True), (0.0, 0.25))]
    + [_ce_prob_case(s, r, True, 0.1) for s in ("C", "batch1", "NCd", "NCdd") for r in REDUCTIONS]
    # Saturated logits (+-50): softmax is one-hot in float32 and the loss must stay finite.
    + [_ce_index_case("NC", r, True, None, ls, scale=50.0) for r in ("none", "mean") for ls in (0.0, 0.1)]
)

# ------------------------------------------------------------------------------ NLL


def _nll_case(shape, reduction, weighted, ignore):
    in_shape, t_shape = SHAPES[shape]
    n_classes = in_shape[0] if len(in_shape) == 1 else in_shape[1]
    ignore_index = {None: -100, "default": -100, "inrange": 2}[ignore]

    def make(dtype, device, gen):
        x = _randn(gen, in_shape, dtype, device).log_softmax(0 if len(in_shape) == 1 else 1)
        y = _indices(gen, n_classes, t_shape, device, ignore=None if ignore is None else ignore_index)
        w = _class_weight(gen, n_classes, dtype, device) if weighted else None
        return x, y, w

    parts = ["nll", shape, reduction, "w" if weighted else "", f"ign-{ignore}" if ignore else ""]
    return OpCase(
        id="-".join(p for p in parts if p),
        ours=GF.nll_loss,
        theirs=F.nll_loss,
        make_inputs=make,
        kwargs=dict(reduction=reduction, ignore_index=ignore_index),
        grad_args=(0,),
    )


NLL_CASES = [
    _nll_case("NC", r, w, ign) for r, w, ign in itertools.product(REDUCTIONS, (False, True), (None, "default", "inrange"))
] + [_nll_case(s, r, True, "default") for s in ("C", "batch1", "NCd", "NCdd") for r in REDUCTIONS]

# ------------------------------------------------------------------------------ MSE


def _mse_case(shapes, reduction, weighted):
    x_shape, t_shape = shapes

    def make(dtype, device, gen):
        x = _randn(gen, x_shape, dtype, device)
        t = _randn(gen, t_shape, dtype, device)
        if not weighted:
            return x, t
        return x, t, (torch.rand(x_shape, generator=gen, dtype=dtype) + 0.5).to(device)

    def quiet(fn):
        # Broadcasting input and target is legal but warns (tested separately below).
        def call(x, t, w=None, **kw):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return fn(x, t, weight=w, **kw)

        return call

    name = "x".join(map(str, x_shape)) or "scalar"
    if t_shape != x_shape:
        name += "-bcast" + ("x".join(map(str, t_shape)) or "scalar")
    return OpCase(
        id="-".join(p for p in ("mse", name, reduction, "w" if weighted else "") if p),
        ours=quiet(GF.mse_loss),
        theirs=quiet(F.mse_loss),
        make_inputs=make,
        kwargs=dict(reduction=reduction),
    )


MSE_SHAPES = [((), ()), ((1, 3), (1, 3)), ((4,), (4,)), ((2, 3, 4), (2, 3, 4)), ((3, 1), (3,)), ((2, 3), (3,))]
MSE_CASES = [_mse_case(s, r, w) for s, r, w in itertools.product(MSE_SHAPES, REDUCTIONS, (False, True))]

# ---------------------------------------------------------------------- BCE with logits


def _bce_case(shape, reduction, weight, pos_weight, scale=1.0):
    def make(dtype, device, gen):
        x = _randn(gen, shape, dtype, device, scale)
        t = torch.rand(shape, generator=gen, dtype=dtype).to(device)
        w = None if weight is None else (torch.rand(weight, generator=gen, dtype=dtype) + 0.5).to(device)
        pw = None if pos_weight is None else (torch.rand(pos_weight, generator=gen, dtype=dtype) * 3).to(device)
        return x, t, w, pw

    def wrap(fn):
        def call(x, t, w, pw, **kw):
            return fn(x, t, w, pos_weight=pw, **kw)

        return call

    parts = [
        "bce",
        "x".join(map(str, shape)) or "scalar",
        reduction,
        "" if weight is None else "w" + "x".join(map(str, weight)),
        "" if pos_weight is None else "pw" + "x".join(map(str, pos_weight)),
        "" if scale == 1.0 else f"x{scale:g}",
    ]
    return OpCase(
        id="-".join(p for p in parts if p),
        ours=wrap(GF.binary_cross_entropy_with_logits),
        theirs=wrap(F.binary_cross_entropy_with_logits),
        make_inputs=make,
        kwargs=dict(reduction=reduction),
        grad_args=(0, 1),
    )


BCE_CASES = (
    [
        _bce_case((3, 4), r, w, pw)
        for r, w, pw in itertools.product(REDUCTIONS, (None, (3, 4), (4,)), (None, (4,), (3, 4)))
    ]
    + [_bce_case(s, r, None, None) for s in ((), (1, 3), (2, 3, 2)) for r in REDUCTIONS]
    + [_bce_case((4, 3), r, (3,), (3,), scale=50.0) for r in ("none", "mean")]
)

CASES = CE_CASES + NLL_CASES + MSE_CASES + BCE_CASES
_ids = [c.id for c in CASES]
assert len(set(_ids)) == len(_ids), "duplicate case ids"


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_against_torch(case, contiguous, device):
    check_against_torch(case, device, contiguous=contiguous)




def _gradcheck_worthy(case: OpCase) -> bool:
    """float64 gradcheck + gradgradcheck on a subset, to keep the file fast.

    The reduction only scales the incoming gradient (one shared ``_scale``), so the
    options are checked under ``'mean'`` (the hardest normaliser) one at a time and all
    together; ``'none'`` and ``'sum'`` with every option on at once; each other shape
    once. Saturated-logit (``x50``) cases are covered by the float32 comparison.
    """
    parts = case.id.split("-")
    if "x50" in parts:
        return False
    if case.id.startswith(("ce-idx-NC-", "nll-NC-")):
        return case.id.endswith(("-mean", "-mean-ls0.2", "-mean-w", "-mean-ign-default", "-w-ign-inrange-ls0.2", "-w-ign-inrange"))
    if case.id.startswith("ce-prob-NC-"):
        return case.id.endswith(("-mean", "-w-ls0.25"))
    if case.id.startswith("bce-3x4-"):
        return case.id.endswith(("-mean", "-mean-w3x4", "-mean-pw4", "-w4-pw4", "-mean-w3x4-pw3x4"))
    if case.id.startswith("mse-"):
        return case.id.endswith(("-mean", "-mean-w", "2x3x4-sum-w")) or (case.id.endswith("-none-w") and "bcast" in case.id)
    return "none" in parts  # other shapes


# Every code path of each backward is in this subset (see _gradcheck_worthy).
GRADCHECK_CASES = [c for c in CASES if _gradcheck_worthy(c)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c.id for c in GRADCHECK_CASES])
def test_gradcheck(case, device):
    check_gradcheck(case, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c.id for c in GRADCHECK_CASES])
def test_create_graph_branch_gives_the_same_first_order_gradient(case, device):
    """Backward has a first-order branch (in place, fused softmax) and a differentiable one
    (taken with create_graph=True); gradgradcheck checks only the second's derivatives,
    so check here that both branches give the same gradient."""
    gen = torch.Generator().manual_seed(0)
    args = list(case.make_inputs(torch.float64, torch.device(device), gen))
    idx = [i for i in (case.grad_args or range(len(args))) if torch.is_tensor(args[i]) and args[i].is_floating_point()]
    for i in idx:
        args[i].requires_grad_(True)
    out = case.ours(*args, **case.kwargs)
    cot = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(device)
    diff = [args[i] for i in idx]
    fast = torch.autograd.grad(out, diff, cot, retain_graph=True)
    graph = torch.autograd.grad(out, diff, cot, create_graph=True)
    for a, b in zip(fast, graph):
        torch.testing.assert_close(a, b.detach())


@pytest.mark.parametrize("name", ["mse_loss", "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits"])
def test_signature_matches_torch(name):
    ours = inspect.signature(getattr(GF, name)).parameters
    theirs = inspect.signature(getattr(F, name)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


# -------------------------------------------------------------------- edge cases


def _grads(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(out.sum(), x)
    return out, g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name, kw",
    [
        ("cross_entropy", {}),
        ("cross_entropy", {"label_smoothing": 0.2}),
        ("cross_entropy", {"weight": "w"}),
        ("cross_entropy", {"weight": "w", "label_smoothing": 0.2}),
        ("nll_loss", {}),
        ("nll_loss", {"weight": "w"}),
    ],
    ids=["ce", "ce-ls", "ce-w", "ce-w-ls", "nll", "nll-w"],
)
def test_all_targets_ignored_mean_is_nan_with_zero_grad(name, kw, device):
    x = torch.randn(4, 5, device=device)
    y = torch.full((4,), -100, device=device)
    if "weight" in kw:
        kw = dict(kw, weight=torch.rand(5, device=device))
    out, g = _grads(getattr(GF, name), x, y, **kw)
    ref, g_ref = _grads(getattr(F, name), x, y, **kw)
    assert torch.isnan(ref) and torch.isnan(out)  # torch: 0 / 0 for 'mean'
    torch.testing.assert_close(g, g_ref)
    assert torch.count_nonzero(g) == 0
    for red in ("sum", "none"):
        torch.testing.assert_close(getattr(GF, name)(x, y, reduction=red, **kw), getattr(F, name)(x, y, reduction=red, **kw))


@pytest.mark.parametrize(
    "name, make",
    [
        ("ce-idx", lambda: (torch.randn(0, 5), torch.zeros(0, dtype=torch.long))),
        ("ce-prob", lambda: (torch.randn(0, 5), torch.zeros(0, 5))),
        ("nll", lambda: (torch.randn(0, 5), torch.zeros(0, dtype=torch.long))),
        ("mse", lambda: (torch.randn(0), torch.randn(0))),
        ("bce", lambda: (torch.randn(0, 2), torch.rand(0, 2))),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_empty_batch_matches_torch(name, make):
    fns = {
        "ce-idx": "cross_entropy",
        "ce-prob": "cross_entropy",
        "nll": "nll_loss",
        "mse": "mse_loss",
        "bce": "binary_cross_entropy_with_logits",
    }
    x, t = make()
    for red in REDUCTIONS:
        out, g = _grads(getattr(GF, fns[name]), x, t, reduction=red)
        ref, g_ref = _grads(getattr(F, fns[name]), x, t, reduction=red)
        torch.testing.assert_close(out, ref, equal_nan=True)
        assert g.shape == g_ref.shape


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits_are_finite(device):
    x = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, -50.0]], device=device)
    y = torch.tensor([1, 1], device=device)
    out, g = _grads(GF.cross_entropy, x, y, label_smoothing=0.1, reduction="none")
    ref, g_ref = _grads(F.cross_entropy, x, y, label_smoothing=0.1, reduction="none")
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)
    t = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]], device=device)
    out, g = _grads(GF.binary_cross_entropy_with_logits, x, t, reduction="none", pos_weight=torch.full((3,), 2.0, device=device))
    ref, g_ref = _grads(F.binary_cross_entropy_with_logits, x, t, reduction="none", pos_weight=torch.full((3,), 2.0, device=device))
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_ce_uint8_targets_and_unbatched_singleton_target(device):
    x = torch.randn(4, 5, device=device)
    y = torch.tensor([0, 1, 4, 255], dtype=torch.uint8, device=device)
    out, g = _grads(GF.cross_entropy, x, y, ignore_index=255)
    ref, g_ref = _grads(F.cross_entropy, x, y, ignore_index=255)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)
    # torch accepts a (1,) target for a (C,) input and returns a 0-dim loss (its own
    # backward then fails with "size mismatch"; ours gives the 0-dim target's gradient).
    for red in REDUCTIONS:
        out, g = _grads(GF.cross_entropy, x[0], torch.tensor([3], device=device), reduction=red)
        ref = F.cross_entropy(x[0], torch.tensor([3], device=device), reduction=red)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref)
        _, g_ref = _grads(F.cross_entropy, x[0], torch.tensor(3, device=device), reduction=red)
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name, kw",
    [
        ("cross_entropy", {"label_smoothing": 0.1}),
        ("mse_loss", {}),
        ("mse_loss", {"weight": "w"}),
        ("binary_cross_entropy_with_logits", {"pos_weight": "w"}),
    ],
    ids=["ce-prob", "mse", "mse-w", "bce-pw"],
)
def test_gradient_into_target_only(name, kw, device):
    """Only the target requires grad (e.g. a learned soft label): backward skips the input."""
    x = torch.randn(3, 4, device=device)
    t = torch.rand(3, 4, device=device).softmax(1)
    kw = {k: torch.rand(3, 4, device=device) + 0.5 if v == "w" else v for k, v in kw.items()}
    if name == "binary_cross_entropy_with_logits" and "pos_weight" in kw:
        kw["pos_weight"] = kw["pos_weight"][0]
    grads = []
    for fn in (getattr(GF, name), getattr(F, name)):
        tt = t.clone().requires_grad_(True)
        out = fn(x, tt, reduction="sum", **kw)
        grads.append(torch.autograd.grad(out, tt)[0])
    torch.testing.assert_close(*grads)


def test_negative_label_smoothing_is_no_smoothing_like_torch():
    x, y = torch.randn(3, 4), torch.tensor([0, 3, 1])
    torch.testing.assert_close(GF.cross_entropy(x, y, label_smoothing=-0.5), F.cross_entropy(x, y))


@pytest.mark.parametrize(
    "name, args",
    [
        ("mse_loss", (torch.randn(3, 2), torch.randn(3, 2))),
        ("cross_entropy", (torch.randn(3, 4), torch.tensor([0, 3, 1]))),
        ("nll_loss", (torch.randn(3, 4), torch.tensor([0, 3, 1]))),
        ("binary_cross_entropy_with_logits", (torch.randn(3, 2), torch.rand(3, 2))),
    ],
    ids=["mse", "ce", "nll", "bce"],
)
@pytest.mark.parametrize(
    "size_average, reduce",
    [(sa, r) for sa in (None, True, False) for r in (None, True, False) if (sa, r) != (None, None)],
    ids=lambda v: f"{v}",
)
def test_legacy_size_average_and_reduce_map_like_torch(name, args, size_average, reduce):
    """The deprecated pair overrides reduction='sum' exactly as torch maps it (mean/sum/none)."""
    x, t = args
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        out, g = _grads(getattr(GF, name), x, t, size_average=size_average, reduce=reduce, reduction="sum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, g_ref = _grads(getattr(F, name), x, t, size_average=size_average, reduce=reduce, reduction="sum")
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, g_ref)


def test_mse_broadcast_warns_like_torch():
    with pytest.warns(UserWarning, match="different to the input size"):
        GF.mse_loss(torch.randn(3, 1), torch.randn(3))


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_through_ce_prob_target(device):
    # Mixed second derivative d^2 l / dx dt, against torch's own double backward.
    x = torch.randn(3, 4, device=device, dtype=torch.float64)
    t = torch.randn(3, 4, device=device, dtype=torch.float64).softmax(1)
    res = []
    for fn in (GF.cross_entropy, F.cross_entropy):
        xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
        (gx,) = torch.autograd.grad(fn(xx, tt, label_smoothing=0.1), xx, create_graph=True)
        res.append(torch.autograd.grad((gx * gx).sum(), (xx, tt)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------- bad input

X, Y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
_CE, _NLL, _MSE, _BCE = "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits"

# (id, function name, positional args, keyword args, exception, message pattern).
# torch itself raises the same exception type for each, except the TypeErrors, where
# gradlens is stricter (torch fails later with AttributeError or NotImplementedError).
FAIL_SETTINGS = [
    ("ce-input-not-tensor", _CE, ([[1.0, 2.0]], Y), {}, TypeError, "'input' must be Tensor"),
    ("ce-target-not-tensor", _CE, (X, [0, 1, 2, 3]), {}, TypeError, "'target' must be Tensor"),
    ("ce-target-int32", _CE, (X, Y.int()), {}, RuntimeError, "Long or Byte, but got Int"),
    ("ce-target-float-wrong-shape", _CE, (X, Y.float()), {}, RuntimeError, "Long or Byte"),
    ("ce-prob-target-long", _CE, (X, torch.zeros(4, 5, dtype=torch.long)), {}, RuntimeError, "floating point type"),
    ("ce-batch-mismatch", _CE, (X, Y[:3]), {}, ValueError, r"batch_size \(4\).*\(3\)"),
    ("ce-Kdim-mismatch", _CE, (torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)), {}, RuntimeError, "Expected target size"),
    ("ce-prob-Kdim-mismatch", _CE, (torch.randn(4, 5, 3), torch.rand(4, 5)), {}, RuntimeError, "Expected target size"),
    ("ce-target-out-of-range", _CE, (X, torch.tensor([0, 1, 2, 5])), {}, IndexError, "out of bounds"),
    ("ce-target-negative", _CE, (X, torch.tensor([0, 1, 2, -1])), {}, IndexError, "out of bounds"),
    ("ce-weight-size", _CE, (X, Y), {"weight": torch.ones(4)}, RuntimeError, "all 5 classes"),
    ("ce-prob-weight-size", _CE, (X, X.softmax(1)), {"weight": torch.ones(5, 1)}, RuntimeError, "all 5 classes"),
    ("ce-weight-dtype", _CE, (X, Y), {"weight": torch.ones(5, dtype=torch.float64)}, RuntimeError, "Float but found Double"),
    ("ce-weight-requires-grad", _CE, (X, Y), {"weight": torch.ones(5, requires_grad=True)}, RuntimeError, "'weight'"),
    ("ce-label-smoothing-gt1", _CE, (X, Y), {"label_smoothing": 1.5}, RuntimeError, "between 0.0 and 1.0"),
    ("ce-label-smoothing-none", _CE, (X, Y), {"label_smoothing": None}, TypeError, "'label_smoothing' must be float"),
    ("ce-prob-ignore-index", _CE, (X, X.softmax(1)), {"ignore_index": 0}, RuntimeError, "ignore_index is not supported"),
    ("ce-bad-reduction", _CE, (X, Y), {"reduction": "avg"}, ValueError, "avg is not a valid value for reduction"),
    ("ce-0dim-input", _CE, (torch.tensor(1.0), torch.tensor(0.5)), {}, IndexError, "class dimension"),
    ("ce-integer-input", _CE, (X.long(), Y), {}, TypeError, "floating-point"),
    ("nll-0dim-input", _NLL, (torch.tensor(1.0), torch.tensor(0)), {}, ValueError, r"1 or more dimensions \(got 0\)"),
    ("nll-target-float", _NLL, (X, Y.float()), {}, RuntimeError, "Long or Byte"),
    ("nll-target-2d", _NLL, (X, Y[:, None]), {}, RuntimeError, "multi-target not supported"),
    ("nll-batch-mismatch", _NLL, (X, Y.view(2, 2)), {}, ValueError, "batch_size"),
    ("nll-weight-size", _NLL, (X, Y), {"weight": torch.ones(3)}, RuntimeError, "all 5 classes"),
    ("nll-weight-not-tensor", _NLL, (X, Y), {"weight": [1.0] * 5}, TypeError, "'weight' must be Tensor"),
    ("nll-weight-requires-grad", _NLL, (X, Y), {"weight": torch.ones(5, requires_grad=True)}, RuntimeError, "'weight'"),
    ("nll-target-out-of-range", _NLL, (X, torch.tensor([0, 1, 2, 7])), {}, IndexError, "out of bounds"),
    ("mse-not-broadcastable", _MSE, (torch.randn(3), torch.randn(4)), {}, RuntimeError, "must match the size"),
    ("mse-weight-size", _MSE, (torch.randn(3), torch.randn(3)), {"weight": torch.ones(2)}, ValueError, "Weights and input must have the same size"),
    ("mse-bad-reduction", _MSE, (torch.randn(3), torch.randn(3)), {"reduction": "x"}, ValueError, "not a valid value for reduction"),
    ("mse-input-list", _MSE, ([1.0], torch.ones(1)), {}, TypeError, "'input' must be Tensor"),
    ("mse-integer", _MSE, (torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long)), {}, NotImplementedError, "Long"),
    ("bce-size-mismatch", _BCE, (torch.randn(3), torch.rand(3, 1)), {}, ValueError, "must be the same as input size"),
    ("bce-weight-grows-output", _BCE, (torch.randn(3), torch.rand(3)), {"weight": torch.rand(2, 3)}, RuntimeError, "broadcast shape"),
    ("bce-pos-weight-grows-output", _BCE, (torch.randn(3), torch.rand(3)), {"pos_weight": torch.rand(2, 3), "reduction": "none"}, RuntimeError, "broadcast shape"),
    ("bce-weight-not-broadcastable", _BCE, (torch.randn(3), torch.rand(3)), {"weight": torch.rand(2)}, RuntimeError, "must match the size"),
    ("bce-integer-target", _BCE, (torch.randn(3), torch.ones(3, dtype=torch.long)), {}, RuntimeError, "Long"),
    ("bce-weight-requires-grad", _BCE, (X, X.sigmoid()), {"weight": torch.rand(5, requires_grad=True)}, RuntimeError, "'weight'"),
    ("bce-pos-weight-requires-grad", _BCE, (X, X.sigmoid()), {"pos_weight": torch.rand(5, requires_grad=True)}, RuntimeError, "'pos_weight'"),
    ("bce-pos-weight-not-tensor", _BCE, (X, X.sigmoid()), {"pos_weight": 2.0}, TypeError, "'pos_weight' must be Tensor"),
]


@pytest.mark.parametrize("name, args, kwargs, exc, match", [s[1:] for s in FAIL_SETTINGS], ids=[s[0] for s in FAIL_SETTINGS])
def test_bad_input_raises(name, args, kwargs, exc, match):
    with pytest.raises(exc, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mse-not-broadcastable warns about the sizes first, as torch does
        getattr(GF, name)(*args, **kwargs)
    if exc is not TypeError:  # torch, the reference, raises the same type (see FAIL_SETTINGS)
        with pytest.raises(exc), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(F, name)(*args, **kwargs)
