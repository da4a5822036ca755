"""The web app's patrol: a thread of its own that asks Prefect for the runs the database says are
owed, so that no order ever waits behind a Prefect call.

Why here and not in process-inbox: the SQLite fault suite showed a process-inbox run hang for twelve
minutes right after its review sweep asked Prefect to create and restart review runs, holding the
drain slot while orders waited; and runs left `Submitting` by a killed worker sat there while no
process-inbox run got to run at all. The order path now makes no Prefect call of its own; this
long-lived process does, one job after another, each job at its own pace, each bounded by short
Prefect timeouts (tasks/review_sweep.prefect_briefly). A job that fails is logged and tried again at
its next turn; a job that hangs holds up only the jobs behind it in this thread (never the webhooks,
never the waker), and is reported as hung once it has run past its `warn_after_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    every_s: float
    run: Callable[[], object]
    warn_after_s: float = 60.0
    last_started: float = float("-inf")
    runs: int = 0
    failures: int = 0
    last_error: str | None = None
    last_result: object = None


@dataclass
class Patrol:
    """Runs each job every `every_s` (measured from its last start) in one daemon thread."""

    jobs: list[Job] = field(default_factory=list)
    tick_s: float = 0.5
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _current: tuple[str, float] | None = None
    _watchdog: threading.Thread | None = None

    def add(self, name: str, every_s: float, run: Callable[[], object], warn_after_s: float = 60.0) -> Job:
        job = Job(name, every_s, run, warn_after_s)
        self.jobs.append(job)
        return job

    def start(self) -> None:
        if self._thread is not None or not self.jobs:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="aftercare-patrol", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="aftercare-patrol-watch", daemon=True)
        self._watchdog.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(timeout_s)  # a job stuck in a call is left behind: the thread is a daemon
        self._thread = self._watchdog = None

    def run_due(self, now: float | None = None) -> list[str]:
        """Run every job whose turn has come (once each); the names of those run."""
        ran = []
        for job in self.jobs:
            at = time.monotonic() if now is None else now
            if at - job.last_started < job.every_s or self._stop.is_set():
                continue
            job.last_started = at
            self._current = (job.name, time.monotonic())
            try:
                job.last_result = job.run()
                job.runs += 1
                job.last_error = None
            except Exception as exc:  # Prefect away, the database restarting: next turn
                job.failures += 1
                job.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("patrol job %r failed (tried again in %.0f s): %s", job.name, job.every_s, exc)
            finally:
                self._current = None
            ran.append(job.name)
        return ran

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_due()
            self._stop.wait(self.tick_s)

    def _watch(self) -> None:
        warned: tuple[str, float] | None = None
        while not self._stop.wait(5.0):
            current = self._current
            if current is None or current == warned:
                continue
            name, since = current
            job = next((j for j in self.jobs if j.name == name), None)
            if job is not None and time.monotonic() - since > job.warn_after_s:
                log.error("patrol job %r has run for %.0f s: it is hung", name, time.monotonic() - since)
                warned = current
