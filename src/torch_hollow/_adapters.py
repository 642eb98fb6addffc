"""Refuse a hollow layer wrapped by an adapter that would add a non-hollow delta to it.

peft's LoRA ``Linear`` computes ``base_layer(x) + s * B(A(x))``; around a `HollowLinear` it
silently fills the held entries of the effective weight. Its forward is the caller of ours, so
the first frames up the stack show it. Only looked at while peft is imported.
"""

from __future__ import annotations

__all__ = ["check_caller"]

import sys

from torch import nn

from .errors import HollowError


def check_caller(layer: nn.Module) -> None:
    """Raise a `HollowError` if a peft layer other than torch-hollow's calls ``layer``."""
    frame = sys._getframe(2)  # our forward's caller: Module._call_impl, then its caller
    for _ in range(4):
        if frame is None:
            return
        caller = frame.f_locals.get("self")
        if caller is not layer and getattr(caller, "base_layer", None) is layer:
            kind = type(caller)
            if kind.__module__.startswith("peft.") and not hasattr(kind, "effective_weight"):
                raise HollowError(
                    f"torch_hollow: peft's {kind.__module__}.{kind.__qualname__} wraps a hollow "
                    f"{type(layer).__name__} (pattern {layer.pattern!r}) and adds a low-rank "
                    "delta that fills its held entries. Fix: build the adapter config with "
                    "torch_hollow.peft.lora_config(...) instead of peft.LoraConfig(...)."
                )
            return
        frame = frame.f_back
