"""Forward+backward speed of gradlens twins against torch, layer by layer and whole models.

For each setting the script builds a torch module, mirrors a deep copy of it with
``gradlens.mirror`` and times one training step (forward, then backward of the
output against a fixed random cotangent, or of the loss) on both, alternating
torch and gradlens inside one loop so that a noisy, shared machine slows both alike
(the order flips every iteration). It prints one table: median step time of each,
the ratio gradlens/torch (median of the per-iteration ratios of back-to-back pairs,
with their quartiles) and the largest output difference on the first step.

Settings whose twin is not available yet print ``n/a (no twin: ...)``. The Hugging Face
rows (``--only HF``) need ``transformers`` and are left out without it.

Usage::

    python benchmarks/mirror_speed.py                    # CPU, 1 thread, 100 repeats
    python benchmarks/mirror_speed.py --threads 4 --repeats 200
    python benchmarks/mirror_speed.py --device cuda      # CUDA events, synchronised
    python benchmarks/mirror_speed.py --only conv,mlp    # settings whose name contains one of these
    python benchmarks/mirror_speed.py --quick            # smoke run: small batches, few repeats
    python benchmarks/mirror_speed.py --aa               # torch vs torch: the noise floor of this machine
    python benchmarks/mirror_speed.py --clock process    # CPU time of this process instead of wall time

Run it from the repository root (or with gradlens installed). Not a test: pytest
never collects it, and tests never assert on timings.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import gradlens  # noqa: E402

HEADER = ("setting", "shape", "torch ms", "gradlens ms", "gradlens/torch", "ratio IQR", "max|diff|", "note")


@dataclass
class Setting:
    """One benchmark row: a module factory and its inputs."""

    name: str
    shape: str  # human-readable input description
    make_module: Callable[[], nn.Module]
    make_inputs: Callable[[int, torch.device], Tuple[torch.Tensor, ...]]  # (batch scale divisor, device)
    grad_inputs: Tuple[int, ...] = (0,)  # input positions that get a gradient (layers: the activation)
    scalar_output: bool = False  # losses: backward() without a cotangent


class _SelfAttention(nn.Module):
    """Self-attention through ``nn.MultiheadAttention`` (mirror swaps the child)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class _EncoderBlock(nn.Module):
    """Post-norm encoder block: the math of ``nn.TransformerEncoderLayer(d, heads, 4d,
    dropout=0, activation=GELU, batch_first=True)``, written with modules only so that
    mirror reaches every piece through its children."""

    def __init__(self, dim: int = 128, heads: int = 4) -> None:
        super().__init__()
        self.attn = _SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ff(x))


class _WithLoss(nn.Module):
    """A network followed by its loss: a whole training step (mirror swaps both)."""

    def __init__(self, net: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.net(x), y)


