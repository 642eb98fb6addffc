"""One version: ``torch_hollow.__version__``, what pip installed, and the CHANGELOG agree."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch_hollow

ROOT = Path(__file__).resolve().parents[1]


def test_version_has_one_source():
    assert importlib.metadata.version("torch-hollow") == torch_hollow.__version__
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()


def test_changelog_has_a_section_for_the_version():
    assert f"## [{torch_hollow.__version__}] - " in (ROOT / "CHANGELOG.md").read_text()
