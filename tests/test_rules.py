"""torch_hollow.rules: `Zeros`, the questions a `Rule` answers, and a new rule the guard holds.

The held entries come from tests/_reference_patterns.py (index arithmetic), never from the
pattern under test; values are compared through integer views, bitwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from _reference_patterns import PATTERNS
from conftest import assert_bitwise_zero, diag_mask
from torch import Tensor, nn

from torch_hollow import HollowLinear, rules_of
from torch_hollow.constrain import hold_
from torch_hollow.patterns import Diagonal, Mask, Pattern
from torch_hollow.rules import Plan, Rule, Zeros

INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: Tensor) -> Tensor:
    """The raw bits of ``t``: equal bits, equal values (NaN, -0.0 included)."""
    return t.detach().view(INTS[t.element_size()])


def nasty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Random values with NaN, +-inf and -0.0 sprinkled everywhere."""
    generator = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=generator)
    special = torch.tensor([math.nan, math.inf, -math.inf, -0.0])
    picks = torch.randint(0, 8, shape, generator=generator)
    t = torch.where(picks < 4, special[picks.clamp(max=3)], t)
    return t.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_enforce_writes_plus_zero_on_held_entries_only(name, batch, dtype):
    pattern, held = PATTERNS[name](6, 4)
    t = nasty((*batch, 6, 4), dtype)
    before = bits(t).clone()
    assert Zeros(pattern).enforce_(t) is t
    assert_bitwise_zero(t, held)
    free = ~held.expand(t.shape)
    assert torch.equal(bits(t)[free], before[free])


@pytest.mark.parametrize("name", list(PATTERNS))
def test_apply_is_a_differentiable_copy_with_zero_grad_on_held_entries(name):
    pattern, held = PATTERNS[name](5, 4)
    t = nasty((5, 4), torch.float64).nan_to_num(0.5).requires_grad_()
    before = bits(t).clone()
    out = Zeros(pattern).apply(t)
    assert out.data_ptr() != t.data_ptr() and torch.equal(bits(t), before)
    assert_bitwise_zero(out, held)
    assert torch.equal(bits(out)[~held], before[~held])
    upstream = torch.randn(5, 4, dtype=torch.float64)
    (out * upstream).sum().backward()
    assert torch.equal(bits(t.grad), bits(upstream.masked_fill(held, 0.0)))


@pytest.mark.parametrize("name", list(PATTERNS))
def test_violations_count_and_largest_change(name):
    pattern, held = PATTERNS[name](6, 4)
    rule = Zeros(pattern)
    t = torch.ones(6, 4).masked_fill(held, 0.0)
    assert rule.violations(t) == (0, 0.0)
    t.masked_fill_(held, 2.0)
    first = held.nonzero()[0].tolist()
    t[tuple(first)] = -7.5
    assert rule.violations(t) == (int(held.sum()), 7.5)
    t[tuple(first)] = math.nan
    count, largest = rule.violations(t)
    assert count == int(held.sum()) and math.isnan(largest)


@pytest.mark.parametrize("name", list(PATTERNS))
def test_cpu_float32_plan_is_numpy_writes_that_enforce(name):
    pattern, held = PATTERNS[name](6, 4)
    t = nasty((6, 4), torch.float32)
    before, version = bits(t).clone(), t._version
    plan = Zeros(pattern).plan(t)
    assert isinstance(plan, Plan) and plan.calls and plan.zeros == ()
    assert torch.equal(bits(t), before), "making a plan must not write"
    for call in plan.calls:
        call()
    assert t._version == version, "a torch write: the plan was meant to go through NumPy"
    assert_bitwise_zero(t, held)
    assert torch.equal(bits(t)[~held], before[~held])


@pytest.mark.parametrize("name", ["diagonal", "above", "below", "stacked", "blocks"])
def test_bfloat16_plan_is_zero_views_of_the_storage(name):
    pattern, held = PATTERNS[name](6, 4)
    t = nasty((6, 4), torch.bfloat16)
    before = bits(t).clone()
    plan = Zeros(pattern).plan(t)
    assert plan.calls == () and plan.zeros
    base = t.untyped_storage().data_ptr()
    assert all(v.untyped_storage().data_ptr() == base for v in plan.zeros)
    torch._foreach_zero_(list(plan.zeros))
    assert_bitwise_zero(t, held)
    assert torch.equal(bits(t)[~held], before[~held])


@pytest.mark.parametrize(
    ("offset", "local"), [((0, 0), (3, 4)), ((3, 0), (3, 4)), ((2, 1), (3, 2)), ((0, 2), (6, 2))]
)
@pytest.mark.parametrize("name", list(PATTERNS))
def test_restrict_is_the_reference_block(name, offset, local):
    pattern, held = PATTERNS[name](6, 4)
    window = held[offset[0] : offset[0] + local[0], offset[1] : offset[1] + local[1]]
    shard = Zeros(pattern).restrict((6, 4), offset, local)
    assert isinstance(shard, Zeros)
    zeroed = shard.enforce_(torch.ones(local)) == 0
    assert torch.equal(zeroed, window)


