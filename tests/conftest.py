"""Shared fixtures: a real database per test (SQLite file, and PostgreSQL when reachable; required
under CI=true), settings built per test and passed in, and one Prefect test server per session."""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import psycopg
import pytest
from sqlmodel import SQLModel

from aftercare.runtime import Runtime, use_runtime
from aftercare.settings import DEMO_SHOP_DOMAIN, Settings
from aftercare.spine.db import migrate
from tests.factories import SHOP
from tests.fakes.warehouse import FakeThreePL
from tests.shared_dir import find_shared

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHARED = find_shared()
PG_ADMIN_URL = os.environ.get("AFTERCARE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_SECRET = "test-webhook-secret-0123456789"


# A test's `record_property(PRINTED_REPORT, text)`: the text is printed in the run's summary.
PRINTED_REPORT = "printed_report"


def shared_path(*parts: str) -> Path:
    """A file under ../shared; skipped with a reason when absent, a failure under CI=true."""
    path = (SHARED or Path("../shared")).joinpath(*parts)
    if SHARED is None or not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is required under CI=true")
        pytest.skip(f"{path} not present (a user's clone has no ../shared)")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated once, dropped at the end."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required under CI=true: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    name = f"aftercare_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(Settings(database_url=url))
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# The id sequences of our tables that were drawn from since their last restart (nextval is never
# rolled back, so a row rolled back or not yet committed shows here too), with their start values.
_DRAWN_SEQUENCES = """
    SELECT t.relname::text, q.oid::regclass::text, s.start_value FROM pg_sequences s
    JOIN pg_class q ON q.relname = s.sequencename AND q.relnamespace = s.schemaname::regnamespace
    JOIN pg_depend d ON d.objid = q.oid AND d.deptype IN ('a', 'i')
    JOIN pg_class t ON t.oid = d.refobjid
    WHERE s.last_value IS NOT NULL AND t.relname = ANY(%s)"""


def _empty_database(url: str) -> None:
    """Leave the session's database as TRUNCATE ... RESTART IDENTITY of every table would: no rows,
    every id sequence at its start. TRUNCATE replaces each table's files (0.5-1 s for all of them on
    this busy 2-core machine, ~800 times a run); a DELETE of the few tables a test wrote to is ~20 ms.
    Written to: a table with a row, or whose id sequence was drawn from. They are locked first, as
    TRUNCATE would, so a writer the last test left behind finishes before its rows are deleted."""
    names = [t.name for t in SQLModel.metadata.sorted_tables]  # parents before children
    with_rows = " UNION ".join(f"SELECT '{n}' WHERE EXISTS (SELECT 1 FROM \"{n}\")" for n in names)
    with psycopg.connect(url, autocommit=True) as conn:
        written = {row[0] for row in conn.execute(with_rows)}
        drawn = conn.execute(_DRAWN_SEQUENCES, [names]).fetchall()
        written |= {table for table, _, _ in drawn}
        if not written:
            return
        with conn.transaction():
            ordered = [f'"{n}"' for n in reversed(names) if n in written]  # children first
            conn.execute(f"LOCK TABLE {', '.join(ordered)} IN ACCESS EXCLUSIVE MODE")
            for table in ordered:
                conn.execute(f"DELETE FROM {table}")
            for _, sequence, start in drawn:
                conn.execute("SELECT setval(%s::regclass, %s, false)", [sequence, start])


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session (by the same alembic run as any other database);
    each test gets a copy of it, an empty database of its own, without paying for the ~0.4 s
    migration per test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "migrated.db"
    migrate(Settings(database_url=f"sqlite:///{path}"))
    # Fold the WAL into the file so the one file is the whole database.
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, f"{wal} still holds pages"
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses the database runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "aftercare.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    _empty_database(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings for an empty database of this test's own, not yet migrated (the session's PostgreSQL
    database is shared by other tests): for migrations going down and up again."""
    if request.param == "sqlite":
        yield Settings(database_url=f"sqlite:///{tmp_path / 'own.db'}")
        return
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required under CI=true: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"aftercare_mig_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings(database_url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        environment="test",
        var_dir=tmp_path / "var",
        database_url=database_url,
        shopify_webhook_secret=TEST_SECRET,
        # The shops the tests post as: the factories' shop and the one `aftercare demo` posts as.
        shopify_shops=[SHOP, DEMO_SHOP_DOMAIN],
        wake_prefect=False,
        send_backoff_base_s=0.01,
    )


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.build(settings)
    yield runtime
    runtime.engine.dispose()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for the session (it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_rt(prefect_server: None, rt: Runtime) -> Iterator[Runtime]:
    """A runtime the flows and tasks in this test use."""
    with use_runtime(rt):
        yield rt


@pytest.fixture
def three_pl() -> Iterator[FakeThreePL]:
    """A loopback 3PL (tests/fakes/warehouse.py) for the HTTP warehouse port."""
    with FakeThreePL() as fake:
        yield fake


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (make test), the tests of a module that share a
    module-scoped fixture (a served Prefect deployment with its runs, a locked Prefect server) run on
    one worker, one after the other, so it is built once; every other test goes to whichever worker
    is free. Without xdist the mark does nothing."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        if any(d.scope in ("module", "class", "package") for chain in defs for d in chain):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))


_printed_reports: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the reports tests asked to print (in this process, or sent back by an xdist worker)."""
    if report.when == "call":  # the teardown's report carries the same properties
        _printed_reports.extend(
            (report.nodeid, str(value)) for name, value in report.user_properties if name == PRINTED_REPORT
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for nodeid, text in _printed_reports:
        terminalreporter.write_sep("-", nodeid)
        terminalreporter.write_line(text)
