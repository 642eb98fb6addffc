"""What keeps stored weights exactly zero between forwards.

Every hollow module is registered here. One global optimizer step post-hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) zeroes the held entries of every
registered module after every ``step()`` of every ``torch.optim`` optimizer, fused and compiled
steps included; modules also call `zero_stored_` at each eager forward, on load and on save.

Writes go through ``param.data`` so they never bump the autograd version counter: a graph that
saved the weight (another model's pending backward, a layer used twice) stays valid, and the values
written are the zeros the pattern already promises.
"""

from __future__ import annotations

__all__ = ["guarded_modules", "register", "unregister", "zero_stored_"]

import weakref

import torch
from torch import Tensor, nn

from .patterns import Pattern

_GUARDED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_step_hook: object = None


def register(module: nn.Module) -> None:
    """Guard ``module``: its ``_hollow_patterns`` are re-zeroed after every optimizer step."""
    global _step_hook
    _GUARDED.add(module)
    if _step_hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _step_hook = register_optimizer_step_post_hook(_after_step)


def unregister(module: nn.Module) -> None:
    """Stop guarding ``module``."""
    _GUARDED.discard(module)


def guarded_modules() -> list[nn.Module]:
    """The live guarded modules (for audits and tests)."""
    return list(_GUARDED)


def zero_stored_(module: nn.Module) -> None:
    """Write 0.0 into the held entries of every hollow parameter of ``module``."""
    views = _stored_views(module)
    if views:
        torch._foreach_zero_(views)


def _after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    views = [v for m in list(_GUARDED) for v in _stored_views(m)]
    if views:
        torch._foreach_zero_(views)


def _stored_views(module: nn.Module) -> list[Tensor]:
    # Views into each parameter's storage, rebuilt when the storage changes (`.to()`,
    # `param.data = t`, `load_state_dict(assign=True)`): an old view keeps its old storage
    # alive, so an equal data_ptr means the same storage.
    cache: dict[str, tuple[int, list[Tensor]]] = module.__dict__.setdefault("_hollow_cache", {})
    views: list[Tensor] = []
    for name, pattern in module._hollow_patterns.items():
        param = module._parameters.get(name)
        if param is None:
            continue
        ptr = param.data_ptr()
        hit = cache.get(name)
        if hit is None or hit[0] != ptr:
            hit = (ptr, _fresh_views(param, pattern))
            cache[name] = hit
        views += hit[1]
    return views


def _fresh_views(param: Tensor, pattern: Pattern) -> list[Tensor]:
    data = param.data
    if data.untyped_storage().nbytes() == 0:  # freed (FSDP resharded): nothing to write
        return []
    return [v for v in pattern.views(data) if v.numel()]
