"""What keeps stored weights exactly zero between forwards.

Every hollow module is registered here. One global optimizer step post-hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) zeroes the held entries of every
registered module after every ``step()`` of every ``torch.optim`` optimizer, fused and compiled
steps included; modules also call `zero_stored_` at each eager forward, on load and on save.

Writes go through ``param.data`` so they never bump the autograd version counter: a graph that
saved the weight (another model's pending backward, a layer used twice) stays valid, and the values
written are the zeros the pattern already promises.

For modules whose forward torch-hollow cannot route through its op (`attach`: RNN, attention,
custom modules), hooks do the same work: a forward pre-hook re-zeroes the stored entries, a
post-accumulate-grad hook zeroes them in ``param.grad``, and state-dict hooks zero on save and
load (warning about dropped values).
"""

from __future__ import annotations

__all__ = [
    "attach",
    "detach",
    "dropped",
    "guarded_modules",
    "owns",
    "parameter",
    "record_patterns",
    "register",
    "unregister",
    "warn_dropped",
    "zero_own_",
    "zero_stored_",
    "zero_traced_",
]

import functools
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import shards
from .errors import HollowWarning, refuse, script_refusal
from .functional import elsewhere, graph_writes_allowed
from .patterns import Pattern

_GUARDED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_step_hook: object = None
_epoch = 0  # bumped by every (re)registration: the per-optimizer lists below go stale
_BY_OPTIMIZER: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[tuple, list]] = (
    weakref.WeakKeyDictionary()
)


def register(module: nn.Module) -> None:
    """Guard ``module``: its ``_hollow_patterns`` are re-zeroed after every optimizer step."""
    global _step_hook, _epoch
    _GUARDED.add(module)
    adopt(module)
    _epoch += 1
    if _step_hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _step_hook = register_optimizer_step_post_hook(_after_step)


class _Owned(dict):
    # name -> weakref to the module's own Parameter. Copies and pickles start empty: a copy
    # owns its own Parameters, adopted when it registers.
    def __reduce__(self) -> tuple:
        return _Owned, ()


def adopt(module: nn.Module) -> None:
    """Record the parameters now at ``module``'s held names as its own (see `owns`).

    A module held by hooks also gets its gradient hook on each new Parameter (a deepcopy, an
    unpickled module, ``to_empty``, ``load_state_dict(assign=True)`` bring new ones).
    """
    own = _Owned()
    hooked = isinstance(module.__dict__.get("__prepare_scriptable__"), _ScriptRefusal)
    for name, pattern in module._hollow_patterns.items():
        param = parameter(module, name)
        if param is None:
            continue
        own[name] = weakref.ref(param)
        if hooked and param.requires_grad and not _has_grad_hook(param):
            param.register_post_accumulate_grad_hook(functools.partial(_mask_grad, pattern))
    module.__dict__["_hollow_own"] = own


def owns(module: nn.Module, name: str, tensor: object) -> bool:
    """Whether ``tensor``, found at ``module.<name>``, is the module's own parameter.

    torch-hollow writes only into the Parameter a module holds as its own: the one it had when
    made hollow, loaded, copied, moved, or last stepped. A tensor put in its place by
    ``torch.func.functional_call``, or computed by a parametrization, belongs to the caller
    and is never written.
    """
    ref = module.__dict__.get("_hollow_own", _NO_OWN).get(name)
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


_NO_OWN: dict = {}


def unregister(module: nn.Module) -> None:
    """Stop guarding ``module``."""
    global _epoch
    _GUARDED.discard(module)
    _epoch += 1


def guarded_modules() -> list[nn.Module]:
    """The live guarded modules (for audits and tests)."""
    return list(_GUARDED)


def zero_stored_(module: nn.Module) -> None:
    """Write 0.0 into the held entries of every hollow parameter of ``module``."""
    _zero_modules((module,))


def _zero_modules(modules: Iterable[nn.Module]) -> None:
    views: list[Tensor] = []
    for module in modules:
        writers, more, others = _stored_targets(module)
        for write in writers:
            write()
        views += more
        for pattern, data in others:
            pattern.zero_(data)
    if views:
        torch._foreach_zero_(views)  # one launch for all of them on an accelerator


