"""AUTOTRAINER's demo cases and motivating examples, ported to torch.

Source: Zhang, Zhai, Ma, Shen, Chen, Chen, "AUTOTRAINER: An Automatic DNN Training Problem
Detection and Repair System", ICSE 2021; github.com/shiningrain/AUTOTRAINER. The
programs are read from ``AutoTrainer/demo_case/*`` (model.h5 architectures, config.pkl
training configurations), ``AutoTrainer/data/simplednn.py`` (circle/blob/regression data,
scaled by 100 and divided back by ``preprocess``) and ``Motivation/*/train.py`` (34- and
20-layer ReLU MLPs on MNIST). AUTOTRAINER's problem names (gradient vanish/explode, dying
ReLU, oscillating loss, slow convergence) and its repairs (change activation, change
initialisation, adjust batch size / learning rate) give the labels and the fixed twins.
Data is made in code with the same shapes; MNIST becomes 12x12 template digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diagnosis_corpus.case import (
    Case, blobs, keras_bce, keras_categorical_ce, circles, he_uniform, mlp_program, regression, stack,
)

SRC = "github.com/shiningrain/AUTOTRAINER"



# --- Gradient_Vanish_Case: 8 x Dense(5, sigmoid) + Dense(1, sigmoid), He uniform, circles
def _lecun_normal(w):
    nn.init.normal_(w, 0.0, w.shape[1] ** -0.5)


def _vanish_demo(act=nn.Sigmoid):
    init = he_uniform if act is nn.Sigmoid else _lecun_normal
    return mlp_program(101, [2] + [5] * 8 + [1], act, lambda: circles(512, s=101), keras_bce, lr=1e-3,
                       out_act=nn.Sigmoid, init=init, batch=128)


# --- Improper_Activation_case: 4 x Dense(50, relu) + Dense(3, relu) under categorical CE
def _improper_activation_demo(out_act):
    # simplednn 'blob': X*100 then preprocess x/100
    loss = keras_categorical_ce if out_act is nn.ReLU else F.cross_entropy
    return mlp_program(102, [2, 50, 50, 50, 50, 3], nn.ReLU, lambda: blobs(768, s=102), loss, lr=1e-4,
                       out_act=out_act, init=he_uniform, batch=256)


# --- Oscillating_Loss_Case: Dense(50, relu) + Dense(3, softmax), SGD(0.01, momentum 0.9), batch 1
def _oscillating_demo(batch):
    return mlp_program(103, [2, 50, 3], nn.ReLU, lambda: blobs(512, s=103), F.cross_entropy, lr=0.01,
                       opt=torch.optim.SGD, momentum=0.9, init=he_uniform, batch=batch)


# --- simplednn 'circle' without its preprocess(): inputs x100 into a tanh net
def _unscaled_circle_tanh(scale):
    return mlp_program(105, [2, 16, 16, 1], nn.Tanh, lambda: circles(512, scale=scale, s=105), keras_bce,
                       lr=0.03, out_act=nn.Sigmoid, batch=64)


# --- simplednn 'reg' (make_regression, targets in the hundreds) with a sigmoid output
def _regression_out(out_act):
    return mlp_program(106, [8, 32, 32, 1], nn.ReLU, lambda: regression(512, s=106), F.mse_loss, lr=1e-2,
                       out_act=out_act, batch=64)


# --- slow convergence: AUTOTRAINER's 'sc' problem (accuracy barely moves); lr far too small
def _slow_circle(lr):
    return mlp_program(107, [2, 32, 32, 1], nn.ReLU, lambda: circles(512, s=107), keras_bce, lr=lr,
                       opt=torch.optim.SGD, out_act=nn.Sigmoid, init=he_uniform, batch=64)


# --- gradient explode: simplednn 'reg' (X*100) without preprocess(), MSE, SGD at Keras' default lr
def _explode_regression(scale):
    def data():
        x, y = regression(512, s=108)
        return x * scale, y * scale
    return mlp_program(108, [8, 16, 16, 1], nn.ReLU, data, F.mse_loss, lr=0.01, opt=torch.optim.SGD, batch=64)


_HIDDEN8 = stack(8)  # '0'..'14': the sigmoid stack, output layer '16' excluded

CASES = (
    Case("at_gradient_vanish_demo", _vanish_demo(), source="autotrainer", quick=True,
         cite=f"{SRC} AutoTrainer/demo_case/Gradient_Vanish_Case: 8 sigmoid Dense(5) layers, circles, Adam 1e-3",
         bugs=("vanishing_gradient",), culprits=_HIDDEN8, also=frozenset({"saturation", "stalled"}),
         cause="activation (AUTOTRAINER repair: SELU)", steps=80, twin="at_gradient_vanish_demo_fixed"),
    Case("at_gradient_vanish_demo_fixed", _vanish_demo(nn.SELU), source="autotrainer",
         cite=f"{SRC} Gradient_Vanish_Case after AUTOTRAINER's first vanishing repair, 'selu_1' "
              "(utils/repair.py repair_strategy: SELU, LeCun-normal init; ReLU at width 5 dies)",
         steps=80, twin="at_gradient_vanish_demo"),
    Case("at_improper_activation_demo", _improper_activation_demo(nn.ReLU), source="autotrainer", quick=True,
         cite=f"{SRC} AutoTrainer/demo_case/Improper_Activation_case: Dense(3, relu) output under "
              "categorical_crossentropy (Keras normalises p/sum(p): 0/0 when every output is 0)",
         bugs=("nonfinite",), culprits=frozenset({"8", "9"}), also=frozenset({"dead_units", "divergence"}),
         cause="activation (output ReLU instead of softmax)", twin="at_improper_activation_fixed"),
    Case("at_improper_activation_fixed", _improper_activation_demo(None), source="autotrainer",
         cite=f"{SRC} Improper_Activation_case with a softmax output (cross-entropy on logits)",
         twin="at_improper_activation_demo"),
    Case("at_oscillating_loss_demo", _oscillating_demo(1), source="autotrainer",
         cite=f"{SRC} AutoTrainer/demo_case/Oscillating_Loss_Case: batch size 1, SGD lr 0.01 momentum 0.9, blobs",
         bugs=("oscillating_loss",), cause="batch size / learning rate (AUTOTRAINER repair: batch size)",
         steps=150, twin="at_oscillating_loss_fixed"),
    Case("at_oscillating_loss_fixed", _oscillating_demo(32), source="autotrainer",
         cite=f"{SRC} Oscillating_Loss_Case after the batch-size repair (batch 32)",
         steps=150, twin="at_oscillating_loss_demo"),
    Case("at_circle_unscaled_tanh", _unscaled_circle_tanh(100.0), source="autotrainer", quick=True,
         cite=f"{SRC} AutoTrainer/data/simplednn.py 'circle' (X*100) without preprocess() (x/100), tanh net",
         bugs=("saturated_activation",), culprits=frozenset({"0", "1"}), also=frozenset({"vanishing", "stalled"}),
         cause="missing preprocessing", twin="at_circle_scaled_tanh"),
    Case("at_circle_scaled_tanh", _unscaled_circle_tanh(1.0), source="autotrainer",
         cite=f"{SRC} simplednn 'circle' with its preprocess() (the data AUTOTRAINER trains on)",
         twin="at_circle_unscaled_tanh"),
    Case("at_regression_sigmoid_output", _regression_out(nn.Sigmoid), source="autotrainer", quick=True,
         cite=f"{SRC} simplednn 'reg' (make_regression targets ~1e2) under a Dense(1, sigmoid) output",
         bugs=("unreachable_output",), culprits=frozenset({"4", "5"}),
         also=frozenset({"saturation", "stalled", "vanishing"}), cause="activation (sigmoid output for regression)",
         twin="at_regression_linear_output"),
    Case("at_regression_linear_output", _regression_out(None), source="autotrainer",
         cite=f"{SRC} simplednn 'reg' with a linear output", twin="at_regression_sigmoid_output"),
    Case("at_slow_convergence_lr", _slow_circle(1e-5), source="autotrainer",
         cite=f"{SRC} utils/monitor.py 'sc_accuracy' (slow convergence): SGD lr 1e-5 on circles",
         bugs=("slow_convergence",), also=frozenset({"update_ratio"}), cause="learning rate too small",
         steps=80, twin="at_circle_relu_sgd"),
    Case("at_circle_relu_sgd", _slow_circle(0.1), source="autotrainer",
         cite=f"{SRC} the same circle net at SGD lr 0.1", steps=80, twin="at_slow_convergence_lr"),
    Case("at_gradient_explode_unscaled", _explode_regression(100.0), source="autotrainer", quick=True,
         cite=f"{SRC} AutoTrainer/data/simplednn.py 'reg' (X*100) without preprocess(): MSE, SGD 0.01; "
              "loss 6e6 at step 0, NaN from step 1 (AUTOTRAINER nan_loss / gradient explode)",
         bugs=("exploding_gradient", "nonfinite"), culprits=frozenset({"0"}),
         also=frozenset({"update_ratio", "divergence", "dead_units"}), cause="missing preprocessing",
         steps=30, twin="at_regression_scaled_sgd"),
    Case("at_regression_scaled_sgd", _explode_regression(1.0), source="autotrainer",
         cite=f"{SRC} simplednn 'reg' with its preprocess(), MSE, SGD 0.01", steps=30,
         twin="at_gradient_explode_unscaled"),
)
