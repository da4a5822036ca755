"""A delivery that fails is tried again later with backoff, not burnt through in one run; a row
that kills its worker is not taken over forever; when attempts run out ops are told once, by a
mail in the outbox, and `aftercare inbox retry` brings the row back. The same takeover rule for
outbox messages and warehouse hand-offs. Time is in the tests' hands: events are placed in the past."""

from __future__ import annotations

import email
import email.policy
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.models import (
    InboxEvent,
    Order,
    OutboxMessage,
    Touchpoint,
    WarehouseHandoff,
    utcnow,
)
from aftercare.orders import warehouse
from aftercare.runtime import Runtime, use_runtime
from aftercare.settings import Settings
from aftercare.spine import outbox
from tasks.receipt import ReceiveFailed, claim_inbox, claim_outbox, receive
from tests.factories import deliver, order_payload
from tests.pipeline import rows


@pytest.fixture
def rt3(settings: Settings) -> Iterator[Runtime]:
    """A runtime whose deliveries get three attempts (the schedule's shape, shortened)."""
    runtime = Runtime.build(settings.model_copy(update={"inbox_max_attempts": 3}))
    yield runtime
    runtime.engine.dispose()


@contextmanager
def database_blip(engine: sa.engine.Engine) -> Iterator[None]:
    """The database refuses to write orders (a failover, killed connections) while the inbox's own
    bookkeeping gets through: what a short outage looks like to the worker processing an order."""

    def refuse(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool) -> None:
        if re.match(r"\s*(INSERT INTO|UPDATE) orders\b", statement):
            raise sa.exc.OperationalError(statement, params, ConnectionError("server closed the connection"))

    sa.event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse)


def drain(rt: Runtime, rounds: int = 20) -> None:
    """What the process-inbox flow's loop does with the inbox: claim, receive, until nothing is due."""
    with use_runtime(rt):
        for _ in range(rounds):
            claimed = claim_inbox(50)
            if not claimed:
                return
            try:
                receive.fn(claimed)
            except ReceiveFailed:
                pass
    raise AssertionError(f"the inbox was still busy after {rounds} rounds")


def the_row(rt: Runtime) -> InboxEvent:
    [row] = rows(rt, InboxEvent)
    return row


def backdate(rt: Runtime, **columns: Any) -> None:
    """Move the inbox rows' timestamps into the past (the clock is ours, nobody sleeps)."""
    with Session(rt.engine) as s:
        s.execute(sa.update(InboxEvent).values(**columns))
        s.commit()


def test_a_database_blip_costs_one_attempt_and_the_order_is_processed_later(rt):
    deliver(rt.engine, order_payload("ja-first-gift"))
    before = utcnow()
    with database_blip(rt.engine):
        drain(rt)
    row = the_row(rt)
    # Not re-claimed at once by the same loop: one attempt spent, the next one scheduled.
    assert (row.status, row.attempts) == ("failed", 1), row.reason
    assert "OperationalError" in row.reason
    assert row.next_attempt_at is not None and row.next_attempt_at >= before + timedelta(seconds=30)
    drain(rt)  # the blip is over, but the backoff has not run out: nothing is due
    assert the_row(rt).status == "failed" and rows(rt, Order) == []

    backdate(rt, next_attempt_at=utcnow() - timedelta(seconds=1))
    drain(rt)
    row = the_row(rt)
    assert (row.status, row.attempts) == ("done", 2)
    [order] = rows(rt, Order)
    assert order.name == "#1101"
    assert [m.kind for m in rows(rt, OutboxMessage)] == ["order_confirmation"]


def test_the_backoff_grows_and_attempts_run_out(rt3):
    deliver(rt3.engine, order_payload("ja-first-gift"))
    waits = []
    with database_blip(rt3.engine):
        for _ in range(3):
            before = utcnow()
            drain(rt3)
            row = the_row(rt3)
            assert row.status == "failed"
            waits.append(row.next_attempt_at and round((row.next_attempt_at - before).total_seconds()))
            backdate(rt3, next_attempt_at=utcnow() - timedelta(seconds=1))
    assert waits == [30, 60, None]  # 30 s, 1 min, then no more: it waits for a person
    row = the_row(rt3)
    assert row.attempts == 3 and row.reason.startswith("gave up after 3 attempts: OperationalError")
    drain(rt3)
    assert the_row(rt3).attempts == 3  # never claimed again


def test_a_delivery_that_kills_its_worker_is_given_up_and_ops_are_told_once(rt3):
    inbox_id = deliver(rt3.engine, order_payload("ja-first-gift"))
    for _ in range(3):  # three workers claim it and die before recording anything
        with use_runtime(rt3):
            assert [c.inbox_id for c in claim_inbox(50)] == [inbox_id]
        backdate(rt3, claimed_at=utcnow() - timedelta(hours=1))
    with use_runtime(rt3):
        assert claim_inbox(50) == []  # not taken over a fourth time
    row = the_row(rt3)
    assert (row.status, row.attempts) == ("failed", 3)
    assert "gave up after 3 attempts: the worker died while processing it" in row.reason

    from tasks.receipt import inbox_alerts

    with use_runtime(rt3):
        [reason] = inbox_alerts()
        for _ in range(5):
            assert inbox_alerts() == []  # told once, however often the sweep runs
    assert f"inbox {inbox_id} (orders/create #1101) failed 3 times" in reason
    assert f"aftercare inbox retry {inbox_id}" in reason
    [mail] = rows(rt3, OutboxMessage)
    assert (mail.kind, mail.to_email, mail.touchpoint_id) == ("inbox_alert", "ops@example.com", None)
    assert the_row(rt3).alerted_at is not None

    # The drain loop's send stage sends it, once: staff mail under staff/, in the ops' language (ja).
    with use_runtime(rt3):
        claimed = claim_outbox(10)
    assert [c.outbox_id for c in claimed] == [mail.id]
    assert outbox.deliver(rt3.engine, mail.id, rt3.backend, rt3.settings).status == "sent"
    [eml] = (rt3.settings.outbox_dir / "staff").glob("*.eml")
    text = (
        email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        .get_body(preferencelist=("plain",))
        .get_content()
    )
    assert f"受信 {inbox_id}" in text and "#1101" in text and "worker died" in text
    assert "aftercare inbox retry <ID>" in text
    with use_runtime(rt3):
        assert claim_outbox(10) == [] and inbox_alerts() == []


