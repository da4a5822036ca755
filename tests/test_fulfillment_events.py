"""Carrier events (fulfillment_events/create) on a real database: kept for the timeline, a delivered
one corrects the estimated delivery and moves what is planned after it, duplicates and stale events
change nothing, and an event before its fulfillment waits for it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from aftercare.models import InboxEvent, InboxWait, OutboxMessage, Shipment, ShipmentEvent, Touchpoint
from aftercare.orders import shipping
from aftercare.orders.timeline import order_timeline, timeline_json, timeline_text
from aftercare.processing import process_row
from aftercare.spine.inbox import Delivery, claim_batch, store_delivery
from aftercare.web.app import classify_shopify
from tests.conftest import shared_path
from tests.factories import SHOP, body_of, deliver, fulfillment_payload, order_payload, refund_payload
from tests.pipeline import drain, jst, process, rows

TOPIC = "fulfillment_events/create"
SHIPPED = "2026-11-24T15:00:00+09:00"  # the sample fulfillment's created_at; ヤマト運輸: 1 transit day


def event_payload(
    order: dict, *, event_id: int = 7770001, fulfillment_id: int = 5550001, **overrides
) -> dict:
    """A fulfillment_events/create body in Shopify's FulfillmentEvent shape (the bare object)."""
    payload = {
        "id": event_id,
        "fulfillment_id": fulfillment_id,
        "order_id": order["id"],
        "shop_id": 49144037539,
        "status": "in_transit",
        "message": "荷物を輸送中です",
        "happened_at": "2026-11-24T21:00:00+09:00",
        "created_at": "2026-11-24T21:05:00+09:00",
        "updated_at": "2026-11-24T21:05:00+09:00",
        "estimated_delivery_at": None,
        "city": "渋谷区",
        "province": "東京都",
        "zip": "150-0001",
        "country": "Japan",
        "address1": None,
        "latitude": None,
        "longitude": None,
        "admin_graphql_api_id": f"gid://shopify/FulfillmentEvent/{event_id}",
    }
    payload.update(overrides)
    return payload


def deliver_as_web(rt, payload, topic, webhook_id=None):
    """Store a delivery with the search label the web receiver gives it (deliver() takes the name)."""
    body = body_of(payload)
    inbox_id, _new = store_delivery(
        rt.engine,
        Delivery(
            source="shopify",
            delivery_id=webhook_id or str(uuid.uuid4()),
            event_id=None,
            topic=topic,
            shop_domain=SHOP,
            triggered_at=None,
            body=body,
            subject_ref=classify_shopify(topic, body)[2],
        ),
    )
    return inbox_id


def receive(rt, payload, topic="orders/create", **kwargs):
    inbox_id = (
        deliver_as_web(rt, payload, topic, **kwargs)
        if topic == TOPIC
        else deliver(rt.engine, payload, topic=topic, **kwargs)
    )
    return process(rt, inbox_id)


def touchpoint(rt, kind):
    [tp] = rows(rt, Touchpoint, Touchpoint.kind == kind)
    return tp


def shipped_order(rt, sample="ja-first-gift"):
    order = order_payload(sample)
    receive(rt, order)
    receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    return order


# --- delivered: the real time replaces the estimate ----------------------------------------------


def test_delivered_event_corrects_the_estimate_and_moves_survey_and_review_request(rt):
    order = shipped_order(rt)
    survey = touchpoint(rt, "delivery_survey")
    assert survey.due_at == jst(SHIPPED) + timedelta(days=1 + 2)  # estimated: 1 transit day + 2
    messages = len(rows(rt, OutboxMessage))

    out = receive(
        rt, event_payload(order, status="delivered", happened_at="2026-11-27T11:30:00+09:00"), topic=TOPIC
    )
    assert out.status == "done" and out.order_name == "#1101" and out.reason is None
    [shipment] = rows(rt, Shipment)
    assert shipment.delivered_at == jst("2026-11-27T11:30:00+09:00")
    assert shipment.shipment_status == "delivered"
    assert touchpoint(rt, "delivery_survey").due_at == jst("2026-11-29T11:30:00+09:00")
    assert touchpoint(rt, "review_request").due_at == jst("2026-12-04T11:30:00+09:00")
    assert len(rows(rt, OutboxMessage)) == messages  # nothing sent, nothing written
    with Session(rt.engine) as s:
        assert s.get(InboxEvent, out.inbox_id).subject_ref == "#1101"  # findable by order name
        delivery = shipping.order_delivery(s, shipping.find_order(s, 820001), rt.policies.delivery)
    assert not delivery.estimated and delivery.at == shipment.delivered_at


