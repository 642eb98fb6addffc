"""audit(): which parameters of a model or checkpoint hold a rule, and whether it holds.

The rule is the one torch-hollow recorded (a hollow module's, or a state dict's metadata), or one
asked for: an N:M sparsity (``nm="2:4"``) or a mask file. A checkpoint may be a directory of
safetensors shards, read one tensor at a time.
"""

from __future__ import annotations

__all__ = ["AuditRow", "audit", "format_audit"]

import contextlib
import importlib
import json
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from . import _hooks, constraints, patterns, shards
from ._compat import GUARD_NAMES
from ._state import Held
from .constrain import rules_of
from .errors import HollowError, located
from .freeze import Frozen
from .nn import HollowLinear
from .patterns import Diagonal, from_spec
from .rules import Rule, Zeros


@dataclass(frozen=True, repr=False)
class AuditRow:
    """One 2-D (or batched) floating parameter.

    ``held_max`` is the largest |value| on the pattern's entries, or, for an unconstrained square
    weight, on its main diagonal (None for other unconstrained weights). ``violated`` is true
    when a held entry is not 0.0. ``sparsity`` is the fraction of the parameter's entries the
    pattern holds (a pruning mask's sparsity; None when unconstrained). A module's parameter
    held to another rule (`torch_hollow.freeze_`) shows the rule as ``pattern``; its
    ``held_max`` is the largest change restoring the rule would make, ``violated`` whether any.

    A weight checked against a rule asked for (``audit(..., nm=...)`` or ``mask=...``) also has
    ``zeros``, the fraction of its entries that are 0.0 (-0.0 counts as 0.0), and
    ``violations``: the N:M groups with fewer than N zeros, or the masked entries that are not
    0.0. Its ``held_max`` is, for N:M, the largest |value| that making every group N:M would
    drop (each bad group's N-th smallest |value|; 0.0 when none is bad). Both are None on other
    rows, and the repr shows them only when set.

    Example:
        >>> import torch
        >>> from torch_hollow import audit
        >>> audit({"w": torch.eye(2)})[0]
        AuditRow(name='w', shape=(2, 2), pattern=None, held_max=1.0, violated=False, sparsity=None)
        >>> w = torch.tensor([[0.0, 0.0, 1.0, 2.0], [3.0, 0.0, 4.0, 5.0]])
        >>> audit({"fc.weight": w}, nm="2:4")[0]  # the second group has one zero, not two
        AuditRow(name='fc.weight', shape=(2, 4), pattern='2:4', held_max=3.0, violated=True,
                 sparsity=0.5, zeros=0.375, violations=1)
    """

    name: str
    shape: tuple[int, ...]
    pattern: str | None
    held_max: float | None
    violated: bool
    sparsity: float | None = None
    zeros: float | None = None
    violations: int | None = None

    def __repr__(self) -> str:
        # The six fields of 0.1.0 always, so printed rows read as before; a check's when set.
        shown = [f.name for f in fields(self)]
        shown = shown[:6] + [n for n in shown[6:] if getattr(self, n) is not None]
        return f"AuditRow({', '.join(f'{n}={getattr(self, n)!r}' for n in shown)})"


