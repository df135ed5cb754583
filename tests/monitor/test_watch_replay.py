"""The replay of a broken step: a NaN/Inf named where it is born, at default settings.

The references are independent of the monitor: the line of this file where each
NaN is planted (found by its ``# birth:`` marker), the planted op, the inputs of
that op computed here with plain torch, and a second run of the same training
without gradlens (parameters, buffers, RNG and optimizer state compared bit for bit).
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

import gradlens

_FILE = os.path.basename(__file__)


def _line(marker: str) -> str:
    """``test_watch_replay.py:N`` of the line holding ``# birth: marker``."""
    with open(__file__) as f:
        for n, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# birth: {marker}"):
                return f"{_FILE}:{n}"
    raise AssertionError(marker)


def _train(model, opt, batches, *, mon=None, **forward_kwargs):
    """One step per batch; returns the losses."""
    losses = []
    for x in batches:
        opt.zero_grad()
        loss = model(x, **forward_kwargs).pow(2).mean()
        if mon is not None:
            mon.observe_loss(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _nonfinite(mon):
    found = [f for f in mon.findings if f.kind == "nonfinite"]
    assert len(found) == 1, [str(f) for f in mon.findings]
    return found[0]


def _watched_run(model, batches, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt, **kw) as mon:
            _train(model, opt, batches, mon=mon)
    return mon, _nonfinite(mon)


# --------------------------------------------------------------------------- models
class Functional(nn.Module):
    """torch.log of a Linear output, in the root's own forward (between two modules)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc1(x)
        h = torch.log(h)  # birth: functional
        return self.fc2(h)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x):
        return torch.log(self.lin(x))  # birth: block


class Nested(nn.Module):
    """The same log, in functional code of a child module (its forward calls it)."""

    def __init__(self):
        super().__init__()
        self.block, self.head = Block(), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.block(x))


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)  # birth: module


class SqrtRelu(nn.Module):
    def forward(self, x):
        # finite forward (sqrt(0) = 0); backward of sqrt at 0 is inf, then inf * 0 = NaN
        return torch.sqrt(x * (x > 0))  # birth: sqrt


class InfThenNaN(nn.Module):
    """log(0) = -inf is born first, then -inf - -inf = NaN: the first birth is named."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.log(self.fc1(x) * 0)  # birth: inf-first
        h = h - h
        return self.fc2(h)


class MaskedThenLog(nn.Module):
    """A -inf attention-style mask (from a scalar: not a birth), then a real log of negatives."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        mask = torch.zeros(8, dtype=torch.bool)
        mask[5:] = True
        p = torch.softmax(self.fc1(x).masked_fill(mask, float("-inf")), dim=-1)
        return self.fc2(torch.log(p - 0.1))  # birth: after-mask


def _x(n=16, seed=3):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- births
def test_functional_code_between_modules_is_named_at_its_op_and_line():
    torch.manual_seed(0)
    model = Functional()
    x = _x()
    with torch.no_grad():
        h = model.fc1(x)  # the reference: the log's own input, computed here
    assert h.min() < 0  # the planted NaN: a log of negative values
    mon, f = _watched_run(model, [x])
    site = f.evidence["site"]
    assert site["op"] == "aten.log" and site["phase"] == "forward"
    assert site["module"] == "(root)" and f.layer == "(root)"
    assert site["source"] == _line("functional")
    assert site["input_range"] == pytest.approx([h.min().item(), h.max().item()])
    assert f.step == 0 and site["located_by"] == "replayed step 0"
    assert f"born at '(root)' in aten.log ({_line('functional')})" in f.message
    assert "replayed step 0" in f.message and "fallback" not in f.message
    assert mon.records()[0].nonfinite_site["source"] == _line("functional")  # the record keeps it


def test_functional_code_in_a_child_module_is_named_at_that_module():
    torch.manual_seed(0)
    _, f = _watched_run(Nested(), [_x()])
    site = f.evidence["site"]
    assert (site["op"], site["module"], site["source"]) == ("aten.log", "block", _line("block"))
    assert f.layer == "block"


def test_a_log_module_in_a_sequential_is_named_not_the_first_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Log(), nn.Linear(8, 2))
    mon, f = _watched_run(model, [_x()])
    site = f.evidence["site"]
    assert f.layer == "1" and site["op"] == "aten.log"
    assert site["source"] == _line("module")
    assert "born at '1' in aten.log" in f.message


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)  # birth: exp


def _exp_stack():
    """Linear -> exp -> Linear -> exp: exp(5) = 148 at '1' (30x), then exp(118) = inf at '3'."""
    model = nn.Sequential(nn.Linear(4, 8), Exp(), nn.Linear(8, 8), Exp())
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.zero_()
        model[2].weight.fill_(0.1), model[2].bias.zero_()
    return model


def _sigmoid_then_exp_stack():
    """sigmoid(5e-4) = 0.5 at '1' (1000x, but below unit scale: not growth), exp(5) = 148 at
    '3' (30x), exp(118) = inf at '5'."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 8), Exp(), nn.Linear(8, 8), Exp())
    with torch.no_grad():
        for m, w in ((model[0], 1e-4), (model[2], 1.25), (model[4], 0.1)):
            m.weight.fill_(w), m.bias.zero_()
    return model


@pytest.mark.parametrize("build, expected", [
    pytest.param(_exp_stack, ("3", "1"), id="exp_stack"),
    pytest.param(_sigmoid_then_exp_stack, ("5", "3"), id="behind_a_sigmoid_of_tiny_values"),
])
def test_an_overflow_is_named_where_its_values_grew(build, expected):
    # the reference: plain torch forward hooks on the same forward
    model, x = build(), torch.full((2, 4), 1.25)
    seen = {}

    def keep(name):
        def hook(module, args, out):
            seen[name] = (args[0].abs().max().item(), out.abs().max().item())
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.named_children()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    born = next(n for n, (_, o) in seen.items() if math.isinf(o))
    grew = max((n for n, (_, o) in seen.items() if math.isfinite(o)),
               key=lambda n: max(seen[n][1], 1) / max(seen[n][0], 1))
    assert (born, grew) == expected
    mon, f = _watched_run(model, [x])
    site = f.evidence["site"]
    assert site["module"] == born and site["op"] == "aten.exp" and site["source"] == _line("exp")
    assert site["grew_at"]["module"] == grew and site["grew_at"]["to"] == pytest.approx(seen[grew][1], rel=1e-6)
    assert f.layer == grew
    assert f"born at '{born}' in aten.exp" in f.message and f"the values grew most at '{grew}'" in f.message


def test_fixed_twin_a_domain_error_after_a_growth_is_named_at_its_op():
    # the same growth, then a log of negatives: a domain error is where it is born
    model = nn.Sequential(nn.Linear(4, 8), Exp(), nn.Linear(8, 8), Log())
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.zero_()
        model[2].weight.fill_(-0.1), model[2].bias.zero_()
    _, f = _watched_run(model, [torch.full((2, 4), 1.25)])
    assert f.layer == "3" and f.evidence["site"]["op"] == "aten.log" and "grew most" not in f.message


def test_nan_in_the_data_at_step_k_is_said_to_come_with_the_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    batches = [_x(seed=s) for s in range(5)]
    batches[3] = batches[3].clone()
    batches[3][2, 1] = float("nan")
    batches[3][0, 0] = float("inf")
    mon, f = _watched_run(model, batches)
    site = f.evidence["site"]
    assert f.step == 3 and site["located_by"] == "replayed step 3"
    assert site["phase"] == "input" and site["op"] is None and site["module"] == "(root)"
    assert site["input"] == "args[0]" and site["nonfinite_elements"] == 2
    assert "came with the data" in f.message and "replayed step 3" in f.message
    assert mon._replay.replays == 1  # the finite steps before were not replayed


def test_a_nan_born_in_the_backward_only_is_named_at_its_backward_op():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), SqrtRelu(), nn.Linear(8, 2))
    x = _x()
    # the reference: plain autograd says the forward is finite and the gradient is not
    ref = _clone(model)
    out = ref(x)
    out.pow(2).mean().backward()
    assert torch.isfinite(out).all() and not torch.isfinite(ref[0].weight.grad).all()
    with torch.no_grad():
        z = ref[1](ref[0](x))
        z = z * (z > 0)  # the sqrt's input
    mon, f = _watched_run(model, [x])
    site = f.evidence["site"]
    assert site["phase"] == "backward" and site["op"] == "aten.sqrt" and site["grad_fn"] == "SqrtBackward0"
    assert f.layer == "2" and site["source"] == _line("sqrt")
    assert site["input_range"] == pytest.approx([0.0, z.max().item()])
    assert "born at '2' in the backward of aten.sqrt (SqrtBackward0)" in f.message