def test_delivered_event_replaces_the_time_a_delivered_fulfillment_update_implied(rt):
    order = shipped_order(rt)
    receive(
        rt,
        fulfillment_payload(order, shipment_status="delivered", updated_at="2026-11-27T18:00:00+09:00"),
        topic="fulfillments/update",
    )
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-27T18:00:00+09:00")  # when Shopify noted it
    receive(
        rt, event_payload(order, status="delivered", happened_at="2026-11-27T11:30:00+09:00"), topic=TOPIC
    )
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-27T11:30:00+09:00")  # the carrier's own
    assert touchpoint(rt, "delivery_survey").due_at == jst("2026-11-29T11:30:00+09:00")
    # A later fulfillment update (a tracking edit, still "delivered") does not move it again.
    receive(
        rt,
        fulfillment_payload(order, shipment_status="delivered", updated_at="2026-11-28T09:00:00+09:00"),
        topic="fulfillments/update",
    )
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-27T11:30:00+09:00")


def test_wrapped_event_body_is_accepted_too(rt):
    order = shipped_order(rt)
    wrapped = {"fulfillment_event": event_payload(order, status="delivered")}
    out = receive(rt, wrapped, topic=TOPIC)
    assert out.status == "done" and rows(rt, Shipment)[0].delivered_at == jst("2026-11-24T21:00:00+09:00")


# --- other statuses: recorded, nothing sent ------------------------------------------------------------


def test_transit_events_are_recorded_for_the_timeline_and_send_nothing(rt):
    order = shipped_order(rt)
    before = [(t.kind, t.status, t.due_at) for t in rows(rt, Touchpoint)]
    messages = [(m.id, m.status) for m in rows(rt, OutboxMessage)]
    steps = [
        ("label_printed", "2026-11-24T15:10:00+09:00", None),
        ("in_transit", "2026-11-24T21:00:00+09:00", "荷物を輸送中です"),
        ("out_for_delivery", "2026-11-25T08:00:00+09:00", "配達中です"),
        ("attempted_delivery", "2026-11-25T11:00:00+09:00", "ご不在のため持ち戻りました"),
        ("failure", "2026-11-25T20:00:00+09:00", "住所不明"),
    ]
    for n, (status, at, message) in enumerate(steps):
        out = receive(
            rt,
            event_payload(order, event_id=7770100 + n, status=status, happened_at=at, message=message),
            TOPIC,
        )
        assert out.status == "done" and out.outbox_id is None
        assert rows(rt, Shipment)[0].shipment_status == status  # the newest carrier status
    assert [e.status for e in rows(rt, ShipmentEvent)] == [s for s, _, _ in steps]
    assert rows(rt, Shipment)[0].delivered_at is None
    assert [(t.kind, t.status, t.due_at) for t in rows(rt, Touchpoint)] == before  # still the estimate
    assert [(m.id, m.status) for m in rows(rt, OutboxMessage)] == messages

    tl = order_timeline(rt.engine, "#1101", rt.policies.delivery)
    carrier = [e for e in tl.history if e.kind == "carrier"]
    assert [e.status for e in carrier] == [s for s, _, _ in steps]
    assert (
        carrier[3].summary
        == "attempted_delivery #1101.1: ご不在のため持ち戻りました (渋谷区, 東京都, 150-0001, Japan)"
    )
    assert tl.delivery.estimated
    data = timeline_json(tl)
    assert json.loads(json.dumps(data)) == data
    [failure] = [h for h in data["history"] if h["kind"] == "carrier" and h["status"] == "failure"]
    assert failure["at"] == "2026-11-25T11:00:00+00:00" and failure["detail"]["event_id"] == 7770104
    assert failure["detail"]["message"] == "住所不明"


