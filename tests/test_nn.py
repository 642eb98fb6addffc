"""HollowLinear: forward, gradient, optimizer steps, loads, inits, copies, autocast, errors."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from _optim import MATRIX_OPTIMIZERS, NewtonSchulz, make_matrix_optimizer, optimizer_params
from conftest import assert_bitwise_zero, diag_mask, masked
from torch import nn

from torch_hollow import HollowError, HollowLinear, HollowWarning

# (out, in, offset): square and rectangular, main diagonal and offsets both ways.
SHAPES = [(6, 6, 0), (6, 6, 2), (6, 6, -3), (4, 7, 0), (4, 7, 3), (7, 4, -2), (7, 4, 0)]
DTYPES = [torch.float32, torch.float64]


def _layer(out, inp, offset, device, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    return HollowLinear(inp, out, bias=bias, offset=offset, device=device, dtype=dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_shape", [(), (5,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("out,inp,offset", SHAPES)
def test_forward_equals_linear_with_zeroed_weight(out, inp, offset, in_shape, bias, device):
    layer = _layer(out, inp, offset, device, bias=bias)
    x = torch.randn(*in_shape, inp, device=device)
    w0 = masked(layer.weight, diag_mask(out, inp, offset, device))
    assert torch.equal(layer(x), F.linear(x, w0, layer.bias))
    ref = x.double() @ w0.double().T + (0 if layer.bias is None else layer.bias.double())
    torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_forward_on_non_contiguous_input(device):
    layer = _layer(6, 6, 1, device)
    x = torch.randn(6, 3, 4, device=device).permute(1, 2, 0)
    assert not x.is_contiguous()
    assert torch.equal(layer(x), F.linear(x, masked(layer.weight, diag_mask(6, 6, 1)), layer.bias))


@pytest.mark.parametrize("how", ["backward", "autograd.grad"])
@pytest.mark.parametrize("out,inp,offset", SHAPES)
def test_gradient_is_zero_on_held_entries_and_plain_elsewhere(out, inp, offset, how, device):
    layer = _layer(out, inp, offset, device)
    mask = diag_mask(out, inp, offset, device)
    x = torch.randn(5, inp, device=device)
    target = torch.randn(5, out, device=device)
    ref_w = masked(layer.weight, mask).requires_grad_()
    ref_b = layer.bias.detach().clone().requires_grad_()
    F.mse_loss(F.linear(x, ref_w, ref_b), target).backward()
    loss = F.mse_loss(layer(x), target)
    if how == "backward":
        loss.backward()
        grad_w, grad_b = layer.weight.grad, layer.bias.grad
    else:
        grad_w, grad_b = torch.autograd.grad(loss, [layer.weight, layer.bias])
    assert_bitwise_zero(grad_w, mask)
    assert ref_w.grad[mask].abs().sum() > 0, "plain linear's gradient there was not zero"
    assert torch.equal(grad_w[~mask], ref_w.grad[~mask])
    assert torch.equal(grad_b, ref_b.grad)


def test_gradient_of_input_matches_plain(device):
    layer = _layer(5, 5, 0, device)
    x = torch.randn(4, 5, device=device, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).sin().sum(), [x])
    x2 = x.detach().clone().requires_grad_()
    w0 = masked(layer.weight, diag_mask(5, 5))
    (gx2,) = torch.autograd.grad(F.linear(x2, w0, layer.bias).sin().sum(), [x2])
    assert torch.equal(gx, gx2)


def test_double_backward(device):
    layer = _layer(4, 4, 0, device, dtype=torch.float64)
    x = torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).tanh().sum(), [x], create_graph=True)
    gx.square().sum().backward()
    assert_bitwise_zero(layer.weight.grad, diag_mask(4, 4, device=device))


OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
    "SGD-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "SGD-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "AdamW-foreach-wd": lambda p: torch.optim.AdamW(p, lr=0.05, foreach=True, weight_decay=0.1),
    "AdamW-fused": lambda p: torch.optim.AdamW(p, lr=0.05, fused=True, weight_decay=0.1),
    "AdamW-forloop": lambda p: torch.optim.AdamW(p, lr=0.05, foreach=False),
    "Adam-amsgrad": lambda p: torch.optim.Adam(p, lr=0.05, amsgrad=True),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "Adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    "Adafactor": lambda p: torch.optim.Adafactor(p, lr=0.05),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=0.05),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=0.05),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=0.05),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=0.1),
    "Rprop": lambda p: torch.optim.Rprop(p, lr=0.05),
    "LBFGS": lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=5),
    # Matrix optimizers, 2-D parameters only (bias=False below): torch's Muon and a stand-in.
    "Muon": lambda p: torch.optim.Muon(p, lr=0.05),
    "NewtonSchulz": lambda p: NewtonSchulz(p, lr=0.05),
}
MATRIX = {"Muon", "NewtonSchulz"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out,inp,offset", SHAPES)
@pytest.mark.parametrize("name", optimizer_params(OPTIMIZERS))
def test_stored_entries_stay_zero_after_every_step(name, out, inp, offset, dtype, device):
    layer = _layer(out, inp, offset, device, dtype=dtype, bias=name not in MATRIX)
    mask = diag_mask(out, inp, offset, device)
    start = layer.weight.detach().clone()
    opt = OPTIMIZERS[name](layer.parameters())
    x = torch.randn(16, inp, device=device, dtype=dtype)
    target = torch.randn(16, out, device=device, dtype=dtype)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(layer(x), target)
        loss.backward()
        return loss

    for _ in range(20):
        opt.step(closure)
        assert_bitwise_zero(layer.weight, mask)
    assert not torch.equal(layer.weight[~mask], start[~mask]), "the optimizer trained nothing"


@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
def test_muon_fills_the_diagonal_of_a_plain_layer_with_masked_gradient(opt_name):
    # The failure torch-hollow exists for: a gradient mask alone does not survive Muon (nor the
    # stand-in, which is what makes it one).
    torch.manual_seed(0)
    layer = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        layer.weight.fill_diagonal_(0)
    layer.weight.register_hook(lambda g: g * (~diag_mask(8, 8)))
    opt = make_matrix_optimizer(opt_name, layer.parameters(), lr=0.05)
    F.mse_loss(layer(torch.randn(16, 8)), torch.randn(16, 8)).backward()
    opt.step()
    assert (layer.weight.diagonal() != 0).all()


@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("mode", ["strict", "non-strict", "assign"])
def test_load_state_dict_zeroes_and_warns_with_name_and_largest_value(mode, opt_name, device):
    model = nn.Sequential(nn.Linear(5, 5), HollowLinear(5, 5, device=device)).to(device)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["1.weight"] = torch.full((5, 5), 0.5, device=device)
    sd["1.weight"][2, 2] = -3.25
    if mode == "non-strict":
        del sd["1.bias"]
    kwargs = {"strict": mode != "non-strict", "assign": mode == "assign"}
    with pytest.warns(HollowWarning, match=r"'1\.weight' set 5 non-zero.*dropped: 3\.25"):
        model.load_state_dict(sd, **kwargs)
    assert_bitwise_zero(model[1].weight, diag_mask(5, 5, device=device))
    assert torch.equal(
        model[1].weight[~diag_mask(5, 5, device=device)], torch.full((20,), 0.5, device=device)
    )
    if mode == "assign":  # PyTorch's assign=True: the layer takes the checkpoint's tensor itself
        assert model[1].weight.data_ptr() == sd["1.weight"].data_ptr()
    else:
        assert sd["1.weight"][2, 2] == -3.25, "the caller's state_dict was modified"
    # after assign=True: the new Parameter
    opt = make_matrix_optimizer(opt_name, [model[1].weight], lr=0.1)
    model(torch.randn(3, 5, device=device)).sum().backward()
    opt.step()
    assert_bitwise_zero(model[1].weight, diag_mask(5, 5, device=device))


def test_load_of_a_hollow_checkpoint_is_silent(recwarn, device):
    a, b = _layer(4, 4, 1, device, seed=0), _layer(4, 4, 1, device, seed=1)
    b.load_state_dict(a.state_dict())
    assert not [w for w in recwarn if issubclass(w.category, HollowWarning)]
    assert torch.equal(a.weight, b.weight)


def test_load_reports_nan_on_held_entries(device):
    layer = _layer(3, 3, 0, device)
    sd = layer.state_dict()
    sd["weight"] = sd["weight"].clone()
    sd["weight"][1, 1] = float("nan")
    with pytest.warns(HollowWarning, match="dropped: nan"):
        layer.load_state_dict(sd)
    assert_bitwise_zero(layer.weight, diag_mask(3, 3, device=device))


INITS = {
    "reset_parameters": lambda m: m.reset_parameters(),
    "normal_": lambda m: nn.init.normal_(m.weight),
    "ones_": lambda m: nn.init.ones_(m.weight),
    "eye_": lambda m: nn.init.eye_(m.weight),
    "xavier_uniform_": lambda m: nn.init.xavier_uniform_(m.weight),
    "kaiming_normal_": lambda m: nn.init.kaiming_normal_(m.weight),
    "orthogonal_": lambda m: nn.init.orthogonal_(m.weight),
    "data.normal_": lambda m: m.weight.data.normal_(),
    "data = tensor": lambda m: setattr(m.weight, "data", torch.ones_like(m.weight)),
    "apply(init_fn)": lambda m: m.apply(
        lambda s: nn.init.uniform_(s.weight, 1, 2) if isinstance(s, nn.Linear) else None
    ),
}


@pytest.mark.parametrize("out,inp,offset", [(5, 5, 0), (4, 6, 1)])
@pytest.mark.parametrize("name", list(INITS))
def test_next_forward_computes_with_zeros_after_any_init(name, out, inp, offset, device):
    layer = _layer(out, inp, offset, device)
    mask = diag_mask(out, inp, offset, device)
    INITS[name](layer)
    w0 = masked(layer.weight, mask)
    x = torch.randn(3, inp, device=device)
    assert torch.equal(layer(x), F.linear(x, w0, layer.bias))
    assert_bitwise_zero(layer.weight, mask)
    assert_bitwise_zero(layer.state_dict()["weight"], mask)


def test_reset_parameters_zeroes_at_once(device):
    layer = _layer(4, 4, 0, device)
    layer.reset_parameters()
    assert_bitwise_zero(layer.weight, diag_mask(4, 4, device=device))


def test_state_dict_is_zero_after_a_raw_write(device):
    layer = _layer(4, 4, 0, device)
    nn.init.ones_(layer.weight)
    assert_bitwise_zero(layer.state_dict()["weight"], diag_mask(4, 4, device=device))


MOVES = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "double": lambda m: m.double(),
    "to(float64)": lambda m: m.to(torch.float64),
    "to(device)": lambda m: m.to(next(m.parameters()).device),
}


@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("name", list(MOVES))
def test_moves_keep_zeros_and_guard(name, opt_name, device):
    layer = _layer(5, 5, -1, device)
    layer = MOVES[name](layer)
    mask = diag_mask(5, 5, -1, device)
    assert_bitwise_zero(layer.weight, mask)
    opt = make_matrix_optimizer(opt_name, [layer.weight], lr=0.05)
    x = torch.randn(4, 5, device=device, dtype=layer.weight.dtype)
    layer(x).float().square().sum().backward()
    opt.step()
    assert_bitwise_zero(layer.weight, mask)


def _roundtrip_torch_save(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save(model)": _roundtrip_torch_save,
}


@pytest.mark.parametrize("opt_name", MATRIX_OPTIMIZERS)
@pytest.mark.parametrize("name", list(COPIES))
def test_copies_stay_hollow_and_guarded(name, opt_name, device):
    model = nn.Sequential(_layer(6, 6, 0, device), nn.Tanh(), _layer(3, 6, 2, device))
    twin = COPIES[name](model)
    assert isinstance(twin[0], HollowLinear) and twin[2].offset == 2
    assert twin[0].weight is not model[0].weight
    nn.init.ones_(twin[0].weight)  # a raw write the copy's own guard must undo
    opt = make_matrix_optimizer(opt_name, [twin[0].weight, twin[2].weight], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        twin(torch.randn(4, 6, device=device)).square().sum().backward()
        opt.step()
    assert_bitwise_zero(twin[0].weight, diag_mask(6, 6, device=device))
    assert_bitwise_zero(twin[2].weight, diag_mask(3, 6, 2, device=device))
    assert pickle.loads(pickle.dumps(model[0]))._hollow.plans == {}  # plans are per storage


def test_state_dict_loads_with_weights_only(device):
    model = nn.Sequential(_layer(4, 4, 0, device), _layer(4, 4, 1, device))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = nn.Sequential(_layer(4, 4, 0, device, seed=5), _layer(4, 4, 1, device, seed=5))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    assert list(fresh.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("uses", [2, 5])
def test_layer_used_several_times_in_one_graph(uses, device):
    layer = _layer(5, 5, 0, device, dtype=torch.float64)
    mask = diag_mask(5, 5, device=device)
    x = torch.randn(3, 5, device=device, dtype=torch.float64)
    h = x
    for _ in range(uses):  # an unrolled recurrence
        h = torch.tanh(layer(h))
    h.sum().backward()
    ref_w = masked(layer.weight, mask).requires_grad_()
    r = x
    for _ in range(uses):
        r = torch.tanh(F.linear(r, ref_w, layer.bias))
    r.sum().backward()
    assert_bitwise_zero(layer.weight.grad, mask)
    torch.testing.assert_close(layer.weight.grad[~mask], ref_w.grad[~mask])


def test_pending_graph_of_another_model_survives_a_step(device):
    # A GAN-style schedule: G forward, D steps, then G backward. The guard's writes do not bump
    # the version counter, so G's saved weight stays valid.
    g_layer, d_layer = _layer(4, 4, 0, device, seed=1), _layer(4, 4, 0, device, seed=2)
    d_opt = torch.optim.SGD(d_layer.parameters(), lr=0.1)
    out = g_layer(torch.randn(2, 4, device=device))
    d_layer(torch.randn(2, 4, device=device)).sum().backward()
    d_opt.step()
    out.sum().backward()
    assert_bitwise_zero(g_layer.weight.grad, diag_mask(4, 4, device=device))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype, device):
    layer = _layer(6, 6, 1, device)
    x = torch.randn(4, 6, device=device)
    with torch.autocast(device.type, dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    y.float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    assert_bitwise_zero(layer.weight.grad, diag_mask(6, 6, 1, device))
    w0 = masked(layer.weight, diag_mask(6, 6, 1, device))
    torch.testing.assert_close(y.float(), F.linear(x, w0, layer.bias), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"offset": 6}, r"'HollowLinear.weight' \(shape \(4, 6\)\): offset 6 lies outside"),
        ({"offset": -4}, r"offset -4 lies outside the 4x6 matrix.*Fix: use an offset with -4"),
    ],
)
def test_bad_offset_is_a_clear_error(kwargs, match):
    with pytest.raises(HollowError, match=match):
        HollowLinear(6, 4, **kwargs)


def test_extra_repr_and_offset():
    layer = HollowLinear(3, 2, offset=-1)
    assert "pattern=Diagonal(offset=-1)" in repr(layer)
    assert layer.offset == -1
