"""Shared check for mirrored-model tests: every gradient equals the reference model's."""

from __future__ import annotations

import torch
from torch import nn


def assert_grads_match(twin: nn.Module, reference: nn.Module, *, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Each parameter of ``twin`` has a gradient equal to the same-named one of ``reference``."""
    ref_params = dict(reference.named_parameters())
    for pname, p in twin.named_parameters():
        assert p.grad is not None, f"{pname}: no gradient"
        torch.testing.assert_close(p.grad, ref_params[pname].grad, rtol=rtol, atol=atol, msg=lambda m: f"{pname}: {m}")