def audit(
    obj: nn.Module | Mapping[str, object] | str | os.PathLike,
    *,
    trust_pickle: bool = False,
    nm: str | tuple[int, int] | None = None,
    mask: Mapping[str, Tensor] | str | os.PathLike | None = None,
    only: str | None = None,
) -> list[AuditRow]:
    """One row per 2-D (or batched) floating parameter of a model, state dict or checkpoint.

    Patterns come from the hollow modules of a model, or from the metadata torch-hollow writes
    into every state dict it saves (so a ``torch.save``d state dict remembers them). A
    safetensors file carries no such metadata: check its weights against ``nm`` or ``mask``.
    Safetensors files are read one tensor at a time (each shard is memory-mapped, not loaded).

    Args:
        obj: a module, a state dict (or a checkpoint dict holding one under ``"state_dict"`` or
            ``"model"``), or the path of a ``torch.save`` file, a ``.safetensors`` file or a
            directory of safetensors shards (the shards its ``*.safetensors.index.json`` names,
            as ``save_pretrained`` writes, or else every ``*.safetensors`` file in it).
        trust_pickle: load a pickled model from ``obj`` with ``weights_only=False``. Only for
            files you trust.
        nm: ``"N:M"`` (or ``(N, M)``): in every chosen weight, at least N of every M
            consecutive entries along the last dimension must be 0.0 (``"2:4"``: NVIDIA's
            2:4). Chosen by default: the 2-D tensors named ``*weight`` whose name contains
            none of ``embed``, ``norm``, ``lm_head`` (case-insensitive): what SparseGPT and
            Wanda prune in a transformer.
        mask: a mapping, or the path of a safetensors or ``torch.save`` file, of bool tensors
            keyed by parameter name, True where the weight is free (``prune``'s and `Mask`'s
            convention): every entry where it is False must be 0.0. ``prune``'s ``NAME_mask``
            tensors (float, 1.0 = kept) count for ``NAME``. Every tensor it names is chosen.
        only: with ``nm`` or ``mask``, choose only the tensors whose name matches this regular
            expression (``re.search``), instead of the defaults above.

    Returns:
        Rows in parameter order (file order for a checkpoint, shard by shard).

    Raises:
        HollowError: the file cannot be read as a checkpoint; ``nm`` is not ``N:M``; both
            ``nm`` and ``mask`` are given, or ``only`` without either; a chosen weight's last
            dimension is not a multiple of M; a mask names a tensor the checkpoint lacks, is
            not bool, or has another shape than its tensor. Exactness: a held entry is fine
            when it equals 0.0 (so -0.0 is fine, NaN is not).

    Example:
        >>> import torch
        >>> from torch_hollow import HollowLinear, audit
        >>> model = torch.nn.Sequential(HollowLinear(3, 3), torch.nn.Linear(3, 3))
        >>> [(r.name, r.pattern, r.violated) for r in audit(model.state_dict())]
        [('0.weight', 'Diagonal(offset=0)', False), ('1.weight', None, False)]
        >>> w = torch.tensor([[0.0, 1.0, 0.0, 2.0]])
        >>> [(r.pattern, r.violations) for r in audit({"fc.weight": w}, nm="2:4")]
        [('2:4', 0)]
        >>> allowed = {"fc.weight": w != 0}  # True = free
        >>> [(r.pattern, r.violations, r.held_max) for r in audit({"fc.weight": w}, mask=allowed)]
        [('mask', 0, 0.0)]
    """
    with contextlib.ExitStack() as stack:
        source = _source(obj, trust_pickle, stack)
        check = _asked(source.names, nm, mask, only, trust_pickle, stack)
        rows = []
        for name in source.names:
            t = source.get(name)
            row = check(name, t)
            if row is None and t.dim() >= 2 and t.is_floating_point():
                row = _row(name, t, source.rules.get(name))
            if row is not None:
                rows.append(row)
        return rows


@dataclass(frozen=True)
class _Source:
    """The tensors of a module, state dict or checkpoint, by name, and the rules recorded."""

    names: list[str]
    get: Callable[[str], Tensor]
    rules: dict[str, Rule]