def zero_own_(module: nn.Module, name: str, param: Tensor) -> None:
    """`zero_stored_` for a module's one held ``param`` at ``name``, as each eager forward calls.

    The hot path of a `HollowLinear` forward: the NumPy writers cached for this storage, found
    without the general lookup; anything else takes `zero_stored_`.
    """
    hit = module.__dict__.get("_hollow_cache", _NO_OWN).get(name)
    if hit is not None and type(param) is nn.Parameter and hit[0] == param.data_ptr():
        writers, views, others = hit[1]
        if not (views or others):
            for write in writers:
                write()
            return
    zero_stored_(module)


def zero_traced_(module: nn.Module) -> None:
    """`zero_stored_` inside a compiled graph: a functional write, no cached ``.data`` views."""
    with torch.no_grad():
        for name, pattern in module._hollow_patterns.items():
            shards.zero_(parameter(module, name), pattern)


def _after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    _zero_modules(_stepped_modules(optimizer))


def _stepped_modules(optimizer: torch.optim.Optimizer) -> list[nn.Module]:
    # The guarded modules with a held parameter in this optimizer, cached per optimizer until
    # its param groups or the registry change; an optimizer of plain layers pays ~1 us.
    groups = optimizer.param_groups
    key = (_epoch, *[(id(g["params"]), len(g["params"])) for g in groups])
    hit = _BY_OPTIMIZER.get(optimizer)
    if hit is None or hit[0] != key:
        ids = {id(p) for g in groups for p in g["params"]}
        found = [
            m
            for m in list(_GUARDED)
            if any(id(parameter(m, name)) in ids for name in m._hollow_patterns)
        ]
        hit = _BY_OPTIMIZER[optimizer] = (key, [weakref.ref(m) for m in found])
    return [m for m in (ref() for ref in hit[1]) if m is not None]


def parameter(module: nn.Module, name: str) -> Tensor | None:
    """``module``'s parameter at the (possibly dotted) ``name``, or None."""
    if "." not in name:
        return module._parameters.get(name)
    holder, leaf = _holder(module, name)
    return None if holder is None else holder._parameters.get(leaf)


