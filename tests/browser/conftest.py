"""Browser fixtures: Debian's chromium through Playwright, against a local runtime of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from localruntime.server import Runtime
from tests.browser.chat_page import Backend
from tests.support.runtime import running
from tools import build_web

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP: ViewportSize = {"width": 1100, "height": 760}

# A loaded machine can be slow to paint; no assertion here is about speed.
expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def built_page() -> None:
    """The page as `make web` builds it (cheap when it is up to date), so pytest alone works."""
    assert build_web.main([]) == 0, "building web/ failed: see the output above"


@pytest.fixture(scope="package")
def runtime(tmp_path_factory: pytest.TempPathFactory, built_page: None) -> Iterator[Runtime]:
    """One runtime (offline model, no cron) for the browser tests, on a fresh data folder; each
    test works with users of its own. Package scope: the runtime sets the functions' variables in
    the process environment while it runs, so it must stop before other suites start."""
    with running(tmp_path_factory.mktemp("browser-runtime")) as started:
        yield started


@pytest.fixture
def backend(runtime: Runtime) -> Backend:
    return Backend(runtime.base_url, runtime.store)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    # UTC and en-US make dates and number formats the same on every machine.
    opened = browser.new_context(viewport=DESKTOP, locale="en-US", timezone_id="UTC")
    yield opened
    opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    assert errors == [], f"the page raised: {errors}"
