"""HollowLinear: an ``nn.Linear`` whose held weight entries are exactly zero, always."""

from __future__ import annotations

__all__ = ["HollowLinear"]

import sys
from typing import Any

import torch
from torch import Tensor, nn

from . import guard
from ._adapters import check_caller
from .errors import script_refusal
from .functional import (
    check_weight,
    eager_linear,
    elsewhere,
    graph_writes_allowed,
    masked_linear,
    resolve_pattern,
    stored_linear,
)
from .patterns import Diagonal, Pattern


class HollowLinear(nn.Linear):
    """``nn.Linear`` whose entries ``weight[i, i + offset]`` are bitwise 0.0, always.

    The stored weight holds 0.0 there after every optimizer step (any ``torch.optim`` optimizer,
    fused and compiled steps and Muon included), ``load_state_dict``, ``reset_parameters``,
    ``state_dict``, dtype/device moves, ``deepcopy`` and pickling; each forward computes with
    zeros even after a raw ``nn.init`` write; and the gradient of the weight is exactly 0.0 there,
    for ``backward()`` and ``torch.autograd.grad``. State-dict keys are those of ``nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias.
        device: as for ``nn.Linear``.
        dtype: as for ``nn.Linear``.
        offset: which diagonal is zero; ``-out_features < offset < in_features``. A rectangular
            weight uses the entries that exist.
        pattern: the held entries (a `torch_hollow.patterns.Pattern`); overrides ``offset``.

    Raises:
        HollowError: the offset (or pattern) does not fit the weight.

    Example:
        >>> import torch
        >>> from torch_hollow import HollowLinear
        >>> layer = HollowLinear(4, 4)
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> layer(torch.randn(8, 4)).square().sum().backward()
        >>> opt.step()
        >>> layer.weight.diagonal()
        tensor([0., 0., 0., 0.], grad_fn=<DiagonalBackward0>)
    """

    _hollow_patterns: dict[str, Pattern]
    _hollow_own: dict[str, Any]  # set by guard.register: weak references to its own Parameters

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        offset: int = 0,
        pattern: Pattern | None = None,
    ) -> None:
        pattern = resolve_pattern(offset, pattern)
        check_weight(
            type(self).__name__,
            "weight",
            torch.empty(out_features, in_features, device="meta"),
            pattern,
            max_dim=2,
        )
        # Set before nn.Linear.__init__, whose reset_parameters() already needs it.
        self._hollow_patterns = {"weight": pattern}
        super().__init__(in_features, out_features, bias, device, dtype)
        guard.register(self)

    @property
    def pattern(self) -> Pattern:
        """The held entries of ``weight``."""
        return self._hollow_patterns["weight"]

    @property
    def offset(self) -> int:
        """The held diagonal's offset (for a `Diagonal` pattern)."""
        pattern = self.pattern
        if not isinstance(pattern, Diagonal):
            raise AttributeError(f"{pattern!r} has no single offset")
        return pattern.offset

    def forward(self, input: Tensor) -> Tensor:
        pattern = self._hollow_patterns["weight"]
        weight, bias = self.weight, self.bias
        if torch.compiler.is_compiling():
            if not isinstance(weight, nn.Parameter):  # functional_call: the caller's tensor
                return masked_linear(input, weight, bias, pattern)
            if graph_writes_allowed():  # in a compiled graph: a functional mutation
                guard.zero_traced_(self)
            return stored_linear(input, weight, bias, pattern)
        if "peft" in sys.modules:
            check_caller(self)
        own = self._hollow_own.get("weight")  # the hot path: our own Parameter, plain eager
        if (own is None or own() is not weight) and not guard.owns(self, "weight", weight):
            return masked_linear(input, weight, bias, pattern)  # the caller's tensor
        if elsewhere():
            return masked_linear(input, weight, bias, pattern)
        guard.zero_own_(self, "weight", weight)  # a raw write (nn.init, .data) since the last step
        return eager_linear(input, weight, bias, pattern)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        guard.zero_stored_(self)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        super().register_parameter(name, param)
        if name == "weight" and "_hollow_own" in self.__dict__:
            guard.adopt(self)  # ``layer.weight = nn.Parameter(...)``: the new one is its own

    def _apply(self, fn: Any, recurse: bool = True) -> HollowLinear:
        super()._apply(fn, recurse)
        guard.adopt(self)  # a move may bring new Parameter objects (e.g. to_empty from meta)
        return self

    def __prepare_scriptable__(self) -> None:
        raise script_refusal(type(self).__name__, ["weight"])

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        guard.zero_stored_(self)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        guard.record_patterns(self, destination, prefix)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        dropped = {
            name: guard.dropped(pattern, state_dict.get(prefix + name))
            for name, pattern in self._hollow_patterns.items()
        }
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        guard.register(self)  # assign=True may have brought new Parameter objects
        guard.zero_stored_(self)
        for name, (count, largest) in dropped.items():
            if count:
                guard.warn_dropped(prefix + name, self._hollow_patterns[name], count, largest)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pattern={self.pattern!r}"

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy, pickle and torch.save(model) copy zeros, even right after a raw write
        if guard.owns(self, "weight", self._parameters.get("weight")):
            guard.zero_stored_(self)
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k != "_hollow_cache"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        guard.register(self)  # deepcopy and unpickling skip __init__
