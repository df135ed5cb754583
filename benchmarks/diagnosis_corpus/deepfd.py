"""Stack Overflow programs of DeepFD's benchmark, ported to torch, by post id.

Source: Cao, Li, Zhang, Yang, Chen, Xu, Pei, "DeepFD: Automated Fault Diagnosis and
Localization for Deep Learning Programs", ICSE 2022; github.com/ArabelaTso/DeepFD,
``Benchmark/Benchmark-with-patches.xlsx`` (post id, patch, ground-truth fault types:
Activation, Loss, Learning rate, Missing preprocess, ...) and, where present,
``Benchmark/Subjects/<post>/*/origin.py``; the programs of the rows ported in session 3
(rows 2-30, in the table's order) are DeepLocalize's copies of the posts' buggy and correct
code (Wardat, Le, Rajan, "DeepLocalize", ICSE 2021; github.com/Wardat-ISU/DeepLocalize,
``Benchmark/StackOverflow/<post>/``). Each case names the post
(stackoverflow.com/questions/<id>); its docstring-line says what the patch changes.
DeepFD labels the *cause*; the cases are labelled with the *symptom* the program shows
without gradlens (loss flat, exactly zero gradients, NaN, targets out of the output's
range), the cause kept in ``cause``. Data is synthetic with the post's shapes (MNIST:
12x12 template digits; tabular data: Gaussian features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diagnosis_corpus.case import (
    Case, digits, keras_bce, keras_categorical_ce, mlp, mlp_program, seed, train_step,
)

SO = "stackoverflow.com/questions/"
BENCH = "DeepFD Benchmark-with-patches.xlsx"


class Softmax1(nn.Softmax):
    """``Dense(1, activation='softmax')``: a softmax over a single unit (always 1)."""

    def __init__(self):
        super().__init__(dim=1)


def _tabular(n=512, d=8, s=0):
    g = torch.Generator().manual_seed(s)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    return x, g, w


# --- 48385830: Dense(30) and Dense(10) without activations, N(0,1) kernels and biases, MSE, SGD lr 3.0
def _p48385830(fixed):
    def build():
        seed(301)
        model = nn.Sequential(nn.Flatten(), nn.Linear(144, 30), nn.Sigmoid() if fixed else nn.Identity(),
                              nn.Linear(30, 10))
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0, 1)
                    m.bias.normal_(0, 1)
        opt = torch.optim.SGD(model.parameters(), lr=3.0)
        x, y = digits(512, s=301)
        if fixed:  # ++ softmax, ++ categorical_crossentropy
            return model, opt, train_step(model, opt, x, y, F.cross_entropy)
        return model, opt, train_step(model, opt, x, F.one_hot(y, 10).float(), F.mse_loss)
    return build


# --- 48251943: regression to targets in [-1, 1] with Dense(1, relu) output (fix: tanh)
def _p48251943(out_act):
    def data():
        x, _, w = _tabular(s=302)
        return x, torch.tanh(x @ w / 2)
    return mlp_program(302, [8, 32, 32, 1], nn.ReLU, data, F.mse_loss, lr=1e-3, out_act=out_act)


# --- 33969059: Dense(1, softmax) output for regression (fix: linear): softmax over one unit is 1
def _p33969059(out_act):
    def data():
        x, _, w = _tabular(s=303)
        return x, x @ w
    return mlp_program(303, [8, 16, 16, 1], nn.ReLU, data, F.mse_loss, lr=1e-3, out_act=out_act)


# --- 42800203: Dense(1, softmax) output for binary classification under BCE (fix: sigmoid)
def _p42800203(out_act):
    def data():
        x, _, w = _tabular(s=304)
        return x, (x @ w > 0).float()
    return mlp_program(304, [8, 16, 16, 1], nn.ReLU, data, keras_bce, lr=1e-3, out_act=out_act)


# --- 58609115: categorical_crossentropy on a 1-unit sigmoid output (fix: binary_crossentropy)
def _p58609115(loss):
    def data():
        x, _, w = _tabular(s=305)
        return x, (x @ w > 0).float()
    return mlp_program(305, [8, 16, 16, 1], nn.ReLU, data, loss, lr=1e-3, out_act=nn.Sigmoid)


# --- 48221692: regression with a Dense(1, sigmoid) output (fix: linear); targets ~ N(0, 30^2)
def _p48221692(out_act):
    def data():
        x, _, w = _tabular(s=306)
        return x, 10 * (x @ w)
    return mlp_program(306, [8, 32, 32, 1], nn.ReLU, data, F.mse_loss, lr=1e-2, out_act=out_act)


# --- 50079585: Dense(1) + sigmoid + binary_crossentropy on labels {0, 1, 2} (fix: Dense(3), softmax, CE)
def _p50079585(fixed):
    def build():
        seed(307)
        model = mlp([8, 32, 32, 3 if fixed else 1], nn.ReLU, out_act=None if fixed else nn.Sigmoid)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        x, g, _ = _tabular(s=307)
        y = torch.bucketize(x[:, 0] + x[:, 1], torch.tensor([-0.7, 0.7]))
        if fixed:
            return model, opt, train_step(model, opt, x, y, F.cross_entropy)
        return model, opt, train_step(model, opt, x, y[:, None].float(), keras_bce)
    return build


# --- 47352366: Dense(10, relu) output under categorical_crossentropy (fix: softmax)
def _p47352366(fixed):
    def build():
        seed(308)
        model = nn.Sequential(nn.Flatten(), nn.Linear(144, 64), nn.ReLU(), nn.Linear(64, 10),
                              nn.Identity() if fixed else nn.ReLU())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = digits(512, s=308)
        loss = F.cross_entropy if fixed else keras_categorical_ce
        return model, opt, train_step(model, opt, x, y, loss, batch=50)
    return build


# --- 31556268 (DeepFD Subjects/31556268/origin.py): XOR, 2-4-1 sigmoid, MAE, SGD lr 0.05 momentum 0.11
def _p31556268():
    def build():
        seed(309)
        model = mlp([2, 4, 1], nn.Sigmoid, out_act=nn.Sigmoid)
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.11, nesterov=True)
        x = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
        y = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
        return model, opt, train_step(model, opt, x, y, F.l1_loss, batch=4)
    return build


# --- 52800582: y = x^4 on x in [-100, 100], sigmoid hidden layer (fix: StandardScaler on x and y)
def _p52800582(scaled):
    def build():
        seed(310)
        model = nn.Sequential(nn.Linear(1, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.ELU(), nn.Linear(64, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(310)
        x = torch.rand(512, 1, generator=g) * 200 - 100
        y = x ** 4
        if scaled:
            x, y = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
        return model, opt, train_step(model, opt, x, y, F.mse_loss)
    return build


# --- 37624102: SGD lr 0.1, momentum 0.9, nesterov (fix: lr 0.01); "the loss does decrease" after the fix
def _p37624102(lr):
    def build():
        seed(311)
        model = nn.Sequential(nn.Flatten(), nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                              nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        x, y = digits(512, s=311)
        x = x * 255  # raw pixel values, as the post's images
        return model, opt, train_step(model, opt, x, y, F.cross_entropy)
    return build


# --- FacialKeypointsDetection (DeepFD row 49): Adam(lr=0.1) with MSE on a keypoint-regression CNN
def _facial_keypoints(lr):
    def build():
        seed(312)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(16 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 6))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        x, c = digits(384, classes=6, s=312)
        y = F.one_hot(c, 6).float() * 2 - 1  # keypoint coordinates scaled to [-1, 1]
        return model, opt, train_step(model, opt, x, y, F.mse_loss)
    return build


# --- 42514960: autoencoder with ReLU everywhere, bottleneck included (fix: tanh)
def _p42514960(act):
    def data():
        g = torch.Generator().manual_seed(313)
        z = torch.randn(512, 4, generator=g)
        x = torch.tanh(z @ torch.randn(4, 16, generator=g))  # features in [-1, 1]
        return x, x
    return mlp_program(313, [16, 32, 32, 4, 32, 32, 16], act, data, F.mse_loss, lr=1e-3, out_act=act)


CASES = (
    Case("so48385830_no_activation_lr3", _p48385830(False), source="deepfd", quick=True,
         cite=f"{SO}48385830 ({BENCH} row 1): Dense(30)/Dense(10) without activations, N(0,1) kernels "
              "and biases, MSE, SGD lr 3.0; DeepLocalize: loss inf at batch 2",
         bugs=("lr_too_high", "nonfinite"), also=frozenset({"exploding", "divergence", "dead_units"}),
         cause="Activation, Loss, Learning rate", twin="so48385830_fixed"),
    Case("so48385830_fixed", _p48385830(True), source="deepfd",
         cite=f"{SO}48385830 patched: ++ sigmoid, ++ softmax, ++ categorical_crossentropy (lr 3.0 kept)",
         twin="so48385830_no_activation_lr3"),
    Case("so48251943_relu_output", _p48251943(nn.ReLU), source="deepfd",
         cite=f"{SO}48251943 ({BENCH} row 5): Dense(1, relu) output for targets in [-1, 1]; patch: tanh",
         bugs=("unreachable_output",), culprits=frozenset({"4", "5"}), also=frozenset({"dead_units", "stalled"}),
         cause="Activation", twin="so48251943_fixed"),
    Case("so48251943_fixed", _p48251943(nn.Tanh), source="deepfd",
         cite=f"{SO}48251943 patched: Dense(1, tanh)", twin="so48251943_relu_output"),
    Case("so33969059_softmax_regression", _p33969059(Softmax1), source="deepfd", quick=True,
         cite=f"{SO}33969059 ({BENCH} row 7): Dense(1, softmax) output for regression (always 1: every "
              "gradient is exactly 0); patch: linear",
         bugs=("zero_gradient",), culprits=frozenset({"4", "5"}), also=frozenset({"stalled"}),
         cause="Activation", twin="so33969059_fixed"),
    Case("so33969059_fixed", _p33969059(None), source="deepfd",
         cite=f"{SO}33969059 patched: Dense(1, linear)", twin="so33969059_softmax_regression"),
    Case("so42800203_softmax_binary", _p42800203(Softmax1), source="deepfd",
         cite=f"{SO}42800203 ({BENCH} row 41): Dense(1, softmax) output under binary_crossentropy; patch: sigmoid",
         bugs=("zero_gradient",), culprits=frozenset({"4", "5"}), also=frozenset({"stalled"}),
         cause="Activation", twin="so42800203_fixed"),
    Case("so42800203_fixed", _p42800203(nn.Sigmoid), source="deepfd",
         cite=f"{SO}42800203 patched: Dense(1, sigmoid)", twin="so42800203_softmax_binary"),
    Case("so58609115_categorical_ce_one_unit", _p58609115(keras_categorical_ce), source="deepfd",
         cite=f"{SO}58609115 ({BENCH} row 29): categorical_crossentropy on a 1-unit sigmoid output "
              "(p/sum(p) = 1: loss and gradient exactly 0); patch: binary_crossentropy",
         bugs=("zero_gradient",), also=frozenset({"stalled"}), cause="Loss", twin="so58609115_fixed"),
    Case("so58609115_fixed", _p58609115(keras_bce), source="deepfd",
         cite=f"{SO}58609115 patched: binary_crossentropy", twin="so58609115_categorical_ce_one_unit"),
    Case("so48221692_sigmoid_regression", _p48221692(nn.Sigmoid), source="deepfd", quick=True,
         cite=f"{SO}48221692 ({BENCH} row 20): Dense(1, sigmoid) output for regression targets ~N(0, 30^2); "
              "patch: linear",
         bugs=("unreachable_output",), culprits=frozenset({"4", "5"}),
         also=frozenset({"saturation", "stalled", "vanishing"}), cause="Activation", twin="so48221692_fixed"),
    Case("so48221692_fixed", _p48221692(None), source="deepfd",
         cite=f"{SO}48221692 patched: Dense(1, linear)", twin="so48221692_sigmoid_regression"),
    Case("so50079585_bce_three_classes", _p50079585(False), source="deepfd",
         cite=f"{SO}50079585 ({BENCH} row 21): Dense(1)+sigmoid+binary_crossentropy on labels {{0,1,2}} "
              "(the loss goes negative); patch: Dense(3), softmax, categorical_crossentropy",
         bugs=("unreachable_output",), culprits=frozenset({"4", "5"}), also=frozenset({"saturation", "stalled"}),
         cause="Activation, Loss, Layer properties", twin="so50079585_fixed"),
    Case("so50079585_fixed", _p50079585(True), source="deepfd",
         cite=f"{SO}50079585 patched: Dense(3), softmax, categorical_crossentropy", twin="so50079585_bce_three_classes"),
    Case("so47352366_relu_output_ce", _p47352366(False), source="deepfd", quick=True,
         cite=f"{SO}47352366 ({BENCH} row 25): Dense(10, relu) output under categorical_crossentropy "
              "(Keras' p/sum(p) is 0/0 on a row of zeros); patch: softmax",
         bugs=("nonfinite",), culprits=frozenset({"3", "4"}), also=frozenset({"dead_units", "divergence"}),
         cause="Activation", twin="so47352366_fixed"),
    Case("so47352366_fixed", _p47352366(True), source="deepfd",
         cite=f"{SO}47352366 patched: Dense(10, softmax)", twin="so47352366_relu_output_ce"),
    Case("so31556268_xor_mae", _p31556268(), source="deepfd",
         cite=f"{SO}31556268 (DeepFD Benchmark/Subjects/31556268/origin.py): XOR, 2-4-1 sigmoid, "
              "mean_absolute_error, SGD lr 0.05 momentum 0.11: the loss stays flat; patch: mse, lr 0.1, "
              "more epochs",
         bugs=("slow_convergence",), also=frozenset({"vanishing", "update_ratio"}),
         cause="Loss, Epoch, Learning rate", steps=150),  # the fix needs ~1e4 epochs: no fixed twin
    Case("so52800582_unscaled_x4", _p52800582(False), source="deepfd",
         cite=f"{SO}52800582 ({BENCH} row 17): y = x^4 on x in [-100, 100] through a sigmoid layer "
              "(the answer: the sigmoid saturates, outputs up to 1e8); patch: StandardScaler on x and y",
         bugs=("saturated_activation", "slow_convergence"), culprits=frozenset({"0", "1"}),
         also=frozenset({"vanishing", "exploding", "divergence"}), cause="Missing preprocess",
         twin="so52800582_fixed"),
    Case("so52800582_fixed", _p52800582(True), source="deepfd",
         cite=f"{SO}52800582 patched: x and y standardised", twin="so52800582_unscaled_x4"),
    Case("so37624102_sgd_lr_0_1", _p37624102(0.1), source="deepfd",
         cite=f"{SO}37624102 ({BENCH} row 34): SGD lr 0.1 momentum 0.9 nesterov on raw pixels; "
              "patch: lr 0.01 ('the loss does decrease')",
         bugs=("lr_too_high",), also=frozenset({"divergence", "exploding", "dead_units", "nonfinite"}),
         cause="Learning rate"),
    Case("deepfd_facial_keypoints_adam_0_1", _facial_keypoints(0.1), source="deepfd",
         cite=f"{BENCH} row 49 (FacialKeypointsDetection, GitHub): Adam(lr=0.1) with MSE, DeepDiagnosis "
              "'MDL' (model does not learn); patch: another optimizer",
         bugs=("lr_too_high",), also=frozenset({"dead_units", "divergence", "stalled"}),
         cause="Optimizer", twin="deepfd_facial_keypoints_fixed"),
    Case("deepfd_facial_keypoints_fixed", _facial_keypoints(1e-3), source="deepfd",
         cite=f"{BENCH} row 49 with Adam at its default lr 1e-3", twin="deepfd_facial_keypoints_adam_0_1"),
    Case("so42514960_relu_autoencoder", _p42514960(nn.ReLU), source="deepfd",
         cite=f"{SO}42514960 ({BENCH} row 40): autoencoder with ReLU in every layer, bottleneck and output "
              "included, on features in [-1, 1]; patch: tanh",
         bugs=("unreachable_output",), culprits=frozenset({"10", "11"}),
         also=frozenset({"dead_units", "stalled"}), cause="Activation", twin="so42514960_fixed"),
    Case("so42514960_fixed", _p42514960(nn.Tanh), source="deepfd",
         cite=f"{SO}42514960 patched: tanh in every layer", twin="so42514960_relu_autoencoder"),
)


# ---------------------------------------------------------------------------
# Session 3: the next rows of Benchmark-with-patches.xlsx, in the table's order (rows 2, 4, 6, 8,
# 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 22, 23, 24, 26, 27, 28, 30), ported from DeepLocalize's copies of the
# posts' programs (github.com/Wardat-ISU/DeepLocalize, Benchmark/StackOverflow/<post>/
# {Buggy,Correct} Code/*.py; DeepFD's table cites DeepLocalize's results for the same posts).
# Rows were taken in order, not chosen by what gradlens reports; the rows left out say why.
# ---------------------------------------------------------------------------
DL = "github.com/Wardat-ISU/DeepLocalize Benchmark/StackOverflow/"


def _multilabel(n=600, d=20, k=3, s=0, unlabeled=False):
    """sklearn ``make_multilabel_classification(n_features=20, n_classes=3)``: bag-of-words counts
    (documents of 50 words drawn from the labels' word distributions), multi-hot labels;
    ``unlabeled``: a document may have no label (its words then come from a background distribution)."""
    g = torch.Generator().manual_seed(s)
    words = torch.rand(k + 1, d, generator=g) ** 3
    words = words / words.sum(1, keepdim=True)
    y = (torch.rand(n, k, generator=g) < 0.5).float()
    if not unlabeled:
        y[y.sum(1) == 0, 0] = 1.0
    none = (y.sum(1, keepdim=True) == 0).float()
    mix = (y @ words[:k] + none * words[k]) / (y.sum(1, keepdim=True) + none)
    x = torch.stack([torch.bincount(torch.multinomial(mix[i], 50, replacement=True, generator=g), minlength=d)
                     for i in range(n)]).float()
    return x, y


def _keras_init(model: nn.Module, kind: str) -> nn.Module:
    """Keras 1 ``init='uniform'`` / ``'normal'``: U(-0.05, 0.05) / N(0, 0.05) kernels; Keras 2's
    default ``'glorot'`` (glorot_uniform): Xavier-uniform kernels; zero biases in each case. The
    layers are built first and re-initialised after, in order (the RNG draws the cases' numbers
    came from; :func:`mlp`'s ``init`` draws per layer as it builds)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                if kind == "uniform":
                    m.weight.uniform_(-0.05, 0.05)
                elif kind == "glorot":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    m.weight.normal_(0.0, 0.05)
                m.bias.zero_()
    return model


# --- 44164749 (row 2): MNIST MLP, softmax + categorical_crossentropy, SGD lr 0.01 nesterov, 5 epochs
def _p44164749(lr):
    def build():
        seed(314)
        model = nn.Sequential(nn.Flatten(), nn.Linear(144, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 64),
                              nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10), nn.Softmax(dim=1))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        x, y = digits(512, s=314)
        return model, opt, train_step(model, opt, x, y, keras_categorical_ce, batch=128)
    return build


# --- 50306988 (row 4): two uniform clusters, Dense(2, sigmoid) + Dense(1, sigmoid), BCE, Adam 1e-3
def _p50306988(lr):
    def data():
        g = torch.Generator().manual_seed(315)
        a = 0.2 + 0.2 * torch.rand(100, 2, generator=g)
        b = 0.5 + 0.2 * torch.rand(100, 2, generator=g)
        order = torch.randperm(200, generator=g)
        return torch.cat([a, b])[order], torch.cat([torch.zeros(100, 1), torch.ones(100, 1)])[order]
    return mlp_program(315, [2, 2, 1], nn.Sigmoid, data, keras_bce, lr=lr, out_act=nn.Sigmoid, batch=32)


# --- 38648195 (row 6): make_multilabel_classification, softmax output under MSE, SGD 0.01
def _p38648195(fixed):
    def build():
        seed(316)
        model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 20), nn.ReLU(),
                              nn.Dropout(0.5), nn.Linear(20, 3), nn.Sigmoid() if fixed else nn.Softmax(dim=1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = _multilabel(s=316)
        return model, opt, train_step(model, opt, x, y, keras_bce if fixed else F.mse_loss, batch=20)
    return build


# --- 55328966 (row 8): raw pixels 0-255, Dense(784) + Dense(50, relu) + Dense(10, sigmoid), CE, GD 1e-4
def _p55328966(fixed):
    def build():
        seed(317)
        model = nn.Sequential(nn.Flatten(), nn.Linear(144, 144), nn.Linear(144, 50), nn.ReLU(), nn.Linear(50, 10),
                              nn.Softmax(dim=1) if fixed else nn.Sigmoid())
        # DeepFD's patch: /255, softmax, and Adam(learning_rate=alpha) ("makes the learning faster")
        opt = (torch.optim.Adam if fixed else torch.optim.SGD)(model.parameters(), lr=1e-4)
        x, y = digits(512, s=317)
        return model, opt, train_step(model, opt, x if fixed else x * 255, y, keras_categorical_ce)
    return build


# --- 34311586 (row 9): XOR-like, sigmoid 2-3, Dense(1) + softmax, MSE, SGD lr 0.001
def _p34311586():
    def build():
        seed(318)
        model = _keras_init(mlp([2, 2, 3, 1], nn.Sigmoid, out_act=Softmax1), "uniform")
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, nesterov=True)
        x = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        y = torch.tensor([[0.0], [0.0], [1.0], [1.0], [0.0], [0.0]])
        return model, opt, train_step(model, opt, x, y, F.mse_loss, batch=6)
    return build


