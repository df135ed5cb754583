"""Wall time and verdict: gradlens.check_backward / check_model vs torch.autograd.gradcheck (exact and fast mode).

Three tables:

1. The same float64 Linear Functions (a correct one and one whose weight gradient has a
   single element 2x too large) at growing sizes, batch 32. check_backward runs without
   a reference (float64 finite differences), like gradcheck.
2. Localisation: an elementwise Function on 4,100 elements whose backward drops the
   tail after its last full chunk (4, 100 or 200 wrong elements), and one wrong element
   in 20,000; check_backward (located and diagnosed) vs gradcheck exact mode.
3. check_model on examples/check_model.py's model (3 custom Functions, 2 wrong), vs
   gradcheck exact / fast on the same real inputs, Function by Function, in float64.

    python benchmarks/verify_speed.py            # sizes 8..128, all three tables
    python benchmarks/verify_speed.py --quick    # smoke run (tests/test_benchmark_verify.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gradlens  # noqa: E402


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w.t() + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        # y = x w^T + b: dx = g w, dw = g^T x, db = sum_batch g
        return g @ w, g.t() @ x, g.sum(0)


class _LinearOneWrong(_Linear):
    """``_Linear`` with one wrong weight-gradient element."""

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gw = g.t() @ x
        gw[-1, -1] *= 2  # the bug: one weight-gradient element 2x too large
        return g @ w, gw, g.sum(0)


_CLOCK = time.perf_counter


def _time(fn: Callable[[], bool], repeat: int) -> Tuple[float, bool]:
    best, verdict = float("inf"), False
    for _ in range(repeat):
        t0 = _CLOCK()
        verdict = fn()
        best = min(best, _CLOCK() - t0)
    return best, verdict


def _inputs(n: int, batch: int) -> Tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    w = torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return tuple(t.requires_grad_(True) for t in (x, w, b))


def run(sizes: List[int], batch: int, exact_max: int, repeat: int) -> List[dict]:
    rows = []
    for n in sizes:
        inputs = _inputs(n, batch)
        numel = sum(t.numel() for t in inputs)
        for label, fn in (("correct", _Linear.apply), ("1 elem wrong", _LinearOneWrong.apply)):
            row = {"size": f"{n}->{n}", "numel": numel, "fn": label}
            row["gradlens"] = _time(lambda: gradlens.check_backward(fn, *inputs).ok, repeat)
            row["verdict"] = _time(lambda: gradlens.check_backward(fn, *inputs, locate=False).ok, repeat)
            row["fast"] = _time(
                lambda: torch.autograd.gradcheck(fn, inputs, fast_mode=True, raise_exception=False), repeat
            )
            if n <= exact_max:
                row["exact"] = _time(
                    lambda: torch.autograd.gradcheck(fn, inputs, fast_mode=False, raise_exception=False), 1
                )
            else:
                row["exact"] = None
            rows.append(row)
    return rows


def _chunked(chunk: int) -> Callable:
    """2 x, with a backward that drops the elements after the last full ``chunk``."""

    class Chunked(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, g):
            out = torch.zeros_like(g)
            for start in range(0, (g.numel() // chunk) * chunk, chunk):  # the bug: the partial last chunk is dropped
                out[start : start + chunk] = 2 * g[start : start + chunk]
            return out

    return Chunked.apply


class _SinOne(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = g * x.cos()
        out.view(-1)[13] *= 2  # the bug: one element scaled
        return out


def run_localisation(exact: bool, repeat: int) -> List[dict]:
    gen = torch.Generator().manual_seed(5)
    rows = []
    cases = [(f"4100, tail of {4100 - (4100 // c) * c} wrong", _chunked(c), 4100) for c in (1024, 1000, 300)]
    cases.append(("20000, 1 wrong", _SinOne.apply, 20000))
    for label, fn, n in cases:
        x = torch.randn(n, generator=gen, dtype=torch.float64).requires_grad_(True)
        row = {"case": label, "gradlens": _time(lambda: gradlens.check_backward(fn, x).ok, repeat)}
        rep = gradlens.check_backward(fn, x)
        row["located"] = rep["input 0"].n_mismatched
        row["exact"] = _time(lambda: torch.autograd.gradcheck(fn, (x,), raise_exception=False), 1) if exact and n <= 4100 else None
        rows.append(row)
    return rows


_COLD = """
import sys, time, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
import verify_speed as v, gradlens
fn, x = v._chunked(1024), torch.randn(4100, dtype=torch.float64, requires_grad=True)
t = time.process_time()
ok = {call}
print(time.process_time() - t, ok)
"""


def run_cold() -> Dict[str, Tuple[float, bool]]:
    """The 4-wrong tail case as the first call of a fresh process (torch's lazy imports included)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    calls = {
        "check_backward": "gradlens.check_backward(fn, x).ok",
        "gradcheck exact": "torch.autograd.gradcheck(fn, (x,), raise_exception=False)",
    }
    out = {}
    for name, call in calls.items():
        res = subprocess.run([sys.executable, "-c", _COLD.format(here=here, call=call)], capture_output=True, text=True, check=True)
        t, ok = res.stdout.split()
        out[name] = (float(t), ok == "True")
    return out


def print_localisation(rows: List[dict]) -> None:
    head = f"{'elementwise Function':>24} | {'check_backward':>17} | {'located':>7} | {'gradcheck exact':>16} | {'gl/exact':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        gl_t, gl_v = r["gradlens"]
        if r["exact"] is None:
            ex, ratio = f"{'(skipped)':>16}", "-"
        else:
            e_t, e_v = r["exact"]
            ex, ratio = f"{e_t * 1e3:9.1f} ms {_verdict(e_v):>4}", f"{gl_t / e_t:.4f}"
        print(f"{r['case']:>24} | {gl_t * 1e3:9.1f} ms {_verdict(gl_v):>4} | {r['located']:>7} | {ex} | {ratio:>8}")


