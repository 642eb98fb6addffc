"""torch_hollow._numpy: a NumPy array over a CPU tensor's memory, for the guard's cheap writes.

The alias must be the tensor's own memory with the same layout (a write through it is a write
to the tensor), must refuse what it cannot alias (None), and must leave the storage resizable.
"""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
import torch

from torch_hollow._numpy import numpy_alias

DTYPES = [
    torch.float16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
    torch.int16,
    torch.int32,
    torch.int64,
]


def _base() -> torch.Tensor:
    return torch.arange(60, dtype=torch.float64).reshape(5, 12)


# name -> a view of a fresh (5, 12) tensor
VIEWS = {
    "whole": lambda t: t,
    "transposed": lambda t: t.t(),
    "columns": lambda t: t[:, 1::3],
    "offset block": lambda t: t[2:, 5:9],
    "diagonal": lambda t: t.diagonal(1),
    "batched": lambda t: t.view(5, 3, 4).transpose(0, 2),
    "expanded": lambda t: t[0].expand(3, 12),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view", list(VIEWS))
def test_alias_has_the_views_shape_strides_and_values(view, dtype):
    t = VIEWS[view](_base().to(dtype))
    alias = numpy_alias(t)
    assert alias.shape == tuple(t.shape)
    assert alias.strides == tuple(s * t.element_size() for s in t.stride())
    assert alias.dtype == np.dtype(str(dtype).removeprefix("torch."))
    assert alias.ctypes.data == t.data_ptr()
    assert np.array_equal(alias, t.numpy())


@pytest.mark.parametrize("view", [v for v in VIEWS if v != "expanded"])
def test_writes_go_both_ways(view):
    base = _base()
    t = VIEWS[view](base)
    alias = numpy_alias(t)
    untouched = torch.ones_like(base, dtype=torch.bool)
    VIEWS[view](untouched).fill_(False)
    before = base.clone()
    alias.fill(-1.0)  # through the alias: the tensor sees it, and nothing outside the view moves
    assert (t == -1.0).all() and torch.equal(base[untouched], before[untouched])
    t.fill_(7.0)  # through torch: the alias sees it
    assert (alias == 7.0).all()


def test_writes_through_the_alias_do_not_bump_the_version():
    t = torch.ones(3, 3)
    version = t._version
    numpy_alias(t.diagonal()).fill(0.0)
    assert t._version == version and torch.equal(t, 1 - torch.eye(3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.ones(3, 3, dtype=torch.bfloat16),
        lambda: torch.ones(3, 3, dtype=torch.bool),
        lambda: torch.ones(3, 3, dtype=torch.uint8),
        lambda: torch.ones(3, 3, device="meta"),
        lambda: torch.nn.Parameter(torch.ones(3, 3)),
    ],
    ids=["bfloat16", "bool", "uint8", "meta", "Parameter"],
)
def test_none_for_what_it_cannot_alias(make):
    assert numpy_alias(make()) is None


def test_none_for_a_tensor_subclass():
    class Tagged(torch.Tensor):
        pass

    t = torch.ones(3).as_subclass(Tagged)
    assert type(t) is Tagged and numpy_alias(t) is None
    assert numpy_alias(torch.nn.Parameter(torch.ones(3)).data) is not None  # what the guard passes


def test_none_without_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy raises ImportError
    assert numpy_alias(torch.ones(3)) is None


def test_storage_stays_resizable_unlike_tensor_numpy():
    t = torch.ones(4)
    t.numpy()
    with pytest.raises(RuntimeError, match="not resizable"):
        t.untyped_storage().resize_(0)
    t = torch.ones(4)
    numpy_alias(t)
    t.untyped_storage().resize_(0)  # what FSDP does to the parameters it gathers
    assert t.untyped_storage().nbytes() == 0
    t.untyped_storage().resize_(16)
    assert t.untyped_storage().nbytes() == 16


def test_the_alias_keeps_the_tensor_alive():
    t = torch.arange(6, dtype=torch.float32)
    alias = numpy_alias(t)
    del t
    gc.collect()
    assert alias.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
