"""Sets a parameter stays in through training: the constraints, their rule, `constrain_`.

A constraint is a set the weight must stay in, restored by projecting onto it, as Keras'
``kernel_constraint``: `NonNeg`, `Bounds`, `MaxNorm`, `UnitNorm`, `MinMaxNorm`, `Symmetric`.
`constrain_` holds a parameter to some of them (and to its held zeros, if it is hollow) with
the `Constrained` rule, which the guard restores at the moments it restores held zeros: after
every optimizer step, on load, on save, on copies, and before every eager forward.

Order of application, the same everywhere (stored weight, compiled graph, copies):

1. the held zeros (so that a norm counts them as 0.0);
2. the elementwise constraints (`NonNeg`, `Bounds`), in the order given;
3. `Symmetric`: ``(W + W^T) * 0.5``;
4. the norm constraint (`MaxNorm`, `UnitNorm`, `MinMaxNorm`): each slice rescaled;
5. the held zeros again, bitwise +0.0 whatever came before.

Each later step keeps what the earlier ones established, or the combination is refused (a
`HollowError` from `constrain_`, naming module, parameter and fix): a `Bounds` box without 0
and held zeros (or a norm, which scales towards 0); `Symmetric` and a held pattern that is not
symmetric; `Symmetric` and a norm (scaling rows breaks symmetry); a norm that can scale up
(`UnitNorm`, `MinMaxNorm` with ``lo > 0``) and `Bounds`; two different norms; elementwise
constraints with an empty intersection.

Elementwise constraints and `Symmetric` are exact: the stored weight is in the set, bitwise,
and projecting it again changes no bit. Norms hold up to rounding: every slice's norm lies
within ``[lo * (1 - s), hi * (1 + s)]``, ``s = (4 + log2(k)) * finfo(dtype).eps`` for slices of
``k`` entries; a slice already within that band is never rescaled, so projecting again (at every
forward) changes no bit either.

The gradient is never changed by a projection (Keras' semantics: the weight is projected, not
the update), except on held zeros, whose gradient is 0.0 as for `torch_hollow.hollow_`.
"""

from __future__ import annotations

__all__ = [
    "Bounds",
    "Constrained",
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Symmetric",
    "UnitNorm",
    "constrain_",
]

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import shards
from ._numpy import numpy_alias
from ._state import parameter
from .constrain import check_hold, hold_
from .errors import Cause, at
from .patterns import Pattern
from .rules import Plan, Rule, Zeros

_BLOCK = 128  # tile of the eager symmetric write: both tiles of a pair stay in cache


class Constraint:
    """Base class: a set the weight must stay in, and the projection onto it.

    ``kind`` orders the application (``"elementwise"``, then ``"symmetric"``, then ``"norm"``).
    """

    kind: ClassVar[str]

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        """``(what is wrong, how to fix it)`` for a weight of ``shape``; None if it fits."""
        return None

    def project_(self, t: Tensor) -> Tensor:
        """Project ``t`` onto the set, in place (any device, traceable); return ``t``."""
        raise NotImplementedError

    def writer(self, stored: Tensor) -> Callable[[], object]:
        """A call that projects ``stored``, as the guard runs it at each step and forward."""
        return functools.partial(self.project_, stored)

    def local_problem(self, shape: Sequence[int], local: Sequence[int]) -> tuple[str, str] | None:
        """Why a shard of size ``local`` of a ``shape`` tensor cannot project alone (or None)."""
        return None

    def spec(self) -> dict[str, Any]:
        """Plain data naming the constraint (saved in state-dict metadata)."""
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}
        return {"type": type(self).__name__, **fields}


# ---- elementwise ----


