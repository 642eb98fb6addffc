"""torch_hollow._hooks: hollow_ on any parameter of a module whose own forward reads it.

RNN gates, attention projections, custom modules: the forward pre-hook restores the rules, the
post-accumulate-grad hook masks ``.grad``, the state-dict hooks enforce on save and load.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from _optim import MATRIX_OPTIMIZERS, make_matrix_optimizer
from conftest import assert_bitwise_zero, diag_mask
from torch import nn

from torch_hollow import HollowError, HollowWarning, hollow_, is_hollow, remove, rules_of
from torch_hollow.patterns import Diagonal, StackedDiagonal


def gate_mask(gates, hidden, cols):
    return torch.arange(cols)[None, :] == (torch.arange(gates * hidden) % hidden)[:, None]


class SelfExpressive(nn.Module):
    """Self-expressive clustering: X ~ C X with diag(C) = 0, batched over 2 views."""

    def __init__(self, n):
        super().__init__()
        self.coef = nn.Parameter(torch.randn(2, n, n) * 0.1)

    def forward(self, x):
        return self.coef @ x


RNNS = {
    "LSTM": (lambda: nn.LSTM(3, 5, num_layers=2), "weight_hh_l1", 4),
    "GRU": (lambda: nn.GRU(3, 5), "weight_hh_l0", 3),
    "RNN": (lambda: nn.RNN(3, 5), "weight_hh_l0", 1),
}


@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("kind", list(RNNS))
def test_recurrent_weight_hh_holds_each_gate_diagonal(kind, opt_name, device):
    make, name, gates = RNNS[kind]
    torch.manual_seed(0)
    rnn = make().to(device)
    weight = getattr(rnn, name)
    assert hollow_(rnn, name) is rnn and is_hollow(rnn)
    assert getattr(rnn, name) is weight
    expected = StackedDiagonal(gates) if gates > 1 else Diagonal(0)
    assert rules_of(rnn)[name].pattern == expected
    mask = gate_mask(gates, 5, 5).to(device)
    assert_bitwise_zero(weight, mask)
    opt = make_matrix_optimizer(opt_name, [weight], lr=0.05)
    x = torch.randn(4, 2, 3, device=device)
    for _ in range(5):
        opt.zero_grad()
        out = rnn(x)[0]
        out.square().sum().backward()
        assert_bitwise_zero(weight.grad, mask)
        opt.step()
        assert_bitwise_zero(weight, mask)
    nn.init.ones_(weight)  # a raw write: the next forward must compute with zeros
    out = rnn(x)[0]
    assert_bitwise_zero(weight, mask)
    reference = copy.deepcopy(rnn)
    remove(reference)
    assert torch.equal(out, reference(x)[0])


def test_lstm_cell_and_gru_cell_defaults():
    for cell, gates in ((nn.LSTMCell(2, 3), 4), (nn.GRUCell(2, 3), 3)):
        hollow_(cell, "weight_hh")
        assert rules_of(cell)["weight_hh"].pattern == StackedDiagonal(gates)
        assert_bitwise_zero(cell.weight_hh, gate_mask(gates, 3, 3))


def test_multihead_attention_in_proj_and_out_proj():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(4, 2)
    hollow_(mha, "in_proj_weight")
    hollow_(mha, "out_proj.weight")  # read by MHA's forward, not by out_proj's
    assert rules_of(mha)["in_proj_weight"].pattern == StackedDiagonal(3)
    q_mask, o_mask = gate_mask(3, 4, 4), diag_mask(4, 4)
    opt = torch.optim.AdamW(mha.parameters(), lr=0.1, fused=True)
    x = torch.randn(3, 2, 4)
    for _ in range(4):
        opt.zero_grad()
        mha(x, x, x)[0].square().sum().backward()
        assert_bitwise_zero(mha.in_proj_weight.grad, q_mask)
        assert_bitwise_zero(mha.out_proj.weight.grad, o_mask)
        opt.step()
        assert_bitwise_zero(mha.in_proj_weight, q_mask)
        assert_bitwise_zero(mha.out_proj.weight, o_mask)
    assert list(mha.state_dict()) == list(nn.MultiheadAttention(4, 2).state_dict())


def test_custom_module_batched_parameter(device):
    torch.manual_seed(0)
    model = SelfExpressive(6).to(device)
    hollow_(model, "coef")
    mask = diag_mask(6, 6, device=device)
    x = torch.randn(6, 10, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        F.mse_loss(model(x), x.expand(2, 6, 10)).backward()
        assert_bitwise_zero(model.coef.grad, mask)
        opt.step()
        assert_bitwise_zero(model.coef, mask)
    model.coef.data.normal_()  # raw write through .data
    assert torch.equal(model(x), model.coef.detach().masked_fill(mask, 0) @ x)


def test_generic_load_warns_and_zeroes():
    model = nn.Sequential(SelfExpressive(3))
    hollow_(model[0], "coef")
    sd = {"0.coef": torch.full((2, 3, 3), 2.0)}
    sd["0.coef"][1, 2, 2] = -7.5
    for kwargs in ({}, {"assign": True}):
        with pytest.warns(HollowWarning, match=r"'0\.coef' set 6 non-zero.*dropped: 7\.5"):
            model.load_state_dict({k: v.clone() for k, v in sd.items()}, **kwargs)
        assert_bitwise_zero(model[0].coef, diag_mask(3, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        model(torch.randn(3, 2)).sum().backward()
        assert_bitwise_zero(model[0].coef.grad, diag_mask(3, 3))
        opt.step()
        assert_bitwise_zero(model[0].coef, diag_mask(3, 3))


def test_generic_state_dict_saves_zeros():
    model = SelfExpressive(3)
    hollow_(model, "coef")
    nn.init.ones_(model.coef)
    assert_bitwise_zero(model.state_dict()["coef"], diag_mask(3, 3))


def _torch_save_roundtrip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize(
    "copier", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)), _torch_save_roundtrip]
)
def test_generic_copies_rejoin_the_guard(copier, opt_name):
    lstm = hollow_(nn.LSTM(2, 3), "weight_hh_l0")
    twin = copier(lstm)
    assert is_hollow(twin)
    mask = gate_mask(4, 3, 3)
    opt = make_matrix_optimizer(opt_name, [twin.weight_hh_l0], lr=0.1)
    twin(torch.randn(4, 1, 2))[0].sum().backward()  # the first forward re-arms the copy
    assert_bitwise_zero(twin.weight_hh_l0.grad, mask)
    opt.step()
    assert_bitwise_zero(twin.weight_hh_l0, mask)


def test_remove_generic_releases_hooks_and_keeps_parameters():
    lstm = hollow_(nn.LSTM(2, 3), "weight_hh_l0")
    weight = lstm.weight_hh_l0
    remove(lstm)
    assert not is_hollow(lstm) and lstm.weight_hh_l0 is weight
    assert not lstm._forward_pre_hooks and not lstm._state_dict_pre_hooks
    assert not weight._post_accumulate_grad_hooks
    opt = torch.optim.SGD(lstm.parameters(), lr=0.5)
    lstm(torch.randn(3, 1, 2))[0].sum().backward()
    opt.step()
    assert (weight.unflatten(0, (4, 3)).diagonal(0, -2, -1) != 0).any()


def test_remove_one_of_two_names():
    mha = nn.MultiheadAttention(4, 1)
    hollow_(mha, "in_proj_weight")
    hollow_(mha, "out_proj.weight")
    remove(mha, "in_proj_weight")
    assert list(rules_of(mha)) == ["out_proj.weight"]
    with pytest.raises(HollowError, match="is not hollow"):
        remove(mha, "in_proj_weight")


def test_dotted_name_that_does_not_exist():
    with pytest.raises(HollowError, match=r"has no parameter 'out_proj\.kernel' \(its parameters"):
        hollow_(nn.MultiheadAttention(4, 1), "out_proj.kernel")