def _source(obj: object, trust_pickle: bool, stack: contextlib.ExitStack) -> _Source:
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir():
            return _safetensors(*_shards(path), stack)
        if path.suffix == ".safetensors" and path.is_file():
            return _safetensors([path], {}, stack)
        obj = _load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        tensors = dict(obj.named_parameters())
        rules = {
            f"{prefix}.{name}" if prefix else name: rule
            for prefix, module in obj.named_modules()
            for name, rule in rules_of(module).items()
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
    return _Source(list(tensors), tensors.__getitem__, rules)


def _shards(directory: Path) -> tuple[list[Path], dict[str, str]]:
    """The shard files of a checkpoint directory, and its index's ``weight_map`` (or {})."""
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise HollowError(
            f"torch_hollow: {str(directory)!r} holds {len(indexes)} safetensors indexes "
            f"({', '.join(p.name for p in indexes)}). Fix: pass the directory of one checkpoint."
        )
    if not indexes:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise HollowError(
                f"torch_hollow: {str(directory)!r} holds no .safetensors file. Fix: pass a "
                "checkpoint file, or a directory of safetensors shards."
            )
        return files, {}
    try:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        files = sorted({directory / shard for shard in weight_map.values()})
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HollowError(
            f"torch_hollow: {str(indexes[0])!r} is not a safetensors index ({err!r:.80}). Fix: "
            'write it as {"weight_map": {tensor name: shard file}}, as save_pretrained does.'
        ) from None
    for file in files:
        if not file.is_file():
            raise HollowError(
                f"torch_hollow: {indexes[0].name} names the shard {file.name!r}, which is not "
                f"in {str(directory)!r}. Fix: copy the missing shard, or rewrite the index."
            )
    return files, {name: (directory / shard).name for name, shard in weight_map.items()}


def _safetensors(
    files: list[Path], expected: dict[str, str], stack: contextlib.ExitStack
) -> _Source:
    """The tensors of safetensors ``files``; each is read when asked for (``safe_open``)."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise HollowError(
            "torch_hollow: reading .safetensors needs the safetensors package. "
            "Fix: pip install safetensors."
        ) from None
    where: dict[str, tuple[str, object]] = {}
    for file in files:
        try:
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
        except Exception as err:  # safetensors raises its own error types
            raise HollowError(
                f"torch_hollow: {str(file)!r} cannot be read as safetensors ({err}). Fix: "
                "check the file (a partial download?)."
            ) from None
        for key in handle.keys():
            if key in where:
                raise HollowError(
                    f"torch_hollow: the tensor {key!r} is in both {where[key][0]!r} and "
                    f"{file.name!r}. Fix: pass the directory of one checkpoint."
                )
            where[key] = (file.name, handle)
    for key, shard in expected.items():
        if where.get(key, ("",))[0] != shard:
            raise HollowError(
                f"torch_hollow: the index puts {key!r} in {shard!r}, which does not hold it. "
                "Fix: rewrite the index, or re-save the checkpoint."
            )
    return _Source(list(where), lambda key: where[key][1].get_tensor(key), {})


def _asked(
    names: list[str],
    nm: str | tuple[int, int] | None,
    mask: Mapping[str, Tensor] | str | os.PathLike | None,
    only: str | None,
    trust_pickle: bool,
    stack: contextlib.ExitStack,
) -> Callable[[str, Tensor], AuditRow | None]:
    """The check asked for: a row for each chosen tensor, None for the others."""
    if nm is not None and mask is not None:
        raise HollowError(
            "torch_hollow: audit() checks nm or mask, not both at once. Fix: run the check "
            "twice (torch-hollow check PATH --nm N:M, then --mask FILE)."
        )
    if only is not None and nm is None and mask is None:
        raise HollowError(
            "torch_hollow: only chooses the weights an nm or mask check applies to, and "
            "neither is given. Fix: add nm='2:4' (--nm 2:4) or mask=FILE (--mask FILE)."
        )
    matches = _matcher(only)
    if nm is not None:
        n, m = _parse_nm(nm)
        chosen = _pruned_by_default if matches is None else lambda name, t: matches(name)
        return lambda name, t: _nm_row(name, t, n, m) if _matrix(t) and chosen(name, t) else None
    if mask is not None:
        return _mask_check(names, mask, matches, trust_pickle, stack)
    return lambda name, t: None


_NOT_PRUNED = re.compile(r"embed|norm|lm_head", re.IGNORECASE)


def _pruned_by_default(name: str, t: Tensor) -> bool:
    # What SparseGPT and Wanda prune in a transformer: the linear layers' weights.
    return t.dim() == 2 and name.endswith("weight") and not _NOT_PRUNED.search(name)


def _matrix(t: Tensor) -> bool:
    return t.dim() >= 2 and t.is_floating_point()


def _matcher(only: str | None) -> Callable[[str], bool] | None:
    if only is None:
        return None
    try:
        pattern = re.compile(only)
    except re.error as err:
        raise HollowError(
            f"torch_hollow: only={only!r} is not a regular expression ({err}). Fix: pass one "
            r"that re.search finds in the names to check, e.g. 'mlp\.'."
        ) from None
    return lambda name: pattern.search(name) is not None


def _parse_nm(nm: str | tuple[int, int]) -> tuple[int, int]:
    found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", nm) if isinstance(nm, str) else None
    n, m = (int(found[1]), int(found[2])) if found else (nm if isinstance(nm, tuple) else (0, 0))
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m):
        raise HollowError(
            f"torch_hollow: nm={nm!r} is not an N:M sparsity. Fix: pass 'N:M' with "
            "1 <= N <= M, N zeros in every M consecutive entries, e.g. '2:4'."
        )
    return n, m


# Entries per pass over a large weight: bounds the temporaries (a few bytes per entry of this).
_CHUNK = 1 << 22


def _nm_row(name: str, t: Tensor, n: int, m: int) -> AuditRow:
    shape = tuple(t.shape)
    if shape[-1] % m:
        raise located(
            "",
            name,
            shape,
            f"its last dimension ({shape[-1]}) is not a multiple of {m}, so it has no {n}:{m} "
            "groups",
            "choose the weights to check with only= (--only REGEX)",
        )
    groups = shards.gather(t.detach()).reshape(-1, m)
    bad, zeros, largest = 0, 0, 0.0
    for chunk in groups.split(max(1, _CHUNK // m)):
        per_group = (chunk == 0).sum(-1)
        zeros += int(per_group.sum())
        short = per_group < n
        if short.any():
            bad += int(short.sum())
            # What making the group N:M drops at least: its N-th smallest |value|.
            dropped = chunk[short].float().abs().kthvalue(n, dim=-1).values  # NaN: largest
            largest = _worse(largest, dropped.max().item())
    share = zeros / t.numel() if t.numel() else 0.0
    return AuditRow(name, shape, f"{n}:{m}", largest, bad > 0, n / m, share, bad)


def _mask_check(
    names: list[str],
    mask: Mapping[str, Tensor] | str | os.PathLike,
    matches: Callable[[str], bool] | None,
    trust_pickle: bool,
    stack: contextlib.ExitStack,
) -> Callable[[str, Tensor], AuditRow | None]:
    masks = _source(mask, trust_pickle, stack)
    present = set(names)
    keys = {}  # tensor name -> its mask's key
    for key in masks.names:
        stripped = key.removesuffix("_mask")  # prune's NAME_mask
        name = stripped if key not in present and stripped in present else key
        if matches is not None and not matches(name):
            continue
        if name not in present:
            raise HollowError(
                f"torch_hollow: the mask has {key!r}, but the checkpoint has no tensor {name!r}. "
                "Fix: key each mask by its tensor's name in the checkpoint (as "
                "model.named_parameters() names it), or drop it."
            )
        keys[name] = key

    def check(name: str, t: Tensor) -> AuditRow | None:
        if name not in keys:
            return None
        return _mask_row(name, t, _allowed(name, keys[name], masks.get(keys[name]), t))

    return check


def _allowed(name: str, key: str, mask: Tensor, t: Tensor) -> Tensor:
    """The mask of ``key`` as bool, True = free, checked against its tensor ``t``."""
    shape = tuple(t.shape)
    if not _matrix(t):
        raise located(
            "",
            name,
            shape,
            f"has a mask, but is a {t.dtype} tensor of {t.dim()} dims and "
            "audit checks floating tensors of at least 2 dims",
            "drop its mask",
        )
    if mask.dtype != torch.bool and not key.endswith("_mask"):
        raise located(
            "",
            name,
            shape,
            f"its mask {key!r} is a {mask.dtype} tensor, not bool",
            "save masks as bool, True where the weight is free (or name prune's float masks "
            "NAME_mask)",
        )
    if tuple(mask.shape) != shape:
        raise located(
            "",
            name,
            shape,
            f"its mask {key!r} has shape {tuple(mask.shape)}",
            f"save a mask of the tensor's shape {shape}",
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _mask_row(name: str, t: Tensor, allowed: Tensor) -> AuditRow:
    values = shards.gather(t.detach()).reshape(-1)
    free = allowed.to(values.device).reshape(-1)
    bad, zeros, largest = 0, 0, 0.0
    for part, part_free in zip(values.split(_CHUNK), free.split(_CHUNK), strict=True):
        zero = part == 0
        zeros += int(zero.sum())
        broken = part[~(zero | part_free)].float().abs()
        if broken.numel():
            bad += broken.numel()
            largest = _worse(largest, broken.max().item())
    numel = max(values.numel(), 1)
    held = values.numel() - int(free.sum())
    return AuditRow(
        name, tuple(t.shape), "mask", largest, bad > 0, held / numel, zeros / numel, bad
    )


def _worse(largest: float, value: float) -> float:
    # As Pattern.max_abs: a NaN is reported as NaN, whatever else is found.
    return value if math.isnan(value) or value > largest else largest


def _row(name: str, t: Tensor, rule: Rule | None) -> AuditRow:
    shape = tuple(t.shape)
    t = shards.gather(t.detach())  # a DTensor's global values (a collective: audit's contract)
    if rule is None:
        if shape[-1] != shape[-2]:
            return AuditRow(name, shape, None, None, False)
        return AuditRow(name, shape, None, Diagonal(0).max_abs(t), False)
    count, largest = rule.violations(t)
    held = int(rule.pattern.held_mask(shape, t.device).sum())
    shown = repr(rule.pattern) if isinstance(getattr(rule, "local", rule), Zeros) else repr(rule)
    return AuditRow(name, shape, shown, largest, count > 0, held / t.numel())


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
            Frozen,
            *(getattr(patterns, name) for name in patterns.__all__ if name != "from_spec"),
            *(getattr(constraints, name) for name in constraints.__all__ if name[0].isupper()),
            *(getattr(_hooks, name) for name in _hooks.HOOKS),
        )
    },
    "builtins.range": range,  # Rows and Cols keep their indices as ranges
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
    """The rows as an aligned table, or as JSON.

    Rows checked against ``nm`` or ``mask`` add two columns: the share of entries that are 0.0,
    and the violations (N:M groups short of zeros, or masked entries not 0.0).

    Example:
        >>> import torch
        >>> from torch_hollow import audit
        >>> from torch_hollow.audit import format_audit
        >>> w = torch.tensor([[0.0, 1.0, 0.0, 2.0]])
        >>> print(format_audit(audit({"fc.weight": w, "fc.bias": w[0]}, nm="2:4")))
        parameter  shape  pattern  held   max |held|  status  zeros  violations
        ---------  -----  -------  -----  ----------  ------  -----  ----------
        fc.weight  1x4    2:4      50.0%  0           ok      50.0%  0
    """
    if as_json:
        return json.dumps([asdict(r) for r in rows], indent=2)
    checked = any(r.zeros is not None for r in rows)
    head = ("parameter", "shape", "pattern", "held", "max |held|", "status")
    head += ("zeros", "violations") if checked else ()
    body = [
        (
            r.name,
            "x".join(map(str, r.shape)),
            r.pattern or "-",
            "-" if r.sparsity is None else f"{100 * r.sparsity:.1f}%",
            "-" if r.held_max is None else f"{r.held_max:.3g}",
            "VIOLATED" if r.violated else ("ok" if r.pattern else "unconstrained"),
        )
        + (
            (
                "-" if r.zeros is None else f"{100 * r.zeros:.1f}%",
                "-" if r.violations is None else str(r.violations),
            )
            if checked
            else ()
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
