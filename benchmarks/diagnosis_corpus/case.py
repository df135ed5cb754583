"""The case type of the diagnosis corpus, the label -> finding-kind table, shared data.

A :class:`Case` is one small training program: ``build()`` returns the model, its
optimizer(s) and a ``step(i, observe)`` closure that runs training step ``i`` (forward,
loss, backward, optimizer step) and hands the loss to ``observe``. Buggy cases carry
the *symptom* labels of :data:`LABELS` that a detector should report (in the issue's
vocabulary: vanishing gradient, lr too high, slow convergence, ...), the layers the
bug lives in (``culprits``; empty when the bug has no layer, e.g. a learning rate),
and the root cause in the source's own words (``cause``). Healthy and fixed cases
carry no label: any warning-level finding on them is a false alarm.

Labelling policy: a case is labelled by what its source says the bug is and by what
the program measurably does without gradlens (a softmax over one unit has an exactly
zero gradient; a sigmoid output cannot reach regression targets of 20), never by what
gradlens reports on it.

Loss policy: every case's step hands its loss to ``observe``, because every ported
program reports it (Keras ``fit`` prints the loss each epoch; the Stack Overflow posts
quote it). ``benchmarks/diagnosis_eval.py --no-loss`` passes a no-op instead, which
measures what the gradients and the model output alone reveal.

Example:
    >>> c = Case("toy", _toy, source="own", cite="example", bugs=("lr_too_high",))
    >>> sorted(c.kinds)
    ['divergence', 'update_ratio']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Case", "Label", "LABELS", "Program", "Step", "kinds_of",
    "circles", "blobs", "regression", "digits", "tokens", "train_step", "mlp", "mlp_program", "seed",
    "keras_categorical_ce",
]

Step = Callable[[int, Callable[[torch.Tensor], None]], None]
Program = Tuple[nn.Module, Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]], Step]


@dataclass(frozen=True)
class Label:
    """A symptom in the issue's vocabulary and the gradlens finding kinds that name it."""

    kinds: Tuple[str, ...]
    meaning: str
    #: whether the symptom lives in a layer; False for global ones (a learning rate, the loss
    #: curve): a case's culprits are judged on findings of its layered labels' kinds only
    layered: bool = True


#: symptom label -> the finding kinds that count as reporting it (the one table).
#: Kinds marked "new" in ``meaning`` did not exist in gradlens when the corpus was
#: written (issue 12 asks for them); the eval prints which kinds no rule produces.
LABELS: Dict[str, Label] = {
    "vanishing_gradient": Label(("vanishing",), "AUTOTRAINER gradient vanish; DeepDiagnosis vanishing gradient"),
    "exploding_gradient": Label(("exploding",), "AUTOTRAINER gradient explode; DeepDiagnosis exploding tensor"),
    "nonfinite": Label(("nonfinite",), "NaN/Inf in loss, output, gradients or weights "
                       "(AUTOTRAINER nan_loss/nan_gradient, DeepDiagnosis numerical error)"),
    "dying_relu": Label(("dead_units",), "AUTOTRAINER dying ReLU; DeepDiagnosis dead node"),
    "zero_gradient": Label(("dead_units",), "a layer whose gradient is exactly zero (softmax over one unit, "
                           "a branch the loss ignores, a zeroed norm weight)"),
    "saturated_activation": Label(("saturation",), "DeepDiagnosis saturated activation: tanh/sigmoid "
                                  "units pinned at their limits"),
    "lr_too_high": Label(("update_ratio", "divergence"), "learning rate too high: update/weight ratio "
                         "far above 1e-3, loss rising", layered=False),
    "divergence": Label(("divergence",), "the loss rises by orders of magnitude", layered=False),
    "slow_convergence": Label(("stalled",), "new: AUTOTRAINER slow convergence, DeepDiagnosis loss not "
                              "decreasing / accuracy not increasing", layered=False),
    "oscillating_loss": Label(("oscillation",), "new: AUTOTRAINER oscillating loss", layered=False),
    "unchanged_weight": Label(("stalled", "update_ratio"), "new: DeepDiagnosis unchanged weight "
                              "(||dW||/||W|| ~ 0 with a finite gradient: lr far too low)"),
    "unreachable_output": Label(("unreachable_output",), "new: a bounded output activation that cannot "
                                "reach the targets (DeepDiagnosis output out of range)"),
    "weight_growth": Label(("scale",), "weights or activations growing by orders of magnitude "
                           "(AUTOTRAINER large_weight)"),
    "weight_scale": Label(("scale", "growth"), "new: a layer's weights orders of magnitude off their initial "
                          "scale (an embedding scaled by 1e4), the layer to name being the mis-scaled one"),
}


