"""Pruned weights that stay pruned: from ``torch.nn.utils.prune`` to hollow masks.

``torch.nn.utils.prune`` keeps ``weight_orig``, a float ``weight_mask`` and recomputes
``weight = weight_orig * weight_mask`` before every forward: three tensors of the weight's size,
renamed state-dict keys, and pruned entries of ``weight_orig`` that optimizers keep moving.
A hollow `Mask` holds the same entries at 0.0 in the one stored weight, under its own name.
"""

from __future__ import annotations

__all__ = ["from_prune", "hollow_masks_", "keep_zeros_"]

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from . import shards
from .constrain import check_hold, hold_, hollow_, remove, rules_of
from .errors import HollowError, HollowWarning, located
from .nn import HollowLinear
from .patterns import Mask
from .rules import Zeros


def from_prune(model: nn.Module) -> nn.Module:
    """Turn every parameter pruned by ``torch.nn.utils.prune`` into a hollow one, in place.

    Works for any pruning method, local or global, after any number of rounds (the mask prune
    has accumulated is the one kept), and again on a model pruned after an earlier
    ``from_prune``: iterative pruning keeps calling prune's methods, then ``from_prune``; the
    entries held before stay held. The computed weight becomes the Parameter under its
    original name (the ``weight_orig`` Parameter object, so an optimizer built on it keeps
    working), ``weight_orig`` / ``weight_mask`` and prune's forward pre-hook go, the state-dict
    keys become those of the unpruned model, and the outputs are the same, bitwise. From then on
    the pruned entries are held at 0.0: after every optimizer step (momentum, weight decay),
    load, re-init and copy.

    Args:
        model: a module whose submodules (itself included) may be pruned.

    Returns:
        ``model``.

    Raises:
        HollowError: a pruned parameter has fewer than 2 dims (a pruned bias: call
            ``prune.remove`` for it first); nothing is changed then.

    Example:
        >>> import torch
        >>> from torch.nn.utils import prune
        >>> from torch_hollow import from_prune
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> _ = prune.l1_unstructured(model[0], "weight", amount=0.5)
        >>> sorted(model.state_dict())
        ['0.bias', '0.weight_mask', '0.weight_orig']
        >>> sorted(from_prune(model).state_dict())
        ['0.bias', '0.weight']
        >>> int((model[0].weight == 0).sum())
        8
    """
    found = []
    for path, module in model.named_modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                name = hook._tensor_name
                allowed = getattr(module, name + "_mask") != 0
                if allowed.dim() < 2:
                    raise located(
                        path or type(module).__name__,
                        name,
                        allowed.shape,
                        f"is pruned but {allowed.dim()}-D; a hollow mask holds a matrix or "
                        "a higher-dimensional weight",
                        f"make its pruning permanent with prune.remove(module, {name!r}) "
                        "before from_prune",
                    )
                found.append((module, name, allowed))
    for module, name, allowed in found:
        prune.remove(module, name)
        held = rules_of(module).get(name)
        if held is not None:  # pruned again after an earlier from_prune: hold both
            allowed = allowed & ~held.pattern.held_mask(allowed.shape, allowed.device)
            remove(module, name)
        hollow_(module, name, pattern=Mask(allowed))
    return model