def test_record_writes_the_0_1_0_metadata_format():
    metadata = {"version": 1}
    Zeros(Diagonal(1)).record(metadata, "weight")
    Zeros(Diagonal(-2)).record(metadata, "out_proj.weight")
    assert metadata == {
        "version": 1,
        "hollow": {
            "weight": {"type": "Diagonal", "offset": 1},
            "out_proj.weight": {"type": "Diagonal", "offset": -2},
        },
    }
    state = HollowLinear(3, 3, offset=1).state_dict()
    assert state._metadata[""]["hollow"] == {"weight": {"type": "Diagonal", "offset": 1}}


def test_zeros_equality_hash_and_repr():
    allowed = torch.rand(3, 3) > 0.5
    assert Zeros(Diagonal(1)) == Zeros(Diagonal(1))
    assert hash(Zeros(Diagonal(1))) == hash(Zeros(Diagonal(1)))
    assert Zeros(Diagonal(1)) != Zeros(Diagonal(0))
    assert Zeros(Mask(allowed)) == Zeros(Mask(allowed.clone()))
    assert Zeros(Mask(allowed)) != Zeros(Mask(~allowed))
    assert len({Zeros(Diagonal(1)), Zeros(Diagonal(1)), Zeros(Diagonal(2))}) == 2
    assert repr(Zeros(Diagonal(1))) == "Zeros(pattern=Diagonal(offset=1))"
    assert Zeros(Diagonal(1)).grad_pattern == Diagonal(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Zeros(Diagonal(0)).pattern = Diagonal(1)  # type: ignore[misc]


@dataclasses.dataclass(frozen=True)
class NonNegative(Rule):
    """The tests' own rule: entries of ``pattern`` are >= 0 (clamped); grads left alone."""

    pattern: Pattern
    grad_pattern = None

    def enforce_(self, t):
        for view in self.pattern.views(t):
            view.clamp_(min=0.0)
        return t

    def apply(self, t):
        return self.enforce_(t.clone())

    def violations(self, t):
        values = torch.cat([v.detach().reshape(-1) for v in self.pattern.views(t)])
        negative = values[values < 0]
        return int(negative.numel()), float(-negative.min()) if negative.numel() else 0.0

    def restrict(self, shape, offset, local):
        return NonNegative(self.pattern.restrict(shape, offset, local))

    def record(self, metadata, name):
        metadata.setdefault("nonnegative", []).append(name)


class Coupling(nn.Module):
    """A module whose own forward reads its parameter (held by hooks)."""

    def __init__(self):
        super().__init__()
        self.coef = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x @ self.coef.t()


def _clamped(w: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, w.clamp(min=0.0), w).detach()


@pytest.mark.parametrize("kind", ["linear", "hooks"])
def test_a_new_rule_is_held_by_the_guard_without_guard_changes(kind):
    torch.manual_seed(0)
    module = nn.Linear(4, 4) if kind == "linear" else Coupling()
    name = "weight" if kind == "linear" else "coef"
    rule = NonNegative(Diagonal(0))
    hold_(module, name, rule, "model")
    assert rules_of(module) == {name: rule}
    param, mask = getattr(module, name), diag_mask(4, 4)
    assert (param.detach()[mask] >= 0).all()
    opt = torch.optim.SGD([param], lr=1.0)
    x = torch.randn(3, 4)
    for _ in range(3):
        opt.zero_grad()
        before = param.detach().clone()
        module(x).sum().mul(-1.0).backward()  # pushes every weight up ...
        param.grad[mask] = 5.0  # ... except the diagonal, pushed below 0 by the step
        grad = param.grad.clone()
        opt.step()
        expected = _clamped(before - grad, mask)
        assert torch.equal(bits(param), bits(expected))
        assert (param.detach()[mask] == 0).all() and (param.detach()[~mask] != 0).all()
    with torch.no_grad():
        param.fill_(-1.0)  # a raw write: the next forward restores the rule first
    out = module(x)
    reference = F.linear(
        x, _clamped(torch.full((4, 4), -1.0), mask), getattr(module, "bias", None)
    )
    assert torch.equal(bits(out), bits(reference))
    metadata = module.state_dict()._metadata[""]
    assert metadata["nonnegative"] == [name] and "hollow" not in metadata


def test_zeros_on_a_hollow_linear_masks_the_gradient():
    layer = HollowLinear(4, 4, offset=-1)
    layer(torch.randn(2, 4)).square().sum().backward()
    assert_bitwise_zero(layer.weight.grad, diag_mask(4, 4, -1))


def test_rule_base_plan_runs_the_rules_own_write():
    t = torch.full((3, 3), -2.0)
    plan = NonNegative(Diagonal(0)).plan(t)
    assert plan.zeros == () and len(plan.calls) == 1
    assert isinstance(plan.calls[0], functools.partial)
    plan.calls[0]()
    assert torch.equal(t, torch.full((3, 3), -2.0).fill_diagonal_(0.0))
