"""Entries held at their own values: the `Frozen` rule, and the verbs freeze_ and unfreeze.

``requires_grad`` is per tensor, so freezing *part* of one is usually done by masking its
gradient, which AdamW's decoupled weight decay, momentum and Muon all leak through. Here the
guard restores the frozen entries' values after every step, load, copy and raw write, as it
restores held zeros, and their gradient is 0.0.

The rule keeps one copy of the frozen entries (`Frozen.values`, in the parameter's dtype and on
its device): the bytes of one element per frozen entry, plus the pattern's own (`Rows` and
`Cols` keep runs of indices).
"""

from __future__ import annotations

__all__ = ["Frozen", "freeze_", "unfreeze"]

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import shards
from ._checks import resolve_pattern
from ._numpy import numpy_alias
from ._state import parameter, state_of
from .constrain import check_hold, hold_, remove
from .errors import HollowError, at, located
from .patterns import Pattern
from .rules import Plan, Rule, Zeros

_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class Frozen(Rule):
    """The entries of ``pattern`` hold ``values``, bitwise, and their gradient is 0.0.

    What `freeze_` holds. ``values`` are the held entries in `Pattern.held_values` order; they
    follow the parameter to its dtype and device (converted as the parameter is, so they stay
    equal to its converted entries), and a ``load_state_dict`` that brings other values into the
    held entries makes those the frozen values (`loaded`; with a `HollowWarning`).

    Args:
        pattern: the frozen entries.
        values: their values, one flat tensor.

    Example:
        >>> import torch
        >>> from torch_hollow.freeze import Frozen
        >>> from torch_hollow.patterns import Rows
        >>> rule = Frozen(Rows([0]), torch.tensor([1.0, 2.0]))
        >>> rule.enforce_(torch.zeros(2, 2))
        tensor([[1., 2.],
                [0., 0.]])
    """

    def __init__(self, pattern: Pattern, values: Tensor) -> None:
        self.pattern = pattern
        self.values = values

    @property
    def grad_pattern(self) -> Pattern:  # type: ignore[override]
        return self.pattern

    def __repr__(self) -> str:
        return f"Frozen({self.pattern!r})"

    def _values_for(self, t: Tensor) -> Tensor:
        values = self.values
        if values.dtype == t.dtype and values.device == t.device:
            return values
        values = values.to(device=t.device, dtype=t.dtype)
        if not torch.compiler.is_compiling():  # kept: one copy, where the parameter went
            self.values = values
        return values

    def plan(self, stored: Tensor) -> Plan:
        # The gradient's zeroing is prepared here, eagerly: made first inside a compiled
        # backward, a Mask's keep-mask does not trace on torch 2.8.
        Zeros(self.pattern).plan(stored)
        # On the CPU, one NumPy copy per view, through integer views (a bitwise copy, bfloat16
        # included): the guard runs this at every eager forward and step.
        views = self.pattern.views(stored)
        if views is None or stored.device.type != "cpu":
            return super().plan(stored)
        parts = self._values_for(stored).split([v.numel() for v in views])
        pairs = [
            (numpy_alias(_ints(v)), numpy_alias(_ints(p.view(v.shape))))
            for v, p in zip(views, parts, strict=True)
            if v.numel()
        ]
        if any(a is None for pair in pairs for a in pair):
            return super().plan(stored)
        import numpy

        return Plan(calls=tuple(functools.partial(numpy.copyto, a, b) for a, b in pairs))

    def enforce_(self, t: Tensor) -> Tensor:
        return self.pattern.put_(t, self._values_for(t))

    def apply(self, t: Tensor) -> Tensor:
        return self.pattern.put_(t.clone(), self._values_for(t))

    def violations(self, t: Tensor) -> tuple[int, float]:
        held = self.pattern.held_values(t)
        mine = self.values.to(device=held.device)
        held = held.to(mine.dtype)  # what a load into the parameter would write
        differ = _bits(held) != _bits(mine)
        count = int(differ.sum())
        if count == 0:
            return 0, 0.0
        change = (
            held[differ].to(torch.complex128 if held.is_complex() else torch.float64)
            - mine[differ]
        ).abs()
        return count, change.max().item() if not change.isnan().any() else float("nan")

    def load_warning(self, key: str, count: int, largest: float) -> str:
        return (
            f"torch_hollow: loading {key!r} brought {count} new value(s) into its frozen "
            f"entries ({self.pattern!r}); largest change: {largest:.6g}. The loaded values are "
            "the frozen ones from now on. Fix: to keep the old values, unfreeze() before "
            "loading and freeze_() after, or load a checkpoint that has them."
        )

    def loaded(self, t: Tensor) -> Frozen:
        return Frozen(self.pattern, self.pattern.held_values(t))

    def restrict(
        self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]
    ) -> Frozen:
        # Once per shard's storage: the values placed in a whole-shape tensor, then cut.
        whole = self.pattern.put_(self.values.new_zeros(tuple(shape)), self.values)
        block = whole[tuple(slice(o, o + n) for o, n in zip(offset, local, strict=True))]
        pattern = self.pattern.restrict(shape, offset, local)
        return Frozen(pattern, pattern.held_values(block))

    def record(self, metadata: dict[str, Any], name: str) -> None:
        # Not under "hollow": audit reads that key as held zeros.
        metadata.setdefault("frozen", {})[name] = self.pattern.spec()


