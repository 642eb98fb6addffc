"""Rules on a sharded DTensor, enforced through each rank's local shard.

``p.diagonal()`` on a DTensor returns a replicated *copy*: zeroing it is a silent no-op. Here
every rank enforces the rule restricted to its own shard (`Rule.restrict`: the held entries
after shifting by the shard's global offset), so no collective is involved and the global tensor
ends up exact. Only `gather`, and the questions a `Sharded` rule answers about the whole tensor,
are collectives.

A rule that keeps tensors (a `Mask`'s bits) is kept by each rank as `Sharded`: the rule on its
block alone (`localize`), so a rank holds its shard's bits, not the whole parameter's.
"""

from __future__ import annotations

__all__ = [
    "Sharded",
    "check",
    "enforce_",
    "gather",
    "is_dtensor",
    "localize",
    "mask_grad_",
    "mask_transposed_grad_",
    "plan",
]

import functools
import math
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import Cause, at
from .patterns import Pattern
from .rules import Plan, Rule, Zeros


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    # No DTensor can exist before its module is imported, so importing torch_hollow stays cheap.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def plan(data: Tensor, rule: Rule) -> Plan:
    """The `Plan` for a stored tensor: its local shard's when ``data`` is a DTensor.

    Empty for a freed storage (FSDP2 frees the unsharded parameters it regathers).
    """
    local = data._local_tensor if is_dtensor(data) else data
    if local.untyped_storage().nbytes() == 0:
        return Plan()
    return _local_rule(data, rule).plan(local) if local is not data else rule.plan(data)


def localize(module: nn.Module, name: str, param: Tensor, rule: Rule) -> Rule:
    """The rule this rank keeps for ``module.<name>`` once ``param`` is a DTensor.

    A rule that keeps tensors becomes `Sharded` (its shard's part alone; the whole rule is
    no longer referenced from the module), and ``param`` gets the hook that masks its sharded
    gradient. Any other rule, or a plain tensor (FSDP2's unsharded parameter in a forward),
    keeps ``rule``.
    """
    if not is_dtensor(param) or not _keeps_tensors(rule):
        return rule
    local = _local_rule(param, rule)  # a Sharded rule checks here that the block is its own
    if not isinstance(rule, Sharded):
        shape, offset, block = _block(param)
        rule = Sharded(local, shape, offset, block, param.device_mesh, param.placements)
    if param.requires_grad and not _has_grad_hook(param):
        if module.__dict__["_hollow"].hooked:  # its own hook holds the whole rule: dropped
            from ._hooks import _drop_grad_hook

            _drop_grad_hook(param)
        param.register_post_accumulate_grad_hook(functools.partial(_mask_grad, module, name))
    return rule


def enforce_(t: Tensor, rule: Rule) -> Tensor:
    """``rule.enforce_(t)``, through the local shard when ``t`` is a DTensor."""
    if is_dtensor(t):
        _local_rule(t, rule).enforce_(t._local_tensor)
        return t
    return rule.enforce_(t)


def mask_grad_(grad: Tensor, pattern: Pattern) -> None:
    """Zero the entries of ``grad`` that ``pattern`` holds, through its shard if sharded."""
    enforce_(grad, Zeros(pattern))


def mask_transposed_grad_(pattern: Pattern, grad_t: Tensor | None) -> None:
    """Tensor hook for the gradient of a DTensor ``weight.t()`` (None: undefined, left alone)."""
    if grad_t is not None:
        mask_grad_(grad_t.mT, pattern)


def gather(t: Tensor) -> Tensor:
    """The global values of ``t``: a collective for a DTensor (every rank must call it)."""
    return t.full_tensor() if is_dtensor(t) else t


def check(t: Tensor) -> None:
    """Raise a `Cause` if ``t`` is a DTensor whose shards cannot each enforce a rule."""
    if is_dtensor(t) and any(p.is_partial() for p in t.placements):
        raise Cause(
            f"is a DTensor with placements {t.placements}: it holds partial sums, whose "
            "entries cannot be enforced shard by shard",
            "redistribute it to Shard or Replicate placements before holding or stepping it",
        )


