"""The one error and the one warning torch-hollow raises, and where their context is added.

Inside the package a refusal is a `Cause`: what is wrong and the fix, in a few words, with no
location. The public verb (or the guard's step hook, or a layer's forward: the boundary a user
called through) catches it and raises a `HollowError` that adds, once, the module path, the
parameter and its shape (`at`), as einops does at its API boundary.
"""

from __future__ import annotations

__all__ = ["Cause", "HollowError", "HollowWarning", "at", "located", "script_refusal"]

from collections.abc import Iterator
from contextlib import contextmanager


class HollowError(ValueError):
    """A refused request; the message names module, parameter, shape, the problem and the fix."""


class HollowWarning(UserWarning):
    """Something a user must know, e.g. non-zero values dropped from a loaded checkpoint."""


class Cause(HollowError):
    """A refusal from the internals: ``what`` is wrong and the ``fix``, without the location.

    A `HollowError` itself, so that one that reaches a user unlocated still reads as one.
    """

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"torch_hollow: {what}. Fix: {fix}.")
        self.what, self.fix = what, fix


def located(path: str, name: str, shape: object, what: str, fix: str) -> HollowError:
    """A `HollowError` for parameter ``name`` of the module at ``path`` (shape if known)."""
    target = f"{path}.{name}" if path else name
    where = f"{target!r} (shape {tuple(shape)})" if shape is not None else repr(target)  # type: ignore[arg-type]
    return HollowError(f"torch_hollow: {where}: {what}. Fix: {fix}.")


@contextmanager
def at(path: str, name: str, shape: object = None) -> Iterator[None]:
    """Re-raise a `Cause` from the block as a `HollowError` located at ``path.name``."""
    try:
        yield
    except Cause as cause:
        raise located(path, name, shape, cause.what, cause.fix) from None


def script_refusal(kind: str, names: list[str]) -> HollowError:
    """The `HollowError` for ``torch.jit.script`` on a hollow module."""
    return HollowError(
        f"torch_hollow: torch.jit.script cannot compile a hollow {kind} (held: "
        f"{', '.join(names)}): its forward keeps the held entries at 0.0 with Python that "
        "TorchScript does not support. Fix: use torch.jit.trace(model, example_inputs), "
        "torch.export.export or torch.compile; each computes with the zeros."
    )
