"""The real-browser tests' Chromium: Debian's package (`make test` installs it), driven by Playwright
(its own browser downloads are never used). AFTERCARE_TEST_CHROMIUM names another build of it (say,
unpacked where it cannot be installed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aftercare.runtime import Runtime
from aftercare.settings import Settings
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


@dataclass
class Env:
    """The web app served on loopback for a browser, and a runtime on its database."""

    rt: Runtime
    url: str


@contextmanager
def served_for_chromium(settings: Settings) -> Iterator[Env]:
    """Skip or fail as `chromium_or_skip` says; otherwise serve the real web app (no Prefect waker) on
    a loopback port, with customer links built on that address."""
    from aftercare.web.app import create_app
    from aftercare.web.wake import NoWaker
    from tests.web.approval_helpers import Served, loopback_socket

    chromium_or_skip()
    sock = loopback_socket()
    host, port = sock.getsockname()[:2]
    served = settings.model_copy(update={"public_url": f"http://{host}:{port}"})
    rt = Runtime.build(served)
    try:
        with Served(create_app(served, waker=NoWaker()), sock) as web:
            yield Env(rt, web.url)
    finally:
        rt.engine.dispose()
