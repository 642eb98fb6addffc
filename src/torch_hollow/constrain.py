"""Constrain existing modules in place: hollow_, convert, remove, is_hollow."""

from __future__ import annotations

__all__ = ["convert", "hollow_", "is_hollow", "remove"]

from collections.abc import Callable

from torch import nn

from . import guard
from .errors import HollowError, refuse
from .functional import check_weight, resolve_pattern
from .nn import HollowLinear
from .patterns import Pattern


def hollow_(
    module: nn.Module, name: str = "weight", *, offset: int = 0, pattern: Pattern | None = None
) -> nn.Module:
    """Hold entries of ``module.<name>`` at exactly 0.0 from now on, in place.

    An ``nn.Linear`` becomes a `HollowLinear` (its class is switched to that fixed subclass, so
    pickling works): the module keeps its identity, its Parameter objects (an optimizer built
    before keeps working) and its state-dict keys. The held entries are zeroed now.

    Args:
        module: an ``nn.Linear``.
        name: the parameter to hold, ``"weight"``.
        offset: which diagonal; shorthand for ``pattern=Diagonal(offset)``.
        pattern: the held entries.

    Returns:
        ``module``.

    Raises:
        HollowError: the module, the parameter or the pattern is not supported (the message
            says which and how to fix it).

    Example:
        >>> import torch
        >>> from torch_hollow import hollow_, is_hollow
        >>> layer = torch.nn.Linear(3, 3)
        >>> weight = layer.weight
        >>> hollow_(layer, offset=0) is layer, layer.weight is weight, is_hollow(layer)
        (True, True, True)
        >>> layer.weight.diagonal().tolist()
        [0.0, 0.0, 0.0]
    """
    return _hollow(module, name, resolve_pattern(offset, pattern), type(module).__name__)


def convert(
    model: nn.Module,
    *,
    where: Callable[[str, nn.Module], bool] | None = None,
    offset: int = 0,
    pattern: Pattern | None = None,
) -> nn.Module:
    """`hollow_` every ``nn.Linear`` of ``model`` with a square weight, in place.

    With ``where``, `hollow_` those submodules ``m`` (qualified name ``q``) for which
    ``where(q, m)`` is true instead. Without it, only modules whose type is exactly ``nn.Linear``
    are taken: subclasses such as ``nn.MultiheadAttention.out_proj`` are used by their owner
    without calling their forward, so converting them silently would guard nothing.

    Args:
        model: any module; itself included.
        where: ``(qualified_name, module) -> bool`` choosing what to convert.
        offset: which diagonal; shorthand for ``pattern=Diagonal(offset)``.
        pattern: the held entries.

    Returns:
        ``model``.

    Raises:
        HollowError: a module chosen by ``where`` cannot be held (named by its qualified name).

    Example:
        >>> import torch
        >>> from torch_hollow import convert, is_hollow
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> [is_hollow(m) for m in convert(model)]
        [True, False]
    """
    pattern = resolve_pattern(offset, pattern)
    for qualified, module in list(model.named_modules()):
        if where is None:
            chosen = type(module) is nn.Linear and module.in_features == module.out_features
        else:
            chosen = bool(where(qualified, module))
        if chosen and not is_hollow(module):
            _hollow(module, "weight", pattern, qualified or type(module).__name__)
    return model


def remove(module: nn.Module) -> nn.Module:
    """Undo `hollow_`: a plain ``nn.Linear`` again, same Parameter objects, held entries left 0.0.

    Args:
        module: a hollow module.

    Returns:
        ``module``.

    Raises:
        HollowError: ``module`` is not hollow, or is a user subclass of `HollowLinear`.

    Example:
        >>> import torch
        >>> from torch_hollow import HollowLinear, remove
        >>> type(remove(HollowLinear(2, 2))).__name__
        'Linear'
    """
    if not is_hollow(module):
        raise HollowError(
            f"torch_hollow: {type(module).__name__} is not hollow. "
            "Fix: call remove() only on a module made by HollowLinear/hollow_."
        )
    if type(module) is not HollowLinear:
        raise HollowError(
            f"torch_hollow: {type(module).__name__} subclasses HollowLinear; "
            "remove() only turns a HollowLinear back into nn.Linear. Fix: build "
            "the plain layer you want and load its state_dict."
        )
    guard.zero_stored_(module)
    guard.unregister(module)
    for attr in ("_hollow_patterns", "_hollow_cache"):
        module.__dict__.pop(attr, None)
    module.__class__ = nn.Linear
    return module


def is_hollow(module: nn.Module) -> bool:
    """Whether ``module`` holds some parameter entries at zero (made by torch-hollow).

    Example:
        >>> import torch
        >>> from torch_hollow import HollowLinear, is_hollow
        >>> is_hollow(HollowLinear(2, 2)), is_hollow(torch.nn.Linear(2, 2))
        (True, False)
    """
    return bool(module.__dict__.get("_hollow_patterns"))


def _hollow(module: nn.Module, name: str, pattern: Pattern, path: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise HollowError(
            f"torch_hollow: expected an nn.Module, got {type(module).__name__}. "
            "Fix: pass the layer itself, e.g. model.fc."
        )
    param = module._parameters.get(name)
    if param is None:
        have = ", ".join(n for n, p in module._parameters.items() if p is not None) or "none"
        raise refuse(
            path,
            name,
            None,
            f"{type(module).__name__} has no parameter {name!r} (its parameters: {have})",
            "name one of its parameters",
        )
    check_weight(path, name, param, pattern, max_dim=2)
    if is_hollow(module):
        if module._hollow_patterns.get(name) == pattern:
            return module
        raise refuse(
            path,
            name,
            param.shape,
            f"is already hollow with {module._hollow_patterns}",
            "call remove() first to change the pattern",
        )
    if type(module) is not nn.Linear or name != "weight":
        raise refuse(
            path,
            name,
            param.shape,
            f"{type(module).__name__}.{name} is not supported "
            "(only the weight of an exact nn.Linear)",
            "replace the layer with torch_hollow.HollowLinear",
        )
    module.__dict__["_hollow_patterns"] = {name: pattern}
    module.__class__ = HollowLinear
    guard.register(module)
    guard.zero_stored_(module)
    return module
