"""The command's tooling stays apart: the core never loads it, and it uses only the public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import torch_hollow
from torch_hollow import patterns, rules
from torch_hollow.cli import main

TOOLS = Path(torch_hollow.__file__).parent / "tools"
# What the tools may import from torch_hollow: the names each public module exports.
PUBLIC = {
    "torch_hollow": set(torch_hollow.__all__),
    "torch_hollow.patterns": set(patterns.__all__),
    "torch_hollow.rules": set(rules.__all__),
}


def test_import_torch_hollow_loads_no_tooling():
    code = (
        "import sys, torch_hollow; "
        "print(sorted(m for m in sys.modules if m.startswith(('torch_hollow', 'matplotlib'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert "torch_hollow.patterns" in loaded  # the listing sees the core
    assert [m for m in loaded if m.startswith(("torch_hollow.tools", "matplotlib"))] == []


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every ``from ... import`` in ``path``."""
    package = "torch_hollow.tools"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


@pytest.mark.parametrize("path", sorted(TOOLS.glob("*.py")), ids=lambda p: p.name)
def test_tools_use_only_the_public_api(path):
    for module, names in _imports(path):
        if not module.startswith("torch_hollow") or module.startswith("torch_hollow.tools"):
            continue
        assert module in PUBLIC, f"{path.name} imports {module}"
        assert set(names) <= PUBLIC[module], f"{path.name}: {set(names) - PUBLIC[module]}"
    # No reading the core's storage around the API (``module.__dict__["_hollow_..."]``).
    tree = ast.parse(path.read_text())
    assert not any(isinstance(n, ast.Attribute) and n.attr == "__dict__" for n in ast.walk(tree))
    assert not any(
        isinstance(n, ast.Constant) and str(n.value).startswith("_hollow") for n in ast.walk(tree)
    )


def test_help_names_the_three_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("demo", "bench", "check"))
