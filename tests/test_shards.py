"""torch_hollow.shards: rules through a DTensor's local shard, and plain tensors passed through.

On a plain tensor every function must behave exactly as the rule does; the 2-rank DTensor cases
are in tests/test_distributed.py. Held entries come from tests/_reference_patterns.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _reference_patterns import PATTERNS
from conftest import assert_bitwise_zero

from torch_hollow import shards
from torch_hollow.errors import Cause
from torch_hollow.rules import Plan, Zeros


def _ints(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view({2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize(
    "t", [torch.ones(2, 2), torch.nn.Parameter(torch.ones(2)), torch.ones(0), None, [1.0], 3.0]
)
def test_is_dtensor_is_false_for_everything_else(t):
    assert shards.is_dtensor(t) is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_plan_of_a_plain_tensor_is_the_rules_plan(name, dtype):
    pattern, held = PATTERNS[name](6, 4)
    rule = Zeros(pattern)
    t = torch.randn(6, 4, dtype=dtype)
    before = t.clone()
    plan = shards.plan(t, rule)
    expected = rule.plan(t.clone())
    assert (len(plan.calls), len(plan.zeros)) == (len(expected.calls), len(expected.zeros))
    for call in plan.calls:
        call()
    if plan.zeros:
        torch._foreach_zero_(list(plan.zeros))
    assert_bitwise_zero(t, held)
    assert torch.equal(_ints(t)[~held], _ints(before)[~held])


def test_plan_of_a_freed_storage_is_empty():
    # bfloat16: the plan would be views (NumPy writers over a freed storage would crash here)
    t = torch.randn(4, 4, dtype=torch.bfloat16)
    t.untyped_storage().resize_(0)  # what FSDP2 does to the unsharded parameters it regathers
    # Nothing here may reach pytest's repr: printing a freed tensor reads freed memory.
    try:
        plan = shards.plan(t, Zeros(PATTERNS["diagonal"](4, 4)[0]))
    except RuntimeError as error:
        pytest.fail(f"planning for a freed storage raised: {error}", pytrace=False)
    writes = len(plan.calls) + len(plan.zeros)
    assert writes == 0
    assert Plan() == Plan((), ())


@pytest.mark.parametrize("name", list(PATTERNS))
def test_enforce_and_mask_grad_on_a_plain_tensor(name):
    pattern, held = PATTERNS[name](5, 3)
    t = torch.randn(2, 5, 3)
    before = t.clone()
    assert shards.enforce_(t, Zeros(pattern)) is t
    assert_bitwise_zero(t, held)
    assert torch.equal(_ints(t)[..., ~held], _ints(before)[..., ~held])
    grad = torch.randn(5, 3)
    expected = grad.masked_fill(held, 0.0)
    assert shards.mask_grad_(grad, pattern) is None
    assert torch.equal(_ints(grad), _ints(expected))


@pytest.mark.parametrize("name", list(PATTERNS))
def test_mask_transposed_grad_zeroes_through_the_transpose(name):
    pattern, held = PATTERNS[name](5, 3)
    grad = torch.randn(5, 3)
    expected = grad.masked_fill(held, 0.0)
    grad_t = grad.t()  # the gradient of weight.t(), as the forward's tensor hook gets it
    assert shards.mask_transposed_grad_(pattern, grad_t) is None
    assert torch.equal(_ints(grad), _ints(expected))
    assert shards.mask_transposed_grad_(pattern, None) is None  # an undefined gradient


def test_gather_and_check_pass_plain_tensors_through():
    t = torch.randn(3, 3)
    assert shards.gather(t) is t
    assert shards.check(t) is None


@pytest.fixture
def one_rank_mesh():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_a_one_rank_dtensor_goes_through_its_local_shard(one_rank_mesh):
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor

    pattern, held = PATTERNS["union"](6, 4)
    rule = Zeros(pattern)
    whole = torch.randn(6, 4)
    sharded = distribute_tensor(whole.clone(), one_rank_mesh, [Shard(1)])
    assert shards.is_dtensor(sharded) and not shards.is_dtensor(sharded._local_tensor)
    for call in shards.plan(sharded, rule).calls:
        call()
    assert_bitwise_zero(sharded._local_tensor, held)
    assert torch.equal(shards.gather(sharded), whole.masked_fill(held, 0.0))
    grad = distribute_tensor(torch.randn(6, 4), one_rank_mesh, [Shard(0)])
    shards.mask_grad_(grad, pattern)
    assert_bitwise_zero(grad._local_tensor, held)
    partial = DTensor.from_local(torch.ones(3, 3), one_rank_mesh, [Partial()])
    with pytest.raises(Cause, match="partial sums") as info:
        shards.check(partial)
    assert type(info.value) is Cause  # the verb adds the location
    with pytest.raises(Cause, match="partial sums"):
        shards.enforce_(partial, rule)


def test_localize_keeps_closed_forms_and_plain_tensors(one_rank_mesh):
    from torch.distributed.tensor import Shard, distribute_tensor

    module = torch.nn.Linear(4, 6)
    rule = Zeros(PATTERNS["mask"](6, 4)[0])
    assert shards.localize(module, "weight", module.weight, rule) is rule  # not a DTensor
    diagonal = Zeros(PATTERNS["diagonal"](6, 4)[0])
    sharded = torch.nn.Parameter(distribute_tensor(torch.randn(6, 4), one_rank_mesh, [Shard(0)]))
    assert shards.localize(module, "weight", sharded, diagonal) is diagonal  # keeps no tensor


def test_localize_keeps_the_shards_part_and_hooks_its_gradient(one_rank_mesh):
    from torch.distributed.tensor import Shard, distribute_tensor

    import torch_hollow as th

    pattern, held = PATTERNS["mask"](6, 4)
    module = th.hollow_(torch.nn.Linear(4, 6), pattern=pattern)
    whole = th.rules_of(module)["weight"]
    param = torch.nn.Parameter(distribute_tensor(torch.randn(6, 4), one_rank_mesh, [Shard(0)]))
    rule = shards.localize(module, "weight", param, whole)
    assert isinstance(rule, shards.Sharded) and rule.grad_pattern is None
    assert rule.local == whole  # one rank: its shard is the whole tensor
    assert shards.localize(module, "weight", param, rule) is rule
    assert len(param._post_accumulate_grad_hooks) == 1  # hooked once
    module._hollow.rules["weight"] = rule
    param.grad = distribute_tensor(torch.randn(6, 4), one_rank_mesh, [Shard(0)])
    for hook in param._post_accumulate_grad_hooks.values():
        hook(param)  # as FSDP2 calls it after its reduce-scatter
    assert_bitwise_zero(param.grad._local_tensor, held)
    th.remove(module)  # no rule any more: the hook leaves the gradient alone
    param.grad = distribute_tensor(torch.ones(6, 4), one_rank_mesh, [Shard(0)])
    for hook in param._post_accumulate_grad_hooks.values():
        hook(param)
    assert (param.grad._local_tensor == 1).all()


@pytest.fixture
def block_of_rows(one_rank_mesh):
    # A rank's rule on rows 3:6 of a 6x4 Mask, as the second of two ranks keeps it (the
    # collectives run over this one rank's mesh, so the whole answers are its block's).
    from torch.distributed.tensor import Shard

    pattern, held = PATTERNS["mask"](6, 4)
    local = Zeros(pattern).restrict((6, 4), (3, 0), (3, 4))
    rule = shards.Sharded(local, (6, 4), (3, 0), (3, 4), one_rank_mesh, [Shard(0)])
    return pattern, held, rule


def test_a_sharded_rule_writes_its_block_alone(block_of_rows):
    _, held, rule = block_of_rows
    block = torch.randn(3, 4)
    before = block.clone()
    for call in rule.plan(block).calls:
        call()
    assert_bitwise_zero(block, held[3:])
    assert torch.equal(_ints(block)[~held[3:]], _ints(before)[~held[3:]])
    whole = torch.randn(6, 4)  # FSDP2's unsharded weight in a forward: not written
    assert rule.plan(whole) == Plan()
    copy = whole.clone()
    assert rule.enforce_(whole) is whole and torch.equal(whole, copy)
    with pytest.raises(Cause, match="its shard alone"):
        rule.apply(whole)
    assert_bitwise_zero(rule.apply(torch.randn(3, 4)), held[3:])
    grad = torch.randn(3, 4)
    rule.mask_grad_(grad)
    assert_bitwise_zero(grad, held[3:])


def test_a_sharded_rule_answers_for_the_whole_tensor(block_of_rows):
    pattern, held, rule = block_of_rows
    ones = torch.ones(6, 4)
    assert rule.violations(ones) == (int(held[3:].sum()), 1.0)  # its block's part, reduced
    assert rule.violations(ones.masked_fill(held, 0)) == (0, 0.0)
    expected = torch.zeros(6, 4, dtype=torch.bool)
    expected[3:] = held[3:]
    assert torch.equal(rule.pattern.held_mask((6, 4)), expected)
    assert repr(rule) == "Sharded(Zeros(Mask(shape=(6, 4), sharded)))"  # the same on every rank
    assert rule.problem(torch.Size((6, 4))) is None
    assert "shard at (3, 0)" in rule.problem(torch.Size((4, 6)))[0]
    assert rule.restrict((6, 4), (3, 0), (3, 4)) is rule.local
    with pytest.raises(Cause, match="no bits for it"):
        rule.restrict((6, 4), (0, 0), (3, 4))
    assert rule.loaded(ones) is rule
    assert rule.combine(Zeros(pattern)) is rule  # held again with its own whole rule
    text = rule.load_warning("w", 3, 1.0)
    assert "Mask(shape=(6, 4), sharded)" in text and "(3, 4)" not in text


def test_a_sharded_rule_records_its_block_apart_from_whole_rules(block_of_rows):
    rule = block_of_rows[2]
    metadata = {}
    rule.record(metadata, "weight")
    assert "hollow" not in metadata  # audit reads that key as the whole parameter's rule
    entry = metadata["hollow_shard"]["weight"]
    assert (entry["shape"], entry["offset"], entry["block"]) == ([6, 4], [3, 0], [3, 4])
    assert entry["rules"]["hollow"]["weight"]["shape"] == [3, 4]
