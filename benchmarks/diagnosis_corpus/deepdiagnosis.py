"""The AUTOTRAINER models as published with DeepDiagnosis, ported to torch.

Source: Wardat, Cruz, Le, Rajan, "DeepDiagnosis: Automatically Diagnosing Faults and
Recommending Actionable Fixes in Deep Learning Programs", ICSE 2022;
github.com/DeepDiagnosis/ICSE2022. The architectures are read from ``AUTOTRAINER Model
Code/Models_{Circle,Blob,MNIST,CIFAR_10}.py`` (by model id) and the symptoms from
``DeepDiagnosis Result/*_Result.txt`` (e.g. "Batch 0 layer 0: Numerical Problem Forward",
"Vanishing Gradient Problem in delta Weights", "Dead Node Problem", "Unchange Tensor in
Weights", "Saturated Activation Problem", "Accuracy Not Increasing ... Normalize the
data"). ``config_random`` models are AUTOTRAINER's mutated training configurations; their
configuration is not published, so those ports plant the configuration fault that
DeepDiagnosis' recommended fix names (learning rate, normalisation). The healthy ones
follow "difference threshold/*_normal" (AUTOTRAINER's normal models, accuracy 100%).
Data: circles/blobs as in AUTOTRAINER's ``simplednn.py``; MNIST/CIFAR-10 become 12x12
template images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diagnosis_corpus.case import (
    Case, blobs, keras_bce, circles, digits, he_uniform, keras_random_uniform, mlp_program, seed, stack, train_step,
)

SRC = "github.com/DeepDiagnosis/ICSE2022"


class Exponential(nn.Module):
    """Keras ``Activation('exponential')``."""

    def forward(self, x):
        return torch.exp(x)



def _circle_stack(act, depth, *, init=he_uniform, lr=1e-3, opt="adam", width=5, scale=1.0, s=0):
    return mlp_program(200 + s, [2] + [width] * depth + [1], act, lambda: circles(512, scale=scale, s=200 + s),
                       keras_bce, lr=lr, opt=torch.optim.Adam if opt == "adam" else torch.optim.SGD,
                       out_act=nn.Sigmoid, init=init, batch=64)


def _blob_stack(act, depth, *, init=he_uniform, lr=1e-3, width=5, scale=1.0, s=0):
    # Dense(3, softmax): CE on logits
    return mlp_program(220 + s, [2] + [width] * depth + [3], act, lambda: blobs(512, scale=scale, s=220 + s),
                       F.cross_entropy, lr=lr, init=init, batch=64)


def _lenet(act, extra_dense, *, channels=1, classes=10, lr=1e-3, opt="adam", s=0):
    """AUTOTRAINER's LeNet: conv-act-pool x2, Dense(120)-act, then ``extra_dense`` x Dense(84)-act."""
    def build():
        seed(240 + s)
        layers = [nn.Conv2d(channels, 6, 3, padding=1), act(), nn.MaxPool2d(2),
                  nn.Conv2d(6, 16, 3, padding=1), act(), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(16 * 3 * 3, 120), act()]
        width = 120
        for _ in range(extra_dense):
            layers += [nn.Linear(width, 84), act()]
            width = 84
        layers.append(nn.Linear(width, classes))
        model = nn.Sequential(*layers)
        for m in model:
            if isinstance(m, nn.Linear):
                he_uniform(m.weight)
                nn.init.zeros_(m.bias)
        o = (torch.optim.Adam(model.parameters(), lr=lr) if opt == "adam"
             else torch.optim.SGD(model.parameters(), lr=lr))
        x, y = digits(384, classes=classes, s=240 + s)
        if channels == 3:
            x = x.repeat(1, 3, 1, 1)
        return model, o, train_step(model, o, x, y, F.cross_entropy, batch=32)
    return build


def _all_layers(n_linear: int) -> frozenset:
    """Every Linear and activation of an mlp with ``n_linear`` Linear layers ('0'..)."""
    return frozenset(str(i) for i in range(2 * n_linear - 1))


_LENET_INPUT_SIDE = frozenset({"0", "1", "3", "4", "7", "8", "9"})