def _example_model():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "check_model.py")
    spec = importlib.util.spec_from_file_location("check_model_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    return mod, mod.Net(), 6 * torch.randn(32, 8)


def run_model(exact: bool, repeat: int) -> dict:
    mod, model, batch = _example_model()
    out = {"check_model": _time(lambda: gradlens.check_model(model, batch).ok, repeat)}
    report = gradlens.check_model(model, batch)
    out["failed"] = [f.name for f in report.failed]
    out["n_functions"] = len(report.functions)
    # What the user would do by hand: gradcheck each Function on the same real inputs (float64).
    with torch.no_grad():
        pre = model.block.fc(batch).double()
        act = pre.clamp(0, 6)
        head_in = model.head(mod.RowClip.apply(act.float(), 8.0)).double()
    by_hand = [
        (mod.ReLU6.apply, pre),
        (lambda t: mod.RowClip.apply(t, 8.0), act),
        (mod.Swish.apply, head_in),
    ]
    out["per_fn"] = []
    for fast in (True, False):
        if not fast and not exact:
            continue
        total, verdicts = 0.0, []
        for fn, x in by_hand:
            t, v = _time(lambda: torch.autograd.gradcheck(fn, (x.clone().requires_grad_(True),), fast_mode=fast, raise_exception=False), 1 if not fast else repeat)
            total += t
            verdicts.append(v)
        out["per_fn"].append(("fast" if fast else "exact", total, verdicts))
    return out


def print_model(res: dict) -> None:
    t, ok = res["check_model"]
    print(f"check_model, 3 custom Functions (32x8 batch): {t * 1e3:.1f} ms, {res['n_functions']} Functions found, wrong: {', '.join(res['failed']) or 'none'}")
    for mode, total, verdicts in res["per_fn"]:
        vs = ", ".join(_verdict(v) for v in verdicts)
        print(f"gradcheck {mode:>5} on the same real inputs, Function by Function (float64): {total * 1e3:.1f} ms  [{vs}]  (check_model / this: {t / total:.3g})")


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def print_table(rows: List[dict]) -> None:
    head = f"{'Linear':>9} {'inputs':>7} {'function':>13} | {'gradlens':>15} | {'locate=False':>15} | {'gradcheck fast':>15} | {'gradcheck exact':>16} | {'gl/fast':>7} {'lF/fast':>7} {'exact/gl':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        gl_t, gl_v = r["gradlens"]
        v_t, v_v = r["verdict"]
        f_t, f_v = r["fast"]
        if r["exact"] is None:
            ex = f"{'(skipped)':>16}"
            speedup = "-"
        else:
            e_t, e_v = r["exact"]
            ex = f"{e_t * 1e3:9.1f} ms {_verdict(e_v):>4}"
            speedup = f"{e_t / gl_t:.0f}x"
        print(
            f"{r['size']:>9} {r['numel']:>7} {r['fn']:>13} | {gl_t * 1e3:8.1f} ms {_verdict(gl_v):>4} | "
            f"{v_t * 1e3:8.1f} ms {_verdict(v_v):>4} | "
            f"{f_t * 1e3:8.1f} ms {_verdict(f_v):>4} | {ex} | {gl_t / f_t:6.1f}x {v_t / f_t:6.1f}x {speedup:>8}"
        )


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small sizes, one repeat (a smoke run)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter; cpu: time.process_time (1 thread: robust on a loaded machine)",
    )
    args = ap.parse_args(argv)
    global _CLOCK
    _CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    warm = _inputs(4, 4)  # first-call costs (imports, dispatcher caches) out of the timings
    gradlens.check_backward(_Linear.apply, *warm)
    torch.autograd.gradcheck(_Linear.apply, warm, fast_mode=True)
    if args.quick:
        rows = run([8, 16], args.batch, exact_max=16, repeat=1)
    else:
        rows = run([8, 16, 32, 64, 128], args.batch, exact_max=128, repeat=7)
    print(f"torch {torch.__version__}, float64, batch {args.batch}, 1 thread, {args.clock} clock; best of repeats")
    print_table(rows)
    print("gl/fast, lF/fast: time of gradlens (full diagnosis) and of gradlens locate=False (verdict only)")
    print("divided by gradcheck fast mode's; exact/gl: gradcheck exact mode's time divided by gradlens'.")
    print()
    print_localisation(run_localisation(exact=not args.quick, repeat=1 if args.quick else 7))
    print("located: mismatched elements named; gl/exact: check_backward's time divided by gradcheck exact mode's.")
    if not args.quick:
        cold = run_cold()
        (c_t, c_v), (e_t, e_v) = cold["check_backward"], cold["gradcheck exact"]
        print(
            f"first call in a fresh process (tail of 4 wrong, cpu time): check_backward {c_t * 1e3:.0f} ms {_verdict(c_v)}, "
            f"gradcheck exact {e_t * 1e3:.0f} ms {_verdict(e_v)} (ratio {c_t / e_t:.3f}); gradcheck's includes torch's one-time "
            "import of torch.fx.experimental.symbolic_shapes (sympy, ~0.5 s) at its first torch.autograd.grad with "
            "grad_outputs, a call check_backward does not make"
        )
    print()
    print_model(run_model(exact=not args.quick, repeat=1 if args.quick else 5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
