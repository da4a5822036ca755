"""The order timeline: what happened and what is planned, from our own tables."""

from __future__ import annotations

import json
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session

from aftercare.models import Order
from aftercare.orders import warehouse
from aftercare.orders.timeline import (
    OrderNotFound,
    order_timeline,
    render_markdown,
    timeline_json,
    timeline_text,
)
from aftercare.processing import process_row
from aftercare.spine.inbox import claim_batch
from tests.factories import deliver, fulfillment_payload, order_payload, refund_payload


def receive(rt, payload, topic="orders/create"):
    inbox_id = deliver(rt.engine, payload, topic=topic)
    claim_batch(rt.engine, 10)
    return process_row(rt, inbox_id)


def kinds(entries):
    return [(e.kind, e.status) for e in entries]


def test_timeline_of_a_shipped_order_tells_everything_in_order_and_what_is_planned(rt):
    order = order_payload("ja-first-gift")
    early = receive(
        rt, fulfillment_payload(order, lines=[9100011]), topic="fulfillments/create"
    )  # before the order
    receive(rt, order)
    process_row(rt, claim_batch(rt.engine, 10)[0].inbox_id)  # the released fulfillment
    for claimed in warehouse.claim_due(rt.engine, 10):
        warehouse.hand_off(
            rt.engine,
            claimed.handoff_id,
            warehouse.FileWarehouse(rt.settings.warehouse_dir),
            rt.renderer,
            rt.policies,
            rt.settings,
        )
    receive(rt, refund_payload(order, lines={9100011: 1}), topic="refunds/create")

    tl = order_timeline(rt.engine, "#1101", rt.policies.delivery)
    assert tl.order_name == "#1101" and tl.delivery.estimated
    summaries = [e.summary for e in tl.history]
    webhooks = [e for e in tl.history if e.kind == "webhook"]
    assert [w.detail["inbox_id"] for w in webhooks][0] == early.inbox_id  # the early fulfillment is there
    assert {w.summary.split(" received")[0] for w in webhooks} == {
        "fulfillments/create",
        "orders/create",
        "refunds/create",
    }
    assert "checked: no flags" in summaries
    assert any(s.startswith("hand-off v1 prepared") for s in summaries)
    assert any(s.startswith("hand-off v1 acknowledged by the warehouse") for s in summaries)
    assert any(
        s.startswith("fulfillment #1101.1 (success): ヤマト運輸, 4321-0987-6543; TOWEL-GIFT-W x1")
        for s in summaries
    )
    assert any(s.startswith("refund 6660001: line 9100011 x1") for s in summaries)
    cancelled = [e for e in tl.history if e.kind == "touchpoint" and e.status == "cancelled"]
    assert len(cancelled) == 1 and "refund 6660001" in cancelled[0].summary
    assert cancelled[0].policy_version == rt.policies.delivery.version
    times = [e.at for e in tl.history]
    assert times == sorted(times)

    planned = {e.summary: e for e in tl.planned if e.kind == "touchpoint"}
    # The confirmation is written but not yet sent (no sender ran): still planned.
    assert set(planned) == {"order_confirmation planned", "delivery_survey planned", "review_request planned"}
    assert planned["review_request planned"].at - planned["delivery_survey planned"].at == timedelta(days=5)
    assert planned["delivery_survey planned"].policy_version == rt.policies.delivery.version


def test_formats_for_the_cli_and_the_artifact(rt):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    receive(
        rt,
        fulfillment_payload(order, shipment_status="delivered", updated_at="2026-11-25T12:00:00+09:00"),
        topic="fulfillments/create",
    )
    tl = order_timeline(rt.engine, "1101", rt.policies.delivery)  # the name without '#' works too
    data = timeline_json(tl)
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert data["delivery"] == {"at": "2026-11-25T03:00:00+00:00", "estimated": False, "policy_version": None}
    assert [h["kind"] for h in data["history"]].count("message") == 2  # confirmation + notice, both pending

    text = timeline_text(tl, ZoneInfo("Asia/Tokyo"))
    assert text.startswith("#1101 (test-shop.myshopify.com)\ndelivery: 2026-11-25 12:00 JST, delivered\n")
    assert "2026-11-25 12:00 JST  delivery     delivered (carrier event) #1101.1" in text
    assert "review_request planned  [delivery-2026.11.1]" in text

    md = render_markdown(tl)
    assert md.startswith("# #1101: timeline") and "| when | what | detail | policy |" in md
    assert "## Planned" in md and "delivery_survey planned" in md


def test_timeline_by_shopify_id_and_pipes_in_text_do_not_break_the_table(rt):
    receive(rt, order_payload("en-first", note_attributes=[{"name": "gift_message", "value": "a | b"}]))
    tl = order_timeline(rt.engine, "820004", rt.policies.delivery)
    assert tl.order_name == "#1104"
    md = render_markdown(tl)
    assert all(line.count(" | ") <= 3 for line in md.splitlines() if line.startswith("| "))


def test_unknown_order_is_a_named_error(rt):
    with pytest.raises(OrderNotFound, match="#9999"):
        order_timeline(rt.engine, "#9999", rt.policies.delivery)


def test_cancelled_order_timeline_shows_the_cancellation_and_plans_nothing(rt):
    receive(rt, order_payload("ja-first-gift"))
    receive(
        rt,
        order_payload(
            "ja-first-gift", cancelled_at="2026-11-20T12:00:00+09:00", updated_at="2026-11-20T12:00:00+09:00"
        ),
        topic="orders/cancelled",
    )
    tl = order_timeline(rt.engine, "#1101", rt.policies.delivery)
    assert ("cancellation", None) in kinds(tl.history)
    assert any(e.summary.startswith("order_confirmation cancelled: order cancelled at") for e in tl.history)
    assert any(e.summary.startswith("hand-off v1 superseded: order cancelled") for e in tl.history)
    assert tl.planned == [] and "planned: nothing" in timeline_text(tl)
    with Session(rt.engine) as s:
        assert s.get(Order, tl.order_id).cancelled_at is not None