def _b(batch: int, div: int) -> int:
    return max(1, batch // div)


def _x(
    *shape: int, like: Optional[Callable[..., torch.Tensor]] = None, classes: int = 0
) -> Callable[[int, torch.device], Tuple[torch.Tensor, ...]]:
    """Random activation of ``shape``; the first dimension is the batch (scaled by --quick).

    For a loss, a target follows it: drawn by ``like`` (``torch.randn``, ``torch.rand``)
    with the same shape, or ``classes`` class labels, one per batch row.
    """

    def make(div: int, dev: torch.device) -> Tuple[torch.Tensor, ...]:
        size = (_b(shape[0], div), *shape[1:])
        x = torch.randn(size, device=dev)
        if like is not None:
            return x, like(size, device=dev)
        if classes:
            return x, torch.randint(classes, size[:1], device=dev)
        return (x,)

    return make


class _SeqOut(nn.Module):
    """A recurrent layer's output sequence (its ``(output, state)`` tuple, first element)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class _LastStep(nn.Module):
    """Sequence classifier: a recurrent stack, its last step's output, a linear head."""

    def __init__(self, rnn: nn.Module, width: int, classes: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _lstm_classifier() -> nn.Module:
    return _WithLoss(_LastStep(nn.LSTM(64, 128, num_layers=2, batch_first=True), 128, 10), nn.CrossEntropyLoss())


def _mlp() -> nn.Module:
    layers: List[nn.Module] = []
    for fan_in, fan_out in ((784, 512), (512, 512), (512, 512)):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return _WithLoss(nn.Sequential(*layers, nn.Linear(512, 10)), nn.CrossEntropyLoss())


def _cnn() -> nn.Module:
    def block(cin: int, cout: int) -> List[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2),
        *block(32, 64), nn.MaxPool2d(2),
        *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    return _WithLoss(net, nn.CrossEntropyLoss())


def _transformer() -> nn.Module:
    return _WithLoss(nn.Sequential(_EncoderBlock(128, 4)), nn.MSELoss())


SETTINGS: List[Setting] = [
    # --- layers
    Setting("Linear(512,512)", "x 128x512", lambda: nn.Linear(512, 512), _x(128, 512)),
    Setting("Conv1d(16,32,3,p=1)", "x 32x16x256", lambda: nn.Conv1d(16, 32, 3, padding=1), _x(32, 16, 256)),
    Setting("Conv2d(16,32,3,p=1)", "x 32x16x32x32", lambda: nn.Conv2d(16, 32, 3, padding=1), _x(32, 16, 32, 32)),
    Setting("LayerNorm(512)", "x 16x64x512", lambda: nn.LayerNorm(512), _x(16, 64, 512)),
    Setting("BatchNorm2d(32) train", "x 32x32x32x32", lambda: nn.BatchNorm2d(32), _x(32, 32, 32, 32)),
    Setting("GroupNorm(8,32)", "x 32x32x32x32", lambda: nn.GroupNorm(8, 32), _x(32, 32, 32, 32)),
    Setting("RMSNorm(512)", "x 16x64x512", lambda: nn.RMSNorm(512), _x(16, 64, 512)),
    Setting("ReLU", "x 32x32x32x32", lambda: nn.ReLU(), _x(32, 32, 32, 32)),
    Setting("GELU", "x 32x32x32x32", lambda: nn.GELU(), _x(32, 32, 32, 32)),
    Setting("Softmax(dim=-1)", "x 16x4x64x64", lambda: nn.Softmax(dim=-1), _x(16, 4, 64, 64)),
    Setting("MaxPool2d(2)", "x 32x32x32x32", lambda: nn.MaxPool2d(2), _x(32, 32, 32, 32)),
    Setting("AvgPool2d(2)", "x 32x32x32x32", lambda: nn.AvgPool2d(2), _x(32, 32, 32, 32)),
    Setting("Dropout(0.1) train", "x 32x32x32x32", lambda: nn.Dropout(0.1), _x(32, 32, 32, 32)),
    Setting(
        "Embedding(10000,128)",
        "idx 16x64",
        lambda: nn.Embedding(10000, 128),
        lambda div, dev: (torch.randint(10000, (_b(16, div), 64), device=dev),),
        grad_inputs=(),
    ),
    Setting("MultiheadAttention(128,4)", "x 16x64x128", lambda: _SelfAttention(128, 4), _x(16, 64, 128)),
    Setting("ConvTranspose2d(32,16,4,s=2,p=1)", "x 16x32x16x16", lambda: nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            _x(16, 32, 16, 16)),
    Setting("Upsample(x2, bilinear)", "x 16x32x32x32", lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
            _x(16, 32, 32, 32)),
    Setting("RNN(64,128)", "x 32x50x64 (batch_first)", lambda: _SeqOut(nn.RNN(64, 128, batch_first=True)), _x(32, 50, 64)),
    Setting("LSTM(64,128)", "x 32x50x64 (batch_first)", lambda: _SeqOut(nn.LSTM(64, 128, batch_first=True)),
            _x(32, 50, 64)),
    Setting("GRU(64,128)", "x 32x50x64 (batch_first)", lambda: _SeqOut(nn.GRU(64, 128, batch_first=True)), _x(32, 50, 64)),
    Setting("LSTM(64,128,2 layers,bidir)", "x 32x50x64 (batch_first)",
            lambda: _SeqOut(nn.LSTM(64, 128, num_layers=2, bidirectional=True, batch_first=True)), _x(32, 50, 64)),
    Setting(
        "CrossEntropyLoss", "logits 128x1000", lambda: nn.CrossEntropyLoss(), _x(128, 1000, classes=1000), scalar_output=True
    ),
    Setting(
        "CrossEntropyLoss(ls=0.1)",
        "logits 128x1000",
        lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
        _x(128, 1000, classes=1000),
        scalar_output=True,
    ),
    Setting("MSELoss", "x 128x512", lambda: nn.MSELoss(), _x(128, 512, like=torch.randn), scalar_output=True),
    Setting(
        "BCEWithLogitsLoss", "x 128x512", lambda: nn.BCEWithLogitsLoss(), _x(128, 512, like=torch.rand), scalar_output=True
    ),
    # --- whole models (input needs no gradient; the loss is part of the step)
    Setting("MLP 784-512-512-512-10 + CE", "x 128x784", _mlp, _x(128, 784, classes=10), grad_inputs=(), scalar_output=True),
    Setting(
        "CNN 3x(conv-BN-ReLU) + CE", "x 64x3x32x32", _cnn, _x(64, 3, 32, 32, classes=10), grad_inputs=(), scalar_output=True
    ),
    Setting("LSTM 2x128 classifier + CE", "x 32x50x64", _lstm_classifier, _x(32, 50, 64, classes=10), grad_inputs=(),
            scalar_output=True),
    Setting(
        "Transformer block d128 h4 + MSE",
        "x 16x64x128",
        _transformer,
        _x(16, 64, 128, like=torch.randn),
        grad_inputs=(),
        scalar_output=True,
    ),
]


# --- Hugging Face models built from config (no downloads), when transformers is installed.
class _HFLoss(nn.Module):
    """A transformers model called with keyword inputs, returning its own ``.loss``."""

    def __init__(self, model: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, tuple(keys)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.keys, tensors))).loss


