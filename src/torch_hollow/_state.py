"""The one object torch-hollow keeps on each held module, and how to find its parameters.

A held module carries a `Held` at ``module.__dict__["_hollow"]``: its rules by parameter name,
and what serves them (the Parameters it owns, the write plans made for their storages, the
tensors a forward swapped out). Copies and pickles carry the rules alone; the rest is rebuilt on
the copy, whose Parameters and storages are its own.
"""

from __future__ import annotations

__all__ = ["KEY", "Held", "holder", "parameter", "state_of"]

import weakref
from typing import Any

from torch import Tensor, nn

from .rules import Plan, Rule

KEY = "_hollow"


class Held:
    """Rules on some parameters of one module, and the caches that serve them.

    Attributes:
        rules: parameter name (dotted for a submodule's) -> its rule.
        hooked: held by hooks (`torch_hollow._hooks`) rather than by its own forward.
        own: name -> weak reference to the Parameter the module owns there.
        plans: name -> ``(data_ptr, Plan)`` for the storage the plan was made for.
        swapped: per running forward, the ``(holder, leaf, tensor)`` it put back after.
        loading: per running ``load_state_dict``, ``key -> (name, rule, count, largest)``:
            what the checkpoint broke of each rule.
    """

    def __init__(self, rules: dict[str, Rule], hooked: bool = False) -> None:
        self.rules = rules
        self.hooked = hooked
        self.own: dict[str, weakref.ref[Tensor]] = {}
        self.plans: dict[str, tuple[int, Plan]] = {}
        self.swapped: list[list[tuple[nn.Module, str, Tensor]]] = []
        self.loading: dict[str, tuple[str, Rule, int, float]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"rules": self.rules, "hooked": self.hooked}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["rules"], state["hooked"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Held({self.rules!r}, hooked={self.hooked})"


def state_of(module: nn.Module) -> Held | None:
    """``module``'s `Held`, or None; a module unpickled from a 0.1.0 file is converted."""
    held = module.__dict__.get(KEY)
    if held is None and "_hollow_patterns" in module.__dict__:
        from ._compat import migrate

        held = migrate(module)
    return held


def parameter(module: nn.Module, name: str) -> Tensor | None:
    """``module``'s parameter at the (possibly dotted) ``name``, or None."""
    if "." not in name:
        return module._parameters.get(name)
    owner, leaf = holder(module, name)
    return None if owner is None else owner._parameters.get(leaf)


def holder(module: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    """The submodule whose ``_parameters`` hold the dotted ``name``, and the name there."""
    owner, _, leaf = name.rpartition(".")
    if not owner:
        return module, leaf
    try:
        return module.get_submodule(owner), leaf
    except AttributeError:
        return None, leaf
