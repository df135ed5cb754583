"""Finding: how it prints (the monitor logs ``str(finding)``) and which ones are problems."""

from __future__ import annotations

import pytest

from gradlens.diagnose.finding import Finding, one_line


@pytest.mark.parametrize(
    "layer, where", [pytest.param("layers.0", "layers.0", id="layer"), pytest.param(None, "<global>", id="global")]
)
def test_str_and_one_line(layer, where):
    f = Finding("vanishing", layer, 12, "warning", 3e-6, "gradients vanish", last_step=20)
    assert str(f) == f"[warning] vanishing at {where}, step 12: gradients vanish"
    assert one_line(f, " since step 12") == f"[warning] vanishing at {where} since step 12: gradients vanish"
    assert one_line(f, ", steps 12..20") == f"[warning] vanishing at {where}, steps 12..20: gradients vanish"


@pytest.mark.parametrize("severity, problem", [("info", False), ("warning", True), ("error", True)])
def test_is_problem(severity, problem):
    assert Finding("update_ratio", None, 0, severity, 1e-9, "tiny updates").is_problem is problem
