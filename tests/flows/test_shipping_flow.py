"""The process-inbox flow with shipping: a fulfillment that arrives before its order, the warehouse
hand-off named by order, one notice per shipment, and a 3PL refusal that fails the run with its reason."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from sqlmodel import Session, select

from aftercare.models import InboxEvent, OutboxMessage, Touchpoint, WarehouseHandoff
from aftercare.orders import warehouse
from flows.receipt import process_inbox
from tests.factories import SHOP, deliver, fulfillment_payload, order_payload
from tests.fakes.warehouse import FakeThreePL


def run_flow():
    return process_inbox(linger_seconds=0, return_state=True)


def artifact(state, key):
    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                )
            )
            return found[0] if found else None

    return asyncio.run(read())


def test_fulfillment_first_then_order_one_run_hands_off_and_sends_confirmation_and_notice(flow_rt):
    order = order_payload("ja-first-gift")
    deliver(flow_rt.engine, fulfillment_payload(order), topic="fulfillments/create")
    deliver(flow_rt.engine, order)
    state = run_flow()
    assert state.is_completed(), state.message
    # SQLite receives in arrival order: the fulfillment waits, is released by its order and received
    # again (3). PostgreSQL receives a batch's orders first (parallel lanes), then the fulfillment (2).
    received = 2 if flow_rt.engine.dialect.name == "postgresql" else 3
    assert f"received {received} deliveries, sent 2 messages, 0 failed, 1 handed" in state.message
    with Session(flow_rt.engine) as s:
        msgs = s.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        rows = s.exec(select(InboxEvent)).all()
        [handoff] = s.exec(select(WarehouseHandoff)).all()
    assert [(m.kind, m.status) for m in msgs] == [("order_confirmation", "sent"), ("shipment_notice", "sent")]
    assert {r.status for r in rows} == {"done"} and {r.subject_ref for r in rows} == {"#1101"}
    assert (
        handoff.status == "sent"
        and (flow_rt.settings.warehouse_dir / SHOP / "820001" / "picking_list.txt").exists()
    )
    art = artifact(state, "order-1101-handoff")
    assert art is not None and "status: **sent**" in art.data and "TOWEL-GIFT-W" in art.data
    notice = artifact(state, "order-1101-shipment-notice")
    assert notice is not None and "4321-0987-6543" in notice.data
    story = artifact(state, "order-1101-timeline")  # published after the fulfillment was applied
    assert (
        story is not None
        and "# #1101: timeline" in story.data
        and "fulfillment #1101.1 (success)" in story.data
    )


def test_a_3pl_refusal_fails_the_run_with_its_reason(flow_rt):
    with FakeThreePL() as fake:
        flow_rt.warehouse = warehouse.HttpWarehouse(httpx.Client(timeout=2), fake.url, fake.secret)
        fake.plan(422, {"error": "postcode 150-0001 is outside our delivery area"})
        deliver(flow_rt.engine, order_payload("ja-first-gift"))
        state = run_flow()
    assert state.is_failed() and "outside our delivery area" in state.message
    with Session(flow_rt.engine) as s:
        [handoff] = s.exec(select(WarehouseHandoff)).all()
    assert handoff.status == "failed" and len(fake.requests) == 1
    # Ops were told, once, and the run's reason says so as well as the 3PL's words.
    assert "hand-off #1101 v1: refused or given up" in state.message and handoff.alerted_at is not None
    # The alert is an outbox row without an order, and the same run sent it.
    with Session(flow_rt.engine) as s:
        [alert] = s.exec(select(OutboxMessage).where(OutboxMessage.kind == "warehouse_alert")).all()
    assert (alert.status, alert.touchpoint_id, alert.to_email) == ("sent", None, "ops@example.com")
    assert [p.name for p in (flow_rt.settings.outbox_dir / "staff").iterdir()] == [f"{alert.id:08d}.eml"]
    art = artifact(state, "order-1101-handoff")
    assert art is not None and "status: **failed**" in art.data and "outside our delivery area" in art.data


def test_cancelled_after_the_3pl_acknowledged_the_flow_tells_the_3pl_to_cancel(flow_rt):
    with FakeThreePL() as fake:
        flow_rt.warehouse = warehouse.HttpWarehouse(httpx.Client(timeout=2), fake.url, fake.secret)
        deliver(flow_rt.engine, order_payload("ja-first-gift"))
        assert run_flow().is_completed()
        cancelled_at = "2026-11-20T12:00:00+09:00"
        deliver(
            flow_rt.engine,
            order_payload(
                "ja-first-gift", cancelled_at=cancelled_at, updated_at=cancelled_at, cancel_reason="customer"
            ),
            topic="orders/cancelled",
        )
        state = run_flow()
    assert state.is_completed(), state.message
    assert "1 handed to the warehouse" in state.message
    assert [r.json()["action"] for r in fake.requests] == ["ship", "cancel"] and 820001 in fake.cancelled
    with Session(flow_rt.engine) as s:
        versions = s.exec(select(WarehouseHandoff).order_by(WarehouseHandoff.version)).all()
    assert [(h.version, h.status) for h in versions] == [(1, "sent"), (2, "sent")]
    art = artifact(state, "order-1101-handoff")
    assert art is not None and "warehouse cancellation v2" in art.data and "action: **cancel** v1" in art.data
    story = artifact(state, "order-1101-timeline")
    assert story is not None and "warehouse cancellation v2 prepared" in story.data


def test_a_cancel_the_3pl_refuses_fails_the_run_with_its_reason(flow_rt):
    with FakeThreePL() as fake:
        flow_rt.warehouse = warehouse.HttpWarehouse(httpx.Client(timeout=2), fake.url, fake.secret)
        deliver(flow_rt.engine, order_payload("ja-first-gift"))
        assert run_flow().is_completed()
        fake.dispatch(820001)
        cancelled_at = "2026-11-20T12:00:00+09:00"
        deliver(
            flow_rt.engine,
            order_payload("ja-first-gift", cancelled_at=cancelled_at, updated_at=cancelled_at),
            topic="orders/cancelled",
        )
        state = run_flow()
    assert state.is_failed() and "refused the cancellation (409)" in state.message
    assert "already been dispatched" in state.message
    art = artifact(state, "order-1101-handoff")
    assert art is not None and "status: **failed**" in art.data


def test_a_delivered_carrier_event_before_its_fulfillment_is_applied_in_the_same_run(flow_rt):
    order = order_payload("ja-first-gift")
    event = {
        "id": 7770001,
        "fulfillment_id": 5550001,
        "order_id": 820001,
        "status": "delivered",
        "happened_at": "2026-11-27T11:30:00+09:00",
    }
    deliver(flow_rt.engine, event, topic="fulfillment_events/create")
    deliver(flow_rt.engine, order)
    deliver(flow_rt.engine, fulfillment_payload(order), topic="fulfillments/create")
    state = run_flow()
    assert state.is_completed(), state.message
    with Session(flow_rt.engine) as s:
        rows = s.exec(select(InboxEvent).order_by(InboxEvent.id)).all()
        [survey] = s.exec(select(Touchpoint).where(Touchpoint.kind == "delivery_survey")).all()
    assert [(r.topic, r.status) for r in rows][0] == ("fulfillment_events/create", "done")
    assert {r.status for r in rows} == {"done"} and rows[0].subject_ref == "#1101"
    assert survey.due_at == datetime(2026, 11, 29, 2, 30, tzinfo=UTC)  # delivered 11:30 JST + 2 days


def test_a_carrier_event_publishes_the_orders_timeline_for_ops(flow_rt):
    order = order_payload("ja-first-gift")
    fulfillment = fulfillment_payload(order)
    deliver(flow_rt.engine, order)
    deliver(flow_rt.engine, fulfillment, topic="fulfillments/create")
    assert run_flow().is_completed()
    event = {
        "id": 7770002,
        "fulfillment_id": fulfillment["id"],
        "order_id": order["id"],
        "status": "out_for_delivery",
        "happened_at": "2026-11-27T08:30:00+09:00",
    }
    deliver(flow_rt.engine, event, topic="fulfillment_events/create")
    state = run_flow()
    assert state.is_completed(), state.message
    story = artifact(state, "order-1101-timeline")
    assert story is not None and "out_for_delivery" in story.data
