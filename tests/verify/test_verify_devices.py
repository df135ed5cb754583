"""check_backward on every device: tensors stay on the input's device, verdicts unchanged."""

from __future__ import annotations

import pytest
import torch
import verify_zoo as zoo
from conftest import DEVICES

import gradlens


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_ref", [True, False], ids=["reference", "fd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_verdicts_on_device(device, use_ref, dtype):
    fn, make, ref = zoo.CORRECT["linear"]
    inputs = tuple(t.detach().to(device).requires_grad_(True) for t in make(dtype))
    rep = gradlens.check_backward(fn, *inputs, reference=ref if use_ref else None)
    assert rep.ok, str(rep)
    bad, make_b, ref_b, expect = zoo.BUGS["one-element"]
    inputs = tuple(t.detach().to(device).requires_grad_(True) for t in make_b(dtype))
    rep = gradlens.check_backward(bad, *inputs, reference=ref_b if use_ref else None)
    assert not rep.ok and any(expect in d for d in rep.diagnoses), str(rep)


@pytest.mark.parametrize("device", DEVICES)
def test_large_tensor_localization_on_device(device):
    bad = zoo.BUGS["dropped-tail"][0]
    x = torch.randn(4100, device=device, requires_grad=True)
    rep = gradlens.check_backward(bad, x)
    assert not rep.ok and any("4096..4099 of 4100" in d for d in rep.diagnoses), str(rep)