# --- 31880720 (row 10): all-ones vs all-zeros rows, Dense(1) + softmax, BCE, RMSprop, batch 1
def _p31880720(fixed):
    def build():
        seed(319)
        model = nn.Sequential(nn.Linear(128, 50), nn.ReLU(), nn.ReLU(), nn.Dropout(0.2), nn.Linear(50, 50), nn.ReLU(),
                              nn.Dropout(0.2), nn.Linear(50, 1), nn.Sigmoid() if fixed else Softmax1())
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        y = (torch.arange(256) % 2).float()[:, None]
        x = y.expand(256, 128).clone()
        return model, opt, train_step(model, opt, x, y, keras_bce, batch=1)
    return build


# --- 39525358 (row 11): 3 unscaled features, Dense(12, relu) + Dense(3, relu) + Dense(1, sigmoid), batch 1
def _p39525358(fixed):
    def build():
        seed(320)
        g = torch.Generator().manual_seed(320)
        # the post's CSV is not published; the fix (StandardScaler) says its features are far from unit
        # scale: three features of scale 1e2-1e3, the label a linear rule on them
        x = torch.randn(512, 3, generator=g) * torch.tensor([300.0, 50.0, 120.0]) + torch.tensor([1500.0, 200.0, 600.0])
        z = (x - x.mean(0)) / x.std(0)
        y = ((z @ torch.tensor([1.0, -0.7, 0.5])) > 0).float()[:, None]
        if fixed:
            x = z
        model = _keras_init(mlp([3, 12, 3, 1], nn.ReLU, out_act=nn.Sigmoid), "uniform")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return model, opt, train_step(model, opt, x, y, keras_bce, batch=10 if fixed else 1)
    return build


