"""Name the condition on the input that holds exactly where a gradient is wrong.

``wrong exactly where |x| > 1 (31 of 64 elements): a missing clip?``. Candidates, each
tested against the mismatch mask on the compared elements:

* a fixed one: ``x == 0``; for each other (non-differentiated) input of the same shape,
  ``m is True/False`` (bool) or ``m == 0 / m != 0``;
* a fitted threshold: ``x > t``, ``x < t``, ``|x| > t``, ``|x| < t``;
* a fitted threshold on rows: ``|row| > t`` or ``max |row| > t`` over the last dim (the
  mismatched rows are exactly those), for tensors of 2 or more dims.

A condition fitted to the data could match a random set of wrong elements by chance
when there are few elements; it is only reported when ``C(n, k)`` (ways to pick the ``k``
wrong ones of ``n``) is at least ``_MIN_SUBSETS``, i.e. a chance match of one candidate
has probability at most 1/1000.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

#: Smallest number of equally likely wrong-element subsets for a fitted condition to count.
_MIN_SUBSETS = 1000


def _fmt(t: float) -> str:
    return f"{t + 0.0:.4g}"  # + 0.0: no "-0"


def _threshold(a: float, b: float) -> Optional[Tuple[float, bool]]:
    """``(t, unique)`` with ``a <= t < b``: the round ``t`` when exactly one fits, else ``(a, False)``."""
    if not a < b:
        return None
    for e in range(6, -9, -1):
        step = 10.0**e
        lo, hi = math.ceil(a / step), math.ceil(b / step) - 1  # multiples of step in [a, b)
        if hi == lo:
            return lo * step, True
        if hi > lo:  # several round numbers fit: the data do not pin the threshold down
            break
    return a, False


def _significant(n: int, k: int) -> bool:
    return 0 < k < n and math.comb(n, k) >= _MIN_SUBSETS


def explain(
    mis: torch.Tensor,
    use: torch.Tensor,
    values: Optional[torch.Tensor],
    others: Sequence[Tuple[str, torch.Tensor]] = (),
) -> Optional[str]:
    """The sentence for the first candidate condition that holds exactly on the mismatched elements."""
    n, k = int(use.sum()), int(mis.sum())
    if not 0 < k < n:
        return None
    m = mis[use]
    # Fixed conditions: exact zeros of x, other inputs used as masks.
    fixed: List[Tuple[str, torch.Tensor, str]] = []
    if values is not None and values.shape == mis.shape and not values.is_complex():
        fixed.append(("x == 0", values == 0, "the value at 0 (a division by x, or the subgradient chosen at 0)?"))
    for name, t in others:
        if t.shape != mis.shape:
            continue
        t = t.to(mis.device)
        if t.dtype == torch.bool:
            fixed.append((f"{name} is True", t, "the mask not applied in the backward?"))
            fixed.append((f"{name} is False", ~t, "the mask not applied in the backward?"))
        elif not t.is_complex():
            fixed.append((f"{name} == 0", t == 0, "masked (zero) positions treated as kept in the backward?"))
            fixed.append((f"{name} != 0", t != 0, "the mask applied the wrong way round?"))
    if _significant(n, k):
        for cond, mask, hint in fixed:
            if torch.equal(mask[use], m):
                return f"wrong exactly where {cond} ({k} of {n} elements): {hint}"
    if values is None or values.shape != mis.shape or values.is_complex() or not _significant(n, k):
        return _rows(mis, use, values)
    v = values[use]
    a = v.abs()
    # x > t splits x's upper tail off; x < t the lower one (as -x > -t); the same for |x|.
    for form, stat, sign in (("x > {}", v, 1.0), ("x < {}", v, -1.0), ("|x| > {}", a, 1.0), ("|x| < {}", a, -1.0)):
        s = sign * stat
        lo, hi = float(s[~m].max()), float(s[m].min())
        fit = _threshold(lo, hi)
        if fit is None:
            continue
        t, unique = fit
        note = ""
        if not unique:
            note = f", any threshold in [{_fmt(lo)}, {_fmt(hi)}) fits" if sign > 0 else f", any threshold in ({_fmt(-hi)}, {_fmt(-lo)}] fits"
        t = _fmt(sign * t)
        if t == "0" and form[0] == "x":
            hint = "a sign branch (a ReLU-like mask) wrong in the backward?"
        elif sign > 0:
            hint = "a missing clip?"
        else:
            hint = "a piecewise edge in the wrong place?"
        return f"wrong exactly where {form.format(t)} ({k} of {n} elements{note}): {hint}"
    return _rows(mis, use, values)


def _rows(mis: torch.Tensor, use: torch.Tensor, values: Optional[torch.Tensor]) -> Optional[str]:
    """Mismatched rows (over the last dim) are exactly the rows with a large norm / max |x|."""
    if values is None or values.dim() < 2 or values.shape != mis.shape or values.is_complex():
        return None
    rows_bad = (mis & use).flatten(0, -2).any(-1)
    rows_used = use.flatten(0, -2).any(-1)
    vr = values.flatten(0, -2)
    nr, kr = int(rows_used.sum()), int((rows_bad & rows_used).sum())
    if not _significant(nr, kr):
        return None
    rb = rows_bad[rows_used]
    for label, stat in (("the row norm |x[i, :]|", vr.norm(dim=-1)), ("max |x[i, :]|", vr.abs().amax(-1))):
        s = stat[rows_used]
        lo, hi = float(s[~rb].max()), float(s[rb].min())
        fit = _threshold(lo, hi)
        if fit is None:
            continue
        t, unique = fit
        note = "" if unique else f", any threshold in [{_fmt(lo)}, {_fmt(hi)}) fits"
        return (
            f"wrong exactly on the rows where {label} > {_fmt(t)} ({kr} of {nr} rows over the last dim{note}): "
            "a branch for large rows (clipping, rescaling) wrong in the backward?"
        )
    return None
