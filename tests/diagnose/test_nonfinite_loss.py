"""A NaN/Inf born in the loss is named at the output layer whose values the loss could not take.

AUTOTRAINER's Improper_Activation demo and DeepFD's so47352366: a ReLU output layer under
Keras' categorical cross-entropy (``p / p.sum()``, clipped, then ``log``). A row of zero
outputs makes ``0 / 0``: the loss is NaN, and so is dL/d(output), but the output ReLU's
backward masks it, so every parameter gradient stays finite and nothing is replayed. The
reference: the same forward computed here with plain torch (the output holds a row of
zeros, the loss is NaN, every parameter gradient finite).

* with the output signals measured (a finite output, a non-finite dL/d(output)): "born in
  the loss", at the output layer, with the output's range;
* without them (only the loss is non-finite): "first seen in the loss", a fallback that
  never says "born";
* the replay's ``"loss"`` phase is named at the output layer too;
* a NaN in the weights or the gradients is not the loss's (fixed twin of the rule);
* end to end: the ReLU-output program is named at its output Linear, its fixed twin
  (logits into cross_entropy) raises nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens._record import StepRecord
from gradlens.diagnose import diagnose

from diag_scenarios import quiet

LAYERS = ["fc1", "relu1", "fc2", "relu2"]  # the model ends with a parameterless ReLU


def rec(step, *, loss=math.nan, signals=None, site=None, grad=0.5, weight=1.0):
    stats = {"grad_norm": {"fc1": grad, "fc2": grad}, "weight_norm": {"fc1": weight, "fc2": weight},
             "nonfinite": {"fc1": 0.0, "fc2": 0.0}}
    return StepRecord(step, list(LAYERS), stats, loss=loss, signals=signals or {}, nonfinite_site=site)


SIGNALS = {"output_min": 0.0, "output_max": 7.1, "output_nonfinite": 0.0, "output_grad_nonfinite": 12.0}


def nonfinite(records):
    found = [f for f in diagnose(records) if f.kind == "nonfinite"]
    assert len(found) == 1, [str(f) for f in found]
    return found[0]


def test_a_finite_output_with_a_nonfinite_output_gradient_is_born_in_the_loss():
    f = nonfinite([rec(0, signals=SIGNALS)])
    assert f.layer == "fc2" and f.step == 0 and f.severity == "error"
    assert "born in the loss, after the output layer 'fc2', the model output in [0, 7.1]" in f.message
    assert "reaching 0" in f.message and "log_softmax" in f.message
    assert f.evidence["located_by"] == "output signals: the model output is finite, dL/d(output) is not"
    assert f.evidence["output_range"] == [0.0, 7.1]


def test_a_nonfinite_output_gradient_alone_is_the_loss_too():
    # the loss was not handed to the monitor: dL/d(output) shows it
    f = nonfinite([rec(0, loss=None, signals=SIGNALS)])
    assert f.layer == "fc2" and "born in the loss" in f.message


def test_without_the_output_signals_it_is_a_fallback_that_never_says_born():
    f = nonfinite([rec(0)])
    assert f.layer == "fc2" and "born" not in f.message
    assert "first seen in the loss, after the output layer 'fc2'" in f.message
    assert f.evidence["located_by"].startswith("fallback: only the loss is non-finite")
    assert "output_range" not in f.evidence


def test_an_infinite_loss_of_a_finite_output_is_an_overflow():
    f = nonfinite([rec(0, loss=math.inf)])
    assert f.layer == "fc2" and "the loss overflowed" in f.message


def test_the_replayed_loss_phase_is_named_at_the_output_layer():
    site = {"op": None, "module": None, "phase": "loss", "located_by": "replayed step 3"}
    f = nonfinite([rec(3, site=site, grad=math.nan, signals=SIGNALS)])
    assert f.layer == "fc2" and "born in the loss" in f.message and "it takes the output of 'fc2'" in f.message
    assert f.evidence["site"]["phase"] == "loss" and f.evidence["output_range"] == [0.0, 7.1]


@pytest.mark.parametrize("kw, why", [
    pytest.param({"weight": math.inf}, "weights", id="nonfinite_weights"),
    pytest.param({"grad": math.inf}, "gradients", id="nonfinite_gradients"),
])
def test_fixed_twin_a_nan_in_the_model_is_not_the_loss(kw, why):
    f = nonfinite([rec(0, signals=SIGNALS, **kw)])
    assert "in the loss" not in f.message and why in f.evidence["in"]


def test_fixed_twin_a_nonfinite_output_is_not_the_loss():
    f = nonfinite([rec(0, signals=dict(SIGNALS, output_nonfinite=4.0))])
    assert "in the loss" not in f.message


# --- end to end: AUTOTRAINER Improper_Activation (ReLU output, Keras categorical CE) -------
def _keras_categorical_ce(p, y):
    p = p / p.sum(1, keepdim=True)
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(F.one_hot(y, p.shape[1]).float() * torch.log(p)).sum(1).mean()


def _program(relu_output):
    torch.manual_seed(102)
    layers = [nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)]
    if relu_output:
        layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    g = torch.Generator().manual_seed(102)
    x = torch.randn(256, 2, generator=g) * 3
    y = torch.randint(0, 3, (256,), generator=g)
    loss_fn = _keras_categorical_ce if relu_output else F.cross_entropy
    return model, x, y, loss_fn


def test_reference_the_relu_output_program_has_a_nan_loss_and_finite_gradients():
    model, x, y, loss_fn = _program(True)
    out = model(x)
    assert bool((out.sum(1) == 0).any())  # a row of zeros: p / p.sum() is 0 / 0
    loss = loss_fn(out, y)
    loss.backward()
    assert math.isnan(loss.item())
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("relu_output", [True, False], ids=["relu_output", "fixed_twin_logits"])
def test_end_to_end_the_relu_output_is_named_and_its_fixed_twin_raises_nothing(relu_output):
    model, x, y, loss_fn = _program(relu_output)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    with quiet():
        with gradlens.watch(model, opt) as mon:
            for _ in range(6):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                mon.observe_loss(loss)
                loss.backward()
                opt.step()
    found = [f for f in mon.findings if f.kind == "nonfinite"]
    if not relu_output:
        assert [str(f) for f in mon.findings if f.is_problem] == []
        return
    (f,) = found
    assert f.step == 0 and f.layer == "4"  # the output Linear, under the output ReLU '5'
    assert "born in the loss" in f.message and "log_softmax" in f.message
