"""The Python examples of the README and of the site's own pages (docs/*.md) run as written.

A page that includes a README section (``--8<-- "README.md:NAME"``) is covered by the README's
blocks; blocks that cannot run here (shell, torchrun) are fenced as ``bash``, not ``python``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{path.relative_to(ROOT)}[python block {index}]", code)
    for path in SOURCES
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))
]


def test_readme_and_pages_have_examples():
    names = {name.split("[")[0] for name, _ in BLOCKS}
    assert {"README.md", "docs/getting-started.md", "docs/faq.md"} <= names


@pytest.mark.parametrize("name, code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_example_runs(name, code):
    exec(compile(code, name, "exec"), {})
