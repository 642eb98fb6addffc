"""Which entries of a weight are held at exactly zero.

A pattern acts on the last two dimensions of a tensor (``(..., out, in)``), so one pattern serves a
plain matrix and a batch of matrices alike. Closed-form patterns (`Diagonal`, `StackedDiagonal`,
`BlockDiagonal`) store no tensor; `Rows` and `Cols` store their indices as runs; `Mask` stores its
mask (see there). Patterns combine with ``|``:
``Diagonal() | Mask(allowed)`` holds the entries either one holds.
"""

from __future__ import annotations

__all__ = [
    "BlockDiagonal",
    "Cols",
    "Diagonal",
    "Mask",
    "Pattern",
    "Rows",
    "StackedDiagonal",
    "Union",
    "from_spec",
]

import functools
import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad

from ._numpy import numpy_alias
from .errors import HollowError


class Pattern:
    """Base class: a fixed set of entries of the last two dimensions held at bitwise 0.0.

    A subclass gives `problem` and either `views` (views covering the held entries, so the
    guard can zero many patterns in one ``torch._foreach_zero_``) or `zero_` and `held_values`.
    """

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        """``(what is wrong, how to fix it)`` for a weight of ``shape``; None if it fits."""
        raise NotImplementedError

    def views(self, t: Tensor) -> list[Tensor] | None:
        """Views of ``t`` that together cover exactly the held entries (None: not expressible)."""
        raise NotImplementedError

    def zero_(self, t: Tensor) -> Tensor:
        """Write 0.0 into the held entries of ``t`` in place and return ``t``."""
        for v in self.views(t) or ():
            v.zero_()
        return t

    def held_mask(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """True on the held entries of a weight of ``shape`` (a new bool tensor)."""
        free = torch.ones(tuple(shape), dtype=torch.bool, device=device)
        return ~self.zero_(free)

    def held_values(self, t: Tensor) -> Tensor:
        """The held entries of ``t`` as one flat tensor (a copy)."""
        views = self.views(t) or []
        return torch.cat([v.detach().reshape(-1) for v in views]) if views else t.new_zeros(0)

    def put_(self, t: Tensor, values: Tensor) -> Tensor:
        """Write ``values`` (flat, in `held_values` order) into the held entries of ``t``."""
        views = self.views(t)
        if views is None:
            return t.masked_scatter_(self.held_mask(t.shape, t.device), values)
        start = 0
        for v in views:
            v.copy_(values[start : start + v.numel()].view(v.shape))
            start += v.numel()
        return t

    def max_abs(self, t: Tensor) -> float:
        """Largest |value| on the held entries of ``t`` (NaN if one is NaN; 0.0 if none)."""
        values = self.held_values(t)
        if values.numel() == 0:
            return 0.0
        return values.abs().amax().item() if not values.isnan().any() else float("nan")

    def count_nonzero(self, t: Tensor) -> int:
        """How many held entries of ``t`` are not 0.0."""
        return int((self.held_values(t) != 0).sum())  # DTensor: no count_nonzero on 2.7, 2.8

    def nonzero(self, t: Tensor) -> tuple[int, float]:
        """`count_nonzero` and, if any, `max_abs` (else 0.0), from one read of the entries."""
        values = self.held_values(t)
        count = int((values != 0).sum())
        if count == 0:
            return 0, 0.0
        return count, values.abs().amax().item() if not values.isnan().any() else float("nan")

    def zero_transposed_grad_(self, grad_t: Tensor | None) -> None:
        """Tensor hook for the gradient of ``weight.t()``: zero its held entries in place.

        Autograd passes None (an undefined gradient) when an output got no gradient; there is
        nothing to zero then.
        """
        if grad_t is not None:
            self.zero_(grad_t.mT)

    def tensors(self) -> list[Tensor]:
        """The tensors the pattern keeps, for memory accounting (closed forms keep none)."""
        return []

    def cpu_writers(self, t: Tensor) -> list[Callable[[], object]] | None:
        """Callables that each write 0.0 into held entries of ``t`` through NumPy, together all.

        For a weight the guard re-zeroes at every eager forward and step: on the CPU a NumPy
        call costs a fraction of a torch op. None when ``t`` is not a plain CPU tensor of a
        dtype NumPy has, or the pattern cannot say it this way.
        """
        views = self.views(t)
        if views is None:
            return None
        arrays = [numpy_alias(v) for v in views if v.numel()]
        if any(a is None for a in arrays):
            return None
        return [functools.partial(a.fill, 0) for a in arrays]

    def restrict(
        self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]
    ) -> Pattern:
        """The pattern on the block of a ``shape`` tensor at ``offset`` of size ``local``.

        What one rank's shard of a sharded parameter holds (`torch_hollow.shards`).
        """
        held = self.held_mask(shape)
        block = held[tuple(slice(o, o + n) for o, n in zip(offset, local, strict=True))]
        return Mask(~block)

    def spec(self) -> dict[str, Any]:
        """Plain data describing the pattern (saved in state-dict metadata); see `from_spec`."""
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}
        return {"type": type(self).__name__, **fields}

    def __or__(self, other: Pattern) -> Pattern:
        if not isinstance(other, Pattern):
            return NotImplemented
        return Union((*_parts(self), *_parts(other)))