def hollow_masks_(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Hold the entries where ``masks[qualified_name]`` is False at 0.0, in place.

    For masks computed elsewhere (a sparsity library, a saved lottery ticket): each key is a
    parameter's qualified name as in ``model.named_parameters()``, each value a bool tensor of
    that parameter's full shape, True where the weight is free (prune's convention). An exact
    ``nn.Linear`` weight becomes a `HollowLinear`; any other parameter is held by hooks.

    Args:
        model: the module.
        masks: ``{"features.0.weight": allowed, ...}``.

    Returns:
        ``model``.

    Raises:
        HollowError: a name is not a parameter of ``model`` or a mask does not fit it; nothing
            is changed then.

    Example:
        >>> import torch
        >>> from torch_hollow import hollow_masks_
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
        >>> allowed = torch.rand(2, 1, 3, 3) > 0.8
        >>> _ = hollow_masks_(model, {"0.weight": allowed})
        >>> bool((model[0].weight[~allowed] == 0).all())
        True
    """
    params = dict(model.named_parameters())
    plan = []
    for qualified, allowed in masks.items():
        if qualified not in params:
            raise HollowError(
                f"torch_hollow: {qualified!r} is not a parameter of the model (it has: "
                f"{', '.join(list(params)[:8])}{', ...' if len(params) > 8 else ''}). Fix: "
                "use the names of model.named_parameters()."
            )
        pattern = Mask(torch.as_tensor(allowed))
        if pattern.held.shape != params[qualified].shape:
            raise located(
                "",
                qualified,
                params[qualified].shape,
                f"got a mask of shape {tuple(pattern.held.shape)}",
                "pass a bool mask of the parameter's full shape (True = free)",
            )
        owner, _, name = qualified.rpartition(".")
        plan.append((model.get_submodule(owner) if owner else model, name, pattern))
    for module, name, pattern in plan:
        hollow_(module, name, pattern=pattern)
    return model


def keep_zeros_(
    model: nn.Module, *, where: Callable[[str, nn.Module], bool] | None = None
) -> nn.Module:
    """Hold, in each selected weight, exactly the entries that are 0.0 now, in place.

    The one-line path for a pruned checkpoint (SparseGPT, Wanda, 2:4): load it, call
    ``keep_zeros_(model)``, fine-tune; the pruned entries stay bitwise +0.0 through every
    optimizer step, load and copy, in a `Mask` of the weight's zeros. Every selected module's
    ``weight`` is checked before any is changed.

    Args:
        model: any module; itself included.
        where: ``(qualified_name, module) -> bool`` choosing the modules whose ``weight`` is
            held; default: every module whose type is exactly ``nn.Linear`` (as `convert`),
            and every `HollowLinear` (an ``nn.Linear`` already held: refused unless its rule
            is already these zeros).

    Returns:
        ``model``.

    Raises:
        HollowError: a chosen weight is not a floating tensor of 2 or more dims, or is already
            held by another rule; nothing is changed then.

    Warns:
        HollowWarning: naming the chosen weights that have no zero (they are left alone).

    Example:
        >>> import torch
        >>> from torch_hollow import keep_zeros_, rules_of
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> with torch.no_grad():
        ...     model[0].weight[:, ::2] = 0.0  # as after pruning
        >>> rules_of(keep_zeros_(model)[0])
        {'weight': Zeros(pattern=Mask(shape=(4, 4), held=8))}
    """
    plan, dense = [], []
    for qualified, module in list(model.named_modules()):
        if where is None:
            chosen = type(module) is nn.Linear or isinstance(module, HollowLinear)
        else:
            chosen = bool(where(qualified, module))
        if not chosen:
            continue
        path = qualified or type(module).__name__
        weight = module._parameters.get("weight")
        if not isinstance(weight, Tensor) or weight.dim() < 2 or not weight.is_floating_point():
            raise located(
                path,
                "weight",
                getattr(weight, "shape", None),
                "keep_zeros_ holds a floating weight of 2 or more dims, and this module has none",
                "choose modules with such a weight (where=...)",
            )
        allowed = shards.gather(weight.detach()) != 0  # a DTensor's: a collective
        if bool(allowed.all()):
            dense.append(f"{path}.weight")
            continue
        rule = Zeros(Mask(allowed))
        check_hold(module, "weight", rule, path)  # refused here, before anything changes
        plan.append((module, path, rule))
    for module, path, rule in plan:
        hold_(module, "weight", rule, path)
    if dense:
        warnings.warn(
            HollowWarning(
                f"torch_hollow: keep_zeros_ left {len(dense)} weight(s) with no zero alone: "
                f"{', '.join(dense[:8])}{', ...' if len(dense) > 8 else ''}. Nothing of them is "
                "held; prune them first if they should be sparse."
            ),
            stacklevel=2,
        )
    return model
