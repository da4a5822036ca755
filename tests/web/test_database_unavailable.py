"""The webhook endpoints while PostgreSQL is away: 503 + Retry-After (Shopify delivers again), never a
500 with a traceback; and a connection the server closed (a restart) costs no request at all."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from aftercare.settings import Settings
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import SHOP, body_of, order_payload, webhook_headers

URL = "/webhooks/shopify"
pytestmark = pytest.mark.postgres


def _post(client: TestClient, order_id: int, webhook_id: str):  # type: ignore[no-untyped-def]
    body = body_of(order_payload(id=order_id, name=f"#{order_id}"))
    return client.post(
        URL, content=body, headers=webhook_headers(body, secret=TEST_SECRET, webhook_id=webhook_id)
    )


@pytest.fixture
def pg_client(pg_database: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        environment="test",
        var_dir=tmp_path / "var",
        database_url=pg_database,
        shopify_webhook_secret=TEST_SECRET,
        shopify_shops=[SHOP],
        wake_prefect=False,
    )
    with TestClient(create_app(settings, waker=NoWaker()), raise_server_exceptions=False) as client:
        yield client


def test_a_connection_the_server_terminated_costs_no_delivery(pg_client: TestClient, pg_database: str):
    assert _post(pg_client, 9001, "wh-before").status_code == 200
    engine: sa.Engine = pg_client.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:  # the pooled connection the next request will get
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with psycopg.connect(pg_database, autocommit=True) as admin:  # what a restart does to it
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)

    after = _post(pg_client, 9002, "wh-after-terminate")
    assert after.status_code == 200, after.text
    assert _post(pg_client, 9003, "wh-next").status_code == 200
    with psycopg.connect(pg_database) as conn:
        stored = conn.execute(
            "SELECT delivery_id FROM inbox WHERE delivery_id LIKE 'wh-%%' ORDER BY id"
        ).fetchall()
    assert [r[0] for r in stored] == ["wh-before", "wh-after-terminate", "wh-next"]


def test_an_unreachable_database_answers_503_with_retry_after(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on: PostgreSQL down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        environment="test",
        var_dir=tmp_path / "var",
        database_url=f"postgresql://postgres@127.0.0.1:{port}/aftercare",
        shopify_webhook_secret=TEST_SECRET,
        shopify_shops=[SHOP],
        wake_prefect=False,
    )
    with TestClient(create_app(settings, waker=NoWaker()), raise_server_exceptions=False) as client:
        answer = _post(client, 9100, "wh-down")
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["error"] == "database_unavailable"
    assert "Traceback" not in answer.text
