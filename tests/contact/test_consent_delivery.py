"""Consent from Shopify's deliveries, through the real router on SQLite and PostgreSQL: the customer
topics, the consent topic and the customer inside an order; late, out of order, replayed, malformed,
for a customer we never saw, and two workers at once."""

from __future__ import annotations

import itertools
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare.contact.consent import Consent, resolve
from aftercare.contact.policy import contact_policy
from aftercare.contact.store import held_consent, record_consent
from aftercare.models import ConsentRecord, Customer, CustomerConsent, InboxEvent, InboxStatus
from aftercare.orders.timeline import order_timeline, timeline_text
from aftercare.processing import process_row
from aftercare.spine.inbox import claim_batch
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import SHOP, body_of, deliver, order_payload, webhook_headers
from tests.pipeline import receive, rows

CONSENT_TOPIC = "customers_email_marketing_consent/update"
EMAIL = "emma.consent@example.com"


def consent_update(state: Any, at: Any, *, email: str = EMAIL, level: Any = "single_opt_in") -> dict:
    """A customers_email_marketing_consent/update body, in Shopify's documented shape."""
    return {
        "customer_id": 7004,
        "email_address": email,
        "email_marketing_consent": {"state": state, "opt_in_level": level, "consent_updated_at": at},
    }


def customer_body(email: str, consent: Any, **extra: Any) -> dict:
    """A customers/create or customers/update body (API versions before 2025-01 carry consent)."""
    body = {
        "id": 7005,
        "email": email,
        "first_name": "Emma",
        "last_name": "Stone",
        "updated_at": "2026-11-20T10:00:00+09:00",
        "email_marketing_consent": consent,
    }
    body.update(extra)
    return body


def held(rt: Any, email: str = EMAIL) -> Consent | None:
    with Session(rt.engine) as s:
        return held_consent(s, SHOP, email.lower())


def records(rt: Any, email: str = EMAIL) -> list[ConsentRecord]:
    return rows(rt, ConsentRecord, ConsentRecord.email_key == email.lower())


def test_a_consent_webhook_older_than_the_state_held_changes_nothing_but_is_recorded(rt):
    newer = receive(rt, consent_update("unsubscribed", "2026-11-10T10:00:00+09:00"), topic=CONSENT_TOPIC)
    older = receive(rt, consent_update("subscribed", "2026-11-01T10:00:00+09:00"), topic=CONSENT_TOPIC)
    assert newer.status == older.status == InboxStatus.DONE
    state = held(rt)
    assert state is not None and state.state == "unsubscribed"
    assert state.updated_at == datetime(2026, 11, 10, 1, 0, tzinfo=UTC)
    first, second = records(rt)
    assert first.applied and first.state == "unsubscribed"
    assert not second.applied and second.state == "subscribed"
    assert "older than the unsubscribed held" in (second.reason or "")
    assert "older" in (older.reason or "")
    # Kept with the wording version of the policy in force.
    wording = contact_policy(rt.settings.policies_dir).consent.wording_version
    assert {first.wording_version, second.wording_version} == {wording}
    with Session(rt.engine) as s:
        row = s.exec(select(CustomerConsent)).one()
    assert row.wording_version == wording and row.record_id == first.id


EVENTS = [
    ("subscribed", "2026-11-01T10:00:00+09:00"),
    ("unsubscribed", "2026-11-05T10:00:00+09:00"),
    ("subscribed", "2026-11-03T10:00:00+09:00"),
    ("not_subscribed", "2026-11-05T10:00:00+09:00"),  # the same moment as the unsubscribe
]


def test_out_of_order_delivery_gives_the_same_state(rt):
    finals = set()
    for n, order in enumerate(itertools.permutations(EVENTS)):
        email = f"perm{n}@example.com"
        for state, at in order:
            receive(rt, consent_update(state, at, email=email), topic=CONSENT_TOPIC)
        got = held(rt, email)
        assert got is not None
        finals.add((got.state, got.updated_at))
    # Every one of the 24 arrival orders: the newest moment, and at a tie the state with less consent.
    assert finals == {("unsubscribed", datetime(2026, 11, 5, 1, 0, tzinfo=UTC))}


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, waker=NoWaker())) as c:
        yield c


def post(client: TestClient, payload: Any, topic: str, webhook_id: str | None = None, **kw: Any) -> Any:
    body = body_of(payload)
    headers = webhook_headers(body, secret=TEST_SECRET, topic=topic, webhook_id=webhook_id, **kw)
    return client.post("/webhooks/shopify", content=body, headers=headers)


def drain_all(rt: Any) -> list[Any]:
    return [process_row(rt, c.inbox_id) for c in claim_batch(rt.engine, 50)]