def test_the_first_of_two_births_is_named():
    torch.manual_seed(0)
    _, f = _watched_run(InfThenNaN(), [_x()])
    assert (f.evidence["site"]["op"], f.evidence["site"]["source"]) == ("aten.log", _line("inf-first"))


def test_an_inf_mask_from_a_scalar_is_not_a_birth():
    torch.manual_seed(0)
    _, f = _watched_run(MaskedThenLog(), [_x()])
    assert (f.evidence["site"]["op"], f.evidence["site"]["source"]) == ("aten.log", _line("after-mask"))


def test_a_closure_step_is_replayed_before_its_update():
    torch.manual_seed(0)
    model = Functional()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = _x()

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt) as mon:
            opt.step(closure)
    f = _nonfinite(mon)
    assert f.evidence["site"]["source"] == _line("functional")


def test_replay_off_gives_a_fallback_that_never_says_born():
    torch.manual_seed(0)
    mon, f = _watched_run(Functional(), [_x(), _x(seed=4)], replay_nonfinite=False)
    assert mon._replay is None
    assert f.evidence["located_by"].startswith("fallback")
    assert "born" not in f.message and "replayed" not in f.message
    assert "first seen at" in f.message and "site" not in f.evidence


def test_a_failing_replay_is_a_warning_and_a_fallback():
    class NeedsGrad(Functional):
        def forward(self, x):
            if not torch.is_grad_enabled():
                raise RuntimeError("this forward needs grad")
            return super().forward(x)

    torch.manual_seed(0)
    model = NeedsGrad()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="replay of step 0 failed"):
        with gradlens.watch(model, opt) as mon:
            _train(model, opt, [_x()])  # the step completes: the update is applied
    assert not torch.isfinite(model.fc1.weight).all()
    f = _nonfinite(mon)
    assert f.evidence["located_by"].startswith("fallback: the replay of step 0 failed (RuntimeError)")
    assert "born" not in f.message