class Sharded(Rule):
    """A rule as one rank keeps it for its shard of a DTensor parameter.

    Only ``local``, the rule on the rank's block (`Rule.restrict`), and where that block lies
    are kept: a `Mask` costs each rank its shard's bits. Writes go to the rank's shard. The
    gradient is masked on the sharded ``param.grad`` by the hook `localize` puts on the
    Parameter, which FSDP2 runs after its reduce-scatter (masking commutes with the sum), so
    `grad_pattern` is None: the forward leaves the unsharded gradient alone. A forward under
    FSDP2 reads the unsharded weight gathered from the shards, which the guard keeps; that
    weight is not written (the rank holds no bits for the other shards). `violations`,
    `loaded` and the pattern's ``held_mask`` answer for the whole tensor: collectives over
    the mesh, which every rank must call, as it calls `gather`.

    Args:
        local: the rule on this rank's block.
        shape: the whole parameter's shape.
        offset: the block's offset in it.
        block: the block's shape.
        mesh: the DTensor's device mesh.
        placements: the DTensor's placements.
    """

    grad_pattern = None

    def __init__(
        self,
        local: Rule,
        shape: Sequence[int],
        offset: Sequence[int],
        block: Sequence[int],
        mesh: Any,
        placements: Sequence[Any],
    ) -> None:
        self.local = local
        self.shape, self.offset, self.block = tuple(shape), tuple(offset), tuple(block)
        self.mesh, self.placements = mesh, tuple(placements)

    @property
    def pattern(self) -> Pattern:  # type: ignore[override]
        return ShardPattern(self)

    def __repr__(self) -> str:
        # The same on every rank (audit rows): the kind of rule and the whole pattern's.
        return f"Sharded({type(self.local).__name__}({self.pattern!r}))"

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if tuple(shape) == self.shape:
            return None
        return (
            f"is held as the shard at {self.offset} of a {self.shape} parameter",
            "hold the parameter again where it has that shape",
        )

    def plan(self, stored: Tensor) -> Plan:
        # The unsharded weight FSDP2 gathers for a forward is not written: see the class.
        return self.local.plan(stored) if self._mine(stored) else Plan()

    def enforce_(self, t: Tensor) -> Tensor:
        local = t._local_tensor if is_dtensor(t) else t
        if self._mine(local):
            self.local.enforce_(local)
        return t

    def apply(self, t: Tensor) -> Tensor:
        if not self._mine(t):
            raise self._not_mine(t)
        return self.local.apply(t)

    def violations(self, t: Tensor) -> tuple[int, float]:
        part = self._part(t)
        count, largest = self.local.violations(part)
        device = part.device
        nan = math.isnan(largest)
        summed = _over_shards(self, torch.tensor([count, nan], dtype=torch.float64, device=device))
        top = torch.tensor([0.0 if nan else largest], dtype=torch.float64, device=device)
        top = _over_shards(self, top, "max")
        return int(summed[0]), float("nan") if summed[1] else float(top[0])

    def load_warning(self, key: str, count: int, largest: float) -> str:
        # The count and the largest change are the whole tensor's (`violations`): so is the
        # pattern the text names.
        text = self.local.load_warning(key, count, largest)
        return text.replace(repr(self.local.pattern), repr(self.pattern))

    def loaded(self, t: Tensor) -> Rule:
        new = self.local.loaded(self._part(t))
        if new is self.local:
            return self
        return Sharded(new, self.shape, self.offset, self.block, self.mesh, self.placements)

    def combine(self, other: Rule) -> Rule | None:
        # Held again after sharding (a verb called twice): the other rule on this block.
        theirs = other.restrict(self.shape, self.offset, self.block)
        if theirs == self.local:
            return self
        merged = self.local.combine(theirs) or theirs.combine(self.local)
        if merged is None:
            return None
        return Sharded(merged, self.shape, self.offset, self.block, self.mesh, self.placements)

    def restrict(self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]) -> Rule:
        if (tuple(shape), tuple(offset), tuple(local)) != (self.shape, self.offset, self.block):
            raise Cause(
                f"is held as the shard at {self.offset} (shape {self.block}) of a "
                f"{self.shape} parameter, and is now asked for the one at {tuple(offset)} "
                f"(shape {tuple(local)}) of {tuple(shape)}: this rank has no bits for it",
                "hold the parameter again after re-sharding it",
            )
        return self.local

    def record(self, metadata: dict[str, Any], name: str) -> None:
        # A rank's state dict holds its shards: the rule on its block, and where the block
        # lies; not under the keys `audit` reads as the whole parameter's rule.
        rules: dict[str, Any] = {}
        self.local.record(rules, name)
        metadata.setdefault("hollow_shard", {})[name] = {
            "shape": list(self.shape),
            "offset": list(self.offset),
            "block": list(self.block),
            "rules": rules,
        }

    def mask_grad_(self, grad: Tensor) -> None:
        """Zero the held entries of the rank's shard of ``grad`` (a DTensor or the block)."""
        pattern = self.local.grad_pattern
        local = grad._local_tensor if is_dtensor(grad) else grad
        if pattern is not None and self._mine(local):
            pattern.zero_(local)

    def _mine(self, t: Tensor) -> bool:
        return tuple(t.shape) == self.block

    def _not_mine(self, t: Tensor) -> Cause:
        return Cause(
            f"got a {tuple(t.shape)} tensor; this rank keeps the rule on its shard alone (at "
            f"{self.offset}, shape {self.block}, of {self.shape})",
            "pass the module's own sharded parameter, or hold the parameter before sharding "
            "and use it outside the sharded model",
        )

    def _part(self, t: Tensor) -> Tensor:
        # The rank's block of ``t``: a DTensor's local shard, or cut from the whole tensor.
        if is_dtensor(t):
            return t._local_tensor
        if tuple(t.shape) == self.shape:
            return t[tuple(slice(o, o + n) for o, n in zip(self.offset, self.block, strict=True))]
        return t


