"""An erased customer's data never comes back (SQLite and PostgreSQL): after customers/redact or
shop/redact, a later delivery for an erased order, customer or shop (a Shopify retry, a signed body
replayed under a new webhook id, an order listed in orders_to_redact we had not stored) is carried out
for the books (cancellation, refund, fulfillment) and leaves no personal data in any table or file;
nothing is mailed to the customer and nothing personal reaches the warehouse."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare.models import (
    Erasure,
    InboxEvent,
    InboxStatus,
    Order,
    OutboxMessage,
    PrivacyRequest,
    Refund,
    Shipment,
    WarehouseHandoff,
)
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.contact.test_privacy import (
    EMMA,
    HANAKO,
    HANAKO_TRACES,
    everything_text,
    file_texts,
    hanako_everywhere,
    post,
    redact_body,
    traces,
)
from tests.factories import fulfillment_payload, order_payload, refund_payload
from tests.pipeline import drain, rows, send_all, send_outbox

# Personal data a later delivery carries that the first one did not.
NEW_TRACES = ["hanako.new@example.jp", "090-9999-0000", "代々木2-2-2"]
EVERYONE = [*HANAKO_TRACES, *NEW_TRACES, EMMA, "Emma Wilson", "742 Evergreen Terrace"]


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, waker=NoWaker())) as c:
        yield c


def customer_update(customer_id: int = 7001, email_: str = HANAKO) -> dict[str, Any]:
    """A customers/update body naming the customer, with an address book and a consent."""
    return {
        "id": customer_id,
        "email": email_,
        "first_name": "花子",
        "last_name": "山田",
        "phone": "090-9999-0000",
        "created_at": "2025-04-01T09:00:00+09:00",
        "updated_at": "2026-11-21T09:00:00+09:00",
        "addresses": [{"address1": "代々木2-2-2", "name": "山田 花子", "phone": "090-9999-0000"}],
        "default_address": {"address1": "代々木2-2-2", "name": "山田 花子"},
        "email_marketing_consent": {
            "state": "subscribed",
            "opt_in_level": "single_opt_in",
            "consent_updated_at": "2026-11-21T09:00:00+09:00",
        },
    }


def consent_update(customer_id: int = 7001, email_: str = HANAKO) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "email_address": email_,
        "email_marketing_consent": {"state": "subscribed", "consent_updated_at": "2026-11-22T00:00:00Z"},
    }


def left_anywhere(rt: Any, needles: list[str]) -> list[str]:
    return traces(everything_text(rt), needles) + traces(file_texts(rt.settings.var_dir), needles)


def mails_to(rt: Any, address: str) -> list[OutboxMessage]:
    return [m for m in rows(rt, OutboxMessage) if (m.to_email or "").lower() == address]


def later(client: Any, payload: dict[str, Any], topic: str, wid: str) -> None:
    answer = post(client, payload, topic, webhook_id=wid)
    assert answer.status_code == 200 and answer.json()["status"] == InboxStatus.PENDING, answer.json()


def test_after_customers_redact_later_deliveries_bring_nothing_back(client, rt):
    hanako_everywhere(rt)
    original = order_payload()
    # #1102 was listed for erasure but never reached us; #1103 neither, and a fulfillment for it
    # arrives alone (it waits for its order).
    assert post(client, redact_body(orders=(820001, 820002, 820003)), "customers/redact").status_code == 200
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE, out.reason
    assert left_anywhere(rt, HANAKO_TRACES) == []
    mailed_before = {m.id for m in mails_to(rt, HANAKO)}
    assert mailed_before == set()
    with Session(rt.engine) as s:
        marks = {(e.kind, e.shopify_id) for e in s.exec(select(Erasure))}
    assert {("order", 820001), ("order", 820002), ("order", 820003), ("customer", 7001)} <= marks

    # 1. The original order body replayed under a new webhook id (same updated_at: not stale).
    later(client, original, "orders/updated", "wh-replay-1")
    # 2. A real change: the order cancelled in Shopify, carrying the personal fields again, and a new
    #    phone and address.
    cancelled = order_payload(
        updated_at="2026-11-23T10:00:00+09:00",
        cancelled_at="2026-11-23T10:00:00+09:00",
        cancel_reason="customer",
        phone="090-9999-0000",
    )
    cancelled["shipping_address"] = {**original["shipping_address"], "address2": "代々木2-2-2"}
    later(client, cancelled, "orders/cancelled", "wh-cancel-1")
    # 3. A second fulfillment with the destination address, and a refund.
    fulfillment = fulfillment_payload(original, fulfillment_id=5550002)
    fulfillment["destination"] = original["shipping_address"]
    later(client, fulfillment, "fulfillments/create", "wh-ful-2")
    later(client, refund_payload(original, note="山田 花子 様 返金"), "refunds/create", "wh-refund-1")
    # 4. The customer, and their consent.
    later(client, customer_update(email_="hanako.new@example.jp"), "customers/update", "wh-cust-1")
    later(client, consent_update(), "customers_email_marketing_consent/update", "wh-consent-1")
    # 5. An order listed in orders_to_redact that we had never stored.
    later(client, order_payload(id=820002, name="#1102", order_number=1102), "orders/create", "wh-new-1")
    # 6. A fulfillment for another listed order we never stored: it waits for its order.
    lonely = fulfillment_payload(order_payload(id=820003, name="#1103"), fulfillment_id=5550003)
    lonely["destination"] = original["shipping_address"]
    later(client, lonely, "fulfillments/create", "wh-ful-3")
    outs = drain(rt)
    drain(rt)
    send_all(rt, rt.warehouse)
    send_outbox(rt)

    assert all(o.status in (InboxStatus.DONE, InboxStatus.WAITING) for o in outs), [
        (o.topic, o.status, o.reason) for o in outs
    ]
    assert len(outs) == 8
    assert left_anywhere(rt, EVERYONE[: len(HANAKO_TRACES) + len(NEW_TRACES)]) == []
    # Every such delivery says why it was erased again.
    for o in outs:
        assert "erased" in (o.reason or ""), (o.topic, o.reason)
    # The books: the cancellation, the refund, the fulfillment and the new order are kept.
    with Session(rt.engine) as s:
        first = s.exec(select(Order).where(Order.shopify_id == 820001)).one()
        assert first.cancelled_at is not None and first.email is None and first.shipping_address is None
        assert first.customer_id is None
        assert s.exec(select(Refund).where(Refund.order_id == first.id)).first() is not None
        assert {sh.shopify_id for sh in s.exec(select(Shipment).where(Shipment.order_id == first.id))} >= {
            5550002
        }
        second = s.exec(select(Order).where(Order.shopify_id == 820002)).one()
        assert (second.name, second.email, second.shipping_address) == ("#1102", None, None)
        assert second.total == Decimal(original["total_price"])
        for handoff in s.exec(select(WarehouseHandoff)):
            assert traces([("handoff", str(handoff.instruction))], HANAKO_TRACES) == []
        waiting = s.exec(select(InboxEvent).where(InboxEvent.status == InboxStatus.WAITING)).all()
        assert [w.topic for w in waiting] == ["fulfillments/create"]
        # One privacy request, the redaction's own: the deliveries after it are no new requests.
        assert len(s.exec(select(PrivacyRequest)).all()) == 1
    # Nothing was mailed to the erased customer, at either address.
    assert mails_to(rt, HANAKO) == [] and mails_to(rt, "hanako.new@example.jp") == []
    # Emma's data is hers still.
    assert left_anywhere(rt, [EMMA])


def test_after_shop_redact_later_deliveries_bring_nothing_back(client, rt):
    hanako_everywhere(rt)
    assert post(client, {"shop_id": 954889, "shop_domain": "test-shop.myshopify.com"}, "shop/redact")
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE and "shop redacted" in out.reason
    assert left_anywhere(rt, EVERYONE) == []

    emma = order_payload("en-first")
    later(client, emma, "orders/updated", "wh-emma-replay")
    later(client, customer_update(7004, EMMA), "customers/update", "wh-emma-cust")
    fulfillment = fulfillment_payload(order_payload(), fulfillment_id=5550009)
    fulfillment["destination"] = order_payload()["shipping_address"]
    later(client, fulfillment, "fulfillments/create", "wh-hanako-ful")
    # An order of the shop from before the redaction that we never stored.
    later(client, order_payload(id=820077, name="#1177", order_number=1177), "orders/create", "wh-old")
    outs = drain(rt)
    drain(rt)
    send_all(rt, rt.warehouse)
    send_outbox(rt)
    assert [o.status for o in outs] == [InboxStatus.DONE] * 4, [(o.topic, o.reason) for o in outs]
    assert left_anywhere(rt, EVERYONE) == []
    assert mails_to(rt, EMMA) == [] and mails_to(rt, HANAKO) == []
    with Session(rt.engine) as s:
        assert s.exec(select(Order).where(Order.shopify_id == 820077)).one().email is None
        assert len(s.exec(select(PrivacyRequest)).all()) == 1


def test_a_new_order_after_a_shop_redact_is_served_as_usual(client, rt):
    """A shop that installs us again: an order placed after the redaction is new data, kept."""
    post(client, order_payload("en-first"), "orders/create")
    drain(rt)
    post(client, {"shop_id": 954889, "shop_domain": "test-shop.myshopify.com"}, "shop/redact")
    drain(rt)
    fresh = order_payload(
        "en-first",
        id=820555,
        name="#1555",
        order_number=1555,
        created_at="2099-01-01T10:00:00+00:00",
        processed_at="2099-01-01T10:00:00+00:00",
        updated_at="2099-01-01T10:00:00+00:00",
    )
    later(client, fresh, "orders/create", "wh-fresh")
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE and "erased" not in (out.reason or "")
    with Session(rt.engine) as s:
        assert s.exec(select(Order).where(Order.shopify_id == 820555)).one().email == EMMA


def test_a_delivery_carried_out_while_the_redaction_committed_is_erased_at_its_end(client, rt, monkeypatch):
    """The first look (before the handler takes the order's lock) can miss a redaction that commits
    meanwhile: the look at the end of the transaction finds it, and erases what the delivery wrote
    with its personal parts (the customer row, the order's fields, the consent for a new address)."""
    from aftercare.contact import privacy

    hanako_everywhere(rt)
    post(client, redact_body(), "customers/redact")
    drain(rt)
    real, looks = privacy.erased_subject, []

    def first_look_misses(*args: Any) -> Any:
        looks.append(args)
        return None if len(looks) % 2 == 1 else real(*args)

    monkeypatch.setattr(privacy, "erased_subject", first_look_misses)
    later(client, order_payload(), "orders/updated", "wh-race-1")
    later(client, customer_update(email_="hanako.new@example.jp"), "customers/update", "wh-race-2")
    outs = drain(rt)
    assert len(looks) == 4
    assert [o.status for o in outs] == [InboxStatus.DONE] * 2
    assert all("erased again" in (o.reason or "") for o in outs), [o.reason for o in outs]
    assert left_anywhere(rt, [*HANAKO_TRACES, *NEW_TRACES]) == []
    with Session(rt.engine) as s:
        assert s.exec(select(Order).where(Order.shopify_id == 820001)).one().email is None
    assert mails_to(rt, HANAKO) == []


def test_an_unusable_delivery_for_an_erased_order_is_kept_invalid_without_its_personal_parts(client, rt):
    hanako_everywhere(rt)
    post(client, redact_body(), "customers/redact")
    drain(rt)
    # Unusable at receipt (kept for ops, never processed).
    broken = order_payload(total_price="not a price", updated_at="2026-11-30T10:00:00+09:00")
    answer = post(client, broken, "orders/updated", webhook_id="wh-broken")
    assert answer.json()["status"] == InboxStatus.INVALID
    assert "personal parts removed: order 820001 was erased" in answer.json()["reason"]
    # Unusable only when carried out: a carrier event naming the erased order for another's parcel.
    emma = order_payload("en-first")
    post(client, fulfillment_payload(emma, fulfillment_id=5550444), "fulfillments/create")
    drain(rt)
    event = {
        "id": 9990001,
        "order_id": 820001,
        "fulfillment_id": 5550444,
        "status": "delivered",
        "happened_at": "2026-11-24T10:00:00+09:00",
        "created_at": "2026-11-24T10:00:00+09:00",
        "message": "山田 花子 様にお届けしました",
        "address1": "神宮前1-2-3",
        "city": "渋谷区",
    }
    later(client, event, "fulfillment_events/create", "wh-event")
    [out] = drain(rt)
    assert out.status == InboxStatus.INVALID and "personal parts removed" in out.reason, out.reason
    assert left_anywhere(rt, HANAKO_TRACES) == []
    for wid in ("wh-broken", "wh-event"):  # the ids are kept for ops
        [row] = rows(rt, InboxEvent, InboxEvent.delivery_id == wid)
        assert b"820001" in row.body
