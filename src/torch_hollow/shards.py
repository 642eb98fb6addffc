"""Rules on a sharded DTensor, enforced through each rank's local shard.

``p.diagonal()`` on a DTensor returns a replicated *copy*: zeroing it is a silent no-op. Here
every rank enforces the rule restricted to its own shard (`Rule.restrict`: the held entries
after shifting by the shard's global offset), so no collective is involved and the global tensor
ends up exact. Only `gather` is a collective.
"""

from __future__ import annotations

__all__ = [
    "check",
    "enforce_",
    "gather",
    "is_dtensor",
    "mask_grad_",
    "mask_transposed_grad_",
    "plan",
]

import sys

from torch import Tensor

from .errors import Cause
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


def _local_rule(t: Tensor, rule: Rule) -> Rule:
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
    return rule.restrict(t.shape, offset, local.shape)
