"""Refuse an adapter that would add a non-hollow delta to a hollow layer, when it is built.

peft's LoRA ``Linear`` (and its other tuner layers) computes ``base_layer(x) + delta(x)``;
around a `HollowLinear` it silently fills the held entries of the effective weight. Every peft
tuner layer stores the layer it wraps as its submodule ``base_layer``, so the wrapping is seen
where it happens: a global module-registration hook (``register_module_module_registration_hook``,
public torch API, called when any module registers a submodule, never on a forward) refuses it
there. Layers that peft wrapped before torch-hollow was imported are remembered too, so that a
later `torch_hollow.hollow_` on one of them is refused as well.
"""

from __future__ import annotations

__all__ = ["wrapper_of"]

import weakref

from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from .errors import HollowError

_WRAPPED: weakref.WeakKeyDictionary[nn.Module, type] = weakref.WeakKeyDictionary()


def wrapper_of(layer: nn.Module) -> str | None:
    """The peft layer class (qualified name) that wraps ``layer``, if any but torch-hollow's."""
    kind = _WRAPPED.get(layer)
    return None if kind is None else f"{kind.__module__}.{kind.__qualname__}"


def _on_register(parent: nn.Module, name: str, child: object) -> None:
    if name != "base_layer" or not isinstance(child, nn.Module):
        return
    kind = type(parent)
    if not kind.__module__.startswith("peft.") or hasattr(kind, "effective_weight"):
        return  # not peft's, or torch-hollow's own HollowLoraLinear
    _WRAPPED[child] = kind
    held = child.__dict__.get("_hollow")
    if held is not None and held.rules:
        raise HollowError(
            f"torch_hollow: {type(child).__name__}.{', '.join(held.rules)} "
            f"({next(iter(held.rules.values()))!r}): peft's {wrapper_of(child)} wraps it and "
            "adds a low-rank delta that fills its held entries. Fix: build the adapter config "
            "with torch_hollow.peft.lora_config(...) instead of peft.LoraConfig(...)."
        )


_handle = register_module_module_registration_hook(_on_register)
