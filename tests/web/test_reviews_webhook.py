"""POST /webhooks/reviews (signed, bounded, stored then acknowledged through the inbox). The public
review page GET /reviews/<public id> is tested in test_public_reviews.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import ConfigError
from aftercare.models import InboxEvent, InboxStatus
from aftercare.settings import LOCAL_DEV_SECRET, Settings
from aftercare.spine.db import make_engine
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import webhook_headers
from tests.reviews.intake_helpers import (
    review_body,
    review_payload,
    signed_headers,
)

URL = "/webhooks/reviews"
MIB = 1024 * 1024
REVIEWS_SECRET = "test-reviews-secret-9876543210"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"reviews_webhook_secret": SecretStr(REVIEWS_SECRET)})


@pytest.fixture
def waker() -> NoWaker:
    return NoWaker()


@pytest.fixture
def client(settings: Settings, waker: NoWaker) -> Iterator[TestClient]:
    with TestClient(create_app(settings, waker=waker)) as c:
        yield c


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings)
    yield eng
    eng.dispose()


def rows(engine: Engine) -> list[InboxEvent]:
    with Session(engine) as s:
        return list(s.exec(select(InboxEvent).order_by(InboxEvent.id)))


def post(client: TestClient, body: bytes, secret: str = REVIEWS_SECRET) -> Any:
    return client.post(URL, content=body, headers=signed_headers(body, secret))


def assert_refused(resp: Any, engine: Engine, waker: NoWaker) -> None:
    assert resp.status_code == 401
    assert "X-Aftercare-Hmac-Sha256" in resp.json()["error"]
    assert rows(engine) == [] and waker.pokes == 0


# --- authentication ---------------------------------------------------------------------------------


def test_defaults_to_the_local_dev_secret_like_shopify():
    assert Settings(_env_file=None).reviews_webhook_secret.get_secret_value() == LOCAL_DEV_SECRET


def test_production_refuses_the_placeholder_reviews_secret():
    with pytest.raises(ConfigError, match="AFTERCARE_REVIEWS_WEBHOOK_SECRET"):
        Settings(_env_file=None, environment="production", shopify_webhook_secret="a-real-shop-secret-123")


@pytest.mark.parametrize("case", ["wrong", "missing", "empty", "other-secret", "shopify-secret", "hex"])
def test_bad_signature_is_refused_and_nothing_stored(client, engine, waker, case):
    body = review_body(review_payload())
    headers = signed_headers(body, REVIEWS_SECRET)
    if case == "wrong":
        headers["X-Aftercare-Hmac-Sha256"] = base64.b64encode(b"\0" * 32).decode()
    elif case == "missing":
        del headers["X-Aftercare-Hmac-Sha256"]
    elif case == "empty":
        headers["X-Aftercare-Hmac-Sha256"] = ""
    elif case == "other-secret":
        headers = signed_headers(body, "someone-else")
    elif case == "shopify-secret":  # the reviews endpoint has its own secret
        headers = signed_headers(body, TEST_SECRET)
    else:
        headers["X-Aftercare-Hmac-Sha256"] = hmac.new(
            REVIEWS_SECRET.encode(), body, hashlib.sha256
        ).hexdigest()
    assert_refused(client.post(URL, content=body, headers=headers), engine, waker)


def test_shopify_signature_header_does_not_authenticate_a_review(client, engine, waker):
    body = review_body(review_payload())
    headers = webhook_headers(body, secret=REVIEWS_SECRET)  # X-Shopify-Hmac-Sha256 only
    assert_refused(client.post(URL, content=body, headers=headers), engine, waker)


def test_signature_over_a_different_body_is_refused(client, engine, waker):
    signed = review_body(review_payload(rating=5))
    sent = review_body(review_payload(rating=1))
    assert_refused(
        client.post(URL, content=sent, headers=signed_headers(signed, REVIEWS_SECRET)), engine, waker
    )


# --- valid, duplicate, invalid ----------------------------------------------------------------------


def test_valid_review_is_stored_pending_then_acknowledged(client, engine, waker):
    body = review_body(review_payload())
    resp = post(client, body)

    assert resp.status_code == 200
    [row] = rows(engine)
    assert resp.json() == {"status": "pending", "inbox_id": row.id}
    assert (row.source, row.topic, row.delivery_id) == ("reviews", "reviews/create", "own:sample-review-1101")
    assert row.status == InboxStatus.PENDING and row.body == body and row.subject_ref == "#1101"
    assert waker.pokes == 1


def test_duplicate_review_is_acknowledged_and_changes_nothing(client, engine, waker):
    first = post(client, review_body(review_payload()))
    second = post(client, review_body(review_payload(rating=1, body="edited")))
    assert first.json()["status"] == "pending"
    assert second.status_code == 200 and second.json() == {"status": "duplicate"}
    assert len(rows(engine)) == 1 and waker.pokes == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe not utf-8", "not JSON"),
        (b"[]", "JSON object"),
        (review_body(review_payload(rating=0)), "rating"),
        (review_body(review_payload(rating=6)), "rating"),
        (review_body(review_payload(body=...)), "body"),
        (review_body(review_payload(author=..., created_at=...)), "created_at"),
        (review_body(review_payload(created_at="2026-11-28 20:12")), "created_at"),
    ],
    ids=[
        "malformed",
        "empty",
        "not-utf8",
        "array",
        "rating-0",
        "rating-6",
        "no-body",
        "no-author-date",
        "naive-date",
    ],
)
def test_authentic_but_unusable_review_is_stored_invalid_with_the_reason(client, engine, waker, body, needle):
    resp = post(client, body)
    assert resp.status_code == 200
    [row] = rows(engine)
    assert resp.json() == {"status": "invalid", "inbox_id": row.id, "reason": row.reason}
    assert row.status == InboxStatus.INVALID and needle in row.reason
    assert row.body == body and row.processed_at is not None
    assert waker.pokes == 0
    again = post(client, body)
    assert again.json() == {"status": "duplicate"}  # the same broken body is stored once


def test_body_over_the_cap_is_refused_with_413(client, engine, waker, settings):
    cap = settings.max_body_bytes
    base = review_body(review_payload(body=""))
    body = review_body(review_payload(body="x" * (cap - len(base) + 1)))
    assert len(body) == cap + 1
    resp = post(client, body)
    assert resp.status_code == 413 and str(cap) in resp.json()["error"]
    assert rows(engine) == [] and waker.pokes == 0


def test_chunked_body_over_the_cap_is_refused(client, engine, waker, settings):
    chunks = [b"y" * MIB] * (settings.max_body_bytes // MIB) + [b"z"]
    body = b"".join(chunks)
    req = client.build_request(
        "POST", URL, content=iter(chunks), headers=signed_headers(body, REVIEWS_SECRET)
    )
    assert "content-length" not in req.headers
    assert client.send(req).status_code == 413
    assert rows(engine) == []


def test_huge_review_text_under_the_size_limit_is_stored_invalid_not_dropped(client, engine):
    body = review_body(review_payload(body="あ" * 30_000))
    assert len(body) < MIB
    resp = post(client, body)
    assert resp.json()["status"] == "invalid" and "body" in resp.json()["reason"]
    assert rows(engine)[0].body == body
