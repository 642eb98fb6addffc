"""The documentation site builds with ``mkdocs build --strict`` and renders in a real browser.

The built site is served on 127.0.0.1 and headless Chromium (Debian's ``chromium``) loads the
API page and the Getting-started page: ``HollowLinear``'s docstring and the demo's table must be
in the rendered page. Screenshots are kept in ``site/screenshots/`` for a person to look at.
Needs the docs extra (``pip install -e '.[docs]'``). Without Chromium the test is skipped, except
under CI (the ``CI`` variable set), where it fails; ``.ci/package`` runs it.
"""

from __future__ import annotations

import functools
import html
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from torch_hollow import HollowLinear

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI: chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def site() -> Path:
    """The site built by .ci/package (``TORCH_HOLLOW_SITE``), or built here into site/."""
    built = os.environ.get("TORCH_HOLLOW_SITE")
    if built:
        return Path(built).resolve()
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", "site"],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    return ROOT / "site"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def url(site: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _load(chromium: str, url: str, screenshot: Path) -> str:
    """The page's text as Chromium renders it (scripts run); a screenshot on the side."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        common = [
            chromium,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--window-size=1280,2400",
        ]
        run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=120)
        dom = run([*common, "--dump-dom", url])
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = run([*common, f"--screenshot={screenshot}", url])
        assert shot.returncode == 0 and screenshot.stat().st_size > 0, shot.stderr[-2000:]
    return dom.stdout


def _text(markup: str) -> str:
    """Markup (HTML or Markdown) as plain words: tags, backticks and bold marks dropped."""
    plain = html.unescape(re.sub(r"<[^>]+>", "", markup)).replace("`", "").replace("**", "")
    return " ".join(plain.split())


def test_api_page_renders_hollow_linear_docstring(chromium, site, url):
    dom = _load(chromium, f"{url}/api/", site / "screenshots" / "api.png")
    assert 'id="torch_hollow.HollowLinear"' in dom
    text = _text(dom)
    summary, details = inspect.getdoc(HollowLinear).split("\n\n")[:2]
    assert _text(summary) in text
    assert _text(details) in text
    assert ">>> layer = HollowLinear(4, 4)" in text  # its example, as a code block


def test_getting_started_page_renders_the_demo_table(chromium, site, url):
    dom = _load(chromium, f"{url}/getting-started/", site / "screenshots" / "getting-started.png")
    page = (ROOT / "docs" / "getting-started.md").read_text()
    why = page.split("\n## Why it fails\n")[1].split("\n## ")[0]
    rows = [line.strip("|").split(" | ") for line in why.splitlines() if line.startswith("| ")]
    assert len(rows) >= 4, "the demo table (header + optimizers) was not found on its page"
    cells = [
        "".join(_text(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S))
        for row in re.findall(r"<tr>(.*?)</tr>", dom, re.S)
    ]
    for row in rows:
        assert "".join(_text(c) for c in row) in cells, f"demo table row not rendered: {row}"
