"""The hook path: rules held on a module whose own forward reads the parameter.

An RNN, attention or any custom module computes with its parameters itself, so torch-hollow
cannot route its forward (as `HollowLinear` does). Hooks do the same work instead:

- a forward pre-hook restores the rules in the stored parameters, or puts a copy that obeys
  them in a tensor's place when the forward must not write (`_routing.before_forward`), and a
  forward hook puts the tensor back;
- a post-accumulate-grad hook masks ``param.grad`` after ``backward()`` (not
  ``torch.autograd.grad``, which writes no ``.grad``);
- state-dict hooks restore the rules on save and load, and warn about values a load dropped;
- the optimizer guard (`torch_hollow.guard`) restores them after each step, as for any module.

The hooks are module-level functions, so deepcopy and pickle carry them along with the
module's hook dicts.
"""

from __future__ import annotations

__all__ = ["HOOKS", "attach", "detach", "hook_grads"]

import functools
from typing import Any

from torch import Tensor, nn

from . import guard, shards
from ._routing import before_forward
from ._state import KEY, Held, parameter, state_of
from .errors import at, script_refusal
from .rules import Rule


def attach(module: nn.Module, name: str, rule: Rule) -> None:
    """Hold ``module.<name>`` (dotted names reach into submodules) to ``rule`` with hooks."""
    held = module.__dict__.get(KEY)
    if held is None:
        held = module.__dict__[KEY] = Held({}, hooked=True)
        module.register_forward_pre_hook(_pre_forward)
        module.register_forward_hook(_post_forward, always_call=True)
        module.register_state_dict_pre_hook(_pre_save)
        module.register_state_dict_post_hook(_post_save)
        module.register_load_state_dict_pre_hook(_pre_load)
        module.register_load_state_dict_post_hook(_post_load)
    param = parameter(module, name)
    if name in held.rules and param is not None:
        _drop_grad_hook(param)  # bound to the rule this one replaces; hooked again below
    held.rules[name] = rule
    held.plans.clear()
    # torch.jit.script looks this up on the instance, before it tries to compile our hooks.
    module.__dict__["__prepare_scriptable__"] = _ScriptRefusal(
        type(module).__name__, [*held.rules]
    )
    guard.register(module)
    guard.enforce(module)


def detach(module: nn.Module, name: str) -> None:
    """Undo `attach` for ``name``; the hooks go with the last name."""
    held: Held = module.__dict__[KEY]
    held.rules.pop(name, None)
    held.plans.clear()
    param = parameter(module, name)
    if param is not None:
        _drop_grad_hook(param)
    if held.rules:
        return
    for attr in (KEY, "__prepare_scriptable__"):
        module.__dict__.pop(attr, None)
    guard.unregister(module)
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


def hook_grads(module: nn.Module, held: Held) -> None:
    """Give each held Parameter of ``module`` that lacks it the gradient-masking hook."""
    for name, rule in held.rules.items():
        param = parameter(module, name)
        if param is not None and param.requires_grad and not _has_grad_hook(param):
            where = (type(module).__name__, name)
            param.register_post_accumulate_grad_hook(functools.partial(_mask_grad, rule, where))


def _unwrap(hook: Any) -> Any:
    return getattr(hook, "hook", hook)  # load pre-hooks are stored wrapped


def _has_grad_hook(param: Tensor) -> bool:
    hooks = getattr(param, "_post_accumulate_grad_hooks", None) or {}
    return any(getattr(h, "func", None) is _mask_grad for h in hooks.values())


def _drop_grad_hook(param: Tensor) -> None:
    hooks = getattr(param, "_post_accumulate_grad_hooks", None) or {}
    for key in [k for k, h in hooks.items() if getattr(h, "func", None) is _mask_grad]:
        del hooks[key]


def _mask_grad(rule: Rule, where: tuple[str, str], param: Tensor) -> None:
    if param.grad is not None and rule.grad_pattern is not None:
        with at(*where, param.shape):
            shards.mask_grad_(param.grad, rule.grad_pattern)


def _pre_forward(module: nn.Module, args: object) -> None:
    held = state_of(module)
    if held is not None:
        before_forward(module, held)


def _post_forward(module: nn.Module, args: object, output: object) -> None:
    held = state_of(module)
    if held is not None and held.swapped:
        for owner, leaf, tensor in held.swapped.pop():
            owner._parameters[leaf] = tensor


class _ScriptRefusal:
    # Found by torch.jit.script as module.__prepare_scriptable__; plain data, so it pickles.
    def __init__(self, kind: str, names: list[str]) -> None:
        self.kind, self.names = kind, names

    def __call__(self) -> None:
        raise script_refusal(self.kind, self.names)


def _pre_save(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    if state_of(module) is not None:
        guard.enforce(module)


def _post_save(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    held = state_of(module)
    if held is not None:
        for name, rule in held.rules.items():
            rule.record(local_metadata, name)


def _pre_load(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    held = state_of(module)
    if held is not None:
        held.loading = guard.dropped_all(held, state_dict, prefix)


def _post_load(module: nn.Module, incompatible_keys: object) -> None:
    held = state_of(module)
    if held is None:
        return
    held.plans.clear()
    guard.register(module)  # assign=True may have brought new Parameter objects (adopt)
    loading, held.loading = held.loading, {}
    guard.settle_load(module, held, loading)


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
    "_ScriptRefusal",
)
