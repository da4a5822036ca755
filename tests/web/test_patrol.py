"""The web app's patrol thread (aftercare/web/patrol.py): each job at its own pace, a failing job
tried again at its next turn, a hung job reported and never holding up the app."""

from __future__ import annotations

import logging
import threading
import time

from aftercare.web import patrol as patrol_mod
from aftercare.web.patrol import Patrol


def test_each_job_runs_at_its_own_pace_measured_from_its_last_start():
    patrol = Patrol()
    fast: list[float] = []
    slow: list[float] = []
    patrol.add("fast", 2.0, lambda: fast.append(1))
    patrol.add("slow", 60.0, lambda: slow.append(1))
    assert patrol.run_due(now=1000.0) == ["fast", "slow"]
    assert patrol.run_due(now=1001.0) == []
    assert patrol.run_due(now=1002.0) == ["fast"]
    assert patrol.run_due(now=1059.9) == ["fast"]
    assert patrol.run_due(now=1060.0) == ["slow"]  # fast ran at 1059.9: not its turn
    assert (len(fast), len(slow)) == (3, 2)


def test_a_failing_job_is_logged_and_tried_again_and_the_others_still_run(caplog):
    patrol = Patrol()
    calls = {"flaky": 0, "steady": 0}

    def flaky() -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("Prefect is down")

    patrol.add("flaky", 1.0, flaky)
    patrol.add("steady", 1.0, lambda: calls.__setitem__("steady", calls["steady"] + 1))
    with caplog.at_level(logging.WARNING, logger="aftercare.web.patrol"):
        patrol.run_due(now=0.0)
    flaky_job, steady_job = patrol.jobs
    assert flaky_job.failures == 1 and "Prefect is down" in (flaky_job.last_error or "")
    assert steady_job.runs == 1
    assert "tried again" in caplog.text
    patrol.run_due(now=1.0)
    assert flaky_job.runs == 1 and flaky_job.last_error is None and calls == {"flaky": 2, "steady": 2}


def test_the_thread_runs_jobs_off_the_callers_thread_and_stops():
    patrol = Patrol(tick_s=0.01)
    seen: list[str] = []
    patrol.add("note the thread", 0.05, lambda: seen.append(threading.current_thread().name))
    patrol.start()
    time.sleep(0.3)
    patrol.stop()
    count = len(seen)
    assert 3 <= count <= 8  # every 0.05 s over 0.3 s, not every tick
    assert set(seen) == {"aftercare-patrol"}
    time.sleep(0.1)
    assert len(seen) == count  # stopped


def test_a_hung_job_is_reported_and_stop_does_not_wait_for_it(caplog, monkeypatch):
    release = threading.Event()
    patrol = Patrol(tick_s=0.01)
    patrol.add("hangs", 1000.0, lambda: release.wait(30), warn_after_s=0.05)
    real_wait = threading.Event.wait

    def quick_watch(self: threading.Event, timeout: float | None = None) -> bool:
        return real_wait(self, 0.05 if timeout == 5.0 else timeout)

    monkeypatch.setattr(patrol_mod.threading.Event, "wait", quick_watch)
    with caplog.at_level(logging.ERROR, logger="aftercare.web.patrol"):
        patrol.start()
        deadline = time.monotonic() + 5
        while "it is hung" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        patrol.stop(timeout_s=0.2)
        assert time.monotonic() - started < 1.0
    release.set()
    assert "patrol job 'hangs' has run for" in caplog.text


def test_the_app_starts_its_patrol_with_it_and_stops_it_on_shutdown(settings):
    from fastapi.testclient import TestClient

    from aftercare.web.app import create_app
    from aftercare.web.wake import NoWaker

    calls: list[str] = []
    patrol = Patrol(tick_s=0.01)
    patrol.add("would call Prefect", 0.02, lambda: calls.append(threading.current_thread().name))
    app = create_app(settings, waker=NoWaker(), patrol=patrol)
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("/healthz").status_code == 200  # webhooks and pages answer meanwhile
    stopped_at = len(calls)
    time.sleep(0.1)
    assert stopped_at >= 2 and len(calls) == stopped_at
    assert set(calls) == {"aftercare-patrol"}