def _hf_settings() -> List[Setting]:
    """GPT-2, BERT, Llama, T5 and ViT at d=128, 2 layers, 4 heads, dropout off (loss inside the model)."""
    try:
        import transformers as T
    except ImportError:
        return []
    vocab, d, ff = 1000, 128, 512

    def ids(b: int, n: int, dev: torch.device) -> torch.Tensor:
        return torch.randint(vocab, (b, n), device=dev)

    def lm(div: int, dev: torch.device) -> Tuple[torch.Tensor, ...]:
        x = ids(_b(8, div), 64, dev)
        return x, x

    def cls(div: int, dev: torch.device) -> Tuple[torch.Tensor, ...]:
        return ids(_b(8, div), 64, dev), torch.randint(3, (_b(8, div),), device=dev)

    def seq2seq(div: int, dev: torch.device) -> Tuple[torch.Tensor, ...]:
        return ids(_b(8, div), 64, dev), ids(_b(8, div), 32, dev)

    def image(div: int, dev: torch.device) -> Tuple[torch.Tensor, ...]:
        return torch.randn(_b(8, div), 3, 64, 64, device=dev), torch.randint(3, (_b(8, div),), device=dev)

    def make(build: Callable[[], nn.Module], keys: Sequence[str]) -> Callable[[], nn.Module]:
        return lambda: _HFLoss(build(), keys)

    common = {"attn_implementation": "sdpa"}
    gpt2 = lambda: T.GPT2LMHeadModel(T.GPT2Config(  # noqa: E731
        n_layer=2, n_embd=d, n_head=4, vocab_size=vocab, n_positions=64, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common))  # fmt: skip
    bert = lambda: T.BertForSequenceClassification(T.BertConfig(  # noqa: E731
        num_hidden_layers=2, hidden_size=d, intermediate_size=ff, num_attention_heads=4, vocab_size=vocab,
        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        **common))  # fmt: skip
    llama = lambda: T.LlamaForCausalLM(T.LlamaConfig(  # noqa: E731
        num_hidden_layers=2, hidden_size=d, intermediate_size=ff, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, max_position_embeddings=64, **common))  # fmt: skip
    t5 = lambda: T.T5ForConditionalGeneration(T.T5Config(  # noqa: E731
        num_layers=2, d_model=d, d_ff=ff, num_heads=4, d_kv=32, vocab_size=vocab, decoder_start_token_id=0,
        pad_token_id=0, dropout_rate=0.0, **common))  # fmt: skip
    vit = lambda: T.ViTForImageClassification(T.ViTConfig(  # noqa: E731
        num_hidden_layers=2, hidden_size=d, intermediate_size=ff, num_attention_heads=4, image_size=64,
        patch_size=8, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common))  # fmt: skip
    hf = {"grad_inputs": (), "scalar_output": True}
    return [
        Setting("HF GPT-2 d128 L2 + LM loss", "ids 8x64", make(gpt2, ("input_ids", "labels")), lm, **hf),
        Setting("HF BERT d128 L2 + CE", "ids 8x64", make(bert, ("input_ids", "labels")), cls, **hf),
        Setting("HF Llama d128 L2 GQA + LM loss", "ids 8x64", make(llama, ("input_ids", "labels")), lm, **hf),
        Setting("HF T5 d128 L2+2 + LM loss", "ids 8x64 -> 8x32", make(t5, ("input_ids", "labels")), seq2seq, **hf),
        Setting("HF ViT d128 L2 p8 + CE", "img 8x3x64x64", make(vit, ("pixel_values", "labels")), image, **hf),
    ]


