"""audit(): which parameters of a model or checkpoint hold a rule, and whether it holds."""

from __future__ import annotations

__all__ = ["AuditRow", "audit", "format_audit"]

import importlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import _hooks, patterns, shards
from ._compat import GUARD_NAMES
from ._state import Held, state_of
from .errors import HollowError
from .nn import HollowLinear
from .patterns import Diagonal, from_spec
from .rules import Rule, Zeros


@dataclass(frozen=True)
class AuditRow:
    """One 2-D (or batched) floating parameter.

    ``held_max`` is the largest |value| on the pattern's entries, or, for an unconstrained square
    weight, on its main diagonal (None for other unconstrained weights). ``violated`` is true
    when a held entry is not 0.0. ``sparsity`` is the fraction of the parameter's entries the
    pattern holds (a pruning mask's sparsity; None when unconstrained).

    Example:
        >>> import torch
        >>> from torch_hollow import audit
        >>> audit({"w": torch.eye(2)})[0]
        AuditRow(name='w', shape=(2, 2), pattern=None, held_max=1.0, violated=False, sparsity=None)
    """

    name: str
    shape: tuple[int, ...]
    pattern: str | None
    held_max: float | None
    violated: bool
    sparsity: float | None = None


def audit(
    obj: nn.Module | Mapping[str, object] | str | os.PathLike, *, trust_pickle: bool = False
) -> list[AuditRow]:
    """One row per 2-D (or batched) floating parameter of a model, state dict or checkpoint file.

    Patterns come from the hollow modules of a model, or from the metadata torch-hollow writes
    into every state dict it saves (so a ``torch.save``d state dict remembers them).

    Args:
        obj: a module, a state dict (or a checkpoint dict holding one under ``"state_dict"`` or
            ``"model"``), or the path of a ``torch.save`` file or ``.safetensors`` file.
        trust_pickle: load a pickled model from ``obj`` with ``weights_only=False``. Only for
            files you trust.

    Returns:
        Rows in parameter order.

    Raises:
        HollowError: the file cannot be read as a checkpoint.

    Example:
        >>> import torch
        >>> from torch_hollow import HollowLinear, audit
        >>> model = torch.nn.Sequential(HollowLinear(3, 3), torch.nn.Linear(3, 3))
        >>> [(r.name, r.pattern, r.violated) for r in audit(model.state_dict())]
        [('0.weight', 'Diagonal(offset=0)', False), ('1.weight', None, False)]
    """
    if isinstance(obj, (str, os.PathLike)):
        obj = _load(Path(obj), trust_pickle)
    if isinstance(obj, nn.Module):
        tensors = dict(obj.named_parameters())
        rules = {
            f"{prefix}.{name}" if prefix else name: rule
            for prefix, module in obj.named_modules()
            for name, rule in _rules(module).items()
        }
    elif isinstance(obj, Mapping):
        state = _state_dict_in(obj)
        tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
        rules = _rules_in_metadata(state)
    else:
        raise HollowError(
            f"torch_hollow: audit() takes a module, a state dict or a path, got "
            f"{type(obj).__name__}. Fix: pass model, model.state_dict() or a file."
        )
    return [
        _row(name, t, rules.get(name))
        for name, t in tensors.items()
        if t.dim() >= 2 and t.is_floating_point()
    ]


def _rules(module: nn.Module) -> dict:
    held = state_of(module)
    return {} if held is None else held.rules


def _row(name: str, t: Tensor, rule: Rule | None) -> AuditRow:
    shape = tuple(t.shape)
    t = shards.gather(t.detach())  # a DTensor's global values (a collective: audit's contract)
    if rule is None:
        if shape[-1] != shape[-2]:
            return AuditRow(name, shape, None, None, False)
        return AuditRow(name, shape, None, Diagonal(0).max_abs(t), False)
    count, largest = rule.violations(t)
    held = int(rule.pattern.held_mask(shape, t.device).sum())
    return AuditRow(name, shape, repr(rule.pattern), largest, count > 0, held / t.numel())


def _state_dict_in(obj: Mapping[str, object]) -> Mapping[str, object]:
    if not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return inner
    return obj


def _rules_in_metadata(state: Mapping[str, object]) -> dict[str, Rule]:
    found = {}
    for prefix, local in (getattr(state, "_metadata", None) or {}).items():
        for name, spec in (local.get("hollow") or {}).items():
            found[f"{prefix}.{name}" if prefix else name] = Zeros(from_spec(spec))
    return found


def _load(path: Path, trust_pickle: bool) -> object:
    if not path.is_file():
        raise HollowError(
            f"torch_hollow: no checkpoint file at {str(path)!r}. Fix: check the path."
        )
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise HollowError(
                "torch_hollow: reading .safetensors needs the safetensors package. "
                "Fix: pip install safetensors."
            ) from None
        return load_file(str(path))
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_model_globals(path)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise _untrusted(path, "an object that torch.load(weights_only=True) refuses") from None


def _model_globals(path: Path) -> list[object]:
    # A whole model saved with torch.save(model) names its classes in the pickle. torch.nn's
    # module classes, torch-hollow's layer and pattern classes and the hooks torch-hollow puts on
    # modules only restore data, so they are allowed without --trust-pickle; anything else (any
    # other function a pickle could call) is refused by name.
    found = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(path):
        module, _, qualname = name.rpartition(".")
        obj = _resolve(module, qualname) if _TORCH_NN.match(module) else None
        nn_class = isinstance(obj, type) and issubclass(obj, (nn.Module, _WrappedHook))
        if not (nn_class or name in _HOLLOW):
            raise _untrusted(path, repr(name))
        found.append(obj if nn_class else (_HOLLOW[name], name))  # 0.1.0 names: aliases
    return found


_TORCH_NN = re.compile(r"torch\.nn(\.\w+)*$")
_WrappedHook = getattr(torch.nn.modules.module, "_WrappedHook", nn.Module)
_HOLLOW = {
    **{
        f"{obj.__module__}.{obj.__qualname__}": obj
        for obj in (
            HollowLinear,
            Held,
            Zeros,
            *(getattr(patterns, name) for name in patterns.__all__ if name != "from_spec"),
            *(getattr(_hooks, name) for name in _hooks.HOOKS),
        )
    },
    # what files saved by torch-hollow 0.1.0 name
    **{f"torch_hollow.guard.{name}": resolve() for name, resolve in GUARD_NAMES.items()},
}


def _resolve(module: str, qualname: str) -> object:
    try:
        obj: object = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj


def _untrusted(path: Path, what: str) -> HollowError:
    return HollowError(
        f"torch_hollow: {str(path)!r} is a pickled object that refers to {what}, which is not "
        "part of torch.nn or torch-hollow, so it is not loaded. Fix: if you trust the file, "
        "pass --trust-pickle (audit(..., trust_pickle=True))."
    )


def format_audit(rows: list[AuditRow], as_json: bool = False) -> str:
    """The rows as an aligned table, or as JSON."""
    if as_json:
        return json.dumps([asdict(r) for r in rows], indent=2)
    head = ("parameter", "shape", "pattern", "held", "max |held|", "status")
    body = [
        (
            r.name,
            "x".join(map(str, r.shape)),
            r.pattern or "-",
            "-" if r.sparsity is None else f"{100 * r.sparsity:.1f}%",
            "-" if r.held_max is None else f"{r.held_max:.3g}",
            "VIOLATED" if r.violated else ("ok" if r.pattern else "unconstrained"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
