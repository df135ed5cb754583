"""gradlens.mirror: structure, sharing, leaving the caller's model alone, errors.

Numerical equivalence of whole mirrored models with torch lives in
``tests/test_mirror_models.py``; this file checks the mechanics.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradlens
from gradlens.mirroring import MirrorError, UnsupportedLayersWarning


class UserBlock(nn.Module):
    """A user's own module: handled through its children, never listed as unsupported."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Identity())
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.inner(x) * self.scale


def test_unsupported_torch_layer_warns_and_stays():
    model = nn.Sequential(UserBlock(), nn.Bilinear(3, 3, 3))
    with pytest.warns(UnsupportedLayersWarning, match=r"1 \(Bilinear\)"):
        twin = gradlens.mirror(model)
    assert type(twin[1]) is nn.Bilinear
    assert twin.gradlens_unsupported == ("1 (Bilinear)",)


def test_strict_raises_naming_the_layer():
    with pytest.raises(MirrorError, match=r"bilinear \(Bilinear\)"):
        gradlens.mirror(nn.ModuleDict({"bilinear": nn.Bilinear(2, 2, 2)}), strict=True)


def test_user_modules_and_containers_are_not_listed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = gradlens.mirror(UserBlock())
    assert twin.gradlens_unsupported == ()


def test_parameters_shared_and_caller_untouched():
    model = nn.Sequential(UserBlock(), nn.Bilinear(3, 3, 3))
    before = {name: id(m) for name, m in model.named_modules()}
    hooks_before = len(model._forward_hooks)
    with pytest.warns(UnsupportedLayersWarning):
        twin = gradlens.mirror(model)
    assert twin is not model
    assert {name: id(m) for name, m in model.named_modules()} == before
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), twin.named_parameters()):
        assert n1 == n2 and p1 is p2
    # A hook on the twin does not appear on the caller's model.
    twin.register_forward_hook(lambda *a: None)
    assert len(model._forward_hooks) == hooks_before
    assert twin.state_dict().keys() == model.state_dict().keys()


def test_shared_submodule_mirrored_once():
    shared = UserBlock()
    model = nn.ModuleList([shared, shared])
    twin = gradlens.mirror(model)
    assert twin[0] is twin[1] and twin[0] is not shared


@pytest.mark.parametrize("bad, match", [([nn.Linear(2, 2)], "nn.Module, got list"), (None, "got NoneType")])
def test_bad_model_argument(bad, match):
    with pytest.raises(TypeError, match=match):
        gradlens.mirror(bad)


def test_bad_strict_argument():
    with pytest.raises(TypeError, match=r"strict=\.\.\.\) expects a bool"):
        gradlens.mirror(UserBlock(), strict="yes")
