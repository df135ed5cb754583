"""Many small parameters: the batched CPU statistics of ``grad_stats`` equal torch's
per-tensor numbers (L2 norms, max|g|), NaN/Inf stay with their parameter, every
dtype works; ``gradlens.watch`` on such a model; the benchmark script's smoke run.

The references are torch's own per-tensor reductions, taken in float64 (exact to
float32 rounding): ``grad_stats`` must match them within float32 rounding
(rtol 1e-5) and max|g| exactly.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import torch
from torch import nn

import gradlens
from gradlens.monitor import stats as _stats

ROOT = Path(__file__).resolve().parents[2]

# shapes: several repeated often enough to be stacked (>= _STACK_MIN of one shape),
# odd ones that go to the row buffer, scalars, and sizes at the small/large edge
SMALL_SHAPES = [(16, 16), (16,), (7, 3), (100,), (33,), (2, 2, 2), (), (5, 1, 3), (65,), (64,), (8192,), (90, 91)]


def _ref(gs: Sequence[torch.Tensor], ws: Sequence[torch.Tensor]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's per-tensor grad L2, max|g| and weight L2, one tensor at a time, in float64."""
    gn = [torch.linalg.vector_norm(g.double()).item() for g in gs]
    gm = [g.abs().max().double().item() if g.numel() else 0.0 for g in gs]
    wn = [torch.linalg.vector_norm(w.double()).item() for w in ws]
    return np.array(gn), np.array(gm), np.array(wn)


def _ours(gs: List[torch.Tensor], ws: List[torch.Tensor]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    _stats.grad_stats(gs, ws)  # a layout is batched from its second call on
    vec = _stats.grad_stats(gs, ws)
    assert vec.dtype == torch.float32 and vec.dim() == 1 and vec.device == gs[0].device
    # the monitor's way: one host copy as float64, then split_grad_stats
    return _stats.split_grad_stats(np.asarray(vec.cpu().tolist(), dtype=np.float64), len(gs))


def _check(gs: List[torch.Tensor], ws: List[torch.Tensor], rtol: float = 1e-5) -> None:
    ours, refs = _ours(gs, ws), _ref(gs, ws)
    for name, got, ref in zip(("grad_norm", "grad_max", "weight_norm"), ours, refs):
        assert got.shape == ref.shape, name
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=name)
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref), err_msg=name)
        fin = np.isfinite(ref)
        if name == "grad_max":  # exact: max|g| of the float32-representable values
            np.testing.assert_array_equal(got[fin], ref[fin].astype(np.float32).astype(np.float64), err_msg=name)
        else:
            np.testing.assert_allclose(got[fin], ref[fin], rtol=rtol, atol=0, err_msg=name)


def _plan(gs: List[torch.Tensor], ws: List[torch.Tensor]):
    first = _stats._flat_plan(gs, ws)  # None unless the layout was seen just before
    return first if first is not None else _stats._flat_plan(gs, ws)


def _random_shapes(n: int, seed: int) -> List[Tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(SMALL_SHAPES), (n,), generator=gen).tolist()
    return [SMALL_SHAPES[i] for i in idx]


def _tensors(shapes, seed: int, dtype=torch.float32, scale: float = 1.0) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(s, generator=gen, dtype=torch.float64)).to(dtype) for s in shapes]


def test_many_small_tensors_of_mixed_sizes_equal_torch():
    shapes = _random_shapes(400, 0)
    for k in range(40):  # distinct shapes, spread over the list
        shapes.insert(10 * k, (k + 1, 5))
    gs, ws = _tensors(shapes, 1), _tensors(shapes, 2)
    plan = _plan(gs, ws)
    # the batched path runs, with both its stacked blocks and its row buffer
    assert (plan.use, bool(plan.blocks), plan.rag_pick is not None, plan.large) == (True, True, True, [])
    _check(gs, ws)
    # gradient magnitudes spread over decades (norms must not be dominated by padding or neighbours)
    gs2 = [g * 10.0 ** (k % 9 - 4) for k, g in enumerate(gs)]
    _check(gs2, ws)


def test_only_row_buffer_and_only_stacked_layouts():
    distinct = [(k + 1,) for k in range(30)] + [(k + 1, 3) for k in range(30)]
    gs, ws = _tensors(distinct, 3), _tensors(distinct, 4)
    plan = _plan(gs, ws)
    assert (plan.use, bool(plan.blocks), plan.rag_pick is not None) == (True, False, True)
    _check(gs, ws)
    same = [(16, 16), (16,)] * 40
    gs, ws = _tensors(same, 5), _tensors(same, 6)
    plan = _plan(gs, ws)
    assert (plan.use, len(plan.blocks), plan.rag_pick is None) == (True, 4, True)
    _check(gs, ws)


