"""One shared tester for every op in ``gradlens.functional``.

An :class:`OpCase` names an op, its torch counterpart, how to build inputs and the
keyword options. :func:`check_against_torch` compares forward and backward in
float32 with torch's own autograd (contiguous and non-contiguous inputs);
:func:`check_gradcheck` runs float64 ``gradcheck`` and ``gradgradcheck`` on ours.
Each op family has a ``test_<family>.py`` that lists its cases (good and bad).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

InputFn = Callable[[torch.dtype, torch.device, torch.Generator], Tuple[Any, ...]]


@dataclass
class OpCase:
    """One op under one setting.

    Attributes:
        id: readable test id, e.g. ``"conv2d-stride2-groups2"``.
        ours: the gradlens function under test.
        theirs: the torch reference (same signature).
        make_inputs: ``(dtype, device, generator) -> tuple`` of positional args;
            floating tensors in it are differentiated (unless ``grad_args`` says which).
        kwargs: keyword options passed to both.
        grad_args: indices of the positional args to differentiate (default: all
            floating-point tensors).
        gradgrad: run ``gradgradcheck`` too (set False only with a note why).
        seeded: reseed torch's global RNG before each call (ops that draw randoms,
            e.g. dropout), so ours and theirs see the same random stream.
        rtol, atol: float32 tolerances against torch.
    """

    id: str
    ours: Callable[..., Any]
    theirs: Callable[..., Any]
    make_inputs: InputFn
    kwargs: Dict[str, Any] = field(default_factory=dict)
    grad_args: Optional[Sequence[int]] = None
    gradgrad: bool = True
    seeded: bool = False
    rtol: float = 1e-4
    atol: float = 1e-5

    def __repr__(self) -> str:  # pytest shows this on failure
        return f"OpCase({self.id})"


def _grad_indices(case: OpCase, args: Tuple[Any, ...]) -> Sequence[int]:
    if case.grad_args is not None:
        return list(case.grad_args)
    return [i for i, a in enumerate(args) if torch.is_tensor(a) and a.is_floating_point()]


def _tensors(out: Any) -> Tuple[torch.Tensor, ...]:
    if torch.is_tensor(out):
        return (out,)
    if isinstance(out, (tuple, list)):
        return tuple(t for o in out for t in _tensors(o))
    if out is None:
        return ()
    raise TypeError(f"unexpected output type {type(out).__name__}")


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous tensor (every other element of a wider buffer)."""
    if t.dim() == 0 or t.numel() == 1:  # one element is contiguous in any layout
        return t.clone()
    wide = torch.zeros(*t.shape, 2, dtype=t.dtype, device=t.device)
    view = wide[..., 0]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


def _call(case: OpCase, fn: Callable[..., Any], args: Tuple[Any, ...], seed: int) -> Any:
    if case.seeded:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    return fn(*args, **case.kwargs)


def _prepare(args: Tuple[Any, ...], grad_idx: Sequence[int], contiguous: bool) -> Tuple[Any, ...]:
    out = []
    for i, a in enumerate(args):
        if torch.is_tensor(a):
            a = a.detach().clone()
            if not contiguous and a.is_floating_point():
                a = noncontiguous(a)
            if i in grad_idx:
                a.requires_grad_(True)
        out.append(a)
    return tuple(out)


def check_against_torch(case: OpCase, device: str, *, contiguous: bool = True, seed: int = 0) -> None:
    """Float32 forward and backward of ``case.ours`` equal torch's autograd."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = case.make_inputs(torch.float32, torch.device(device), gen)
    grad_idx = _grad_indices(case, base)
    a_ours = _prepare(base, grad_idx, contiguous)
    a_ref = _prepare(base, grad_idx, contiguous)

    out_ours = _tensors(_call(case, case.ours, a_ours, seed))
    out_ref = _tensors(_call(case, case.theirs, a_ref, seed))
    assert len(out_ours) == len(out_ref), "number of outputs differs from torch"
    for k, (o, r) in enumerate(zip(out_ours, out_ref)):
        assert o.shape == r.shape, f"output {k}: shape {tuple(o.shape)} != torch {tuple(r.shape)}"
        assert o.dtype == r.dtype, f"output {k}: dtype {o.dtype} != torch {r.dtype}"
        torch.testing.assert_close(o, r, rtol=case.rtol, atol=case.atol, msg=lambda m: f"output {k}: {m}")

    # Mutated in place (e.g. running stats): compare the non-grad tensor args too.
    for i, (x, y) in enumerate(zip(a_ours, a_ref)):
        if torch.is_tensor(x) and i not in grad_idx:
            torch.testing.assert_close(x, y, rtol=case.rtol, atol=case.atol, msg=lambda m: f"arg {i} after call: {m}")

    diff_outs = [(o, r) for o, r in zip(out_ours, out_ref) if r.requires_grad]
    if not grad_idx or not diff_outs:
        return
    cot = [torch.randn(r.shape, generator=gen, dtype=r.dtype).to(device) for _, r in diff_outs]
    inputs_ours = [a_ours[i] for i in grad_idx]
    inputs_ref = [a_ref[i] for i in grad_idx]
    g_ours = torch.autograd.grad([o for o, _ in diff_outs], inputs_ours, cot, allow_unused=True)
    g_ref = torch.autograd.grad([r for _, r in diff_outs], inputs_ref, cot, allow_unused=True)
    for i, go, gr in zip(grad_idx, g_ours, g_ref):
        if gr is None:
            assert go is None or torch.count_nonzero(go) == 0, f"arg {i}: gradient where torch has none"
            continue
        assert go is not None, f"arg {i}: gradient missing (torch has one)"
        assert go.shape == gr.shape and go.dtype == gr.dtype, f"arg {i}: gradient shape/dtype"
        torch.testing.assert_close(go, gr, rtol=case.rtol, atol=case.atol, msg=lambda m: f"grad of arg {i}: {m}")


def check_gradcheck(case: OpCase, device: str, *, seed: int = 0) -> None:
    """Float64 ``gradcheck`` and (unless disabled) ``gradgradcheck`` of ``case.ours``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = case.make_inputs(torch.float64, torch.device(device), gen)
    grad_idx = _grad_indices(case, base)
    args = _prepare(base, grad_idx, contiguous=True)
    diff = [args[i] for i in grad_idx]

    def fn(*xs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        full = list(args)
        for i, x in zip(grad_idx, xs):
            full[i] = x
        # In-place-updated buffers (running stats) must not drift between calls.
        full = [a.clone() if torch.is_tensor(a) and k not in grad_idx else a for k, a in enumerate(full)]
        outs = _tensors(_call(case, case.ours, tuple(full), seed))
        return tuple(o for o in outs if o.requires_grad)

    assert torch.autograd.gradcheck(fn, diff, eps=1e-6, atol=1e-5, rtol=1e-3)
    if case.gradgrad:
        assert torch.autograd.gradgradcheck(fn, diff, eps=1e-6, atol=1e-5, rtol=1e-3)
