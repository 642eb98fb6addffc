"""Site build hooks: the command-line page and the docstrings' ``Example:`` sections.

The command-line page is written at build time from the parser itself, so it cannot drift from
``torch-hollow --help``. The docstrings title their doctests ``Example:`` (STYLE.md); griffe's
Google parser knows only ``Examples:``, so `ExampleSections` (a griffe extension named in
mkdocs.yml) renames the title before parsing.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any

import griffe

CLI_MARKER = "<!-- torch-hollow --help -->"
CLI_COMMANDS = ([], ["demo"], ["check"], ["bench"])


class ExampleSections(griffe.Extension):
    """``Example:`` sections of the docstrings parsed as griffe's ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = re.sub(
                r"^(\s*)Example:$", r"\1Examples:", obj.docstring.value, flags=re.M
            )


def _help(argv: list[str]) -> str:
    from torch_hollow.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    return out.getvalue().rstrip()


def cli_reference() -> str:
    """The help of ``torch-hollow`` and of each command, as Markdown."""
    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal: fix it for a stable page
    os.environ["NO_COLOR"] = "1"
    parts = []
    for argv in CLI_COMMANDS:
        command = " ".join(["torch-hollow", *argv])
        parts.append(f"## `{command}`\n\n```text\n$ {command} --help\n{_help(argv)}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
