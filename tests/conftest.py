"""Shared options and helpers: ``--device cuda`` runs the suite on a GPU.

The helpers build the held entries as a boolean mask by index arithmetic, independently of
torch_hollow's own patterns, so the tests compare against a reference computed another way.
"""

from __future__ import annotations

import _hypothesis_profiles  # noqa: F401  (--hypothesis-profile=long must exist early)
import pytest
import torch
from torch import Tensor


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device to test on (cpu, cuda)")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda given but torch.cuda.is_available() is False")
    return torch.device(name)


def diag_mask(rows: int, cols: int, offset: int = 0, device: object = None) -> Tensor:
    """True on the entries (i, i + offset) of a rows x cols matrix."""
    i = torch.arange(rows, device=device)[:, None]
    j = torch.arange(cols, device=device)[None, :]
    return j - i == offset


def assert_bitwise_zero(t: Tensor, mask: Tensor) -> None:
    """Every entry of ``t`` under ``mask`` is +0.0 exactly: equal to zero, no sign bit."""
    values = t.detach()[..., mask.to(t.device)]
    assert values.numel() > 0, "the mask holds no entry: the test would prove nothing"
    bad = (values != 0) | torch.signbit(values)
    assert not bad.any(), f"{int(bad.sum())} held entries are not +0.0: {values[bad][:5]}"


def masked(weight: Tensor, mask: Tensor) -> Tensor:
    """A detached copy of ``weight`` with the entries under ``mask`` set to 0.0."""
    return weight.detach().masked_fill(mask.to(weight.device), 0.0)
