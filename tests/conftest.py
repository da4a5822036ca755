"""Shared fixtures: a real database per test (SQLite file, and PostgreSQL when reachable; required
under CI=true), settings built per test and passed in, and one Prefect test server per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import psycopg
import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from aftercare.runtime import Runtime, use_runtime
from aftercare.settings import DEMO_SHOP_DOMAIN, Settings
from aftercare.spine.db import make_engine, migrate
from tests.factories import SHOP
from tests.fakes.warehouse import FakeThreePL
from tests.shared_dir import find_shared

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHARED = find_shared()
PG_ADMIN_URL = os.environ.get("AFTERCARE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_SECRET = "test-webhook-secret-0123456789"


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


def _truncate_all(url: str) -> None:
    engine = make_engine(Settings(database_url=url))
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses the database runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'aftercare.db'}"
        migrate(Settings(database_url=url))
        return url
    url = request.getfixturevalue("pg_database")
    _truncate_all(url)
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
