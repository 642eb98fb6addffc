"""The checks every verb runs before it changes anything.

Each raises a short `Cause` (what is wrong, the fix); the verb that called adds the location.
"""

from __future__ import annotations

__all__ = ["check_tensor", "resolve_pattern"]

from torch import Tensor

from .errors import Cause
from .patterns import Diagonal, Pattern
from .rules import Rule


def resolve_pattern(offset: int, pattern: Pattern | None) -> Pattern:
    """``pattern`` if given, else ``Diagonal(offset)``; both at once must agree."""
    if pattern is None:
        return Diagonal(offset)
    if not isinstance(pattern, Pattern):
        raise Cause(
            f"pattern must be a torch_hollow.patterns.Pattern, got {pattern!r}",
            "pass e.g. Diagonal(1)",
        )
    if offset != 0:
        raise Cause(
            f"got both offset={offset} and pattern={pattern!r}",
            f"pass one of them (offset={offset} means pattern=Diagonal({offset}))",
        )
    return pattern


def check_tensor(
    weight: object, rule: Rule, *, max_dim: int | None = None, floating: bool = True
) -> None:
    """Raise a `Cause` unless ``weight`` is a tensor ``rule`` can hold."""
    if not isinstance(weight, Tensor):
        raise Cause(
            f"is {type(weight).__name__}, not a tensor",
            "pass a floating-point torch.Tensor or nn.Parameter",
        )
    if floating and not (weight.is_floating_point() or weight.is_complex()):
        raise Cause(
            f"has dtype {weight.dtype}, not floating point",
            "hold a floating-point parameter (e.g. .float())",
        )
    if max_dim is not None and weight.dim() > max_dim:
        raise Cause(
            f"is {weight.dim()}-D, this needs a matrix",
            "pass a 2-D (out_features, in_features) weight",
        )
    problem = rule.problem(weight.shape)
    if problem is not None:
        raise Cause(*problem)