def test_a_replayed_delivery_is_one_inbox_row_and_one_record(client, rt):
    payload = consent_update("unsubscribed", "2026-11-10T10:00:00+09:00")
    first = post(client, payload, CONSENT_TOPIC, webhook_id="wh-consent-1")
    again = post(client, payload, CONSENT_TOPIC, webhook_id="wh-consent-1")
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == InboxStatus.PENDING
    assert again.json() == {"status": "duplicate"}
    assert len(rows(rt, InboxEvent)) == 1
    drain_all(rt)
    drain_all(rt)
    assert len(records(rt)) == 1
    assert held(rt).state == "unsubscribed"


@pytest.mark.parametrize("topic", ["customers/create", "customers/update", CONSENT_TOPIC])
def test_the_customer_topics_are_accepted_signed_and_for_our_shops_only(client, rt, topic):
    payload = (
        consent_update("subscribed", "2026-11-10T10:00:00+09:00")
        if topic == CONSENT_TOPIC
        else customer_body(EMAIL, {"state": "subscribed", "consent_updated_at": "2026-11-10T10:00:00Z"})
    )
    body = body_of(payload)
    forged = webhook_headers(body, secret="not-the-secret", topic=topic)
    assert client.post("/webhooks/shopify", content=body, headers=forged).status_code == 401
    assert post(client, payload, topic, shop="someone-else.myshopify.com").status_code == 401
    assert rows(rt, InboxEvent) == []
    answer = post(client, payload, topic)
    assert answer.status_code == 200 and answer.json()["status"] == InboxStatus.PENDING
    [outcome] = drain_all(rt)
    assert outcome.status == InboxStatus.DONE
    assert held(rt).state == "subscribed"
    [record] = records(rt)
    assert record.source == topic and record.customer_shopify_id in (7004, 7005)


def test_a_consent_update_that_names_nobody_is_kept_as_invalid(client, rt):
    answer = post(client, {"email_marketing_consent": {"state": "subscribed"}}, CONSENT_TOPIC)
    assert answer.status_code == 200 and answer.json()["status"] == InboxStatus.INVALID
    assert "names no customer" in answer.json()["reason"]
    [row] = rows(rt, InboxEvent)
    assert row.status == InboxStatus.INVALID and row.body  # kept for ops, never retried
    junk = post(client, ["not", "an", "object"], "customers/update")
    assert junk.json()["status"] == InboxStatus.INVALID


def test_the_checkout_box_after_an_unsubscribe_changes_nothing(rt):
    receive(
        rt,
        consent_update("unsubscribed", "2026-11-10T10:00:00+09:00", email="hanako@example.jp"),
        topic=CONSENT_TOPIC,
    )
    # A later order, the marketing box ticked at checkout, no customer-level consent in it.
    order = order_payload(buyer_accepts_marketing=True, processed_at="2026-11-20T10:15:00+09:00")
    out = receive(rt, order)
    assert out.status == InboxStatus.DONE and out.outbox_id is not None  # the order mails go on
    state = held(rt, "hanako@example.jp")
    assert state is not None and state.state == "unsubscribed"
    last = records(rt, "hanako@example.jp")[-1]
    assert last.weak and not last.applied
    assert "never overrides unsubscribed" in (last.reason or "")


def test_an_orders_customer_consent_is_read_and_the_newest_wins(rt):
    order = order_payload()
    order["customer"]["email_marketing_consent"] = {
        "state": "subscribed",
        "opt_in_level": "confirmed_opt_in",
        "consent_updated_at": "2026-11-19T10:00:00+09:00",
    }
    receive(rt, order)
    assert held(rt, "hanako@example.jp").state == "subscribed"
    receive(
        rt,
        consent_update("unsubscribed", "2026-11-21T10:00:00+09:00", email="HANAKO@example.jp"),
        topic=CONSENT_TOPIC,
    )
    # orders/updated replays the order with its older customer consent: the unsubscribe stands.
    receive(rt, {**order, "updated_at": "2026-11-22T10:00:00+09:00"}, topic="orders/updated")
    assert held(rt, "hanako@example.jp").state == "unsubscribed"
    # The timeline of the order shows the consent changes.
    text = timeline_text(order_timeline(rt.engine, "#1101", rt.policies.delivery))
    assert "consent subscribed" in text and "consent unsubscribed" in text
    assert "not applied" in text


def test_a_customer_we_never_saw(rt):
    out = receive(
        rt,
        customer_body("new.person@example.com", {"state": "subscribed", "consent_updated_at": None}),
        topic="customers/create",
    )
    assert out.status == InboxStatus.DONE
    assert rows(rt, Customer) == []  # customers are made from orders; consent is kept by address
    state = held(rt, "new.person@example.com")
    assert state is not None and state.state == "subscribed"
    # Without a consent date, the customer's own updated_at stands in.
    assert state.updated_at == datetime(2026, 11, 20, 1, 0, tzinfo=UTC)


