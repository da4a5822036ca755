"""process-inbox's artifacts (what was mailed, handed to the warehouse, an order's timeline), posted to
Prefect by a thread of the run's process, so that the drain never waits on Prefect's API.

Why (issue 8, the SQLite bench's receipt stall): the embedded Prefect server's SQLite database was
locked for a minute (its busy timeout is 60 s; `database is locked` in its log), and every API call
waited that long. A draining run's hand-off tasks were posting their artifacts: the loop waits for a
round's tasks before it claims more, so nothing was received or sent for 62 s, while the run held
its drain slot (it was alive), so no other run and not the web app's fallback could drain either.
Orders need none of this: what was done is in the database, the timeline and the outbox whatever
Prefect says. Now a task queues its artifact (with its own run's ids, so the UI shows it on that task
run) and returns; one thread posts the queue in order. The run waits for what is still queued when it
ends, `flush_s` at most: a Prefect that does not answer by then costs those artifacts (logged), not
the orders.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable

from prefect.artifacts import Artifact, MarkdownArtifact, TableArtifact

log = logging.getLogger(__name__)

# Far more than a run makes while Prefect answers (a few per round); beyond it, new ones are dropped.
MAX_QUEUED = 2000


class ArtifactPoster:
    """One daemon thread that posts queued artifacts, each in the context it was queued from (the
    task run's: its ids and its Prefect client)."""

    def __init__(self, max_queued: int = MAX_QUEUED):
        self._queue: queue.Queue[tuple[contextvars.Context, Callable[[], object], str]] = queue.Queue(
            maxsize=max_queued
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.posted = 0
        self.failed = 0
        self.dropped = 0

    def put(self, artifact: Artifact) -> None:
        """Queue `artifact` for posting; never waits on Prefect."""
        label = artifact.key or artifact.description or "artifact"
        try:
            self._queue.put_nowait((contextvars.copy_context(), lambda: artifact.create(_sync=True), label))
        except queue.Full:
            self.dropped += 1
            log.warning("artifact %r dropped: %d already wait for Prefect's API", label, self._queue.qsize())
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="aftercare-artifacts", daemon=True)
                self._thread.start()

    def flush(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the queue to be posted; the number still waiting."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._queue.all_tasks_done.wait(left)
            return self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            context, create, label = self._queue.get()
            try:
                context.run(create)
                self.posted += 1
            except Exception as exc:  # Prefect away or refusing: the orders are not affected
                self.failed += 1
                log.warning("artifact %r not posted: %s", label, exc)
            finally:
                self._queue.task_done()


_poster = ArtifactPoster()


def post_markdown(markdown: str, *, key: str | None = None, description: str | None = None) -> None:
    """`create_markdown_artifact`, queued (see the module's docstring)."""
    _poster.put(MarkdownArtifact(markdown=markdown, key=key, description=description))


def post_table(
    table: list[dict[str, object]], *, key: str | None = None, description: str | None = None
) -> None:
    """`create_table_artifact`, queued (see the module's docstring)."""
    _poster.put(TableArtifact(table=table, key=key, description=description))


def flush(timeout_s: float) -> int:
    """Wait up to `timeout_s` for the queued artifacts to be posted; how many are still waiting (logged)."""
    left = _poster.flush(timeout_s)
    if left:
        log.warning(
            "%d artifacts not posted yet after %.0f s (Prefect's API is slow); orders are unaffected",
            left,
            timeout_s,
        )
    return left