def _ints(t: Tensor) -> Tensor:
    return t.view(_INT[t.element_size()])


def _bits(t: Tensor) -> Tensor:
    if t.is_complex():
        t = torch.view_as_real(t)
    return _ints(t.reshape(-1))


def freeze_(module: nn.Module, name: str = "weight", *, pattern: Pattern) -> nn.Module:
    """Hold the entries of ``module.<name>`` that ``pattern`` names at their current values.

    From now on they keep these values bitwise, in the stored parameter and in every forward:
    after every ``optimizer.step()`` (AdamW's decoupled weight decay, momentum, Muon, fused and
    compiled steps included), through ``deepcopy``, pickling, ``torch.save(model)``,
    dtype/device moves and ``torch.compile``; ``nn.init`` and ``reset_parameters`` writes are
    undone by the next forward, step or save. Their gradient is 0.0 (``backward()``;
    also ``torch.autograd.grad`` on an ``nn.Linear`` weight). A ``load_state_dict`` that brings
    other values into them warns (`HollowWarning`: key, count, largest change) and those
    become the frozen values.

    Any floating parameter of 2 or more dims of any module, as for `torch_hollow.hollow_`: an
    exact ``nn.Linear``'s weight switches the layer's class to `HollowLinear`, anything else
    (``nn.Embedding``, convolutions, custom modules) is held by hooks. It keeps one copy of
    the frozen entries (one element each). The rule composes with no other: a parameter
    already held (e.g. hollow) is refused.

    Args:
        module: the module whose forward uses the parameter.
        name: the parameter, dotted for a submodule's.
        pattern: the frozen entries, e.g. ``patterns.Rows(range(old_vocab))``.

    Returns:
        ``module``.

    Raises:
        HollowError: the parameter is missing, not floating, already held, or the pattern does
            not fit (the message names module, parameter, shape and fix).

    Example:
        >>> import torch
        >>> from torch_hollow import freeze_
        >>> from torch_hollow.patterns import Rows
        >>> emb = freeze_(torch.nn.Embedding(5, 3), pattern=Rows(range(3)))  # old tokens
        >>> before = emb.weight[:3].clone()
        >>> opt = torch.optim.AdamW(emb.parameters(), lr=0.1, weight_decay=0.1)
        >>> emb(torch.tensor([0, 4])).sum().backward()
        >>> opt.step()
        >>> torch.equal(emb.weight[:3], before), emb.weight.grad[:3].abs().sum().item()
        (True, 0.0)
    """
    path = type(module).__name__
    with at(path, name):
        pattern = resolve_pattern(0, pattern)
    # Find and check everything with a stand-in rule before reading the values.
    check_hold(module, name, Frozen(pattern, torch.empty(0)), path)
    param = parameter(module, name)
    if param.is_meta:
        raise located(
            path,
            name,
            param.shape,
            "is on the meta device: it has no values to freeze",
            "freeze_ after to_empty() and loading the weights",
        )
    values = pattern.held_values(shards.gather(param.detach()))  # a DTensor's: a collective
    return hold_(module, name, Frozen(pattern, values), path)


def unfreeze(module: nn.Module, name: str | None = None) -> nn.Module:
    """Undo `freeze_`: the entries keep their frozen values and are free to train again.

    Same Parameter objects (an optimizer keeps working) and state-dict keys.

    Args:
        module: a module with a frozen parameter.
        name: which one (default: every frozen parameter of ``module``).

    Returns:
        ``module``.

    Raises:
        HollowError: nothing of ``module`` (or ``name``) is frozen.

    Example:
        >>> import torch
        >>> from torch_hollow import freeze_, is_hollow, unfreeze
        >>> from torch_hollow.patterns import Rows
        >>> emb = freeze_(torch.nn.Embedding(4, 2), pattern=Rows([0]))
        >>> is_hollow(unfreeze(emb))
        False
    """
    held = state_of(module) if isinstance(module, nn.Module) else None
    frozen = [] if held is None else [n for n, r in held.rules.items() if isinstance(r, Frozen)]
    if name is not None:
        frozen = [n for n in frozen if n == name]
    if not frozen:
        raise HollowError(
            f"torch_hollow: {type(module).__name__}{'' if name is None else '.' + name} has "
            "nothing frozen. Fix: call unfreeze() on a module you passed to freeze_()."
        )
    for n in frozen:
        remove(module, n)
    return module
