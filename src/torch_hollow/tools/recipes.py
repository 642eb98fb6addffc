"""The recipes users find for "zero the diagonal", built side by side for comparison.

Each builder takes a `Spec` and returns a module mapping ``(..., n)`` to ``(..., n)`` (batched
specs: ``(groups, batch, n)``). ``stored_params`` names what each recipe's optimizer updates, so
a benchmark can look at the values the recipe actually keeps.
"""

from __future__ import annotations

__all__ = ["RECIPES", "BatchedLinear", "Spec", "stored_params", "used_weight"]

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

from torch_hollow import HollowLinear, hollow_
from torch_hollow.patterns import Diagonal, Mask, Pattern


@dataclass(frozen=True)
class Spec:
    """What to build: an ``n x n`` weight (``groups`` of them if batched) holding ``pattern``."""

    n: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    pattern: Pattern = field(default_factory=Diagonal)
    groups: int = 0  # 0: a plain (n, n) linear; g > 0: a batched (g, n, n) weight
    sparsity: float = 0.0  # > 0: instead of pattern, a pruning mask holding this fraction

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape: ``(n, n)``, or ``(groups, n, n)``."""
        return (self.groups, self.n, self.n) if self.groups else (self.n, self.n)

    def held(self) -> Pattern:
        """The held entries: ``pattern``, or a seeded random `Mask` of ``sparsity``."""
        if not self.sparsity:
            return self.pattern
        draw = torch.rand(self.shape, generator=torch.Generator().manual_seed(self.n))
        return Mask(draw >= self.sparsity)


class BatchedLinear(nn.Module):
    """``x @ weight.mT`` with a ``(groups, n, n)`` weight: multi-head / grouped maps."""

    def __init__(self, groups: int, n: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(groups, n, n, device=device, dtype=dtype) / n**0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.mT


class MaskedLinear(nn.Module):
    """zuko / nflows style: ``F.linear(x, weight * mask, bias)`` on every forward."""

    def __init__(self, inner: nn.Module, mask: Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mask", (~mask).to(inner.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        w = self.inner.weight * self.mask
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, w, self.inner.bias)
        return x @ w.mT


class _ZeroHeld(nn.Module):
    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", (~mask).float())

    def forward(self, w: Tensor) -> Tensor:
        return w * self.keep.to(w.dtype)


def _base(spec: Spec) -> nn.Module:
    if spec.groups:
        return BatchedLinear(spec.groups, spec.n, spec.device, spec.dtype)
    return nn.Linear(spec.n, spec.n, device=spec.device, dtype=spec.dtype)


def _mask(spec: Spec, module: nn.Module) -> Tensor:
    return spec.held().held_mask(module.weight.shape, spec.device)


def _hollow(spec: Spec) -> nn.Module:
    if spec.groups:
        return hollow_(_base(spec), "weight", pattern=spec.held())
    return HollowLinear(spec.n, spec.n, device=spec.device, dtype=spec.dtype, pattern=spec.held())


def _w_times_mask(spec: Spec) -> nn.Module:
    inner = _base(spec)
    return MaskedLinear(inner, _mask(spec, inner))


def _parametrize(spec: Spec) -> nn.Module:
    module = _base(spec)
    parametrize.register_parametrization(module, "weight", _ZeroHeld(_mask(spec, module)))
    return module


def _prune(spec: Spec) -> nn.Module:
    module = _base(spec)
    return prune.custom_from_mask(module, "weight", ~_mask(spec, module))


def _grad_hook(spec: Spec) -> nn.Module:
    # Zero once, then zero the gradient after accumulation: cheap, but Muon, autograd.grad and
    # FSDP2 go around it.
    module = _base(spec)
    pattern = spec.held()  # a diagonal is zeroed through a view: O(n), as users write it
    with torch.no_grad():
        pattern.zero_(module.weight)

    def zero_grad_entries(param: Tensor) -> None:
        pattern.zero_(param.grad)

    module.weight.register_post_accumulate_grad_hook(zero_grad_entries)
    return module


RECIPES: dict[str, Callable[[Spec], nn.Module]] = {
    "plain": _base,
    "torch-hollow": _hollow,
    "W*mask": _w_times_mask,
    "parametrize": _parametrize,
    "prune": _prune,
    "grad-hook": _grad_hook,
}


def stored_params(module: nn.Module) -> Tensor:
    """The weight values a recipe keeps (what its optimizer updates and its state dict holds)."""
    if parametrize.is_parametrized(module):
        return module.parametrizations.weight.original
    if hasattr(module, "weight_orig"):
        return module.weight_orig
    return module.inner.weight if isinstance(module, MaskedLinear) else module.weight


def used_weight(module: nn.Module) -> Tensor:
    """The weight a recipe's forward multiplies by (after a forward, for ``prune``)."""
    return module.inner.weight * module.mask if isinstance(module, MaskedLinear) else module.weight