def test_timeline_text_shows_the_delivered_event_and_the_real_delivery(rt):
    order = shipped_order(rt)
    receive(
        rt, event_payload(order, status="out_for_delivery", happened_at="2026-11-25T08:00:00+09:00"), TOPIC
    )
    receive(
        rt,
        event_payload(
            order, event_id=7770002, status="delivered", message=None, happened_at="2026-11-25T12:00:00+09:00"
        ),
        TOPIC,
    )
    from zoneinfo import ZoneInfo

    text = timeline_text(order_timeline(rt.engine, "#1101", rt.policies.delivery), ZoneInfo("Asia/Tokyo"))
    assert "delivery: 2026-11-25 12:00 JST, delivered\n" in text
    assert "2026-11-25 08:00 JST  carrier      out_for_delivery #1101.1: 荷物を輸送中です" in text
    assert "2026-11-25 12:00 JST  carrier      delivered #1101.1 (渋谷区, 東京都, 150-0001, Japan)" in text
    webhooks = [line for line in text.splitlines() if "fulfillment_events/create received: done" in line]
    assert len(webhooks) == 2


# --- duplicates and stale events ------------------------------------------------------------------------


def test_same_event_twice_is_recorded_once_and_changes_nothing_the_second_time(rt):
    order = shipped_order(rt)
    delivered = event_payload(order, status="delivered", happened_at="2026-11-27T11:30:00+09:00")
    receive(rt, delivered, topic=TOPIC)
    survey = touchpoint(rt, "delivery_survey")
    # Shopify re-sends the same event under a new webhook id, with a different time (never trusted twice).
    again = receive(rt, dict(delivered, happened_at="2026-11-28T09:00:00+09:00"), topic=TOPIC)
    assert again.status == "done" and again.reason == "event 7770001 was already recorded"
    assert len(rows(rt, ShipmentEvent)) == 1
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-27T11:30:00+09:00")
    assert touchpoint(rt, "delivery_survey").due_at == survey.due_at


def test_same_webhook_delivered_twice_is_one_inbox_row(rt):
    order = shipped_order(rt)
    first = deliver_as_web(rt, event_payload(order), TOPIC, webhook_id="wh-1")
    assert first is not None and deliver_as_web(rt, event_payload(order), TOPIC, webhook_id="wh-1") is None
    drain(rt)
    assert len(rows(rt, InboxEvent, InboxEvent.topic == TOPIC)) == 1
    assert len(rows(rt, ShipmentEvent)) == 1


def test_events_older_than_a_delivery_do_not_regress_it(rt):
    order = shipped_order(rt)
    receive(
        rt,
        event_payload(order, event_id=1, status="delivered", happened_at="2026-11-26T10:00:00+09:00"),
        TOPIC,
    )
    survey = touchpoint(rt, "delivery_survey")
    # Late arrivals: an older transit event, and a failure scan after the delivery.
    out = receive(
        rt,
        event_payload(order, event_id=2, status="in_transit", happened_at="2026-11-25T08:00:00+09:00"),
        TOPIC,
    )
    assert out.status == "done" and "delivered already" in out.reason
    receive(
        rt, event_payload(order, event_id=3, status="failure", happened_at="2026-11-27T08:00:00+09:00"), TOPIC
    )
    [shipment] = rows(rt, Shipment)
    assert (shipment.shipment_status, shipment.delivered_at) == (
        "delivered",
        jst("2026-11-26T10:00:00+09:00"),
    )
    assert touchpoint(rt, "delivery_survey").due_at == survey.due_at
    # A fulfillment update that still says in_transit (older carrier news) does not undo it either.
    receive(
        rt,
        fulfillment_payload(order, shipment_status="in_transit", updated_at="2026-11-26T12:00:00+09:00"),
        topic="fulfillments/update",
    )
    [shipment] = rows(rt, Shipment)
    assert (shipment.shipment_status, shipment.delivered_at) == (
        "delivered",
        jst("2026-11-26T10:00:00+09:00"),
    )


