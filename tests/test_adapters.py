"""torch_hollow._adapters: peft wrapping a hollow layer is refused where it happens.

A global module-registration hook sees peft register the layer as a tuner's ``base_layer``; it
refuses a hollow one (plain ``LoraConfig``), remembers the others so that a later `hollow_` on
them is refused too, and reads no frames: nothing of it runs on a forward.
"""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import assert_bitwise_zero, diag_mask
from torch import nn

from torch_hollow import HollowError, HollowLinear, hollow_, is_hollow, remove

peft = pytest.importorskip("peft")
from torch_hollow._adapters import wrapper_of  # noqa: E402
from torch_hollow.peft import HollowLoraLinear, lora_config  # noqa: E402


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(torch.int32)


@pytest.mark.parametrize(
    ("make", "shown", "fix"),
    [
        (lambda: HollowLinear(4, 4), "'HollowLinear.weight' (shape (4, 4))", "lora_config("),
        (
            lambda: hollow_(nn.Embedding(5, 5), "weight"),
            "'Embedding.weight' (shape (5, 5))",
            "out of target_modules",
        ),
    ],
    ids=["HollowLinear", "hook-held Embedding"],
)
def test_plain_lora_over_a_hollow_layer_is_refused_when_built(make, shown, fix):
    model = nn.Sequential(make(), nn.Linear(4, 4))
    layer = model[0]
    with pytest.raises(HollowError) as info:
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"], r=2))
    message = str(info.value)
    assert message.startswith(f"torch_hollow: {shown}: held by Zeros(pattern=Diagonal(offset=0))")
    assert "peft's peft.tuners.lora" in message and message.count("Fix:") == 1
    assert fix in message.split("Fix:")[1]
    assert model[0] is layer and is_hollow(layer)


def test_lora_config_builds_a_hollow_adapter():
    torch.manual_seed(0)
    model = nn.Sequential(HollowLinear(4, 4))
    peft_model = peft.get_peft_model(model, lora_config(target_modules=["0"], r=2))
    adapter = peft_model.base_model.model[0]
    assert type(adapter) is HollowLoraLinear and wrapper_of(adapter.base_layer) is None
    nn.init.normal_(adapter.lora_B["default"].weight)  # as after training
    assert_bitwise_zero(adapter.effective_weight(), diag_mask(4, 4))
    x = torch.randn(3, 4)
    expected = torch.nn.functional.linear(x, adapter.effective_weight(), adapter.base_layer.bias)
    torch.testing.assert_close(peft_model(x), expected)  # float sums reordered: not bitwise


class Mine(nn.Module):
    """Not peft's: its child happens to be called ``base_layer``."""

    def __init__(self, inner):
        super().__init__()
        self.base_layer = inner

    def forward(self, x):
        return self.base_layer(x)


def test_a_non_peft_module_named_base_layer_is_not_affected():
    hollow = HollowLinear(3, 3)
    wrapped = Mine(hollow)  # no refusal
    plain = Mine(nn.Linear(3, 3))
    assert wrapper_of(hollow) is None and wrapper_of(plain.base_layer) is None
    hollow_(plain.base_layer)  # no refusal either
    assert is_hollow(plain.base_layer) and wrapped.base_layer is hollow


def test_hollow_on_a_layer_peft_wraps_is_refused_and_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4))
    peft_model = peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"], r=2))
    base = peft_model.base_model.model[0].base_layer
    assert wrapper_of(base) == "peft.tuners.lora.layer.Linear"
    before = base.weight.detach().clone()
    with pytest.raises(HollowError) as info:
        hollow_(base)
    message = str(info.value)
    assert message.startswith("torch_hollow: 'Linear.weight' (shape (4, 4)): peft's ")
    assert message.count("Fix:") == 1 and "lora_config" in message
    assert type(base) is nn.Linear and not is_hollow(base) and "_hollow" not in base.__dict__
    assert not base._forward_pre_hooks
    assert torch.equal(_bits(base.weight), _bits(before))


def _merged() -> nn.Linear:
    model = nn.Sequential(nn.Linear(4, 4))
    peft_model = peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"], r=2))
    return peft_model.merge_and_unload()[0]


def _refused_then_removed() -> nn.Linear:
    model = nn.Sequential(HollowLinear(4, 4))
    with pytest.raises(HollowError):
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"], r=2))
    return remove(model[0])


@pytest.mark.parametrize("make", [_merged, _refused_then_removed])
def test_hollow_on_a_layer_peft_no_longer_wraps_is_accepted(make):
    layer = make()
    assert type(layer) is nn.Linear  # no peft wrapper around it, none in its place
    hollow_(layer)
    assert is_hollow(layer)


def test_a_hollow_linear_forward_reads_no_frames(monkeypatch):
    layer = HollowLinear(3, 3)
    x = torch.randn(2, 3)

    def refuse(*args):
        raise AssertionError("sys._getframe was called")

    monkeypatch.setattr(sys, "_getframe", refuse)
    out = layer(x)  # the forward is where 0.1.0 read caller frames
    monkeypatch.undo()  # torch's own backward may (typing, on torch 2.8)
    out.sum().backward()
    assert_bitwise_zero(layer.weight.grad, diag_mask(3, 3))
