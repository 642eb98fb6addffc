"""Every kind of pattern, with its held entries found by index arithmetic (not by the pattern).

Shared by the conformance, OpInfo-style and state-machine tests: ``PATTERNS[name](out, in)``
gives ``(pattern, held)`` for an ``(out, in)`` weight, ``held`` a CPU bool tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torch_hollow.patterns import BlockDiagonal, Diagonal, Mask, Pattern, StackedDiagonal


def _allowed(out: int, inp: int) -> Tensor:
    generator = torch.Generator().manual_seed(out * inp)
    allowed = torch.rand(out, inp, generator=generator, device="cpu") > 0.4
    allowed[0, 0] = False  # at least one held entry
    return allowed


# name -> (out, in) -> (pattern, held entries by index arithmetic, independent of the pattern).
PATTERNS: dict[str, Callable[[int, int], tuple[Pattern, Tensor]]] = {}


def _pattern(fn: Callable[[int, int, Tensor, Tensor], tuple[Pattern, Tensor]]) -> Callable:
    def make(out: int, inp: int) -> tuple[Pattern, Tensor]:
        # Explicit CPU: tests build subjects under `with torch.device("meta")` too.
        i, j = torch.arange(out, device="cpu")[:, None], torch.arange(inp, device="cpu")[None, :]
        return fn(out, inp, i, j)

    PATTERNS[fn.__name__] = make
    return fn


@_pattern
def diagonal(out, inp, i, j):
    return Diagonal(0), j == i


@_pattern
def above(out, inp, i, j):
    return Diagonal(1), j - i == 1


@_pattern
def below(out, inp, i, j):
    return Diagonal(-1), j - i == -1


@_pattern
def stacked(out, inp, i, j):
    blocks = 2 if out % 2 == 0 else out
    return StackedDiagonal(blocks), j == i % (out // blocks)


@_pattern
def blocks(out, inp, i, j):
    r0, c0 = out - out // 2, inp - inp // 2
    pattern = BlockDiagonal(rows=(r0, out // 2), cols=(c0, inp // 2))
    return pattern, (i < r0) == (j < c0)


@_pattern
def mask(out, inp, i, j):
    allowed = _allowed(out, inp)
    return Mask(allowed), ~allowed


@_pattern
def union(out, inp, i, j):
    allowed = _allowed(out, inp)
    return Diagonal(1) | Mask(allowed), (j - i == 1) | ~allowed
