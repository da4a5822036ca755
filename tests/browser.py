"""The real-browser tests' Chromium: Debian's package (`make test` installs it), driven by Playwright
(its own browser downloads are never used). AFTERCARE_TEST_CHROMIUM names another build of it (say,
unpacked where it cannot be installed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

CHROMIUM = Path(os.environ.get("AFTERCARE_TEST_CHROMIUM", "/usr/bin/chromium"))
PHONE = {"width": 390, "height": 844}
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_or_skip() -> None:
    """Skip without Chromium or Playwright; under CI=true a missing Chromium is a failure."""
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is required under CI=true (make test installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (make test installs it: apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")


def launch(pw: Any) -> Any:
    """Headless Chromium from a `sync_playwright()` handle."""
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
