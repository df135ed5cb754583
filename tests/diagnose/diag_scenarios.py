"""The labelled scenario suite: planted training problems and healthy models.

Each :class:`Scenario` builds a small model on synthetic data made in code (fixed
seeds), and a ``train_step(i, observe_loss)`` closure that runs one training step
(forward, backward, optimizer step(s)) and hands the loss to ``observe_loss``.
Problems carry the kind that must be found and the layers that may be named as
the culprit (``culprits``), plus ``also`` kinds that are true consequences (an
exploding net also diverges). Healthy scenarios must raise nothing at warning level.

Used by ``tests/diagnose/test_scenarios.py`` and ``benchmarks/diagnosis_eval.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

TrainStep = Callable[[int, Callable[[torch.Tensor], None]], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[], Tuple[nn.Module, List[torch.optim.Optimizer], TrainStep]]
    steps: int = 30
    kind: Optional[str] = None                 # None: healthy
    culprits: FrozenSet[Optional[str]] = frozenset()
    also: FrozenSet[str] = frozenset()         # other kinds that are true consequences
    note: str = ""

    @property
    def healthy(self) -> bool:
        return self.kind is None


# ---------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------
def _data(n=256, d=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, classes, generator=g)
    y = (x @ w).argmax(1)
    return x, y


def _classifier_step(model, opts, x, y, batch=32, loss_fn=F.cross_entropy):
    n = x.shape[0]

    def step(i, observe):
        j = (i * batch) % n
        xb, yb = x[j:j + batch], y[j:j + batch]
        for o in opts:
            o.zero_grad()
        loss = loss_fn(model(xb), yb)
        observe(loss.detach())
        loss.backward()
        for o in opts:
            o.step()
    return step


@contextlib.contextmanager
def quiet():
    """Silence the monitor's finding logs and warnings inside the block (the tests read
    ``mon.findings``); the ``gradlens`` logger's level is restored after."""
    logger = logging.getLogger("gradlens")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def circles(n=512, seed=0):
    """Two noisy concentric circles (radius 1 and 0.5), labels ``(n, 1)`` floats in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 2 * math.pi
    y = (torch.arange(n) % 2).float()
    r = torch.where(y > 0, torch.full((n,), 0.5), torch.ones(n))
    x = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1) + 0.1 * torch.randn(n, 2, generator=g)
    return x, y[:, None]


def _mlp(widths, act, *, final=True):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2 or not final:
            layers.append(act())
    return nn.Sequential(*layers)


def _seed(s=0):
    torch.manual_seed(s)


# ---------------------------------------------------------------------------
# planted problems
# ---------------------------------------------------------------------------
def _deep_sigmoid():
    _seed(1)
    model = _mlp([16] + [32] * 12 + [4], nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _tiny_tanh():
    _seed(2)
    model = _mlp([16] + [64] * 6 + [4], nn.Tanh)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.01)
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _overscaled_relu():
    _seed(3)
    model = _mlp([16] + [64] * 8 + [4], nn.ReLU)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 4.0 / m.in_features ** 0.5)
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=1e-12)  # keep the planted init in place
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


class ReluRNN(nn.Module):
    """Linear(8, 32), a ReLU RNN whose recurrent matrix is orthogonal times ``radius``, Linear(32, 4)."""

    def __init__(self, radius):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.rnn = nn.RNN(32, 32, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(32, 4)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(32, 32))
            self.rnn.weight_hh_l0.copy_(radius * q)
            self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_ih_l0.zero_()

    def forward(self, x):
        h, _ = self.rnn(self.inp(x))
        return self.head(h[:, -1])


def _rnn(radius, lr=1e-9, T=40):
    def build():
        _seed(4)
        model = ReluRNN(radius)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(4)
        x = torch.randn(128, T, 8, generator=g)
        y = torch.randint(0, 4, (128,), generator=g)
        return model, [opt], _classifier_step(model, [opt], x, y)
    return build


class _Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def _log_negative():
    _seed(5)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), _Log(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


class _SqrtRelu(nn.Module):
    def forward(self, x):
        # sqrt(x * [x > 0]): finite forward; at the zeros, backward is inf * 0 = NaN
        return torch.sqrt(x * (x > 0))


def _sqrt_at_zero():
    # Forward is finite (sqrt(relu(z)) >= 0); backward of sqrt at 0 is inf, so the
    # NaN/Inf is born in the backward pass and flows into 'fc' and below.
    _seed(6)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), _SqrtRelu(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _dead_relu_bias():
    _seed(7)
    model = _mlp([16, 64, 64, 64, 4], nn.ReLU)
    with torch.no_grad():
        model[2].bias.fill_(-20.0)  # the ReLU after model.2 never fires
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _dead_head():
    # An auxiliary head whose output the loss multiplies by zero: its gradient is
    # exactly zero step after step.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(16, 32)
            self.head = nn.Linear(32, 4)
            self.aux = nn.Linear(32, 4)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.head(h) + 0.0 * self.aux(h)
    _seed(8)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _adam_lr_100x():
    _seed(9)
    model = _mlp([16, 64, 64, 4], nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)  # 100x the usual 1e-3
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _sgd_lr_100x():
    _seed(10)
    model = _mlp([16, 64, 64, 1], nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # 100x the usual 0.01
    x, _ = _data()
    y = x[:, :1] * 3.0

    def mse(out, target):
        return F.mse_loss(out, target)
    return model, [opt], _classifier_step(model, [opt], x, y, loss_fn=mse)


def _saturated_tanh():
    _seed(11)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    with torch.no_grad():
        model[2].weight.mul_(40.0)  # the Tanh at model.3 is pinned at +-1
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _saturated_sigmoid():
    _seed(12)
    model = nn.Sequential(nn.Linear(16, 64), nn.Sigmoid(), nn.Linear(64, 4))
    with torch.no_grad():
        model[0].weight.mul_(50.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


# ---------------------------------------------------------------------------
# healthy models
# ---------------------------------------------------------------------------
def _mlp_adam():
    _seed(20)
    model = _mlp([16, 128, 128, 128, 4], nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _tanh_mlp_sgd():
    _seed(21)
    model = _mlp([16, 64, 64, 64, 4], nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


def _resnet_bn():
    _seed(22)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        _Block(16), _Block(16), _Block(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(22)
    x = torch.randn(128, 3, 12, 12, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    return model, [opt], _classifier_step(model, [opt], x, y, batch=16)


class _Transformer(nn.Module):
    def __init__(self, vocab=50, d=32, frozen_embedding=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, 12, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 4)
        self.emb.weight.requires_grad_(not frozen_embedding)

    def forward(self, tokens):
        h = self.encoder(self.emb(tokens) + self.pos)
        return self.head(self.norm(h).mean(1))


def _tokens(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (256, 12), generator=g)
    y = (x[:, :6].float().mean(1) > x[:, 6:].float().mean(1)).long() + 2 * (x[:, 0] > 25).long()
    return x, y


def _transformer():
    _seed(23)
    model = _Transformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = _tokens(23)
    return model, [opt], _classifier_step(model, [opt], x, y)


def _frozen_embedding():
    _seed(24)
    model = _Transformer(frozen_embedding=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = _tokens(24)
    return model, [opt], _classifier_step(model, [opt], x, y)


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        return self.head(h[:, -1])


def _lstm():
    _seed(25)
    model = _LSTMNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = _tokens(25)
    return model, [opt], _classifier_step(model, [opt], x, y)


def _gan():
    _seed(26)
    gen = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    disc = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(26)
    real = torch.randn(512, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0])
    z_all = torch.randn(512, 8, generator=g)
    bce = F.binary_cross_entropy_with_logits

    def step(i, observe):
        j = (i * 32) % 512
        xr, z = real[j:j + 32], z_all[j:j + 32]
        ones, zeros = torch.ones(32, 1), torch.zeros(32, 1)
        opt_d.zero_grad()
        fake = gen(z).detach()
        d_loss = bce(disc(xr), ones) + bce(disc(fake), zeros)
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = bce(disc(gen(z)), ones)
        observe(g_loss.detach())
        g_loss.backward()
        opt_g.step()
    return model, [opt_g, opt_d], step


def _residual_mlp():
    # the demo's healthy network: pre-norm residual MLP
    from gradlens._demo_models import ResidualMLP
    _seed(27)
    model = ResidualMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data(d=16)
    return model, [opt], _classifier_step(model, [opt], x, y)


def _zero_init_branches():
    # zero-initialised residual branch outputs and head (ReZero / LoRA-B / diffusion style)
    _seed(28)
    model = ResidualMLPZero()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data(d=16)
    return model, [opt], _classifier_step(model, [opt], x, y)


class ResidualMLPZero(nn.Module):
    def __init__(self, width=64, depth=4):
        super().__init__()
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
                                    for _ in range(depth))
        self.head = nn.Linear(width, 4)
        with torch.no_grad():
            for b in self.blocks:
                b[2].weight.zero_()
                b[2].bias.zero_()
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


def _deep_relu_he_sgd():
    _seed(29)
    model = _mlp([16] + [64] * 8 + [4], nn.ReLU)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _relu6_mlp():
    # ReLU6 is Hardtanh(0, 6): about half its outputs sit at the lower limit by design
    _seed(30)
    model = _mlp([16, 64, 64, 64, 4], nn.ReLU6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data()
    return model, [opt], _classifier_step(model, [opt], x, y)


def _plain_cnn():
    _seed(31)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 3 * 3, 4),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(31)
    x = torch.randn(128, 3, 12, 12, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 2].mean((1, 2)) > 0).long()
    return model, [opt], _classifier_step(model, [opt], x, y, batch=16)


_STACK12 = frozenset(str(i) for i in range(0, 24, 2))
_STACK6 = frozenset(str(i) for i in range(0, 14, 2))
_STACK8 = frozenset(str(i) for i in range(0, 18, 2))

PROBLEMS: Sequence[Scenario] = (
    Scenario("deep_sigmoid_mlp", _deep_sigmoid, kind="vanishing", culprits=_STACK12,
             also=frozenset({"saturation"}),
             note="12 sigmoid layers: the gradient shrinks ~4x per layer"),
    Scenario("tiny_init_tanh", _tiny_tanh, kind="vanishing", culprits=_STACK6,
             note="weights N(0, 0.01): the gradient shrinks ~0.08x per layer"),
    Scenario("overscaled_relu", _overscaled_relu, kind="exploding", culprits=_STACK8,
             also=frozenset({"divergence", "update_ratio"}),
             note="weights N(0, 4/sqrt(fan_in)): the gradient grows ~2.8x per layer"),
    Scenario("rnn_radius_2", _rnn(2.0), kind="exploding", culprits=frozenset({"rnn"}),
             also=frozenset({"divergence", "update_ratio"}),
             note="ReLU RNN, recurrent weight with spectral radius 2 over 40 steps"),
    Scenario("log_of_negative", _log_negative, kind="nonfinite", culprits=frozenset({"3"}),
             also=frozenset({"divergence"}), note="log() of a Linear output"),
    # '3': the sqrt module, whose backward the watch's replay names; '2': the fallback
    # without a replay (the output-most layer with NaN gradients), the reference's
    Scenario("sqrt_at_zero_backward", _sqrt_at_zero, kind="nonfinite", culprits=frozenset({"3", "2"}),
             also=frozenset({"divergence", "dead_units"}),
             note="sqrt(z * [z > 0]): finite forward, NaN backward at the zeros"),
    Scenario("dead_relu_bias", _dead_relu_bias, kind="dead_units", culprits=frozenset({"3", "2"}),
             note="bias -20 before a ReLU"),
    Scenario("dead_aux_head", _dead_head, kind="dead_units", culprits=frozenset({"aux"}),
             note="a head the loss multiplies by zero"),
    # every layer gets the 100x lr: the culprit is the learning rate, no layer (as sgd_lr_100x)
    Scenario("adam_lr_100x", _adam_lr_100x, kind="update_ratio", culprits=frozenset({None}),
             also=frozenset({"dead_units", "divergence", "exploding"}), note="Adam lr 0.1"),
    Scenario("sgd_lr_100x", _sgd_lr_100x, kind="divergence", culprits=frozenset({None}),
             also=frozenset({"update_ratio", "exploding", "nonfinite", "dead_units", "saturation", "scale"}),
             note="SGD lr 1.0 on a regression"),
    Scenario("saturated_tanh", _saturated_tanh, kind="saturation", culprits=frozenset({"3"}),
             also=frozenset({"vanishing"}), note="weights x40 before a Tanh"),
    Scenario("saturated_sigmoid", _saturated_sigmoid, kind="saturation", culprits=frozenset({"1"}),
             also=frozenset({"vanishing"}), note="weights x50 before a Sigmoid"),
)

HEALTHY: Sequence[Scenario] = (
    Scenario("mlp_adam", _mlp_adam),
    Scenario("tanh_mlp_sgd_momentum", _tanh_mlp_sgd),
    Scenario("resnet_cnn_batchnorm", _resnet_bn, steps=20),
    Scenario("transformer_encoder", _transformer),
    Scenario("frozen_embedding", _frozen_embedding),
    Scenario("lstm", _lstm),
    Scenario("gan_two_optimizers", _gan),
    Scenario("rnn_radius_0_9", _rnn(0.9, lr=0.01)),
    Scenario("residual_mlp_layernorm", _residual_mlp),
    Scenario("zero_init_branches_adam", _zero_init_branches),
    Scenario("deep_relu_he_init_sgd", _deep_relu_he_sgd),
    Scenario("relu6_mlp_adam", _relu6_mlp),
    Scenario("plain_cnn_maxpool_dropout", _plain_cnn),
)

ALL: Sequence[Scenario] = tuple(PROBLEMS) + tuple(HEALTHY)


def run_reference(sc: Scenario, *, steps: Optional[int] = None):
    """Train ``sc`` under the test-only ReferenceRecorder; return its recorder."""
    from diag_recorder import ReferenceRecorder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster, and immune to a busy machine
    try:
        model, opts, step = sc.build()
        rec = ReferenceRecorder(model, opts)
        try:
            for i in range(steps or sc.steps):
                step(i, rec.observe_loss)
        finally:
            rec.close()
    finally:
        torch.set_num_threads(threads)
    return rec


def train_watched(model, opt, x, y, loss_fn, steps, *, batch=None, on_loss=None, **watch_options):
    """Train ``model`` for ``steps`` steps of ``opt`` under ``gradlens.watch(model, opt,
    **watch_options)``, inside :func:`quiet`, each loss observed; return the (closed) monitor.

    Step ``i`` reads ``x[j:j + batch]`` with ``j = i * batch % len(x)`` (the whole of ``x``
    when ``batch`` is None); ``on_loss(loss)`` sees each loss after the monitor.
    """
    import gradlens

    with quiet():
        with gradlens.watch(model, opt, **watch_options) as mon:
            for i in range(steps):
                if batch is None:
                    xb, yb = x, y
                else:
                    j = (i * batch) % x.shape[0]
                    xb, yb = x[j:j + batch], y[j:j + batch]
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                mon.observe_loss(loss)
                if on_loss is not None:
                    on_loss(loss)
                loss.backward()
                opt.step()
    return mon


def watch_available() -> bool:
    """Whether ``gradlens.watch`` (the monitor) is importable in this checkout."""
    import importlib.util

    return importlib.util.find_spec("gradlens.monitor") is not None


def run_watch(sc: Scenario, *, steps: Optional[int] = None):
    """Train ``sc`` under the real ``gradlens.watch``; return an object with
    ``findings``, ``detected_at`` and ``logged_steps`` like :func:`run_reference`."""
    import gradlens

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logger = logging.getLogger("gradlens")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the monitor logs each finding; we count them instead
    try:
        model, opts, step = sc.build()
        detected = {}

        def on_finding(f):
            detected[id(f)] = f.last_step

        opt_arg = opts[0] if len(opts) == 1 else opts
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ... and warns once per finding
            # update_every=1, activations=1: the suite evaluates the rules on every step's
            # statistics (not on the default cadences of those two)
            with gradlens.watch(model, opt_arg, activations=1, update_every=1,
                                on_finding=on_finding) as mon:
                for i in range(steps or sc.steps):
                    step(i, mon.observe_loss)
                findings = list(mon.findings)

        class _Run:
            pass

        run = _Run()
        run.findings = findings
        run.detected_at = detected
        run.logged_steps = int(mon.dataframe()["step"].nunique())
        return run
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)