@dataclass(frozen=True)
class NonNeg(Constraint):
    """Every entry ``>= 0``: negative entries become 0.0 (Keras' ``NonNeg``), exactly.

    ``-0.0`` counts as non-negative and is kept (as ``torch.clamp`` and Keras keep it); NaN
    stays NaN.

    Example:
        >>> import torch
        >>> from torch_hollow.constraints import NonNeg
        >>> NonNeg().project_(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    kind: ClassVar[str] = "elementwise"

    def project_(self, t: Tensor) -> Tensor:
        return t.clamp_(min=0.0)

    @property
    def box(self) -> tuple[float, float]:
        """The interval each entry stays in."""
        return 0.0, math.inf


@dataclass(frozen=True)
class Bounds(Constraint):
    """Every entry within ``[lo, hi]`` (``torch.clamp``), exactly.

    The bounds are the parameter's dtype's values nearest ``lo`` and ``hi`` (a float16 weight
    rounds them to float16, as ``clamp`` does). NaN stays NaN.

    Args:
        lo: the lower bound (``-math.inf`` for none).
        hi: the upper bound (``math.inf`` for none); ``lo <= hi``.

    Example:
        >>> import torch
        >>> from torch_hollow.constraints import Bounds
        >>> Bounds(-1.0, 0.5).project_(torch.tensor([-3.0, 0.25, 2.0]))
        tensor([-1.0000,  0.2500,  0.5000])
    """

    lo: float
    hi: float

    kind: ClassVar[str] = "elementwise"

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if not (_real(self.lo) and _real(self.hi)):
            return (
                f"Bounds({self.lo!r}, {self.hi!r}) needs two real numbers",
                "pass floats, e.g. Bounds(-1.0, 1.0) (math.inf for no bound)",
            )
        if self.lo > self.hi:
            return (
                f"Bounds({self.lo!r}, {self.hi!r}) has lo > hi: no value lies within",
                f"swap them: Bounds({self.hi!r}, {self.lo!r})",
            )
        return None

    def project_(self, t: Tensor) -> Tensor:
        return t.clamp_(self.lo, self.hi)

    @property
    def box(self) -> tuple[float, float]:
        """The interval each entry stays in."""
        return self.lo, self.hi


# ---- symmetric ----


@dataclass(frozen=True)
class Symmetric(Constraint):
    """``W == W^T`` bitwise, for a square weight (or a batch of them: the last two dims).

    Projects with ``(W + W^T) * 0.5``: floating-point addition commutes, so both halves get
    the same bits; a symmetric weight comes back unchanged (barring overflow of ``W + W``).

    Example:
        >>> import torch
        >>> from torch_hollow.constraints import Symmetric
        >>> Symmetric().project_(torch.tensor([[1.0, 2.0], [4.0, 3.0]]))
        tensor([[1., 3.],
                [3., 3.]])
    """

    kind: ClassVar[str] = "symmetric"

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if len(shape) < 2 or shape[-1] != shape[-2]:
            return (
                f"Symmetric needs a square weight, this one has shape {tuple(shape)}",
                "constrain a square (n, n) or (..., n, n) parameter, or drop Symmetric",
            )
        return None

    def project_(self, t: Tensor) -> Tensor:
        return t.copy_((t + t.mT) * 0.5)

    def writer(self, stored: Tensor) -> Callable[[], object]:
        # On a CPU, tile by tile: the whole transpose walks memory with a stride of a row,
        # several times slower; through NumPy where it can (a call costs less than a torch op).
        if stored.device.type != "cpu":
            return super().writer(stored)
        alias = numpy_alias(stored)
        return functools.partial(_symmetrize_tiles, stored if alias is None else alias)

    def local_problem(self, shape: Sequence[int], local: Sequence[int]) -> tuple[str, str] | None:
        return (
            "Symmetric needs W^T, whose entries lie in other ranks' shards; torch-hollow does "
            "not gather them",
            "keep this parameter whole on each rank (replicate it, e.g. leave it out of "
            "fully_shard / parallelize_module), or drop Symmetric",
        )


def _symmetrize_tiles(a: Any) -> None:
    # Bitwise what Symmetric.project_ writes: each entry pair gets (w_ij + w_ji) * 0.5.
    n = a.shape[-1]
    for i in range(0, n, _BLOCK):
        for j in range(i, n, _BLOCK):
            upper = a[..., i : i + _BLOCK, j : j + _BLOCK]
            lower = a[..., j : j + _BLOCK, i : i + _BLOCK]
            mean = upper + lower.swapaxes(-1, -2)
            mean *= 0.5
            upper[...] = mean
            lower[...] = mean.swapaxes(-1, -2)


# ---- norms ----


@dataclass(frozen=True)
class _Norm(Constraint):
    # Each slice's Euclidean norm over ``dim`` within [lo, hi].
    lo: float
    hi: float
    dim: int | tuple[int, ...] = 1

    kind: ClassVar[str] = "norm"

    def _dims(self) -> tuple[int, ...]:
        return (self.dim,) if isinstance(self.dim, int) else tuple(self.dim)

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        dims = self._dims()
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            return (f"{self!r}: dim must be an int or a tuple of ints", "pass e.g. dim=1")
        if any(not -len(shape) <= d < len(shape) for d in dims):
            return (
                f"{self!r} reduces over dim {self.dim}, which a {len(shape)}-D weight lacks",
                f"pick dims in [{-len(shape)}, {len(shape) - 1}] (dim=1 of an nn.Linear weight: "
                "one norm per output unit)",
            )
        if not (_real(self.lo) and _real(self.hi) and 0 <= self.lo <= self.hi < math.inf):
            return (
                f"{self!r} needs 0 <= lo <= hi < inf",
                "pass finite, non-negative norms with lo <= hi",
            )
        return None

    def local_problem(self, shape: Sequence[int], local: Sequence[int]) -> tuple[str, str] | None:
        split = [d % len(shape) for d in self._dims() if local[d] != shape[d]]
        if not split:
            return None  # every slice lies whole in this shard: its norm is local
        return (
            f"{self!r} reduces over dim {split[0]}, which is split across ranks here; "
            "torch-hollow does not all-reduce norms",
            "shard the parameter along another dim (FSDP2 and ColwiseParallel shard an "
            "nn.Linear weight's dim 0, so dim=1 norms stay local), or keep it whole",
        )

    def _scale(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # Per slice: the factor to multiply by (1.0 inside the band) and whether it is outside.
        exact = t.dtype in (torch.float32, torch.float64)
        dims = tuple(sorted([d % t.dim() for d in self._dims()]))  # lists: dynamo traces them
        if dims == (t.dim() - 1,) and t.dtype != torch.float64:
            # along memory: vector_norm's fast path (accurate in float64 only with pairwise sums)
            norms = torch.linalg.vector_norm(
                t, dim=-1, keepdim=True, dtype=None if exact else torch.float32
            )
        else:  # across rows: a strided vector_norm is many times slower on a CPU
            x = t if exact else t.float()
            norms = x.square().sum(dims, keepdim=True).sqrt()
        slack = _slack(t.dtype, math.prod([t.shape[d] for d in dims]))
        outside = (norms > self.hi * (1 + slack)) | (norms < self.lo * (1 - slack))
        outside &= norms > 0  # an all-zero slice has no direction to scale: it stays 0
        return torch.where(outside, norms.clamp(self.lo, self.hi) / norms, 1.0), outside

    def project_(self, t: Tensor) -> Tensor:
        scale, _ = self._scale(t)
        if t.dtype == scale.dtype:
            return t.mul_(scale)
        return t.copy_(t.float() * scale)  # one rounding to the low-precision dtype

    def writer(self, stored: Tensor) -> Callable[[], object]:
        if stored.device.type != "cpu":
            return super().writer(stored)  # no host sync on an accelerator: always multiply
        return functools.partial(self._write_cpu, stored)

    def _write_cpu(self, t: Tensor) -> None:
        scale, outside = self._scale(t)
        if outside.any():  # otherwise a read, no write: the common case at each forward
            if t.dtype == scale.dtype:
                t.mul_(scale)
            else:
                t.copy_(t.float() * scale)


@dataclass(frozen=True, init=False)
class MaxNorm(_Norm):
    """Each slice's norm over ``dim`` is at most ``c`` (Keras' ``MaxNorm(max_value, axis)``).

    Slices above ``c`` are scaled down to norm ``c``, up to rounding; the others are left
    untouched. ``dim`` is the dimension reduced over, as in ``torch.linalg.vector_norm``:
    ``dim=1`` of an ``nn.Linear`` weight ``(out, in)`` bounds each output unit's incoming
    weights, Keras' ``Dense`` default (``axis=0`` of its ``(in, out)`` kernel).

    Args:
        c: the largest norm, ``>= 0``.
        dim: the dimension(s) reduced over.

    Example:
        >>> import torch
        >>> from torch_hollow.constraints import MaxNorm
        >>> MaxNorm(1.0).project_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """

    def __init__(self, c: float = 2.0, dim: int | tuple[int, ...] = 1) -> None:
        super().__init__(0.0, c, dim)

    def __repr__(self) -> str:
        return f"MaxNorm({self.hi!r}, dim={self.dim!r})"

    def spec(self) -> dict[str, Any]:
        return {"type": "MaxNorm", "c": self.hi, "dim": _plain_dim(self.dim)}


@dataclass(frozen=True, init=False)
class UnitNorm(_Norm):
    """Each slice's norm over ``dim`` is 1 (Keras' ``UnitNorm(axis)``), up to rounding.

    An all-zero slice (for instance a row whose entries are all held zeros) has no direction
    and stays 0.

    Args:
        dim: the dimension(s) reduced over.

    Example:
        >>> import torch
        >>> from torch_hollow.constraints import UnitNorm
        >>> UnitNorm().project_(torch.tensor([[3.0, 4.0]]))
        tensor([[0.6000, 0.8000]])
    """

    def __init__(self, dim: int | tuple[int, ...] = 1) -> None:
        super().__init__(1.0, 1.0, dim)

    def __repr__(self) -> str:
        return f"UnitNorm(dim={self.dim!r})"

    def spec(self) -> dict[str, Any]:
        return {"type": "UnitNorm", "dim": _plain_dim(self.dim)}


@dataclass(frozen=True, init=False)
class MinMaxNorm(_Norm):
    """Each slice's norm over ``dim`` within ``[lo, hi]`` (Keras' ``MinMaxNorm``), up to rounding.

    Slices outside are rescaled to the nearest bound; all-zero slices stay 0. Keras' ``rate``
    (a partial step towards the band at each update) is taken only as 1.0: torch-hollow
    restores a constraint at every step, load and forward, where a partial step would be
    applied a varying number of times.

    Args:
        lo: the smallest norm, ``>= 0``.
        hi: the largest norm, ``>= lo``.
        rate: 1.0 (anything else is refused).
        dim: the dimension(s) reduced over.

    Example:
        >>> import torch
        >>> from torch_hollow.constraints import MinMaxNorm
        >>> MinMaxNorm(1.0, 2.0).project_(torch.tensor([[0.3, 0.4], [6.0, 8.0]]))
        tensor([[0.6000, 0.8000],
                [1.2000, 1.6000]])
    """

    rate: float = 1.0

    def __init__(
        self, lo: float = 0.0, hi: float = 1.0, rate: float = 1.0, dim: int | tuple[int, ...] = 1
    ) -> None:
        super().__init__(lo, hi, dim)
        object.__setattr__(self, "rate", rate)

    def __repr__(self) -> str:
        rate = "" if self.rate == 1.0 else f", rate={self.rate!r}"
        return f"MinMaxNorm({self.lo!r}, {self.hi!r}{rate}, dim={self.dim!r})"

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if self.rate != 1.0:
            return (
                f"{self!r}: rate={self.rate!r} is Keras' partial step towards the band, which "
                "torch-hollow would apply at every step, load and forward alike",
                "use rate=1.0 (the projection itself)",
            )
        return super().problem(shape)

    def spec(self) -> dict[str, Any]:
        return {"type": "MinMaxNorm", "lo": self.lo, "hi": self.hi, "dim": _plain_dim(self.dim)}


def _slack(dtype: torch.dtype, count: int) -> float:
    # How far a projected slice's computed norm may sit from its bound: the rounding of the
    # scaled entries, and a sum's error, which grows with the log of its length.
    return (4 + math.log2(max(count, 1))) * torch.finfo(dtype).eps


def _plain_dim(dim: int | tuple[int, ...]) -> int | list[int]:
    return dim if isinstance(dim, int) else list(dim)


def _real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


# ---- the rule ----


class _Nowhere(Pattern):
    # The pattern of a rule that holds no zeros: no entry.
    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        return None

    def views(self, t: Tensor) -> list[Tensor]:
        return []

    def held_mask(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(tuple(shape), dtype=torch.bool, device=device)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Nowhere)

    def __hash__(self) -> int:
        return hash(_Nowhere)

    def __repr__(self) -> str:
        return "Nowhere()"


_NOWHERE = _Nowhere()


@dataclass(frozen=True, repr=False)
class Constrained(Rule):
    """The weight stays in every set of ``constraints``; the entries ``zeros`` holds are +0.0.

    What `constrain_` holds; the order of application and the refused combinations are in
    `torch_hollow.constraints`' docstring. Its gradient is left alone, except on the held
    zeros (0.0 there).

    Args:
        constraints: the constraints (`NonNeg`, `Bounds`, `Symmetric`, a norm).
        zeros: the held zeros (a hollow layer's `Zeros`), or None.

    Example:
        >>> import torch
        >>> from torch_hollow.constraints import Constrained, NonNeg
        >>> from torch_hollow.patterns import Diagonal
        >>> from torch_hollow.rules import Zeros
        >>> rule = Constrained((NonNeg(),), Zeros(Diagonal()))
        >>> w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
        >>> rule.violations(w)  # the diagonal's 1.0 and 4.0, and the -2.0
        (3, 4.0)
        >>> rule.enforce_(w)
        tensor([[0., 0.],
                [3., 0.]])
    """

    constraints: tuple[Constraint, ...]
    zeros: Zeros | None = None

    @property
    def pattern(self) -> Pattern:  # type: ignore[override]
        """The held zeros' entries (none without zeros)."""
        return _NOWHERE if self.zeros is None else self.zeros.pattern

    @property
    def grad_pattern(self) -> Pattern | None:  # type: ignore[override]
        return None if self.zeros is None else self.zeros.pattern

    def __repr__(self) -> str:
        zeros = "" if self.zeros is None else f", {self.zeros!r}"
        return f"Constrained({self.constraints!r}{zeros})"

    def _ordered(self) -> list[Constraint]:
        order = {"elementwise": 0, "symmetric": 1, "norm": 2}
        return sorted(self.constraints, key=lambda c: order[c.kind])

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if not self.constraints:
            return ("got no constraint", "pass at least one, e.g. constrain_(layer, NonNeg())")
        if not all(isinstance(c, Constraint) for c in self.constraints):
            return (
                f"{self.constraints!r} is not a list of constraints",
                "pass constraints from torch_hollow.constraints, e.g. NonNeg()",
            )
        if self.zeros is not None and (bad := self.zeros.problem(shape)) is not None:
            return bad
        for c in self.constraints:
            if (bad := c.problem(shape)) is not None:
                return bad
        return _conflict(self.constraints, self.zeros, shape)

    def plan(self, stored: Tensor) -> Plan:
        ordered = self._ordered()
        calls: list[Callable[[], object]] = []
        if self.zeros is not None and ordered[-1].kind == "norm":
            calls.append(functools.partial(self.zeros.enforce_, stored))  # norms count them 0
        calls += [c.writer(stored) for c in ordered]
        if self.zeros is None:
            return Plan(calls=tuple(calls))
        last = self.zeros.plan(stored)
        return Plan(calls=(*calls, *last.calls), zeros=last.zeros)

    def enforce_(self, t: Tensor) -> Tensor:
        if self.zeros is not None:
            self.zeros.enforce_(t)
        for c in self._ordered():
            c.project_(t)
        if self.zeros is not None:
            self.zeros.enforce_(t)
        return t

    def apply(self, t: Tensor) -> Tensor:
        # The projected values with the identity as gradient (Keras' semantics), then the held
        # zeros written where autograd sees them: their gradient is 0.0.
        out = t.clone()
        with torch.no_grad():
            self.enforce_(out)
        return out if self.zeros is None else self.zeros.pattern.zero_(out)

    def violations(self, t: Tensor) -> tuple[int, float]:
        before = t.detach()
        after = self.enforce_(before.clone())
        changed = (after != before) & ~(after.isnan() & before.isnan())
        count = int(changed.sum())
        if count == 0:
            return 0, 0.0
        change = (after[changed].double() - before[changed].double()).abs()
        return count, change.max().item() if not change.isnan().any() else float("nan")

    def load_warning(self, key: str, count: int, largest: float) -> str:
        return (
            f"torch_hollow: loading {key!r} changed {count} value(s) to satisfy its rule "
            f"({self!r}); largest change: {largest:.6g}. Fix: to keep the checkpoint's values, "
            "remove() the rule before loading."
        )

    def combine(self, other: Rule) -> Rule | None:
        if isinstance(other, Zeros):
            if self.zeros is None:
                return Constrained(self.constraints, other)
            return self if self.zeros == other else None
        if isinstance(other, Constrained):
            if self.zeros is not None and other.zeros is not None and self.zeros != other.zeros:
                return None
            added = tuple(c for c in self.constraints if c not in other.constraints)
            return Constrained(other.constraints + added, other.zeros or self.zeros)
        return None

    def restrict(
        self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]
    ) -> Constrained:
        if tuple(local) == tuple(shape):
            return self  # the whole tensor (replicated)
        for c in self.constraints:
            if (bad := c.local_problem(shape, local)) is not None:
                raise Cause(*bad)
        zeros = None if self.zeros is None else self.zeros.restrict(shape, offset, local)
        return Constrained(self.constraints, zeros)

    def record(self, metadata: dict[str, Any], name: str) -> None:
        if self.zeros is not None:
            self.zeros.record(metadata, name)  # under "hollow", where audit reads held zeros
        metadata.setdefault("constraints", {})[name] = [c.spec() for c in self.constraints]


