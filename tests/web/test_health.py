"""GET /healthz: ok with a reachable database, 503 without one; `warm` once the pages' warm-up ran."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from aftercare.settings import Settings
from aftercare.web.app import create_app, warm_up
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET


def test_healthz_ok(settings):
    with TestClient(create_app(settings, waker=NoWaker())) as client:
        resp = client.get("/healthz")
        assert resp.status_code == 200
        assert {k: v for k, v in resp.json().items() if k != "warm"} == {"status": "ok", "database": "ok"}
        deadline = time.monotonic() + 60
        while not client.get("/healthz").json()["warm"]:  # the survey page's analysers load meanwhile
            assert time.monotonic() < deadline, "the warm-up never finished"
            time.sleep(0.05)


def test_warm_up_says_done_when_a_step_fails():
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("no dictionary")

    done = threading.Event()
    warm_up([broken, lambda: ran.append("templates")], done)
    assert done.is_set() and ran == ["templates"]  # a failed step neither stops the others nor the signal


def test_healthz_503_when_database_unreachable(tmp_path: Path):
    # Nothing listens on port 1; only the app's engine points there.
    unreachable = Settings(
        environment="test",
        var_dir=tmp_path / "var",
        database_url="postgresql://postgres@127.0.0.1:1/aftercare?connect_timeout=3",
        shopify_webhook_secret=TEST_SECRET,
        wake_prefect=False,
    )
    with TestClient(create_app(unreachable, waker=NoWaker())) as client:
        resp = client.get("/healthz")
    assert resp.status_code == 503
    answer = resp.json()
    assert answer["status"] == "unhealthy"
    assert answer["database"].startswith("unreachable")


def test_healthz_only_answers_get(settings):
    with TestClient(create_app(settings, waker=NoWaker())) as client:
        resp = client.post("/healthz")
    assert resp.status_code == 405


def test_warm_up_starts_no_step_once_the_app_stops():
    ran: list[str] = []
    done, stopping = threading.Event(), threading.Event()
    stopping.set()
    warm_up([lambda: ran.append("pool")], done, stopping)
    assert ran == [] and done.is_set()
