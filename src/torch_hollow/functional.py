"""The op: a linear map that reads the held entries of its weight as exactly zero."""

from __future__ import annotations

__all__ = ["hollow_linear", "zero_diagonal_"]

import torch
from torch import Tensor

from . import shards
from ._checks import check_tensor, resolve_pattern
from ._routing import copied_linear
from .errors import at
from .patterns import Diagonal, Pattern
from .rules import Zeros


def hollow_linear(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    offset: int = 0,
    *,
    pattern: Pattern | None = None,
) -> Tensor:
    """``F.linear`` with the held entries of ``weight`` read as 0.0, whatever ``weight`` holds.

    The output equals ``F.linear(input, w0, bias)`` bitwise, where ``w0`` is ``weight`` with
    the entries ``torch.diagonal(weight, offset)`` (or those of ``pattern``) set to 0.0, and the
    gradient with respect to ``weight`` is exactly 0.0 there. This form works on any weight, so it
    makes one masked copy of ``weight`` per call; `HollowLinear` keeps its stored weight zero and
    needs no copy.

    Args:
        input: ``(*, in_features)``.
        weight: ``(out_features, in_features)``, floating point.
        bias: ``(out_features,)`` or None.
        offset: which diagonal is held at zero (shorthand for ``pattern=Diagonal(offset)``).
        pattern: the held entries; overrides ``offset``.

    Returns:
        ``(*, out_features)``.

    Raises:
        HollowError: ``weight`` is not a floating 2-D tensor or the pattern does not fit it.

    Example:
        >>> import torch
        >>> from torch_hollow.functional import hollow_linear
        >>> w = torch.ones(2, 2, requires_grad=True)
        >>> y = hollow_linear(torch.tensor([1.0, 2.0]), w)
        >>> y.detach()
        tensor([2., 1.])
        >>> y.sum().backward()
        >>> w.grad
        tensor([[0., 2.],
                [1., 0.]])
    """
    with at("", "weight", getattr(weight, "shape", None)):
        rule = Zeros(resolve_pattern(offset, pattern))
        check_tensor(weight, rule, max_dim=2)
    return copied_linear(input, weight, bias, rule)


def zero_diagonal_(tensor: Tensor, offset: int = 0) -> Tensor:
    """Write 0.0 into ``torch.diagonal(tensor, offset, -2, -1)`` in place and return ``tensor``.

    The one-shot operation done right: it works on a Parameter that requires grad (under
    ``torch.no_grad``, bumping its version so a stale graph fails loudly instead of silently using
    the old values) and on batched ``(..., n, m)`` tensors. On an intermediate result of a graph
    the write is recorded, so the gradient through the zeroed entries is exactly 0.0. It does not
    keep the entries zero: for that use `HollowLinear` or `hollow_`.

    Args:
        tensor: at least 2-D.
        offset: which diagonal; ``-rows < offset < cols``.

    Returns:
        ``tensor``, modified in place.

    Raises:
        HollowError: ``tensor`` has fewer than 2 dimensions or ``offset`` misses it.

    Example:
        >>> import torch
        >>> from torch_hollow import zero_diagonal_
        >>> w = torch.nn.Parameter(torch.ones(2, 3))
        >>> zero_diagonal_(w, offset=1).data
        tensor([[1., 0., 1.],
                [1., 1., 0.]])
    """
    with at("", "tensor", getattr(tensor, "shape", None)):
        rule = Zeros(Diagonal(offset))
        check_tensor(tensor, rule, floating=False)
    with at("", "tensor", tensor.shape):
        if _in_graph(tensor):  # record the write: the gradient through the zeroed entries is 0.0
            return shards.enforce_(tensor, rule)
        with torch.no_grad():
            return shards.enforce_(tensor, rule)


def _in_graph(t: Tensor) -> bool:
    # An intermediate result of a graph (not a parameter, nor a view of one): a write under
    # no_grad would leave its gradient the identity on entries that no longer depend on it.
    if t.is_leaf or not (t.requires_grad and torch.is_grad_enabled()) or shards.is_dtensor(t):
        return False
    return t._base is None or not t._base.is_leaf