# --- 39217567 (row 12): 8-bit codes -> a shuffled copy of them, 3 sigmoid layers N(0, 0.05), MSE, SGD
def _p39217567():
    def build():
        seed(321)
        bits = ((torch.arange(256)[:, None] >> torch.arange(7, -1, -1)) & 1).float()
        y = bits[torch.randperm(256, generator=torch.Generator().manual_seed(321))]
        model = _keras_init(mlp([8, 8, 8, 8], nn.Sigmoid, out_act=nn.Sigmoid), "normal")
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        return model, opt, train_step(model, opt, bits, y, F.mse_loss, batch=50)
    return build


# --- 48934338 (row 13): y = 5x^2 + noise^3 on x in [0, 5), relu MLP, MSE, SGD lr 0.1 (fix: 0.001)
def so48934338_data(g: torch.Generator):
    """The post's data, in order: ``x`` = 0, 0.1, ..., 4.9 and ``y = 5 x^2 + noise^3`` (noise from ``g``)."""
    x = torch.arange(0.0, 5.0, 0.1)[:, None]
    return x, 5 * x ** 2 + torch.randn(50, 1, generator=g) ** 3


def so48934338_model() -> nn.Sequential:
    """The post's model, from torch's global RNG: Dense(50, relu) + Dense(30, relu) + Dense(1), Keras
    glorot_uniform kernels, init='uniform' on the second layer, zero biases."""
    model = _keras_init(mlp([1, 50, 30, 1], nn.ReLU), "glorot")
    with torch.no_grad():
        model[2].weight.uniform_(-0.05, 0.05)
    return model