def _conflict(
    constraints: Sequence[Constraint], zeros: Zeros | None, shape: torch.Size
) -> tuple[str, str] | None:
    # The combinations where a later step of the order could break an earlier one.
    boxes = [c for c in constraints if c.kind == "elementwise"]
    lo = max((c.box[0] for c in boxes), default=-math.inf)  # type: ignore[attr-defined]
    hi = min((c.box[1] for c in boxes), default=math.inf)  # type: ignore[attr-defined]
    norms = list(dict.fromkeys(c for c in constraints if c.kind == "norm"))
    symmetric = any(c.kind == "symmetric" for c in constraints)
    if lo > hi:
        return (
            f"{', '.join(map(repr, boxes))} leave no value: their intervals do not meet",
            "keep one interval, or bounds that overlap",
        )
    if zeros is not None and not lo <= 0 <= hi:
        return (
            f"the held zeros ({zeros.pattern!r}) lie outside [{lo}, {hi}]",
            "use bounds that contain 0.0, or do not hold zeros on this parameter",
        )
    if len(norms) > 1:
        return (
            f"{norms[0]!r} and {norms[1]!r} each rescale the same slices; the second would "
            "undo the first",
            "keep one norm constraint (MinMaxNorm(lo, hi) bounds both sides)",
        )
    if norms and symmetric:
        return (
            f"{norms[0]!r} rescales each slice by its own factor, which breaks Symmetric",
            "drop one of them",
        )
    if norms and boxes and (norms[0].lo > 0 or not lo <= 0 <= hi):  # type: ignore[attr-defined]
        return (
            f"{norms[0]!r} rescales entries after {', '.join(map(repr, boxes))}, and can move "
            "them out of the interval",
            "with Bounds, use MaxNorm (it only scales towards 0) and bounds that contain 0.0; "
            "NonNeg composes with every norm",
        )
    if symmetric and zeros is not None and len(shape) >= 2:
        held = zeros.pattern.held_mask(shape)
        if not torch.equal(held, held.mT):
            return (
                f"Symmetric averages w[i, j] with w[j, i], but the held zeros "
                f"({zeros.pattern!r}) are not a symmetric pattern",
                "hold a symmetric pattern (e.g. Diagonal(0)), or drop Symmetric",
            )
    return None


