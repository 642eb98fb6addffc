"""Every docstring example runs as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import torch_hollow

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(torch_hollow.__path__, "torch_hollow.")
    if info.name != "torch_hollow.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_every_public_name_has_an_example():
    for name in torch_hollow.__all__:
        obj = getattr(torch_hollow, name)
        if callable(obj) and name not in {"HollowError", "HollowWarning"}:
            assert ">>>" in (obj.__doc__ or ""), f"{name} has no runnable example"