def test_mix_of_small_and_large_tensors():
    shapes = _random_shapes(60, 7)
    large = [(8193,), (300, 300), (20000,), (128, 65)]
    shapes = shapes[:20] + large[:2] + shapes[20:40] + large[2:] + shapes[40:]
    gs, ws = _tensors(shapes, 8), _tensors(shapes, 9)
    plan = _plan(gs, ws)
    assert (plan.use, len(plan.large), plan.perm is not None) == (True, len(large), True)
    _check(gs, ws)


def test_few_small_tensors_keep_the_per_tensor_path():
    # the MLP 784-512x3-10: 5 small, 3 large parameters -> per-tensor path (4n layout)
    shapes = [(512, 784), (512,), (512, 512), (512,), (512, 512), (512,), (10, 512), (10,)]
    gs, ws = _tensors(shapes, 10), _tensors(shapes, 11)
    assert not _plan(gs, ws).use
    assert _stats.grad_stats(gs, ws).numel() == 4 * len(gs)
    _check(gs, ws)


@pytest.mark.parametrize("where", ["row buffer", "stacked"])
def test_nan_and_inf_stay_with_their_parameter(where):
    if where == "stacked":
        shapes = [(16, 16), (16,)] * 30
    else:
        shapes = [(k + 2, 3) for k in range(40)]
    gs, ws = _tensors(shapes, 12), _tensors(shapes, 13)
    assert (bool(_plan(gs, ws).blocks), _plan(gs, ws).rag_pick is not None) == (
        (True, False) if where == "stacked" else (False, True))
    gs[4].view(-1)[3] = math.nan
    gs[4].view(-1)[5] = math.inf  # NaN and Inf in one tensor: NaN wins
    gs[10].view(-1)[0] = -math.inf  # Inf alone: norm and max are +inf
    gs[11].view(-1)[-1] = math.nan  # NaN in the last element (next to the padding)
    gn, gm, wn = _ours(gs, ws)
    assert math.isnan(gn[4]) and math.isnan(gm[4])
    assert gn[10] == math.inf and gm[10] == math.inf
    assert math.isnan(gn[11]) and math.isnan(gm[11])
    others = [i for i in range(len(gs)) if i not in (4, 10, 11)]
    assert np.isfinite(gn[others]).all() and np.isfinite(gm[others]).all() and np.isfinite(wn).all()
    _check(gs, ws)


def test_empty_tensors_give_zero():
    shapes = [(0,), (3, 0), (16, 16), (16,)] * 10
    gs, ws = _tensors(shapes, 14), _tensors(shapes, 15)
    assert _plan(gs, ws).use
    gn, gm, wn = _ours(gs, ws)
    empty = [i for i, s in enumerate(shapes) if 0 in s]
    assert (gn[empty] == 0).all() and (gm[empty] == 0).all() and (wn[empty] == 0).all()
    _check(gs, ws)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(dtype):
    shapes = _random_shapes(200, 16) + [(300, 300)]
    gs, ws = _tensors(shapes, 17, dtype), _tensors(shapes, 18, dtype)
    assert _plan(gs, ws).use
    gs[3].view(-1)[0] = math.nan
    _check(gs, ws)
    if dtype == torch.float64:
        # norms taken in float64 then rounded: exact where float32 squares would overflow
        big = [torch.full((5,), 1e30, dtype=dtype) for _ in range(10)]
        gn, gm, wn = _ours(big, big)
        np.testing.assert_allclose(gn, math.sqrt(5) * 1e30, rtol=1e-6)


def test_non_contiguous_gradients():
    shapes = _random_shapes(200, 19) + [(300, 300)]
    ws = _tensors(shapes, 20)
    gen = torch.Generator().manual_seed(21)
    gs = []
    for k, s in enumerate(shapes):
        if len(s) == 2 and k % 2:
            gs.append(torch.randn(s[::-1], generator=gen).t())  # transposed
        elif len(s) >= 1 and s[0] > 0:
            gs.append(torch.randn((2 * s[0],) + tuple(s[1:]), generator=gen)[::2])  # strided
        else:
            gs.append(torch.randn(s, generator=gen))
    assert sum(not g.is_contiguous() for g in gs) > 50
    _check(gs, ws)


