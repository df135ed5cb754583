"""Compare a returned gradient with the expected one, element by element, and name the error's shape.

Everything here works on float64 tensors that already sit on the same device:
``got`` (what the backward returned, upcast), ``exp`` (the expected gradient),
``known`` (elements whose expected value is known exactly) and a tolerance.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from gradlens.verify._conditions import explain
from gradlens.verify._report import TensorCheck


def _factor_text(c: float) -> str:
    """``"x 1/6: a mean where a sum was expected?"`` and friends for a constant factor ``c``."""
    # Fitted from data (finite differences carry noise): simple fractions within 1e-4.
    if abs(c + 1.0) < 1e-4:
        return "sign flipped: got = -expected (a wrong sign in the backward formula?)"
    frac = Fraction(c).limit_denominator(64)
    exact = abs(float(frac) - c) <= 1e-4 * max(1.0, abs(c))
    sign = "-" if c < 0 else ""
    if exact and abs(frac.numerator) == 1 and frac.denominator > 1:
        n = frac.denominator
        return f"off by a constant factor: got = {sign}expected x 1/{n} (a mean where a sum was expected? a 1/{n} too many?)"
    if exact and frac.denominator == 1:
        n = abs(frac.numerator)
        return f"off by a constant factor: got = {sign}expected x {n} (a sum where a mean was expected? a missing 1/{n}?)"
    if exact:
        return f"off by a constant factor: got = expected x {frac.numerator}/{frac.denominator}"
    return f"off by a constant factor: got = expected x {c:.6g}"


def _runs(flat_idx: torch.Tensor) -> List[Tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of sorted flat indices."""
    idx = flat_idx.tolist()
    runs: List[Tuple[int, int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _unravel(i: int, shape: Sequence[int]) -> Tuple[int, ...]:
    out = []
    for s in reversed(shape):
        out.append(i % s if s else 0)
        i = i // s if s else 0
    return tuple(reversed(out))


def _fits(
    a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, mask: torch.Tensor, extra: Optional[torch.Tensor] = None
) -> bool:
    """``a`` equals ``b`` within tolerance on every element of ``mask`` (mask non-empty)."""
    if not bool(mask.any()):
        return False
    tol = atol + rtol * b.abs()
    if extra is not None:
        tol = tol + extra
    bad = ((a - b).abs() > tol) & mask
    return not bool(bad.any())


def compare(
    check: TensorCheck,
    got: Optional[torch.Tensor],
    exp: torch.Tensor,
    *,
    known: torch.Tensor,
    kink: torch.Tensor,
    atol: float,
    rtol: float,
    extra_tol: Optional[torch.Tensor] = None,
    top_k: int = 5,
    values: Optional[torch.Tensor] = None,
    alternatives: Sequence[Tuple[str, torch.Tensor]] = (),
    cotangent_like: Optional[torch.Tensor] = None,
    others: Sequence[Tuple[str, torch.Tensor]] = (),
) -> None:
    """Fill ``check`` (stats, ok, diagnosis) from ``got`` vs ``exp``.

    ``alternatives`` are ``(diagnosis, tensor)`` hypotheses: when ``got`` matches one of
    them everywhere, that sentence is the diagnosis (e.g. a transposed or reversed
    gradient). ``cotangent_like`` is grad_output when it has the tensor's shape (for the
    "forgotten term" test); ``values`` are the tensor's own values (for "wrong only where
    the input is in [a, b]").
    """
    check.atol, check.rtol = float(atol), float(rtol)
    n = exp.numel()
    use = known & ~kink & torch.isfinite(exp)  # a non-finite truth (a singularity) cannot be compared
    check.n_checked = int(use.sum())
    exp_scale = float(exp[use].abs().max()) if check.n_checked else 0.0
    if got is None:
        if exp_scale > atol:
            check.ok = False
            check.diagnosis.append(
                f"gradient missing: backward returned None but the expected gradient is nonzero "
                f"(max |expected| {exp_scale:.3g})"
            )
            g = torch.zeros_like(exp)
        else:
            check.diagnosis.append("no gradient returned, none expected")
            check.max_abs_error = 0.0
            check.max_rel_error = 0.0
            return
    else:
        g = got
    tol = atol + rtol * exp.abs()
    if extra_tol is not None:
        tol = tol + extra_tol
    diff = (g - exp).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)  # NaN/inf returned: wrong
    diff_u = torch.where(use, diff, torch.zeros_like(diff))
    mis = (diff > tol) & use
    n_mis = int(mis.sum())
    check.n_mismatched = n_mis
    if check.n_checked:
        check.max_abs_error = float(diff_u.max())
        rel = diff_u / exp.abs().clamp_min(max(atol, 1e-300))
        check.max_rel_error = float(rel.max())
    k = min(top_k, n_mis)
    if k:  # the worst mismatched elements only: a correct element is no evidence
        vals, idx = torch.where(mis, diff_u, torch.zeros_like(diff_u)).flatten().topk(k)
        gf, ef = g.flatten(), exp.flatten()
        check.worst = [(_unravel(int(i), exp.shape), float(gf[i]), float(ef[i])) for i in idx.tolist()]
    if n_mis == 0:
        return
    check.ok = False
    if got is None:
        return
    if exp_scale <= atol:
        check.diagnosis.append(
            "gradient present where none should be: the outputs do not depend on this tensor, "
            f"but backward returned values up to {float(g.abs().max()):.3g}"
        )
        return
    full = bool(use.all()) or n_mis == check.n_checked
    # Whole-tensor patterns first: they explain every element at once.
    if full:
        dot = float((g * exp)[use].sum())
        nrm = float((exp * exp)[use].sum())
        c = dot / nrm if nrm > 0 else 0.0
        if abs(c - 1.0) > 1e-3 and c != 0.0 and _fits(g, c * exp, atol, rtol, use, extra_tol):
            check.diagnosis.append(_factor_text(c))
            return
        for label, alt in alternatives:
            if alt.shape == exp.shape and _fits(g, alt, atol, rtol, use, extra_tol):
                check.diagnosis.append(label)
                return
        if cotangent_like is not None and cotangent_like.shape == exp.shape:
            r = exp - g
            cv = float((r * cotangent_like)[use].sum()) / max(float((cotangent_like**2)[use].sum()), 1e-300)
            if abs(cv) > 1e-6 and _fits(g + cv * cotangent_like, exp, atol, rtol, use, extra_tol):
                check.diagnosis.append(
                    f"a forgotten term: expected - got = {cv:.4g} x grad_output "
                    "(a missing identity/residual path in the backward?)"
                )
                return
    # Localized errors: one element, a band, a slice, a value range.
    bad_flat = mis.flatten().nonzero().flatten()
    gz = bool((g[mis] == 0).all())
    zero_note = " (got 0 there: a dropped tail chunk / skipped block?)" if gz else ""
    if n_mis == 1:
        i = int(bad_flat[0])
        e, gv = float(exp.flatten()[i]), float(g.flatten()[i])
        ratio = f", got x {gv / e:.4g} the expected value" if e != 0 and gv != 0 else ""
        check.diagnosis.append(f"wrong only at element {list(_unravel(i, exp.shape))} of {n}{ratio}{zero_note}")
        return
    cond = explain(mis, use, values, others)
    if cond is not None:
        check.diagnosis.append(cond + (" (got 0 there)" if gz else ""))
        return
    runs = _runs(bad_flat)
    if n_mis < check.n_checked and len(runs) <= 3 and all(a == b for a, b in runs):
        txt = ", ".join(str(list(_unravel(a, exp.shape))) for a, _ in runs)
        check.diagnosis.append(f"wrong only at elements {txt} of {n}{zero_note}")
        return
    if n_mis < check.n_checked and len(runs) <= 3:
        txt = ", ".join(f"{a}..{b}" for a, b in runs)
        check.diagnosis.append(f"wrong only on a band: flat elements {txt} of {n}{zero_note}")
        return
    if n_mis < check.n_checked:
        for d in range(exp.dim()):
            other = [j for j in range(exp.dim()) if j != d]
            hit = mis.any(dim=other) if other else mis
            coords = hit.nonzero().flatten()
            lo, hi = int(coords.min()), int(coords.max())
            if hi - lo + 1 != coords.numel() or coords.numel() == exp.shape[d]:
                continue
            shape = [1] * exp.dim()
            shape[d] = exp.shape[d]
            region = hit.view(shape).expand_as(mis) & use
            if bool((region == mis).all()):
                check.diagnosis.append(f"wrong only for index {lo}..{hi} along dim {d} (of {exp.shape[d]}){zero_note}")
                return
        if values is not None and values.shape == exp.shape:
            vb = values[mis]
            lo, hi = float(vb.min()), float(vb.max())
            good = use & ~mis
            inside = good & (values >= lo) & (values <= hi)
            if not bool(inside.any()):
                check.diagnosis.append(
                    f"wrong only where the input is in [{lo:.4g}, {hi:.4g}] ({n_mis} elements), right elsewhere: "
                    "a piecewise edge in the wrong place?"
                )
                return
    frac = n_mis / max(check.n_checked, 1)
    check.diagnosis.append(
        f"wrong on {100 * frac:.3g}% of the elements with no simple pattern (not a sign, factor, transpose or "
        "band): a forgotten or wrong term?"
    )


def alternatives_for(exp: torch.Tensor, flipped: Dict[int, torch.Tensor]) -> List[Tuple[str, torch.Tensor]]:
    """Hypotheses to test for a failing tensor: transposed, reversed along a dim."""
    alts: List[Tuple[str, torch.Tensor]] = []
    if exp.dim() >= 2 and exp.shape[-1] == exp.shape[-2]:
        alts.append(("transposed: got = expected.T (a missing transpose?)", exp.mT))
    for d, e_flip in flipped.items():
        alts.append(
            (
                f"reversed along dim {d}: got = flip(expected for the flipped grad_output) "
                "(a cumulative sum/scan accumulated in the wrong direction?)",
                e_flip.flip(d),
            )
        )
    return alts
