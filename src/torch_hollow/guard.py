"""What keeps stored weights obeying their rules between forwards.

A `Pattern` says which entries of a parameter are held; a `Rule` says what holds there (`Zeros`:
bitwise +0.0) and how to restore it. Every module with a rule is registered here. One global
optimizer step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) restores
the rules of every registered module whose parameters the stepped optimizer holds, after every
``step()`` of every ``torch.optim`` optimizer, fused and compiled steps included; modules also
restore them at each eager forward (a raw write, ``nn.init`` or ``.data``, may have come since
the last step), on load and on save.

Which modules an optimizer holds is cached per optimizer and checked at every step against the
identities of the parameters it holds now, so a parameter swapped in ``param_groups``, a
replaced list, ``add_param_group``, ``load_state_dict`` or a module made hollow after the
optimizer stepped is seen at the next step. The cache pins the parameters it was built from,
so that a freed parameter's id cannot come back as another's.

The guard never decides what a rule writes. It asks the rule for a `Plan` once per storage
(NumPy writes on the CPU, where a NumPy call costs a fraction of a torch op; views for one
``torch._foreach_zero_`` elsewhere; or the rule's own write) and runs it. A new kind of rule is
a new `Rule` class: the guard, the layer and the hooks need no change.

Writes go through ``param.data`` so they never bump the autograd version counter: a graph that
saved the weight (another model's pending backward, a layer used twice) stays valid, and the
values written are those the rule already promises.

Modules whose forward torch-hollow cannot route (an RNN, attention, any custom module) are held
by hooks instead (`torch_hollow._hooks`); they are registered here like any other.
"""

from __future__ import annotations

__all__ = [
    "adopt",
    "dropped",
    "dropped_all",
    "enforce",
    "enforce_own",
    "enforce_traced",
    "guarded_modules",
    "owns",
    "record",
    "register",
    "settle_load",
    "unregister",
    "warn_dropped",
]

import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import shards
from ._state import KEY, Held, parameter, state_of
from .errors import HollowWarning, at
from .rules import Plan, Rule

_GUARDED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_step_hook: object = None
_epoch = 0  # bumped when the registry or a module's own Parameters change
# optimizer -> (epoch, ids of its parameters, those parameters (pinned), its held modules)
_BY_OPTIMIZER: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple] = (
    weakref.WeakKeyDictionary()
)
_NOTHING = Plan()


def register(module: nn.Module) -> None:
    """Guard ``module``: its rules are restored after every optimizer step that moves them."""
    global _step_hook, _epoch
    _GUARDED.add(module)
    adopt(module)
    _epoch += 1
    if _step_hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _step_hook = register_optimizer_step_post_hook(_after_step)


def unregister(module: nn.Module) -> None:
    """Stop guarding ``module``."""
    global _epoch
    _GUARDED.discard(module)
    _epoch += 1


def guarded_modules() -> list[nn.Module]:
    """The live guarded modules (for audits and tests)."""
    return list(_GUARDED)


def adopt(module: nn.Module) -> None:
    """Record the Parameters now at ``module``'s held names as its own (see `owns`).

    A module held by hooks also gets its gradient hook on each new Parameter (a deepcopy, an
    unpickled module, ``to_empty``, ``load_state_dict(assign=True)`` bring new ones).
    """
    global _epoch
    held: Held = module.__dict__[KEY]
    own = {}
    for name in held.rules:
        param = parameter(module, name)
        if param is not None:
            own[name] = weakref.ref(param)
    if own.keys() != held.own.keys() or any(r() is not held.own[n]() for n, r in own.items()):
        _epoch += 1  # optimizers' cached module lists may now be stale
    held.own = own
    if held.hooked:
        from ._hooks import hook_grads

        hook_grads(module, held)


def owns(module: nn.Module, held: Held, name: str, tensor: object) -> bool:
    """Whether ``tensor``, found at ``module.<name>``, is the module's own parameter.

    torch-hollow writes only into the Parameter a module holds as its own: the one it had when
    made hollow, loaded, copied, moved, or last stepped. A tensor put in its place by
    ``torch.func.functional_call``, or computed by a parametrization, belongs to the caller
    and is never written.
    """
    ref = held.own.get(name)
    own = None if ref is None else ref()
    if own is tensor:
        return True
    if own is None and ref is not None and isinstance(tensor, nn.Parameter):
        # Our Parameter was replaced out of sight (a Module._apply that makes new ones, FSDP2)
        # and freed; functional_call keeps the one it replaces alive, so this is not a call's.
        adopt(module)
        return True
    # FSDP2 puts a plain unsharded Parameter, gathered from our sharded one, there for forward.
    return (
        own is not None
        and shards.is_dtensor(own)
        and isinstance(tensor, nn.Parameter)
        and not shards.is_dtensor(tensor)
    )


def enforce(module: nn.Module) -> None:
    """Restore every rule of ``module`` in its stored parameters."""
    _enforce_all((module,))


def enforce_own(module: nn.Module, held: Held, name: str, param: Tensor) -> None:
    """`enforce` for a module's one held ``param``, as each eager forward calls it.

    The hot path of a `HollowLinear` forward: the plan made for this storage, found without
    the general lookup; anything else takes `enforce`.
    """
    hit = held.plans.get(name)
    if hit is not None and type(param) is nn.Parameter and hit[0] == param.data_ptr():
        plan = hit[1]
        if not plan.zeros:
            for call in plan.calls:
                call()
            return
    _enforce_all((module,))


