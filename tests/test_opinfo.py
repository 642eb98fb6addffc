"""OpInfo-style checks of the functional ops, and forward-mode AD through a hollow layer.

What PyTorch's OpInfo tests ask of an op (``gradcheck`` with batched gradients, forward AD and
undefined gradients, ``gradgradcheck``), asked of `hollow_linear` and `zero_diagonal_` in
float64; then forward-mode AD (``torch.autograd.forward_ad`` and ``torch.func.jvp``): the tangent
of the output gets no contribution from held entries, checked bitwise against a masked copy.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from _reference_patterns import PATTERNS
from conftest import diag_mask
from torch.func import functional_call, jvp

from torch_hollow import HollowLinear, zero_diagonal_
from torch_hollow.functional import hollow_linear

# gradcheck(check_batched_grad=True) warns about its own internals (2.13: torch.jit.script,
# 2.6: torch._vmap_internals).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
    pytest.mark.filterwarnings("ignore:Please use `torch.vmap`"),
]
F64 = torch.float64
SHAPES = [(4, 4), (3, 5), (6, 4)]  # (out, in)
INPUTS = [(), (2,), (2, 3)]  # batch dims of the input


def _grad_checks(fn, inputs, gradgrad: bool) -> None:
    assert torch.autograd.gradcheck(
        fn,
        inputs,
        check_batched_grad=True,
        check_forward_ad=True,
        check_backward_ad=True,
        check_undefined_grad=True,
    )
    if gradgrad:
        assert torch.autograd.gradgradcheck(
            fn, inputs, check_batched_grad=True, check_fwd_over_rev=True, check_undefined_grad=True
        )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", INPUTS, ids=str)
@pytest.mark.parametrize("out,inp", SHAPES)
@pytest.mark.parametrize("pattern_name", list(PATTERNS))
def test_hollow_linear_gradcheck(pattern_name, out, inp, batch, bias, device):
    if pattern_name == "stacked" and out % 2:
        out += 1
    pattern, _ = PATTERNS[pattern_name](out, inp)
    torch.manual_seed(0)
    x = torch.randn(*batch, inp, device=device, dtype=F64, requires_grad=True)
    w = torch.randn(out, inp, device=device, dtype=F64, requires_grad=True)  # held entries too
    b = torch.randn(out, device=device, dtype=F64, requires_grad=True) if bias else None
    inputs = (x, w) if b is None else (x, w, b)
    _grad_checks(lambda *a: hollow_linear(*a, pattern=pattern), inputs, gradgrad=batch == (2,))


@pytest.mark.parametrize("offset", [0, 1, -2])
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 3, 4)], ids=str)
def test_zero_diagonal_gradcheck(shape, offset, device):
    """On an intermediate result of a graph, the zeroed entries have gradient 0.0 (they no
    longer depend on the input): gradcheck's numerical Jacobian says so."""
    t = torch.randn(shape, device=device, dtype=F64, requires_grad=True)
    _grad_checks(lambda t: zero_diagonal_(t * 1.0, offset), (t,), gradgrad=True)


def test_zero_diagonal_gradient_is_zero_through_the_zeroed_entries(device):
    t = torch.randn(5, 5, device=device, dtype=F64, requires_grad=True)
    y = zero_diagonal_(t * 3.0, 0)
    (grad,) = torch.autograd.grad((y * t).sum(), [t])
    mask = diag_mask(5, 5, device=device)
    assert (grad[mask] == 0).all() and not torch.signbit(grad[mask]).any()
    assert torch.equal(grad[~mask], (6.0 * t)[~mask].detach())