def _p48934338(lr):
    def build():
        seed(322)
        g = torch.Generator().manual_seed(322)
        x, y = so48934338_data(g)
        order = torch.randperm(50, generator=g)  # Keras fit shuffles
        x, y = x[order], y[order]
        model = so48934338_model()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        return model, opt, train_step(model, opt, x, y, F.mse_loss, batch=32)
    return build


def _adult(n=1024, s=0):
    """UCI Adult's 14 columns at their raw scales (age, fnlwgt ~2e5, capital-gain up to 1e5, label-
    encoded categories), income > 50K for about a quarter of the rows."""
    g = torch.Generator().manual_seed(s)

    def cat(k):
        return torch.randint(0, k, (n,), generator=g).float()
    age = 17 + 60 * torch.rand(n, generator=g)
    fnlwgt = torch.exp(12.1 + 0.5 * torch.randn(n, generator=g))
    edu = 1 + torch.randint(0, 16, (n,), generator=g).float()
    gain = torch.where(torch.rand(n, generator=g) < 0.08, 1e4 * torch.rand(n, generator=g) * 10, torch.zeros(n))
    loss = torch.where(torch.rand(n, generator=g) < 0.05, 1500 + 1000 * torch.rand(n, generator=g), torch.zeros(n))
    hours = (40 + 12 * torch.randn(n, generator=g)).clamp(1, 99)
    sex = cat(2)
    x = torch.stack([age, cat(9), fnlwgt, cat(16), edu, cat(7), cat(15), cat(6), cat(5), sex, gain, loss, hours,
                     cat(42)], 1)
    score = (0.08 * (age - 38) + 0.5 * (edu - 10) + 0.05 * (hours - 40) + 1.0 * sex + (gain > 0).float() * 3
             + 0.8 * torch.randn(n, generator=g))
    return x, (score > 2.2).long()


