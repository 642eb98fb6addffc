"""hollow_linear and zero_diagonal_: exact for any weight, batched, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_bitwise_zero, diag_mask, masked
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_hollow import HollowError, zero_diagonal_
from torch_hollow.functional import hollow_linear
from torch_hollow.patterns import Diagonal


@st.composite
def shapes_and_offsets(draw):
    rows = draw(st.integers(1, 9))
    cols = draw(st.integers(1, 9))
    offset = draw(st.integers(-rows + 1, cols - 1))
    return rows, cols, offset


@settings(max_examples=60, deadline=None)
@given(shapes_and_offsets(), st.booleans(), st.integers(0, 2**16))
def test_hollow_linear_matches_linear_on_masked_copy(shape, bias, seed):
    rows, cols, offset = shape
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, requires_grad=True)
    b = torch.randn(rows, generator=g) if bias else None
    x = torch.randn(3, cols, generator=g)
    mask = diag_mask(rows, cols, offset)
    y = hollow_linear(x, w, b, offset)
    assert torch.equal(y, F.linear(x, masked(w, mask), b))
    (grad,) = torch.autograd.grad(y.square().sum(), [w])
    assert_bitwise_zero(grad, mask)
    w_ref = masked(w, mask).requires_grad_()
    (grad_ref,) = torch.autograd.grad(F.linear(x, w_ref, b).square().sum(), [w_ref])
    assert torch.equal(grad[~mask], grad_ref[~mask])


def test_hollow_linear_leaves_the_weight_alone():
    w = torch.ones(3, 3)
    hollow_linear(torch.ones(3), w)
    assert torch.equal(w, torch.ones(3, 3))


def test_hollow_linear_pattern_and_offset_conflict():
    with pytest.raises(HollowError, match="both offset=1 and pattern"):
        hollow_linear(torch.ones(3), torch.ones(3, 3), offset=1, pattern=Diagonal(1))
    with pytest.raises(HollowError, match=r"must be a torch_hollow\.patterns\.Pattern"):
        hollow_linear(torch.ones(3), torch.ones(3, 3), pattern="diagonal")


@pytest.mark.parametrize(
    "weight,match",
    [
        (torch.ones(3, 3, 3), r"'weight' \(shape \(3, 3, 3\)\): is 3-D, this needs a matrix"),
        (torch.ones(3, dtype=torch.long), r"has dtype torch.int64, not floating point"),
        ([[1.0]], r"'weight': is list, not a tensor"),
    ],
)
def test_hollow_linear_refuses_bad_weights(weight, match):
    with pytest.raises(HollowError, match=match):
        hollow_linear(torch.ones(3), weight)


@settings(max_examples=60, deadline=None)
@given(shapes_and_offsets(), st.lists(st.integers(1, 3), max_size=2))
def test_zero_diagonal_matches_index_arithmetic(shape, batch):
    rows, cols, offset = shape
    t = torch.randn(*batch, rows, cols) + 10
    before = t.clone()
    assert zero_diagonal_(t, offset) is t
    mask = diag_mask(rows, cols, offset)
    assert_bitwise_zero(t, mask)
    assert torch.equal(t[..., ~mask], before[..., ~mask])


def test_zero_diagonal_on_a_parameter_keeps_autograd_working():
    p = torch.nn.Parameter(torch.ones(3, 3))
    zero_diagonal_(p)
    assert p.requires_grad and p.grad_fn is None
    (p * 2).sum().backward()
    assert torch.equal(p.grad, torch.full((3, 3), 2.0))


def test_zero_diagonal_bumps_version_so_a_stale_graph_fails_loudly():
    p = torch.nn.Parameter(torch.ones(3, 3))
    y = (p * p).sum()
    zero_diagonal_(p)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize(
    "shape,offset,match",
    [
        ((3,), 0, r"is 1-D|1-D"),
        ((3, 4), 4, r"offset 4 lies outside the 3x4 matrix"),
        ((3, 4), -3, r"offset -3 lies outside"),
    ],
)
def test_zero_diagonal_refuses_offsets_that_miss(shape, offset, match):
    with pytest.raises(HollowError, match=match):
        zero_diagonal_(torch.ones(shape), offset)


def test_diagonal_rejects_non_int_offset():
    with pytest.raises(HollowError, match="offset must be an int"):
        Diagonal(1.5)  # type: ignore[arg-type]