def enforce_traced(module: nn.Module) -> None:
    """`enforce` inside a compiled graph: a functional write, no cached ``.data`` plans."""
    with torch.no_grad():
        for name, rule in module.__dict__[KEY].rules.items():
            param = parameter(module, name)
            with at(type(module).__name__, name, getattr(param, "shape", None)):
                shards.enforce_(param, rule)


def _enforce_all(modules: Iterable[nn.Module]) -> None:
    zeros: list[Tensor] = []
    for module in modules:
        held = state_of(module)
        if held is None:
            continue
        for name, rule in held.rules.items():
            plan = _plan(module, held, name, rule)
            for call in plan.calls:
                call()
            zeros += plan.zeros
    if zeros:
        torch._foreach_zero_(zeros)  # one launch for all of them on an accelerator


def _plan(module: nn.Module, held: Held, name: str, rule: Rule) -> Plan:
    # Remade when the storage changes (`.to()`, `param.data = t`, FSDP's regrown storage,
    # `load_state_dict(assign=True)`): an old plan keeps its storage alive, so an equal
    # data_ptr means the same storage.
    param = parameter(module, name)
    if param is None:
        return _NOTHING
    ptr = (param._local_tensor if shards.is_dtensor(param) else param).data_ptr()
    hit = held.plans.get(name)
    if hit is None or hit[0] != ptr:
        with at(type(module).__name__, name, param.shape):
            # A sharded parameter: the rank keeps its shard's part of the rule alone.
            rule = held.rules[name] = shards.localize(module, name, param, rule)
            hit = held.plans[name] = (ptr, shards.plan(param.data, rule))
        adopt(module)  # a new storage, maybe a new Parameter (FSDP, to_empty, assign)
    return hit[1]


def _after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    _enforce_all(_stepped(optimizer))


def _stepped(optimizer: torch.optim.Optimizer) -> list[nn.Module]:
    # The guarded modules with a held parameter in this optimizer. Rebuilt when the registry,
    # a module's Parameters or the optimizer's parameters (by identity) changed.
    groups = optimizer.param_groups
    if len(groups) == 1:
        ids = tuple(map(id, groups[0]["params"]))
    else:
        ids = tuple(id(p) for g in groups for p in g["params"])
    hit = _BY_OPTIMIZER.get(optimizer)
    if hit is None or hit[0] != _epoch or hit[1] != ids:
        pinned = [p for g in groups for p in g["params"]]
        found = set(ids)
        modules = [
            m
            for m in list(_GUARDED)
            if any(id(parameter(m, name)) in found for name in m.__dict__[KEY].rules)
        ]
        hit = _BY_OPTIMIZER[optimizer] = (_epoch, ids, pinned, [weakref.ref(m) for m in modules])
    return [m for m in (ref() for ref in hit[3]) if m is not None]


def dropped(rule: Rule, incoming: object) -> tuple[int, float]:
    """What a checkpoint tensor breaks of ``rule``: the count and the largest change."""
    if not isinstance(incoming, Tensor) or rule.problem(incoming.shape) is not None:
        return 0, 0.0  # not ours to judge: load_state_dict reports shape mismatches itself
    return rule.violations(shards.gather(incoming))


def dropped_all(
    held: Held, state_dict: Any, prefix: str
) -> dict[str, tuple[str, Rule, int, float]]:
    """Before a load: `dropped` for each held name, by its key in ``state_dict``."""
    return {
        prefix + name: (name, rule, *dropped(rule, state_dict.get(prefix + name)))
        for name, rule in held.rules.items()
    }


def settle_load(
    module: nn.Module, held: Held, loading: dict[str, tuple[str, Rule, int, float]]
) -> None:
    """After a load: each rule a key broke becomes `Rule.loaded`; restore all, then warn.

    ``loading`` is what `dropped_all` found before the load.
    """
    for name, rule, count, _ in loading.values():
        param = parameter(module, name)
        if count and param is not None and held.rules.get(name) is rule:
            new = rule.loaded(shards.gather(param.detach()))  # a DTensor's: a collective
            if new is not rule:
                held.rules[name] = new
                held.plans.pop(name, None)
    enforce(module)
    warn_dropped(loading)


def warn_dropped(loading: dict[str, tuple[str, Rule, int, float]]) -> None:
    """After a load: say, for each key of `dropped_all` that broke its rule, what it changed."""
    for key, (_, rule, count, largest) in loading.items():
        if count:
            warnings.warn(HollowWarning(rule.load_warning(key, count, largest)), stacklevel=5)


def record(module: nn.Module, state_dict: Any, prefix: str) -> None:
    """Note the rules in the state dict's metadata, for `torch_hollow.audit`."""
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        local = metadata.setdefault(prefix[:-1], {})
        for name, rule in module.__dict__[KEY].rules.items():
            rule.record(local, name)


def __getattr__(name: str) -> Any:
    # Files pickled by torch-hollow 0.1.0 name hooks and classes of this module.
    from ._compat import GUARD_NAMES

    if name in GUARD_NAMES:
        return GUARD_NAMES[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
