"""The runnable examples in the verify docstrings stay runnable."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["gradlens.verify", "gradlens.verify._check", "gradlens.verify._model", "gradlens.verify._model_report", "gradlens.testing"]
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
