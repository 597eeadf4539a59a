"""A real browser for the UI tests: Playwright driving Debian's Chromium (never a downloaded
browser build). Chromium comes from the system packages (``make browser-deps``, run by ``make
test``); without it these tests fail with that instruction instead of being skipped.
A screenshot of every test is saved under ``$RADOPS_UI_SCREENSHOTS`` (default: the session's
temporary folder) and its path printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "Debian's Chromium is not installed: run `make browser-deps` (apt-get install chromium);"
        " the UI tests drive the real browser and are never skipped"
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to run as root (containers, CI)
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("RADOPS_UI_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(
    browser: Any, screenshots: Path, running_stack: Any, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """A browser page that logs in to the stack's MLflow server (basic auth) as a user would,
    with the project's admin password (``.radops/mlflow-admin-password``)."""
    from pipeline import tracking_auth

    login = tracking_auth.client_credentials(
        running_stack.settings["MLFLOW_TRACKING_URI"], running_stack.root
    )
    context = browser.new_context(
        viewport={"width": 1600, "height": 1000},
        http_credentials={
            "username": login[tracking_auth.USERNAME_ENV],
            "password": login[tracking_auth.PASSWORD_ENV],
        },
    )
    page = context.new_page()
    try:
        yield page
    finally:
        shot = screenshots / f"{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        context.close()