def test_layout_cache_follows_the_shapes():
    # same group sizes, other shapes (and gradient shapes that differ from the
    # weights', as the monitor's sparse-gradient values do): fresh plans, right values
    for seed in range(3):
        shapes = _random_shapes(120, 30 + seed)
        gs, ws = _tensors(shapes, 40 + seed), _tensors(shapes, 50 + seed)
        _check(gs, ws)
        _check(gs, ws)  # cached plan, new values below
        _check([g * 3 for g in gs], ws)
    wshapes = [(k + 3, 4) for k in range(30)]
    gshapes = [(k % 5 + 1, 4) for k in range(30)]
    _check(_tensors(gshapes, 60), _tensors(wshapes, 61))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 7)
        self.d = nn.Linear(7, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.d(torch.tanh(self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))))


def test_watch_many_small_params_equals_torch():
    torch.manual_seed(0)
    model = nn.Sequential(*[_Block() for _ in range(37)], nn.Linear(12, 5))  # 37*8 + 2 = 298 params
    params = dict(model.named_parameters())
    assert len(params) == 298
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    refs = []
    with gradlens.watch(model, opt, every=1) as mon:
        for _ in range(3):
            opt.zero_grad()
            x = torch.randn(8, 12, generator=gen)
            y = torch.randint(0, 5, (8,), generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
            refs.append({n: (torch.linalg.vector_norm(p.grad.double()).item(), p.grad.abs().max().item(),
                             torch.linalg.vector_norm(p.detach().double()).item()) for n, p in params.items()})
            opt.step()
    df = mon.dataframe()
    assert sorted(df["step"].unique().tolist()) == [0, 1, 2]
    for step, ref in enumerate(refs):
        got = df[df.step == step].set_index("param")
        assert sorted(got.index) == sorted(ref)
        names = list(ref)
        want = np.array([ref[n] for n in names])
        np.testing.assert_allclose(got.loc[names, "grad_norm"].to_numpy(), want[:, 0], rtol=1e-5)
        np.testing.assert_allclose(got.loc[names, "grad_max"].to_numpy(), want[:, 1], rtol=1e-5)
        np.testing.assert_allclose(got.loc[names, "weight_norm"].to_numpy(), want[:, 2], rtol=1e-5)
        assert (got["nonfinite"] == 0).all()


def test_many_params_benchmark_quick_run_prints_its_rows():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "many_params.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "## 250 x 4 Linear(16,16) (2000 params) b8" in out, out
    rows = [ln for ln in out.splitlines() if ln and not ln.startswith(("#", "variant"))]
    for variant in ("watch(every=1)", "watch(every=1), per-tensor", "grad_stats + host copy",
                    "per-tensor stats + host copy"):
        row = [ln for ln in rows if ln.startswith(variant + " ")]
        assert len(row) == 1, out
        # plain, variant, ratio, added, median step added: numbers, never asserted on
        assert len(row[0][len(variant):].split()) == 5, row


def test_a_layout_that_changes_every_call_builds_no_plan():
    # parameters without a gradient that vary per step (mixture of experts): each
    # call has another layout; building a plan each time would cost more than it saves
    _stats.release_cache()
    shapes = _random_shapes(200, 70)
    gs, ws = _tensors(shapes, 71), _tensors(shapes, 72)
    for k in range(6):
        keep = [i for i in range(200) if (i + k) % 7]  # another subset each call
        sub_g, sub_w = [gs[i] for i in keep], [ws[i] for i in keep]
        np.testing.assert_allclose(
            _stats.split_grad_stats(_stats.grad_stats(sub_g, sub_w).double().numpy(), len(keep))[0],
            _ref(sub_g, sub_w)[0], rtol=1e-5,
        )
        assert _stats._local.plans == []
    _stats.grad_stats(gs, ws)
    _stats.grad_stats(gs, ws)  # the second call in a row with one layout: planned
    assert len(_stats._local.plans) == 1 and _stats._local.plans[0].use


def test_plan_made_in_inference_mode_works_outside_it():
    _stats.release_cache()
    shapes = _random_shapes(50, 80)
    gs, ws = _tensors(shapes, 81), _tensors(shapes, 82)
    with torch.inference_mode():
        _check(gs, ws)  # the plan and its buffers are made here
    _check(gs, ws)  # ... and written outside it


def test_close_releases_the_cached_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(*[_Block() for _ in range(30)])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradlens.watch(model, opt):
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 12)).pow(2).mean().backward()
            opt.step()
        assert _stats._local.plans  # planned from the second logged step
    assert _stats._local.plans == []
