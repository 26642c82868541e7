"""tests/ui: Debian's chromium, driven headless by Playwright (never a browser Playwright downloads),
against a real `opendepot serve` with builds from the official depot CLI. Screenshots go to
OPENDEPOT_UI_ARTIFACTS (default build/ui-artifacts, git-ignored)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.server import REPO, Server

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("OPENDEPOT_CHROMIUM", ""), *CHROMIUM_CANDIDATES):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    directory = Path(os.environ.get("OPENDEPOT_UI_ARTIFACTS", REPO / "build" / "ui-artifacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# Per module, not per session: Playwright's sync API keeps its event loop marked running in this thread
# while it is open, so tests collected after tests/ui that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (./dev setup installs it)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (./dev setup installs the dev extras)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        except Error as exc:
            pytest.skip(f"chromium at {path} cannot start: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module's tests (SQLite: the pages read through the same services on either store)."""
    srv = Server(data_dir=tmp_path_factory.mktemp("ui") / "data", database_url=None).start()
    try:
        yield srv
    finally:
        srv.stop()