@pytest.mark.parametrize("value,error", [(1, TypeError), (None, TypeError), ("yes", ValueError)])
def test_replay_option_is_validated(value, error):
    model = nn.Linear(2, 1)
    with pytest.raises(error, match=r"watch\(replay_nonfinite=\.\.\.\) expects True, False or 'sync'"):
        gradlens.watch(model, replay_nonfinite=value)
    assert not model._forward_hooks and not model._forward_pre_hooks


# --------------------------------------------------------------------------- state
class Stateful(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear; ``mode`` plants a NaN:
    ``"log"`` in the forward, ``"sqrt"`` in the backward of the first output only."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.drop, self.head = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 3)

    def forward(self, x, mode="ok"):
        out = self.head(self.drop(self.bn(self.fc(x)).relu()))
        if mode == "log":
            return torch.log(-out.abs())
        if mode == "sqrt":
            return torch.cat([torch.sqrt(out[:, :1].pow(2) * 0), out[:, 1:]], dim=1)
        return out


def _clone(model):
    import copy

    return copy.deepcopy(model)


def _bits(t):
    if t.is_floating_point():
        return t.detach().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _stateful_run(model, mode, *, watched):
    torch.manual_seed(123)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    grads = []

    def keep_grads(opt, args, kwargs):  # right before the update, after gradlens's pre-hook
        grads.append([p.grad.clone() for p in model.parameters()])

    mon = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if watched:
            mon = gradlens.watch(model, opt)
        handle = opt.register_step_pre_hook(keep_grads)
        gen = torch.Generator().manual_seed(7)
        for step in range(4):
            x = torch.randn(16, 4, generator=gen)
            opt.zero_grad()
            model(x, mode=mode if step == 2 else "ok").pow(2).mean().backward()
            opt.step()
        handle.remove()
        if mon is not None:
            mon.close()
    return opt, grads, torch.get_rng_state(), mon


@pytest.mark.parametrize("mode", ["log", "sqrt"], ids=["forward-birth", "backward-birth"])
def test_a_replay_leaves_model_buffers_rng_and_optimizer_bit_identical(mode):
    torch.manual_seed(0)
    plain, watched = Stateful(), None
    watched = _clone(plain)
    opt_a, grads_a, rng_a, _ = _stateful_run(plain, mode, watched=False)
    opt_b, grads_b, rng_b, mon = _stateful_run(watched, mode, watched=True)
    f = _nonfinite(mon)
    assert f.step == 2 and f.evidence["site"]["located_by"] == "replayed step 2"  # the replay ran
    assert f.evidence["site"]["phase"] == ("forward" if mode == "log" else "backward")
    assert _same(rng_a, rng_b)
    for (na, a), (nb, b) in zip(plain.named_parameters(), watched.named_parameters()):
        assert na == nb and _same(a, b), na
    for (na, a), (nb, b) in zip(plain.named_buffers(), watched.named_buffers()):
        assert na == nb and _same(a, b), na
    for ga, gb in zip(grads_a, grads_b):  # no replayed gradient leaked into .grad
        assert all(_same(a, b) for a, b in zip(ga, gb))
    if mode == "sqrt":  # (some gradients stay finite there, so a leak would show)
        assert torch.isfinite(grads_a[2][-2][1:]).all()
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert all(_same(sa[k][n], sb[k][n]) for n in sa[k]), k


# --------------------------------------------------------------------------- cost
@pytest.mark.parametrize("kw,replayed", [
    pytest.param({}, False, id="default-no-sync"),
    pytest.param({"on_finding": lambda f: None}, True, id="on_finding-reads-anyway"),
    pytest.param({"replay_nonfinite": "sync"}, True, id="sync"),
])
def test_on_a_device_whose_copies_are_deferred_the_check_never_adds_a_sync(monkeypatch, kw, replayed):
    # CPU pretending to be CUDA (its copies deferred, as test_watch_deferred does):
    # the statistics are read at the step only where the monitor reads them anyway
    import gradlens.monitor.packet as packet_mod

    monkeypatch.setattr(packet_mod, "defers", lambda device: True)
    torch.manual_seed(0)
    mon, f = _watched_run(Functional(), [_x()], **kw)
    assert mon._replay.replays == int(replayed)
    if replayed:
        assert f.evidence["site"]["source"] == _line("functional")
    else:
        assert f.evidence["located_by"].startswith("fallback") and "born" not in f.message


def test_a_compiled_model_is_replayed_eagerly():
    import logging

    torch._dynamo.reset()
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = Functional()
    cm = torch.compile(model, backend="eager")
    _, f = _watched_run(cm, [_x()])
    site = f.evidence["site"]
    assert (site["op"], site["module"], site["source"]) == ("aten.log", "(root)", _line("functional"))


def test_a_step_the_grad_scaler_skips_is_not_replayed():
    # an overflow under a GradScaler is expected: the scaler skips the update, so
    # the weights stay finite, and nothing is replayed
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt) as mon:
            for i in range(3):
                opt.zero_grad()
                x = _x(seed=i)
                if i == 1:
                    x[0, 0] = float("inf")
                scaler.scale(model(x).pow(2).mean()).backward()
                scaler.step(opt)
                scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the step was skipped
    assert mon._replay.replays == 0


