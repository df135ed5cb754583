"""Train a tiny GPT-2 (built from a config, no download) with a Hugging Face Trainer
and gradlens watching it through GradlensCallback.

Run:
    pip install 'gradlens[transformers]'
    python examples/hf_trainer.py --steps 50 --out runs/hf_demo
    tensorboard --logdir runs/hf_demo/gradlens

Each Trainer log line also carries ``gradlens_problems`` (and ``gradlens_new`` when
a finding appears), where HF users already look.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import transformers  # noqa: E402

from gradlens.integrations.transformers import GradlensCallback  # noqa: E402


class TokenData(torch.utils.data.Dataset):
    """Random token sequences, used as their own labels (a language-modelling toy)."""

    def __init__(self, n: int, seq: int, vocab: int) -> None:
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="runs/hf_demo")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=2,
                                                                 n_positions=64))
    cb = GradlensCallback(group_depth=2)
    training = transformers.TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=8, logging_steps=10,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
    )
    trainer = transformers.Trainer(model=model, args=training, train_dataset=TokenData(256, 32, 128),
                                   callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    df = cb.monitor.dataframe("layer")
    print(f"recorded {df.step.nunique()} steps into {os.path.join(args.out, 'gradlens')}")
    last = df[df.step == df.step.max()][["layer", "grad_norm"]]
    for layer, norm in last.itertuples(index=False):
        print(f"  {layer:16s} {norm:.3e}")
    problems = [f for f in cb.monitor.findings if f.is_problem]
    print(f"findings: {len(problems)}" + "".join(f"\n  {f}" for f in problems))


if __name__ == "__main__":
    main()
