"""Which entries of a weight are held at exactly zero.

A pattern acts on the last two dimensions of a tensor (``(..., out, in)``), so one pattern serves a
plain matrix and a batch of matrices alike.
"""

from __future__ import annotations

__all__ = ["Diagonal", "Pattern"]

from dataclasses import dataclass

import torch
from torch import Tensor


class Pattern:
    """Base class: a fixed set of entries of the last two dimensions held at bitwise 0.0."""

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        """``(what is wrong, how to fix it)`` for a weight of ``shape``; None if it fits."""
        raise NotImplementedError

    def views(self, t: Tensor) -> list[Tensor]:
        """Views of ``t`` that together cover exactly the held entries."""
        raise NotImplementedError

    def zero_(self, t: Tensor) -> Tensor:
        """Write 0.0 into the held entries of ``t`` in place and return ``t``."""
        for v in self.views(t):
            v.zero_()
        return t

    def max_abs(self, t: Tensor) -> float:
        """Largest |value| on the held entries of ``t`` (NaN if one is NaN; 0.0 if none)."""
        found = [v.detach().abs().amax().item() for v in self.views(t) if v.numel()]
        return max(found, key=_nan_first, default=0.0)

    def zero_transposed_grad_(self, grad_t: Tensor) -> None:
        """Tensor hook for the gradient of ``weight.t()``: zero its held entries in place."""
        self.zero_(grad_t.mT)

    def count_nonzero(self, t: Tensor) -> int:
        """How many held entries of ``t`` are not 0.0."""
        return sum(int(torch.count_nonzero(v.detach())) for v in self.views(t))


def _nan_first(x: float) -> float:
    return float("inf") if x != x else x


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
            raise TypeError(f"Diagonal offset must be an int, got {self.offset!r}")

    def problem(self, shape: torch.Size) -> tuple[str, str] | None:
        if len(shape) < 2:
            return (
                f"a diagonal needs a matrix, this is {len(shape)}-D",
                "pick a 2-D (or batched (..., out, in)) parameter",
            )
        rows, cols = shape[-2], shape[-1]
        if not -rows < self.offset < cols:
            return (
                f"offset {self.offset} lies outside the {rows}x{cols} matrix",
                f"use an offset with {-rows} < offset < {cols}",
            )
        return None

    def views(self, t: Tensor) -> list[Tensor]:
        return [t.diagonal(self.offset, -2, -1)]

    def zero_transposed_grad_(self, grad_t: Tensor) -> None:
        grad_t.diagonal(-self.offset, -2, -1).zero_()  # the hot path of every eager backward
