"""HollowLinear: an ``nn.Linear`` whose held weight entries are exactly zero, always."""

from __future__ import annotations

__all__ = ["HollowLinear"]

from typing import Any

import torch
from torch import Tensor, nn

from . import _routing, guard
from ._checks import check_tensor, resolve_pattern
from ._compat import migrate
from ._state import KEY, Held
from .errors import at, script_refusal
from .patterns import Diagonal, Pattern
from .rules import Zeros


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

    _hollow: Held

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
        shape = (out_features, in_features)
        with at(type(self).__name__, "weight", shape):
            rule = Zeros(resolve_pattern(offset, pattern))
            check_tensor(torch.empty(shape, device="meta"), rule, max_dim=2)
        # Set before nn.Linear.__init__, whose reset_parameters() already needs it.
        self._hollow = Held({"weight": rule})
        super().__init__(in_features, out_features, bias, device, dtype)
        guard.register(self)

    @property
    def pattern(self) -> Pattern:
        """The held entries of ``weight``."""
        return self._hollow.rules["weight"].pattern

    @property
    def offset(self) -> int:
        """The held diagonal's offset (for a `Diagonal` pattern)."""
        pattern = self.pattern
        if not isinstance(pattern, Diagonal):
            raise AttributeError(f"{pattern!r} has no single offset")
        return pattern.offset

    def forward(self, input: Tensor) -> Tensor:
        return _routing.linear(self, self._hollow, input)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        guard.enforce(self)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        super().register_parameter(name, param)
        if name == "weight" and KEY in self.__dict__:
            guard.adopt(self)  # ``layer.weight = nn.Parameter(...)``: the new one is its own

    def _apply(self, fn: Any, recurse: bool = True) -> HollowLinear:
        super()._apply(fn, recurse)
        guard.adopt(self)  # a move may bring new Parameter objects (e.g. to_empty from meta)
        return self

    def __prepare_scriptable__(self) -> None:
        raise script_refusal(type(self).__name__, ["weight"])

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        guard.enforce(self)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        guard.record(self, destination, prefix)

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
        loading = guard.dropped_all(self._hollow, state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        guard.register(self)  # assign=True may have brought new Parameter objects
        guard.settle_load(self, self._hollow, loading)

    def extra_repr(self) -> str:
        rule = self._hollow.rules["weight"]
        shown = f"pattern={rule.pattern!r}" if isinstance(rule, Zeros) else f"rule={rule!r}"
        return f"{super().extra_repr()}, {shown}"

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy, pickle and torch.save(model) copy what the rules hold, even right after a
        # raw write
        if guard.owns(self, self._hollow, "weight", self._parameters.get("weight")):
            guard.enforce(self)
        return super().__getstate__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if KEY not in self.__dict__:  # pickled by torch-hollow 0.1.0
            migrate(self)
        guard.register(self)  # deepcopy and unpickling skip __init__
