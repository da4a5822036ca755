"""Refunds against the warehouse and the shipment notice, in every order of arrival: the order's
shippable quantities (ordered minus refunded; none once Shopify says refunded or voided) decide the
instruction, whether the order is called back from the warehouse, and whether a notice is owed."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from aftercare.errors import TransientSendError
from aftercare.models import InboxEvent, OutboxMessage, Refund, Touchpoint, WarehouseHandoff
from aftercare.orders import warehouse
from aftercare.orders.timeline import order_timeline
from aftercare.spine import outbox
from tests.factories import deliver, fulfillment_payload, order_payload, refund_payload
from tests.pipeline import drain, http_port, receive, rows, send_all

TOWEL, MUG = 9100011, 9100021  # ja-first-gift: the towel set x1, the mug x2
ORDER = order_payload("ja-first-gift")  # paid


def updated(financial_status: str, at: str = "2026-11-21T09:00:00+09:00", **fields):
    """An orders/updated body: Shopify's view of the order after its refunds."""
    return order_payload("ja-first-gift", financial_status=financial_status, updated_at=at, **fields)


def refund(rt, lines=None, refund_id=6660001, **fields):
    return receive(
        rt, refund_payload(ORDER, refund_id=refund_id, lines=lines, **fields), topic="refunds/create"
    )


def handoffs(rt) -> list[WarehouseHandoff]:
    return rows(rt, WarehouseHandoff)


def ship_lines(handoff: WarehouseHandoff) -> dict[int, int]:
    return {li["line_id"]: li["quantity"] for li in handoff.instruction["lines"]}


def notice_touchpoints(rt) -> list[Touchpoint]:
    return rows(rt, Touchpoint, Touchpoint.kind == "shipment_notice")


def notices(rt) -> list[OutboxMessage]:
    return rows(rt, OutboxMessage, OutboxMessage.kind == "shipment_notice")


def timeline(rt) -> list[str]:
    return [e.summary for e in order_timeline(rt.engine, "#1101", rt.policies.delivery).history]


# --- the warehouse: a refund in full is a cancellation ----------------------------------------------


def test_refunded_in_full_before_the_hand_off_is_withdrawn_and_the_3pl_gets_nothing(rt, three_pl):
    receive(rt, ORDER)
    [v1] = handoffs(rt)
    out = refund(rt)  # everything
    receive(rt, updated("refunded"), topic="orders/updated")
    [v1] = handoffs(rt)
    assert out.handoff_id is None
    assert v1.status == "superseded" and v1.last_error == "order refunded in full before the warehouse had it"
    assert send_all(rt, http_port(three_pl)) == [] and three_pl.requests == []
    assert "refunded in full: withdrawn from the warehouse before it had the order" in timeline(rt)


@pytest.mark.parametrize("status", ["refunded", "voided"])
def test_financial_status_alone_calls_the_order_back_without_any_refund_delivery(rt, three_pl, status):
    receive(rt, ORDER)
    out = receive(rt, updated(status), topic="orders/updated")
    [v1] = handoffs(rt)
    assert out.handoff_id is None and v1.status == "superseded" and f"order {status}" in v1.last_error
    assert send_all(rt, http_port(three_pl)) == [] and three_pl.requests == []
    assert rows(rt, Refund) == []


def test_refund_in_full_after_the_3pl_acknowledged_sends_one_cancel(rt, three_pl):
    receive(rt, ORDER)
    send_all(rt, http_port(three_pl))
    out = refund(rt)
    v1, v2 = handoffs(rt)
    assert (v1.status, v2.status, out.handoff_id) == ("sent", "pending", v2.id)
    assert warehouse.is_cancellation(v2)
    assert (v2.instruction["reason"], v2.instruction["cancels_version"]) == ("refunded", 1)
    assert v2.instruction["cancelled_at"] == "2026-11-26T01:00:00+00:00"  # when it was refunded
    # The same refund again, then Shopify's own "refunded" update: still the one cancellation.
    assert refund(rt).handoff_id == v2.id
    assert receive(rt, updated("refunded"), topic="orders/updated").handoff_id == v2.id
    [result] = send_all(rt, http_port(three_pl))
    assert result.status == "sent" and three_pl.cancelled == {820001: result.reference}
    assert [(h.version, h.status) for h in handoffs(rt)] == [(1, "sent"), (2, "sent")]
    note = warehouse.documents(handoffs(rt)[1], rt.renderer, rt.policies.requests, "shop").cancellation_note
    assert "全額返金" in note
    assert "refunded in full: cancel sent to the warehouse (cancellation v2, sent)" in timeline(rt)


def test_refund_in_full_after_the_parcel_left_sends_no_cancel(rt, three_pl):
    receive(rt, ORDER)
    send_all(rt, http_port(three_pl))
    receive(rt, fulfillment_payload(ORDER), topic="fulfillments/create")
    refund(rt)
    receive(rt, updated("refunded", fulfillment_status="fulfilled"), topic="orders/updated")
    assert [(h.version, h.status) for h in handoffs(rt)] == [(1, "sent")]
    assert warehouse.claim_due(rt.engine, 10) == []
    assert "refunded in full after it shipped (#1101.1): no cancellation sent to the warehouse" in timeline(
        rt
    )