# --- 47724077 (row 14): Adult census unscaled, Dense(21, relu) + Dense(2, softmax), CE, Adam 1e-3
def _p47724077(fixed):
    def data():
        x, y = _adult(s=323)
        if fixed:  # ++ StandardScaler, ++ Adam(learning_rate=0.01)
            x = (x - x.mean(0)) / x.std(0)
        return x, y
    return mlp_program(323, [14, 21, 2], nn.ReLU, data, keras_categorical_ce, lr=0.01 if fixed else 1e-3,
                       out_act=lambda: nn.Softmax(dim=1), batch=100)


def _iris(s=0):
    """Iris-like: 50 flowers per species from the species' feature means and standard deviations (cm)."""
    g = torch.Generator().manual_seed(s)
    mean = torch.tensor([[5.01, 3.43, 1.46, 0.25], [5.94, 2.77, 4.26, 1.33], [6.59, 2.97, 5.55, 2.03]])
    std = torch.tensor([[0.35, 0.38, 0.17, 0.11], [0.52, 0.31, 0.47, 0.20], [0.64, 0.32, 0.55, 0.27]])
    y = torch.arange(150) % 3
    x = (mean[y] + std[y] * torch.randn(150, 4, generator=g)).clamp(min=0.1)
    return x, y


def _iris_program(s, fixed=False):
    """Iris unscaled, Dense(4, relu) + Dense(3, sigmoid) N(0, 0.05), categorical CE, Adam 1e-3, batch 5
    (two posts' program, seed ``s``); ``fixed``: 59278771's patch."""
    def build():
        seed(s)
        x, y = _iris(s=s)
        if fixed:  # ++ MinMaxScaler, ++ Dense(8, relu), ++ softmax
            x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
            model = _keras_init(mlp([4, 4, 8, 3], nn.ReLU, out_act=lambda: nn.Softmax(dim=1)), "normal")
        else:
            model = _keras_init(mlp([4, 4, 3], nn.ReLU, out_act=nn.Sigmoid), "normal")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return model, opt, train_step(model, opt, x, y, keras_categorical_ce, batch=5)
    return build


# --- 59278771 (row 16): iris unscaled, Dense(4, relu) + Dense(3, sigmoid) N(0, 0.05), categorical CE, Adam
def _p59278771(fixed):
    return _iris_program(324, fixed)


# --- 34673164 (row 19, DeepFD: 'origin', accuracy already 1): 16 features, tanh 64-64 + dropout,
#     Dense(2, softmax) under MSE, SGD lr 0.1 momentum 0.9 nesterov
def _p34673164():
    def build():
        seed(325)
        g = torch.Generator().manual_seed(325)
        x = torch.randn(512, 16, generator=g)
        y = F.one_hot(((x @ torch.randn(16, generator=g)) > 0).long(), 2).float()
        model = _keras_init(nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Dropout(0.5), nn.Linear(64, 64), nn.Tanh(),
                                          nn.Dropout(0.5), nn.Linear(64, 2), nn.Softmax(dim=1)), "uniform")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        return model, opt, train_step(model, opt, x, y, F.mse_loss, batch=16)
    return build