def _parts(p: Pattern) -> tuple[Pattern, ...]:
    return p.parts if isinstance(p, Union) else (p,)


def _need_matrix(shape: torch.Size) -> tuple[str, str] | None:
    if len(shape) < 2:
        return (
            f"a pattern needs a matrix, this is {len(shape)}-D",
            "pick a 2-D (or batched (..., out, in)) parameter",
        )
    return None


@dataclass(frozen=True)
class Diagonal(Pattern):
    """The entries ``w[..., i, i + offset]``: those ``torch.diagonal(w, offset, -2, -1)`` views.

    ``offset > 0`` is above the main diagonal, ``offset < 0`` below. A rectangular weight uses the
    entries that exist (``min`` of its two sizes for offset 0).

    Args:
        offset: which diagonal; it must meet the matrix (``-out < offset < in``).

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import Diagonal
        >>> Diagonal(1).zero_(torch.ones(3, 3))
        tensor([[1., 0., 1.],
                [1., 1., 0.],
                [1., 1., 1.]])
    """

    offset: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise HollowError(
                f"torch_hollow: Diagonal offset must be an int, got "
                f"{self.offset!r}. Fix: pass e.g. Diagonal(1)."
            )

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if (bad := _need_matrix(shape)) is not None:
            return bad
        rows, cols = shape[-2], shape[-1]
        if not -rows < self.offset < cols:
            return (
                f"offset {self.offset} lies outside the {rows}x{cols} matrix",
                f"use an offset with {-rows} < offset < {cols}",
            )
        return None

    def views(self, t: Tensor) -> list[Tensor]:
        return [t.diagonal(self.offset, -2, -1)]

    def restrict(
        self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]
    ) -> Diagonal:
        # Entry (i, i + k) of the whole is (i - r0, i + k - c0) of the block at (r0, c0).
        return Diagonal(self.offset + offset[-2] - offset[-1])

    def zero_transposed_grad_(self, grad_t: Tensor | None) -> None:
        if grad_t is not None:  # None: an undefined gradient
            grad_t.diagonal(-self.offset, -2, -1).zero_()  # the hot path of every eager backward


