"""aftercare/due.py: the web app's patrol wakes process-inbox only when the database holds work that
is due, by the claims' own conditions; an idle database says so, and time is an input."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session

from aftercare.due import work_due
from aftercare.models import InboxEvent, InboxStatus, OutboxMessage, OutboxStatus, WarehouseHandoff, utcnow
from aftercare.orders import warehouse
from aftercare.spine import inbox
from aftercare.spine.outbox import claim_due
from tests.factories import deliver, order_payload
from tests.pipeline import drain, send_all, send_outbox


def due(rt, now=None):
    return work_due(rt.engine, rt.settings, rt.policies.requests, now or utcnow())


def _set(rt, model, row_id, **values):
    with Session(rt.engine) as session:
        session.execute(sa.update(model).where(model.id == row_id).values(**values))
        session.commit()


def test_an_idle_database_has_no_work_and_a_delivery_is_work(rt):
    assert due(rt) == []
    inbox_id = deliver(rt.engine, order_payload())
    assert due(rt) == ["deliveries to receive"]
    drain(rt)  # received: the confirmation and the hand-off are owed now
    assert due(rt) == ["mails to send", "hand-offs to send"]
    send_outbox(rt)
    send_all(rt, warehouse.FileWarehouse(rt.settings.var_dir / "warehouse"))
    assert inbox_id is not None
    assert due(rt) == []  # everything done: a run now would be empty


def test_a_failed_delivery_is_work_when_its_backoff_ends_not_before(rt):
    inbox_id = deliver(rt.engine, order_payload())
    now = utcnow()
    _set(
        rt,
        InboxEvent,
        inbox_id,
        status=InboxStatus.FAILED,
        attempts=1,
        next_attempt_at=now + timedelta(seconds=60),
    )
    assert due(rt, now) == []
    assert due(rt, now + timedelta(seconds=61)) == ["deliveries to receive"]
    # The claim agrees at both moments.
    retry = inbox.Retry.from_settings(rt.settings)
    assert inbox.claim_batch(rt.engine, 10, retry, now=now) == []
    assert [c.inbox_id for c in inbox.claim_batch(rt.engine, 10, retry, now=now + timedelta(seconds=61))] == [
        inbox_id
    ]


def test_a_delivery_out_of_attempts_is_work_until_ops_are_told(rt):
    inbox_id = deliver(rt.engine, order_payload())
    retry = inbox.Retry.from_settings(rt.settings)
    _set(rt, InboxEvent, inbox_id, status=InboxStatus.FAILED, attempts=retry.max_attempts)
    assert due(rt) == ["deliveries out of attempts to tell ops about"]
    _set(rt, InboxEvent, inbox_id, alerted_at=utcnow())
    assert due(rt) == []  # it waits for a person (`aftercare inbox retry`), not for a run


def test_a_worker_that_died_leaves_work_once_its_lease_runs_out(rt):
    deliver(rt.engine, order_payload())
    drain(rt)
    send_all(rt, warehouse.FileWarehouse(rt.settings.var_dir / "warehouse"))
    now = utcnow()
    claimed = claim_due(rt.engine, 10, "dies", now=now)  # claimed, then the worker is killed
    assert claimed
    assert due(rt, now) == []
    later = now + timedelta(seconds=rt.settings.send_lease_s + 1)
    assert due(rt, later) == ["mails left mid-send"]


def test_a_mail_waiting_out_its_backoff_is_work_only_when_due(rt):
    deliver(rt.engine, order_payload())
    drain(rt)
    send_all(rt, warehouse.FileWarehouse(rt.settings.var_dir / "warehouse"))
    now = utcnow()
    with Session(rt.engine) as session:
        ids = list(session.exec(sa.select(OutboxMessage.id)).scalars())
    for row_id in ids:
        _set(
            rt, OutboxMessage, row_id, status=OutboxStatus.PENDING, next_attempt_at=now + timedelta(minutes=2)
        )
    assert due(rt, now) == []
    assert due(rt, now + timedelta(minutes=2)) == ["mails to send"]


def test_an_unacknowledged_hand_off_is_work_when_the_window_has_passed(rt):
    deliver(rt.engine, order_payload())
    drain(rt)
    send_outbox(rt)
    with Session(rt.engine) as session:
        handoff = session.exec(sa.select(WarehouseHandoff)).scalars().one()
    # Sent to a 3PL that never acknowledges it: status stays `sending` (a live worker's claim).
    now = utcnow()
    _set(rt, WarehouseHandoff, handoff.id, status="sending", claimed_at=now)
    assert due(rt, now) == []
    window = timedelta(minutes=rt.policies.requests.acknowledgement_window_minutes)
    assert "hand-offs to tell ops about" in due(rt, handoff.created_at + window + timedelta(seconds=1))