def constrain_(
    module: nn.Module, name: str | Constraint = "weight", *constraints: Constraint
) -> nn.Module:
    """Keep ``module.<name>`` inside every one of ``constraints`` from now on, in place.

    The stored parameter is projected at once, and again after every ``optimizer.step()``
    (Muon, fused and compiled steps included), on ``load_state_dict`` (with a `HollowWarning`
    giving the count and the largest change), ``reset_parameters``, ``state_dict``, copies and
    dtype moves, and before every eager forward, so the forward computes with a weight in the
    set even after a raw ``nn.init`` or ``.data`` write. The gradient is left as it is (Keras'
    semantics). On a hollow layer the constraints join its held zeros
    (``constrain_(HollowLinear(n, n), NonNeg())`` is SLIM's ``W``), and `torch_hollow.hollow_`
    on a constrained layer adds the zeros; constraining again adds constraints.

    As `torch_hollow.hollow_`: an exact ``nn.Linear``'s weight makes the layer a
    `torch_hollow.HollowLinear`; any other floating parameter is held by hooks. ``name`` may be
    left out: ``constrain_(layer, NonNeg())`` constrains ``layer.weight``.

    Args:
        module: the module whose forward uses the parameter.
        name: the parameter, dotted for a submodule's.
        *constraints: `NonNeg`, `Bounds`, `Symmetric`, `MaxNorm`, `UnitNorm`, `MinMaxNorm`.

    Returns:
        ``module``.

    Raises:
        HollowError: the parameter is missing, not real floating point, the constraints are
            bad (``lo > hi``, ``Symmetric`` on a non-square weight) or conflict with each other
            or with held zeros, or a sharded parameter cannot hold them shard by shard (the
            message names module, parameter, shape and fix).

    Example:
        >>> import torch
        >>> from torch_hollow import HollowLinear
        >>> from torch_hollow.constraints import NonNeg, constrain_
        >>> layer = constrain_(HollowLinear(3, 3, bias=False), "weight", NonNeg())
        >>> opt = torch.optim.AdamW(layer.parameters(), lr=0.5)
        >>> layer(torch.randn(4, 3)).sum().backward()
        >>> opt.step()
        >>> bool((layer.weight >= 0).all()), layer.weight.diagonal().tolist()
        (True, [0.0, 0.0, 0.0])
    """
    if not isinstance(name, str):
        name, constraints = "weight", (name, *constraints)
    path = type(module).__name__
    rule = Constrained(
        tuple(dict.fromkeys(constraints)) if _hashable(constraints) else constraints
    )
    chosen = check_hold(module, name, rule, path)
    param = parameter(module, name)
    with at(path, name, param.shape):  # check_hold found it
        if param.is_complex():
            raise Cause(
                f"has dtype {param.dtype}; the constraints need real numbers",
                "constrain a real floating-point parameter",
            )
        if chosen is not None and shards.is_dtensor(param):
            shards.plan(param.data, chosen)  # refuses a shard that cannot project alone
    return hold_(module, name, rule, path)


def _hashable(items: Sequence[object]) -> bool:
    try:
        hash(tuple(items))
    except TypeError:
        return False
    return True
