"""Stack Overflow programs of DeepFD's benchmark, ported to torch, by post id.

Source: Cao, Li, Zhang, Yang, Chen, Xu, Pei, "DeepFD: Automated Fault Diagnosis and
Localization for Deep Learning Programs", ICSE 2022; github.com/ArabelaTso/DeepFD,
``Benchmark/Benchmark-with-patches.xlsx`` (post id, patch, ground-truth fault types:
Activation, Loss, Learning rate, Missing preprocess, ...) and, where present,
``Benchmark/Subjects/<post>/*/origin.py``. Each case names the post
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