def test_an_older_transit_event_arriving_late_does_not_move_the_status_back(rt):
    order = shipped_order(rt)
    receive(
        rt,
        event_payload(order, event_id=2, status="out_for_delivery", happened_at="2026-11-25T08:00:00+09:00"),
        TOPIC,
    )
    out = receive(
        rt,
        event_payload(order, event_id=1, status="in_transit", happened_at="2026-11-24T21:00:00+09:00"),
        TOPIC,
    )
    assert "older than the out_for_delivery event" in out.reason
    assert rows(rt, Shipment)[0].shipment_status == "out_for_delivery"
    assert len(rows(rt, ShipmentEvent)) == 2  # both kept for the timeline


def test_two_delivered_events_keep_the_earliest_whatever_order_they_arrive_in(rt):
    order = shipped_order(rt)
    receive(
        rt,
        event_payload(order, event_id=2, status="delivered", happened_at="2026-11-27T09:00:00+09:00"),
        TOPIC,
    )
    receive(
        rt,
        event_payload(order, event_id=1, status="delivered", happened_at="2026-11-26T09:00:00+09:00"),
        TOPIC,
    )
    out = receive(
        rt,
        event_payload(order, event_id=3, status="delivered", happened_at="2026-11-28T09:00:00+09:00"),
        TOPIC,
    )
    assert "delivered earlier" in out.reason
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-26T09:00:00+09:00")
    assert touchpoint(rt, "delivery_survey").due_at == jst("2026-11-28T09:00:00+09:00")


def test_delivered_event_of_a_cancelled_or_fully_refunded_order_plans_nothing(rt):
    order = shipped_order(rt)
    receive(rt, refund_payload(order), topic="refunds/create")
    assert {t.status for t in rows(rt, Touchpoint)} == {"cancelled"}
    out = receive(rt, event_payload(order, status="delivered"), TOPIC)
    assert out.status == "done" and rows(rt, Shipment)[0].delivered_at is not None
    assert {t.status for t in rows(rt, Touchpoint)} == {"cancelled"}


# --- an event before its fulfillment (or its order) waits ---------------------------------------------


