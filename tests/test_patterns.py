"""Patterns: which entries they hold (by index arithmetic), every guarantee with them."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from _optim import NewtonSchulz, optimizer_params
from conftest import assert_bitwise_zero, masked
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torch_hollow import HollowError, HollowLinear, HollowWarning, guard, hollow_, rules_of
from torch_hollow.functional import hollow_linear
from torch_hollow.patterns import BlockDiagonal, Diagonal, Mask, StackedDiagonal, from_spec


def block_mask(row_sizes, col_sizes):
    """True inside the diagonal blocks, built from cumulative sums."""
    rows = torch.repeat_interleave(torch.arange(len(row_sizes)), torch.tensor(row_sizes))
    cols = torch.repeat_interleave(torch.arange(len(col_sizes)), torch.tensor(col_sizes))
    return rows[:, None] == cols[None, :]


def stacked_mask(blocks, size, cols, offset=0):
    i = torch.arange(blocks * size)[:, None] % size
    return torch.arange(cols)[None, :] - i == offset


def made_masks(features, hidden):
    """MADE masks as zuko/nflows build them: degrees, then allowed = deg_out >= deg_in."""
    deg_in = torch.arange(1, features + 1)
    deg_hidden = torch.arange(hidden) % max(1, features - 1) + 1
    first = deg_hidden[:, None] >= deg_in[None, :]
    last = deg_in[:, None] > deg_hidden[None, :]
    return first, last


# (pattern, weight shape, reference held mask)
CASES = {
    "diagonal": (Diagonal(1), (6, 6), torch.arange(6)[None, :] - torch.arange(6)[:, None] == 1),
    "stacked-lstm": (StackedDiagonal(4), (12, 3), stacked_mask(4, 3, 3)),
    "block-notears": (BlockDiagonal(rows=3, cols=1), (12, 4), block_mask([3] * 4, [1] * 4)),
    "block-potts": (BlockDiagonal(2), (8, 8), block_mask([2] * 4, [2] * 4)),
    "block-ragged": (
        BlockDiagonal((1, 3, 2), (2, 2, 1)),
        (6, 5),
        block_mask([1, 3, 2], [2, 2, 1]),
    ),
    "mask": (
        Mask(torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) > 0.4),
        (5, 7),
        None,
    ),
    "union": (Diagonal(0) | BlockDiagonal(2), (6, 6), block_mask([2] * 3, [2] * 3)),
}


def _case(name):
    pattern, shape, reference = CASES[name]
    if reference is None:
        reference = pattern.held.clone()
    return pattern, shape, reference


@pytest.mark.parametrize("name", list(CASES))
def test_pattern_holds_exactly_the_reference_entries(name):
    pattern, shape, reference = _case(name)
    assert pattern.problem(torch.Size(shape)) is None
    t = torch.randn(shape) + 5
    before = t.clone()
    pattern.zero_(t)
    assert_bitwise_zero(t, reference)
    assert torch.equal(t[~reference], before[~reference])
    assert pattern.count_nonzero(before) == int(reference.sum())
    assert pattern.max_abs(before) == before[reference].abs().max().item()


@pytest.mark.parametrize("name", list(CASES))
def test_pattern_applies_to_batched_weights(name):
    pattern, shape, reference = _case(name)
    t = torch.randn(2, 3, *shape) + 5
    pattern.zero_(t)
    assert_bitwise_zero(t, reference)
    assert (t[..., ~reference] != 0).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=5), st.data())
def test_block_diagonal_ragged_matches_reference(row_sizes, data):
    col_sizes = data.draw(
        st.lists(st.integers(1, 4), min_size=len(row_sizes), max_size=len(row_sizes))
    )
    pattern = BlockDiagonal(tuple(row_sizes), tuple(col_sizes))
    t = torch.ones(sum(row_sizes), sum(col_sizes))
    pattern.zero_(t)
    assert torch.equal(t == 0, block_mask(row_sizes, col_sizes))


@pytest.mark.parametrize(
    "pattern,shape,match",
    [
        (BlockDiagonal(3), (8, 9), r"blocks of 3x3 do not tile the 8x9 matrix"),
        (BlockDiagonal((2, 2), (3,)), (4, 3), r"row blocks \[2, 2\] x column blocks \[3\]"),
        (StackedDiagonal(4), (10, 3), r"10 rows do not split into 4 stacked blocks"),
        (Mask(torch.ones(3, 3, dtype=torch.bool)), (3, 4), r"the mask has shape \(3, 3\)"),
        (Diagonal(0), (5,), r"a pattern needs a matrix, this is 1-D"),
    ],
)
def test_patterns_that_do_not_fit_are_clear_errors(pattern, shape, match):
    with pytest.raises(HollowError, match=match):
        HollowLinear(shape[-1], shape[0], pattern=pattern) if len(shape) == 2 else hollow_linear(
            torch.ones(1), torch.ones(shape), pattern=pattern
        )


def test_mask_refuses_non_bool():
    with pytest.raises(HollowError, match="Mask takes a bool tensor"):
        Mask(torch.ones(3, 3))


OPTIMIZERS = {
    "AdamW-fused": lambda p: torch.optim.AdamW(p, lr=0.05, fused=True, weight_decay=0.1),
    "SGD-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "LBFGS": lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=4),
    "Muon": lambda p: torch.optim.Muon(p, lr=0.05),
    "NewtonSchulz": lambda p: NewtonSchulz(p, lr=0.05),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opt_name", optimizer_params(OPTIMIZERS))
@pytest.mark.parametrize("name", list(CASES))
def test_hollow_linear_with_pattern_through_training(name, opt_name, dtype, device):
    pattern, (out, inp), reference = _case(name)
    reference = reference.to(device)
    torch.manual_seed(0)
    bias = opt_name not in ("Muon", "NewtonSchulz")  # 2-D parameters only
    layer = HollowLinear(inp, out, bias=bias, pattern=pattern, device=device, dtype=dtype)
    x = torch.randn(9, inp, device=device, dtype=dtype)
    assert torch.equal(layer(x), F.linear(x, masked(layer.weight, reference), layer.bias))
    (grad,) = torch.autograd.grad(layer(x).square().sum(), [layer.weight])
    assert_bitwise_zero(grad, reference)
    opt = OPTIMIZERS[opt_name](layer.parameters())

    def closure():
        opt.zero_grad()
        loss = layer(x).sin().sum()
        loss.backward()
        return loss

    for _ in range(8):
        opt.step(closure)
        assert_bitwise_zero(layer.weight, reference)


@pytest.mark.parametrize("name", list(CASES))
def test_pattern_survives_load_init_copy_pickle(name, device):
    pattern, (out, inp), reference = _case(name)
    reference = reference.to(device)
    layer = HollowLinear(inp, out, pattern=pattern, device=device)
    sd = {k: torch.ones_like(v) for k, v in layer.state_dict().items()}
    with pytest.warns(HollowWarning, match=rf"set {int(reference.sum())} non-zero value"):
        layer.load_state_dict(sd)
    assert_bitwise_zero(layer.weight, reference)
    nn.init.normal_(layer.weight)
    x = torch.randn(2, inp, device=device)
    w0 = masked(layer.weight, reference)
    assert torch.equal(layer(x), F.linear(x, w0, layer.bias))
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert twin.pattern == layer.pattern
        nn.init.ones_(twin.weight)
        opt = torch.optim.SGD(twin.parameters(), lr=0.1)
        twin(x).sum().backward()
        opt.step()
        assert_bitwise_zero(twin.weight, reference)


@pytest.mark.parametrize("name", ["block-notears", "mask", "union"])
def test_pattern_under_compile_and_export(name, device):
    pattern, (out, inp), reference = _case(name)
    reference = reference.to(device)
    torch._dynamo.reset()
    layer = HollowLinear(inp, out, pattern=pattern, device=device)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(3, inp, device=device)
    nn.init.ones_(layer.weight)
    expected = F.linear(x, masked(layer.weight, reference), layer.bias)
    y = compiled(x)
    torch.testing.assert_close(y, expected)
    y.square().sum().backward()
    assert_bitwise_zero(layer.weight.grad, reference)
    program = torch.export.export(layer, (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert ops == ["aten.linear.default"]


def test_functional_with_pattern():
    pattern, (out, inp), reference = _case("block-ragged")
    w = torch.randn(out, inp, requires_grad=True)
    x = torch.randn(4, inp)
    y = hollow_linear(x, w, pattern=pattern)
    assert torch.equal(y, F.linear(x, masked(w, reference)))
    (g,) = torch.autograd.grad(y.sum(), [w])
    assert_bitwise_zero(g, reference)


def test_made_mask_matches_w_times_mask_and_has_autoregressive_jacobian():
    features, hidden = 5, 12
    first, last = made_masks(features, hidden)
    torch.manual_seed(0)
    net = nn.Sequential(
        HollowLinear(features, hidden, pattern=Mask(first)),
        nn.Tanh(),
        HollowLinear(hidden, features, pattern=Mask(last)),
    )
    x = torch.randn(7, features)
    ref = F.linear(
        torch.tanh(F.linear(x, net[0].weight * first, net[0].bias)),
        net[2].weight * last,
        net[2].bias,
    )
    assert torch.equal(net(x), ref)
    assert_bitwise_zero(net[0].weight, ~first)
    assert_bitwise_zero(net[2].weight, ~last)
    jac = torch.autograd.functional.jacobian(lambda v: net(v), x[0])
    adjacency = torch.arange(features)[:, None] > torch.arange(features)[None, :]
    assert_bitwise_zero(jac, ~adjacency)  # output i depends only on inputs j < i
    assert (jac[adjacency] != 0).any()
    opt = torch.optim.AdamW(net.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        net(x).square().sum().backward()
        opt.step()
    jac = torch.autograd.functional.jacobian(lambda v: net(v), x[0])
    assert_bitwise_zero(jac, ~adjacency)


def test_mask_is_stored_as_packed_bits_and_adds_no_buffer():
    pattern = Mask(torch.ones(64, 32, dtype=torch.bool))
    assert pattern.bits.dtype == torch.uint8 and pattern.bits.numel() == 64 * 32 // 8
    assert pattern.held.dtype == torch.bool and pattern.held.numel() == 64 * 32
    layer = HollowLinear(32, 64, pattern=pattern)
    assert [n for n, _ in layer.named_buffers()] == []
    assert list(layer.state_dict()) == ["weight", "bias"]


def test_hollow_with_pattern_on_existing_linear():
    layer = nn.Linear(4, 8)
    weight = layer.weight
    hollow_(layer, pattern=BlockDiagonal(2, 1))
    assert layer.weight is weight
    assert_bitwise_zero(layer.weight, block_mask([2] * 4, [1] * 4))


def _special_values(shape, dtype, device="cpu"):
    """Random values with inf, -inf, NaN and -0.0 sprinkled in (what a held entry may hold)."""
    t = torch.randn(shape, device=device).to(dtype)
    flat = t.view(-1)
    flat[::7] = float("inf")
    flat[1::7] = float("-inf")
    flat[2::7] = float("nan")
    flat[3::7] = -0.0
    return t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("held_fraction", [0.03, 0.5])  # index list / bitwise AND
@pytest.mark.parametrize("batched", [False, True])
def test_mask_zero_writes_plus_zero_and_leaves_free_entries_bitwise(
    dtype, held_fraction, batched, device
):
    gen = torch.Generator().manual_seed(0)
    held = torch.rand(24, 40, generator=gen) < held_fraction
    pattern = Mask(~held)
    shape = (3, 24, 40) if batched else (24, 40)
    t = _special_values(shape, dtype, device)
    before = t.clone()
    assert pattern.zero_(t) is t
    assert_bitwise_zero(t, held)
    free = ~held.to(device).expand(shape)
    # bit for bit, NaN and -0.0 included
    assert torch.equal(t[free].view(_int(dtype)), before[free].view(_int(dtype)))


def _int(dtype):
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]


def test_mask_zero_of_the_transposed_gradient_view():
    held = torch.rand(16, 9, generator=torch.Generator().manual_seed(1)) < 0.4
    grad_t = torch.randn(16, 9).t().contiguous().t()  # what a hook sees: a transposed view
    Mask(~held).zero_transposed_grad_(grad_t.mT)
    assert_bitwise_zero(grad_t, held)


def test_mask_zero_on_a_tensor_autograd_records_is_differentiable():
    held = torch.eye(5, dtype=torch.bool)
    w = torch.randn(5, 5, requires_grad=True)
    out = Mask(~held).zero_(w.clone())
    out.sum().backward()
    assert_bitwise_zero(w.grad, held)
    assert (w.grad[~held] == 1).all()


def test_mask_keeps_an_index_list_when_few_entries_are_held():
    sparse = Mask(~(torch.rand(64, 64, generator=torch.Generator().manual_seed(2)) < 0.05))
    dense = Mask(~(torch.rand(64, 64, generator=torch.Generator().manual_seed(2)) < 0.5))
    sparse.zero_(torch.randn(64, 64))
    dense.zero_(torch.randn(64, 64))
    index = [t for t in sparse.tensors() if t.dtype == torch.int64]
    assert len(index) == 1 and index[0].numel() == int(sparse.held.sum())
    keep = [t for t in dense.tensors() if t.dtype == torch.int32]
    assert len(keep) == 1 and keep[0].shape == (64, 64)
    assert set(torch.unique(keep[0]).tolist()) == {0, -1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_held_entries_are_written_through_numpy_views_where_numpy_can(dtype):
    layer = HollowLinear(6, 6, dtype=dtype)
    layer(torch.randn(2, 6, dtype=dtype))
    [(_, (_ptr, plan))] = layer._hollow.plans.items()
    if dtype == torch.bfloat16:  # NumPy has no bfloat16: torch views, one _foreach_zero_
        assert plan.calls == () and len(plan.zeros) == 1
    else:
        assert len(plan.calls) == 1 and plan.zeros == ()
    layer.weight.data.fill_diagonal_(-0.0)
    layer.weight.data[0, 0] = float("nan")
    layer(torch.randn(2, 6, dtype=dtype))
    assert_bitwise_zero(layer.weight, torch.eye(6, dtype=torch.bool))
    # not Tensor.numpy(): the storage stays resizable, as FSDP needs (it frees and regrows it)
    storage = layer.weight.untyped_storage()
    assert storage.resizable()
    nbytes = storage.nbytes()
    storage.resize_(0)
    guard.enforce(layer)  # as after a step: nothing to write, no stale write
    storage.resize_(nbytes)
    layer.weight.data.fill_(1.0)
    layer(torch.randn(2, 6, dtype=dtype))
    assert_bitwise_zero(layer.weight, torch.eye(6, dtype=torch.bool))


# A large Mask (from LARGE = 2**20 entries) keeps its packed bits alone. Rows of 1029 entries
# do not align with the 8 entries of a byte, and the mask is drawn by the test, not the library.
BIG = (1031, 1029)


def _big_held(seed: int = 0, share: float = 0.5) -> torch.Tensor:
    return torch.rand(*BIG, generator=torch.Generator().manual_seed(seed)) < share


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.view_as_real(a) if a.is_complex() else a, b) and torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)
    )


def _persistent_bytes(pattern: Mask) -> int:
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in pattern.tensors()
    }
    return sum(storages.values())


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.complex64]
)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "batched"])
def test_a_large_mask_writes_plus_zero_over_nan_and_signed_zero(dtype, layout):
    held = _big_held()
    pattern = Mask(~held)
    assert pattern.shape.numel() >= 2**20
    t = torch.randn(*BIG).to(dtype)
    flat = t.view(-1)
    flat[:9] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")] * 2 + [1.0])
    expected = torch.where(held, torch.zeros((), dtype=dtype), t)
    if layout == "strided":
        t = t.t().contiguous().t()  # the same values, column-major
    if layout == "batched":
        t, expected = torch.stack([t, t]), torch.stack([expected, expected])
    out = pattern.zero_(t)
    assert out is t
    as_bytes = (lambda x: torch.view_as_real(x)) if dtype.is_complex else (lambda x: x)
    assert torch.equal(
        as_bytes(out).contiguous().view(torch.uint8),
        as_bytes(expected).contiguous().view(torch.uint8),
    )


def test_a_large_mask_keeps_one_bit_per_entry_wherever_it_is_used():
    held = _big_held()
    pattern = Mask(~held)
    layer = HollowLinear(BIG[1], BIG[0], bias=False, pattern=pattern)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(2):  # the guard's plan, the forward, the gradient hook
        layer(torch.randn(3, BIG[1])).square().sum().backward()
        opt.step()
        opt.zero_grad()
    pattern.zero_(torch.randn(2, *BIG, dtype=torch.bfloat16).mT.contiguous().mT)
    pattern.held_values(torch.randn(*BIG))
    pattern.restrict(BIG, (500, 0), (300, BIG[1]))
    copy.deepcopy(layer)
    assert _persistent_bytes(pattern) == (held.numel() + 7) // 8  # 1 bit per entry, no more
    assert torch.equal(pattern.held, held)
    assert_bitwise_zero(layer.weight, held)


def test_a_large_mask_trains_exactly_like_a_small_one():
    # the same pattern, through the two storages: every step's weights agree bitwise
    held = _big_held(1, 0.3)
    big = HollowLinear(BIG[1], BIG[0], pattern=Mask(~held))
    torch.manual_seed(0)
    weight, bias = torch.randn(*BIG), torch.randn(BIG[0])
    with torch.no_grad():
        big.weight.copy_(weight)
        big.bias.copy_(bias)
    reference = nn.Linear(BIG[1], BIG[0])
    with torch.no_grad():
        reference.weight.copy_(weight.masked_fill(held, 0.0))
        reference.bias.copy_(bias)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (big, reference)]
    for _ in range(3):
        x = torch.randn(4, BIG[1])
        for m, opt in zip((big, reference), opts, strict=True):
            m(x).square().mean().backward()
            if m is reference:
                m.weight.grad.masked_fill_(held, 0.0)
            opt.step()
            opt.zero_grad()
            if m is reference:
                with torch.no_grad():
                    m.weight.masked_fill_(held, 0.0)
        assert torch.equal(big.weight.detach(), reference.weight.detach())


def test_a_large_mask_pickles_its_bits_and_reads_0_1_0_spec():
    held = _big_held()
    pattern = Mask(~held)
    again = pickle.loads(pickle.dumps(pattern))
    assert again == pattern and torch.equal(again.held, held)
    spec = pattern.spec()
    assert spec["bits"].numel() == (held.numel() + 7) // 8 and "held" not in spec
    assert from_spec(spec) == pattern
    assert from_spec({"type": "Mask", "held": held}) == pattern  # what 0.1.0 saved


def test_a_large_mask_restricted_to_a_shard_unpacks_only_its_block():
    held = _big_held()
    pattern = Mask(~held)
    part = pattern.restrict(BIG, (500, 7), (300, 1000))
    assert torch.equal(part.held, held[500:800, 7:1007])
    assert part.shape == (300, 1000)


def test_a_large_mask_zeroing_allocates_at_most_an_eighth_of_the_weight():
    import tracemalloc

    held = _big_held()
    layer = HollowLinear(BIG[1], BIG[0], bias=False, pattern=Mask(~held))
    [call] = rules_of(layer)["weight"].plan(layer.weight.data).calls  # what the guard runs
    call()  # the first pass may start the threads it shares the work with: not per pass
    nn.init.ones_(layer.weight)
    tracemalloc.start()
    call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 0 < peak <= layer.weight.nbytes // 8
    assert_bitwise_zero(layer.weight, held)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_large_mask_without_numpy_zeroes_with_torch_ops(dtype, monkeypatch):
    # the accelerator path (plain torch ops), run on the CPU by hiding NumPy from the mask
    import torch_hollow.patterns as patterns

    monkeypatch.setattr(patterns, "numpy_alias", lambda t: None)
    held = _big_held(2)
    pattern = Mask(~held)
    t = torch.randn(*BIG).to(dtype)
    t.view(-1)[:4] = torch.tensor([float("nan"), -0.0, float("inf"), 1.0])
    expected = torch.where(held, torch.zeros((), dtype=dtype), t)
    assert pattern.cpu_writers(t) is None
    assert torch.equal(pattern.zero_(t).view(torch.uint8), expected.view(torch.uint8))