# --------------------------------------------------------------------------- the rule
def _record(step, site=None, origin=None, weight_norm=None):
    from gradlens._record import StepRecord

    stats = {"grad_norm": {"fc1": math.nan, "fc2": math.nan}, "nonfinite": {"fc1": 3.0, "fc2": 2.0},
             "weight_norm": weight_norm or {"fc1": 1.0, "fc2": 1.0}}
    return StepRecord(step, ["fc1", "fc2"], stats, nonfinite_origin=origin, nonfinite_site=site)


def test_the_rule_names_the_replayed_site_and_keeps_it_on_later_steps():
    from gradlens.diagnose.engine import Diagnoser

    site = {"op": "aten.log", "module": "fc1", "source": "train.py:42", "input_range": (-3.1, 2.0),
            "phase": "forward", "located_by": "replayed step 4"}
    diag = Diagnoser()
    (f,) = diag.update(_record(4, site=site))
    assert f.layer == "fc1" and f.step == 4
    assert "born at 'fc1' in aten.log (train.py:42), inputs in [-3.1, 2], replayed step 4" in f.message
    # the next step: the weights are NaN, the probe names the first module (the same
    # layer here, so the finding takes this step's message)
    diag.update(_record(5, origin="fc1", weight_norm={"fc1": math.nan, "fc2": math.nan}))
    assert f.last_step == 5 and "replayed step 4" in f.message and f.evidence["site"]["op"] == "aten.log"


