"""Site build hooks: README links that work on the site, the command-line page, ``Example:``.

The site's pages include sections of README.md, whose links are relative to the repository root
(``docs/benchmarks.md``) or point to the README's own headings (``#works-with``). The tree
processor below rewrites them into the site's pages. The command-line page is written at build
time from the parser itself, so it cannot drift from ``torch-hollow --help``. The docstrings
title their doctests ``Example:`` (STYLE.md); griffe's Google parser knows only ``Examples:``, so
`ExampleSections` (a griffe extension named in mkdocs.yml) renames the title before parsing.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any
from xml.etree.ElementTree import Element

import griffe
from markdown import Extension, Markdown
from markdown.treeprocessors import Treeprocessor

# README headings that the site shows on a page of their own (their anchors are not on the page
# that includes the link).
README_ANCHORS = {
    "speed-and-memory": "benchmarks.md",
    "works-with": "works-with.md",
    "pruning-weights-that-stay-pruned": "pruning.md",
    "the-guarantee": "guarantees.md",
    "patterns-beyond-the-main-diagonal": "patterns.md",
    "any-parameter-of-any-module": "any-parameter.md",
    "distributed": "distributed.md",
    "applications": "applications.md",
}
CLI_MARKER = "<!-- torch-hollow --help -->"
CLI_COMMANDS = ([], ["demo"], ["check"], ["bench"])


class _ReadmeLinks(Treeprocessor):
    """README-relative links: ``docs/X`` -> ``X``; ``#heading`` -> the page showing it."""

    def run(self, root: Element) -> None:
        ids = {el.get("id") for el in root.iter() if el.get("id")}
        for a in root.iter("a"):
            href = a.get("href", "")
            if href.startswith("docs/"):
                a.set("href", href.removeprefix("docs/"))
            elif href.startswith("#") and href[1:] not in ids and href[1:] in README_ANCHORS:
                a.set("href", README_ANCHORS[href[1:]])


class _ReadmeLinksExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # after "toc" (5), which sets the headings' ids; before mkdocs' "relpath" (0), which
        # checks and rewrites links to pages.
        md.treeprocessors.register(_ReadmeLinks(md), "readme_links", 3)


def on_config(config: Any) -> Any:
    config.markdown_extensions.append(_ReadmeLinksExtension())
    return config


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