def kinds_of(labels: Sequence[str]) -> FrozenSet[str]:
    """The finding kinds that report any of ``labels``.

    >>> sorted(kinds_of(["dying_relu", "nonfinite"]))
    ['dead_units', 'nonfinite']
    """
    return frozenset(k for name in labels for k in LABELS[name].kinds)


@dataclass(frozen=True)
class Case:
    """One labelled training program of the corpus.

    Attributes:
        name: unique id, ``snake_case``.
        build: ``() -> (model, optimizer or list of optimizers, step)``; deterministic.
        source: the corpus module it belongs to (``"autotrainer"``, ``"deepfd"``, ...).
        cite: where the program comes from (paper, repository path, Stack Overflow post id)
            and what its bug is, in one line.
        bugs: symptom labels (keys of :data:`LABELS`); empty for a healthy/fixed program.
        culprits: layer names a finding may name for the culprit to count as right
            (module names; a parameter of one counts too); empty when the bug has no layer.
        also: finding kinds that are true consequences (not counted, not false alarms).
        cause: the root cause in the source's words (DeepFD's fault type, the post's fix).
        steps: optimizer steps to run.
        quick: part of the ``--quick`` subset.
        twin: the name of its fixed (or buggy) twin, if any.
    """

    name: str
    build: Callable[[], Program]
    source: str
    cite: str
    bugs: Tuple[str, ...] = ()
    culprits: FrozenSet[str] = frozenset()
    also: FrozenSet[str] = frozenset()
    cause: str = ""
    steps: int = 60
    quick: bool = False
    twin: Optional[str] = None

    def __post_init__(self) -> None:
        unknown = [b for b in self.bugs if b not in LABELS]
        if unknown:
            raise ValueError(f"Case(bugs=...) got unknown labels {unknown}; expected keys of LABELS")
        if not isinstance(self.culprits, frozenset):
            raise TypeError(f"Case(culprits=...) expects a frozenset, got {type(self.culprits).__name__}")
        if self.steps < 1:
            raise ValueError(f"Case(steps=...) expects a positive int, got {self.steps}")

    @property
    def healthy(self) -> bool:
        """No bug: every warning-level finding on it is a false alarm."""
        return not self.bugs

    @property
    def kinds(self) -> FrozenSet[str]:
        """Finding kinds that report this case's bug."""
        return kinds_of(self.bugs)

    @property
    def layer_kinds(self) -> FrozenSet[str]:
        """Finding kinds whose layer is judged against ``culprits``: those of the layered labels
        (a learning-rate finding of a case labelled ``lr_too_high`` and ``dying_relu`` is not
        judged against the dead layer); all of :attr:`kinds` when no label is layered."""
        layered = [b for b in self.bugs if LABELS[b].layered]
        return kinds_of(layered) if layered else self.kinds


def _toy() -> Program:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, train_step(model, opt, torch.zeros(8, 2), torch.zeros(8, 1), F.mse_loss)


# ---------------------------------------------------------------------------
# shared pieces: data made in code (fixed seeds), a Keras-fit-like step, an MLP
# ---------------------------------------------------------------------------
def seed(s: int) -> None:
    """Seed torch's global RNG (model initialisation)."""
    torch.manual_seed(s)


def _gen(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def circles(n: int = 512, *, noise: float = 0.1, factor: float = 0.5, scale: float = 1.0, s: int = 0):
    """Two concentric circles (sklearn's ``make_circles``), labels float in {0, 1}, shape (n, 1)."""
    g = _gen(s)
    t = torch.rand(n, generator=g) * 2 * math.pi
    y = (torch.arange(n) % 2).float()
    r = torch.where(y > 0, torch.full((n,), factor), torch.ones(n))
    x = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1) + noise * torch.randn(n, 2, generator=g)
    return x * scale, y[:, None]


def blobs(n: int = 512, *, centers: int = 3, std: float = 2.0, dim: int = 2, box: float = 10.0,
          scale: float = 1.0, s: int = 0):
    """Gaussian blobs (sklearn's ``make_blobs``): centres uniform in [-box, box], labels long."""
    g = _gen(s)
    c = (torch.rand(centers, dim, generator=g) * 2 - 1) * box
    y = torch.randint(0, centers, (n,), generator=g)
    x = c[y] + std * torch.randn(n, dim, generator=g)
    return x * scale, y


def regression(n: int = 512, *, dim: int = 8, noise: float = 0.1, scale: float = 1.0, s: int = 0):
    """Linear regression targets (sklearn's ``make_regression``), shape (n, 1)."""
    g = _gen(s)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g) * 10
    y = x @ w + noise * torch.randn(n, 1, generator=g)
    return x * scale, y


