"""Real training set-ups: accumulation, GradScaler, several optimizers, frozen/tied/unused
parameters, include/exclude, group_depth, torch.compile, sparse gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradlens
from watch_helpers import mlp, train


def test_gradient_accumulation_recorded_once_per_step():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs = []
    with gradlens.watch(model, opt) as mon:
        for _ in range(2):
            opt.zero_grad()
            for _ in range(3):  # three micro-batches
                model(torch.randn(4, 6)).pow(2).mean().backward()
            refs.append(model[4].weight.grad.norm().item())
            opt.step()
    df = mon.dataframe()
    assert sorted(df.step.unique()) == [0, 1]
    assert df[df.param == "4.weight"].grad_norm.tolist() == pytest.approx(refs, rel=1e-6)


def test_grad_scaler_skipped_step_is_recorded():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    seen = []
    with gradlens.watch(model, opt) as mon:
        for i in range(4):
            opt.zero_grad()
            x = torch.randn(4, 6)
            if i == 1:
                x[0, 0] = float("inf")  # overflow: the scaler skips this step
            loss = model(x).pow(2).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            seen.append(model[4].weight.grad.norm().item())
            w = model[4].weight.detach().clone()
            scaler.step(opt)
            scaler.update()
            if i == 1:
                assert torch.equal(w, model[4].weight)  # really skipped
        opt.zero_grad()
    df = mon.dataframe()
    assert sorted(df.step.unique()) == [0, 1, 2, 3]
    row = df[(df.param == "0.weight") & (df.step == 1)].iloc[0]
    assert row.nonfinite > 0  # the inf input poisons the first layer's gradient
    # the other steps see unscaled gradients, as the optimizer does
    for step in (0, 2, 3):
        got = df[(df.param == "4.weight") & (df.step == step)].grad_norm.iloc[0]
        assert got == pytest.approx(seen[step], rel=1e-5)


def test_zero_grad_twice_is_not_a_skipped_step():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        for set_to_none in (True, False):
            opt.zero_grad(set_to_none=set_to_none)
            opt.zero_grad(set_to_none=set_to_none)
            model(torch.randn(4, 6)).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)
            opt.zero_grad(set_to_none=set_to_none)
    assert sorted(mon.dataframe().step.unique()) == [0, 1]


def test_two_optimizers_gan_style():
    torch.manual_seed(0)
    gen, disc = nn.Linear(3, 4), nn.Linear(4, 1)
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.SGD(disc.parameters(), lr=1e-2)
    refs = []
    with gradlens.watch(model, [opt_g, opt_d]) as mon:
        for _ in range(3):
            opt_d.zero_grad()
            disc(gen(torch.randn(5, 3)).detach()).mean().backward()
            d_ref = disc.weight.grad.norm().item()
            opt_d.step()
            opt_g.zero_grad()
            (-disc(gen(torch.randn(5, 3))).mean()).backward()
            refs.append((gen.weight.grad.norm().item(), d_ref))
            opt_g.step()
    df = mon.dataframe()
    assert sorted(df.step.unique()) == [0, 1, 2]
    for step, (g_ref, d_ref) in enumerate(refs):
        at = df[df.step == step].set_index("param")
        assert at.loc["gen.weight", "grad_norm"] == pytest.approx(g_ref, rel=1e-6)
        assert at.loc["disc.weight", "grad_norm"] == pytest.approx(d_ref, rel=1e-6)


def test_one_watch_per_model():
    g, d = mlp(0), mlp(1)
    og, od = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.1)
    with gradlens.watch(g, og) as mg, gradlens.watch(d, od) as md:
        train(g, og, 2)
        train(d, od, 3)
    assert mg.steps_seen == 2 and md.steps_seen == 3


def test_frozen_tied_unused_parameters():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)
            self.unused = nn.Linear(4, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight  # tied

        def forward(self, idx):
            return self.head(self.frozen(self.emb(idx)))

    model = Tied()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        model(torch.tensor([[1, 2, 3]])).sum().backward()
        ref = model.emb.weight.grad.norm().item()
        opt.step()
    df = mon.dataframe().set_index("param")
    assert set(df.index) == {"emb.weight", "unused.weight", "unused.bias"}  # tied once, frozen not watched
    assert df.loc["emb.weight", "grad_norm"] == pytest.approx(ref, rel=1e-6)
    assert df.loc["unused.weight", "missing_grad"] == 1


def test_include_exclude_patterns():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, include=["0.*", "4.*"], exclude="*.bias") as mon:
        train(model, opt, 1)
    assert sorted(mon.dataframe().param.unique()) == ["0.weight", "4.weight"]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    def forward(self, x):
        return self.mlp(self.attn(x))


class _Encoder(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.layer = nn.ModuleList(_Block() for _ in range(n))

    def forward(self, x):
        x = self.embed(x)
        for block in self.layer:
            x = block(x)
        return x


@pytest.mark.parametrize("activations", [False, True], ids=["grads", "activations"])
def test_group_depth_aggregates_blocks(activations):
    torch.manual_seed(0)
    model = nn.ModuleDict({"encoder": _Encoder()})
    mon = gradlens.watch(model, group_depth=2, activations=activations)
    out = None
    outs = {}
    if activations:
        blk = model["encoder"].layer[1]

        def keep(module, args, out):
            out.retain_grad()
            outs["b1"] = out

        blk.register_forward_hook(keep)
    out = model["encoder"](torch.randn(5, 4))
    out.pow(2).sum().backward()
    mon.step()
    mon.close()
    rec = mon.records()[0]
    assert rec.layers == ["encoder.embed", "encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    blk = model["encoder"].layer[1]
    ref = math.sqrt(sum(p.grad.norm().item() ** 2 for p in blk.parameters()))
    assert rec.get("grad_norm", "encoder.layer.1") == pytest.approx(ref, rel=1e-6)
    ref_max = max(p.grad.abs().max().item() for p in blk.parameters())
    assert rec.get("grad_max", "encoder.layer.1") == pytest.approx(ref_max, rel=1e-6)
    df = mon.dataframe()
    assert (df[df.param == "encoder.layer.1.mlp.2.weight"].layer == "encoder.layer.1").all()
    if activations:
        assert rec.get("act_mean", "encoder.layer.1") == pytest.approx(outs["b1"].mean().item(), rel=1e-5)
        assert rec.get("out_grad_norm", "encoder.layer.1") == pytest.approx(outs["b1"].grad.norm().item(), rel=1e-5)


def test_every_n_attributes_nan_to_next_logged_step():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, every=4) as mon:
        for i in range(6):
            opt.zero_grad()
            loss = model(torch.randn(4, 6)).pow(2).mean()
            if i == 2:  # a NaN born on an unlogged step
                loss = loss * float("nan")
            mon.observe_loss(loss)
            loss.backward()
            opt.step()
    recs = mon.records()
    assert [r.step for r in recs] == [0, 4]
    assert recs[0].stats["nonfinite"]["0"] == 0
    assert recs[1].stats["nonfinite"]["0"] > 0  # shows at the next logged step
    assert math.isnan(recs[1].loss)


def test_params_added_later_are_picked_up():
    model = mlp()
    opt = torch.optim.SGD(model[4].parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        train(model, opt, 1)
        opt.add_param_group({"params": list(model[0].parameters())})
        train(model, opt, 1)
    df = mon.dataframe()
    assert sorted(df[df.step == 0].param) == ["4.bias", "4.weight"]
    assert sorted(df[df.step == 1].param) == ["0.bias", "0.weight", "4.bias", "4.weight"]


def test_sparse_gradients():
    model = nn.Sequential(nn.Embedding(20, 4, sparse=True), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt) as mon:
        opt.zero_grad()
        model(torch.tensor([1, 2, 2, 5])).sum().backward()
        ref = model[0].weight.grad.to_dense().norm().item()
        opt.step()
    df = mon.dataframe().set_index("param")
    assert df.loc["0.weight", "grad_norm"] == pytest.approx(ref, rel=1e-6)


def test_torch_compile_grad_stats():
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="unavailable for torch.compile"):
        mon = gradlens.watch(compiled, opt, activations=True)
    refs = train(compiled, opt, 2)
    mon.close()
    df = mon.dataframe()
    assert set(df.param) == {n for n, _ in model.named_parameters()}  # no _orig_mod prefix
    got = df[(df.step == 1) & (df.param == "2.weight")].grad_norm.iloc[0]
    assert got == pytest.approx(refs[1]["_orig_mod.2.weight"][0], rel=1e-6)


@pytest.mark.parametrize("where", ["inside-DataParallel", "submodule"])
def test_torch_compile_anywhere_turns_activations_off_with_a_warning(where):
    # A compiled module below the root (DataParallel(compile(m)), or a compiled child)
    # gets the same warning as a compiled root, and gradient statistics still flow.
    model = mlp()
    if where == "inside-DataParallel":
        watched = nn.DataParallel(torch.compile(model, backend="eager"))
    else:
        model[2] = torch.compile(model[2], backend="eager")
        watched = model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="unavailable for torch.compile"):
        mon = gradlens.watch(watched, opt, activations=True)
    train(watched, opt, 1)
    mon.close()
    assert mon.dataframe().grad_norm.notna().all()


@pytest.mark.parametrize(
    "layer,depth,group",
    [
        ("encoder.layer.3.attn.q", 2, "encoder.layer.3"),
        ("encoder.layer.3.attn.q", 1, "encoder"),
        ("encoder.layer.3.attn.q", 3, "encoder.layer.3.attn"),
        ("12.3", 1, "12"),  # a Sequential of Sequentials
        ("12.3", 2, "12.3"),
        ("blocks.0.1", 1, "blocks.0"),
        ("blocks.0.1", 2, "blocks.0.1"),
        ("head", 1, "head"),
        ("0.1.lin", 1, "0"),  # an index after an index is a level of its own
        ("0.1.lin", 2, "0.1"),
        ("(root)", 2, "(root)"),
    ],
)
def test_group_name_levels(layer, depth, group):
    from gradlens.monitor.layout import group_name as _group_name

    assert _group_name(layer, depth) == group


def test_group_depth_on_nested_sequentials():
    # nn.Sequential of nn.Sequential blocks: names are all indices ("3.1.weight");
    # group_depth=1 gives one row per block.
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)) for _ in range(3)])
    mon = gradlens.watch(model, group_depth=1)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    mon.step()
    mon.close()
    rec = mon.records()[0]
    assert rec.layers == ["0", "1", "2"]
    ref = math.sqrt(sum(p.grad.norm().item() ** 2 for p in model[1].parameters()))
    assert rec.get("grad_norm", "1") == pytest.approx(ref, rel=1e-6)


def test_losses_observed_during_accumulation_are_averaged():
    # two micro-batches per optimizer step, each loss observed: the record has their mean
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(3)
    seen = []
    with gradlens.watch(model, opt) as mon:
        for _ in range(3):
            opt.zero_grad()
            losses = []
            for _ in range(2):
                loss = model(torch.randn(4, 6, generator=gen)).pow(2).mean()
                mon.observe_loss(loss)
                mon.observe_loss(float(loss) * 0 + float(loss))  # a float is kept alike
                losses.append(loss.item())
                (loss / 2).backward()
            seen.append(sum(losses) / len(losses))
            opt.step()
    assert [r.loss for r in mon.records()] == pytest.approx(seen, rel=1e-6)


@pytest.mark.parametrize("when", ["before-step", "after-step", "both"])
def test_a_loss_lands_on_the_step_of_its_forward(when):
    # the README's quick tour calls observe_loss after opt.step(): the loss still
    # belongs to the step whose forward computed it, including the last step and
    # the last step of each publishing batch
    from gradlens.monitor.publish import PUBLISH_BATCH

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(4)
    steps = PUBLISH_BATCH + 3
    seen = []
    with gradlens.watch(model, opt) as mon:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(torch.randn(4, 6, generator=gen)).pow(2).mean()
            if when in ("before-step", "both"):
                mon.observe_loss(loss)
            loss.backward()
            opt.step()
            if when in ("after-step", "both"):
                mon.observe_loss(loss * 3 if when == "both" else loss)
            seen.append(loss.item() * (2 if when == "both" else 1))  # both: mean of (l, 3l)
    losses = [r.loss for r in mon.records()]
    assert losses == pytest.approx(seen, rel=1e-6)


def test_a_late_loss_with_a_callback_warns_that_it_came_too_late():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.watch(model, opt, on_finding=lambda f: None) as mon:
        opt.zero_grad()
        loss = model(torch.randn(4, 6)).pow(2).mean()
        loss.backward()
        opt.step()
        with pytest.warns(UserWarning, match="observed after that step was published"):
            mon.observe_loss(loss)
    assert mon.records()[0].loss is None