SETTINGS += _hf_settings()

class _Timer:
    """Time of one call: wall time (perf_counter) or, with ``clock="process"``, the CPU time of this
    process (``time.process_time``: every thread, without the time other programs held the cores);
    CUDA events (synchronised) on a GPU."""

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.cuda = device.type == "cuda"
        self.now = time.process_time if clock == "process" else time.perf_counter
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], None]) -> float:
        """Milliseconds taken by ``fn()``."""
        if self.cuda:
            torch.cuda.synchronize()
            self.start.record()
            fn()
            self.end.record()
            torch.cuda.synchronize()
            return self.start.elapsed_time(self.end)
        t0 = self.now()
        fn()
        return (self.now() - t0) * 1e3


class _Runner:
    """One side (torch or gradlens) of a setting: a module, its inputs and one training step."""

    def __init__(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], setting: Setting, cot: Optional[torch.Tensor]
    ) -> None:
        self.module = module
        self.inputs = [t.detach().clone() for t in inputs]
        for i in setting.grad_inputs:
            self.inputs[i].requires_grad_(True)
        self.grad_inputs = [self.inputs[i] for i in setting.grad_inputs]
        self.cot = cot
        self.last_output: Optional[torch.Tensor] = None

    def step(self) -> None:
        for p in self.module.parameters():
            p.grad = None
        for x in self.grad_inputs:
            x.grad = None
        out = self.module(*self.inputs)
        out.backward(self.cot)
        self.last_output = out


def _missing_twins(twin: nn.Module) -> Tuple[str, ...]:
    """Class names that mirror left as plain torch layers."""
    names = []
    for entry in getattr(twin, "gradlens_unsupported", ()):
        cls = entry.rsplit("(", 1)[-1].rstrip(")")
        if cls not in names:
            names.append(cls)
    return tuple(names)


