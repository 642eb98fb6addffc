"""NumPy aliases of CPU tensors' memory, for the writes paid at every eager step.

A NumPy call costs a fraction of a torch op from Python (docs/benchmarks.md has the numbers), and
the guard writes the held entries of every stored weight at each eager forward and optimizer step.
"""

from __future__ import annotations

__all__ = ["numpy_alias"]

from typing import Any

import torch
from torch import Tensor

_KINDS = {
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
}


def numpy_alias(t: Tensor) -> Any | None:
    """A NumPy array over ``t``'s memory (same shape and strides), or None.

    None when ``t`` is not a plain CPU tensor, has a dtype NumPy lacks (bfloat16), or NumPy is
    not installed. Unlike ``Tensor.numpy()`` it leaves the storage resizable (FSDP frees and
    regrows the storages of the parameters it gathers). The array keeps ``t`` alive, so the
    storage object stays; callers write through it only right after checking that the
    parameter's ``data_ptr()`` is still the one it was made for.
    """
    kind = _KINDS.get(t.dtype)
    if kind is None or t.device.type != "cpu" or type(t) is not Tensor:
        return None
    try:
        import numpy
    except ImportError:
        return None
    return numpy.asarray(_Alias(t, numpy.dtype(kind).str))  # native byte order, as torch's


class _Alias:
    def __init__(self, t: Tensor, typestr: str) -> None:
        self.tensor = t
        size = t.element_size()
        self.__array_interface__ = {
            "version": 3,
            "shape": tuple(t.shape),
            "strides": tuple(s * size for s in t.stride()),
            "typestr": typestr,
            "data": (t.data_ptr(), False),
        }
