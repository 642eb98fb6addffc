"""Held entries of a sharded DTensor, zeroed through each rank's local shard.

``p.diagonal()`` on a DTensor returns a replicated *copy*: zeroing it is a silent no-op. Here
every rank writes into its own local shard, at the entries the pattern holds after shifting by
the shard's global offset, so no collective is involved and the global tensor ends up exact.
"""

from __future__ import annotations

__all__ = ["is_dtensor", "local_targets", "read", "zero_", "zero_transposed_grad_"]

import sys

from torch import Tensor

from .errors import HollowError
from .patterns import Diagonal, Mask, Pattern


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    # No DTensor can exist before its module is imported, so importing torch_hollow stays cheap.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local_targets(
    t: Tensor, pattern: Pattern
) -> tuple[list[Tensor], list[tuple[Pattern, Tensor]]]:
    """Views (or pattern, tensor pairs) of ``t``'s local shard covering its held entries."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(p.is_partial() for p in t.placements):
        raise HollowError(
            f"torch_hollow: a DTensor of shape {tuple(t.shape)} with placements "
            f"{t.placements} holds partial sums, whose entries cannot be zeroed shard by shard. "
            "Fix: redistribute to Shard or Replicate placements before holding or stepping it."
        )
    local = t._local_tensor
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if tuple(local.shape) != tuple(shape):
        raise HollowError(
            f"torch_hollow: a DTensor's local shard has shape {tuple(local.shape)}, "
            f"its placements {t.placements} say {tuple(shape)}. Fix: hold the "
            "parameter before wrapping, or report this layout."
        )
    if isinstance(pattern, Diagonal):
        return [local.diagonal(pattern.offset + offset[-2] - offset[-1], -2, -1)], []
    # Any other pattern: its held entries over the whole global shape (a full-shape Mask of a
    # conv weight varies along every dim), cut to this shard's window along every dim.
    held = pattern.held_mask(t.shape, local.device)
    window = held[tuple(slice(o, o + n) for o, n in zip(offset, local.shape, strict=True))]
    return [], [(Mask(~window), local)]


def zero_(t: Tensor, pattern: Pattern) -> Tensor:
    """``pattern.zero_(t)``, through the local shard when ``t`` is a DTensor."""
    if not is_dtensor(t):
        return pattern.zero_(t)
    views, others = local_targets(t, pattern)
    for v in views:
        v.zero_()
    for p, local in others:
        p.zero_(local)
    return t


def zero_transposed_grad_(pattern: Pattern, grad_t: Tensor | None) -> None:
    """Tensor hook for the gradient of a DTensor ``weight.t()`` (None: undefined, left alone)."""
    if grad_t is not None:
        zero_(grad_t.mT, pattern)


def read(t: Tensor) -> Tensor:
    """The global values of ``t`` (a collective for a DTensor: every rank must call it)."""
    return t.full_tensor() if is_dtensor(t) else t