def digits(n: int = 256, *, classes: int = 10, side: int = 12, s: int = 0):
    """MNIST-like images: one random template per class plus noise, pixels in [0, 1]."""
    g = _gen(s)
    templates = (torch.rand(classes, 1, side, side, generator=g) > 0.6).float()
    y = torch.randint(0, classes, (n,), generator=g)
    x = (templates[y] * 0.8 + 0.2 * torch.rand(n, 1, side, side, generator=g)).clamp(0, 1)
    return x, y


def tokens(n: int = 128, *, vocab: int = 96, length: int = 16, s: int = 0):
    """Token sequences with structure a language model can learn (a noisy cyclic walk)."""
    g = _gen(s)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    seq = (start + stride * torch.arange(length)) % vocab
    flip = torch.rand(n, length, generator=g) < 0.05
    return torch.where(flip, torch.randint(0, vocab, (n, length), generator=g), seq)


def train_step(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, loss_fn, *,
               batch: int = 32, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Step:
    """A Keras-``fit``-like step: mini-batch ``i`` of (x, y) in order, one optimizer step.

    ``transform`` is applied to the model output before the loss (a Keras output
    activation written as a function).
    """
    n = x.shape[0]
    opts = list(opt) if isinstance(opt, (list, tuple)) else [opt]

    def step(i: int, observe: Callable[[torch.Tensor], None]) -> None:
        j = (i * batch) % n
        xb, yb = x[j:j + batch], y[j:j + batch]
        for o in opts:
            o.zero_grad()
        out = model(xb)
        if transform is not None:
            out = transform(out)
        loss = loss_fn(out, yb)
        observe(loss.detach())
        loss.backward()
        for o in opts:
            o.step()
    return step


def mlp(widths: Sequence[int], act: Callable[[], nn.Module], *, out_act: Optional[Callable[[], nn.Module]] = None,
        init: Optional[Callable[[torch.Tensor], object]] = None) -> nn.Sequential:
    """Linear layers of ``widths`` with ``act`` between them and ``out_act`` at the end.

    Linear layers sit at even indices ('0', '2', ...). ``init`` re-initialises each weight
    (biases are zeroed then), like a Keras ``kernel_initializer``.
    """
    layers = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        if init is not None:
            with torch.no_grad():
                init(lin.weight)
                lin.bias.zero_()
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(act())
        elif out_act is not None:
            layers.append(out_act())
    return nn.Sequential(*layers)


def mlp_program(s: int, widths: Sequence[int], act: Callable[[], nn.Module],
                data: Callable[[], Tuple[torch.Tensor, torch.Tensor]], loss_fn, *, lr: float,
                opt: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                out_act: Optional[Callable[[], nn.Module]] = None,
                init: Optional[Callable[[torch.Tensor], object]] = None, batch: int = 32,
                **opt_kw) -> Callable[[], Program]:
    """The ``build`` of the usual ported program: ``seed(s)``, an :func:`mlp`, its
    optimizer ``opt(params, lr=lr, **opt_kw)``, then ``data()`` -> (x, y) trained with
    :func:`train_step` under ``loss_fn``."""
    def build() -> Program:
        seed(s)
        model = mlp(widths, act, out_act=out_act, init=init)
        o = opt(model.parameters(), lr=lr, **opt_kw)
        x, y = data()
        return model, o, train_step(model, o, x, y, loss_fn, batch=batch)
    return build


def keras_categorical_ce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keras ``categorical_crossentropy`` on probabilities: p / sum(p), clipped, -sum y log p
    (``y``: class indices or one-hot rows)."""
    p = p / p.sum(1, keepdim=True)
    p = p.clamp(1e-7, 1 - 1e-7)
    if y.dim() == 1:
        y = F.one_hot(y, p.shape[1]).float()
    return -(y * torch.log(p)).sum(1).mean()


def he_uniform(w: torch.Tensor) -> None:
    """Keras ``VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')`` (He uniform)."""
    nn.init.kaiming_uniform_(w, nonlinearity="relu")


def keras_random_uniform(w: torch.Tensor) -> None:
    """Keras ``RandomUniform()`` default: U(-0.05, 0.05)."""
    nn.init.uniform_(w, -0.05, 0.05)


def linears(model: nn.Module) -> FrozenSet[str]:
    """Names of every Linear/Conv layer of ``model`` (culprits of a whole-stack bug)."""
    return frozenset(n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d)))


def stack(n_linear: int) -> FrozenSet[str]:
    """Culprit names of the Linear layers of an :func:`mlp` with ``n_linear`` Linear layers."""
    return frozenset(str(2 * i) for i in range(n_linear))


def keras_bce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Keras ``binary_crossentropy`` on probabilities: clipped to [1e-7, 1 - 1e-7], NaN passes through.

    (``F.binary_cross_entropy`` raises on a NaN input; Keras reports a NaN loss.)
    """
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
