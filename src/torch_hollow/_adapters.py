"""Refuse an adapter that would add a non-hollow delta to a hollow layer, when it is built.

peft's LoRA ``Linear`` (and its other tuner layers) computes ``base_layer(x) + delta(x)``;
around a `HollowLinear` it silently fills the held entries of the effective weight. Every peft
tuner layer stores the layer it wraps as its submodule ``base_layer``, so the wrapping is seen
where it happens: a global module-registration hook (``register_module_module_registration_hook``,
public torch API, called when any module registers a submodule, never on a forward) refuses it
there. Every layer peft wraps is remembered, weakly and with its wrapper, so that a later
`torch_hollow.hollow_` on it is refused too while the wrapper still holds it. Not seen: a layer
wrapped before ``import torch_hollow`` installed the hook.
"""

from __future__ import annotations

__all__ = ["wrapper_of"]

import weakref

from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from ._state import parameter
from .errors import located

# layer -> the peft layer that took it as its base_layer (weakly: an unloaded wrapper may go)
_WRAPPED: weakref.WeakKeyDictionary[nn.Module, weakref.ref[nn.Module]] = (
    weakref.WeakKeyDictionary()
)


def wrapper_of(layer: nn.Module) -> str | None:
    """The peft layer class (qualified name) that wraps ``layer``, if any but torch-hollow's."""
    ref = _WRAPPED.get(layer)
    wrapper = None if ref is None else ref()
    if wrapper is None or wrapper._modules.get("base_layer") is not layer:
        return None  # gone, or never finished wrapping it (its __init__ raised)
    kind = type(wrapper)
    return f"{kind.__module__}.{kind.__qualname__}"


def _on_register(parent: nn.Module, name: str, child: object) -> None:
    kind = type(parent)
    if name != "base_layer" or not isinstance(child, nn.Module):
        return
    if not kind.__module__.startswith("peft.") or hasattr(kind, "effective_weight"):
        return  # not peft's, or torch-hollow's own HollowLoraLinear (its delta is hollow)
    _WRAPPED[child] = weakref.ref(parent)
    held = child.__dict__.get("_hollow")
    if held is not None and held.rules:
        fix = (
            "build the adapter config with torch_hollow.peft.lora_config(...) instead of "
            "peft.LoraConfig(...)"
            if not held.hooked
            else "leave this layer out of target_modules (torch_hollow.peft adapts "
            "HollowLinear layers only), or remove() the rule before adapting it"
        )
        name, rule = next(iter(held.rules.items()))
        raise located(
            type(child).__name__,
            name,
            getattr(parameter(child, name), "shape", None),
            f"held by {rule!r}; peft's {kind.__module__}.{kind.__qualname__} wraps it and adds "
            "a low-rank delta that fills its held entries",
            fix,
        )


_handle = register_module_module_registration_hook(_on_register)
