"""What files saved by torch-hollow 0.1.0 refer to, and how their modules become current.

``torch.save(model)`` pickles classes and hooks by their qualified names. 0.1.0 kept the hooks
in ``torch_hollow.guard`` and a module's state in five ``_hollow_*`` keys of its ``__dict__``;
`GUARD_NAMES` resolves the old names (``guard.__getattr__`` asks it), and `migrate` turns the old
keys into one `Held` the first time the module is used.
"""

from __future__ import annotations

__all__ = ["GUARD_NAMES", "migrate"]

from collections.abc import Callable

from torch import nn

from . import _hooks
from ._state import KEY, Held
from .rules import Zeros


class _Owned(dict):
    # 0.1.0's weak references to a module's own Parameters; pickled empty.
    def __reduce__(self) -> tuple:
        return _Owned, ()


class _Cache(dict):
    # 0.1.0's per-storage write targets; pickled empty.
    def __reduce__(self) -> tuple:
        return _Cache, ()


def _hook(name: str) -> Callable[[], object]:
    return lambda: getattr(_hooks, name)


GUARD_NAMES: dict[str, Callable[[], object]] = {
    **{name: _hook(name) for name in _hooks.HOOKS},  # the same names, moved to _hooks
    "_Owned": lambda: _Owned,
    "_Cache": lambda: _Cache,
}


def migrate(module: nn.Module) -> Held:
    """Replace 0.1.0's ``_hollow_*`` keys of ``module`` by one `Held`, and return it."""
    from .nn import HollowLinear

    state = module.__dict__
    patterns = state.pop("_hollow_patterns")
    for key in ("_hollow_own", "_hollow_cache", "_hollow_swapped", "_hollow_loading"):
        state.pop(key, None)
    rules = {name: Zeros(pattern) for name, pattern in patterns.items()}
    held = state[KEY] = Held(rules, hooked=not isinstance(module, HollowLinear))
    return held