def _run_setting(setting: Setting, args: argparse.Namespace, device: torch.device, timer: _Timer) -> Tuple[str, ...]:
    torch.manual_seed(0)
    ref = setting.make_module().to(device).train()
    if args.aa:
        twin = copy.deepcopy(ref)  # A/A run: torch against itself, the noise floor
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin = gradlens.mirror(copy.deepcopy(ref))
    missing = _missing_twins(twin)
    if missing:
        return (setting.name, setting.shape, "-", "n/a (no twin)", "-", "-", "-", "no twin: " + ", ".join(missing))

    inputs = setting.make_inputs(args.div, device)
    probe = ref(*inputs)  # shapes for the cotangent (and a forward that must work)
    cot = None if setting.scalar_output else torch.randn(probe.shape, device=device)
    sides = [_Runner(ref, inputs, setting, cot), _Runner(twin, inputs, setting, cot)]

    # First step outside timing: check that both compute the same thing (BatchNorm
    # running stats then move identically on both sides; dropout draws the same mask
    # when the twin uses torch's random stream the way torch does).
    try:
        for side in sides:
            torch.manual_seed(1)
            side.step()
    except Exception as exc:  # a twin that refuses these inputs: report, don't crash the table
        return (setting.name, setting.shape, "-", "error", "-", "-", "-", f"{type(exc).__name__}: {exc}"[:100])
    diff = (sides[0].last_output.detach() - sides[1].last_output.detach()).abs().max().item()

    times: List[List[float]] = [[], []]
    gc.collect()
    gc.disable()
    try:
        for it in range(args.warmup + args.repeats):
            order = (0, 1) if it % 2 == 0 else (1, 0)  # alternate who goes first
            for k in order:
                ms = timer(sides[k].step)
                if it >= args.warmup:
                    times[k].append(ms)
    finally:
        gc.enable()

    med_t, med_g = statistics.median(times[0]), statistics.median(times[1])
    # The ratio is the median of per-iteration ratios: each pair ran back to back, so a
    # load change on a shared machine hits both members of a pair alike.
    ratios = [g / t for t, g in zip(*times) if t > 0]
    ratio = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratio, ratio, ratio]
    return (
        setting.name,
        setting.shape if args.div == 1 else f"{setting.shape} /{args.div}",
        f"{med_t:.3f}",
        f"{med_g:.3f}",
        f"{ratio:.2f}x",
        f"{q[0]:.2f}-{q[2]:.2f}",
        f"{diff:.1e}",
        "",
    )


def _print_table(rows: Sequence[Tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |", flush=True)
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: less noise)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per side (default 100; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: batches divided by 8, few repeats")
    p.add_argument(
        "--aa",
        action="store_true",
        help="A/A calibration: time torch against a plain copy of itself (ratios show the machine's noise)",
    )
    p.add_argument("--only", default="", help="comma-separated substrings: run settings whose name contains one")
    p.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="CPU: wall time (default) or this process's CPU time (on a shared machine it leaves out the "
        "time other programs held the cores; cache and memory contention still count)",
    )
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 100
    if args.warmup is None:
        args.warmup = 1 if args.quick else 10
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")
    if args.clock == "process" and args.device != "cpu":
        p.error("--clock process measures CPU time: use it with --device cpu")
    if not args.quick and args.repeats < 50:
        print(f"note: --repeats {args.repeats} < 50: medians will be noisy", file=sys.stderr)
    args.div = 8 if args.quick else 1
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    settings = [s for s in SETTINGS if not wanted or any(w in s.name.lower() for w in wanted)]

    who = f"gradlens {gradlens.__version__} vs torch"
    if args.aa:
        who = "A/A calibration: torch vs a copy of itself, torch"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"{who} {torch.__version__} | {device.type} ({where}) | "
        f"threads {torch.get_num_threads()} | {args.clock if device.type == 'cpu' else 'cuda events'} clock | "
        f"warmup {args.warmup}, median of {args.repeats} | "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "step = forward + backward (parameters and activation input); ms = median per side; "
        "gradlens/torch = median of paired per-iteration ratios (ratio IQR: its quartiles)\n"
    )
    timer = _Timer(device, args.clock)
    rows: List[Tuple[str, ...]] = [HEADER]
    for setting in settings:
        rows.append(_run_setting(setting, args, device, timer))
    _print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