def test_event_before_its_fulfillment_waits_and_is_applied_when_the_fulfillment_arrives(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    out = receive(
        rt, event_payload(order, status="delivered", happened_at="2026-11-27T11:30:00+09:00"), TOPIC
    )
    assert out.status == "waiting" and "fulfillment 5550001 of order 820001" in out.reason
    assert claim_batch(rt.engine, 10) == []  # not retried in a loop...
    [row] = rows(rt, InboxEvent, InboxEvent.topic == TOPIC)
    assert row.status == "waiting" and row.subject_ref == "order-id:820001"  # ...and not dropped
    [wait] = rows(rt, InboxWait)
    assert (wait.order_shopify_id, wait.fulfillment_shopify_id) == (820001, 5550001)
    # Another delivery of the order does not release it: the order alone is not enough.
    receive(
        rt, order_payload("ja-first-gift", updated_at="2026-11-20T11:00:00+09:00"), topic="orders/updated"
    )
    assert shipping.release_ready(rt.engine) == [] and claim_batch(rt.engine, 10) == []

    shipped = receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    assert shipped.released == [out.inbox_id]
    [applied] = drain(rt)
    assert applied.inbox_id == out.inbox_id and applied.status == "done" and applied.order_name == "#1101"
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-27T11:30:00+09:00")
    assert touchpoint(rt, "delivery_survey").due_at == jst("2026-11-29T11:30:00+09:00")
    assert rows(rt, InboxWait) == []


def test_event_before_order_and_fulfillment_waits_through_both(rt):
    order = order_payload("ja-first-gift")
    waiting = receive(rt, event_payload(order, status="delivered"), TOPIC)
    early = receive(rt, fulfillment_payload(order), topic="fulfillments/create")
    assert waiting.status == early.status == "waiting"
    placed = receive(rt, order)
    assert placed.released == [early.inbox_id]  # the fulfillment only
    [fulfilled] = drain(rt)
    assert fulfilled.inbox_id == early.inbox_id and fulfilled.released == [waiting.inbox_id]
    [applied] = drain(rt)
    assert applied.inbox_id == waiting.inbox_id and applied.status == "done"
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-24T21:00:00+09:00")
    # It shows in the order's timeline as received (by its order id while it waited, then by name).
    tl = order_timeline(rt.engine, "#1101", rt.policies.delivery)
    assert sum(1 for e in tl.history if e.kind == "webhook" and e.summary.startswith(TOPIC)) == 1


def test_sweep_releases_an_event_parked_while_its_fulfillment_was_committing(rt):
    order = shipped_order(rt)
    inbox_id = deliver_as_web(rt, event_payload(order), TOPIC)
    with Session(rt.engine) as s:
        shipping.park(s, s.get(InboxEvent, inbox_id), 820001, fulfillment_shopify_id=5550001)
        s.commit()
    assert claim_batch(rt.engine, 10) == []
    assert shipping.release_ready(rt.engine) == [inbox_id]
    [out] = drain(rt)
    assert out.status == "done" and len(rows(rt, ShipmentEvent)) == 1


def test_waiting_event_shows_in_the_timeline_of_its_order(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    out = receive(rt, event_payload(order), TOPIC)
    tl = order_timeline(rt.engine, "#1101", rt.policies.delivery)
    [entry] = [e for e in tl.history if e.kind == "webhook" and e.summary.startswith(TOPIC)]
    assert entry.status == "waiting" and entry.detail["inbox_id"] == out.inbox_id


# --- malformed and hostile payloads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"fulfillment_id": None}, "fulfillment_id"),
        ({"order_id": "abc"}, "order_id"),
        ({"id": -5}, "id"),
        ({"id": 2**70}, "id"),  # would overflow BIGINT
        ({"happened_at": None}, "happened_at"),
        ({"happened_at": "2026-11-27T11:30:00"}, "no UTC offset"),
        ({"happened_at": "9999-12-31T23:59:59-05:00"}, "out of range"),
        ({"happened_at": "1970-01-01T00:00:00Z"}, "outside 2000-2200"),
        ({"status": "<script>alert(1)</script>"}, "status"),
        ({"status": "x" * 40}, "status"),
        ({"status": ""}, "status"),
        ({"status": ["delivered"]}, "status"),
    ],
)
def test_unusable_event_is_invalid_with_the_field_named_and_changes_nothing(rt, change, field):
    order = shipped_order(rt)
    survey = touchpoint(rt, "delivery_survey")
    payload = event_payload(order, status="delivered")
    payload.update(change)
    out = receive(rt, payload, TOPIC)
    assert out.status == "invalid" and field in out.reason
    assert classify_shopify(TOPIC, body_of(payload))[0] == "invalid"
    assert rows(rt, ShipmentEvent) == [] and rows(rt, Shipment)[0].delivered_at is None
    assert touchpoint(rt, "delivery_survey").due_at == survey.due_at
    assert claim_batch(rt.engine, 10) == []  # never retried


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b'"delivered"', b'{"fulfillment_event": 5}', b"\xff\xfe"]
)
def test_event_body_that_is_not_an_object_is_invalid(rt, body):
    inbox_id, _ = store_delivery(
        rt.engine,
        Delivery(
            source="shopify",
            delivery_id=f"bad-{body!r}",
            event_id=None,
            topic=TOPIC,
            shop_domain=SHOP,
            triggered_at=None,
            body=body,
        ),
    )
    claim_batch(rt.engine, 10)
    out = process_row(rt, inbox_id)
    assert out.status == "invalid" and (
        "JSON" in out.reason or "object" in out.reason or "missing" in out.reason
    )


def test_event_claiming_another_orders_fulfillment_is_invalid(rt):
    order = shipped_order(rt)
    out = receive(rt, event_payload(order, status="delivered", order_id=820004), TOPIC)
    assert out.status == "invalid" and "belongs to order 820001, not to order 820004" in out.reason
    assert rows(rt, ShipmentEvent) == [] and rows(rt, Shipment)[0].delivered_at is None
    with Session(rt.engine) as s:
        assert s.get(InboxEvent, out.inbox_id).subject_ref == "order-id:820004"


