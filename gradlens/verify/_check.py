"""``check_backward``: verify a backward pass against a reference or float64 finite differences."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from gradlens._nested import floating as _is_float
from gradlens._nested import named_tensors as _flatten
from gradlens.verify._diagnose import alternatives_for, compare
from gradlens.verify._report import BackwardReport, TensorCheck

F64 = torch.float64
_EPS64 = torch.finfo(F64).eps
_MODES = ("current", "train", "eval", "both")
#: Most elements differenced one by one inside the failing blocks of one large tensor.
_FD_BUDGET = 2048


# ----------------------------------------------------------------------------- pytrees
def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Rebuild ``obj`` (tensors nested in tuples, lists, dicts) with every tensor mapped."""
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_tensors(o, fn) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _broadcasts_to(shape: Tuple[int, ...], target: Tuple[int, ...]) -> bool:
    """``shape`` expands to ``target`` (autograd then sums a gradient of ``target``'s shape back)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


# ----------------------------------------------------------------------------- problem
class _Problem:
    """``fn`` (callable or module) with its inputs: which tensors are differentiated, how to call it."""

    def __init__(self, fn: Any, reference: Any, inputs: Tuple[Any, ...], seed: int) -> None:
        self.fn, self.reference, self.inputs = fn, reference, inputs
        self.module = fn if isinstance(fn, nn.Module) else None
        self.names: List[str] = []
        self.leaves: List[torch.Tensor] = []
        self._arg_leaf: Dict[int, int] = {}  # position among input tensors -> leaf index
        self.others: List[Tuple[str, torch.Tensor]] = []  # the tensors not differentiated (masks, indices)
        pos = 0
        for i, a in enumerate(inputs):
            for path, t in _flatten(a, f"input {i}"):
                if t.requires_grad and _is_float(t):
                    self._arg_leaf[pos] = len(self.leaves)
                    self.names.append(path)
                    self.leaves.append(t)
                else:
                    self.others.append((path, t.detach()))
                pos += 1
        self._param_leaf: Dict[str, int] = {}
        if self.module is not None:
            for name, p in list(self.module.named_parameters()) + list(self.module.named_buffers()):
                if p.requires_grad and _is_float(p):
                    self._param_leaf[name] = len(self.leaves)
                    self.names.append(name)
                    self.leaves.append(p)
        if self.module is not None and reference is not None:
            if not isinstance(reference, nn.Module):
                raise TypeError(
                    "check_backward(reference=...) expects an nn.Module with the same parameter names when fn is a "
                    f"module, got {type(reference).__name__}"
                )
            have = {n for n, _ in reference.named_parameters()} | {n for n, _ in reference.named_buffers()}
            missing = [n for n in self._param_leaf if n not in have]
            if missing:
                raise ValueError(f"check_backward(reference=...) lacks the parameters {missing} of fn; names must match")
        self.device = self.leaves[0].device if self.leaves else torch.device("cpu")
        # Random ops (dropout) must draw the same numbers in every call: restore one RNG
        # state before each call (cheap), instead of reseeding (slow).
        # (torch.manual_seed also seeds lazily every accelerator backend: ~2 ms; the CPU
        # generator alone is enough, CUDA keeps its current state, restored the same way.)
        torch.default_generator.manual_seed(seed)
        self._rng = torch.get_rng_state()
        self._cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def call(self, which: str, vals: Sequence[torch.Tensor], cast: Optional[torch.dtype]) -> List[Tuple[str, torch.Tensor]]:
        """Run ``fn`` or ``reference`` with the differentiated tensors replaced by ``vals``."""
        target = self.fn if which == "fn" else self.reference
        counter = [0]

        def sub(t: torch.Tensor) -> torch.Tensor:
            j = counter[0]
            counter[0] += 1
            if j in self._arg_leaf:
                return vals[self._arg_leaf[j]]
            if t.is_floating_point():
                # A fresh copy per call: ops that update arguments in place (running
                # statistics) must see the same values every time, and the user's stay intact.
                return t.detach().to(dtype=cast or t.dtype, copy=True)
            return t

        args = tuple(_map_tensors(a, sub) for a in self.inputs)
        torch.set_rng_state(self._rng)
        if self._cuda_rng is not None:
            torch.cuda.set_rng_state_all(self._cuda_rng)
        if self.module is not None:
            state: Dict[str, torch.Tensor] = {}
            for name, p in self.module.named_parameters():
                if name in self._param_leaf:
                    state[name] = vals[self._param_leaf[name]]
                else:
                    state[name] = p.detach().to(cast) if cast is not None and p.is_floating_point() else p
            for name, b in self.module.named_buffers():
                if name in self._param_leaf:
                    state[name] = vals[self._param_leaf[name]]
                else:  # a fresh copy per call: running statistics must not drift between calls
                    state[name] = b.detach().to(dtype=cast if cast is not None and b.is_floating_point() else b.dtype, copy=True)
            mod = target if isinstance(target, nn.Module) else self.module
            out = torch.func.functional_call(mod, state, args, strict=False)
        else:
            out = target(*args)
        flat = _flatten(out, "out")
        return [(p, t) for p, t in flat if _is_float(t)]


def _vjp(
    outs: Sequence[torch.Tensor],
    leaves: Sequence[torch.Tensor],
    cots: Sequence[torch.Tensor],
    clone: bool = True,
    received: Optional[Dict[int, torch.Tensor]] = None,
) -> List[Optional[torch.Tensor]]:
    """``J^T cots`` for ``leaves``; ``received`` (output position -> tensor) gets the gradients the outputs' nodes receive."""
    pairs = [(i, o, c) for i, (o, c) in enumerate(zip(outs, cots)) if o.requires_grad]
    if not pairs:
        return [None] * len(leaves)
    if any(o.is_complex() for _, o, _ in pairs) or any(c.dtype != o.dtype for _, o, c in pairs):
        # Clones: a backward that mutates grad_output in place must not corrupt our cotangents.
        pairs = [(i, o, c.clone() if clone else c) for i, o, c in pairs]
        if received is not None:
            received.update({i: c for i, _, c in pairs})
        return list(torch.autograd.grad([o for _, o, _ in pairs], list(leaves), [c for _, _, c in pairs], allow_unused=True, retain_graph=True))
    # One real scalar <c, o> instead of grad_outputs: each output's node receives exactly c
    # (d<c, o>/do = 1 * c), a fresh tensor, so c needs no clone; and torch.autograd.grad
    # skips the grad_outputs validation whose first use in a process imports torch.fx's
    # symbolic shapes (sympy): ~0.5 s of the first check, 40x a located bug's cost.
    handles = []
    if received is not None:
        for i, o, _ in pairs:
            handles.append(o.register_hook(functools.partial(_keep, received, i)))
    try:
        total = pairs[0][1].new_zeros(())
        for _, o, c in pairs:
            total = total + (o * c).sum()
        return list(torch.autograd.grad(total, list(leaves), allow_unused=True, retain_graph=True))
    finally:
        for h in handles:
            h.remove()


