"""The verbs that hold entries of existing modules in place: hollow_, convert, remove.

Each verb is a line or two over `hold_`, which finds the parameter, checks everything, and only
then changes the module: an ``nn.Linear``'s weight by switching its class to `HollowLinear`
(whose forward routes through torch-hollow), any other parameter with hooks
(`torch_hollow._hooks`). A refusal changes nothing and names the module, the parameter, its
shape and the fix.
"""

from __future__ import annotations

__all__ = ["convert", "hollow_", "is_hollow", "remove", "rules_of"]

from collections.abc import Callable

from torch import nn
from torch.nn.utils import parametrize

from . import _hooks, guard, shards
from ._adapters import wrapper_of
from ._checks import check_tensor, resolve_pattern
from ._state import KEY, Held, parameter, state_of
from .errors import Cause, HollowError, at
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
    path = type(module).__name__
    with at(path, name):
        if pattern is None and not isinstance(offset, bool) and offset == 0:
            pattern = _default_pattern(module, name)
        rule = Zeros(resolve_pattern(offset, pattern))
    return hold_(module, name, rule, path)


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
    with at(type(model).__name__, "weight"):
        rule = Zeros(resolve_pattern(offset, pattern))
    for qualified, module in list(model.named_modules()):
        if where is None:
            linear = type(module) is nn.Linear or (
                parametrize.is_parametrized(module) and type(module).__bases__ == (nn.Linear,)
            )  # a parametrized nn.Linear: chosen, so that _hollow says how to hold it
            chosen = linear and module.in_features == module.out_features
        else:
            chosen = bool(where(qualified, module))
        if chosen and not is_hollow(module):
            hold_(module, "weight", rule, qualified or type(module).__name__)
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
    held = state_of(module) if isinstance(module, nn.Module) else None
    if held is None or not held.rules or (name is not None and name not in held.rules):
        raise HollowError(
            f"torch_hollow: {type(module).__name__}"
            f"{'' if name is None else '.' + name} is not hollow. "
            "Fix: call remove() only on a module made by HollowLinear/hollow_."
        )
    if isinstance(module, HollowLinear) and type(module) is not HollowLinear:
        raise HollowError(
            f"torch_hollow: {type(module).__name__} subclasses HollowLinear; "
            "remove() only turns a HollowLinear back into nn.Linear. Fix: build "
            "the plain layer you want and load its state_dict."
        )
    guard.enforce(module)
    if not isinstance(module, HollowLinear):
        for held_name in [name] if name is not None else list(held.rules):
            _hooks.detach(module, held_name)
        return module
    guard.unregister(module)
    del module.__dict__[KEY]
    module.__class__ = nn.Linear
    return module


def is_hollow(module: nn.Module) -> bool:
    """Whether ``module`` holds some parameter entries to a rule (zeros, frozen values, ...).

    Example:
        >>> import torch
        >>> from torch_hollow import HollowLinear, is_hollow
        >>> is_hollow(HollowLinear(2, 2)), is_hollow(torch.nn.Linear(2, 2))
        (True, False)
    """
    held = state_of(module)
    return held is not None and bool(held.rules)


def rules_of(module: nn.Module) -> dict[str, Rule]:
    """The rules held on ``module``'s parameters, by (possibly dotted) name; empty if none.

    A new dict: changing it changes nothing on the module.

    Example:
        >>> from torch_hollow import HollowLinear, rules_of
        >>> rules_of(HollowLinear(2, 2))
        {'weight': Zeros(pattern=Diagonal(offset=0))}
    """
    held = state_of(module)
    return {} if held is None else dict(held.rules)


_STACKED = {nn.LSTM: 4, nn.LSTMCell: 4, nn.GRU: 3, nn.GRUCell: 3}


