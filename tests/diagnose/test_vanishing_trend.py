"""Vanishing gradients that AUTOTRAINER's release test (ratio <= 1e-3 *and* first <= 1e-4 on
layer norms) missed: AUTOTRAINER's own kernel norms, and the trend test of its first version.

* a shallow sigmoid net (5 Dense(16, sigmoid), He uniform, Adam 1e-3, loss flat at ln 2):
  the layer ratio sits around 1e-3, the kernels' ratio is 4e-4;
* a LeNet with 2 extra sigmoid Dense layers: ratio 8e-4 and a first-layer norm of 5e-4,
  above 1e-4, but the gradient falls at every layer going backward.

Their fixed twins (ReLU, AUTOTRAINER's repair) raise nothing.
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

from diag_scenarios import circles as _circles, quiet

LAYERS = ["fc1", "fc2", "fc3"]


def rec(step, layer_grads, param_grads=None):
    params = {"grad_norm": dict(param_grads)} if param_grads else {}
    return StepRecord(step, list(LAYERS), {"grad_norm": dict(layer_grads)}, param_stats=params)


def _kernels(k, b):
    out = {}
    for name in LAYERS:
        out[f"{name}.weight"], out[f"{name}.bias"] = k[name], b[name]
    return out


def test_kernel_norms_reveal_a_shrink_that_biases_hide():
    k = {"fc1": 5e-5, "fc2": 2e-3, "fc3": 0.1}
    b = {"fc1": 3e-4, "fc2": 1e-2, "fc3": 0.01}
    layer = {n: math.hypot(k[n], b[n]) for n in LAYERS}  # ratio 3e-3, first 3e-4: nothing
    assert [f.kind for f in diagnose([rec(i, layer) for i in range(3)])] == []
    (f,) = diagnose([rec(i, layer, _kernels(k, b)) for i in range(3)])
    assert f.kind == "vanishing" and f.value == pytest.approx(5e-4, rel=0.01)
    assert f.evidence["first_kernel_grad_norm"] == pytest.approx(5e-5)


def test_a_layer_with_only_a_bias_falls_back_to_its_layer_norm():
    params = {"fc1.bias": 1e-6, "fc2.weight": 1e-2, "fc3.weight": 1.0}
    (f,) = diagnose([rec(i, {"fc1": 1e-6, "fc2": 1e-2, "fc3": 1.0}, params) for i in range(3)])
    assert f.kind == "vanishing" and f.evidence["first_kernel_grad_norm"] == pytest.approx(1e-6)


# --- end to end ----------------------------------------------------------------------


def _shallow(act):
    torch.manual_seed(500)
    widths = [2] + [16] * 5 + [1]
    layers = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu")
            lin.bias.zero_()
        layers += [lin, act() if i < len(widths) - 2 else nn.Sigmoid()]
    model = nn.Sequential(*layers)
    x, y = _circles(seed=500)

    def loss_fn(p, t):
        p = p.clamp(1e-7, 1 - 1e-7)
        return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), x, y, loss_fn, 64


def _lenet(act):
    torch.manual_seed(240)
    layers = [nn.Conv2d(1, 6, 3, padding=1), act(), nn.MaxPool2d(2),
              nn.Conv2d(6, 16, 3, padding=1), act(), nn.MaxPool2d(2), nn.Flatten(),
              nn.Linear(16 * 3 * 3, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, 84), act(),
              nn.Linear(84, 10)]
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    g = torch.Generator().manual_seed(240)
    templates = (torch.rand(10, 1, 12, 12, generator=g) > 0.6).float()
    y = torch.randint(0, 10, (384,), generator=g)
    x = (templates[y] * 0.8 + 0.2 * torch.rand(384, 1, 12, 12, generator=g)).clamp(0, 1)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), x, y, F.cross_entropy, 32


def _train(model, opt, x, y, loss_fn, batch, steps=30):
    with quiet():
        with gradlens.watch(model, opt) as mon:
            for i in range(steps):
                j = (i * batch) % x.shape[0]
                opt.zero_grad()
                loss = loss_fn(model(x[j:j + batch]), y[j:j + batch])
                mon.observe_loss(loss)
                loss.backward()
                opt.step()
    return [f for f in mon.findings if f.is_problem]


@pytest.mark.parametrize("build, culprits", [
    pytest.param(_shallow, {"0", "2", "4", "6", "8"}, id="shallow_sigmoid"),
    pytest.param(_lenet, {"0", "3", "7", "9", "11"}, id="lenet_2_extra_sigmoid_dense"),
])
def test_missed_vanishing_is_found(build, culprits):
    found = _train(*build(nn.Sigmoid))
    van = [f for f in found if f.kind == "vanishing"]
    assert van and van[0].step == 0 and van[0].layer in culprits, [str(f) for f in found]


@pytest.mark.parametrize("build", [pytest.param(_shallow, id="shallow_relu"), pytest.param(_lenet, id="lenet_relu")])
def test_fixed_twins_raise_nothing(build):
    assert [str(f) for f in _train(*build(nn.ReLU))] == []
