"""What holds on the entries a pattern names: the rules the guard enforces.

A `Pattern` says *which* entries of a parameter; a `Rule` says what holds there and how to
restore it. The guard, the layer and the hooks ask a rule the questions below and nothing else,
so a new kind of rule (entries frozen at their values, a projection) is one class in a file of
its own:

=====================  ==============================================================
question               asked by
=====================  ==============================================================
`problem`              every verb, before it changes anything: does the rule fit?
`plan`                 the guard, once per storage: the writes that restore the rule
                       (after each optimizer step, on load, before a forward that
                       follows a raw write such as ``nn.init`` or ``.data``)
`enforce_`             a compiled graph (a functional write) and DTensor shards
`apply`                a forward that reads a tensor the rule does not own
                       (``functional_call``, ``torch.func``, tracing): a copy
`grad_pattern`         the forward's gradient hook: entries whose gradient is 0.0
`violations`           ``load_state_dict``: what a checkpoint had that the rule drops
`load_warning`         ``load_state_dict``: how to tell the user about it
`restrict`             DTensor shards: the rule on one rank's local shard
`loaded`               ``load_state_dict``: the rule after a load wrote new values
`record`               ``state_dict``: what to write into the checkpoint's metadata
`combine`              every verb, on a parameter another rule already holds: one rule
                       that holds both, or None (refused)
=====================  ==============================================================

`Zeros` is the first rule: held entries are bitwise +0.0. `torch_hollow.freeze.Frozen` holds
entries at their values.
"""

from __future__ import annotations

__all__ = ["Plan", "Rule", "Zeros"]

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .patterns import Pattern


class Plan(NamedTuple):
    """The writes that restore a rule on one stored tensor; made once per storage.

    ``calls`` run as they are (NumPy writes on the CPU, or any write of the rule's own);
    ``zeros`` are views to set to 0.0, gathered across every module the guard visits into one
    ``torch._foreach_zero_`` (one launch on an accelerator).
    """

    calls: tuple[Callable[[], object], ...] = ()
    zeros: tuple[Tensor, ...] = ()


class Rule:
    """A constraint on some entries of one parameter, enforced by the guard.

    Subclasses give `pattern`, `grad_pattern`, `enforce_`, `apply`, `violations`, `restrict`
    and `record`; `problem` and `plan` have defaults built on those.
    """

    pattern: Pattern
    """The entries the rule acts on."""

    grad_pattern: Pattern | None
    """The entries whose gradient is 0.0 (None: the gradient is left alone)."""

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        """``(what is wrong, how to fix it)`` for a parameter of ``shape``; None if it fits."""
        return self.pattern.problem(shape)

    def plan(self, stored: Tensor) -> Plan:
        """The writes that restore the rule on ``stored`` (a plain tensor's storage)."""
        return Plan(calls=(functools.partial(self.enforce_, stored),))

    def enforce_(self, t: Tensor) -> Tensor:
        """Make ``t`` obey the rule, in place, and return it."""
        raise NotImplementedError

    def apply(self, t: Tensor) -> Tensor:
        """A copy of ``t`` that obeys the rule; differentiable, ``t`` is never written."""
        raise NotImplementedError

    def violations(self, t: Tensor) -> tuple[int, float]:
        """How many entries of ``t`` break the rule, and the largest change enforcing makes."""
        raise NotImplementedError

    def load_warning(self, key: str, count: int, largest: float) -> str:
        """The `HollowWarning` text for a load of ``key`` that broke the rule ``count`` times."""
        return (
            f"torch_hollow: loading {key!r} changed {count} value(s) that break its rule "
            f"({self!r}); largest change: {largest:.6g}. Fix: remove() the rule first to keep "
            "them."
        )

    def loaded(self, t: Tensor) -> Rule:
        """The rule after a load wrote ``t`` (breaking it): ``self``, whose enforcing undoes it."""
        return self

    def combine(self, other: Rule) -> Rule | None:
        """One rule that holds both ``self`` and ``other`` (held first), or None if none can."""
        return None

    def restrict(self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]) -> Rule:
        """The rule on the block of a ``shape`` tensor at ``offset`` of size ``local``."""
        raise NotImplementedError

    def record(self, metadata: dict[str, Any], name: str) -> None:
        """Note the rule for parameter ``name`` in a state dict's module metadata."""
        raise NotImplementedError


@dataclass(frozen=True)
class Zeros(Rule):
    """The entries of ``pattern`` are bitwise +0.0, in the stored weight and in its gradient.

    What `HollowLinear`, `torch_hollow.hollow_` and the pruning verbs hold.

    Args:
        pattern: the held entries.

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import Diagonal
        >>> from torch_hollow.rules import Zeros
        >>> rule = Zeros(Diagonal())
        >>> w = torch.ones(2, 2)
        >>> rule.violations(w)
        (2, 1.0)
        >>> rule.enforce_(w)
        tensor([[0., 1.],
                [1., 0.]])
    """

    pattern: Pattern

    @property
    def grad_pattern(self) -> Pattern:  # type: ignore[override]
        return self.pattern

    def plan(self, stored: Tensor) -> Plan:
        writers = self.pattern.cpu_writers(stored)
        if writers is not None:
            return Plan(calls=tuple(writers))
        views = self.pattern.views(stored)
        if views is None:
            return super().plan(stored)
        return Plan(zeros=tuple(v for v in views if v.numel()))

    def enforce_(self, t: Tensor) -> Tensor:
        return self.pattern.zero_(t)

    def apply(self, t: Tensor) -> Tensor:
        return self.pattern.zero_(t.clone())

    def violations(self, t: Tensor) -> tuple[int, float]:
        return self.pattern.nonzero(t)

    def load_warning(self, key: str, count: int, largest: float) -> str:
        return (
            f"torch_hollow: loading {key!r} set {count} non-zero value(s) on its held entries "
            f"({self.pattern!r}) to 0.0; largest |value| dropped: {largest:.6g}. The parameter "
            "is hollow, so these entries cannot hold values; remove() the constraint first to "
            "keep them."
        )

    def restrict(self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]) -> Zeros:
        return Zeros(self.pattern.restrict(shape, offset, local))

    def record(self, metadata: dict[str, Any], name: str) -> None:
        # The key and format torch-hollow 0.1.0 wrote, which `audit` reads.
        metadata.setdefault("hollow", {})[name] = self.pattern.spec()