def test_a_consent_update_by_customer_id_alone_uses_the_address_we_know(rt):
    receive(rt, order_payload())  # customer 7001, hanako@example.jp
    body = {
        "customer_id": 7001,
        "email_marketing_consent": {"state": "unsubscribed", "consent_updated_at": "2026-11-25T00:00:00Z"},
    }
    receive(rt, body, topic=CONSENT_TOPIC)
    assert held(rt, "hanako@example.jp").state == "unsubscribed"
    stranger = {"customer_id": 99999, "email_marketing_consent": {"state": "subscribed"}}
    out = receive(rt, stranger, topic=CONSENT_TOPIC)
    assert out.status == InboxStatus.DONE and "no address known for customer 99999" in out.reason


MALFORMED = [
    pytest.param({"opt_in_level": "single_opt_in"}, "state is missing", id="no state"),
    pytest.param({"state": 1}, "state is a int", id="state not text"),
    pytest.param({"state": "maybe_later"}, "not one of Shopify's states", id="unknown state"),
    pytest.param(["subscribed"], "is a list, not an object", id="a list"),
    pytest.param(None, "is null", id="null"),
    pytest.param({"state": "subscribed", "opt_in_level": 5}, "opt_in_level is a int", id="level not text"),
]


@pytest.mark.parametrize(("consent", "said"), MALFORMED)
def test_a_malformed_consent_is_ignored_with_a_reason_never_a_crash(rt, consent, said):
    body = {"customer_id": 7004, "email_address": EMAIL, "email_marketing_consent": consent}
    out = receive(rt, body, topic=CONSENT_TOPIC)
    assert out.status == InboxStatus.DONE
    assert said in (out.reason or "")
    [row] = rows(rt, InboxEvent)
    assert row.status == InboxStatus.DONE and said in (row.reason or "")
    if "opt_in_level" in said:  # the state itself was readable: kept
        assert held(rt).state == "subscribed"
    else:
        assert held(rt) is None and records(rt) == []


def test_an_unreadable_or_absurd_date_is_named_and_the_sending_time_stands_in(rt):
    for at in ("2026-13-45T99:00:00+99:00", "9999-12-31T23:59:59-14:00", 12345):
        out = receive(
            rt,
            consent_update("subscribed", at, email=f"d{abs(hash(str(at)))}@example.com"),
            topic=CONSENT_TOPIC,
        )
        assert out.status == InboxStatus.DONE
        assert "not a date we can read" in out.reason


def test_an_order_with_a_malformed_customer_consent_is_still_received_and_mailed(rt):
    order = order_payload()
    order["customer"]["email_marketing_consent"] = {"state": "sort_of", "consent_updated_at": []}
    out = receive(rt, order)
    assert out.status == InboxStatus.DONE and out.outbox_id is not None
    assert "consent ignored" in (out.reason or "") and "sort_of" in out.reason
    assert held(rt, "hanako@example.jp") is None


# -- two workers at once (PostgreSQL: the held row is read FOR UPDATE) ---------------------------------


def _concurrently(*calls: Any) -> None:
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Any) -> None:
        try:
            barrier.wait(timeout=10)
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


@pytest.mark.postgres
@pytest.mark.parametrize("first_known", [False, True], ids=["no state held", "a state held"])
def test_two_workers_with_two_events_for_one_address(rt, first_known):
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("the race is PostgreSQL's: SQLite serialises writers")
    for attempt in range(6):
        email = f"race{attempt}-{uuid.uuid4().hex[:6]}@example.com"
        if first_known:
            receive(
                rt, consent_update("subscribed", "2026-11-01T00:00:00Z", email=email), topic=CONSENT_TOPIC
            )
        newer = consent_update("unsubscribed", "2026-11-10T00:00:00Z", email=email)
        older = consent_update("subscribed", "2026-11-05T00:00:00Z", email=email)
        pair = [newer, older] if attempt % 2 else [older, newer]
        ids = [deliver(rt.engine, p, topic=CONSENT_TOPIC) for p in pair]
        claimed = {c.inbox_id for c in claim_batch(rt.engine, 10)}
        assert set(ids) <= claimed
        _concurrently(*[(lambda i=i: process_row(rt, i)) for i in ids])
        state = held(rt, email)
        assert state is not None and state.state == "unsubscribed", attempt
        with Session(rt.engine) as s:
            assert len(s.exec(select(CustomerConsent).where(CustomerConsent.email_key == email)).all()) == 1
        assert len(records(rt, email)) == (3 if first_known else 2)


@pytest.mark.postgres
def test_two_sessions_recording_at_once_give_the_result_of_one_after_the_other(rt):
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("the race is PostgreSQL's")
    events = [
        Consent("subscribed", datetime(2026, 11, 1, tzinfo=UTC), "t"),
        Consent("unsubscribed", datetime(2026, 11, 3, tzinfo=UTC), "t"),
        Consent("subscribed", datetime(2026, 11, 2, tzinfo=UTC), "t"),
    ]
    for n in range(4):
        email = f"sessions{n}@example.com"

        def write(event: Consent, email: str = email) -> None:
            with Session(rt.engine) as s:
                record_consent(s, shop_domain=SHOP, email_key=email, event=event)
                s.commit()

        _concurrently(*[(lambda e=e: write(e)) for e in events])
        assert held(rt, email) == resolve(None, events)
