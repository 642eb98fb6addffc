"""torch_hollow._state: the one `Held` per module, what copies carry, and finding parameters.

Copies and pickles carry the rules alone; the caches (own Parameters, plans, swapped tensors,
pending loads) start empty on the copy, which rebuilds them around its own Parameters.
"""

from __future__ import annotations

import copy
import pickle
import weakref

import pytest
import torch
from conftest import assert_bitwise_zero, diag_mask
from torch import nn

from torch_hollow import HollowLinear, hollow_, is_hollow, rules_of
from torch_hollow._state import KEY, Held, holder, parameter, state_of
from torch_hollow.patterns import Diagonal, Mask, StackedDiagonal
from torch_hollow.rules import Plan, Zeros


def _busy_held() -> Held:
    """A Held whose every cache is filled, as in the middle of training."""
    weight = nn.Parameter(torch.ones(3, 3))
    held = Held({"weight": Zeros(Diagonal(1))}, hooked=True)
    held.own["weight"] = weakref.ref(weight)
    held.plans["weight"] = (weight.data_ptr(), Plan(zeros=(weight.detach().diagonal(1),)))
    held.swapped.append([(nn.Linear(3, 3), "weight", weight)])
    held.loading["0.weight"] = ("weight", Zeros(Diagonal(1)), 2, 1.5)
    held._keep = weight  # keeps the weak reference alive for the test
    return held


@pytest.mark.parametrize(
    "copier",
    [copy.deepcopy, copy.copy, lambda h: pickle.loads(pickle.dumps(h))],
    ids=["deepcopy", "copy", "pickle"],
)
def test_held_copies_carry_only_rules_and_hooked(copier):
    held = _busy_held()
    twin = copier(held)
    assert type(twin) is Held and twin is not held
    assert twin.rules == {"weight": Zeros(Diagonal(1))} and twin.hooked is True
    assert (twin.own, twin.plans, twin.swapped, twin.loading) == ({}, {}, [], {})
    assert held.own and held.plans and held.swapped and held.loading  # the original keeps its own
    assert held.__getstate__() == {"rules": held.rules, "hooked": True}


def test_held_repr():
    assert repr(Held({"w": Zeros(Diagonal(0))})) == (
        "Held({'w': Zeros(pattern=Diagonal(offset=0))}, hooked=False)"
    )


@pytest.mark.parametrize(
    "copier", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"]
)
def test_a_copied_module_rebuilds_its_caches_around_its_own_parameters(copier):
    layer = HollowLinear(4, 4, offset=1)
    layer(torch.randn(2, 4)).sum().backward()  # fills own and plans
    assert layer._hollow.plans
    twin = copier(layer)
    held = state_of(twin)
    assert held is twin.__dict__[KEY] and held is not layer._hollow
    assert held.rules == layer._hollow.rules and held.rules["weight"] is not None
    assert held.own["weight"]() is twin.weight and twin.weight is not layer.weight
    assert not held.plans  # made for the copy's storage when first needed
    nn.init.ones_(twin.weight)
    twin(torch.randn(2, 4))
    assert held.plans["weight"][0] == twin.weight.data_ptr()
    assert_bitwise_zero(twin.weight, diag_mask(4, 4, 1))
    assert (layer.weight.detach() != 1).any()  # the original was never written by the copy


def test_state_of_plain_modules_is_none():
    for module in (nn.Linear(2, 2), nn.LSTM(2, 2), nn.Sequential(HollowLinear(2, 2))):
        assert state_of(module) is None and not is_hollow(module)
    assert state_of(HollowLinear(2, 2)).rules == {"weight": Zeros(Diagonal(0))}
    assert state_of(hollow_(nn.LSTM(2, 2), "weight_hh_l0")).hooked


def test_parameter_and_holder_with_dotted_and_missing_names():
    mha = nn.MultiheadAttention(4, 1)
    assert parameter(mha, "in_proj_weight") is mha.in_proj_weight
    assert parameter(mha, "out_proj.weight") is mha.out_proj.weight
    assert holder(mha, "out_proj.weight") == (mha.out_proj, "weight")
    assert holder(mha, "in_proj_weight") == (mha, "in_proj_weight")
    assert parameter(mha, "kernel") is None
    assert parameter(mha, "out_proj.kernel") is None
    assert parameter(mha, "nowhere.weight") is None
    assert holder(mha, "nowhere.weight") == (None, "weight")
    deep = nn.Sequential(nn.Sequential(nn.Linear(2, 3)))
    assert parameter(deep, "0.0.bias") is deep[0][0].bias
    assert holder(deep, "0.0.bias") == (deep[0][0], "bias")
    deep[0][0].register_buffer("stat", torch.zeros(2))
    assert parameter(deep, "0.0.stat") is None  # a buffer is not a parameter


def _old_keys(module: nn.Module, patterns: dict) -> None:
    """The five ``__dict__`` keys torch-hollow 0.1.0 kept on a held module."""
    module.__dict__.update(
        _hollow_patterns=patterns,
        _hollow_own={},
        _hollow_cache={},
        _hollow_swapped=[],
        _hollow_loading={},
    )


OLD_KEYS = {
    "_hollow_patterns",
    "_hollow_own",
    "_hollow_cache",
    "_hollow_swapped",
    "_hollow_loading",
}


def test_migrate_a_linear_with_0_1_0_keys():
    layer = nn.Linear(3, 3)
    layer.__class__ = HollowLinear
    allowed = torch.rand(3, 3) > 0.5
    _old_keys(layer, {"weight": Mask(allowed)})
    held = state_of(layer)
    assert held is layer.__dict__[KEY] and held.hooked is False
    assert held.rules == {"weight": Zeros(Mask(allowed))}
    assert not OLD_KEYS & layer.__dict__.keys()
    assert state_of(layer) is held  # converted once


def test_migrate_a_hook_held_module_with_0_1_0_keys():
    lstm = nn.LSTM(2, 3)
    _old_keys(lstm, {"weight_hh_l0": StackedDiagonal(4)})
    del lstm.__dict__["_hollow_cache"]  # a key missing is fine
    assert is_hollow(lstm)
    held = lstm.__dict__[KEY]
    assert held.hooked and rules_of(lstm) == {"weight_hh_l0": Zeros(StackedDiagonal(4))}
    assert not OLD_KEYS & lstm.__dict__.keys()