# --- 45337371 (row 22): Dense(60, relu) + Dense(50, relu) + Dense(1) + softmax on (5, 1) inputs, BCE, Adam
def _p45337371(fixed):
    def build():
        seed(326)
        g = torch.Generator().manual_seed(326)
        x = torch.rand(512, 5, 1, generator=g)
        y = torch.rand(512, 5, 1, generator=g)
        model = nn.Sequential(nn.Linear(1, 60), nn.ReLU(), nn.Linear(60, 50), nn.ReLU(), nn.Linear(50, 1),
                              nn.Sigmoid() if fixed else nn.Softmax(dim=-1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return model, opt, train_step(model, opt, x, y, keras_bce, batch=8)
    return build


# --- 44066044 (row 23): 11 unscaled packet features, Dense(12, relu) x2 + Dense(1, relu) under BCE, Adam
def _p44066044(fixed):
    def build():
        seed(327)
        g = torch.Generator().manual_seed(327)
        # the post's NetworkPackets.csv is not published; packet features (sizes, ports, counts) at
        # scales 1e0-1e4, as the fix's preprocessing.scale says
        scale = torch.tensor([1500.0, 65535.0, 65535.0, 64.0, 10.0, 1e4, 100.0, 8.0, 1.0, 255.0, 1e3])
        x = torch.rand(512, 11, generator=g) * scale
        z = (x - x.mean(0)) / x.std(0)
        y = ((z[:, 0] + z[:, 3] - z[:, 6]) > 0).float()[:, None]
        model = _keras_init(nn.Sequential(nn.Linear(11, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 1),
                                          nn.Sigmoid() if fixed else nn.ReLU()), "normal")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return model, opt, train_step(model, opt, z if fixed else x, y, keras_bce, batch=5)
    return build


# --- 51930566 (row 24, DeepFD: 'origin', accuracy already 1): iris unscaled (the second split
#     overwrites the scaled one), Dense(4, relu) + Dense(3, sigmoid) N(0, 0.05), categorical CE, Adam
def _p51930566():
    return _iris_program(328)


# --- 45442843 (row 26): one unscaled feature, Dense(1, sigmoid) + Dense(1) + softmax (always 1), MAE, RMSprop
def _p45442843(fixed):
    def build():
        seed(329)
        g = torch.Generator().manual_seed(329)
        # the post's dataset.csv is not published; the fix (preprocessing.scale) says the feature is unscaled
        x = 50 + 20 * torch.randn(400, 1, generator=g)
        y = (x + 5 * torch.randn(400, 1, generator=g) > 50).float()
        model = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid(), nn.Linear(1, 1), nn.Sigmoid() if fixed else Softmax1())
        with torch.no_grad():
            nn.init.xavier_uniform_(model[0].weight)
            model[0].bias.zero_()
            model[2].weight.normal_(0.0, 0.05)
            model[2].bias.zero_()
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        if fixed:
            x = (x - x.mean()) / x.std()
        return model, opt, train_step(model, opt, x, y, keras_bce if fixed else F.l1_loss, batch=200)
    return build


# --- 48594888 (row 27): CIFAR-10 CNN (conv 64/256 he_normal, Dense(512), dropout), Adam, raw 0-255 pixels
def _p48594888(fixed):
    def build():
        seed(330)
        x, y = digits(512, s=330)
        g = torch.Generator().manual_seed(330)
        x = (x.repeat(1, 3, 1, 1) * (0.7 + 0.3 * torch.rand(512, 3, 1, 1, generator=g))).clamp(0, 1)
        if not fixed:
            x = x * 255  # the buggy program never divides the CIFAR pixels by 255
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.3),
                              nn.Linear(64, 10), nn.Softmax(dim=1))
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight)
                    m.bias.zero_()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return model, opt, train_step(model, opt, x, y, keras_categorical_ce, batch=128)
    return build


def _titanic(n=712, s=0):
    """Kaggle Titanic's 10 columns after the post's LabelEncoder (Name, Ticket, Cabin become integers
    in the hundreds), unscaled; survival depends on sex and class."""
    g = torch.Generator().manual_seed(s)
    pclass = torch.randint(1, 4, (n,), generator=g).float()
    sex = torch.randint(0, 2, (n,), generator=g).float()
    cols = [pclass, torch.randperm(n, generator=g).float(), sex, (30 + 14 * torch.randn(n, generator=g)).clamp(0, 80),
            torch.randint(0, 6, (n,), generator=g).float(), torch.randint(0, 5, (n,), generator=g).float(),
            torch.randint(0, 680, (n,), generator=g).float(), (32 * torch.rand(n, generator=g) ** 2 * 8),
            torch.randint(0, 148, (n,), generator=g).float(), torch.randint(0, 4, (n,), generator=g).float()]
    x = torch.stack(cols, 1)
    p = torch.sigmoid(2.5 * sex - 1.0 * (pclass - 2) - 1.0 + 0.5 * torch.randn(n, generator=g))
    return x, (torch.rand(n, generator=g) < p).long()


