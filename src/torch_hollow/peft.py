"""LoRA adapters (peft) on hollow layers whose effective weight stays hollow.

peft wraps a layer as ``base(x) + s * B(A(x))``: the low-rank delta ``s * B @ A`` has non-zero
entries everywhere, so a plain LoRA layer around a `HollowLinear` computes with a non-zero
diagonal. `HollowLoraLinear` forms the delta, sets its held entries to 0.0 and applies it, so
the effective weight is exactly hollow (the input Jacobian's held entries are exactly 0.0);
its merged weight is hollow too. This module imports peft; ``import torch_hollow`` does not.
"""

from __future__ import annotations

__all__ = ["HollowLoraLinear", "lora_config"]

from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora import Linear as _LoraLinear
from torch import Tensor

from .errors import HollowError
from .nn import HollowLinear
from .patterns import Pattern


def lora_config(**kwargs: Any) -> LoraConfig:
    """A ``peft.LoraConfig`` whose adapters on `HollowLinear` layers are `HollowLoraLinear`.

    Args:
        **kwargs: passed to ``peft.LoraConfig`` (``target_modules``, ``r``, ``lora_alpha``...).

    Returns:
        The config, for ``peft.get_peft_model(model, config)``.

    Example:
        >>> import torch
        >>> from peft import get_peft_model
        >>> from torch_hollow import HollowLinear
        >>> from torch_hollow.peft import lora_config
        >>> model = torch.nn.Sequential(HollowLinear(4, 4))
        >>> peft_model = get_peft_model(model, lora_config(target_modules=["0"], r=2))
        >>> layer = peft_model.base_model.model[0]
        >>> type(layer).__name__
        'HollowLoraLinear'
        >>> _ = torch.nn.init.normal_(layer.lora_B["default"].weight)  # as after training
        >>> layer.effective_weight().diagonal().tolist()
        [0.0, 0.0, 0.0, 0.0]
    """
    config = LoraConfig(**kwargs)
    config._register_custom_module({HollowLinear: HollowLoraLinear})
    return config


class HollowLoraLinear(_LoraLinear):
    """peft's LoRA ``Linear`` for a `HollowLinear` base: ``W + s * B @ A``, held entries 0.0.

    The forward is ``base(x) + F.linear(dropout(x), hollow(s * B @ A))``: the held entries of
    the effective weight are exactly 0.0 and contribute nothing, and ``merge`` /
    ``merge_and_unload()`` write a hollow weight. Forming the ``out x in`` delta costs
    O(out * in * r) per forward and one such temporary, about one more dense layer; peft's own
    LoRA path costs O(batch * (out + in) * r). LoRA variants (DoRA and others) and
    mixed-adapter batches are refused with a `HollowError`.
    """

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, **kwargs: Any) -> None:
        if not isinstance(base_layer, HollowLinear):
            raise HollowError(
                f"torch_hollow: HollowLoraLinear wraps a HollowLinear, got "
                f"{type(base_layer).__name__}. Fix: use torch_hollow.peft.lora_config, which "
                "maps only HollowLinear layers to it."
            )
        super().__init__(base_layer, adapter_name, **kwargs)

    def resolve_lora_variant(self, *args: Any, **kwargs: Any) -> Any:
        variant = super().resolve_lora_variant(*args, **kwargs)
        if variant is not None:
            raise HollowError(
                f"torch_hollow: the LoRA variant {type(variant).__name__} is not supported on a "
                "hollow layer: its delta would fill the held entries. Fix: use plain LoRA "
                "(use_dora=False and no other variant) on HollowLinear layers."
            )
        return variant

    @property
    def pattern(self) -> Pattern:
        """The held entries of the base layer's weight."""
        return self.get_base_layer().pattern

    def get_delta_weight(self, adapter: str) -> Tensor:
        delta = super().get_delta_weight(adapter)
        return self.pattern.zero_(delta)  # merges write exact zeros on the held entries

    def effective_weight(self) -> Tensor:
        """The weight the layer computes with: base plus each active delta, held entries 0.0."""
        weight = self.get_base_layer().weight.detach().clone()
        for adapter in self.active_adapters:
            if adapter in self.lora_A and not self.merged:
                weight += self.get_delta_weight(adapter).detach()
        return self.pattern.zero_(weight)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if kwargs.get("adapter_names") is not None:
            raise HollowError(
                "torch_hollow: mixed-adapter batches (adapter_names=...) are not supported on "
                "a hollow LoRA layer. Fix: set one active adapter per batch."
            )
        if self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            delta = self.get_delta_weight(adapter)  # s * B @ A with the held entries 0.0
            xa = self.lora_dropout[adapter](self._cast_input_dtype(x, delta.dtype))
            result = result + F.linear(xa, delta).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "torch_hollow." + super().__repr__().removeprefix("lora.")
