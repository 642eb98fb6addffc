"""The README and the site's pages (docs/*.md): their Python examples run as written.

The docs pages hold the text; README.md is a front page that links to them and that no page
includes. Its short copies (the demo's table, the set-up commands) must match their pages, and
its API table must name every public name. Blocks that cannot run here (shell, torchrun) are
fenced as ``bash``, not ``python``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import torch_hollow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
SOURCES = [README, *PAGES]
BLOCKS = [
    (f"{path.relative_to(ROOT)}[python block {index}]", code)
    for path in SOURCES
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))
]


def _section(path: Path, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of that level."""
    return path.read_text().split(f"\n## {heading}\n")[1].split("\n## ")[0]


def _table(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_readme_and_pages_have_examples():
    names = {name.split("[")[0] for name, _ in BLOCKS}
    pages = ["getting-started", "faq", "patterns", "pruning", "works-with"]
    assert {"README.md", *(f"docs/{page}.md" for page in pages)} <= names


@pytest.mark.parametrize("name, code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_example_runs(name, code):
    exec(compile(code, name, "exec"), {})


def test_no_page_includes_the_readme():
    for page in PAGES:
        assert "README.md" not in "".join(re.findall(r"--8<--.*", page.read_text())), page.name


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_links_exist():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_readme_api_table_names_every_public_name():
    cells = [row.split(" | ")[0] for row in _table(_section(README, "API"))]
    named = set(re.findall(r"\w+", " ".join(cells)))
    missing = [name for name in torch_hollow.__all__ if name not in named]
    assert not missing, f"README's API table does not name {missing}"


def test_readme_copies_match_their_pages():
    demo = _table(_section(README, "Why the naive answer fails"))
    page = _table(_section(ROOT / "docs/getting-started.md", "Why it fails"))
    assert len(demo) >= 5 and demo == page
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)[0]
    assert "pip install -e '.[test]'" in commands
    assert f"```bash\n{commands}```" in _section(ROOT / "docs/index.md", "Install")