def test_the_rule_never_says_born_for_a_fallback():
    from gradlens.diagnose.engine import Diagnoser

    fallback = {"located_by": "fallback: replayed step 0: forward and backward replayed finite"}
    (f,) = Diagnoser().update(_record(0, site=fallback))
    assert "born" not in f.message and "first seen at 'fc1'" in f.message
    assert f.evidence["located_by"].startswith("fallback: replayed step 0")
    # an origin whose own weights are NaN already is not where the NaN was born
    (g,) = Diagnoser().update(_record(1, origin="fc1", weight_norm={"fc1": math.nan, "fc2": math.nan}))
    assert "born" not in g.message and g.evidence["located_by"].startswith("fallback")
    (h,) = Diagnoser().update(_record(1, origin="fc2"))  # a traced origin with finite weights
    assert "born at 'fc2'" in h.message and h.evidence["located_by"] == "origin"


def test_after_a_replay_the_origin_probe_does_not_contradict_it(caplog):
    # the probe of the next forward sees every weight NaN and would name the first layer
    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="gradlens"):
        _, f = _watched_run(nn.Sequential(nn.Linear(4, 8), Log(), nn.Linear(8, 2)), [_x(), _x(seed=4), _x(seed=5)])
    assert f.layer == "1"
    said = [r.getMessage() for r in caplog.records if "first appear in the output of" in r.getMessage()]
    assert all(t.endswith("output of 1") for t in said), said


def test_a_nan_born_in_the_loss_of_a_hf_model_output_is_said_to_come_from_the_loss():
    # a ModelOutput, keyword inputs, and a loss written outside the model: the forward
    # replays finite and dL/d(logits) is not, so the loss made it
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt, group_depth="auto") as mon:
            for step in range(3):
                opt.zero_grad()
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                loss = torch.sqrt(logits).mean() if step == 2 else logits.pow(2).mean()  # birth: hf-loss
                loss.backward()
                opt.step()
    f = _nonfinite(mon)
    site = f.evidence["site"]
    assert f.step == 2 and site["phase"] == "loss" and site["located_by"] == "replayed step 2"
    assert "born in the loss" in f.message


