"""The one error and the one warning torch-hollow raises."""

from __future__ import annotations

__all__ = ["HollowError", "HollowWarning"]


class HollowError(ValueError):
    """A refused request; the message names module, parameter, shape, the problem and the fix."""


class HollowWarning(UserWarning):
    """Something a user must know, e.g. non-zero values dropped from a loaded checkpoint."""


def _where(path: str, name: str, shape: object) -> str:
    target = f"{path}.{name}" if path else name
    return f"{target!r} (shape {tuple(shape)})" if shape is not None else repr(target)


def refuse(path: str, name: str, shape: object, what: str, fix: str) -> HollowError:
    """Build a `HollowError` for parameter `name` of the module at `path`."""
    return HollowError(f"torch_hollow: {_where(path, name, shape)}: {what}. Fix: {fix}.")


def script_refusal(kind: str, names: list[str]) -> HollowError:
    """The `HollowError` for ``torch.jit.script`` on a hollow module."""
    return HollowError(
        f"torch_hollow: torch.jit.script cannot compile a hollow {kind} (held: "
        f"{', '.join(names)}): its forward keeps the held entries at 0.0 with Python that "
        "TorchScript does not support. Fix: use torch.jit.trace(model, example_inputs), "
        "torch.export.export or torch.compile; each computes with the zeros."
    )
