"""Engine, sessions and migrations. SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, select

from aftercare.settings import PROJECT_ROOT, Settings

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
log = logging.getLogger(__name__)


def make_engine(settings: Settings, *, background_checkpoints: bool = False) -> Engine:
    """An engine for the configured database. SQLite gets WAL, a busy timeout, and synchronous=NORMAL:
    a commit we acknowledge survives any process crash, but not a power loss just before the next
    checkpoint; FULL (an fsync per commit, ~3 ms) would cap ingest near 300 req/s, and production
    runs PostgreSQL (docs/architecture.md, "Durability trade-off on SQLite"). With
    `background_checkpoints` its connections never checkpoint on commit; call `start_checkpointer`
    so the WAL is folded back from a background thread instead of inside a request (a checkpoint's
    fsync is a 100 ms stall)."""
    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            if background_checkpoints:
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # No pre-ping: it is a round trip per checkout on the webhook hot path; recycle instead.
    return sa.create_engine(url, pool_recycle=300, pool_size=10, max_overflow=20)


def start_checkpointer(engine: Engine, interval_s: float = 30.0) -> Callable[[], None]:
    """Checkpoint a SQLite WAL every `interval_s` from a daemon thread; returns a stop function.
    PASSIVE checkpoints never block writers. A no-op for PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return lambda: None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except sa.exc.SQLAlchemyError as exc:
                log.warning("WAL checkpoint failed (will retry): %s", exc)

    thread = threading.Thread(target=loop, name="sqlite-checkpointer", daemon=True)
    thread.start()

    def _stop() -> None:
        stop.set()
        thread.join(timeout=5)

    return _stop


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = settings.database_url
    return cfg


def migrate(settings: Settings) -> None:
    """Bring the database schema to the newest migration (idempotent)."""
    if settings.is_sqlite:
        make_engine(settings).dispose()  # creates the parent directory
    command.upgrade(alembic_config(settings), "head")


def claim_rows(
    engine: Engine | sa.Connection,
    model: Any,
    columns: list[Any],
    claimable: sa.ColumnElement[bool],
    values: dict[str, Any],
    limit: int,
) -> list[Any]:
    """Claim up to `limit` rows of `model` matching `claimable`, oldest id first, by setting `values`;
    return (id, *columns) of each row this caller won.

    SQLite: one UPDATE whose WHERE picks the candidates and repeats the condition, run under
    SQLite's write lock, so it is a compare-and-set. PostgreSQL: the candidates are locked with
    SKIP LOCKED (concurrent workers take disjoint sets instead of queueing), then updated in one
    statement while we hold their locks. (A single UPDATE ... WHERE id IN (SELECT ... SKIP LOCKED)
    was tried: under concurrency PostgreSQL can return no rows at all while rows are pending.)

    Given a Connection, the claim runs in its transaction, which the caller commits: what the claim
    is for (say, the mails it calls for) is then written in the same transaction as the claim."""
    if isinstance(engine, sa.Connection):
        return _claim_rows(engine, model, columns, claimable, values, limit)
    with engine.begin() as conn:
        return _claim_rows(conn, model, columns, claimable, values, limit)


def _claim_rows(
    conn: sa.Connection,
    model: Any,
    columns: list[Any],
    claimable: sa.ColumnElement[bool],
    values: dict[str, Any],
    limit: int,
) -> list[Any]:
    candidates = sa.select(model.id).where(claimable).order_by(model.id).limit(limit)
    if conn.dialect.name == "postgresql":
        ids = list(conn.execute(candidates.with_for_update(skip_locked=True)).scalars())
        if not ids:
            return []
        where = model.id.in_(ids)
    else:
        where = sa.and_(model.id.in_(candidates.scalar_subquery()), claimable)
    claimed = list(conn.execute(sa.update(model).where(where).values(**values).returning(model.id, *columns)))
    return sorted(claimed, key=lambda row: row[0])


def dialect_insert(bind: OrmSession | sa.Connection | Engine) -> Any:
    """The INSERT of the database in use, which has ON CONFLICT (SQLite and PostgreSQL): for the
    inserts whose uniqueness is a guarantee (one outbox row per touchpoint, one suppression per list)."""
    dialect = (bind.get_bind() if isinstance(bind, OrmSession) else bind).dialect
    return postgresql.insert if dialect.name == "postgresql" else sqlite.insert


def autocommit(engine: Engine) -> sa.Connection:
    """A connection whose statements commit one by one on PostgreSQL: a lone read, or a lone
    statement that is its own transaction, costs one round trip instead of three (no BEGIN, no COMMIT
    or ROLLBACK). On SQLite a plain connection: its driver begins a transaction only for a write, and
    changing the level would cost a PRAGMA."""
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        return conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


def prime_pool(engine: Engine, n: int | None = None) -> int:
    """Open the pool's connections now (all `n` held at once, then returned), so that the first burst
    of requests after a start does not pay for them: on PostgreSQL each is a new server process and
    an authentication, and requests that queue behind them make more open. Returns how many."""
    size = n if n is not None else getattr(engine.pool, "size", lambda: 1)()
    held: list[sa.Connection] = []
    try:
        for _ in range(max(1, size)):
            conn = engine.connect()
            held.append(conn)
            conn.exec_driver_sql("SELECT 1")
            conn.rollback()
    finally:
        for conn in held:
            conn.close()
    return len(held)


def get_many(engine: Engine, model: Any, ids: list[int]) -> list[Any]:
    """The rows of `model` with these ids, in the order given (missing ones left out): one query for
    a batch instead of one per item."""
    if not ids:
        return []
    with Session(engine, expire_on_commit=False) as session:
        rows = session.exec(select(model).where(model.id.in_(ids))).all()
    by_id = {row.id: row for row in rows}
    return [by_id[i] for i in ids if i in by_id]


def ping(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
