"""The integration examples run with tiny settings; `import gradlens` imports
neither framework; a missing framework names the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, tmp_path, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ROOT})


def test_lightning_example(tmp_path):
    pytest.importorskip("lightning.pytorch")
    out = _run([os.path.join(ROOT, "examples", "lightning_callback.py"), "--steps", "3", "--batch", "8",
                "--accumulate", "2", "--root", str(tmp_path / "runs")], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "recorded 3 steps" in out.stdout and "Traceback" not in out.stderr


def test_hf_trainer_example(tmp_path):
    pytest.importorskip("transformers")
    out = _run([os.path.join(ROOT, "examples", "hf_trainer.py"), "--steps", "3", "--out", str(tmp_path / "out")],
               tmp_path)
    assert out.returncode == 0, out.stderr
    assert "recorded 3 steps" in out.stdout and "transformer.h.0" in out.stdout


def test_import_gradlens_imports_no_framework(tmp_path):
    code = ("import sys, gradlens, gradlens.integrations; gradlens.watch; gradlens.check_backward; "
            "print(sorted(m for m in ('lightning', 'transformers', 'accelerate') if m in sys.modules))")
    out = _run(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module,extra", [("lightning", "lightning"), ("transformers", "transformers")])
def test_a_missing_framework_names_the_extra(tmp_path, module, extra):
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"try:\n    import gradlens.integrations.{extra}\n"
            "except ImportError as e:\n    print(e)\n")
    out = _run(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"pip install 'gradlens[{extra}]'" in out.stdout


def test_lightning_ddp_writes_one_event_file_from_rank_0(tmp_path):
    pytest.importorskip("lightning.pytorch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradlens._tags import decode_tag

    out = _run([os.path.join(ROOT, "examples", "lightning_callback.py"), "--steps", "3", "--batch", "8",
                "--devices", "2", "--strategy", "ddp", "--root", str(tmp_path / "runs")], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("recorded 3 steps") == 1  # rank 0 reports
    events = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "runs") for f in fs if "tfevents" in f]
    assert len(events) == 1, events
    acc = EventAccumulator(os.path.dirname(events[0]))
    acc.Reload()
    (tag,) = [t for t in acc.Tags()["scalars"] if decode_tag(t) and decode_tag(t)[1:3] == ("grad_norm", "net.0")]
    assert [e.step for e in acc.Scalars(tag)] == [0, 1, 2]