def _keep(store: Dict[int, torch.Tensor], i: int, grad: torch.Tensor) -> None:
    store[i] = grad


def _dot(a: Sequence[torch.Tensor], b: Sequence[Optional[torch.Tensor]]) -> float:
    s = 0.0
    for x, y in zip(a, b):
        if y is not None:
            s += float((x.to(F64) * y.to(F64)).sum())
    return s


def _dtype_eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if dtype.is_floating_point else _EPS64


# ----------------------------------------------------------------------------- finite differences
def _clear(a: float, d: float, tol: float) -> bool:
    """A mismatch too large (1% and 100x the noise) to be truncation error: no second step needed."""
    return abs(a - d) > 1e-2 * (abs(a) + abs(d)) + 100 * tol


class _FD:
    """Finite differences of ``s(x) = <v, f(x)>`` (several cotangents at once) in float64."""

    def __init__(
        self, prob: _Problem, x: List[torch.Tensor], cots: List[List[torch.Tensor]], eps: float, outs: Optional[List[torch.Tensor]] = None
    ) -> None:
        self.prob, self.x, self.cots = prob, x, cots
        # Normally float64. When fn has no float64 path, its own dtype, with the step that
        # balances truncation and rounding (eps^(1/3)).
        self.cast: Optional[torch.dtype] = F64 if all(t.dtype == F64 for t in x) else None
        self.unit = _EPS64 if self.cast is not None else max(_dtype_eps(t.dtype) for t in x)
        self.h = eps if self.cast is not None else max(eps, self.unit ** (1 / 3))
        eps = self.h
        with torch.no_grad():
            # f(x) itself: reuse the outputs already computed at x when given.
            if outs is None:
                outs = [t for _, t in self.prob.call("fn", x, self.cast)]
            s0, self.scale = self._dots([o.detach() for o in outs], scale=True)
        self.s0 = s0
        # Rounding noise of one evaluation of s, divided by the step: the derived FD tolerance.
        self.noise = [64 * self.unit * sc / eps + 1e-300 for sc in self.scale]

    def _s(self, vals: Sequence[torch.Tensor]) -> Tuple[List[float], List[float]]:
        return self._dots([t for _, t in self.prob.call("fn", vals, self.cast)])

    def _dots(self, outs: Sequence[torch.Tensor], scale: bool = False) -> Tuple[List[float], List[float]]:
        s, sc = [], []
        for cot in self.cots:
            tot, ab = 0.0, 0.0
            for o, c in zip(outs, cot):
                prod = o.to(F64) * c
                tot += float(prod.sum())
                if scale:  # sum |v f|: the rounding-noise scale, needed at x only
                    ab += float(prod.abs().sum())
            s.append(tot)
            sc.append(ab)
        return s, sc

    def directional(self, u: Dict[int, torch.Tensor], h: float) -> Tuple[List[float], Dict[int, torch.Tensor]]:
        """Central difference along ``u`` (leaf -> direction); returns (derivatives, actual direction)."""
        xp, xm = list(self.x), list(self.x)
        du = {}
        for k, d in u.items():
            xp[k] = (self.x[k] + h * d).to(self.x[k].dtype)
            xm[k] = (self.x[k] - h * d).to(self.x[k].dtype)
            du[k] = (xp[k].to(F64) - xm[k].to(F64)) / (2 * h)  # the direction actually taken, after rounding
        with torch.no_grad():
            sp, _ = self._s(xp)
            sm, _ = self._s(xm)
        return [(a - b) / (2 * h) for a, b in zip(sp, sm)], du

    def elements(self, k: int, idx: Sequence[int]) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Per-element central differences on leaf ``k`` at flat ``idx``: (per cotangent values, kink flags)."""
        base = self.x[k]
        flat = base.detach().flatten()
        n = len(idx)
        res = [torch.zeros(n, dtype=F64) for _ in self.cots]
        kink = torch.zeros(n, dtype=torch.bool)
        vals = list(self.x)
        h = self.h
        for j, i in enumerate(idx):
            xi = float(flat[i])
            step = max(h, 8 * _EPS64 * abs(xi))  # at least a few ulps of x, so that x + step != x
            for_s = []
            for sgn in (1.0, -1.0):
                p = flat.clone()
                p[i] = xi + sgn * step
                vals[k] = p.view_as(base)
                with torch.no_grad():
                    s, _ = self._s(vals)
                for_s.append((s, float(p[i]) - xi))
            (sp, dp), (sm, dm) = for_s
            width = dp - dm
            for c in range(len(self.cots)):
                res[c][j] = (sp[c] - sm[c]) / width
            # One-sided slopes that disagree by far more than curvature allows: a kink.
            second = abs(sp[0] - 2 * self.s0[0] + sm[0])
            first = abs(sp[0] - sm[0]) / 2
            kink[j] = second > max(0.05 * first, 1e3 * self.noise[0] * step)
        return [r.to(base.device) for r in res], kink.to(base.device)


def _directional_ok(
    fd: _FD, u: Dict[int, torch.Tensor], gs: Sequence[Sequence[Optional[torch.Tensor]]], cots: Optional[Sequence[int]] = None
) -> List[bool]:
    """Whether each gradient in ``gs`` agrees with finite differences along ``u`` (leaf -> direction).

    ``gs[i]`` (per leaf) is the backward's gradient for cotangent ``cots[i]`` of ``fd``
    (default: ``gs`` holds one per cotangent, in order). One pair of evaluations tests
    them all; a second pair only when a mismatch is neither within tolerance nor clear.
    """
    cots = range(len(gs)) if cots is None else cots
    d, du = fd.directional(u, fd.h)
    a = [sum(float((g[k].to(F64) * du[k]).sum()) for k in du if g[k] is not None) for g in gs]
    tol = [fd.noise[c] + 1e-7 * (abs(ai) + abs(d[c])) for ai, c in zip(a, cots)]
    ok = [abs(ai - d[c]) <= t for ai, c, t in zip(a, cots, tol)]
    if all(oki or _clear(ai, d[c], t) for oki, ai, c, t in zip(ok, a, cots, tol)):
        return ok
    # Confirm with a second step (Richardson): truncation error shrinks as h^2, a real bug does not.
    d2, _ = fd.directional(u, 2 * fd.h)
    return [
        oki or abs(ai - (4 * d[c] - d2[c]) / 3) <= t + 4 * abs(d[c] - d2[c])
        for oki, ai, c, t in zip(ok, a, cots, tol)
    ]


#: The start of the diagnosis of a gradient where finite differences are 0 everywhere (_diagnose.compare).
_NONE_EXPECTED = "gradient present where none should be"
#: A plain-torch straight-through round: forward round(x), gradient identity.
_STE_EXAMPLE = "lambda x: x + (torch.round(x) - x).detach()"


def _piecewise_constant_text(name: str) -> str:
    return (
        f"the forward is piecewise constant in {name}: its finite differences are 0 almost everywhere (a larger "
        "step does change the output), so a straight-through or surrogate gradient cannot be checked against "
        "finite differences; give the intended gradient as a plain-torch forward with the same values, e.g. "
        f"pass reference={_STE_EXAMPLE} for a straight-through round"
    )


# ----------------------------------------------------------------------------- the checker
class _Checker:
    def __init__(self, prob: _Problem, opts: Dict[str, Any], label: str) -> None:
        self.p, self.o, self.label = prob, opts, label
        self.problems: List[str] = []
        self.warnings: List[str] = []
        self.notes: List[str] = []

    def _gen(self, salt: int) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(self.o["seed"] * 7919 + salt)

    def _randn_like(self, t: torch.Tensor, gen: torch.Generator, dtype: torch.dtype = F64) -> torch.Tensor:
        # Drawn in float32 (4x faster than float64 draws; exactly representable in float64).
        return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=dtype)

    def run(self) -> List[TensorCheck]:
        p, o = self.p, self.o
        L = [t.detach().clone().requires_grad_(True) for t in p.leaves]
        self._L = L
        outs = p.call("fn", L, None)
        if not outs:
            raise ValueError("check_backward(fn=...) expects fn to return floating-point tensors, got none")
        names = [n for n, _ in outs]
        otensors = [t for _, t in outs]
        if not any(t.requires_grad for t in otensors):
            self.problems.append("no output requires grad: the forward detached everything (gradients missing)")
        n_cot = o["n_cotangents"]
        # Cotangents exactly representable in the user's dtype: the float64 truth uses the same numbers.
        cotsN = [[self._randn_like(t, self._gen(100 + c), t.dtype) for t in otensors] for c in range(n_cot)]
        cots64 = [[v.to(F64) for v in cs] for cs in cotsN]

        # The user's dtype: the gradients they actually get, plus structural checks.
        got: List[List[Optional[torch.Tensor]]] = []
        crashed = None
        for c in range(n_cot):
            passed: Dict[int, torch.Tensor] = {}  # what the outputs' nodes receive: watched for mutation
            try:
                g = _vjp(otensors, L, cotsN[c], received=passed)
            except Exception as err:  # noqa: BLE001 - autograd's shape/count validation, or the user's backward itself
                crashed = err
                break
            if c == 0 and any(not torch.equal(t, cotsN[c][i]) for i, t in passed.items()):
                self.problems.append(
                    "backward mutates grad_output in place (the incoming gradient changed after backward): "
                    "clone it first, other consumers of that gradient see the modified values"
                )
            got.append(g)
        raw = self._raw_probe(otensors, L, cotsN[0])
        if crashed is not None:
            msg = str(crashed).splitlines()[0]
            diag = "backward raised: " + msg
            if "device" in msg:
                diag = "returned gradient is on the wrong device: " + msg
            elif "invalid gradient" in msg or "shape" in msg:
                diag = "returned gradient has the wrong shape: " + msg
            elif "incorrect number of gradients" in msg:
                diag = "backward returned the wrong number of gradients: " + msg
            self.problems.append(diag)
            return [TensorCheck(self._name(k), tuple(t.shape), str(t.dtype).replace("torch.", ""), ok=False) for k, t in enumerate(p.leaves)]

        again = None
        if o["check_determinism"]:
            if got and all(raw.get(k) is not None or g is None for k, g in enumerate(got[0])):
                # The direct call of the Function's backward was a second backward already.
                again = [raw[k].to(L[k].dtype) if g is not None else None for k, g in enumerate(got[0])]
            else:
                again = _vjp(otensors, L, [v.clone() for v in cotsN[0]])

        # Expected gradients in float64.
        if p.reference is not None:
            exp, known, kink, extra, err_est, flips, methods = self._expected_from_reference(otensors, cots64, L)
            fwd_ref = self._ref_forward64
        else:
            exp, known, kink, extra, err_est, flips, methods = self._expected_from_fd(otensors, cots64, got)
            fwd_ref = None

        if fwd_ref is not None:
            self._compare_forward(otensors, names, fwd_ref)

        checks = []
        for k, leaf in enumerate(p.leaves):
            checks.append(self._leaf_check(k, leaf, got, exp, known, kink, extra, err_est, flips, methods, cots64, otensors))

        # Function-level patterns.
        pairs = [(a, b) for a, b in zip(got[0], got[1]) if a is not None and b is not None] if n_cot >= 2 else []
        if pairs:
            same = all(torch.allclose(a, b, rtol=1e-6, atol=0.0) for a, b in pairs)
            nonzero = any(bool(a.abs().max() > 0) for a, _ in pairs if a.numel())
            # A correct backward is linear in grad_output: J^T v0 == J^T v1 != 0 for two
            # independent random v0, v1 cannot happen.
            if same and nonzero:
                self.problems.append(
                    "backward ignores grad_output: two different random grad_outputs gave the same gradient "
                    "(did it compute d(sum(out))/dx instead of multiplying by grad_output?)"
                )
        if again is not None:
            for k, (a, b) in enumerate(zip(got[0], again)):
                if a is None or b is None or torch.equal(a, b):
                    continue
                d = float((a.to(F64) - b.to(F64)).abs().max())
                if d > checks[k].atol:
                    self.problems.append(
                        f"non-deterministic backward: two backward calls with the same grad_output differ by up to {d:.3g} "
                        f"for {checks[k].name} (tolerance {checks[k].atol:.2g})"
                    )
                else:
                    self.notes.append(f"{checks[k].name}: two backward calls differ by {d:.3g} (within tolerance)")
        if o["forward_ad"]:
            self._check_forward_ad(cots64, got)
        if o["second_order"]:
            self._check_second_order()
        return checks

    # ------------------------------------------------------------------ helpers
    def _name(self, k: int) -> str:
        return f"{self.label}{self.p.names[k]}"

    def _raw_probe(self, outs: List[torch.Tensor], L: List[torch.Tensor], cots: List[torch.Tensor]) -> Dict[int, torch.Tensor]:
        """Call a custom Function's backward directly to see its raw gradients (autograd casts dtypes silently).

        Returns leaf index -> raw gradient (for the leaves the Function feeds directly).
        """
        found: Dict[int, torch.Tensor] = {}
        fns = {id(t.grad_fn): t.grad_fn for t in outs if t.grad_fn is not None}
        if len(fns) != 1:
            return found
        node = next(iter(fns.values()))
        if not hasattr(node, "_forward_cls") or len(outs) != len({t.output_nr for t in outs}):
            return found
        if sorted(t.output_nr for t in outs) != list(range(len(outs))):
            return found
        order = sorted(range(len(outs)), key=lambda i: outs[i].output_nr)
        try:
            raw = node.apply(*[cots[i].clone() for i in order])
        except Exception:  # noqa: BLE001 - the probe is best effort; the real check already ran
            return found
        raw = raw if isinstance(raw, tuple) else (raw,)
        leaf_of = {id(t): k for k, t in enumerate(L)}
        for r, (nxt, _) in zip(raw, node.next_functions):
            var = getattr(nxt, "variable", None)
            if var is None or id(var) not in leaf_of or not torch.is_tensor(r):
                continue
            k = leaf_of[id(var)]
            leaf = self.p.leaves[k]
            if k not in found and r.shape == leaf.shape:
                found[k] = r.detach()
            if r.shape != leaf.shape and _broadcasts_to(tuple(leaf.shape), tuple(r.shape)):
                self.warnings.append(
                    f"{self._name(k)}: backward returned a gradient of broadcast shape {tuple(r.shape)} for a tensor of "
                    f"shape {tuple(leaf.shape)}; autograd sums it to {tuple(leaf.shape)}, so the values are checked after "
                    "that sum, but it costs a full-size gradient in memory and a hidden reduction: sum it in the backward "
                    "(e.g. grad.sum(0)) instead"
                )
            for what, a, b in (("dtype", r.dtype, leaf.dtype), ("shape", tuple(r.shape), tuple(leaf.shape)), ("device", r.device, leaf.device)):
                if what == "shape" and _broadcasts_to(b, a):
                    continue  # warned above
                if a != b:
                    self.problems.append(
                        f"{self._name(k)}: backward returned a gradient with the wrong {what}: {a} instead of {b}"
                        + (" (autograd silently casts it)" if what == "dtype" else "")
                    )
        seen = [leaf_of.get(id(getattr(nxt, "variable", None))) for nxt, _ in node.next_functions]
        if len([k for k in seen if k is not None]) != len({k for k in seen if k is not None}):
            return {}  # a tensor fed twice: autograd sums its gradients, the raw ones are not comparable
        return found

    def _expected_from_reference(self, outs: List[torch.Tensor], cots64: List[List[torch.Tensor]], L: List[torch.Tensor]):
        p = self.p
        R = [t.detach().to(F64).requires_grad_(True) for t in p.leaves]
        ref_outs = p.call("ref", R, F64)
        ref_t = [t for _, t in ref_outs]
        self._ref_forward64 = ref_t
        if len(ref_t) != len(outs):
            raise ValueError(
                f"check_backward(reference=...) returned {len(ref_t)} floating-point outputs, fn returned {len(outs)}"
            )
        exp = [_vjp(ref_t, R, cs) for cs in cots64]
        exp = [[e if e is not None else torch.zeros_like(R[k]) for k, e in enumerate(es)] for es in exp]
        # Rounding error of the reference in the user's dtype: the derived tolerance.
        err_est: List[float] = [0.0] * len(L)
        if any(t.dtype != F64 for t in p.leaves):
            RN = [t.detach().clone().requires_grad_(True) for t in p.leaves]
            refN = [t for _, t in p.call("ref", RN, None)]
            gN = _vjp(refN, RN, [c.to(o.dtype) for c, o in zip(cots64[0], refN)])
            for k, g in enumerate(gN):
                if g is not None:
                    err_est[k] = float((g.to(F64) - exp[0][k]).abs().max())
        known = [torch.ones(t.shape, dtype=torch.bool, device=t.device) for t in p.leaves]
        kink = [torch.zeros(t.shape, dtype=torch.bool, device=t.device) for t in p.leaves]
        self._flip_args = (ref_t, R, cots64[0])
        flips = [None] * len(L)  # computed lazily, for failing tensors only
        methods = ["reference autograd (every element)"] * len(L)
        return exp, known, kink, [None] * len(L), err_est, flips, methods

    def _reference_flips(self, k: int) -> Dict[int, torch.Tensor]:
        """For leaf ``k`` if it has the shape of an output: expected gradients for that output's cotangent flipped along each dim."""
        ref_t, R, cots = self._flip_args
        leaf = R[k]
        fl: Dict[int, torch.Tensor] = {}
        for j, o in enumerate(ref_t):
            if o.shape == leaf.shape and o.requires_grad:
                for d in range(o.dim()):
                    if o.shape[d] > 1:
                        cs = [c if i != j else c.flip(d) for i, c in enumerate(cots)]
                        e = _vjp(ref_t, [leaf], cs)[0]
                        if e is not None:
                            fl[d] = e
                break
        return fl

    def _moves_at_large_steps(self, k: int) -> bool:
        """Whether fn's outputs change when leaf ``k`` moves by a large step (its finite differences were all 0)."""
        fd = self._fd
        with torch.no_grad():
            base = [t for _, t in self.p.call("fn", fd.x, fd.cast)]
            gen = self._gen(71)
            x = fd.x[k]
            scale = (float(x.abs().max()) if x.numel() else 0.0) + 1.0
            for f in (0.1, 1.0, 10.0):  # a rounding step, a sign flip, a saturation: one of them moves the output
                vals = list(fd.x)
                vals[k] = (x.to(F64) + f * scale * self._randn_like(x, gen)).to(x.dtype)
                outs = [t for _, t in self.p.call("fn", vals, fd.cast)]
                for a, b in zip(outs, base):
                    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-12, atol=0.0, equal_nan=True):
                        return True
        return False

    def _compare_forward(self, outs: List[torch.Tensor], names: List[str], ref: List[torch.Tensor]) -> None:
        for n, a, b in zip(names, outs, ref):
            if a.shape != b.shape:
                self.problems.append(f"forward output {n} has shape {tuple(a.shape)}, the reference {tuple(b.shape)}")
                continue
            b = b.detach()
            scale = float(b.abs().max()) if b.numel() else 0.0
            # 1000 ulps of the output's dtype, relative (float64: the 1e-9 floor)
            tol = max(1e-9, 1e3 * _dtype_eps(a.dtype)) * max(scale, 1.0)
            d = float((a.detach().to(F64) - b.detach()).abs().max()) if b.numel() else 0.0
            if d > tol:
                self.problems.append(
                    f"forward output {n} differs from the reference by up to {d:.3g} (tolerance {tol:.2g}): "
                    "gradients are compared anyway, but fix the forward first"
                )

    def _expected_from_fd(self, outs: List[torch.Tensor], cots64: List[List[torch.Tensor]], got):
        p, o = self.p, self.o
        n = len(p.leaves)
        if all(t.dtype == F64 for t in p.leaves) and all(t.dtype == F64 for t in outs):
            X, outs64, g64 = self._L, list(outs), got  # already float64: reuse the user's run
        else:
            X = [t.detach().to(F64).requires_grad_(True) for t in p.leaves]
            try:
                outs64 = [t for _, t in p.call("fn", X, F64)]
                g64 = [_vjp(outs64, X, cs) for cs in cots64]
            except Exception as err:  # noqa: BLE001 - e.g. a kernel without a float64 path
                self.notes.append(f"fn could not run in float64 ({type(err).__name__}: {err}); finite differences in its own dtype")
                X = [t.detach().clone().requires_grad_(True) for t in p.leaves]
                outs64 = [t for _, t in p.call("fn", X, None)]
                g64 = got
        self._outs64 = outs64
        # Forward rounding of the user's dtype, relative: part of the derived tolerance.
        self._fwd_rel = 0.0
        for a, b in zip(outs, outs64):
            if a.dtype != F64 and b.numel():
                sc = float(b.detach().abs().max())
                self._fwd_rel = max(self._fwd_rel, float((a.detach().to(F64) - b.detach()).abs().max()) / max(sc, 1e-300))
        xs = [x.detach() for x in X]
        fd = _FD(p, xs, [list(cs) for cs in cots64], o["eps"], outs=outs64)
        self._fd = fd
        exp = [
            [g.detach().to(F64) if g is not None else torch.zeros(x.shape, dtype=F64, device=x.device) for g, x in zip(g64[c], xs)]
            for c in range(len(cots64))
        ]
        known = [torch.ones(x.shape, dtype=torch.bool, device=x.device) for x in xs]
        kink = [torch.zeros(x.shape, dtype=torch.bool, device=x.device) for x in xs]
        extra = [None] * n
        flips = [dict() for _ in range(n)]
        methods = ["finite differences (random directions)"] * n
        gen = self._gen(7)
        failing: Dict[int, int] = {}  # leaf -> cotangent index where it failed
        for _ in range(o["n_directions"]):
            todo = [k for k in range(n) if k not in failing]
            if not todo:
                break
            # One random direction over every tensor tests all grad_outputs at once.
            u = {k: self._randn_like(xs[k], gen) for k in todo}
            if all(_directional_ok(fd, u, g64)):
                continue
            for k in todo:  # locate: tensor by tensor, every grad_output at once
                res = _directional_ok(fd, {k: self._randn_like(xs[k], gen)}, g64)
                if not all(res):
                    failing[k] = res.index(False)
        self._failing = failing
        for k, c in failing.items():
            if o["locate"]:
                self._analyze_leaf(k, c, fd, g64, exp, known, kink, extra, flips, methods, xs, gen)
            else:
                methods[k] = "finite differences (random directions; locate=False)"
        # The float64 gradients stand in for the truth where FD agreed; the comparison uses cotangent `c`.
        self._fd_cot = {k: failing.get(k, 0) for k in range(n)}
        return exp, known, kink, extra, [0.0] * n, flips, methods

    def _analyze_leaf(self, k, c, fd, g64, exp, known, kink, extra, flips, methods, xs, gen) -> None:
        """A leaf failed a directional check: find the expected gradient element by element where affordable."""
        o = self.o
        x = xs[k]
        n = x.numel()
        g = g64[c][k]
        gf = g.detach().to(F64).flatten() if g is not None else torch.zeros(n, dtype=F64, device=x.device)
        same_shape = [j for j, t in enumerate(self._outs64) if t.shape == x.shape]
        alt_cots: List[Tuple[int, List[torch.Tensor]]] = []
        if same_shape and n <= o["max_fd_elements"]:
            j = same_shape[0]
            for d in range(x.dim()):
                if x.shape[d] > 1:
                    cs = [cc if i != j else cc.flip(d) for i, cc in enumerate(fd.cots[c])]
                    alt_cots.append((d, cs))
        if n <= o["max_fd_elements"]:
            sub = _FD(self.p, xs, [fd.cots[c]] + [cs for _, cs in alt_cots], o["eps"], outs=self._outs64)
            vals, kk = sub.elements(k, range(n))
            exp[c][k] = vals[0].view_as(x)
            kink[k] = kk.view_as(x)
            extra[k] = sub.noise[0] * 4 + 1e-6 * vals[0].abs().view_as(x)
            flips[k] = {d: v.view_as(x) for (d, _), v in zip(alt_cots, vals[1:])}
            methods[k] = f"finite differences (all {n} elements)"
            return
        # Large: first whole-tensor hypotheses by directions, then bisection to the wrong blocks.
        dirs = [self._randn_like(x, gen) for _ in range(3)]
        ds, as_, ats = [], [], []
        for u in dirs:
            d, du = fd.directional({k: u}, fd.h)
            ds.append(d[c])
            as_.append(float((gf.view_as(x) * du[k]).sum()))
            if x.dim() >= 2 and x.shape[-1] == x.shape[-2]:
                ats.append(float((gf.view_as(x).mT * du[k]).sum()))
        tol = [fd.noise[c] + 1e-7 * abs(d) for d in ds]
        nrm = sum(d * d for d in ds)
        cfit = sum(a * d for a, d in zip(as_, ds)) / nrm if nrm > 0 else 0.0
        if cfit != 0 and abs(cfit - 1) > 1e-3 and all(abs(a - cfit * d) <= t + 1e-6 * abs(a) for a, d, t in zip(as_, ds, tol)):
            exp[c][k] = (gf / cfit).view_as(x)
            methods[k] = "finite differences (3 random directions fit a constant factor)"
            return
        if ats and all(abs(a - d) <= t + 1e-6 * abs(a) for a, d, t in zip(ats, ds, tol)):
            exp[c][k] = gf.view_as(x).mT.clone()
            methods[k] = "finite differences (3 random directions fit the transpose)"
            return
        # Bisection over flat index blocks; per-element FD on the failing small blocks.
        budget_elems = max(o["max_fd_elements"], _FD_BUDGET)
        leaf_block = 16
        queue = [(0, n)]
        g_k = [gf.view_as(x) if i == k else None for i in range(len(xs))]  # the blocks vary leaf k only
        bad_blocks: List[Tuple[int, int]] = []
        unknown_blocks: List[Tuple[int, int]] = []
        tests, passed_any, widespread = 0, False, False
        while queue:
            a, b = queue.pop(0)  # breadth first: a widespread error shows up level by level
            if widespread or tests >= 400:
                unknown_blocks.append((a, b))
                continue
            u = torch.zeros(n, dtype=F64, device=x.device)
            u[a:b] = self._randn_like(u[a:b], gen)
            tests += 1
            if _directional_ok(fd, {k: u.view_as(x)}, [g_k], cots=[c])[0]:
                passed_any = True
                continue
            if tests >= 24 and not passed_any:
                # Every block fails: wrong (nearly) everywhere; sample instead of localizing.
                widespread = True
                unknown_blocks.append((a, b))
                continue
            if b - a <= leaf_block:
                bad_blocks.append((a, b))
            else:
                m = (a + b) // 2
                queue += [(a, m), (m, b)]
        idx: List[int] = []
        for a, b in bad_blocks:
            if len(idx) + (b - a) > budget_elems:
                unknown_blocks.append((a, b))
                continue
            idx.extend(range(a, b))
        if widespread:
            sample = torch.randperm(n, generator=gen)[:64].tolist()
            idx = sorted(set(idx) | set(sample))
        ef = gf.clone()
        kf = torch.zeros(n, dtype=torch.bool, device=x.device)
        xf = torch.zeros(n, dtype=F64, device=x.device)
        kn = torch.ones(n, dtype=torch.bool, device=x.device)
        for a, b in unknown_blocks:
            kn[a:b] = False
        if idx:
            sub = _FD(self.p, xs, [fd.cots[c]], o["eps"], outs=self._outs64)
            vals, kk = sub.elements(k, idx)
            it = torch.tensor(idx, device=x.device)
            ef[it] = vals[0]
            kf[it] = kk
            xf[it] = sub.noise[0] * 4 + 1e-6 * vals[0].abs()
            kn[it] = True
        exp[c][k] = ef.view_as(x)
        kink[k] = kf.view_as(x)
        extra[k] = xf.view_as(x)
        known[k] = kn.view_as(x)
        if widespread:
            methods[k] = f"finite differences (wrong in every block tested; {len(idx)} random elements one by one)"
            self.notes.append(f"{self._name(k)}: wrong nearly everywhere; counts are over {len(idx)} sampled elements")
        else:
            methods[k] = f"finite differences (random directions, {tests} block tests, {len(idx)} elements one by one)"
            n_unknown = sum(b - a for a, b in unknown_blocks)
            if n_unknown:
                self.notes.append(f"{self._name(k)}: {n_unknown} elements in failing blocks were not compared one by one (budget)")

    def _leaf_check(self, k, leaf, got, exp, known, kink, extra, err_est, flips, methods, cots64, otensors) -> TensorCheck:
        o = self.o
        check = TensorCheck(self._name(k), tuple(leaf.shape), str(leaf.dtype).replace("torch.", ""))
        check.method = methods[k]
        if self.p.reference is not None:
            cands = range(len(got))
        else:
            cands = [self._fd_cot[k]]
        best = None
        for c in cands:
            g = got[c][k]
            e = exp[c][k]
            e_scale = float(e.abs().max()) if e.numel() else 0.0
            eps = _dtype_eps(leaf.dtype)
            if o["atol"] is not None:
                atol = o["atol"]
            elif leaf.dtype == F64:
                # float64 vs float64: rounding is ~1e-16 relative; 1e-9 leaves room for
                # reordered sums and still catches any real bug.
                atol = 1e-9 * max(e_scale, 1e-12)
            else:
                fwd = getattr(self, "_fwd_rel", 0.0)
                # Derived: 8x the measured rounding error of the reference in this dtype, at
                # least 16 ulps of the largest gradient element, and the forward's relative error.
                atol = max(8 * err_est[k], 16 * eps * e_scale, 8 * fwd * e_scale, 1e-30)
            rtol = o["rtol"] if o["rtol"] is not None else (1e-7 if leaf.dtype == F64 else 16 * eps)
            cot_like = None
            for t, cv in zip(otensors, cots64[c]):
                if t.shape == leaf.shape:
                    cot_like = cv
                    break
            gd = g.detach().to(F64) if g is not None else None

            def attempt(fl: Dict[int, torch.Tensor]) -> TensorCheck:
                tr = TensorCheck(check.name, check.shape, check.dtype, method=check.method)
                compare(
                    tr, gd, e, known=known[k], kink=kink[k], atol=atol, rtol=rtol, extra_tol=extra[k],
                    top_k=o["top_k"], values=leaf.detach().to(F64),
                    alternatives=alternatives_for(e, fl) if gd is not None else [], cotangent_like=cot_like,
                    others=self.p.others,
                )
                return tr

            home = 0 if self.p.reference is not None else self._fd_cot[k]
            fl = flips[k] if c == home and flips[k] is not None else {}
            trial = attempt(fl)
            if not trial.ok and gd is not None and c == home and self.p.reference is not None and flips[k] is None:
                flips[k] = self._reference_flips(k)  # only now: costs one reference backward per dim
                if flips[k]:
                    trial = attempt(flips[k])
            # The first failing grad_output is reported (its hypotheses were computed);
            # when all pass, the one with the largest error.
            if best is None or (best.ok and not trial.ok) or (best.ok and (best.max_abs_error or 0) < (trial.max_abs_error or 0)):
                best = trial
        if self.p.reference is None and not best.ok and any(d.startswith(_NONE_EXPECTED) for d in best.diagnosis):
            if self._moves_at_large_steps(k):
                best.diagnosis = [_piecewise_constant_text(check.name) if d.startswith(_NONE_EXPECTED) else d for d in best.diagnosis]
        if self.p.reference is None and not o["locate"] and k in self._failing:
            best.ok = False
            best.diagnosis.append("a random directional derivative disagrees with the backward (not located: locate=False)")
        n_kink = int(kink[k].sum())
        if n_kink:
            first = kink[k].nonzero()[0].tolist()
            self.warnings.append(
                f"{check.name}: {n_kink} element(s) sit on a kink (e.g. index {first}): one-sided slopes differ, "
                "finite differences are ambiguous there; excluded from the verdict"
            )
        return best

    def _check_forward_ad(self, cots64, got) -> None:
        """Forward-mode: <v, J u> from jvp must equal <J^T v, u> from the (checked) backward."""
        import torch.autograd.forward_ad as fwAD

        p = self.p
        gen = self._gen(31)
        X = [t.detach().to(F64) for t in p.leaves]
        U = [self._randn_like(x, gen) for x in X]
        try:
            with warnings.catch_warnings(), fwAD.dual_level():
                # torch's forward-AD internals still call torch.jit.script (deprecated in torch 2.13).
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=DeprecationWarning)
                duals = [fwAD.make_dual(x, u) for x, u in zip(X, U)]
                outs = [t for _, t in p.call("fn", duals, F64)]
                tang = [fwAD.unpack_dual(t).tangent for t in outs]
        except Exception as err:  # noqa: BLE001
            self.problems.append(f"forward-mode AD failed: {type(err).__name__}: {str(err).splitlines()[0]}")
            return
        jvp = sum(float((t * c).sum()) for t, c in zip(tang, cots64[0]) if t is not None)
        Xg = [x.clone().requires_grad_(True) for x in X]
        outs = [t for _, t in p.call("ref" if p.reference is not None else "fn", Xg, F64)]
        vjp = _vjp(outs, Xg, cots64[0])
        ref = _dot(U, vjp)
        tol = 1e-7 * (abs(ref) + sum(float(u.abs().sum()) for u in U) * 1e-3)
        if abs(jvp - ref) > tol:
            self.problems.append(f"forward-mode (jvp) disagrees with the backward: <v, J u> = {jvp:.8g} vs {ref:.8g}")
        else:
            self.notes.append("forward-mode (jvp) agrees with the backward")

    def _check_second_order(self) -> None:
        """Double backward: Hessian-vector products vs the reference (or float64 finite differences of the VJP)."""
        p = self.p
        gen = self._gen(53)
        X = [t.detach().to(F64).requires_grad_(True) for t in p.leaves]
        outs = [t for _, t in p.call("fn", X, F64)]
        V = [self._randn_like(t, gen) for t in outs]
        W = [self._randn_like(x, gen) for x in X]
        try:
            g = torch.autograd.grad([t for t in outs if t.requires_grad], X, [v for t, v in zip(outs, V) if t.requires_grad], create_graph=True, allow_unused=True)
            s = sum((gi * w).sum() for gi, w in zip(g, W) if gi is not None and gi.requires_grad)
            hv = torch.autograd.grad(s, X, allow_unused=True) if torch.is_tensor(s) else [None] * len(X)
        except RuntimeError as err:
            self.problems.append(f"double backward failed: {str(err).splitlines()[0]}")
            return
        if p.reference is not None:
            R = [x.detach().clone().requires_grad_(True) for x in X]
            ro = [t for _, t in p.call("ref", R, F64)]
            rg = torch.autograd.grad(ro, R, V, create_graph=True, allow_unused=True)
            rs = sum((gi * w).sum() for gi, w in zip(rg, W) if gi is not None and gi.requires_grad)
            rh = torch.autograd.grad(rs, R, allow_unused=True) if torch.is_tensor(rs) else [None] * len(R)
            for k, (a, b) in enumerate(zip(hv, rh)):
                a = a if a is not None else torch.zeros_like(X[k])
                b = b if b is not None else torch.zeros_like(X[k])
                d = float((a - b).abs().max()) if a.numel() else 0.0
                if d > 1e-7 * max(1.0, float(b.abs().max()) if b.numel() else 0.0):
                    self.problems.append(f"second order: {self._name(k)} Hessian-vector product off by up to {d:.3g}")
            return
        # Without a reference: directional FD of <W, g(x)> along a random U vs <hv, U>.
        U = [self._randn_like(x, gen) for x in X]
        h = 1e-5

        def gw(vals):
            Y = [v.detach().requires_grad_(True) for v in vals]
            o2 = [t for _, t in p.call("fn", Y, F64)]
            gg = _vjp(o2, Y, V)
            return _dot(W, gg)

        fd = (gw([x.detach() + h * u for x, u in zip(X, U)]) - gw([x.detach() - h * u for x, u in zip(X, U)])) / (2 * h)
        ref = _dot(U, hv)
        if abs(fd - ref) > 1e-5 * (abs(fd) + 1.0):
            self.problems.append(f"second order: <U, H(v) W> = {ref:.8g} from double backward vs {fd:.8g} by finite differences")
        else:
            self.notes.append("second order (double backward) agrees with finite differences")


