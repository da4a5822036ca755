"""Which flow runs are really draining the inbox: drain slots held by live processes, released by the
operating system or the database the moment the holder dies, each naming the run that holds it.

Prefect's deployment concurrency limit keeps a burst from spawning a process per wake, but it
cannot tell a dead run from a live one: a SIGKILLed run stays Running, keeps its slot (a lease the
engine renews for 300 s at a time) and every later run waits for it. A drain slot is something a
dead process cannot keep: a session-level advisory lock on PostgreSQL (the session ends when the
process's socket closes) and an flock on a file beside the SQLite database (the kernel drops it
with the process). The waker compares the two: a Pending/Running run that no slot names is a dead
process's, and is marked Crashed, which frees Prefect's slot (aftercare/web/wake.py)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# pg_try_advisory_lock(key, slot): the first key is ours ("aftc"), the second the slot number.
ADVISORY_KEY = 0x61667463
HOLDER_PREFIX = "aftercare-drain:"
_TRY = sa.text("SELECT pg_try_advisory_lock(CAST(:k AS integer), CAST(:s AS integer))")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(CAST(:k AS integer), CAST(:s AS integer))")


def _sqlite_lock_path(engine: Engine, slot: int) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None  # one process owns an in-memory database: nothing to share
    return Path(f"{database}.drain-{slot}.lock")


@contextlib.contextmanager
def _sqlite_slot(path: Path, holder: str | None = None) -> Iterator[bool]:
    """flock the slot's file for the block (False: another process holds it); the holder's name is
    written into the file while we hold it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            if holder is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.encode(), 0)
            yield True
        finally:
            if holder is not None:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pg_try(conn: Connection, slot: int) -> bool:
    got = conn.execute(_TRY, {"k": ADVISORY_KEY, "s": slot})
    won = bool(got.scalar_one())
    conn.commit()  # the lock is the session's; don't sit idle in a transaction
    return won


def _pg_release(conn: Connection, slot: int) -> None:
    try:
        conn.execute(_UNLOCK, {"k": ADVISORY_KEY, "s": slot})
        conn.commit()
    except sa.exc.SQLAlchemyError:
        # The connection died (a database restart): the lock died with it. Don't pool it.
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            conn.invalidate()


@contextlib.contextmanager
def drain_slot(
    engine: Engine, slots: int, wait_s: float, *, holder: str = "", poll_s: float = 0.25
) -> Iterator[int | None]:
    """Hold one of `slots` drain slots for the duration of the block, in the name of `holder` (the
    flow run id); yields its number, or None when all stayed taken for `wait_s` (other runs are
    draining and will see the work)."""
    deadline = time.monotonic() + wait_s
    if engine.dialect.name == "postgresql":
        conn = engine.connect()
        try:
            # The session's name says whose lock it is (pg_stat_activity.application_name).
            conn.execute(
                sa.text("SELECT set_config('application_name', :n, false)"), {"n": HOLDER_PREFIX + holder}
            )
            conn.commit()
            while True:
                slot = next((s for s in range(slots) if _pg_try(conn, s)), None)
                if slot is not None or time.monotonic() >= deadline:
                    break
                time.sleep(poll_s)
            if slot is None:
                yield None
                return
            try:
                yield slot
            finally:
                _pg_release(conn, slot)
        finally:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.execute(sa.text("RESET application_name"))
                conn.commit()
            conn.close()
        return
    if _sqlite_lock_path(engine, 0) is None:
        yield 0
        return
    while True:
        for slot in range(slots):
            path = _sqlite_lock_path(engine, slot)
            assert path is not None
            with _sqlite_slot(path, holder) as won:
                if won:
                    yield slot
                    return
        if time.monotonic() >= deadline:
            yield None
            return
        time.sleep(poll_s)


def live_holders(engine: Engine, slots: int) -> set[str]:
    """The holders (flow run ids) of the drain slots held right now by live processes. On SQLite
    this takes each free lock for an instant; a drainer trying at that moment tries again."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            names = conn.execute(
                sa.text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = :k"
                    " AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                ),
                {"k": ADVISORY_KEY},
            ).scalars()
            return {n.removeprefix(HOLDER_PREFIX) for n in names if n}
    held: set[str] = set()
    for slot in range(slots):
        path = _sqlite_lock_path(engine, slot)
        if path is None:
            return held
        with _sqlite_slot(path) as won:
            if not won:
                held.add(path.read_text().strip())
    return held
