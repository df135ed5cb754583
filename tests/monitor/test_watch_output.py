"""Model-output signals (``StepRecord.signals``), on by default.

References are computed by hand from a twin model trained without gradlens on the
same batches: its output tensor and ``torch.autograd.grad`` of its loss with
respect to that output (float64, ``torch.isfinite`` for the non-finite counts).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import gradlens
from gradlens._record import SIGNAL_STATS
from gradlens.monitor.sources import output as _output

SAT_BAND = 1e-2  # the documented band: 1% of the output range (softmax: / K)


# ----------------------------------------------------------------------------- references
def _expected(out, grad=None, limits=None, kind=None):
    """The signals of ``out`` (and of dL/d(out) ``grad``), by hand, in float64.

    ``kind``: ``"relu"`` for a ReLU output (lower limit 0, no band), ``"softmax"`` for a
    softmax one (its ``limits`` too); bounded outputs are told by ``limits``."""
    o = out.detach().double().reshape(-1)
    e = {
        "output_mean": o.mean().item(),
        "output_std": o.std().item(),
        "output_min": o.min().item(),
        "output_max": o.max().item(),
        "output_nonfinite": float((~torch.isfinite(o)).sum()),
        "output_sat_frac": math.nan,
    }
    if limits is not None:
        lo, hi, band = limits
        e["output_sat_frac"] = ((o - lo < band) | (hi - o < band)).double().mean().item()
    if grad is not None:
        g = grad.detach().double().reshape(-1)
        e["output_grad_norm"] = g.norm().item()
        e["output_grad_nonfinite"] = float((~torch.isfinite(g)).sum())
        # pushed past a limit: at the limit with a gradient whose descent step points outside
        e["output_push_frac"] = math.nan
        # (an element whose product with the gradient is subnormal in float32 may count either
        # way: whether subnormals flush to zero depends on the kernel; such a value is a range)
        tiny = torch.finfo(torch.float32).tiny
        if limits is not None:
            lo, hi, band = limits
            at, push = (o - lo < band) | (hi - o < band), g * (o - (lo + hi) / 2)
            strict, loose = (at & (push < -tiny)).double().mean().item(), (at & (push < 0)).double().mean().item()
            e["output_push_frac"] = strict if strict == loose else (strict, loose)
        elif kind == "relu":
            e["output_push_frac"] = ((o <= 0) & (g > 0)).double().mean().item()
        e["output_sum_push"] = (g.mean() / g.square().mean().sqrt()).item() if kind == "softmax" else math.nan
    return e


def _close(a, b, rel):
    if isinstance(b, tuple):  # a range (see _expected)
        return b[0] - 1e-7 <= a <= b[1] + 1e-7
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):
        return a == b
    return a == pytest.approx(b, rel=rel, abs=1e-7)


def _assert_signals(got, want, rel=1e-5, exact_extremes=True):
    assert set(got) == set(want), (sorted(got), sorted(want))
    exact = ("output_min", "output_max") if exact_extremes else ()
    bad = {k: (got[k], want[k]) for k in want if not _close(got[k], want[k], 0 if k in exact else rel)}
    assert not bad, bad


def _twin_run(make, batches, loss_fn, *, lr=0.05, opt_cls=torch.optim.SGD, **watch_kw):
    """Train ``make()`` under watch and an identical twin without it on ``batches``;
    returns the monitor, per step the twin's (output, dL/d(output)), and both models.
    Signals on every logged step (``output_stats=1``) unless told otherwise."""
    watch_kw.setdefault("output_stats", 1)
    torch.manual_seed(0)
    model = make()
    twin = copy.deepcopy(model)
    opt, topt = opt_cls(model.parameters(), lr=lr), opt_cls(twin.parameters(), lr=lr)
    refs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # findings of deliberately broken models
        with gradlens.watch(model, opt, **watch_kw) as mon:
            for x, y in batches:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
                topt.zero_grad()
                out = twin(x)
                loss = loss_fn(out, y)
                (g,) = torch.autograd.grad(loss, out, retain_graph=True)
                loss.backward()
                topt.step()
                refs.append((out.detach(), g))
    return mon, refs, model, twin


def _batches(n, rows, cols, *, scale=1.0, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, cols, generator=gen) * scale, None) for _ in range(n)]


def _mse_to(value):
    return lambda out, y: (out - value).pow(2).mean()


# ----------------------------------------------------------------------------- settings
def _linear_out():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _sigmoid_saturated():
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
    with torch.no_grad():
        m[2].weight.mul_(0.1)
        m[2].bias.fill_(6.0)  # sigmoid(6) = 0.9975: within 1% of the limit, not at it
    return m


def _tanh_out():
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
    with torch.no_grad():
        m[0].weight.mul_(4.0)
    return m


def _softmax(scale):
    def make():
        m = nn.Sequential(nn.Linear(6, 200), nn.Softmax(dim=-1))
        with torch.no_grad():
            m[0].weight.mul_(scale)
        return m
    return make


def _relu6_out():
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU6())
    with torch.no_grad():
        m[0].weight.mul_(6.0)
    return m


def _relu_out():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())


def _multi_hot(out, y):
    # multi-label targets (rows summing to 2) under MSE: a softmax cannot reach them
    t = torch.zeros_like(out)
    t[:, :2] = 1.0
    return (out - t).pow(2).mean()


def _one_hot(out, y):
    t = torch.zeros_like(out)
    t[:, 0] = 1.0
    return (out - t).pow(2).mean()


# (id, model, loss, limits (lo, hi, band) or None, kind)
SETTINGS = [
    ("linear-unbounded", _linear_out, _mse_to(1.0), None, None),
    ("sigmoid-saturated-regression", _sigmoid_saturated, _mse_to(50.0), (0.0, 1.0, SAT_BAND), None),
    ("sigmoid-saturated-reachable", _sigmoid_saturated, _mse_to(0.5), (0.0, 1.0, SAT_BAND), None),
    ("tanh", _tanh_out, _mse_to(0.0), (-1.0, 1.0, 2 * SAT_BAND), None),
    ("tanh-past-its-limits", _tanh_out, _mse_to(3.0), (-1.0, 1.0, 2 * SAT_BAND), None),
    ("softmax-200-near-uniform", _softmax(0.01), _mse_to(0.0), (0.0, 1.0, SAT_BAND / 200), "softmax"),
    ("softmax-200-confident", _softmax(200.0), _mse_to(0.0), (0.0, 1.0, SAT_BAND / 200), "softmax"),
    ("softmax-200-multi-hot", _softmax(1.0), _multi_hot, (0.0, 1.0, SAT_BAND / 200), "softmax"),
    ("softmax-200-one-hot", _softmax(1.0), _one_hot, (0.0, 1.0, SAT_BAND / 200), "softmax"),
    ("relu6", _relu6_out, _mse_to(3.0), (0.0, 6.0, 6 * SAT_BAND), None),
    ("relu-negative-targets", _relu_out, _mse_to(-1.0), None, "relu"),
    ("relu-positive-targets", _relu_out, _mse_to(1.0), None, "relu"),
]


@pytest.mark.parametrize("make,loss_fn,limits,kind", [s[1:] for s in SETTINGS], ids=[s[0] for s in SETTINGS])
def test_signals_equal_a_reference_by_hand(make, loss_fn, limits, kind):
    batches = _batches(4, 16, 6)
    mon, refs, _, _ = _twin_run(make, batches, loss_fn)
    records = mon.records()
    assert [r.step for r in records] == [0, 1, 2, 3]
    for record, (out, g) in zip(records, refs):
        _assert_signals(record.signals, _expected(out, g, limits, kind))
        assert set(record.signals) == set(SIGNAL_STATS)


@pytest.mark.parametrize("make,limits", [
    (lambda: nn.Sequential(nn.Linear(6, 512)), None),
    (lambda: nn.Sequential(nn.Linear(6, 512), nn.Tanh()), (-1.0, 1.0, 2 * SAT_BAND)),
], ids=["unbounded", "tanh"])
def test_large_outputs_take_the_two_pass_path(make, limits):
    # 160 x 512 = 81920 elements: past the small-output (var_mean) path, scratch buffer reused
    assert 160 * 512 >= _output._SCRATCH_MIN_NUMEL
    mon, refs, _, _ = _twin_run(make, _batches(3, 160, 6, scale=3.0), _mse_to(0.5))
    for record, (out, g) in zip(mon.records(), refs):
        _assert_signals(record.signals, _expected(out, g, limits))


def test_sigmoid_saturated_against_regression_targets_reads_near_one():
    mon, refs, _, _ = _twin_run(_sigmoid_saturated, _batches(3, 32, 6), _mse_to(50.0), lr=1e-4)
    sat = [r.signals["output_sat_frac"] for r in mon.records()]
    assert all(s > 0.95 for s in sat), sat
    assert all(0.98 < out.min() < 1.0 for out, _ in refs)  # saturated, never exactly at the limit


def test_softmax_band_scales_with_the_classes():
    # a near-uniform 200-way softmax (p ~ 1/200 < 1%) is not saturated; a one-hot one is
    near, _, _, _ = _twin_run(_softmax(0.01), _batches(2, 16, 6), _mse_to(0.0))
    sure, _, _, _ = _twin_run(_softmax(200.0), _batches(2, 16, 6), _mse_to(0.0))
    assert [r.signals["output_sat_frac"] for r in near.records()] == [0.0, 0.0]
    assert all(r.signals["output_sat_frac"] > 0.9 for r in sure.records())


# ----------------------------------------------------------------------------- non-finite
def _relu_rows():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[0].bias.zero_()
    return m


def _signed_rows(n=8, seed=2):
    # rows of +1 (positive ReLU output) and -1 (all-zero ReLU output), alternating
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(n)]).unsqueeze(1)
    return [(sign * torch.ones(n, 4), None)]


def test_nan_only_in_the_loss_and_in_dl_doutput_is_seen_while_parameter_gradients_stay_finite():
    def loss_fn(p, _):
        q = p / p.sum(-1, keepdim=True)  # 0/0 on the all-zero rows
        return (q - 1.0 / 3).pow(2).mean()

    mon, refs, model, twin = _twin_run(_relu_rows, _signed_rows(), loss_fn)
    out, g = refs[0]
    assert torch.isfinite(out).all() and torch.isnan(g).any()
    assert all(torch.isfinite(p.grad).all() for p in twin.parameters())  # the parameters see nothing
    (record,) = mon.records()
    assert record.signals["output_grad_nonfinite"] == float((~torch.isfinite(g)).sum()) > 0
    assert record.signals["output_nonfinite"] == 0
    assert math.isnan(record.signals["output_grad_norm"])
    assert all(v == 0 for v in record.stats["nonfinite"].values())  # gradlens's own gradient counts agree


def test_inf_counts_as_non_finite_in_the_output_and_in_its_gradient():
    class LogRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _relu_rows()

        def forward(self, x):
            return self.body(x)

    # sqrt at 0: dL/d(out) = +inf (not NaN) exactly at the zeros; finite parameter gradients
    mon, refs, _, twin = _twin_run(LogRelu, _signed_rows(), lambda p, _: p.sqrt().sum())
    out, g = refs[0]
    assert torch.isinf(g).any() and not torch.isnan(g).any()
    (record,) = mon.records()
    assert record.signals["output_grad_nonfinite"] == float(torch.isinf(g).sum()) == 12
    assert record.signals["output_grad_norm"] == math.inf

    class Log(nn.Module):  # log(0) = -inf in the output itself
        def __init__(self):
            super().__init__()
            self.body = _relu_rows()

        def forward(self, x):
            return torch.log(self.body(x))

    mon, refs, _, _ = _twin_run(Log, _signed_rows(), lambda o, _: o.exp().sum())
    out, g = refs[0]
    assert torch.isinf(out).any() and not torch.isnan(out).any()
    (record,) = mon.records()
    _assert_signals(record.signals, _expected(out, g))
    assert record.signals["output_nonfinite"] == 12 and record.signals["output_min"] == -math.inf


def test_grad_norm_whose_sum_of_squares_overflows_float32_is_exact():
    # elements ~2e20: ||g|| ~7e20 is a float32 number, its sum of squares (~5e41) is not
    mon, refs, _, _ = _twin_run(_linear_out, _batches(1, 4, 6), lambda o, _: (o * 1e10).sum() * 2e10)
    (record,) = mon.records()
    _, g = refs[0]
    assert (g.float().pow(2).sum() == math.inf) and torch.isfinite(g).all()
    assert record.signals["output_grad_norm"] == pytest.approx(g.double().norm().item(), rel=1e-6)
    assert record.signals["output_grad_nonfinite"] == 0


def test_grad_norm_of_finite_elements_past_float32_range_is_inf_not_non_finite():
    mon, refs, _, _ = _twin_run(_linear_out, _batches(1, 4, 6), lambda o, _: (o * 1e30).sum() * 2e8)
    (record,) = mon.records()
    _, g = refs[0]
    assert torch.isfinite(g).all() and g.double().norm().item() > 3.41e38
    assert record.signals["output_grad_norm"] == math.inf
    assert record.signals["output_grad_nonfinite"] == 0


# ----------------------------------------------------------------------------- output kinds
class _HFLike(nn.Module):
    """Returns what an HF model returns: a dict with ``loss`` first, then ``logits``."""

    def __init__(self, wrap=dict):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        self.wrap = wrap

    def forward(self, x):
        logits = self.body(x)
        if self.wrap is dict:  # a plain dict: logits are not the first floating value after the loss
            return {"loss": logits.pow(2).mean(), "hidden_states": torch.tanh(logits), "logits": logits}
        return self.wrap(loss=logits.pow(2).mean(), logits=logits, hidden_states=torch.tanh(logits))


def _hf_outputs():
    out = [("dict", dict)]
    try:
        from transformers.modeling_outputs import SequenceClassifierOutput
    except Exception:  # noqa: BLE001 - transformers is an optional extra
        return out
    return out + [("ModelOutput", SequenceClassifierOutput)]


@pytest.mark.parametrize("wrap", [w for _, w in _hf_outputs()], ids=[i for i, _ in _hf_outputs()])
def test_a_dict_or_model_output_is_measured_at_its_logits(wrap):
    model = _HFLike(wrap)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 6)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        model(x)["loss"].backward()
        opt.step()
    res = twin(x)
    (g,) = torch.autograd.grad(res["loss"], res["logits"])
    _assert_signals(mon.records()[0].signals, _expected(res["logits"], g))


@pytest.mark.parametrize("output,which", [
    (lambda t: (t.argmax(-1), t), 1),
    (lambda t: [{"ids": t.argmax(-1)}, (t, t * 2)], 0),
    (lambda t: {"loss": t.sum(), "scores": t * 3}, "scores"),
], ids=["tuple-int-first", "nested-list", "dict-without-logits"])
def test_the_first_floating_tensor_of_other_outputs(output, which):
    t = torch.randn(4, 3)
    expected = {1: t, 0: t, "scores": t * 3}[which]
    assert torch.equal(_output.output_tensor(output(t)), expected)
    assert _output.output_tensor({"ids": torch.arange(3)}) is None
    assert _output.output_tensor("text") is None


# ----------------------------------------------------------------------------- which forwards
def test_gradient_accumulation_pools_every_micro_batch():
    sizes = [2, 3, 5]  # unequal: means are weighted by element counts
    torch.manual_seed(0)
    model = _tanh_out()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(n, 6, generator=gen) * (i + 1) for i, n in enumerate(sizes)]
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        for x in xs:
            ((model(x) - 3.0).pow(2).mean() / len(xs)).backward()  # (3: past tanh's limit, pushed)
        opt.step()
    outs, grads = [], []
    for x in xs:
        out = twin(x)
        (g,) = torch.autograd.grad((out - 3.0).pow(2).mean() / len(xs), out)
        outs.append(out)
        grads.append(g)
    signals = mon.records()[0].signals
    _assert_signals(signals, _expected(torch.cat(outs), torch.cat(grads), (-1.0, 1.0, 0.02)))
    assert 0 < signals["output_push_frac"] < 1  # (pooled over the micro-batches, not the first one's)


def test_no_grad_forwards_are_not_recorded_and_a_frozen_output_has_no_gradient_signals():
    torch.manual_seed(0)
    model = _linear_out()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 6)
    with gradlens.watch(model, opt, output_stats=1) as mon:
        with torch.no_grad():
            model(x * 100)  # an evaluation before the step: not this step's output
        opt.zero_grad()
        model(x).sum().backward()
        with torch.inference_mode():
            model(x - 7)
        opt.step()
        for p in model.parameters():  # frozen: the output requires no grad
            p.requires_grad_(False)
        opt.zero_grad()
        model(x)
        opt.step()
    out = twin(x)
    (g,) = torch.autograd.grad(out.sum(), out)
    first, frozen = mon.records()
    _assert_signals(first.signals, _expected(out, g))
    ref = copy.deepcopy(twin)  # the weights after the first step's SGD update
    grads = torch.autograd.grad(twin(x).sum(), list(twin.parameters()))
    with torch.no_grad():
        for p, gp in zip(ref.parameters(), grads):
            p.sub_(0.1 * gp)
    _assert_signals(frozen.signals, _expected(ref(x)))
    assert "output_grad_norm" not in frozen.signals


def test_lbfgs_records_the_first_closure_evaluation():
    torch.manual_seed(0)
    model = _linear_out()
    twin = copy.deepcopy(model)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x = torch.randn(8, 6)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (model(x) - 1).pow(2).mean()
        loss.backward()
        calls.append(1)
        return loss

    with gradlens.watch(model, opt) as mon:
        opt.step(closure)
    assert len(calls) > 1  # several forwards inside one step
    out = twin(x)
    (g,) = torch.autograd.grad((out - 1).pow(2).mean(), out)
    _assert_signals(mon.records()[0].signals, _expected(out, g))


def test_only_logged_steps_pay(monkeypatch):
    seen = []
    real = _output._forward_stats
    monkeypatch.setattr(_output, "_forward_stats", lambda *a, **k: seen.append(1) or real(*a, **k))
    mon, refs, _, _ = _twin_run(_linear_out, _batches(6, 4, 6), _mse_to(0.0), every=3)
    assert [r.step for r in mon.records()] == [0, 3] and len(seen) == 2
    for record, (out, g) in zip(mon.records(), [refs[0], refs[3]]):
        _assert_signals(record.signals, _expected(out, g))


@pytest.mark.parametrize("when", ["compiled-then-watched", "watched-then-compiled"])
def test_torch_compile(when):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _tanh_out()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if when == "compiled-then-watched":
            cm = torch.compile(model, backend="eager")
            mon = gradlens.watch(cm, opt)
        else:
            mon = gradlens.watch(model, opt)
            cm = torch.compile(model, backend="eager")
        counters.clear()
        for _ in range(12):
            opt.zero_grad()
            cm(x).pow(2).mean().backward()
            opt.step()
        mon.close()
    assert dict(counters["graph_break"]) == {}
    # no recompilation as the step state changes; compiled after watch, the graph sees
    # the hooks come and go: step 0 (the order probe's and the output hook), the output
    # hook alone (steps 5, 10), none: three graphs, each compiled once and reused
    assert counters["stats"]["unique_graphs"] == (1 if when == "compiled-then-watched" else 3)
    signals = mon.records()[0].signals
    if when == "watched-then-compiled":  # the hook is inside the compiled region: it does nothing
        assert signals == {}
        return
    out = twin(x)
    (g,) = torch.autograd.grad(out.pow(2).mean(), out)
    # (the eager backend keeps torch's nodes; a compiled graph's CompiledFunctionBackward
    # would leave it to the last module, nn.Tanh here: the same limits)
    _assert_signals(signals, _expected(out, g, (-1.0, 1.0, 0.02)), exact_extremes=False)


# ----------------------------------------------------------------------------- distributed
def test_each_value_declares_its_cross_rank_reduction():
    torch.manual_seed(0)
    model = _sigmoid_saturated()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    declared = {}
    with gradlens.watch(model, opt) as mon:
        def capture(packet, pend, work):
            for (kind, ref, *_), op in zip(packet.slots, packet.reduce_ops):
                if kind == "signal":
                    declared[ref] = op

        mon._collector.reduce = capture
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
    assert declared == {
        "means_sat": "mean",  # mean, saturated fraction, variance: exact for equal batch sizes
        "msq": "mean",  # mean^2, for the spread of the ranks' means
        "sums": "sum",  # non-finite count, element count
        "grad_nonfinite": "sum",
        "min": "min", "max": "max",
        "grad_norm": "norm_mean",  # ||d(mean of the ranks' losses)/d(outputs)||
        "push_count": "sum",  # outputs pushed past a limit
    }  # (a softmax output adds "push_sum": "mean", whose values the DDP test below checks)


# ----------------------------------------------------------------------------- hooks, identity, option
def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _one_step(model, opt):
    opt.zero_grad()
    model(torch.randn(3, 6)).sum().backward()
    opt.step()


def test_close_leaves_no_hook_and_a_late_backward_is_ignored():
    torch.manual_seed(0)
    model = _linear_out()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_count(model)
    mon = gradlens.watch(model, opt, output_stats=1)
    _one_step(model, opt)  # (the one-forward order probe's hooks are gone after it)
    assert _hook_count(model) == before + 3  # the monitor's pre-hook, the output hook, the replay's output capture
    assert len(model._forward_hooks) == 2  # (the output hook and the replay's: both forward hooks on the root)
    late = model(torch.randn(3, 6))  # a forward of the next step, with its tensor hook
    mon.close()
    assert _hook_count(model) == before
    late.sum().backward()  # the hook on a live graph does nothing now
    out = model(torch.randn(3, 6))
    assert out.grad_fn is not None and not out._backward_hooks
    assert len(mon.records()) == 1


def test_the_model_computes_bit_identical_results_with_and_without_gradlens():
    batches = _batches(5, 8, 6)
    mon, _, model, twin = _twin_run(_sigmoid_saturated, batches, _mse_to(50.0), lr=0.01,
                                    opt_cls=torch.optim.Adam)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    x = batches[0][0]
    assert torch.equal(model(x), twin(x))
    assert len(mon.records()) == 5


def test_output_stats_false_turns_it_off_and_bad_values_name_the_argument():
    torch.manual_seed(0)
    model = _linear_out()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hook_count(model)
    with gradlens.watch(model, opt, output_stats=False) as mon:
        _one_step(model, opt)
        assert _hook_count(model) == before + 2  # the monitor's own pre-hook and the replay's output capture
    assert mon.records()[0].signals == {}
    assert mon.dataframe("signals")[list(SIGNAL_STATS)].isna().all().all()
    for bad in (1.5, "yes", None):
        with pytest.raises(TypeError, match=r"watch\(output_stats=\.\.\.\) expects a bool or an int >= 0"):
            gradlens.watch(model, opt, output_stats=bad)
    with pytest.raises(ValueError, match=r"watch\(output_stats=\.\.\.\) expects an int >= 0, got -1"):
        gradlens.watch(model, opt, output_stats=-1)
    assert _hook_count(model) == before


@pytest.mark.parametrize("option,recorded", [(True, [0, 5, 10]), (3, [0, 3, 6, 9]), (0, [])],
                         ids=["default-every-5th", "every-3rd", "off"])
def test_cadence_among_logged_steps(option, recorded, monkeypatch):
    seen = []
    real = _output._forward_stats
    monkeypatch.setattr(_output, "_forward_stats", lambda *a, **k: seen.append(1) or real(*a, **k))
    assert _output.OUTPUT_EVERY == 5
    mon, refs, _, _ = _twin_run(_linear_out, _batches(12, 4, 6), _mse_to(0.0), output_stats=option)
    assert [r.step for r in mon.records() if r.signals] == recorded and len(seen) == len(recorded)
    for step in recorded:
        _assert_signals(mon.records()[step].signals, _expected(*refs[step]))


def test_the_forward_hook_is_on_only_while_a_recorded_step_runs():
    torch.manual_seed(0)
    model = _linear_out()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt):  # every 5th logged step
        armed = []
        for _ in range(11):
            armed.append(len(model._forward_hooks))
            _one_step(model, opt)
    # (step 0: the order probe's hook too; the NaN replay's output capture, one more hook, stays on)
    assert [n - 1 for n in armed] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert len(model._forward_hooks) == 0


def test_cadence_counts_logged_steps_only():
    # every=2 logs steps 0, 2, 4, ...; output_stats=2 records every 2nd of those
    mon, refs, _, _ = _twin_run(_linear_out, _batches(9, 4, 6), _mse_to(0.0), every=2, output_stats=2)
    assert [r.step for r in mon.records()] == [0, 2, 4, 6, 8]
    assert [r.step for r in mon.records() if r.signals] == [0, 4, 8]


def test_dataframe_signals_level():
    mon, refs, _, _ = _twin_run(_tanh_out, _batches(3, 4, 6), _mse_to(0.0))
    df = mon.dataframe("signals")
    assert list(df.columns) == ["step", *SIGNAL_STATS, "loss"] and df["step"].tolist() == [0, 1, 2]
    for row, record in zip(df.to_dict("records"), mon.records()):
        assert {k: row[k] for k in SIGNAL_STATS} == pytest.approx(record.signals, nan_ok=True)
    with pytest.raises(ValueError, match="'signals'"):
        mon.dataframe("signal")


# ----------------------------------------------------------------------------- TensorBoard
def test_tensorboard_round_trip_and_report_rebuild_the_same_signals(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradlens import _tags
    from gradlens.report import load_run

    mon, refs, _, _ = _twin_run(_sigmoid_saturated, _batches(3, 8, 6), _mse_to(50.0), logdir=tmp_path)
    live = [r.signals for r in mon.records()]
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    for stat in SIGNAL_STATS:
        events = {e.step: e.value for e in acc.Scalars(_tags.signal_tag(stat))}
        assert sorted(events) == [0, 1, 2]
        for step, sig in enumerate(live):
            assert _close(events[step], sig[stat], 1e-7), (stat, step)
    for (out, g), sig in zip(refs, live):  # what was written is the reference too
        _assert_signals(sig, _expected(out, g, (0.0, 1.0, SAT_BAND)))
    offline = [r.signals for r in load_run(str(tmp_path)).records]
    assert offline == live


# ----------------------------------------------------------------------------- DDP, 2 gloo ranks
_DDP_STEPS = 3


def _ddp_model(softmax):
    from watch_helpers import mlp

    return nn.Sequential(mlp(), nn.Softmax(dim=1)) if softmax else mlp()


def _ddp_rank_softmax(rank, out_dir):
    """:func:`_ddp_rank` with a softmax output (push count and sum of g reduced too)."""
    return _ddp_rank(rank, out_dir, softmax=True)


def _ddp_rank(rank, out_dir, softmax=False):
    """One DDP rank on its half of a fixed batch; the signals it recorded."""
    from torch.nn import functional as F

    from watch_helpers import full_batch, rank_slice

    x, y = full_batch(8)
    xs, ys = rank_slice(x, rank, 2), rank_slice(y, rank, 2)
    ddp = nn.parallel.DistributedDataParallel(_ddp_model(softmax))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    with gradlens.watch(ddp, opt, output_stats=1) as mon:
        for _ in range(_DDP_STEPS):
            opt.zero_grad()
            F.mse_loss(ddp(xs), ys).backward()
            opt.step()
    return {"signals": [r.signals for r in mon.records()]}


@pytest.mark.parametrize("softmax", [False, True], ids=["unbounded", "softmax"])
def test_under_ddp_every_rank_records_the_signals_of_the_global_batch(tmp_path, softmax):
    from torch.nn import functional as F

    from watch_helpers import full_batch, gloo_available, spawn_ranks

    if not gloo_available():
        pytest.skip("torch.distributed with gloo is unavailable")
    ranks = spawn_ranks(_ddp_rank_softmax if softmax else _ddp_rank, tmp_path, world=2, deadline_s=90)
    # reference: one process on the full batch; the mean of the ranks' MSE losses
    # (equal halves) is the full batch's MSE, so its dL/d(output) is the reference
    model = _ddp_model(softmax)
    limits, kind = ((0.0, 1.0, SAT_BAND / 3), "softmax") if softmax else (None, None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = full_batch(8)
    for step in range(_DDP_STEPS):
        opt.zero_grad()
        out = model(x)
        loss = F.mse_loss(out, y)
        (g,) = torch.autograd.grad(loss, out, retain_graph=True)
        loss.backward()
        opt.step()
        for rank in ranks:
            # (the weights agree up to rounding: DDP averages the ranks' gradients)
            _assert_signals(rank["signals"][step], _expected(out, g, limits, kind), rel=1e-5, exact_extremes=False)
