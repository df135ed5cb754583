"""Diagnosis plumbing: the Monitor feeds the Diagnoser and acts on new findings.

The rules are tested with gradlens.diagnose; here a tiny fake Diagnoser checks
that every record reaches it and that findings are logged, warned once per
(kind, layer), written to TensorBoard, passed to on_finding and halt training.
"""

from __future__ import annotations

import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradlens
from gradlens import _tags
from gradlens.diagnose import engine
from gradlens.diagnose.finding import Finding
from watch_helpers import mlp, train


class FakeDiagnoser:
    """Emits one 'vanishing' finding at layer '2' on steps 1 and 2, records everything."""

    instances = []

    def __init__(self, thresholds=None):
        self.thresholds = thresholds
        self.findings = []
        self.records = []
        FakeDiagnoser.instances.append(self)

    def update(self, record):
        self.records.append(record)
        if record.step in (1, 2):
            f = Finding("vanishing", "2", record.step, "warning", 1e-9, f"tiny gradient at step {record.step}")
            self.findings.append(f)
            return [f]
        return []


@pytest.fixture
def fake(monkeypatch):
    FakeDiagnoser.instances = []
    monkeypatch.setattr(engine, "Diagnoser", FakeDiagnoser)
    return FakeDiagnoser


def test_findings_plumbing(fake, tmp_path, caplog):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with caplog.at_level(logging.WARNING, logger="gradlens"):
        with pytest.warns(RuntimeWarning, match="tiny gradient") as warned:
            with gradlens.watch(model, opt, logdir=tmp_path, on_finding=seen.append,
                                thresholds={"x": 1}) as mon:
                train(model, opt, 4)
    diag = fake.instances[0]
    assert diag.thresholds == {"x": 1}
    assert [r.step for r in diag.records] == [0, 1, 2, 3]
    assert [f.step for f in seen] == [1, 2]
    assert mon.findings is diag.findings
    # one line per finding: warned once per (kind, layer), the later ones logged
    assert len([w for w in warned if "tiny gradient" in str(w.message)]) == 1
    assert len([r for r in caplog.records if "tiny gradient" in r.getMessage()]) == 1
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(_tags.FINDINGS_TAG + "/text_summary")]
    assert any("tiny gradient at step 1" in t for t in texts)


def test_halt_on_raises_training_halted(fake):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning):
        with gradlens.watch(model, opt, halt_on=("vanishing",)) as mon:
            with pytest.raises(gradlens.TrainingHalted) as info:
                train(model, opt, 4)
    assert info.value.finding.step == 1
    assert mon.steps_seen == 2


def test_halt_on_other_kind_does_not_raise(fake):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning):
        with gradlens.watch(model, opt, halt_on="exploding"):
            train(model, opt, 4)


def test_real_diagnoser_is_used_by_default():
    model = mlp()
    with gradlens.watch(model) as mon:
        assert isinstance(mon._publisher._diagnoser, engine.Diagnoser)
        assert mon.findings == []


class _CrashingDiagnoser(FakeDiagnoser):
    def update(self, record):
        raise ZeroDivisionError("rule bug")


def test_failing_diagnoser_warns_once_training_goes_on(monkeypatch):
    monkeypatch.setattr(engine, "Diagnoser", _CrashingDiagnoser)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="diagnosis failed") as warned:
        with gradlens.watch(model, opt) as mon:
            train(model, opt, 3)
    assert len([w for w in warned if "diagnosis failed" in str(w.message)]) == 1
    assert mon.steps_seen == 3 and len(mon.records()) == 3


class _Log(torch.nn.Module):
    def forward(self, x):
        return torch.log(x)  # NaN for the negative entries: born here, at every step


def test_each_finding_is_one_line_and_the_warning_points_at_the_users_code(caplog):
    import logging

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), _Log(), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    caplog.set_level(logging.WARNING, logger="gradlens")
    with pytest.warns(RuntimeWarning, match="nonfinite") as warned:
        with gradlens.watch(model, opt) as mon:
            for _ in range(6):
                opt.zero_grad()
                model(torch.randn(8, 4)).sum().backward()
                opt.step()
    ours = [w for w in warned if "nonfinite" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__  # at the user's opt.step(), not in gradlens
    texts = [r.getMessage() for r in caplog.records]
    assert not any("nonfinite" in t for t in texts)  # the warned finding is not logged again
    origins = [t for t in texts if "first appear" in t]
    # once per origin, not at every broken step (after the first update the weights of
    # '0' are NaN too, so the probe then names '0': a second origin, also said once)
    assert origins[0].endswith("output of 1") and len(origins) == len(set(origins)) <= 2
    assert [f.kind for f in mon.findings] == ["nonfinite"]
