"""POST /webhooks/shopify for the consent and compliance topics: signed, for our shops, stored in the
inbox as the other topics are (unusable bodies kept as invalid with a reason, never dropped), and
Shopify's real payloads (../shared) read as consent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from aftercare.contact.store import held_consent
from aftercare.models import ConsentRecord, InboxEvent, InboxStatus
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET, shared_path
from tests.factories import SHOP, body_of, webhook_headers
from tests.pipeline import drain, receive, rows

TOPICS = [
    "customers/create",
    "customers/update",
    "customers_email_marketing_consent/update",
    "customers/redact",
    "shop/redact",
    "customers/data_request",
]
BODIES: dict[str, Any] = {
    "customers/create": {
        "id": 1,
        "email": "a@example.com",
        "email_marketing_consent": {"state": "subscribed"},
    },
    "customers/update": {
        "id": 1,
        "email": "a@example.com",
        "email_marketing_consent": {"state": "unsubscribed"},
    },
    "customers_email_marketing_consent/update": {
        "customer_id": 1,
        "email_address": "a@example.com",
        "email_marketing_consent": {"state": "subscribed", "consent_updated_at": "2026-11-01T00:00:00Z"},
    },
    "customers/redact": {
        "shop_domain": SHOP,
        "customer": {"id": 1, "email": "a@example.com"},
        "orders_to_redact": [],
    },
    "shop/redact": {"shop_id": 1, "shop_domain": SHOP},
    "customers/data_request": {"shop_domain": SHOP, "customer": {"id": 1, "email": "a@example.com"}},
}


@pytest.fixture
def waker() -> NoWaker:
    return NoWaker()


@pytest.fixture
def client(settings, waker):
    with TestClient(create_app(settings, waker=waker)) as c:
        yield c


def post(client: TestClient, body: bytes, topic: str, **kw: Any) -> Any:
    return client.post(
        "/webhooks/shopify",
        content=body,
        headers=webhook_headers(body, secret=TEST_SECRET, topic=topic, **kw),
    )


@pytest.mark.parametrize("topic", TOPICS)
def test_each_topic_is_stored_pending_and_wakes_the_workers(client, rt, waker, topic):
    answer = post(client, body_of(BODIES[topic]), topic)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == InboxStatus.PENDING
    assert waker.pokes == 1
    [row] = rows(rt, InboxEvent)
    assert row.topic == topic and row.body == body_of(BODIES[topic])
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE, out.reason


@pytest.mark.parametrize("topic", TOPICS)
def test_a_forged_altered_or_unsigned_delivery_is_refused_and_nothing_stored(client, rt, waker, topic):
    body = body_of(BODIES[topic])
    forged = webhook_headers(body, secret="wrong-secret-0123456789", topic=topic)
    assert client.post("/webhooks/shopify", content=body, headers=forged).status_code == 401
    signed = webhook_headers(body, secret=TEST_SECRET, topic=topic)
    altered = body[:-1] + b" }"  # one byte more: the signature no longer matches
    assert client.post("/webhooks/shopify", content=altered, headers=signed).status_code == 401
    unsigned = {k: v for k, v in signed.items() if k != "X-Shopify-Hmac-Sha256"}
    assert client.post("/webhooks/shopify", content=body, headers=unsigned).status_code == 401
    assert rows(rt, InboxEvent) == [] and waker.pokes == 0


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe\x00", ("[" * 5000 + "]" * 5000).encode()],
    ids=["empty", "not json", "a list", "a string", "not utf-8", "deep"],
)
def test_junk_bodies_are_kept_as_invalid_with_a_reason(client, rt, waker, topic, body):
    answer = post(client, body, topic)
    assert answer.status_code == 200
    assert answer.json()["status"] == InboxStatus.INVALID and answer.json()["reason"]
    [row] = rows(rt, InboxEvent)
    assert row.status == InboxStatus.INVALID and row.body == body
    assert waker.pokes == 0


def test_a_100_kb_hostile_consent_is_stored_and_processed_without_harm(client, rt):
    body = {
        "customer_id": 1,
        "email_address": "a@example.com",
        "email_marketing_consent": {
            "state": "subscribed" + "\u202e" * 10,
            "opt_in_level": "x" * 100_000,
            "consent_updated_at": "<script>" * 100,
        },
    }
    answer = post(client, body_of(body), "customers_email_marketing_consent/update")
    assert answer.status_code == 200
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE and "not one of Shopify's states" in out.reason
    assert rows(rt, ConsentRecord) == []


# -- Shopify's own payloads (../shared/fixtures/shopify) -----------------------------------------------


def test_shopifys_customer_resource_as_a_customers_update_delivery(rt):
    customer = json.loads(shared_path("fixtures", "shopify", "customer.json").read_text())["customer"]
    out = receive(rt, customer, topic="customers/update")
    assert out.status == InboxStatus.DONE
    with Session(rt.engine) as s:
        state = held_consent(s, SHOP, customer["email"].lower())
    # The legacy flag: accepts_marketing false is "not subscribed", dated by the customer's updated_at.
    assert state is not None and state.state == "not_subscribed"
    assert state.updated_at.isoformat() == "2015-05-27T22:11:24+00:00"


def test_shopifys_order_resource_carries_its_customers_consent(rt):
    order = json.loads(shared_path("fixtures", "shopify", "order.json").read_text())["order"]
    out = receive(rt, order)
    assert out.status == InboxStatus.DONE, out.reason
    email = (order.get("email") or order["customer"]["email"]).lower()
    [record] = rows(rt, ConsentRecord, ConsentRecord.email_key == email)
    assert record.state == ("subscribed" if order["customer"].get("accepts_marketing") else "not_subscribed")
    assert record.source == "orders/create customer (accepts_marketing)"
    assert record.wording_version