def _holder(module: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    # The submodule whose _parameters hold the dotted ``name``, and the name there.
    owner, _, leaf = name.rpartition(".")
    if not owner:
        return module, leaf
    try:
        return module.get_submodule(owner), leaf
    except AttributeError:
        return None, leaf


# What zeroes a parameter's held entries: NumPy writers (CPU: a NumPy call costs ~0.3 us, a
# torch op ~1.5 us, paid at every eager forward and step), torch views for one _foreach_zero_
# (accelerators, dtypes NumPy lacks), and (pattern, tensor) pairs for the rest.
_Targets = tuple[list[Callable[[], object]], list[Tensor], list[tuple[Pattern, Tensor]]]


def _stored_targets(module: nn.Module) -> _Targets:
    # Rebuilt when the storage changes (`.to()`, `param.data = t`,
    # `load_state_dict(assign=True)`): an old view keeps its old storage alive, so an equal
    # data_ptr means the same storage.
    cache: dict[str, tuple[int, _Targets]] = module.__dict__.get("_hollow_cache")  # type: ignore[assignment]
    if cache is None:
        cache = module.__dict__["_hollow_cache"] = _Cache()
    patterns = module._hollow_patterns
    if len(patterns) == 1:  # the common case, without building new lists
        [(name, pattern)] = patterns.items()
        return _targets_of(module, cache, name, pattern)
    writers: list[Callable[[], object]] = []
    views: list[Tensor] = []
    others: list[tuple[Pattern, Tensor]] = []
    for name, pattern in patterns.items():
        more = _targets_of(module, cache, name, pattern)
        writers += more[0]
        views += more[1]
        others += more[2]
    return writers, views, others


class _Cache(dict):
    # name -> (data_ptr, targets). Copies and pickles start empty (NumPy views are not theirs to
    # carry), as `_Owned` does.
    def __reduce__(self) -> tuple:
        return _Cache, ()


_NONE: _Targets = ([], [], [])


def _targets_of(module: nn.Module, cache: dict, name: str, pattern: Pattern) -> _Targets:
    param = parameter(module, name)
    if param is None:
        return _NONE
    ptr = (param._local_tensor if shards.is_dtensor(param) else param).data_ptr()
    hit = cache.get(name)
    if hit is None or hit[0] != ptr:
        hit = cache[name] = (ptr, _fresh_targets(param, pattern))
        adopt(module)  # a new storage, maybe a new Parameter (FSDP, to_empty, assign)
    return hit[1]


def _fresh_targets(param: Tensor, pattern: Pattern) -> _Targets:
    data = param.data
    if shards.is_dtensor(data):
        if data._local_tensor.untyped_storage().nbytes() == 0:
            return _NONE
        return ([], *shards.local_targets(data, pattern))
    if data.untyped_storage().nbytes() == 0:  # freed (FSDP resharded): nothing to write
        return _NONE
    writers = pattern.cpu_writers(data)
    if writers is not None:
        return writers, [], []
    views = pattern.views(data)
    if views is None:
        return [], [], [(pattern, data)]
    return [], [v for v in views if v.numel()], []


def dropped(pattern: Pattern, incoming: object) -> tuple[int, float]:
    """How many held entries of a checkpoint tensor are non-zero, and the largest |value|."""
    if not isinstance(incoming, Tensor) or pattern.problem(incoming.shape) is not None:
        return 0, 0.0  # not ours to judge: load_state_dict reports shape mismatches itself
    values = shards.read(incoming)
    return pattern.count_nonzero(values), pattern.max_abs(values)


def record_patterns(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """Note the held patterns in the state dict's metadata, for `torch_hollow.audit`."""
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        _post_save(module, state_dict, prefix, metadata.setdefault(prefix[:-1], {}))


def warn_dropped(key: str, pattern: Pattern, count: int, largest: float) -> None:
    """Say that a load set ``count`` non-zero values of ``key`` to 0.0."""
    warnings.warn(
        HollowWarning(
            f"torch_hollow: loading {key!r} set {count} non-zero value(s) on its held entries "
            f"({pattern!r}) to 0.0; largest |value| dropped: {largest:.6g}. The parameter is "
            "hollow, so these entries cannot hold values; remove() the constraint first to "
            "keep them."
        ),
        stacklevel=4,
    )


# Hooks for modules whose own forward reads the parameter (attach/detach). They are module-level
# functions so that deepcopy and pickle carry them along with the module's hook dicts.


def attach(module: nn.Module, name: str, pattern: Pattern) -> None:
    """Hold ``module.<name>`` (dotted names reach into submodules) with hooks."""
    patterns = module.__dict__.setdefault("_hollow_patterns", {})
    if not patterns:
        module.register_forward_pre_hook(_pre_forward)
        module.register_forward_hook(_post_forward, always_call=True)
        module.register_state_dict_pre_hook(_pre_save)
        module.register_state_dict_post_hook(_post_save)
        module.register_load_state_dict_pre_hook(_pre_load)
        module.register_load_state_dict_post_hook(_post_load)
    patterns[name] = pattern
    # torch.jit.script looks this up on the instance, before it tries to compile our hooks.
    module.__dict__["__prepare_scriptable__"] = _ScriptRefusal(type(module).__name__, [*patterns])
    module.__dict__.pop("_hollow_cache", None)
    register(module)
    zero_stored_(module)


def detach(module: nn.Module, name: str) -> None:
    """Undo `attach` for ``name``; the hooks go with the last name."""
    patterns = module.__dict__.get("_hollow_patterns", {})
    patterns.pop(name, None)
    module.__dict__.pop("_hollow_cache", None)
    param = parameter(module, name)
    if param is not None:
        _drop_grad_hook(param)
    if patterns:
        return
    for attr in ("_hollow_patterns", "_hollow_own", "__prepare_scriptable__"):
        module.__dict__.pop(attr, None)
    unregister(module)
    ours = (_pre_forward, _post_forward, _pre_save, _post_save, _pre_load, _post_load)
    for hooks in (
        module._forward_pre_hooks,
        module._forward_hooks,
        module._state_dict_pre_hooks,
        module._state_dict_hooks,
        module._load_state_dict_pre_hooks,
        module._load_state_dict_post_hooks,
    ):
        for key in [k for k, h in hooks.items() if _unwrap(h) in ours]:
            del hooks[key]
            module._forward_hooks_always_called.pop(key, None)


def _unwrap(hook: Any) -> Any:
    return getattr(hook, "hook", hook)  # load pre-hooks are stored wrapped


def _has_grad_hook(param: Tensor) -> bool:
    hooks = getattr(param, "_post_accumulate_grad_hooks", None) or {}
    return any(getattr(h, "func", None) is _mask_grad for h in hooks.values())


def _drop_grad_hook(param: Tensor) -> None:
    hooks = getattr(param, "_post_accumulate_grad_hooks", None) or {}
    for key in [k for k, h in hooks.items() if getattr(h, "func", None) is _mask_grad]:
        del hooks[key]


def _mask_grad(pattern: Pattern, param: Tensor) -> None:
    if param.grad is not None:
        shards.zero_(param.grad, pattern)


def _pre_forward(module: nn.Module, args: object) -> None:
    if torch.compiler.is_compiling():
        for name in module._hollow_patterns:
            if not isinstance(parameter(module, name), nn.Parameter):
                raise refuse(
                    type(module).__name__,
                    name,
                    None,
                    "got a tensor it does not own (torch.func.functional_call?) under "
                    "torch.compile, where a hook-held parameter cannot be masked",
                    "call functional_call outside torch.compile, or hold the parameter's "
                    "held entries at 0.0 in the tensors you pass",
                )
        if graph_writes_allowed():
            zero_traced_(module)
        return
    if module not in _GUARDED:  # a deepcopy or an unpickled module: not registered yet
        register(module)
    held = module._hollow_patterns
    if not elsewhere() and all(owns(module, n, parameter(module, n)) for n in held):
        zero_stored_(module)
        return
    # A tensor the caller owns (functional_call), a transform or a trace: the forward reads a
    # masked copy put in the parameter's place, and _post_forward puts the tensor back.
    swapped = []
    for name, pattern in held.items():
        holder, leaf = _holder(module, name)
        params = {} if holder is None else holder._parameters
        tensor, orig = params.get(leaf), params.get(leaf + "_orig")
        if tensor is None and orig is not None and owns(module, name, orig):
            # Pruned by torch.nn.utils.prune since: our Parameter is its ``_orig``, and its
            # pre-hook, after this one, computes the weight from it. from_prune hands it back.
            pattern.zero_(orig.data)
            continue
        if tensor is None:  # e.g. parametrized after hollow_: what it computes is not ours
            raise refuse(
                type(module).__name__,
                name,
                None,
                "is no longer a Parameter of the module (torch.nn.utils.prune or a "
                "parametrization replaced it?); torch-hollow holds stored parameters",
                "after pruning, call torch_hollow.from_prune(model); for a parametrization, "
                "remove_parametrizations() or remove() the constraint before parametrizing",
            )
        swapped.append((holder, leaf, tensor))
        holder._parameters[leaf] = pattern.zero_(tensor.clone())
    module.__dict__.setdefault("_hollow_swapped", []).append(swapped)


def _post_forward(module: nn.Module, args: object, output: object) -> None:
    stack = module.__dict__.get("_hollow_swapped")
    if stack:
        for holder, leaf, tensor in stack.pop():
            holder._parameters[leaf] = tensor


# What torch.save(model) pickles of a module held by hooks: `torch-hollow check` allows these
# names in a whole-model file without --trust-pickle.
HOOKS = (
    "_pre_forward",
    "_post_forward",
    "_pre_save",
    "_post_save",
    "_pre_load",
    "_post_load",
    "_mask_grad",
    "_Owned",
    "_Cache",
    "_ScriptRefusal",
)


class _ScriptRefusal:
    # Found by torch.jit.script as module.__prepare_scriptable__; plain data, so it pickles.
    def __init__(self, kind: str, names: list[str]) -> None:
        self.kind, self.names = kind, names

    def __call__(self) -> None:
        raise script_refusal(self.kind, self.names)


def _pre_save(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    zero_stored_(module)


def _post_save(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    local_metadata["hollow"] = {name: p.spec() for name, p in module._hollow_patterns.items()}


def _pre_load(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    module.__dict__["_hollow_loading"] = {
        prefix + name: (pattern, *dropped(pattern, state_dict.get(prefix + name)))
        for name, pattern in module._hollow_patterns.items()
    }


def _post_load(module: nn.Module, incompatible_keys: object) -> None:
    module.__dict__.pop("_hollow_cache", None)
    register(module)  # assign=True may have brought new Parameter objects (adopt)
    zero_stored_(module)
    for key, (pattern, count, largest) in module.__dict__.pop("_hollow_loading", {}).items():
        if count:
            warn_dropped(key, pattern, count, largest)
