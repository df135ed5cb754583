"""Testing helpers: assert a backward pass is right, from plain code or from pytest.

* :func:`assert_backward_correct` raises ``AssertionError`` whose message is the full
  :class:`~gradlens.verify.BackwardReport`.
* :func:`assert_model_backward_correct` does it for every custom Function a model's
  forward calls (:func:`gradlens.check_model`), on the inputs the model gives them.
* :class:`BackwardCase` names one Function under test; :func:`backward_test` turns a list
  of cases into one parametrized pytest test (one line in your test file).
* A pytest plugin: ``pytest_plugins = ["gradlens.testing"]`` in your top-level
  ``conftest.py`` gives the ``gradlens_check`` fixture.

Example (a test file)::

    import torch, gradlens.testing as glt

    CASES = [
        glt.BackwardCase("sin", MySin.apply, lambda: (torch.randn(8, requires_grad=True),), reference=torch.sin),
        glt.BackwardCase("linear", MyLinear.apply, make_linear_inputs, reference=torch.nn.functional.linear),
    ]
    test_my_functions = glt.backward_test(CASES)   # one parametrized test per case

    def test_one(gradlens_check):                   # or the fixture, case by case
        gradlens_check(MySin.apply, torch.randn(8, requires_grad=True), reference=torch.sin)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from gradlens.verify import BackwardReport, ModelReport, check_backward, check_model

__all__ = ["assert_backward_correct", "assert_model_backward_correct", "BackwardCase", "backward_test", "gradlens_check"]


def assert_backward_correct(fn: Any, *inputs: Any, reference: Optional[Callable[..., Any]] = None, **options: Any) -> BackwardReport:
    """Run :func:`gradlens.check_backward` and raise ``AssertionError(report)`` unless it is ok.

    Takes the same arguments as :func:`gradlens.check_backward`; returns the report when
    the backward is right (warnings such as kinks do not fail).

    Example:
        >>> import torch
        >>> from gradlens.testing import assert_backward_correct
        >>> x = torch.randn(5, dtype=torch.float64, requires_grad=True)
        >>> _ = assert_backward_correct(torch.exp, x)
    """
    report = check_backward(fn, *inputs, reference=reference, **options)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report


def assert_model_backward_correct(model: Any, batch: Any, *, allow_empty: bool = False, **options: Any) -> ModelReport:
    """Run :func:`gradlens.check_model` and raise ``AssertionError(report)`` unless every custom Function is right.

    ``batch`` is what the model is called with: a tensor (``model(batch)``) or a tuple /
    list of positional arguments (``model(*batch)``). A forward that calls no custom
    Function fails too (nothing was verified) unless ``allow_empty=True``. Other options
    (``loss_fn``, ``references``, ``max_calls``, ``atol``...) go to :func:`gradlens.check_model`.

    Example:
        >>> import torch
        >>> from gradlens.testing import assert_model_backward_correct
        >>> class Cube(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x**3
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         (x,) = ctx.saved_tensors
        ...         return 3 * x**2 * g
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(3, 2)
        ...     def forward(self, x):
        ...         return Cube.apply(self.fc(x))
        >>> report = assert_model_backward_correct(Net(), torch.randn(5, 3))
        >>> report.functions[0].name
        'Cube'
    """
    args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    report = check_model(model, *args, **options)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    if not allow_empty and not any(f.checked for f in report.functions):
        raise AssertionError(
            "\n" + str(report) + "\nno custom autograd.Function was checked: nothing verified (allow_empty=True accepts this)"
        )
    return report


InputsLike = Union[Tuple[Any, ...], Callable[[], Tuple[Any, ...]]]


@dataclass
class BackwardCase:
    """One Function to verify: an id, the callable, its inputs, an optional reference.

    Attributes:
        id: the pytest id (``"linear-f32"``).
        fn: callable of tensors or ``nn.Module``.
        inputs: a tuple of positional arguments, or a zero-argument callable returning
            one (preferred: fresh tensors per test).
        reference: plain-torch forward for exact comparison (optional).
        options: keyword options of :func:`gradlens.check_backward` (``atol``, ``mode``...).
    """

    id: str
    fn: Any
    inputs: InputsLike
    reference: Optional[Callable[..., Any]] = None
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise TypeError(f"BackwardCase(id=...) expects a non-empty str, got {self.id!r}")
        if not callable(self.fn):
            raise TypeError(f"BackwardCase(fn=...) expects a callable or nn.Module, got {type(self.fn).__name__}")
        if not (callable(self.inputs) or isinstance(self.inputs, tuple)):
            raise TypeError(f"BackwardCase(inputs=...) expects a tuple or a callable returning one, got {type(self.inputs).__name__}")

    def make_inputs(self) -> Tuple[Any, ...]:
        """The positional arguments (calls ``inputs`` when it is a callable)."""
        args = self.inputs() if callable(self.inputs) else self.inputs
        if not isinstance(args, tuple):
            raise TypeError(f"BackwardCase({self.id!r}).inputs() must return a tuple, got {type(args).__name__}")
        return args

    def check(self) -> BackwardReport:
        """Assert the backward is correct (``AssertionError`` with the report otherwise)."""
        return assert_backward_correct(self.fn, *self.make_inputs(), reference=self.reference, **self.options)

    def __str__(self) -> str:
        return self.id


def backward_test(cases: Sequence[BackwardCase]) -> Callable[..., None]:
    """A pytest test function parametrized over ``cases`` (ids from ``case.id``).

    Assign it to a ``test_*`` name in a test module: ``test_backward = backward_test(CASES)``.
    """
    import pytest

    cases = list(cases)
    for c in cases:
        if not isinstance(c, BackwardCase):
            raise TypeError(f"backward_test(cases=...) expects BackwardCase items, got {type(c).__name__}")

    @pytest.mark.parametrize("backward_case", [pytest.param(c, id=c.id) for c in cases])
    def test_backward(backward_case: BackwardCase) -> None:
        backward_case.check()

    return test_backward


def _checker(fn_or_case: Any, *inputs: Any, **options: Any) -> BackwardReport:
    if isinstance(fn_or_case, BackwardCase):
        if inputs or options:
            raise TypeError("gradlens_check(case) takes no further arguments when given a BackwardCase")
        return fn_or_case.check()
    return assert_backward_correct(fn_or_case, *inputs, **options)


try:  # the pytest plugin part: only where pytest is installed
    import pytest as _pytest

    @_pytest.fixture
    def gradlens_check() -> Callable[..., BackwardReport]:
        """pytest fixture: ``gradlens_check(fn, *inputs, reference=None, **options)`` or
        ``gradlens_check(case)`` asserts the backward is correct; the report is the failure message.

        Enable it with ``pytest_plugins = ["gradlens.testing"]`` in the top-level conftest.py.
        """
        return _checker

except ImportError:  # pragma: no cover - pytest is a test-only dependency
    gradlens_check = None  # type: ignore[assignment]