def _default_pattern(module: nn.Module, name: str) -> Pattern:
    blocks = _STACKED.get(type(module), 1) if name.startswith("weight_hh") else 1
    if isinstance(module, nn.MultiheadAttention) and name == "in_proj_weight":
        blocks = 3
    return StackedDiagonal(blocks) if blocks > 1 else Diagonal(0)


def hold_(module: nn.Module, name: str, rule: Rule, path: str) -> nn.Module:
    """Hold ``module.<name>`` to ``rule``: find, check, then act; ``path`` names the module.

    The one helper under every verb. Holding a parameter again with an equal rule changes
    nothing; with another rule, the two are combined (`Rule.combine`) or refused.
    """
    chosen = check_hold(module, name, rule, path)
    if chosen is not None:
        _act(module, name, chosen)
    return module


def check_hold(module: nn.Module, name: str, rule: Rule, path: str) -> Rule | None:
    """Raise the `HollowError` `hold_` would raise; else the rule to hold (None: held already).

    For a verb that holds many parameters: check them all, then `hold_` each.
    """
    if not isinstance(module, nn.Module):
        raise HollowError(
            f"torch_hollow: expected an nn.Module, got {type(module).__name__}. "
            "Fix: pass the layer itself, e.g. model.fc."
        )
    with at(path, name):
        param = _find(module, name)
    with at(path, name, param.shape):
        return _check(module, name, param, rule)


def _act(module: nn.Module, name: str, rule: Rule) -> None:
    held = state_of(module)
    if held is not None and name in held.rules and not held.hooked:  # combined: a new rule
        held.rules[name] = rule
        held.plans.clear()
        guard.enforce(module)
    elif type(module) is nn.Linear and name == "weight" and held is None:  # else: hooks hold it
        module.__dict__[KEY] = Held({name: rule})
        module.__class__ = HollowLinear
        guard.register(module)
        guard.enforce(module)
    else:
        _hooks.attach(module, name, rule)


def _find(module: nn.Module, name: str) -> nn.Parameter:
    param = parameter(module, name)
    if param is None and parametrize.is_parametrized(module, name):
        raise Cause(
            f"is parametrized ({type(module).__name__}); torch-hollow holds a stored Parameter, "
            "not a computed weight",
            "make the layer hollow first and register the parametrization after it (a "
            "HollowLinear then reads the computed weight's held entries as 0.0 in every "
            "forward), e.g. hollow_(nn.Linear(...)) then register_parametrization(...)",
        )
    if param is None:
        have = ", ".join(n for n, _ in module.named_parameters()) or "none"
        raise Cause(
            f"{type(module).__name__} has no parameter {name!r} (its parameters: {have})",
            "name one of its parameters",
        )
    return param


def _check(module: nn.Module, name: str, param: nn.Parameter, rule: Rule) -> Rule | None:
    # Raises a Cause if ``rule`` cannot hold here; the rule to hold, None if it already does.
    check_tensor(param, rule)
    shards.check(param)
    if getattr(module, "sparse", False) and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        raise Cause(
            "is an embedding with sparse=True: its sparse gradient cannot be masked",
            "build the embedding with sparse=False (the default)",
        )
    held = state_of(module)
    current = None if held is None else held.rules.get(name)
    if current is not None:
        if current == rule:
            return None
        merged = rule.combine(current) or current.combine(rule)
        if merged is None:
            raise Cause(
                f"is already held by {current!r}, which {rule!r} cannot join",
                "call remove() first to change the rule",
            )
        check_tensor(param, merged)
        return merged
    wrapper = wrapper_of(module)
    if wrapper is not None:
        raise Cause(
            f"peft's {wrapper} wraps this module and adds a low-rank delta that would fill "
            "its held entries",
            "hold the layer before get_peft_model, with torch_hollow.peft.lora_config(...) "
            "as the adapter config",
        )
    if isinstance(module, HollowLinear):
        raise Cause(
            "HollowLinear holds only its weight",
            "hold the weight, or wrap this layer in a module and hollow_ that",
        )
    return rule
