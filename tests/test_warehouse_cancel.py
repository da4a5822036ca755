"""A cancellation after the warehouse had the order: one cancel version, sent through the same port,
claim and retries as a shipping instruction; not sent once the order shipped; once per order."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from sqlmodel import Session, select

from aftercare.models import WarehouseHandoff, utcnow
from aftercare.orders import warehouse
from aftercare.orders.timeline import order_timeline, timeline_json
from tasks.shipping import handoff_markdown
from tests.factories import SHOP, fulfillment_payload, order_payload
from tests.pipeline import http_port, receive, send_all

CANCELLED_AT = "2026-11-20T12:00:00+09:00"


def cancel(rt, topic="orders/cancelled", **fields):
    wanted = {"cancelled_at": CANCELLED_AT, "cancel_reason": "customer", "updated_at": CANCELLED_AT, **fields}
    return receive(rt, order_payload("ja-first-gift", **wanted), topic=topic)


def handoffs(rt) -> list[WarehouseHandoff]:
    with Session(rt.engine) as s:
        return list(s.exec(select(WarehouseHandoff).order_by(WarehouseHandoff.version)))


def make_due(rt, handoff_id):
    with Session(rt.engine) as s:
        row = s.get(WarehouseHandoff, handoff_id)
        row.next_attempt_at = utcnow()
        s.add(row)
        s.commit()


def files(rt) -> warehouse.FileWarehouse:
    return warehouse.FileWarehouse(rt.settings.warehouse_dir)


# --- the instruction ---------------------------------------------------------------------------------


def test_ship_instructions_say_ship_and_keep_their_identity_from_before_the_field(rt):
    receive(rt, order_payload("ja-first-gift"))
    [v1] = handoffs(rt)
    assert v1.instruction["action"] == "ship"
    # A version written before instructions named their action: the same content is the same version.
    with Session(rt.engine) as s:
        row = s.get(WarehouseHandoff, v1.id)
        row.instruction = {k: v for k, v in row.instruction.items() if k != "action"}
        s.add(row)
        s.commit()
    receive(
        rt, order_payload("ja-first-gift", updated_at="2026-11-20T11:00:00+09:00"), topic="orders/updated"
    )
    assert [h.version for h in handoffs(rt)] == [1]
    assert warehouse.digest({**v1.instruction, "action": "cancel"}) != v1.digest


def test_cancelled_after_the_warehouse_acknowledged_plans_one_cancellation(rt):
    receive(rt, order_payload("ja-first-gift"))
    [sent] = send_all(rt, files(rt))
    assert sent.status == "sent"
    out = cancel(rt)
    v1, v2 = handoffs(rt)
    assert (v1.status, v2.status, v2.version, out.handoff_id) == ("sent", "pending", 2, v2.id)
    assert v2.instruction == {
        "schema": warehouse.SCHEMA,
        "action": "cancel",
        "shop_domain": "test-shop.myshopify.com",
        "order": {"id": 820001, "name": "#1101", "number": 1101},
        "cancels_version": 1,
        "cancels_reference": v1.reference,
        "reason": "customer",
        "cancelled_at": "2026-11-20T03:00:00+00:00",
        "flags": [],
        "policy_version": rt.policies.requests.version,
    }
    assert v2.digest == warehouse.digest(v2.instruction) and v2.flags == []
    assert warehouse.idempotency_key(v2) == "test-shop.myshopify.com:820001:cancel"
    assert warehouse.idempotency_key(v1) == "test-shop.myshopify.com:820001:v1"


def test_files_port_writes_a_clearly_named_cancellation_beside_the_instruction(rt):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, files(rt))
    cancel(rt)
    [result] = send_all(rt, files(rt))
    folder = rt.settings.warehouse_dir / SHOP / "820001"
    assert result.status == "sent" and result.reference == str(folder / "CANCELLED.json")
    data = json.loads((folder / "CANCELLED.json").read_text())
    assert (data["action"], data["order"]["name"], data["version"], data["reason"]) == (
        "cancel",
        "#1101",
        2,
        "customer",
    )
    note = (folder / "CANCELLED.txt").read_text()
    for expected in [
        "【出荷取消】#1101",
        "出荷しないでください",
        "第1版の出荷指示",
        "■理由：お客様のご都合",
        "2026-11-20T03:00:00+00:00",
    ]:
        assert expected in note, expected
    assert json.loads((folder / "instruction.json").read_text())["action"] == "ship"  # kept: the story
    assert handoffs(rt)[1].status == "sent" and warehouse.claim_due(rt.engine, 10) == []


def test_cancelling_twice_is_a_no_op(rt):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, files(rt))
    first = cancel(rt)
    again = cancel(rt)  # Shopify retried the webhook
    updated = cancel(rt, topic="orders/updated", note="取消後の更新")  # and the order changed later
    assert first.handoff_id == again.handoff_id == updated.handoff_id
    send_all(rt, files(rt))
    cancel(rt, topic="orders/updated", note="さらに更新", updated_at="2026-11-21T09:00:00+09:00")
    assert [(h.version, h.status) for h in handoffs(rt)] == [(1, "sent"), (2, "sent")]
    assert warehouse.claim_due(rt.engine, 10) == []


def test_cancelled_before_the_warehouse_had_it_is_withdrawn_and_no_cancel_is_sent(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    out = cancel(rt)
    [v1] = handoffs(rt)
    assert (
        out.handoff_id is None
        and v1.status == "superseded"
        and "before the warehouse had it" in v1.last_error
    )
    assert send_all(rt, http_port(three_pl)) == [] and three_pl.requests == []


def test_a_hand_off_refused_by_the_warehouse_needs_no_cancel(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    three_pl.plan(422, {"error": "unknown SKU"})
    send_all(rt, http_port(three_pl))
    cancel(rt)
    assert [(h.version, h.status) for h in handoffs(rt)] == [(1, "failed")]


def test_a_hand_off_we_gave_up_on_after_timeouts_may_be_held_and_gets_a_cancel(rt, three_pl):
    """Attempts ran out on timeouts: each may have reached the 3PL, so a cancelled order must be
    called back there (a refusal, above, is the case that needs none)."""
    receive(rt, order_payload("ja-first-gift"))
    three_pl.plan_delay(1.0)  # the 3PL takes it, but answers after our timeout, every time
    rt.settings.warehouse_max_attempts = 1
    [first] = send_all(rt, http_port(three_pl, timeout=0.2), inline_wait_cap_s=0)
    assert first.status == "failed" and first.error.startswith(warehouse.GAVE_UP)
    cancel(rt)
    v1, v2 = handoffs(rt)
    assert v1.status == "failed" and v2.instruction["action"] == "cancel"
    assert v2.instruction["cancels_version"] == 1
    deadline = time.monotonic() + 5
    while 820001 not in three_pl.orders and time.monotonic() < deadline:
        time.sleep(0.05)  # the 3PL finishes taking the order it answered too late
    [result] = send_all(rt, http_port(three_pl))
    assert result.handoff_id == v2.id and result.status == "sent"
    assert three_pl.cancelled == {820001: result.reference}


def test_a_cancel_for_an_order_the_3pl_never_got_is_settled_not_failed(rt, three_pl):
    """Found by the fault suite: the 3PL was down (connection refused), so v1's failed attempt may
    have reached it as far as we can tell, and the cancelled order gets a cancel. The 3PL answers
    404 "unknown order": what a cancel wants is true, so it ends settled, not failed for ops."""
    receive(rt, order_payload("ja-first-gift"))
    three_pl.go_down()
    [first] = send_all(rt, http_port(three_pl, timeout=0.2), inline_wait_cap_s=0)
    assert (first.status, first.attempts) == ("pending", 1)
    three_pl.come_up()
    cancel(rt)
    v1, v2 = handoffs(rt)
    assert v1.status == "superseded" and v2.instruction["action"] == "cancel"
    [result] = send_all(rt, http_port(three_pl))
    assert result.handoff_id == v2.id and result.status == "superseded"
    assert "does not have the order" in result.error and "404" in result.error
    assert three_pl.cancelled == {} and [r.json()["action"] for r in three_pl.requests] == ["cancel"]
    assert warehouse.claim_alerts(rt.engine, timedelta(minutes=30)) == []  # nothing for ops to do


# --- the HTTP port ------------------------------------------------------------------------------------


def test_http_port_posts_the_signed_cancellation_with_its_own_key(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, http_port(three_pl))
    cancel(rt)
    [result] = send_all(rt, http_port(three_pl))
    assert result.status == "sent" and result.reference == "3PL-00002" and three_pl.bad_signatures == []
    ship, cancellation = three_pl.requests
    assert ship.json()["action"] == "ship" and ship.headers["x-aftercare-action"] == "ship"
    assert cancellation.headers["idempotency-key"] == "test-shop.myshopify.com:820001:cancel"
    assert cancellation.headers["x-aftercare-action"] == "cancel"
    body = cancellation.json()
    assert (body["action"], body["order"]["id"], body["cancels_version"], body["version"]) == (
        "cancel",
        820001,
        1,
        2,
    )
    assert "lines" not in body and "ship_to" not in body  # nothing to pick, no address to leak
    assert three_pl.cancelled == {820001: "3PL-00002"}
    assert (handoffs(rt)[1].status, handoffs(rt)[1].reference) == ("sent", "3PL-00002")


def test_a_cancel_the_3pl_cannot_honour_fails_with_its_reason_and_is_not_retried(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, http_port(three_pl))
    three_pl.dispatch(820001)  # it left their dock before Shopify told us
    cancel(rt)
    waits: list[float] = []
    [result] = send_all(rt, http_port(three_pl), sleep=waits.append)
    assert result.status == "failed"
    assert result.error == "warehouse refused the cancellation (409): order #1101 has already been dispatched"
    assert waits == [] and len(three_pl.requests) == 2 and warehouse.claim_due(rt.engine, 10) == []
    assert handoffs(rt)[1].last_error == result.error
    md = handoff_markdown(handoffs(rt)[1])
    assert "status: **failed**" in md and "already been dispatched" in md


def test_a_cancel_meeting_a_5xx_is_retried_under_the_same_key(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, http_port(three_pl))
    cancel(rt)
    three_pl.plan(503)
    three_pl.plan(500)
    waits: list[float] = []
    [result] = send_all(rt, http_port(three_pl), sleep=waits.append)
    assert (result.status, result.attempts) == ("sent", 3) and len(waits) == 2
    keys = [r.headers["idempotency-key"] for r in three_pl.requests[1:]]
    assert keys == ["test-shop.myshopify.com:820001:cancel"] * 3


def test_a_cancel_the_3pl_never_answers_ends_failed_for_ops(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, http_port(three_pl))
    cancel(rt)
    for _ in range(rt.settings.warehouse_max_attempts):
        three_pl.plan(503)
    [result] = send_all(rt, http_port(three_pl), sleep=lambda _s: None, inline_wait_cap_s=1000)
    assert result.status == "failed" and result.error.startswith("gave up after")


# --- in flight, retried, or already shipped ------------------------------------------------------------


def test_a_cancel_waits_for_the_version_still_being_sent_and_never_overtakes_it(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    [v1_claim] = warehouse.claim_due(rt.engine, 10)  # a worker has v1 and is sending it
    cancel(rt)
    v1, v2 = handoffs(rt)
    assert (v1.status, v2.instruction["action"]) == ("sending", "cancel")  # may be with the 3PL
    [held] = send_all(rt, http_port(three_pl))
    assert held.status == "pending" and "waiting for v1" in held.error and three_pl.requests == []
    assert held.attempts == 0  # waiting is not an attempt
    assert warehouse.claim_due(rt.engine, 10) == []  # not busy-looping: it waits CANCEL_WAIT
    port = http_port(three_pl)
    shipped = warehouse.hand_off(rt.engine, v1_claim.handoff_id, port, rt.renderer, rt.policies, rt.settings)
    assert shipped.status == "sent"
    make_due(rt, v2.id)
    [cancelled] = send_all(rt, port)
    assert cancelled.status == "sent"
    assert [r.json()["action"] for r in three_pl.requests] == ["ship", "cancel"]


def test_a_version_with_no_clear_answer_gets_a_cancel_and_is_never_resent(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    three_pl.plan_delay(1.0)  # the 3PL takes it, but answers after our timeout
    [first] = send_all(rt, http_port(three_pl, timeout=0.2), inline_wait_cap_s=0)
    assert (first.status, first.attempts) == ("pending", 1)
    cancel(rt)
    v1, v2 = handoffs(rt)
    assert v1.status == "superseded" and v2.instruction["action"] == "cancel"
    deadline = time.monotonic() + 5
    while 820001 not in three_pl.orders and time.monotonic() < deadline:
        time.sleep(0.05)  # the 3PL finishes taking the order it answered too late
    make_due(rt, v1.id)
    [result] = send_all(rt, http_port(three_pl))
    assert result.handoff_id == v2.id and result.status == "sent"
    assert three_pl.cancelled == {820001: result.reference}
    assert [r.json()["action"] for r in three_pl.requests] == ["ship", "cancel"]


def test_a_retried_version_is_not_sent_once_a_newer_one_exists(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    [v1_claim] = warehouse.claim_due(rt.engine, 10)
    receive(
        rt,
        order_payload("ja-first-gift", note="置き配で", updated_at="2026-11-20T11:00:00+09:00"),
        "orders/updated",
    )
    three_pl.plan(503)
    port = http_port(three_pl)
    first = warehouse.hand_off(
        rt.engine, v1_claim.handoff_id, port, rt.renderer, rt.policies, rt.settings, inline_wait_cap_s=0
    )
    assert first.status == "pending"
    make_due(rt, v1_claim.handoff_id)
    results = {r.handoff_id: r for r in send_all(rt, port)}
    v1, v2 = handoffs(rt)
    assert results[v1.id].status == "superseded" and "superseded by version 2" in results[v1.id].error
    assert results[v2.id].status == "sent" and v1.status == "superseded"
    assert [r.json()["note"] for r in three_pl.requests] == [None, "置き配で"]


def test_no_cancel_once_it_shipped_and_the_timeline_says_why(rt, three_pl):
    order = order_payload("ja-first-gift")
    receive(rt, order)
    send_all(rt, http_port(three_pl))
    receive(
        rt, fulfillment_payload(order, created_at="2026-11-20T10:00:00+09:00"), topic="fulfillments/create"
    )
    out = cancel(rt)
    assert out.handoff_id is None and [h.version for h in handoffs(rt)] == [1]
    assert send_all(rt, http_port(three_pl)) == [] and len(three_pl.requests) == 1
    tl = order_timeline(rt.engine, "#1101", rt.policies.delivery)
    [entry] = [e for e in tl.history if e.status == "after_shipping"]
    assert entry.kind == "cancellation"
    assert entry.summary == "cancelled after it shipped (#1101.1): no cancellation sent to the warehouse"


def test_no_cancel_when_shopify_says_it_is_fulfilled_before_the_fulfillment_arrives(rt):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, files(rt))
    cancel(rt, fulfillment_status="fulfilled")
    assert [h.version for h in handoffs(rt)] == [1]


# --- hostile input, ops views ----------------------------------------------------------------------------


def test_an_odd_cancel_reason_is_cut_short_and_only_ever_text(rt):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, files(rt))
    cancel(rt, cancel_reason="<script>alert(1)</script>" + "x" * 500)
    v2 = handoffs(rt)[1]
    assert v2.instruction["reason"].startswith("<script>") and len(v2.instruction["reason"]) == 64
    [result] = send_all(rt, files(rt))
    assert result.status == "sent"
    assert (
        "<script>alert(1)</script>"
        in (rt.settings.warehouse_dir / SHOP / "820001" / "CANCELLED.txt").read_text()
    )


def test_cancel_without_a_reason_still_goes(rt):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, files(rt))
    cancel(rt, cancel_reason=None)
    assert handoffs(rt)[1].instruction["reason"] == "cancelled"
    [result] = send_all(rt, files(rt))
    assert (
        result.status == "sent"
        and "■理由：記載なし" in (rt.settings.warehouse_dir / SHOP / "820001" / "CANCELLED.txt").read_text()
    )


def test_english_warehouse_note(rt):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, files(rt))
    cancel(rt, cancel_reason="inventory")
    english = rt.policies.requests.model_copy(update={"warehouse_locale": "en"})
    docs = warehouse.documents(handoffs(rt)[1], rt.renderer, english, rt.settings.shop_name)
    assert (docs.action, docs.picking_list, docs.packing_slip_html) == ("cancel", "", "")
    note = docs.cancellation_note
    assert note.startswith("CANCELLED: order #1101") and "Do not ship it." in note
    assert "Cancels: shipping instruction version 1\n" in note and "Reason: out of stock" in note


def test_timeline_and_artifact_show_the_cancellation(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    send_all(rt, http_port(three_pl))
    cancel(rt)
    send_all(rt, http_port(three_pl))
    tl = order_timeline(rt.engine, "#1101", rt.policies.delivery)
    summaries = [e.summary for e in tl.history if e.kind == "handoff"]
    assert summaries == [
        "hand-off v1 prepared",
        "hand-off v1 acknowledged by the warehouse (3PL-00001)",
        "warehouse cancellation v2 prepared: cancels v1 (3PL-00001), reason customer",
        "warehouse acknowledged the cancellation v2 (3PL-00002)",
    ]
    data = timeline_json(tl)
    assert json.loads(json.dumps(data)) == data
    assert [h["detail"].get("action") for h in data["history"] if h["kind"] == "handoff"][2:] == [
        "cancel",
        "cancel",
    ]
    md = handoff_markdown(handoffs(rt)[1])
    assert md.startswith("# #1101: warehouse cancellation v2")
    assert "action: **cancel** v1 (reference `3PL-00001`): do not ship" in md and "reason: customer" in md
    assert "status: **sent** (reference `3PL-00002`)" in md


def test_handoff_markdown_of_a_ship_version_is_unchanged(rt):
    receive(rt, order_payload("ja-first-gift"))
    md = handoff_markdown(handoffs(rt)[0])
    assert md.startswith("# #1101: warehouse hand-off v1") and "| TOWEL-GIFT-W |" in md


def test_cancel_wait_is_the_sweeps_period():
    assert warehouse.CANCEL_WAIT == timedelta(seconds=30)


def test_a_cancel_whose_version_the_warehouse_then_refused_is_not_sent(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    [v1_claim] = warehouse.claim_due(rt.engine, 10)  # v1 is being sent when the order is cancelled
    cancel(rt)
    three_pl.plan(422, {"error": "postcode outside our delivery area"})
    port = http_port(three_pl)
    refused = warehouse.hand_off(rt.engine, v1_claim.handoff_id, port, rt.renderer, rt.policies, rt.settings)
    assert refused.status == "failed"
    [_v1, v2] = handoffs(rt)
    [outcome] = send_all(rt, port)
    assert outcome.handoff_id == v2.id and outcome.status == "superseded"
    assert "never acknowledged" in outcome.error
    assert [r.json()["action"] for r in three_pl.requests] == ["ship"]  # no cancel went out
