"""GradlensCallback under a real transformers.Trainer (CPU), on tiny BERT and GPT-2
models built from config (no downloads).

References: a TrainerCallback of the test's own capturing each parameter's gradient
norm in ``on_pre_optimizer_step`` (right before the update), and the Trainer's own
logged ``grad_norm`` and ``loss``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gradlens.integrations.transformers import GradlensCallback  # noqa: E402

STEPS = 4


class _Data(torch.utils.data.Dataset):
    def __init__(self, n, seq, vocab, labels):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=gen)
        self.labels = torch.randint(0, 2, (n,), generator=gen) if labels == "class" else None

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        item = {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}
        item["labels"] = self.labels[i] if self.labels is not None else self.ids[i]
        return item


def _bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(cfg), _Data(32, 8, 64, "class")


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg), _Data(32, 8, 64, "lm")


class _Capture(transformers.TrainerCallback):
    def __init__(self):
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append({n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None})


def _train(tmp_path, build, **cb_options):
    torch.manual_seed(0)
    model, data = build()
    capture, cb = _Capture(), GradlensCallback(update_every=0, **cb_options)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, logging_steps=1,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, max_grad_norm=0.0,
        learning_rate=1e-3, dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[capture, cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("always", message="gradlens", category=RuntimeWarning)
        trainer.train()
    return trainer, capture, cb


@pytest.mark.parametrize("build", [_bert, _gpt2], ids=["bert-classifier", "gpt2-lm"])
def test_statistics_grad_norm_and_loss_match_the_trainer(tmp_path, build):
    trainer, capture, cb = _train(tmp_path, build)
    mon = cb.monitor
    df = mon.dataframe().set_index(["step", "param"])
    assert len(capture.norms) == STEPS
    for step, ref in enumerate(capture.norms):
        for name, norm in ref.items():
            assert df.loc[(step, name), "grad_norm"] == pytest.approx(norm, rel=1e-4, abs=1e-9), (step, name)
    logged = [e for e in trainer.state.log_history if "grad_norm" in e]
    assert len(logged) == STEPS
    records = mon.records()
    for rec, entry in zip(records, logged):
        total = math.sqrt(sum(v * v for v in rec.param_stats["grad_norm"].values()))
        assert total == pytest.approx(float(entry["grad_norm"]), rel=1e-4)
        assert rec.loss == pytest.approx(entry["loss"], rel=1e-4)
    assert all("gradlens_problems" in e for e in logged)
    # detached at the end: no hook left on the model
    assert not trainer.model._forward_hooks


def test_writes_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path, _bert)
    acc = EventAccumulator(str(tmp_path / "gradlens"))
    acc.Reload()
    from gradlens._tags import decode_tag

    (tag,) = [t for t in acc.Tags()["scalars"] if decode_tag(t) and decode_tag(t)[1:3] == ("grad_norm", "classifier")]
    assert [e.step for e in acc.Scalars(tag)] == list(range(STEPS))


def test_unknown_options_are_rejected():
    with pytest.raises(TypeError, match="unknown watch option"):
        GradlensCallback(model=None)


def test_a_callback_that_cannot_attach_warns_and_training_goes_on(tmp_path):
    # bad watch options (a thresholds typo) are found at attach time, inside train():
    # a warning, never an exception that stops training
    with pytest.warns(RuntimeWarning, match="could not attach .*unknown threshold"):
        trainer, capture, cb = _train(tmp_path, _bert, thresholds={"vanish": 1.0})
    assert cb.monitor is None and len(capture.norms) == STEPS
