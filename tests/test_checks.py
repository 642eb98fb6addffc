"""torch_hollow._checks: the checks every verb runs first, each refusal a `Cause` (no location).

The verb that called adds the location (tests/test_errors.py); here the `Cause` itself: what is
wrong and the fix, and nothing written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_hollow._checks import check_tensor, resolve_pattern
from torch_hollow.errors import Cause
from torch_hollow.patterns import BlockDiagonal, Diagonal, Mask, StackedDiagonal
from torch_hollow.rules import Zeros


def _refusal(call) -> Cause:
    with pytest.raises(Cause) as info:
        call()
    cause = info.value
    assert type(cause) is Cause, "located too early: the verb adds the location"
    assert str(cause) == f"torch_hollow: {cause.what}. Fix: {cause.fix}."
    assert "(shape" not in str(cause) and cause.what and cause.fix
    return cause


@pytest.mark.parametrize(
    ("offset", "pattern", "expected"),
    [
        (0, None, Diagonal(0)),
        (-2, None, Diagonal(-2)),
        (0, StackedDiagonal(3), StackedDiagonal(3)),
        (0, Diagonal(0) | Diagonal(1), Diagonal(0) | Diagonal(1)),
    ],
)
def test_resolve_pattern_gives_the_pattern_or_the_diagonal(offset, pattern, expected):
    resolved = resolve_pattern(offset, pattern)
    assert resolved == expected
    if pattern is not None:
        assert resolved is pattern


@pytest.mark.parametrize("pattern", [Diagonal(1), Diagonal(2), BlockDiagonal(2)])
def test_resolve_pattern_refuses_offset_and_pattern_together(pattern):
    cause = _refusal(lambda: resolve_pattern(2, pattern))
    assert cause.what == f"got both offset=2 and pattern={pattern!r}"
    assert "offset=2 means pattern=Diagonal(2)" in cause.fix


@pytest.mark.parametrize(
    "pattern", ["diagonal", 1, torch.eye(2, dtype=torch.bool), Zeros(Diagonal())]
)
def test_resolve_pattern_refuses_what_is_not_a_pattern(pattern):
    cause = _refusal(lambda: resolve_pattern(0, pattern))
    assert cause.what.startswith("pattern must be a torch_hollow.patterns.Pattern")
    assert repr(pattern) in cause.what


@pytest.mark.parametrize(
    ("weight", "kwargs", "what"),
    [
        ([[1.0, 0.0]], {}, "is list, not a tensor"),
        (np.ones((2, 2)), {}, "is ndarray, not a tensor"),
        (torch.ones(3, 3, dtype=torch.int32), {}, "has dtype torch.int32, not floating point"),
        (torch.ones(3, 3, dtype=torch.bool), {}, "has dtype torch.bool, not floating point"),
        (torch.ones(2, 3, 3), {"max_dim": 2}, "is 3-D, this needs a matrix"),
        (torch.ones(3), {}, "a pattern needs a matrix, this is 1-D"),
        (torch.ones(3, 3), {"rule": Zeros(Diagonal(3))}, "offset 3 lies outside the 3x3 matrix"),
        (torch.ones(5, 3), {"rule": Zeros(StackedDiagonal(2))}, "5 rows do not split into 2"),
    ],
)
def test_check_tensor_refusals_are_causes(weight, kwargs, what):
    rule = kwargs.pop("rule", Zeros(Diagonal(0)))
    before = weight.clone() if isinstance(weight, torch.Tensor) else None
    cause = _refusal(lambda: check_tensor(weight, rule, **kwargs))
    assert cause.what.startswith(what), cause.what
    if before is not None:
        assert torch.equal(weight, before)


def test_check_tensor_passes_the_rules_own_problem_through():
    rule = Zeros(Mask(torch.ones(2, 2, dtype=torch.bool)))
    cause = _refusal(lambda: check_tensor(torch.ones(4, 3), rule))
    assert (cause.what, cause.fix) == rule.problem(torch.Size((4, 3)))


@pytest.mark.parametrize(
    ("weight", "kwargs"),
    [
        (torch.ones(3, 3), {}),
        (torch.ones(2, 3, 3), {}),  # batched: no max_dim
        (torch.ones(3, 3, dtype=torch.complex64), {}),
        (torch.ones(3, 3, dtype=torch.bfloat16), {"max_dim": 2}),
        (torch.ones(3, 3, dtype=torch.int64), {"floating": False}),  # zero_diagonal_'s check
        (torch.nn.Parameter(torch.ones(4, 4)), {"max_dim": 2}),
        (torch.ones(3, 3, device="meta"), {}),
    ],
)
def test_check_tensor_accepts_what_a_rule_can_hold(weight, kwargs):
    assert check_tensor(weight, Zeros(Diagonal(1)), **kwargs) is None