def test_partial_refund_before_shipping_is_a_new_version_without_the_refunded_units(rt, three_pl):
    receive(rt, ORDER)
    out = refund(rt, {MUG: 1})
    v1, v2 = handoffs(rt)
    assert out.handoff_id == v2.id and v1.status == "superseded"
    assert ship_lines(v1) == {TOWEL: 1, MUG: 2} and ship_lines(v2) == {TOWEL: 1, MUG: 1}
    # Shopify says partially_refunded; a refund for the rest makes it everything all the same.
    receive(rt, updated("partially_refunded"), topic="orders/updated")
    assert len(handoffs(rt)) == 2
    refund(rt, {TOWEL: 1, MUG: 1}, refund_id=6660002)
    receive(rt, updated("partially_refunded", at="2026-11-27T09:00:00+09:00"), topic="orders/updated")
    assert [h.status for h in handoffs(rt)] == ["superseded", "superseded"]
    assert send_all(rt, http_port(three_pl)) == [] and three_pl.requests == []


def test_partial_then_full_refund_after_the_3pl_had_it_cancels_what_it_has(rt, three_pl):
    receive(rt, ORDER)
    send_all(rt, http_port(three_pl))
    refund(rt, {TOWEL: 1})
    v1, v2 = handoffs(rt)
    assert v2.status == "pending" and ship_lines(v2) == {MUG: 2}
    refund(rt, {MUG: 2}, refund_id=6660002)
    v1, v2, v3 = handoffs(rt)
    assert (v1.status, v2.status) == ("sent", "superseded") and warehouse.is_cancellation(v3)
    assert v3.instruction["cancels_version"] == 1  # v2 never left us: the warehouse has v1
    send_all(rt, http_port(three_pl))
    sent = [r.json() for r in three_pl.requests]
    assert [(b["action"], b["version"]) for b in sent] == [("ship", 1), ("cancel", 3)]


def test_a_refund_before_its_order_is_applied_before_the_order_is_handed_off(rt, three_pl):
    early = refund(rt, {MUG: 1})
    assert early.status == "waiting"
    receive(rt, ORDER)
    [v1] = handoffs(rt)
    assert ship_lines(v1) == {TOWEL: 1, MUG: 1}  # the refunded mug was never on an instruction
    [again] = drain(rt)
    assert again.inbox_id == early.inbox_id and again.status == "done"
    assert len(handoffs(rt)) == 1 and len(rows(rt, Refund)) == 1


def test_an_order_refunded_before_it_arrived_is_never_handed_off_nor_confirmed(rt, three_pl):
    refund(rt)
    out = receive(rt, ORDER)
    assert out.handoff_id is None and out.outbox_id is None and handoffs(rt) == []
    drain(rt)
    assert send_all(rt, http_port(three_pl)) == [] and rows(rt, OutboxMessage) == []


def test_a_refund_restocking_nothing_leaves_the_instruction_alone(rt):
    receive(rt, ORDER)
    out = refund(rt, {}, restock=False, note="送料のみ返金")
    receive(rt, updated("partially_refunded"), topic="orders/updated")
    [v1] = handoffs(rt)
    assert out.handoff_id == v1.id and v1.status == "pending" and ship_lines(v1) == {TOWEL: 1, MUG: 2}


def test_a_refund_never_reopens_a_cancelled_order(rt, three_pl):
    receive(rt, ORDER)
    send_all(rt, http_port(three_pl))
    cancelled = {"cancelled_at": "2026-11-20T12:00:00+09:00", "cancel_reason": "customer"}
    receive(
        rt,
        order_payload("ja-first-gift", updated_at="2026-11-20T12:00:00+09:00", **cancelled),
        topic="orders/cancelled",
    )
    refund(rt, {MUG: 1})
    receive(rt, updated("partially_refunded", **cancelled), topic="orders/updated")
    refund(rt, refund_id=6660002)
    v1, v2 = handoffs(rt)
    assert (v1.status, v2.instruction["action"], v2.instruction["reason"]) == ("sent", "cancel", "customer")


def test_a_refund_in_full_is_never_undone_by_a_later_update(rt, three_pl):
    receive(rt, ORDER)
    send_all(rt, http_port(three_pl))
    receive(rt, updated("refunded"), topic="orders/updated")
    # Shopify never goes back from refunded, but nothing we receive may make us ship it again.
    receive(rt, updated("paid", at="2026-11-22T09:00:00+09:00"), topic="orders/updated")
    assert [h.instruction["action"] for h in handoffs(rt)] == ["ship", "cancel"]


# --- the shipment notice ---------------------------------------------------------------------------


