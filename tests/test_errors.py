"""torch_hollow.errors: a short `Cause` inside, located once where a public verb was called.

Every refusal a user sees names the module path, the parameter, its shape (when there is one)
and the fix, each exactly once, and a refusal changes nothing.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from torch_hollow import HollowError, HollowLinear, convert, hollow_, rules_of, zero_diagonal_
from torch_hollow.errors import Cause, at, located
from torch_hollow.functional import hollow_linear
from torch_hollow.patterns import Diagonal, Mask


def test_cause_is_a_hollow_error_with_what_and_fix():
    cause = Cause("is broken", "mend it")
    assert isinstance(cause, HollowError) and isinstance(cause, ValueError)
    assert (cause.what, cause.fix) == ("is broken", "mend it")
    assert str(cause) == "torch_hollow: is broken. Fix: mend it."


@pytest.mark.parametrize(
    ("path", "shape", "where"),
    [
        ("model.fc", (3, 4), "'model.fc.weight' (shape (3, 4))"),
        ("model.fc", None, "'model.fc.weight'"),
        ("", torch.Size([2, 2]), "'weight' (shape (2, 2))"),
    ],
)
def test_at_locates_a_cause_once(path, shape, where):
    with pytest.raises(HollowError) as info, at(path, "weight", shape):
        raise Cause("is broken", "mend it")
    error = info.value
    assert type(error) is HollowError  # located: no longer a Cause
    assert str(error) == f"torch_hollow: {where}: is broken. Fix: mend it."
    assert error.__cause__ is None and error.__suppress_context__  # raised `from None`


def test_located_builds_the_same_message_as_at():
    error = located("a.b", "w", (1, 2), "what", "fix")
    assert str(error) == "torch_hollow: 'a.b.w' (shape (1, 2)): what. Fix: fix."


@pytest.mark.parametrize(
    "error",
    [ValueError("plain"), TypeError("plain"), HollowError("torch_hollow: already located")],
)
def test_at_lets_other_exceptions_through_untouched(error):
    with pytest.raises(type(error)) as info, at("model", "weight", (2, 2)):
        raise error
    assert info.value is error


def test_at_without_an_exception_does_nothing():
    with at("model", "weight"):
        value = 1
    assert value == 1


class IntParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, 3, dtype=torch.int64), requires_grad=False)


def _second_rule():
    layer = hollow_(nn.Linear(3, 3))
    hollow_(layer, offset=1)


# name -> (call, the location it names, the shape it names or None, what it says)
REFUSALS = {
    "missing parameter": (
        lambda: hollow_(nn.Linear(3, 3), "kernel"),
        "'Linear.kernel'",
        None,
        "has no parameter 'kernel'",
    ),
    "not floating": (lambda: hollow_(IntParam(), "w"), "'IntParam.w'", (3, 3), "torch.int64"),
    "pattern does not fit": (
        lambda: hollow_(nn.Linear(3, 4), pattern=Mask(torch.ones(2, 2, dtype=torch.bool))),
        "'Linear.weight'",
        (4, 3),
        "does not fit",
    ),
    "offset and pattern": (
        lambda: hollow_(nn.Linear(3, 3), offset=1, pattern=Diagonal(1)),
        "'Linear.weight'",
        None,
        "both offset=1 and pattern",
    ),
    "HollowLinear offset": (
        lambda: HollowLinear(3, 3, offset=5),
        "'HollowLinear.weight'",
        (3, 3),
        "offset 5 lies outside",
    ),
    "hollow_linear 3-D": (
        lambda: hollow_linear(torch.randn(2, 3), torch.randn(2, 3, 3)),
        "'weight'",
        (2, 3, 3),
        "is 3-D",
    ),
    "zero_diagonal_ offset": (
        lambda: zero_diagonal_(torch.randn(3, 3), offset=-3),
        "'tensor'",
        (3, 3),
        "offset -3 lies outside",
    ),
    "second rule": (_second_rule, "'HollowLinear.weight'", (3, 3), "already held by"),
    "convert names the submodule": (
        lambda: convert(nn.Sequential(nn.Linear(3, 3)), where=lambda q, m: q == "0", offset=4),
        "'0.weight'",
        (3, 3),
        "offset 4 lies outside",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_public_refusals_name_location_shape_and_fix_once(case):
    call, where, shape, what = REFUSALS[case]
    with pytest.raises(HollowError) as info:
        call()
    message = str(info.value)
    assert type(info.value) is HollowError, "a Cause reached the user unlocated"
    assert message.startswith(f"torch_hollow: {where}"), message
    assert message.count(where) == 1 and message.count("Fix:") == 1, message
    assert message.count("torch_hollow:") == 1, message
    assert re.search(r"Fix: \S", message), message
    assert what in message, message
    if shape is not None:
        assert message.count(f"(shape {shape})") == 1, message
    else:
        assert "(shape" not in message, message


def test_a_refusal_changes_nothing():
    layer = nn.Linear(3, 4)
    before = layer.weight.detach().clone()
    with pytest.raises(HollowError):
        hollow_(layer, pattern=Mask(torch.ones(2, 2, dtype=torch.bool)))
    assert type(layer) is nn.Linear and not rules_of(layer) and "_hollow" not in layer.__dict__
    assert torch.equal(layer.weight.view(torch.int32), before.view(torch.int32))
    held = hollow_(nn.Linear(3, 3))
    with pytest.raises(HollowError, match="already held"):
        hollow_(held, offset=1)
    assert rules_of(held)["weight"].pattern == Diagonal(0)
