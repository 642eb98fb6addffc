"""hollow_, convert, remove, is_hollow: identity, keys and optimizers survive."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _optim import MATRIX_OPTIMIZERS, make_matrix_optimizer
from conftest import assert_bitwise_zero, diag_mask
from torch import nn

from torch_hollow import HollowError, HollowLinear, convert, hollow_, is_hollow, remove


def test_hollow_keeps_identity_parameters_and_keys(device):
    torch.manual_seed(0)
    layer = nn.Linear(5, 5, device=device)
    weight, bias = layer.weight, layer.bias
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)  # built before
    keys = list(layer.state_dict())
    assert hollow_(layer, offset=1) is layer
    assert layer.weight is weight and layer.bias is bias
    assert list(layer.state_dict()) == keys
    assert isinstance(layer, HollowLinear) and is_hollow(layer)
    mask = diag_mask(5, 5, 1, device)
    assert_bitwise_zero(layer.weight, mask)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(4, 5, device=device)).square().sum().backward()
        assert_bitwise_zero(layer.weight.grad, mask)
        opt.step()
        assert_bitwise_zero(layer.weight, mask)


def test_hollow_is_idempotent_and_refuses_a_second_pattern():
    layer = hollow_(nn.Linear(3, 3))
    assert hollow_(layer) is layer
    with pytest.raises(HollowError, match=r"already held by Zeros.*Fix: call remove\(\) first"):
        hollow_(layer, offset=1)


def test_remove_gives_plain_linear_with_same_parameters(device):
    layer = HollowLinear(4, 4, device=device)
    weight = layer.weight
    nn.init.ones_(layer.weight)  # a raw write: remove() still leaves the entries at zero
    assert remove(layer) is layer
    assert type(layer) is nn.Linear and not is_hollow(layer)
    assert layer.weight is weight
    assert_bitwise_zero(layer.weight, diag_mask(4, 4, device=device))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(3, 4, device=device)).sum().backward()
    opt.step()
    assert (layer.weight.diagonal() != 0).all(), "a removed layer must train its diagonal again"
    with pytest.raises(HollowError, match="is not hollow"):
        remove(layer)


def test_remove_refuses_user_subclasses():
    class Mine(HollowLinear):
        pass

    with pytest.raises(HollowError, match="subclasses HollowLinear"):
        remove(Mine(2, 2))


def test_convert_takes_square_linears_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 3))
    mha = nn.MultiheadAttention(4, 1)
    model.append(mha)
    assert convert(model) is model
    assert [is_hollow(m) for m in model[:4]] == [True, False, False, True]
    assert not is_hollow(mha.out_proj), "a Linear subclass used without its forward was touched"


def test_convert_with_where_and_offset():
    model = nn.ModuleDict({"enc": nn.Linear(4, 6), "dec": nn.Linear(6, 4)})
    convert(model, where=lambda name, m: name == "enc", offset=-1)
    assert is_hollow(model["enc"]) and model["enc"].offset == -1
    assert not is_hollow(model["dec"])


def test_convert_names_the_module_that_failed():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(HollowError, match=r"'1.weight': ReLU has no parameter 'weight'"):
        convert(model, where=lambda name, m: name != "")


@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
def test_converted_model_trains_like_hollow_layers(opt_name, device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)).to(device)
    convert(model)
    opt = make_matrix_optimizer(opt_name, [model[0].weight, model[2].weight], lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        F.mse_loss(
            model(torch.randn(8, 6, device=device)), torch.zeros(8, 6, device=device)
        ).backward()
        opt.step()
    for i in (0, 2):
        assert_bitwise_zero(model[i].weight, diag_mask(6, 6, device=device))


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.cube = nn.Parameter(torch.ones(2, 3, 4, 5))
        self.counts = nn.Parameter(torch.ones(3, 3, dtype=torch.long), requires_grad=False)
        self.w = nn.Parameter(torch.ones(3, 3))


@pytest.mark.parametrize(
    "module,name,match",
    [
        (
            nn.Linear(3, 3),
            "bias",
            r"'Linear.bias' \(shape \(3,\)\): a pattern needs a matrix, "
            r"this is 1-D\. Fix: pick a 2-D",
        ),
        (
            nn.Linear(3, 3),
            "kernel",
            r"'Linear.kernel': Linear has no parameter 'kernel' \(its "
            r"parameters: weight, bias\)\. Fix: name one",
        ),
        (_Custom(), "cube", r"'_Custom.cube' \(shape \(2, 3, 4, 5\)\): offset 7 lies outside"),
        (
            _Custom(),
            "counts",
            r"'_Custom.counts' \(shape \(3, 3\)\): has dtype torch.int64, "
            r"not floating point",
        ),
        (HollowLinear(3, 3), "bias", r"a pattern needs a matrix, this is 1-D"),
        (nn.Linear(3, 2), "weight", None),
    ],
)
def test_hollow_refusals_name_module_parameter_shape_and_fix(module, name, match):
    if match is None:  # the control case: a rectangular Linear weight is fine
        assert is_hollow(hollow_(module, name))
        return
    with pytest.raises(HollowError, match=match):
        hollow_(module, name, offset=7 if name == "cube" else 0)


def test_hollow_refuses_offset_outside():
    with pytest.raises(HollowError, match=r"'Linear.weight' \(shape \(2, 3\)\): offset 3 lies"):
        hollow_(nn.Linear(3, 2), offset=3)


def test_hollow_refuses_non_modules():
    with pytest.raises(HollowError, match=r"expected an nn\.Module, got Tensor"):
        hollow_(torch.ones(3, 3))  # type: ignore[arg-type]