class ShardPattern(Pattern):
    """What `Sharded.pattern` answers: the pattern on the rank's block, where it lies.

    Writes reach the rank's block (a DTensor's local shard, or a tensor of the block's
    shape); ``held_mask`` of the whole tensor is a collective over the mesh.
    """

    def __init__(self, rule: Sharded) -> None:
        self.rule = rule

    def __repr__(self) -> str:
        # The same on every rank (audit rows): the kind and the whole shape.
        return f"{type(self.rule.local.pattern).__name__}(shape={self.rule.shape}, sharded)"

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        return self.rule.problem(shape)

    def views(self, t: Tensor) -> None:
        return None

    def zero_(self, t: Tensor) -> Tensor:
        local = t._local_tensor if is_dtensor(t) else t
        if not self.rule._mine(local):
            raise self.rule._not_mine(local)
        self.rule.local.pattern.zero_(local)
        return t

    def held_mask(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        whole = torch.zeros(self.rule.shape, dtype=torch.uint8, device=device)
        part = self.rule._part(whole)
        part.copy_(self.rule.local.pattern.held_mask(self.rule.block, device))
        return _over_shards(self.rule, whole, "max").bool().expand(tuple(shape))

    def restrict(
        self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]
    ) -> Pattern:
        return self.rule.restrict(shape, offset, local).pattern

    def tensors(self) -> list[Tensor]:
        return self.rule.local.pattern.tensors()

    def spec(self) -> dict[str, Any]:
        return {
            "type": "Shard",
            "shape": list(self.rule.shape),
            "offset": list(self.rule.offset),
            "pattern": self.rule.local.pattern.spec(),
        }


def _over_shards(rule: Sharded, t: Tensor, op: str = "sum") -> Tensor:
    # Reduced over the mesh dimensions the tensor is sharded along (replicas hold the same).
    import torch.distributed as dist

    reduce = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    for dim, placement in enumerate(rule.placements):
        if placement.is_shard():
            dist.all_reduce(t, op=reduce, group=rule.mesh.get_group(dim))
    return t


def _keeps_tensors(rule: Rule) -> bool:
    # A Mask's bits, a frozen rule's values: what is worth keeping for one shard alone.
    if isinstance(rule, Sharded):
        return True
    return bool(rule.pattern.tensors()) or any(
        isinstance(v, Tensor) for v in getattr(rule, "__dict__", {}).values()
    )


def _mask_grad(module: nn.Module, name: str, param: Tensor) -> None:
    # After FSDP2's reduce-scatter (or autograd's accumulation): the rank's shard of the
    # gradient. Looked up anew, so a rule removed or replaced since no longer masks.
    held = module.__dict__.get("_hollow")
    rule = None if held is None else held.rules.get(name)
    if isinstance(rule, Sharded) and param.grad is not None:
        with at(type(module).__name__, name, param.shape):
            rule.mask_grad_(param.grad)


def _has_grad_hook(param: Tensor) -> bool:
    hooks = getattr(param, "_post_accumulate_grad_hooks", None) or {}
    return any(getattr(h, "func", None) is _mask_grad for h in hooks.values())


def _block(t: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    # The whole shape, the rank's block offset and the block's shape, checked against the
    # local tensor.
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    check(t)
    local = t._local_tensor
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if tuple(local.shape) != tuple(shape):
        raise Cause(
            f"its local shard has shape {tuple(local.shape)}, its placements {t.placements} "
            f"say {tuple(shape)}",
            "hold the parameter before wrapping, or report this layout",
        )
    return tuple(t.shape), tuple(offset), tuple(shape)


def _local_rule(t: Tensor, rule: Rule) -> Rule:
    shape, offset, block = _block(t)
    return rule.restrict(shape, offset, block)