def test_carrier_text_is_stored_cut_short_without_nul_and_shown_as_text(rt):
    order = shipped_order(rt)
    message = "<img src=x onerror=alert(1)>\x00" + "長" * 2000
    out = receive(rt, event_payload(order, message=message, city="| pipe |"), TOPIC)
    assert out.status == "done"
    [event] = rows(rt, ShipmentEvent)
    assert "\x00" not in event.message and len(event.message) == 500
    from aftercare.orders.timeline import render_markdown

    md = render_markdown(order_timeline(rt.engine, "#1101", rt.policies.delivery))
    assert all(line.count(" | ") <= 3 for line in md.splitlines() if line.startswith("| "))


def test_unknown_but_well_formed_status_is_kept(rt):
    order = shipped_order(rt)
    out = receive(rt, event_payload(order, status="Ready_For_Pickup "), TOPIC)
    assert out.status == "done" and rows(rt, ShipmentEvent)[0].status == "ready_for_pickup"


def test_web_app_classifies_the_event_topic_by_order_id():
    order = order_payload("ja-first-gift")
    assert classify_shopify(TOPIC, body_of(event_payload(order))) == ("pending", None, "order-id:820001")
    wrapped = body_of({"fulfillment_event": event_payload(order)})
    assert classify_shopify(TOPIC, wrapped) == ("pending", None, "order-id:820001")
    status, reason, _ = classify_shopify(TOPIC, b'{"fulfillment_event": {"id": 1}}')
    assert status == "invalid" and "fulfillment_id" in reason and "happened_at" in reason


# --- Shopify's real resource -------------------------------------------------------------------------------


@pytest.mark.contract
def test_real_fulfillment_event_fixture_is_recorded_and_its_delivered_twin_sets_the_time(rt):
    fixture = json.loads(shared_path("fixtures", "shopify", "fulfillment_event.json").read_text())
    real = fixture["fulfillment_event"]
    order = order_payload("ja-first-gift", id=real["order_id"])
    receive(rt, order)
    receive(
        rt, fulfillment_payload(order, fulfillment_id=real["fulfillment_id"]), topic="fulfillments/create"
    )
    out = receive(rt, fixture, TOPIC)  # wrapped, as the fixture is
    assert out.status == "done" and out.order_name == "#1101"
    [event] = rows(rt, ShipmentEvent)
    assert (event.shopify_id, event.status, event.message, event.location) == (
        12584341209251,
        "label_printed",
        None,
        None,
    )
    assert event.happened_at == datetime(2021, 1, 25, 21, 32, 23, tzinfo=UTC)
    delivered = dict(real, id=real["id"] + 1, status="delivered", happened_at="2026-11-27T11:30:00+09:00")
    receive(rt, delivered, TOPIC)  # bare, as a webhook body is
    assert rows(rt, Shipment)[0].delivered_at == jst("2026-11-27T11:30:00+09:00")
    assert touchpoint(rt, "delivery_survey").due_at == jst("2026-11-29T11:30:00+09:00")


# --- the command line ------------------------------------------------------------------------------


def test_aftercare_timeline_shows_carrier_events_in_text_and_json(rt, monkeypatch, tmp_path, capsys):
    from aftercare.cli import main
    from tests.test_cli import _set_env

    order = shipped_order(rt)
    receive(
        rt, event_payload(order, status="out_for_delivery", happened_at="2026-11-25T08:00:00+09:00"), TOPIC
    )
    receive(
        rt,
        event_payload(order, event_id=7770002, status="delivered", happened_at="2026-11-25T12:00:00+09:00"),
        TOPIC,
    )
    _set_env(monkeypatch, tmp_path, rt.settings.database_url, rt.settings.var_dir)
    capsys.readouterr()
    assert main(["timeline", "#1101"]) == 0
    text = capsys.readouterr().out
    assert "carrier      out_for_delivery #1101.1: 荷物を輸送中です" in text
    assert "carrier      delivered #1101.1" in text and "delivered (carrier event) #1101.1" in text
    assert main(["timeline", "#1101", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    carrier = [e for e in data["history"] if e["kind"] == "carrier"]
    assert [(e["status"], e["detail"]["event_id"]) for e in carrier] == [
        ("out_for_delivery", 7770001),
        ("delivered", 7770002),
    ]
    assert data["delivery"] == {"at": "2026-11-25T03:00:00+00:00", "estimated": False, "policy_version": None}
