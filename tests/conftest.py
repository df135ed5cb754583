"""Shared pytest configuration: devices to parametrize over, deterministic seeds."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

#: Parametrize a test over these; CUDA is skipped cleanly without a GPU.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")],
    ),
]


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so a failure repeats."""
    torch.manual_seed(0)
    yield
