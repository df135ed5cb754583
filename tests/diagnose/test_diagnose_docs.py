"""The runnable examples in the diagnosis docstrings stay runnable."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", [
    "gradlens.diagnose.engine",
    "gradlens.diagnose.thresholds",
    "gradlens.diagnose.rules.base",
    "gradlens._demo_models",
])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