def test_a_fulfillment_of_refunded_lines_gets_no_notice_and_the_other_fulfillment_does(rt):
    receive(rt, ORDER)
    refund(rt, {TOWEL: 1})
    towel = receive(rt, fulfillment_payload(ORDER, lines=[TOWEL]), topic="fulfillments/create")
    mug = receive(
        rt, fulfillment_payload(ORDER, fulfillment_id=5550002, lines=[MUG]), topic="fulfillments/create"
    )
    assert towel.outbox_id is None and mug.outbox_id is not None
    first, second = notice_touchpoints(rt)
    assert first.status == "cancelled" and "every line of this shipment was refunded" in first.reason
    [msg] = notices(rt)
    assert msg.id == mug.outbox_id and "有田焼" in msg.text_body and "今治タオル" not in msg.text_body
    assert "残りの商品" not in msg.text_body  # nothing more to come: the towel was refunded


@pytest.mark.parametrize("how", ["refund delivery", "financial status"])
def test_an_order_refunded_in_full_before_it_ships_gets_no_notice(rt, how):
    receive(rt, ORDER)
    if how == "refund delivery":
        refund(rt)
    else:
        receive(rt, updated("refunded"), topic="orders/updated")
    out = receive(rt, fulfillment_payload(ORDER), topic="fulfillments/create")
    [tp] = notice_touchpoints(rt)
    assert out.outbox_id is None and notices(rt) == []
    assert tp.status == "cancelled" and "order fully refunded" in tp.reason
    # Shopify re-sends the fulfillment: still no notice.
    receive(
        rt, fulfillment_payload(ORDER, updated_at="2026-11-25T09:00:00+09:00"), topic="fulfillments/update"
    )
    assert notices(rt) == []


def test_refunded_while_its_notice_waits_unclaimed_cancels_the_notice(rt):
    receive(rt, ORDER)
    receive(rt, fulfillment_payload(ORDER, lines=[MUG]), topic="fulfillments/create")
    [msg] = notices(rt)
    assert msg.status == "pending"
    out = receive(rt, updated("refunded"), topic="orders/updated")  # no refund delivery at all
    [msg] = notices(rt)
    [tp] = notice_touchpoints(rt)
    assert msg.status == "cancelled" and tp.status == "cancelled" and tp.id in out.cancelled
    assert outbox.claim_due(rt.engine, 10, worker="w") == []


@pytest.mark.parametrize("when", ["claimed", "between two attempts"])
def test_refunded_after_its_notice_was_claimed_the_notice_is_never_sent(rt, when):
    """A claimed row is with a worker (a batch, a retry's wait) when the refund lands: the worker
    checks the touchpoint before each attempt, so the customer is not told about goods refunded."""
    receive(rt, ORDER)
    receive(rt, fulfillment_payload(ORDER, lines=[MUG]), topic="fulfillments/create")
    [pending] = notices(rt)
    [claimed] = outbox.claim_due(rt.engine, 10, worker="w", ids=[pending.id])
    sent: list[str] = []

    class Backend:
        name = "recording"

        def send(self, email):
            sent.append(email.subject)
            if when == "between two attempts" and len(sent) == 1:
                receive(rt, updated("refunded"), topic="orders/updated")  # lands during the retry wait
                raise TransientSendError("SendGrid 503", retry_after=0)
            return "id-1"

        def was_delivered(self, outbox_id):
            return None

    if when == "claimed":
        receive(rt, updated("refunded"), topic="orders/updated")
    result = outbox.deliver(rt.engine, claimed.outbox_id, Backend(), rt.settings, sleep=lambda _s: None)
    [msg] = notices(rt)
    [tp] = notice_touchpoints(rt)
    assert (result.status, msg.status, tp.status) == ("cancelled", "cancelled", "cancelled")
    assert len(sent) == (0 if when == "claimed" else 1)  # the one attempt the provider refused
    assert msg.last_error.startswith("not sent:")


def test_a_notice_already_sent_is_not_reconsidered(rt):
    receive(rt, ORDER)
    receive(rt, fulfillment_payload(ORDER), topic="fulfillments/create")
    for claimed in outbox.claim_due(rt.engine, 10, worker="w"):
        outbox.deliver(rt.engine, claimed.outbox_id, rt.backend, rt.settings)
    [msg] = notices(rt)
    assert msg.status == "sent"
    refund(rt)
    out = receive(
        rt, fulfillment_payload(ORDER, updated_at="2026-11-25T09:00:00+09:00"), topic="fulfillments/update"
    )
    [tp] = notice_touchpoints(rt)
    assert (tp.status, out.outbox_id, [m.status for m in notices(rt)]) == ("done", msg.id, ["sent"])


def test_the_same_refund_delivered_twice_changes_nothing_more(rt):
    receive(rt, ORDER)
    first = refund(rt, {MUG: 1})
    deliver(rt.engine, refund_payload(ORDER, lines={MUG: 1}), topic="refunds/create")  # the same refund
    [again] = drain(rt)
    assert "already recorded" in again.reason and again.handoff_id == first.handoff_id
    assert [ship_lines(h) for h in handoffs(rt)] == [{TOWEL: 1, MUG: 2}, {TOWEL: 1, MUG: 1}]
    with Session(rt.engine) as s:
        assert s.exec(select(InboxEvent).where(InboxEvent.status != "done")).all() == []