CASES = (
    Case("dd_circle_exponential_8", _circle_stack(Exponential, 8), source="deepdiagnosis", quick=True,
         cite=f"{SRC} Models_Circle.py model_0ae2cd88: 8 x Dense(5)+exponential; Circle_Result.txt: "
              "'Batch 0 layer 0: Numerical Problem Forward ... change the activation function'",
         bugs=("nonfinite",), culprits=_all_layers(9), also=frozenset({"exploding", "divergence"}),
         cause="activation (exponential)"),
    Case("dd_blob_exponential_6", _blob_stack(Exponential, 6), source="deepdiagnosis",
         cite=f"{SRC} Models_Blob.py model_0b6f114d: Dense(5)+exponential stack, softmax output; "
              "numerical problem in forward", bugs=("nonfinite",), culprits=_all_layers(7),
         also=frozenset({"exploding", "divergence"}), cause="activation (exponential)"),
    Case("dd_circle_sigmoid_11", _circle_stack(nn.Sigmoid, 11), source="deepdiagnosis", quick=True,
         cite=f"{SRC} Models_Circle.py model_5ab0aeda: 11 x Dense(5, sigmoid), He uniform; "
              "'Vanishing Gradient Problem in delta Weights'",
         bugs=("vanishing_gradient",), culprits=stack(11), also=frozenset({"saturation", "stalled"}),
         cause="activation (sigmoid)", steps=60),
    Case("dd_blob_sigmoid_8", _blob_stack(nn.Sigmoid, 8), source="deepdiagnosis",
         cite=f"{SRC} Models_Blob.py model_2569b90f: 8 x Dense(5, sigmoid), softmax output; "
              "Blob_Result.txt 'Batch 0 layer 4: Vanishing Gradient Problem'",
         bugs=("vanishing_gradient",), culprits=stack(8), also=frozenset({"saturation", "stalled"}),
         cause="activation (sigmoid)"),
    Case("dd_circle_relu_random_uniform", _circle_stack(nn.ReLU, 8, init=keras_random_uniform), source="deepdiagnosis",
         cite=f"{SRC} Models_Circle.py model_8de47bdc: 8 x Dense(5, relu, RandomUniform(-0.05, 0.05)); "
              "the signal shrinks ~20x per layer",
         bugs=("vanishing_gradient",), culprits=stack(8), also=frozenset({"dead_units", "stalled"}),
         cause="initialisation (AUTOTRAINER repair: he_uniform)"),
    Case("dd_circle_relu_deep_dead", _circle_stack(nn.ReLU, 15), source="deepdiagnosis", quick=True,
         cite=f"{SRC} Models_Circle.py model_46edb7df: deep Dense(5, relu) He-uniform stack; "
              "Circle_Result.txt 'Dead Node Problem'",
         bugs=("dying_relu",), culprits=_all_layers(15), also=frozenset({"vanishing", "stalled"}),
         cause="too narrow and deep a ReLU stack"),
    Case("dd_mnist_lenet_sigmoid_dense", _lenet(nn.Sigmoid, 6), source="deepdiagnosis",
         cite=f"{SRC} Models_MNIST.py model_2af630c4: LeNet with sigmoid and 6 extra Dense(84, sigmoid); "
              "MNIST_Result.txt 'Batch 1 layer 7: Vanishing Gradient Problem'",
         bugs=("vanishing_gradient",), culprits=_LENET_INPUT_SIDE, also=frozenset({"saturation", "stalled"}),
         cause="activation (sigmoid)", steps=40),
    Case("dd_cifar_lenet_exponential", _lenet(Exponential, 3, channels=3), source="deepdiagnosis",
         cite=f"{SRC} Models_CIFAR_10.py model_4bc5fb07: LeNet with exponential activations; "
              "Cifar_Result.txt 'Numerical Problem Forward'",
         bugs=("nonfinite",), culprits=frozenset({"0", "1", "3", "4", "7", "8"}),
         also=frozenset({"exploding", "divergence"}), cause="activation (exponential)", steps=30),
    Case("dd_circle_unchanged_weights", _circle_stack(nn.ReLU, 3, width=16, opt="sgd", lr=1e-7),
         source="deepdiagnosis",
         cite=f"{SRC} Circle_Result.txt config_random_ae33f2bc: 'Unchange Tensor in Weights', fix "
              "'Learning Rate' (planted: SGD lr 1e-7)",
         bugs=("unchanged_weight",), also=frozenset({"stalled"}), cause="learning rate too small"),
    Case("dd_circle_tanh_saturated_lr", _circle_stack(nn.Tanh, 3, width=16, opt="sgd", lr=20.0),
         source="deepdiagnosis",
         cite=f"{SRC} Circle_Result.txt config_random_de8e9f95: 'Saturated Activation Problem', fix "
              "'Learning Rate' (planted: SGD lr 20 on a tanh net)",
         bugs=("saturated_activation",), culprits=frozenset({"0", "1", "2", "3"}),
         also=frozenset({"update_ratio", "divergence", "vanishing", "dead_units"}), cause="learning rate too high"),
    Case("dd_mnist_lenet_relu_dead_lr", _lenet(nn.ReLU, 1, opt="sgd", lr=2.0), source="deepdiagnosis",
         cite=f"{SRC} MNIST_Result.txt config_random_551238d2: 'Dead Node Problem', fix 'Learning Rate' "
              "(planted: SGD lr 2.0 on a ReLU LeNet)",
         bugs=("dying_relu",), culprits=frozenset({"0", "1", "3", "4", "7", "8", "9", "10"}),
         also=frozenset({"update_ratio", "divergence", "exploding", "stalled"}), cause="learning rate too high",
         steps=40),
    # --- AUTOTRAINER's normal models ("difference threshold/*_normal")
    Case("dd_blob_normal", _blob_stack(nn.ReLU, 3, width=16, lr=1e-2), source="deepdiagnosis", quick=True,
         cite=f"{SRC} difference threshold/Blob_normal: a ReLU MLP on preprocessed blobs (accuracy 100%)"),
    Case("dd_circle_normal", _circle_stack(nn.ReLU, 3, width=16, lr=1e-2), source="deepdiagnosis",
         cite=f"{SRC} difference threshold/Circle: a He-uniform ReLU MLP on circles"),
    Case("dd_mnist_lenet_relu", _lenet(nn.ReLU, 1), source="deepdiagnosis",
         cite=f"{SRC} Models_MNIST.py LeNet with ReLU instead of sigmoid (the repair), Adam 1e-3",
         steps=40, twin="dd_mnist_lenet_sigmoid_dense"),
)