# --- 31627380 (row 28): Titanic label-encoded unscaled, Dense(512, relu) + dropout + Dense(2, softmax), Adam, batch 4
def _p31627380(fixed):
    def build():
        seed(331)
        x, y = _titanic(s=331)
        model = nn.Sequential(nn.Linear(10, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 2),
                              nn.Sigmoid() if fixed else nn.Softmax(dim=1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if fixed:  # DeepLocalize's correct code: Dense(2, sigmoid) under binary_crossentropy
            return model, opt, train_step(model, opt, x, F.one_hot(y, 2).float(), keras_bce, batch=4)
        return model, opt, train_step(model, opt, x, y, keras_categorical_ce, batch=4)
    return build


# --- 50481178 (row 30, DeepFD: 'origin', worse after its repair): make_multilabel_classification with one
#     class, Dense 10-20-30-40-50 relu + Dense(1, sigmoid), binary_crossentropy, Adam, batch 10
def _p50481178():
    def build():
        seed(332)
        x, y = _multilabel(1000, d=4, k=1, s=332, unlabeled=True)
        model = _keras_init(mlp([4, 10, 20, 30, 40, 50, 1], nn.ReLU, out_act=nn.Sigmoid), "glorot")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return model, opt, train_step(model, opt, x, y, keras_bce, batch=10)
    return build


_ROWS_SESSION_3 = (
    Case("so44164749_sgd_lr_0_01", _p44164749(0.01), source="deepfd", steps=150,
         cite=f"{SO}44164749 ({BENCH} row 2; {DL}44164749): MNIST MLP, softmax + categorical_crossentropy, SGD "
              "lr 0.01 momentum 0.9 nesterov, 5 epochs; DeepFD: 'only changing the learning rate to 0.05' lifts "
              "accuracy 0.909 -> 0.949 (measured here: loss 0.31 at step 60 and 0.017 at step 150, the patch's 0.001)",
         bugs=("slow_convergence",), also=frozenset({"dead_units", "saturation"}),
         cause="Epoch, Learning rate, Activation, Loss", twin="so44164749_fixed"),
    Case("so44164749_fixed", _p44164749(0.05), source="deepfd", steps=150,
         cite=f"{SO}44164749 patched: SGD lr 0.05", twin="so44164749_sgd_lr_0_01"),
    Case("so50306988_adam_1e_3", _p50306988(1e-3), source="deepfd", steps=70,
         cite=f"{SO}50306988 ({BENCH} row 4; {DL}50306988): two uniform clusters, Dense(2, sigmoid) + "
              "Dense(1, sigmoid), BCE, Adam 1e-3 (DeepFD's origin has the softmax->sigmoid fix already): the loss "
              "stays at 0.683 for 70 steps; patch: lr 0.01, 10 epochs (its loss is still 0.66 after them: no "
              "fixed twin)",
         bugs=("slow_convergence",), also=frozenset({"vanishing", "update_ratio"}), cause="Learning rate, Epoch"),
    Case("so38648195_softmax_multilabel_mse", _p38648195(False), source="deepfd",
         cite=f"{SO}38648195 ({BENCH} row 6; {DL}38648195): multi-label targets (make_multilabel_classification) "
              "under a softmax output and MSE: a softmax row sums to 1, the targets to up to 3; patch: sigmoid, "
              "binary_crossentropy",
         bugs=("unreachable_output",), culprits=frozenset({"6", "7"}), also=frozenset({"stalled", "dead_units"}),
         cause="Activation, Loss, Epoch", twin="so38648195_fixed"),
    Case("so38648195_fixed", _p38648195(True), source="deepfd",
         cite=f"{SO}38648195 patched: Dense(3, sigmoid), binary_crossentropy",
         twin="so38648195_softmax_multilabel_mse"),
    Case("so55328966_unscaled_sigmoid_output", _p55328966(False), source="deepfd", steps=150,
         cite=f"{SO}55328966 ({BENCH} row 8; {DL}55328966): raw 0-255 pixels into Dense(784) + Dense(50, relu) + "
              "Dense(10, sigmoid) under categorical_crossentropy, GD lr 1e-4: 92% of the sigmoid outputs pinned "
              "at 0 or 1 (measured); patch: /255, softmax, Adam",
         bugs=("saturated_activation",), culprits=frozenset({"4", "5"}),
         also=frozenset({"exploding", "stalled", "vanishing", "dead_units"}),
         cause="Activation, Optimizer, Missing preprocess", twin="so55328966_fixed"),
    Case("so55328966_fixed", _p55328966(True), source="deepfd", steps=150,
         cite=f"{SO}55328966 patched: x/255, Dense(10, softmax), Adam(lr=1e-4)",
         twin="so55328966_unscaled_sigmoid_output"),
    Case("so34311586_softmax_one_unit_xor", _p34311586(), source="deepfd",
         cite=f"{SO}34311586 ({BENCH} row 9; {DL}34311586): XOR-like data, sigmoid 2-3 layers, Dense(1) + "
              "softmax (always 1: every gradient exactly 0), MSE, SGD lr 0.001; patch: sigmoid output, lr 0.1, "
              "10000 epochs (no fixed twin: too long)",
         bugs=("zero_gradient",), culprits=frozenset({"4", "5"}), also=frozenset({"stalled"}),
         cause="Learning rate, Activation, Initialization, Epoch, Batch size"),
    Case("so31880720_softmax_one_unit", _p31880720(False), source="deepfd",
         cite=f"{SO}31880720 ({BENCH} row 10; {DL}31880720): all-ones vs all-zeros rows, Dense(1) + softmax "
              "(always 1) under binary_crossentropy, RMSprop, batch 1; patch: sigmoid",
         bugs=("zero_gradient",), culprits=frozenset({"7", "8"}), also=frozenset({"stalled"}),
         cause="Activation, Epoch", twin="so31880720_fixed"),
    Case("so31880720_fixed", _p31880720(True), source="deepfd",
         cite=f"{SO}31880720 patched: Dense(1, sigmoid)", twin="so31880720_softmax_one_unit"),
    Case("so39525358_unscaled_dead_relu", _p39525358(False), source="deepfd", steps=150,
         cite=f"{SO}39525358 ({BENCH} row 11; {DL}39525358): 3 unscaled features (scale 1e2-1e3), Dense(12, relu) "
              "+ Dense(3, relu) + Dense(1, sigmoid), init U(-0.05, 0.05), Adam, batch 1: the Dense(3) ReLUs are "
              "all dead and every weight gradient is 0 at step 0 (measured); patch: StandardScaler",
         bugs=("dying_relu",), culprits=frozenset({"2", "3"}), also=frozenset({"stalled", "vanishing"}),
         cause="Activation, Learning rate, Missing preprocess", twin="so39525358_fixed"),
    Case("so39525358_fixed", _p39525358(True), source="deepfd", steps=300,
         cite=f"{SO}39525358 patched: StandardScaler, batch 10", twin="so39525358_unscaled_dead_relu"),
    Case("so39217567_sigmoid_stack_shuffled_targets", _p39217567(), source="deepfd", steps=150,
         cite=f"{SO}39217567 ({BENCH} row 12; {DL}39217567): 8-bit codes -> a shuffled copy, three sigmoid "
              "Dense(8) with N(0, 0.05) kernels, MSE, SGD: the loss stays at 0.25, first-layer gradient 1e-3 of "
              "the last (measured); patch: relu, binary_crossentropy, batch 1, 1000 epochs (no fixed twin: too long)",
         bugs=("vanishing_gradient", "slow_convergence"), culprits=frozenset({"0", "1", "2", "3"}),
         also=frozenset({"saturation"}), cause="Activation, Batch size"),
    Case("so48934338_sgd_lr_0_1", _p48934338(0.1), source="deepfd", steps=150,
         cite=f"{SO}48934338 ({BENCH} row 13; {DL}48934338): y = 5x^2 + noise^3, relu MLP, MSE, SGD lr 0.1: every "
              "ReLU dies and the gradients become exactly 0 (measured); patch: lr 0.001",
         bugs=("lr_too_high", "dying_relu"), culprits=frozenset({"0", "1"}),
         also=frozenset({"exploding", "divergence", "nonfinite", "stalled"}), cause="Learning rate",
         twin="so48934338_fixed"),
    Case("so48934338_fixed", _p48934338(0.001), source="deepfd", steps=150,
         cite=f"{SO}48934338 patched: SGD lr 0.001", twin="so48934338_sgd_lr_0_1"),
    Case("so47724077_unscaled_adult", _p47724077(False), source="deepfd",
         cite=f"{SO}47724077 ({BENCH} row 14; {DL}47724077): UCI Adult's 14 columns unscaled (fnlwgt ~2e5), "
              "Dense(21, relu) + Dense(2, softmax), CE, Adam: the softmax is pinned at 0/1 and, under Keras' "
              "clipped CE, every gradient is exactly 0 (measured); patch: StandardScaler, Adam(lr=0.01)",
         bugs=("saturated_activation", "zero_gradient"), culprits=frozenset({"2", "3"}),
         also=frozenset({"stalled", "exploding", "divergence"}),
         cause="Optimizer, Learning rate, Missing preprocess, Epoch", twin="so47724077_fixed"),
    Case("so47724077_fixed", _p47724077(True), source="deepfd",
         cite=f"{SO}47724077 patched: StandardScaler, Adam(lr=0.01)", twin="so47724077_unscaled_adult"),
    # row 15 (59325381): skipped: the bug divides the *labels* by 255 (every label becomes class 0); training
    #   is numerically healthy on wrong labels, a symptom no label of LABELS names.
    # row 16 (59278771): skipped: ported, it trains like row 24 (51930566, same architecture), which DeepFD
    #   labels 'origin', and better than its own patch (loss 0.85 vs 0.94 at step 300, measured).
    # row 17 (52800582), row 20 (48221692), row 21 (50079585): ported in session 2 (above).
    # row 18 (41372874): skipped: DeepFD 'origin' without a patch, and its SIN.csv is not published.
    Case("so34673164_origin", _p34673164(), source="deepfd",
         cite=f"{SO}34673164 ({BENCH} row 19; {DL}34673164 Buggy Model): DeepFD 'origin' (its accuracy is already "
              "1): tanh 64-64 with dropout, Dense(2, softmax) under MSE, SGD lr 0.1 momentum 0.9 nesterov"),
    Case("so45337371_softmax_one_unit", _p45337371(False), source="deepfd",
         cite=f"{SO}45337371 ({BENCH} row 22; {DL}45337371 updatepy.py): Dense(60, relu) + Dense(50, relu) + "
              "Dense(1) + softmax over the last axis (always 1), binary_crossentropy, Adam; patch: sigmoid",
         bugs=("zero_gradient",), culprits=frozenset({"4", "5"}), also=frozenset({"stalled"}),
         cause="Activation", twin="so45337371_fixed"),
    Case("so45337371_fixed", _p45337371(True), source="deepfd",
         cite=f"{SO}45337371 patched: Dense(1, sigmoid) (its targets are uniform noise, as in the post: the loss "
              "stays near ln 2 by construction)", twin="so45337371_softmax_one_unit"),
    Case("so44066044_relu_output_bce", _p44066044(False), source="deepfd",
         cite=f"{SO}44066044 ({BENCH} row 23; {DL}44066044): 11 unscaled packet features (scale 1e0-1e4), "
              "Dense(12, relu) x2 + Dense(1, relu) under Keras' clipped binary_crossentropy: every gradient is "
              "exactly 0 from step 0 (measured); patch: preprocessing.scale, sigmoid",
         bugs=("zero_gradient",), culprits=frozenset({"4", "5"}), also=frozenset({"stalled", "unreachable_output"}),
         cause="Missing preprocess", twin="so44066044_fixed"),
    Case("so44066044_fixed", _p44066044(True), source="deepfd", steps=300,
         cite=f"{SO}44066044 patched: preprocessing.scale, Dense(1, sigmoid)", twin="so44066044_relu_output_bce"),
    Case("so51930566_origin", _p51930566(), source="deepfd", steps=150,
         cite=f"{SO}51930566 ({BENCH} row 24; {DL}51930566): DeepFD 'origin' (accuracy already 1): iris unscaled, "
              "Dense(4, relu) + Dense(3, sigmoid) N(0, 0.05), categorical_crossentropy, Adam"),
    # row 25 (47352366): ported in session 2 (above).
    Case("so45442843_softmax_one_unit_mae", _p45442843(False), source="deepfd", steps=150,
         cite=f"{SO}45442843 ({BENCH} row 26; {DL}45442843): one unscaled feature, Dense(1, sigmoid) + Dense(1) + "
              "softmax (always 1: every gradient exactly 0), mean_absolute_error, RMSprop; patch: "
              "preprocessing.scale, sigmoid, binary_crossentropy",
         bugs=("zero_gradient",), culprits=frozenset({"2", "3"}), also=frozenset({"stalled", "saturation"}),
         cause="Loss, Optimizer, Activation, Epoch", twin="so45442843_fixed"),
    Case("so45442843_fixed", _p45442843(True), source="deepfd", steps=150,
         cite=f"{SO}45442843 patched: scaled input, Dense(1, sigmoid), binary_crossentropy",
         twin="so45442843_softmax_one_unit_mae"),
    Case("so48594888_cifar_raw_pixels", _p48594888(False), source="deepfd",
         cite=f"{SO}48594888 ({BENCH} row 27; {DL}48594888 untitled41.py): CIFAR-10 CNN on raw 0-255 pixels, "
              "Adam: the softmax output starts pinned (96% of outputs at 0/1, loss 14.9 against ln 10 = 2.3, "
              "measured); DeepFD's patch: more epochs; DeepLocalize's correct code (untitled42.py): pixels / 255",
         bugs=("saturated_activation",), culprits=frozenset({"10", "11"}),
         also=frozenset({"exploding", "divergence", "dead_units", "stalled"}), cause="Epoch, Batch size",
         twin="so48594888_fixed"),
    Case("so48594888_fixed", _p48594888(True), source="deepfd",
         cite=f"{SO}48594888 patched ({DL}48594888 Correct Code/untitled42.py): pixels / 255",
         twin="so48594888_cifar_raw_pixels"),
    Case("so31627380_titanic_unscaled", _p31627380(False), source="deepfd",
         cite=f"{SO}31627380 ({BENCH} row 28; {DL}31627380): Titanic's label-encoded columns unscaled (values in "
              "the hundreds), Dense(512, relu) + dropout + Dense(2, softmax), CE, Adam, batch 4: the softmax is "
              "pinned at 0/1 and every gradient is 0 from step 1 (measured); DeepFD's patch: sigmoid, "
              "binary_crossentropy, SGD (the published fixes saturate the same way here: no fixed twin)",
         bugs=("saturated_activation", "zero_gradient"), culprits=frozenset({"3", "4"}),
         also=frozenset({"stalled", "exploding", "divergence"}), cause="Optimizer, Activation, Loss"),
    # row 29 (58609115): ported in session 2.
    Case("so50481178_origin", _p50481178(), source="deepfd", steps=150,
         cite=f"{SO}50481178 ({BENCH} row 30, DeepFD 'origin': its repair makes it worse; {DL}50481178): "
              "make_multilabel_classification(n_classes=1), Dense 10-20-30-40-50 relu + Dense(1, sigmoid), "
              "binary_crossentropy, Adam, batch 10"),
    # Rows from 31 on are not ported yet (time), except those of session 2 (34, 40, 41, 49).
)

CASES = CASES + _ROWS_SESSION_3