@dataclass(frozen=True)
class StackedDiagonal(Pattern):
    """The diagonal of each of ``blocks`` square blocks stacked along the rows.

    The layout of recurrent and attention weights: an LSTM's ``weight_hh_l0`` is four ``h x h``
    gate blocks (i, f, g, o) stacked into ``(4h, h)``, a GRU's three, and
    ``nn.MultiheadAttention.in_proj_weight`` stacks q, k, v into ``(3E, E)``. ``blocks=1`` is
    `Diagonal`.

    Args:
        blocks: how many row blocks; the rows must split evenly into them.
        offset: which diagonal inside each block.

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import StackedDiagonal
        >>> StackedDiagonal(2).zero_(torch.ones(4, 2))
        tensor([[0., 1.],
                [1., 0.],
                [0., 1.],
                [1., 0.]])
    """

    blocks: int
    offset: int = 0

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if (bad := _need_matrix(shape)) is not None:
            return bad
        rows, cols = shape[-2], shape[-1]
        if self.blocks < 1 or rows % self.blocks:
            return (
                f"{rows} rows do not split into {self.blocks} stacked blocks",
                "pass the number of stacked blocks (e.g. 4 for an LSTM's gates)",
            )
        return Diagonal(self.offset).problem(torch.Size((rows // self.blocks, cols)))

    def views(self, t: Tensor) -> list[Tensor]:
        return [t.unflatten(-2, (self.blocks, -1)).diagonal(self.offset, -2, -1)]


@dataclass(frozen=True)
class BlockDiagonal(Pattern):
    """The diagonal blocks: block g covers rows ``[r_g, r_g+1)`` x columns ``[c_g, c_g+1)``.

    ``rows`` and ``cols`` are a uniform block size or a sequence of sizes; ``cols`` defaults to
    ``rows``. ``BlockDiagonal(rows=m, cols=1)`` is NOTEARS-MLP's first layer (hidden units of
    output j must not read input j); ``BlockDiagonal(q)`` zeroes the q x q self-coupling blocks of
    a Potts model.

    Args:
        rows: row block size, or the sizes of the row blocks.
        cols: column block size, or sizes; defaults to ``rows``.

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import BlockDiagonal
        >>> BlockDiagonal(rows=2, cols=1).zero_(torch.ones(4, 2))
        tensor([[0., 1.],
                [0., 1.],
                [1., 0.],
                [1., 0.]])
    """

    rows: int | tuple[int, ...]
    cols: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for field in ("rows", "cols"):
            value = getattr(self, field)
            if isinstance(value, Sequence) and not isinstance(value, str):
                object.__setattr__(self, field, tuple(int(v) for v in value))

    def _sizes(self, shape: torch.Size) -> tuple[list[int], list[int]] | tuple[str, str]:
        rows, cols = shape[-2], shape[-1]
        spec_r, spec_c = self.rows, self.rows if self.cols is None else self.cols
        if isinstance(spec_r, int) and isinstance(spec_c, int):
            if spec_r < 1 or spec_c < 1 or rows % spec_r or cols % spec_c:
                return (
                    f"blocks of {spec_r}x{spec_c} do not tile the {rows}x{cols} matrix",
                    "pick block sizes that divide the rows and columns",
                )
            spec_r = (spec_r,) * (rows // spec_r)
            spec_c = (spec_c,) * (cols // spec_c)
        elif isinstance(spec_r, int):
            spec_r = (spec_r,) * len(spec_c)
        elif isinstance(spec_c, int):
            spec_c = (spec_c,) * len(spec_r)
        if (
            len(spec_r) != len(spec_c)
            or sum(spec_r) != rows
            or sum(spec_c) != cols
            or min(spec_r + spec_c) < 1
        ):
            return (
                f"row blocks {list(spec_r)} x column blocks {list(spec_c)} do not tile the "
                f"{rows}x{cols} matrix (need equal counts, sums {rows} and {cols})",
                "give as many row blocks as column blocks, summing to the weight's sizes",
            )
        return list(spec_r), list(spec_c)

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if (bad := _need_matrix(shape)) is not None:
            return bad
        sizes = self._sizes(shape)
        return sizes if isinstance(sizes[0], str) else None  # type: ignore[return-value]

    def views(self, t: Tensor) -> list[Tensor]:
        rows, cols = self._sizes(t.shape)  # type: ignore[misc]
        if len(set(rows)) == 1 and len(set(cols)) == 1:  # uniform: one strided view
            grid = t.unflatten(-2, (len(rows), rows[0])).unflatten(-1, (len(cols), cols[0]))
            return [grid.diagonal(0, -4, -2)]
        out, r0, c0 = [], 0, 0
        for r, c in zip(rows, cols, strict=True):
            out.append(t[..., r0 : r0 + r, c0 : c0 + c])
            r0, c0 = r0 + r, c0 + c
        return out


_RUN_VIEWS = 64  # up to this many runs, one view each; beyond, one indexed op


@dataclass(frozen=True, repr=False)
class Rows(Pattern):
    """Whole rows ``w[..., i, :]`` for ``i`` in ``indices``: an embedding's token rows.

    The indices are stored as runs of consecutive rows (``range`` objects), not as a mask:
    ``Rows(range(28800))`` keeps one ``range`` whatever the weight's size. Up to 64 runs are
    written through one view each; more through one ``index_fill_`` / ``index_copy_``.

    Args:
        indices: row indices (any iterable of ints, a ``range``, or a 1-D integer tensor);
            order and repeats do not matter.

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import Rows
        >>> Rows([0, 2]).zero_(torch.ones(3, 2))
        tensor([[0., 0.],
                [1., 1.],
                [0., 0.]])
        >>> Rows(range(1000))
        Rows(range(0, 1000))
    """

    indices: tuple[range, ...]

    _dim = -2

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _runs(self.indices, type(self).__name__))

    def __repr__(self) -> str:
        runs = self.indices
        if len(runs) == 1 and len(runs[0]) > 8:
            return f"{type(self).__name__}({runs[0]!r})"
        shown = [i for r in runs[:3] for i in r[:8]]
        more = ", ..." if sum(map(len, runs)) > len(shown) else ""
        return f"{type(self).__name__}([{', '.join(map(str, shown))}{more}])"

    @property
    def count(self) -> int:
        """How many rows (columns) are held."""
        return sum(map(len, self.indices))

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if (bad := _need_matrix(shape)) is not None:
            return bad
        what = "rows" if self._dim == -2 else "columns"
        size = shape[self._dim]
        if not self.indices:
            return (f"{self!r} holds no {what}", f"name at least one of the {size} {what}")
        last = self.indices[-1].stop - 1
        if last >= size:
            return (
                f"{what[:-1]} {last} is out of range for a weight with {size} {what}",
                f"pass indices below {size}",
            )
        return None

    def _index(self, device: torch.device) -> Tensor:
        flat = [i for r in self.indices for i in r]
        return torch.tensor(flat, dtype=torch.long, device=device)

    def views(self, t: Tensor) -> list[Tensor] | None:
        if len(self.indices) > _RUN_VIEWS:
            return None
        return [t.narrow(self._dim, r.start, len(r)) for r in self.indices]

    def zero_(self, t: Tensor) -> Tensor:
        if len(self.indices) <= _RUN_VIEWS:
            return super().zero_(t)
        return t.index_fill_(t.dim() + self._dim, self._index(t.device), 0)

    def held_values(self, t: Tensor) -> Tensor:
        if len(self.indices) <= _RUN_VIEWS:
            return super().held_values(t)
        return t.detach().index_select(t.dim() + self._dim, self._index(t.device)).reshape(-1)

    def put_(self, t: Tensor, values: Tensor) -> Tensor:
        if len(self.indices) <= _RUN_VIEWS:
            return super().put_(t, values)
        dim = t.dim() + self._dim
        shape = list(t.shape)
        shape[dim] = self.count
        return t.index_copy_(dim, self._index(t.device), values.view(shape))

    def restrict(
        self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]
    ) -> Pattern:
        start, size = offset[self._dim], local[self._dim]
        runs = []
        for r in self.indices:
            lo, hi = max(r.start, start), min(r.stop, start + size)
            if lo < hi:
                runs.append(range(lo - start, hi - start))
        return type(self)(tuple(runs))

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "runs": [[r.start, r.stop] for r in self.indices]}


@dataclass(frozen=True, repr=False)
class Cols(Rows):
    """Whole columns ``w[..., :, j]`` for ``j`` in ``indices``: an input's weights.

    As `Rows`, on the last dimension.

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import Cols
        >>> Cols([1]).zero_(torch.ones(2, 3))
        tensor([[1., 0., 1.],
                [1., 0., 1.]])
    """

    _dim = -1


def _runs(indices: Any, kind: str) -> tuple[range, ...]:
    # Sorted, merged runs of consecutive non-negative indices.
    if isinstance(indices, tuple) and all(isinstance(r, range) and r.step == 1 for r in indices):
        flat: Any = [i for r in indices for i in r] if len(indices) != 1 else indices[0]
    else:
        flat = indices
    if isinstance(flat, range) and flat.step == 1 and flat.start >= 0:
        return (flat,) if len(flat) else ()
    if isinstance(flat, Tensor):
        if flat.dim() > 1 or flat.is_floating_point() or flat.is_complex():
            raise HollowError(
                f"torch_hollow: {kind} takes a 1-D integer tensor, got {flat.dtype} of "
                f"shape {tuple(flat.shape)}. Fix: pass e.g. torch.arange(10)."
            )
        flat = flat.tolist()
    try:
        values = sorted({int(operator.index(i)) for i in flat})
    except TypeError:
        raise HollowError(
            f"torch_hollow: {kind} takes integer indices, got {indices!r:.80}. Fix: pass "
            "e.g. range(100) or [0, 5, 7]."
        ) from None
    if values and values[0] < 0:
        raise HollowError(
            f"torch_hollow: {kind} got a negative index ({values[0]}). Fix: pass indices "
            "counted from 0 (e.g. size - 1 instead of -1)."
        )
    runs: list[range] = []
    for i in values:
        if runs and runs[-1].stop == i:
            runs[-1] = range(runs[-1].start, i + 1)
        else:
            runs.append(range(i, i + 1))
    return tuple(runs)


class Mask(Pattern):
    """An arbitrary fixed mask: ``allowed`` is True where the weight is free, False where held.

    The convention of zuko's adjacency and ``prune``'s mask. It applies to the last dimensions
    of a weight and broadcasts over batch dimensions. The mask is stored as packed bits, 1 bit
    per entry (`bits`). What zeroes the held entries depends on the size:

    - below 2**20 entries, fast paths made once per device it is used on: when at most 1 entry
      in 16 is held, the list of their indices (8 bytes per held entry); otherwise a bool mask
      and an integer keep-mask of the weight's element width, one bitwise AND per pass;
    - from 2**20 entries on (a language model's weights), nothing but the packed bits, on each
      device it is used on: a pass expands them chunk by chunk into keep-masks (a 256-row
      table, shared by every mask) and ANDs them into the weight, with at most 64 MiB or 1/8
      of the weight, whichever is smaller, allocated at a time.

    Either way held entries become bitwise +0.0, over NaN and -0.0 too.

    Args:
        allowed: a boolean tensor ``(out, in)`` or ``(..., out, in)``.

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import Mask
        >>> Mask(torch.tensor([[True, False], [True, True]])).zero_(torch.ones(2, 2))
        tensor([[1., 0.],
                [1., 1.]])
    """

    def __init__(self, allowed: Tensor) -> None:
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool or allowed.dim() < 2:
            raise HollowError(
                "torch_hollow: Mask takes a bool tensor of at least 2 dims, got "
                f"{allowed!r:.60}. Fix: pass allowed = (mask != 0), True = free."
            )
        held = (~allowed).detach().cpu().contiguous()
        self._setup(held.shape, _pack(held), int(held.sum()))
        if not self._large():
            self._on[("held", held.device)] = held

    def _setup(self, shape: Sequence[int], bits: Tensor, count: int) -> None:
        self.shape = torch.Size(shape)
        self.bits = bits  # the held entries, packed 8 to a byte, first entry in the lowest bit
        self.count = count
        self._on: dict[Any, Tensor] = {}

    @property
    def held(self) -> Tensor:
        """True on the held entries (the bool mask; unpacked anew for a large mask)."""
        return self._on_device("held", self.bits.device)

    @property
    def allowed(self) -> Tensor:
        """True where the weight is free."""
        return ~self.held

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if (bad := _need_matrix(shape)) is not None:
            return bad
        try:
            if torch.broadcast_shapes(self.shape, shape) != shape:
                raise RuntimeError
        except RuntimeError:
            return (
                f"the mask has shape {tuple(self.shape)}, which does not fit",
                f"pass a mask of shape {tuple(shape[-2:])} (or one that broadcasts to "
                f"{tuple(shape)})",
            )
        return None

    def views(self, t: Tensor) -> None:
        return None

    def held_mask(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        return _unpack(self.bits, 0, self.shape.numel()).view(self.shape).to(device).expand(shape)

    def zero_(self, t: Tensor) -> Tensor:
        # Not masked_fill_, which costs several ns per entry on a CPU (10x a multiply): when
        # few entries are held, a list of their flat indices (index_fill_, cost per held
        # entry); otherwise an integer mask of the weight's element width, all ones where free
        # and zeros where held, and one bitwise AND, which writes +0.0 even over inf and NaN.
        if t.requires_grad or _differentiating():  # autograd records it: a differentiable write
            return t.masked_fill_(self._on_device("held", t.device), 0)
        if self._large():
            return self._zero_large_(t)
        if self._indexed(t):
            t.view(-1, self.shape.numel()).index_fill_(1, self._on_device("index", t.device), 0)
            return t
        bits = _bits(t)
        if bits is None:  # bool, integer and 16-byte complex tensors
            return t.masked_fill_(self._on_device("held", t.device), 0)
        t.view(bits).bitwise_and_(self._on_device(bits, t.device))
        return t

    def zero_transposed_grad_(self, grad_t: Tensor | None) -> None:
        # The hook on every eager backward: one op on the gradient as it comes (each torch op
        # inside the backward costs several microseconds here), against the keep-mask's
        # transpose.
        if grad_t is None:
            return
        bits = _bits(grad_t)
        if (
            bits is None
            or self._large()
            or self._sparse()
            or grad_t.requires_grad
            or _differentiating()
        ):
            self.zero_(grad_t.mT)
            return
        grad_t.view(bits).bitwise_and_(self._on_device(("transposed", bits), grad_t.device))

    def cpu_writers(self, t: Tensor) -> list[Callable[[], object]] | None:
        if self._large():
            ints = _bits(t)
            rows = None if ints is None or not self._whole_rows(t) else t.view(ints)
            alias = None if rows is None else numpy_alias(rows.view(-1, self.shape.numel()))
            if alias is None:
                return None
            return [functools.partial(_and_packed_numpy, alias, self._chunk(t))]
        if self._indexed(t):
            flat = numpy_alias(t.view(-1, self.shape.numel()))
            if flat is None:
                return None
            index = self._on_device("index", t.device).numpy()
            return [functools.partial(flat.__setitem__, (slice(None), index), 0)]
        bits = _bits(t)
        ints = None if bits is None else numpy_alias(t.view(bits))
        if ints is None:
            return None
        import numpy  # numpy_alias() found it

        keep = self._on_device(bits, t.device).numpy()
        return [functools.partial(numpy.bitwise_and, ints, keep, out=ints)]

    def _large(self) -> bool:
        return self.shape.numel() >= LARGE

    def _whole_rows(self, t: Tensor) -> bool:
        # ``t`` flattens to rows of whole masks, in the mask's own order.
        k = len(self.shape)
        return t.is_contiguous() and t.shape[-k:] == self.shape

    def _indexed(self, t: Tensor) -> bool:
        # The index-list path: few entries held, and ``t`` flattens to rows of whole masks.
        return self._sparse() and self._whole_rows(t)

    def _sparse(self) -> bool:
        # Index lists when at most 1 entry in 16 is held: 8 bytes per held entry, half a byte
        # per weight entry at most; faster than a full pass below about 1 in 16 (measured).
        return self.count * 16 <= self.shape.numel()

    def _chunk(self, t: Tensor) -> tuple[Tensor, int]:
        # The packed bits on t's device, and how many bytes of them one step expands: per
        # byte, the keep-masks of its 8 entries and its index as an int64 (the table lookup),
        # within the budget.
        per_byte = 8 * t.element_size() + 8
        return self._on_device("bits", t.device), max(1, (self._budget(t) - _SLACK) // per_byte)

    def _budget(self, t: Tensor) -> int:
        # The bytes a pass may allocate at a time: min(64 MiB, 1/8 of the weight).
        return min(_CHUNK_BYTES, self.shape.numel() * t.element_size() // 8)

    def _zero_large_(self, t: Tensor) -> Tensor:
        ints = _bits(t)
        if ints is None or not self._whole_rows(t):
            return self._zero_by_rows_(t)
        bits, step = self._chunk(t)
        alias = numpy_alias(t.view(ints).view(-1, self.shape.numel()))
        if alias is not None:
            _and_packed_numpy(alias, (bits, step))
            return t
        table = _keep_table(ints, t.device)
        for row in t.view(ints).view(-1, self.shape.numel()):
            whole = self.shape.numel() // 8
            body = row[: whole * 8].view(-1, 8)
            for start in range(0, whole, step):
                stop = min(whole, start + step)
                body[start:stop].bitwise_and_(table.index_select(0, bits[start:stop].long()))
            if whole * 8 < row.numel():
                row[whole * 8 :].bitwise_and_(table[bits[whole].long(), : row.numel() - whole * 8])
        return t

    def _zero_by_rows_(self, t: Tensor) -> Tensor:
        # Any other tensor (strided, a gradient's transpose, complex or integer): bool masks of
        # a block of the mask's first dimension at a time, within the same budget.
        first = t.dim() - len(self.shape)
        per_row = self.shape[1:].numel()
        rows = max(1, self._budget(t) // per_row)
        bits = self._on_device("bits", t.device)
        for start in range(0, self.shape[0], rows):
            stop = min(self.shape[0], start + rows)
            held = _unpack(bits, start * per_row, stop * per_row)
            t.narrow(first, start, stop - start).masked_fill_(
                held.view(stop - start, *self.shape[1:]), 0
            )
        return t

    def _on_device(self, kind: Any, device: torch.device) -> Tensor:
        # The packed bits ("bits"), the bool mask ("held"), the index list ("index") or the
        # keep-mask of an integer dtype, made once per device; for a large mask only the bits
        # are kept, the rest is made anew for each call (held_mask, a differentiable write).
        key = (kind, torch.device(device))
        found = self._on.get(key)
        if found is not None:
            return found
        if kind == "bits":
            if key[1] == self.bits.device:
                return self.bits  # no second copy where the bits live
            found = self.bits.to(device)
        elif kind == "held":
            found = self.held_mask(self.shape, device)
        elif kind == "index":
            found = self.held.reshape(-1).nonzero().squeeze(1).to(device)
        elif isinstance(kind, tuple):  # ("transposed", dtype): a view of the keep-mask
            found = self._on_device(kind[1], device).mT
        else:
            found = torch.where(self.held, 0, -1).to(kind).to(device)  # -1: all bits set
        if (not self._large() or kind == "bits") and not torch.compiler.is_compiling():
            self._on[key] = found  # (a cache written inside a traced backward breaks the graph)
        return found

    def held_values(self, t: Tensor) -> Tensor:
        return t.detach()[self._on_device("held", t.device).expand(t.shape)]

    def restrict(
        self, shape: Sequence[int], offset: Sequence[int], local: Sequence[int]
    ) -> Pattern:
        # Only the block's bits are unpacked: a shard never expands the whole mask.
        k = len(self.shape)
        lead = len(shape) - k
        rows = slice(offset[lead], offset[lead] + local[lead])
        per_row = self.shape[1:].numel()
        block = _unpack(self.bits, rows.start * per_row, rows.stop * per_row)
        block = block.view(local[lead], *self.shape[1:]) if k > 1 else block
        cut = zip(offset[lead + 1 :], local[lead + 1 :], strict=True)
        block = block[(slice(None), *(slice(o, o + n) for o, n in cut))]
        return Mask(~block)  # broadcast over the batch dimensions, as the whole mask is

    def tensors(self) -> list[Tensor]:
        return [self.bits, *self._on.values()]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mask) and (
            other is self or (other.shape == self.shape and torch.equal(other.bits, self.bits))
        )

    def __hash__(self) -> int:
        return hash(("Mask", tuple(self.shape), self.count))

    def __repr__(self) -> str:
        return f"Mask(shape={tuple(self.shape)}, held={self.count})"

    def spec(self) -> dict[str, Any]:
        return {"type": "Mask", "shape": list(self.shape), "bits": self.bits}

    def __getstate__(self) -> dict:
        return {"shape": tuple(self.shape), "bits": self.bits, "count": self.count}

    def __setstate__(self, state: dict) -> None:
        if "held" in state:  # pickled by torch-hollow 0.1.0: the bool mask itself
            self.__init__(~state["held"])  # type: ignore[misc]
        else:
            self._setup(state["shape"], state["bits"], state["count"])


LARGE = 1 << 20
"""Entries from which a `Mask` keeps nothing but its packed bits."""

_CHUNK_BYTES = 64 << 20
_SLACK = 16 << 10  # array headers, the threads' work items, the last byte's entries
_SHIFTS = torch.arange(8, dtype=torch.uint8)


def _pack(held: Tensor) -> Tensor:
    """``held`` (bool, CPU) packed 8 entries to a byte, the first in the lowest bit."""
    flat = held.reshape(-1)
    try:
        import numpy

        return torch.from_numpy(numpy.packbits(flat.numpy(), bitorder="little"))
    except ImportError:
        padded = torch.zeros((flat.numel() + 7) // 8 * 8, dtype=torch.uint8)
        padded[: flat.numel()] = flat
        return (padded.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.uint8)


def _unpack(bits: Tensor, start: int, stop: int) -> Tensor:
    """Entries ``start:stop`` of packed ``bits``, as a new bool tensor on their device."""
    chunk = bits[start // 8 : (stop + 7) // 8]
    shifts = _SHIFTS.to(bits.device)
    expanded = ((chunk.unsqueeze(1) >> shifts) & 1).view(-1).bool()
    return expanded[start % 8 : start % 8 + stop - start]


_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _keep_table(ints: torch.dtype, device: torch.device) -> Tensor:
    """Row b: the keep-masks of the 8 entries packed in byte b (0 where held, all ones free).

    One table per integer width and device, shared by every mask (4 KiB at most).
    """
    key = (ints, torch.device(device))
    table = _TABLES.get(key)
    if table is None:
        held = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool()
        table = _TABLES[key] = torch.where(held, 0, -1).to(ints).to(device)
    return table


def _and_packed_numpy(alias: Any, chunk: tuple[Tensor, int]) -> None:
    # The CPU pass of a large mask: rows of whole masks (a NumPy alias of the weight's integer
    # view), one table lookup and one AND per chunk of packed bytes. NumPy runs both without
    # the GIL, so the bytes are split between torch's intra-op threads, each within its share
    # of the budget.
    bits, step = chunk
    table = _keep_table(torch.from_numpy(alias[:0]).dtype, torch.device("cpu")).numpy()
    packed = bits.numpy()
    whole = alias.shape[1] // 8
    parts = max(1, min(torch.get_num_threads(), _MAX_THREADS, whole // _MIN_PART))
    bounds = [whole * k // parts for k in range(parts + 1)]
    ranges = list(itertools.pairwise(bounds))
    for row in alias:
        body = row[: whole * 8].reshape(-1, 8)
        if parts == 1:
            _and_range(body, packed, table, 0, whole, step)
        else:
            work = [(body, packed, table, lo, hi, max(1, step // parts)) for lo, hi in ranges]
            list(_pool().map(lambda args: _and_range(*args), work))
        if whole * 8 < row.size:
            tail = row[whole * 8 :]
            tail &= table[packed[whole], : tail.size]


def _and_range(body: Any, packed: Any, table: Any, lo: int, hi: int, step: int) -> None:
    import numpy

    buffer = numpy.empty((min(step, hi - lo), 8), dtype=body.dtype)
    for start in range(lo, hi, step):
        stop = min(hi, start + step)
        out = buffer[: stop - start]  # mode="clip": no second buffer to check indices
        keep = numpy.take(table, packed[start:stop], axis=0, out=out, mode="clip")
        numpy.bitwise_and(body[start:stop], keep, out=body[start:stop])


_MAX_THREADS = 8
_MIN_PART = 1 << 16  # packed bytes (half a million entries): below, one thread
_POOL: list[Any] = []


def _pool() -> Any:
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(_MAX_THREADS, thread_name_prefix="torch_hollow"))
    return _POOL[0]


# The signed integer dtype of each floating element width, for Mask's bitwise AND.
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> torch.dtype | None:
    """The integer dtype ``t`` can be viewed as for a bitwise AND (None: not floating point)."""
    return _BITS.get(t.element_size()) if t.is_floating_point() else None


# Not None inside a torch.func transform, whose tensors are wrappers.
_transformed = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)


def _differentiating() -> bool:
    # Forward-mode AD (a dual_level is open: tensors may carry tangents that an integer view
    # would drop) or a torch.func transform. Dynamo cannot ask the latter; it traces neither.
    if forward_ad._current_level >= 0:
        return True
    return not torch.compiler.is_compiling() and _transformed() is not None


@dataclass(frozen=True)
class Union(Pattern):
    """The entries held by any of ``parts`` (what ``a | b`` builds).

    Example:
        >>> import torch
        >>> from torch_hollow.patterns import Diagonal
        >>> (Diagonal(1) | Diagonal(-1)).zero_(torch.ones(3, 3))
        tensor([[1., 0., 1.],
                [0., 1., 0.],
                [1., 0., 1.]])
    """

    parts: tuple[Pattern, ...]

    def spec(self) -> dict[str, Any]:
        return {"type": "Union", "parts": [p.spec() for p in self.parts]}

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        return next((p for p in (q.problem(shape) for q in self.parts) if p is not None), None)

    def views(self, t: Tensor) -> list[Tensor] | None:
        views = [p.views(t) for p in self.parts]
        return None if any(v is None for v in views) else [x for v in views for x in v]

    def zero_(self, t: Tensor) -> Tensor:
        for p in self.parts:
            p.zero_(t)
        return t

    def cpu_writers(self, t: Tensor) -> list[Callable[[], object]] | None:
        writers = [p.cpu_writers(t) for p in self.parts]
        return None if any(w is None for w in writers) else [x for w in writers for x in w]

    def held_values(self, t: Tensor) -> Tensor:
        return t.detach()[self.held_mask(t.shape, t.device)]  # once, however many parts hold it

    def put_(self, t: Tensor, values: Tensor) -> Tensor:
        return t.masked_scatter_(self.held_mask(t.shape, t.device), values)  # as held_values

    def tensors(self) -> list[Tensor]:
        return [t for p in self.parts for t in p.tensors()]


def from_spec(spec: dict[str, Any]) -> Pattern:
    """Rebuild a pattern from `Pattern.spec` data (as found in a checkpoint's metadata).

    Example:
        >>> from torch_hollow.patterns import BlockDiagonal, from_spec
        >>> from_spec(BlockDiagonal((1, 2), 1).spec())
        BlockDiagonal(rows=(1, 2), cols=1)
    """
    kind = spec.get("type") if isinstance(spec, dict) else None
    try:
        if kind == "Diagonal":
            return Diagonal(int(spec["offset"]))
        if kind == "StackedDiagonal":
            return StackedDiagonal(int(spec["blocks"]), int(spec["offset"]))
        if kind == "BlockDiagonal":
            return BlockDiagonal(spec["rows"], spec["cols"])
        if kind == "Mask" and "bits" in spec:
            mask = Mask.__new__(Mask)
            bits = spec["bits"]
            count = int(_unpack(bits, 0, torch.Size(spec["shape"]).numel()).sum())
            mask._setup(spec["shape"], bits, count)
            return mask
        if kind == "Mask":  # written by torch-hollow 0.1.0
            return Mask(~spec["held"])
        if kind == "Union":
            return Union(tuple(from_spec(p) for p in spec["parts"]))
        if kind in ("Rows", "Cols"):
            runs = tuple(range(int(a), int(b)) for a, b in spec["runs"])
            return (Rows if kind == "Rows" else Cols)(runs)
    except (KeyError, TypeError) as err:
        raise HollowError(
            f"torch_hollow: a {kind} pattern spec is incomplete: {err}. "
            "Fix: save it again with this torch-hollow version."
        ) from None
    raise HollowError(
        f"torch_hollow: unknown pattern spec {spec!r:.80}. Fix: upgrade "
        "torch-hollow to the version that saved the checkpoint."
    )