def test_concurrent_sweeps_tell_ops_about_each_exhausted_row_once(rt3):
    from aftercare.spine import inbox
    from tasks.receipt import inbox_alerts

    for i in range(6):
        deliver(rt3.engine, order_payload("ja-first-gift", id=840000 + i, name=f"#{3000 + i}"))
    retry = inbox.Retry.from_settings(rt3.settings)
    for _ in range(3):
        inbox.claim_batch(rt3.engine, 50, retry)
        backdate(rt3, claimed_at=utcnow() - timedelta(hours=1))
    assert inbox.give_up_abandoned(rt3.engine, retry) and len(rows(rt3, InboxEvent)) == 6
    reasons: list[list[str]] = []
    barrier = threading.Barrier(3)

    def sweep() -> None:
        with use_runtime(rt3):
            barrier.wait()
            reasons.append(inbox_alerts())

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    told = [r for batch in reasons for r in batch]
    assert len(told) == 6 and len(set(told)) == 6
    mails = rows(rt3, OutboxMessage)
    assert {m.kind for m in mails} == {"inbox_alert"}
    # One mail per sweep that found something, together naming each row exactly once.
    bodies = "".join(m.text_body for m in mails)
    assert len(mails) == sum(1 for batch in reasons if batch)
    assert all(bodies.count(f"#{3000 + i}") == 1 for i in range(6))


def test_a_retried_row_is_processed_and_may_alert_again(rt3):
    from aftercare.spine import inbox
    from tasks.receipt import inbox_alerts

    inbox_id = deliver(rt3.engine, order_payload("ja-first-gift"))
    assert inbox_id is not None
    with database_blip(rt3.engine):
        for _ in range(3):
            drain(rt3)
            backdate(rt3, next_attempt_at=utcnow() - timedelta(seconds=1))
    with use_runtime(rt3):
        assert len(inbox_alerts()) == 1
    inbox.retry_by_hand(rt3.engine, inbox_id)
    row = the_row(rt3)
    assert (row.status, row.attempts, row.next_attempt_at, row.alerted_at) == ("pending", 0, None, None)
    assert row.reason.startswith("retried by hand at ") and "gave up after 3 attempts" in row.reason
    drain(rt3)
    assert (the_row(rt3).status, the_row(rt3).attempts) == ("done", 1)
    assert [o.name for o in rows(rt3, Order)] == ["#1101"]


def test_a_message_whose_sending_kills_its_worker_is_failed_not_requeued_forever(rt):
    deliver(rt.engine, order_payload("ja-first-gift"))
    drain(rt)
    [message] = rows(rt, OutboxMessage)
    for attempt in range(1, rt.settings.send_max_attempts + 1):
        [claimed] = outbox.claim_due(rt.engine, 10, worker="doomed")  # claimed; the worker dies
        with Session(rt.engine) as s:
            s.execute(sa.update(OutboxMessage).values(claimed_at=utcnow() - timedelta(hours=1)))
            s.commit()
        # The sweep (claim_outbox) settles what the dead worker left.
        outbox.recover_stale(
            rt.engine,
            rt.backend,
            timedelta(seconds=rt.settings.send_lease_s),
            max_attempts=rt.settings.send_max_attempts,
        )
        [message] = rows(rt, OutboxMessage)
        assert message.attempts == attempt
        if attempt < rt.settings.send_max_attempts:
            assert message.status == "pending"
    assert (
        message.status == "failed"
        and f"gave up after {rt.settings.send_max_attempts} attempts" in message.last_error
    )
    assert outbox.claim_due(rt.engine, 10, worker="w") == []
    [touchpoint] = rows(rt, Touchpoint)
    assert touchpoint.status == "failed"
    assert list(rt.settings.outbox_dir.glob("*.eml")) == []  # never sent


def test_a_hand_off_whose_sending_kills_its_worker_is_failed_not_taken_over_forever(settings):
    rt = Runtime.build(settings.model_copy(update={"warehouse_max_attempts": 3}))
    try:
        deliver(rt.engine, order_payload("ja-first-gift"))
        drain(rt)
        from tasks.shipping import claim_handoffs

        taken = 0
        with use_runtime(rt):
            while claim_handoffs(10):
                taken += 1
                assert taken <= 3, "taken over again and again"
                with Session(rt.engine) as s:  # the worker died mid-send; its claim ages past the lease
                    s.execute(sa.update(WarehouseHandoff).values(claimed_at=utcnow() - timedelta(hours=1)))
                    s.commit()
        assert taken == 3
        with Session(rt.engine) as s:
            [handoff] = s.exec(select(WarehouseHandoff)).all()
        assert (handoff.status, handoff.attempts) == ("failed", 3)
        assert "the worker died while sending it" in handoff.last_error
        # A failed hand-off is what the warehouse ops alert tells.
        assert [a.handoff_id for a in warehouse.claim_alerts(rt.engine, timedelta(minutes=30))] == [
            handoff.id
        ]
    finally:
        rt.engine.dispose()