def test_zero_diagonal_on_a_tensor_autograd_saved_fails_loudly(device):
    y = torch.randn(3, 3, device=device, dtype=F64, requires_grad=True).exp()  # exp saves y
    zero_diagonal_(y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_zero_diagonal_still_writes_parameters_and_their_views_under_no_grad():
    p = torch.nn.Parameter(torch.ones(2, 3, 3))
    zero_diagonal_(p[1])  # a view of a leaf: in grad mode this write would raise
    zero_diagonal_(p, offset=1)
    assert (p[1].diagonal() == 0).all() and (p.diagonal(1, -2, -1) == 0).all()
    assert p[0, 0, 0] == 1 and p.grad_fn is None


# ---- forward-mode AD through a hollow layer ----


def _case(pattern_name, device, out=6, inp=6):
    torch.manual_seed(0)
    pattern, held = PATTERNS[pattern_name](out, inp)
    layer = HollowLinear(inp, out, pattern=pattern, device=device, dtype=F64)
    x = torch.randn(3, inp, device=device, dtype=F64)
    w = torch.randn(out, inp, device=device, dtype=F64)  # non-zero on the held entries
    tangent = torch.randn(out, inp, device=device, dtype=F64)
    return layer, held.to(device), x, w, tangent


def _masked(t, held):
    return t.masked_fill(held, 0.0)


def test_forward_ad_through_the_op_with_a_dual_weight(device):
    for name in PATTERNS:
        layer, held, x, w, tangent = _case(name, device)
        with fwAD.dual_level():
            out = hollow_linear(x, fwAD.make_dual(w, tangent), layer.bias, pattern=layer.pattern)
            primal, out_tangent = fwAD.unpack_dual(out)
        assert torch.equal(primal, F.linear(x, _masked(w, held), layer.bias.detach()))
        assert torch.equal(out_tangent, F.linear(x, _masked(tangent, held))), name


def test_forward_ad_through_the_layer_with_a_dual_input(device):
    layer, held, x, _, _ = _case("mask", device)
    with torch.no_grad():
        layer.weight.add_(1.0)  # a raw write on the held entries too
    x_tangent = torch.randn_like(x)
    with fwAD.dual_level():
        primal, out_tangent = fwAD.unpack_dual(layer(fwAD.make_dual(x, x_tangent)))
    w0 = _masked(layer.weight.detach(), held)
    assert torch.equal(primal, F.linear(x, w0, layer.bias.detach()))
    assert torch.equal(out_tangent, F.linear(x_tangent, w0))


def test_jvp_through_the_op(device):
    layer, held, x, w, tangent = _case("union", device)
    bias = layer.bias.detach()
    primal, out_tangent = jvp(
        lambda w: hollow_linear(x, w, bias, pattern=layer.pattern), (w,), (tangent,)
    )
    assert torch.equal(primal, F.linear(x, _masked(w, held), bias))
    assert torch.equal(out_tangent, F.linear(x, _masked(tangent, held)))


# The next two pass a weight that is not the layer's own Parameter through functional_call:
# the layer must compute with a masked copy and never write the caller's tensor (issue 9).


@pytest.mark.parametrize("pattern_name", ["diagonal", "blocks", "mask"])
def test_forward_ad_dual_weight_through_functional_call(pattern_name, device):
    layer, held, x, w, tangent = _case(pattern_name, device)
    bias = layer.bias.detach()
    caller_w = w.clone()
    with fwAD.dual_level():
        dual = fwAD.make_dual(caller_w, tangent)
        out = functional_call(layer, {"weight": dual, "bias": bias}, (x,))
        primal, out_tangent = fwAD.unpack_dual(out)
    assert torch.equal(caller_w, w), "the caller's weight was written"
    assert torch.equal(primal, F.linear(x, _masked(w, held), bias))
    assert torch.equal(out_tangent, F.linear(x, _masked(tangent, held)))


@pytest.mark.parametrize("pattern_name", ["diagonal", "blocks", "mask"])
def test_jvp_through_functional_call(pattern_name, device):
    layer, held, x, w, tangent = _case(pattern_name, device)
    bias = layer.bias.detach()
    caller_w = w.clone()

    def forward(w):
        return functional_call(layer, {"weight": w, "bias": bias}, (x,))

    primal, out_tangent = jvp(forward, (caller_w,), (tangent,))
    assert torch.equal(caller_w, w), "the caller's weight was written"
    assert torch.equal(primal, F.linear(x, _masked(w, held), bias))
    assert torch.equal(out_tangent, F.linear(x, _masked(tangent, held)))