# ----------------------------------------------------------------------------- public entry
def _check_options(caller: str, **opts: Any) -> None:
    """Raise for a bad numeric option of check_backward (``caller`` names the public function in the message)."""
    for name, lo in (("n_cotangents", 1), ("n_directions", 1), ("max_fd_elements", 0), ("top_k", 0)):
        val = opts.get(name, lo)
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ValueError(f"{caller}({name}=...) expects an int >= {lo}, got {val!r}")
    for name in ("atol", "rtol"):
        val = opts.get(name)
        if val is not None and (not isinstance(val, (int, float)) or isinstance(val, bool) or val < 0 or math.isnan(val)):
            raise ValueError(f"{caller}({name}=...) expects a float >= 0 or None, got {val!r}")
    eps = opts.get("eps", 1.0)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"{caller}(eps=...) expects a float > 0, got {eps!r}")
    seed = opts.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"{caller}(seed=...) expects an int, got {type(seed).__name__}")



def check_backward(
    fn: Any,
    *inputs: Any,
    reference: Optional[Callable[..., Any]] = None,
    seed: int = 0,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    eps: float = 1e-6,
    n_cotangents: int = 2,
    n_directions: int = 3,
    max_fd_elements: int = 256,
    top_k: int = 5,
    mode: str = "current",
    check_determinism: bool = True,
    locate: bool = True,
    second_order: bool = False,
    forward_ad: bool = False,
) -> BackwardReport:
    """Check the backward pass of ``fn`` and say where and how it is wrong.

    Every floating-point input with ``requires_grad=True`` (tensors may be nested in
    tuples, lists and dicts) and, when ``fn`` is an ``nn.Module``, every parameter is
    checked. With ``reference`` (the same forward written with plain torch ops), the
    gradients for random grad_outputs are compared element by element with the
    reference's float64 autograd. Without it, float64 finite differences: random
    directional derivatives first, then element-by-element differences on the tensors
    (and, for large ones, the blocks) that failed, so one wrong element is located.

    Args:
        fn: a callable of tensors (e.g. ``MyFunction.apply``) or an ``nn.Module``.
        *inputs: its positional arguments.
        reference: optional callable (or ``nn.Module`` with the same parameter names)
            computing the same forward with plain torch ops.
        seed: seeds every random draw; printed in the report.
        atol, rtol: override the derived tolerance of the user's dtype.
        eps: finite-difference step (float64).
        n_cotangents: random grad_outputs tried (2 also detects a backward that
            ignores grad_output).
        n_directions: random directions (finite-difference mode); each one tests every
            grad_output's gradient at the cost of two function evaluations.
        max_fd_elements: a failing tensor up to this size is differenced element by
            element entirely (full diagnosis); a larger one is bisected into blocks by
            directional checks first and only its failing blocks are differenced.
        top_k: worst elements listed per tensor.
        mode: for modules: ``"current"``, ``"train"``, ``"eval"`` or ``"both"``.
        check_determinism: run backward twice and compare.
        locate: finite-difference mode: locate and diagnose the wrong elements of a
            failing tensor (costs more evaluations); ``False`` gives the verdict only.
        second_order: also check double backward (Hessian-vector products).
        forward_ad: also check forward-mode AD (``jvp``) against the backward.

    Returns:
        A :class:`BackwardReport`; ``report.ok`` is the verdict, ``print(report)`` the details.

    Example:
        >>> import torch, gradlens
        >>> x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        >>> gradlens.check_backward(torch.tanh, x).ok
        True
        >>> w = torch.randn(5, 4, requires_grad=True)
        >>> rep = gradlens.check_backward(lambda x, w: x @ w.t(), x.float(), w, reference=torch.nn.functional.linear)
        >>> rep.ok
        True
    """
    if not callable(fn):
        raise TypeError(f"check_backward(fn=...) expects a callable or nn.Module, got {type(fn).__name__}")
    if reference is not None and not callable(reference):
        raise TypeError(f"check_backward(reference=...) expects a callable or None, got {type(reference).__name__}")
    if mode not in _MODES:
        raise ValueError(f"check_backward(mode=...) expects one of {_MODES}, got {mode!r}")
    _check_options(
        "check_backward", seed=seed, atol=atol, rtol=rtol, eps=eps, n_cotangents=n_cotangents, n_directions=n_directions,
        max_fd_elements=max_fd_elements, top_k=top_k,
    )
    opts = dict(
        seed=seed, atol=atol, rtol=rtol, eps=float(eps), n_cotangents=n_cotangents, n_directions=n_directions,
        max_fd_elements=max_fd_elements, top_k=top_k, check_determinism=check_determinism, locate=bool(locate),
        second_order=second_order, forward_ad=forward_ad,
    )
    module = fn if isinstance(fn, nn.Module) else None
    if module is None and mode != "current":
        raise ValueError(f"check_backward(mode={mode!r}) applies to nn.Module functions only; fn is {type(fn).__name__}")
    fn_name = type(fn).__name__ if module is not None else getattr(fn, "__name__", type(fn).__name__)
    if fn_name == "apply" and isinstance(getattr(fn, "__self__", None), type):
        fn_name = f"{fn.__self__.__name__}.apply"
    saved_rng = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    saved_modes: List[Tuple[nn.Module, bool]] = []
    for m in (module, reference):
        if isinstance(m, nn.Module):
            saved_modes += [(s, s.training) for s in m.modules()]
    tensors: List[TensorCheck] = []
    problems: List[str] = []
    warnings: List[str] = []
    notes: List[str] = []
    try:
        prob = _Problem(fn, reference, inputs, seed)
        if not prob.leaves:
            raise ValueError(
                "check_backward(*inputs) found nothing to check: no input requires grad"
                + (" and the module has no trainable parameters" if module is not None else "")
                + " (call .requires_grad_() on the inputs to differentiate)"
            )
        modes = [None] if module is None or mode == "current" else (["train", "eval"] if mode == "both" else [mode])
        for m in modes:
            if m is not None:
                for mod in (module, reference):
                    if isinstance(mod, nn.Module):
                        mod.train(m == "train")
            label = f"[{m}] " if mode == "both" else ""
            chk = _Checker(prob, opts, label)
            tensors += chk.run()
            problems += [label + s for s in chk.problems]
            warnings += [label + s for s in chk.warnings]
            notes += [label + s for s in chk.notes]
    finally:
        for s, tr in saved_modes:
            s.training = tr
        torch.set_rng_state(saved_rng)
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
    ok = all(t.ok for t in tensors) and not problems
    method = "reference autograd" if reference is not None else "float64 finite differences"
    return BackwardReport(ok=ok, tensors=tensors, problems=problems, warnings=warnings, notes=notes, seed=seed, method=method, fn_name=str(fn_name))