@pytest.mark.parametrize("born,replayed", [(2, True), (1, False)], ids=["logged-step", "unlogged-step"])
def test_with_every_2_only_a_nan_born_on_a_logged_step_is_replayed(born, replayed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Log(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias.fill_(10.0)  # positive inputs to the log: finite ...
    batches = [_x(seed=s).abs() * 0.01 for s in range(5)]
    batches[born] = -100 * batches[born].abs() - 100  # ... until this batch
    mon, f = _watched_run(model, batches, every=2)
    assert f.step == (born if replayed else born + 1)
    assert mon._replay.replays == int(replayed)
    if replayed:
        assert f.layer == "1" and f.evidence["site"]["located_by"] == f"replayed step {born}"
    else:
        assert "born" not in f.message and f.evidence["located_by"].startswith("fallback")


class DropoutLog(nn.Module):
    """A NaN only for some dropout masks: log(2 * kept - 1.5) is NaN where dropped."""

    def __init__(self):
        super().__init__()
        self.fc, self.drop = nn.Linear(4, 4), nn.Dropout(0.5)

    def forward(self, x):
        h = self.drop(torch.ones(1, 8))
        return self.fc(x) * torch.log(h[:, :1] - 1.5)  # birth: dropout


def test_a_nan_that_needs_its_dropout_mask_is_reproduced():
    # the replay draws the masks of the original forward (the CPU generator's state
    # is kept at each forward); fresh numbers would keep element 0 here (seed 3)
    torch.manual_seed(3)
    model = DropoutLog()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt) as mon:
            for step in range(20):
                opt.zero_grad()
                model(_x(4)).pow(2).mean().backward()
                opt.step()
                if not torch.isfinite(model.fc.weight).all():
                    break
    f = _nonfinite(mon)
    assert f.evidence["site"]["source"] == _line("dropout") and f.evidence["site"]["op"] == "aten.log"


class BF16Log(nn.Module):
    """log(h - 1) with h = 1.001: finite in float32, log(0) = -inf once bfloat16 rounds h to 1."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.fill_(1.001)

    def forward(self, x):
        return torch.log(self.fc(x) - 1.0)  # birth: bf16


def test_a_nan_born_under_autocast_is_replayed_under_it():
    torch.manual_seed(0)
    model = BF16Log()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert torch.isfinite(model(_x())).all()  # the reference: finite in float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt) as mon:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(_x())
            out.float().pow(2).mean().backward()
            opt.step()  # outside the autocast region, as usual
    f = _nonfinite(mon)
    assert (f.evidence["site"]["op"], f.evidence["site"]["source"]) == ("aten.log", _line("bf16"))


# --------------------------------------------------------------------------- distributed
def _ddp_rank(rank, out_dir):
    """One DDP rank: a log module makes NaN at step 0; the forward is replayed on the
    model inside DDP (no collective), the backward not (its hooks communicate)."""
    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), Log(), nn.Linear(8, 2)))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(ddp, opt) as mon:
            for step in range(2):
                opt.zero_grad()
                ddp(_x(seed=rank)).pow(2).mean().backward()
                opt.step()
    f = _nonfinite(mon)
    return {"layer": f.layer, "site": f.evidence.get("site"), "message": f.message, "backward": mon._replay._backward}


def test_under_ddp_each_rank_replays_the_forward_of_the_model_inside(tmp_path):
    from watch_helpers import gloo_available, spawn_ranks

    if not gloo_available():
        pytest.skip("torch.distributed with gloo is unavailable")
    for out in spawn_ranks(_ddp_rank, tmp_path, world=2, deadline_s=120):
        assert out["layer"] == "1" and out["backward"] is False
        assert (out["site"]["op"], out["site"]["source"]) == ("aten.log", _line("module"))
        assert "replayed step 0" in out["message"]


def test_after_the_last_replay_nothing_is_kept_and_the_root_hook_is_off():
    from gradlens.monitor.replay import MAX_REPLAYS

    class Frozen(torch.optim.SGD):  # an update that leaves the weights finite
        def step(self, closure=None):
            return None

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = Frozen(model.parameters(), lr=0.1)
    x = _x().clone()
    x[0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradlens.watch(model, opt) as mon:
            assert mon._replay._on_post in model._forward_hooks.values()
            for step in range(MAX_REPLAYS + 2):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
                if step == MAX_REPLAYS - 1:
                    assert mon._replay.replays == MAX_REPLAYS
                    assert mon._replay._on_post not in model._forward_hooks.values()
            assert mon._replay.replays == MAX_REPLAYS
            assert mon._replay._args is None and mon._replay._grads is None


@pytest.mark.parametrize("grew, op, named", [
    pytest.param({"module": "fc1", "from": 6.2, "to": 348.0}, "aten.exp", "fc1", id="grew_56x_named"),
    pytest.param({"module": "fc1", "from": 6.2, "to": 40.0}, "aten.exp", "fc2", id="grew_6x_not_named"),
    pytest.param({"module": "fc1", "from": 0.001, "to": 9.0}, "aten.exp", "fc2", id="below_unit_scale_not_growth"),
    pytest.param({"module": "fc1", "from": 6.2, "to": 348.0}, "aten.log", "fc2", id="domain_error_not_renamed"),
    pytest.param(None, "aten.exp", "fc2", id="no_growth_seen"),
])
def test_the_rule_names_an_overflow_where_its_values_grew_an_order_of_magnitude(grew, op, named):
    from gradlens.diagnose.engine import Diagnoser

    site = {"op": op, "module": "fc2", "source": "train.py:7", "input_range": (-120.0, 119.0),
            "phase": "forward", "located_by": "replayed step 0", "grew_at": grew}
    (f,) = Diagnoser().update(_record(0, site=site))
    assert f.layer == named and f.evidence["site"]["module"] == "fc2"
    assert ("the values grew most at 'fc1'" in f.message) is (named == "fc1")
