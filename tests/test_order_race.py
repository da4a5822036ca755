"""Two workers on one order (the deployment and `aftercare process` beside it, or two task runs) give
the result one would. Each handler takes the order's lock before it reads the order's state, so an
older `paid` delivery processed beside a newer cancellation cannot leave a shippable order behind,
and a fulfillment beside a cancellation cannot plan mail for a cancelled order.

The workers are real threads on their own connections. To make the interleaving certain rather than
lucky, the first worker pauses for a moment right after it has read the order (an engine event
listener, the database driver's edge: no code of ours is replaced); the second starts then."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from itertools import count
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.models import (
    HandoffStatus,
    Order,
    OutboxMessage,
    OutboxStatus,
    Shipment,
    Touchpoint,
    TouchpointStatus,
    WarehouseHandoff,
)
from aftercare.orders import warehouse
from aftercare.processing import process_row
from aftercare.runtime import Runtime
from aftercare.spine.inbox import claim_batch
from tests.factories import deliver, fulfillment_payload, order_payload
from tests.pipeline import drain, jst, receive, send_all

T0 = "2026-11-20T10:15:00+09:00"
T1 = "2026-11-20T11:00:00+09:00"  # the older delivery of the race
T2 = "2026-11-20T12:00:00+09:00"  # the newer one: the cancellation
HOLD_S = 0.4  # how long the first worker sits on what it read

_ids = count(1)


def fresh_order(**fields: Any) -> dict[str, Any]:
    """The gift sample as an order of its own (id, name, customer): repetitions do not meet."""
    n = next(_ids)
    email = f"race{n}@example.jp"
    payload = order_payload("ja-first-gift", **fields)
    payload.update(id=930_000 + n, name=f"#R{n}", order_number=50_000 + n, email=email, contact_email=email)
    payload["customer"] = {**copy.deepcopy(payload["customer"]), "id": 77_000 + n, "email": email}
    return payload


def paid(order: dict[str, Any]) -> dict[str, Any]:
    return {**order, "financial_status": "paid", "updated_at": T1}


def cancelled(order: dict[str, Any]) -> dict[str, Any]:
    return {
        **order,
        "financial_status": "voided",
        "cancelled_at": T2,
        "cancel_reason": "customer",
        "updated_at": T2,
    }


def fulfilled(order: dict[str, Any]) -> dict[str, Any]:
    return fulfillment_payload(order, fulfillment_id=order["id"] * 10 + 1, created_at=T1, updated_at=T1)


def state(rt: Runtime, order_shopify_id: int) -> dict[str, Any]:
    """What the order leaves live: its own state, what ships, what is still to be mailed. (Rows that
    only record what was taken back, a superseded version or a cancelled touchpoint, are left out:
    the two serial orders write different ones of those.)"""
    with Session(rt.engine) as s:
        order = s.exec(select(Order).where(Order.shopify_id == order_shopify_id)).one()
        handoffs = list(s.exec(select(WarehouseHandoff).where(WarehouseHandoff.order_id == order.id)))
        touchpoints = s.exec(
            select(Touchpoint).where(
                Touchpoint.order_id == order.id, Touchpoint.status == TouchpointStatus.PLANNED
            )
        )
        outbox = s.exec(
            select(OutboxMessage)
            .join(Touchpoint, Touchpoint.id == OutboxMessage.touchpoint_id)  # type: ignore[arg-type]
            .where(Touchpoint.order_id == order.id, OutboxMessage.status != OutboxStatus.CANCELLED)
        )
        shipments = s.exec(select(sa.func.count()).select_from(Shipment).where(Shipment.order_id == order.id))
        return {
            "cancelled": order.cancelled_at is not None,
            "financial_status": order.financial_status,
            "source_updated_at": order.source_updated_at,
            "pending_ship": sorted(
                h.version
                for h in handoffs
                if not warehouse.is_cancellation(h) and h.status == HandoffStatus.PENDING
            ),
            "cancellations": sorted(
                (h.instruction["cancels_version"], h.status) for h in handoffs if warehouse.is_cancellation(h)
            ),
            "planned": sorted(t.kind for t in touchpoints),
            "mail": sorted((m.kind, m.status) for m in outbox),
            "shipments": shipments.one(),
        }


def store(rt: Runtime, payload: dict[str, Any], topic: str) -> int:
    inbox_id = deliver(rt.engine, payload, topic=topic)
    assert inbox_id is not None
    return inbox_id


def run_serial(rt: Runtime, deliveries: list[tuple[dict[str, Any], str]]) -> None:
    for payload, topic in deliveries:
        receive(rt, payload, topic=topic)


def run_raced(rt: Runtime, first: tuple[dict[str, Any], str], second: tuple[dict[str, Any], str]) -> None:
    """Process two deliveries at once on two threads: the first pauses right after it read the
    order, and the second starts in that pause. Whatever either raises fails the test."""
    first_id, second_id = store(rt, *first), store(rt, *second)
    claimed = {c.inbox_id for c in claim_batch(rt.engine, 10)}
    assert {first_id, second_id} <= claimed
    has_read = threading.Event()
    errors: list[BaseException] = []

    def pause_after_the_order_is_read(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        if (
            threading.current_thread().name == "first"
            and not has_read.is_set()
            and statement.lstrip().upper().startswith("SELECT")
            and "FROM orders" in statement
        ):
            has_read.set()
            time.sleep(HOLD_S)

    def work(inbox_id: int, wait: threading.Event | None) -> None:
        try:
            if wait is not None:
                assert wait.wait(10), "the first worker never read the order"
            process_row(rt, inbox_id)
        except BaseException as exc:
            errors.append(exc)

    sa.event.listen(rt.engine, "after_cursor_execute", pause_after_the_order_is_read)
    try:
        threads = [
            threading.Thread(target=work, args=(first_id, None), name="first"),
            threading.Thread(target=work, args=(second_id, has_read), name="second"),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sa.event.remove(rt.engine, "after_cursor_execute", pause_after_the_order_is_read)
    if errors:
        raise errors[0]
    assert drain(rt) == []  # nothing was left waiting or failed


Setup = Callable[[Runtime, dict[str, Any]], None]


def created_pending(rt: Runtime, order: dict[str, Any]) -> None:
    """Created before its payment cleared: confirmed, nothing handed to the warehouse yet."""
    receive(rt, {**order, "financial_status": "pending", "updated_at": T0})


def created_paid_and_sent(rt: Runtime, order: dict[str, Any]) -> None:
    """Created paid, and the warehouse acknowledged version 1."""
    receive(rt, {**order, "updated_at": T0})
    sent = send_all(rt, warehouse.FileWarehouse(rt.settings.warehouse_dir))
    assert sent and {r.status for r in sent} == {"sent"}


def created_paid(rt: Runtime, order: dict[str, Any]) -> None:
    receive(rt, {**order, "updated_at": T0})


SCENARIOS: dict[str, tuple[Setup, Callable[[dict[str, Any]], tuple[dict[str, Any], str]], dict[str, Any]]] = {
    # an older `paid` beside a newer cancellation, the warehouse never had the order
    "paid-vs-cancelled": (
        created_pending,
        lambda o: (paid(o), "orders/paid"),
        {"pending_ship": [], "cancellations": [], "planned": [], "mail": [], "shipments": 0},
    ),
    # an older update beside a newer cancellation, the warehouse holds version 1: it is called back
    "updated-vs-cancelled-after-the-warehouse-had-it": (
        created_paid_and_sent,
        lambda o: ({**paid(o), "note": "置き配希望"}, "orders/updated"),
        {
            "pending_ship": [],
            "cancellations": [(1, HandoffStatus.PENDING)],
            "planned": [],
            "mail": [],
            "shipments": 0,
        },
    ),
    # a fulfillment beside a cancellation: no notice, survey or review request for a cancelled order
    "fulfillment-vs-cancelled": (
        created_paid,
        lambda o: (fulfilled(o), "fulfillments/create"),
        {"pending_ship": [], "cancellations": [], "planned": [], "mail": [], "shipments": 1},
    ),
}
CANCELLED_STATE = {"cancelled": True, "financial_status": "voided"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("cancellation_first", [False, True], ids=["other-reads-first", "cancel-reads-first"])
def test_a_delivery_racing_a_cancellation_gives_the_serial_result(rt, scenario, cancellation_first):
    setup, other_of, expected = SCENARIOS[scenario]
    want = {**CANCELLED_STATE, **expected}

    # Serially, in either order, the result is the same.
    serial = []
    for cancel_last in (True, False):
        order = fresh_order()
        setup(rt, order)
        pair = [other_of(order), (cancelled(order), "orders/cancelled")]
        run_serial(rt, pair if cancel_last else pair[::-1])
        got = state(rt, order["id"])
        serial.append({k: got[k] for k in want})
    assert serial == [want, want]

    order = fresh_order()
    setup(rt, order)
    other, cancel = other_of(order), (cancelled(order), "orders/cancelled")
    run_raced(rt, *((cancel, other) if cancellation_first else (other, cancel)))
    got = state(rt, order["id"])
    assert {k: got[k] for k in want} == want
    assert got["source_updated_at"] == jst(T2)


def race_at_barrier(rt: Runtime, inbox_ids: list[int]) -> list[BaseException]:
    """Process the rows on one thread each, released together; returns what they raised."""
    barrier = threading.Barrier(len(inbox_ids))
    errors: list[BaseException] = []

    def work(inbox_id: int) -> None:
        try:
            barrier.wait(10)
            process_row(rt, inbox_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in inbox_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


@pytest.mark.postgres
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_many_races_at_a_barrier_always_give_the_serial_result(rt, database_url, scenario):
    """No pause this time: two threads released together by a barrier, many times over, including the
    first insert of an order racing its cancellation (one loses on the unique constraint and runs
    again). PostgreSQL only: SQLite's single writer lets one thread in at a time anyway."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL: real concurrent writers")
    setup, other_of, expected = SCENARIOS[scenario]
    want = {**CANCELLED_STATE, **expected}
    for repetition in range(15):
        order = fresh_order()
        if not (scenario == "paid-vs-cancelled" and repetition % 3 == 0):
            setup(rt, order)  # every third paid-vs-cancelled race is the order's very first delivery
        other, cancel = other_of(order), (cancelled(order), "orders/cancelled")
        ids = [store(rt, *other), store(rt, *cancel)]
        assert set(ids) <= {c.inbox_id for c in claim_batch(rt.engine, 10)}
        assert race_at_barrier(rt, ids) == []
        assert drain(rt) == []
        got = state(rt, order["id"])
        assert {k: got[k] for k in want} == want, f"repetition {repetition}"
