"""Constrain existing modules in place: hollow_, convert, remove, is_hollow."""

from __future__ import annotations

__all__ = ["convert", "hollow_", "is_hollow", "remove", "rules_of"]

from collections.abc import Callable

from torch import nn
from torch.nn.utils import parametrize

from . import guard
from .errors import HollowError, refuse
from .functional import check_weight, resolve_pattern
from .nn import HollowLinear
from .patterns import Diagonal, Pattern, StackedDiagonal
from .rules import Rule, Zeros


def hollow_(
    module: nn.Module, name: str = "weight", *, offset: int = 0, pattern: Pattern | None = None
) -> nn.Module:
    """Hold entries of ``module.<name>`` at exactly 0.0 from now on, in place.

    An exact ``nn.Linear``'s weight: the module becomes a `HollowLinear` (its class is switched
    to that fixed subclass, so pickling works) and keeps its identity, its Parameter objects (an
    optimizer built before keeps working) and its state-dict keys; every guarantee holds.

    Any other floating parameter of 2 or more dims (``(..., out, in)``; a dotted ``name`` reaches
    into submodules, e.g. ``"out_proj.weight"`` of ``nn.MultiheadAttention``) is held by hooks on
    ``module``, whose own forward reads the parameter: a forward pre-hook re-zeroes the stored
    entries before each forward, the optimizer guard after each step, state-dict hooks on save
    and load (warning about dropped values), and a post-accumulate-grad hook zeroes them in
    ``param.grad`` after ``backward()``. ``torch.autograd.grad`` is not masked on this path.

    Default patterns: ``Diagonal(offset)``, except the stacked layouts: ``weight_hh_l*`` of
    ``nn.LSTM`` / ``nn.LSTMCell`` (4 gate blocks), ``nn.GRU`` / ``nn.GRUCell`` (3) and
    ``in_proj_weight`` of ``nn.MultiheadAttention`` (q, k, v) get ``StackedDiagonal``: the
    diagonal of each block.

    Args:
        module: the module whose forward uses the parameter.
        name: the parameter, dotted for a submodule's.
        offset: which diagonal; shorthand for ``pattern=Diagonal(offset)``.
        pattern: the held entries.

    Returns:
        ``module``.

    Raises:
        HollowError: the parameter is missing, not floating, not a matrix, or the pattern does
            not fit (the message says which and how to fix it).

    Example:
        >>> import torch
        >>> from torch_hollow import hollow_, is_hollow
        >>> layer = torch.nn.Linear(3, 3)
        >>> weight = layer.weight
        >>> hollow_(layer, offset=0) is layer, layer.weight is weight, is_hollow(layer)
        (True, True, True)
        >>> layer.weight.diagonal().tolist()
        [0.0, 0.0, 0.0]
        >>> lstm = hollow_(torch.nn.LSTM(2, 3), "weight_hh_l0")  # each gate's 3x3 diagonal
        >>> lstm.weight_hh_l0.unflatten(0, (4, 3)).diagonal(0, -2, -1).abs().sum().item()
        0.0
    """
    if pattern is None and not isinstance(offset, bool) and offset == 0:
        pattern = _default_pattern(module, name)
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
            linear = type(module) is nn.Linear or (
                parametrize.is_parametrized(module) and type(module).__bases__ == (nn.Linear,)
            )  # a parametrized nn.Linear: chosen, so that _hollow says how to hold it
            chosen = linear and module.in_features == module.out_features
        else:
            chosen = bool(where(qualified, module))
        if chosen and not is_hollow(module):
            _hollow(module, "weight", pattern, qualified or type(module).__name__)
    return model


def remove(module: nn.Module, name: str | None = None) -> nn.Module:
    """Undo `hollow_`: same Parameter objects, held entries left at 0.0, free to train again.

    A `HollowLinear` becomes a plain ``nn.Linear``; a module held by hooks loses them (for
    ``name``, or for all its held parameters when ``name`` is None).

    Args:
        module: a hollow module.
        name: which held parameter to release (default: all).

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
    if not is_hollow(module) or (name is not None and name not in module._hollow_patterns):
        raise HollowError(
            f"torch_hollow: {type(module).__name__} is not hollow. "
            "Fix: call remove() only on a module made by HollowLinear/hollow_."
        )
    if not isinstance(module, HollowLinear):
        guard.zero_stored_(module)
        for held in [name] if name is not None else list(module._hollow_patterns):
            guard.detach(module, held)
        return module
    if type(module) is not HollowLinear:
        raise HollowError(
            f"torch_hollow: {type(module).__name__} subclasses HollowLinear; "
            "remove() only turns a HollowLinear back into nn.Linear. Fix: build "
            "the plain layer you want and load its state_dict."
        )
    guard.zero_stored_(module)
    guard.unregister(module)
    for attr in ("_hollow_patterns", "_hollow_cache", "_hollow_own"):
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


def rules_of(module: nn.Module) -> dict[str, Rule]:
    """The rules held on ``module``'s parameters, by (possibly dotted) name; empty if none.

    A new dict: changing it changes nothing on the module.

    Example:
        >>> from torch_hollow import HollowLinear, rules_of
        >>> rules_of(HollowLinear(2, 2))
        {'weight': Zeros(pattern=Diagonal(offset=0))}
    """
    return {n: Zeros(p) for n, p in (module.__dict__.get("_hollow_patterns") or {}).items()}


_STACKED = {nn.LSTM: 4, nn.LSTMCell: 4, nn.GRU: 3, nn.GRUCell: 3}


def _default_pattern(module: nn.Module, name: str) -> Pattern:
    blocks = _STACKED.get(type(module), 1) if name.startswith("weight_hh") else 1
    if isinstance(module, nn.MultiheadAttention) and name == "in_proj_weight":
        blocks = 3
    return StackedDiagonal(blocks) if blocks > 1 else Diagonal(0)


def _hollow(module: nn.Module, name: str, pattern: Pattern, path: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise HollowError(
            f"torch_hollow: expected an nn.Module, got {type(module).__name__}. "
            "Fix: pass the layer itself, e.g. model.fc."
        )
    param = guard.parameter(module, name)
    if param is None and parametrize.is_parametrized(module, name):
        raise refuse(
            path,
            name,
            None,
            f"is parametrized ({type(module).__name__}); torch-hollow holds a stored Parameter, "
            "not a computed weight",
            "make the layer hollow first and register the parametrization after it (a "
            "HollowLinear then reads the computed weight's held entries as 0.0 in every "
            "forward), e.g. hollow_(nn.Linear(...)) then register_parametrization(...)",
        )
    if param is None:
        have = ", ".join(n for n, _ in module.named_parameters()) or "none"
        raise refuse(
            path,
            name,
            None,
            f"{type(module).__name__} has no parameter {name!r} (its parameters: {have})",
            "name one of its parameters",
        )
    check_weight(path, name, param, pattern)
    held = module.__dict__.get("_hollow_patterns") or {}
    if name in held:
        if held[name] == pattern:
            return module
        raise refuse(
            path,
            name,
            param.shape,
            f"is already hollow with {held[name]!r}",
            "call remove() first to change the pattern",
        )
    if type(module) is nn.Linear and name == "weight":
        module.__dict__["_hollow_patterns"] = {name: pattern}
        module.__class__ = HollowLinear
        guard.register(module)
        guard.zero_stored_(module)
    elif isinstance(module, HollowLinear):
        raise refuse(
            path,
            name,
            param.shape,
            "HollowLinear holds only its weight",
            "hold the weight, or wrap this layer in a module and hollow_ that",
        )
    else:
        guard.attach(module, name, pattern)
    return module
