"""The inbox: every webhook delivery, stored before it is acknowledged, claimed once for processing."""

from __future__ import annotations

import json
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from aftercare.db import claim_rows
from aftercare.models import InboxEvent, InboxStatus, utcnow

# A failed row is retried by the sweep this many times, then left failed for ops: no crash loop.
MAX_PROCESS_ATTEMPTS = 5


@dataclass(frozen=True)
class Delivery:
    source: str
    delivery_id: str
    event_id: str | None
    topic: str
    shop_domain: str
    triggered_at: datetime | None
    body: bytes
    status: str = InboxStatus.PENDING
    reason: str | None = None
    subject_ref: str | None = None


_SQLITE_WRITE_LOCK = threading.Lock()
# Built once: constructing a statement costs more than executing it at webhook rates.
_INSERT = sa.insert(InboxEvent.__table__).returning(InboxEvent.__table__.c.id)  # type: ignore[attr-defined]


def store_delivery(engine: Engine, delivery: Delivery) -> tuple[int | None, bool]:
    """Insert a delivery and commit; (inbox id, True) when new, (None, False) when it duplicates one
    we have (same delivery id, or same event id). A Core insert: this is the webhook's hot path."""
    values = {
        "source": delivery.source,
        "delivery_id": delivery.delivery_id,
        "event_id": delivery.event_id,
        "topic": delivery.topic,
        "shop_domain": delivery.shop_domain,
        "triggered_at": delivery.triggered_at,
        "received_at": utcnow(),
        "body": delivery.body,
        "status": delivery.status,
        "reason": delivery.reason,
        "attempts": 0,
        "subject_ref": delivery.subject_ref.replace("\x00", "") if delivery.subject_ref else None,
        "processed_at": None if delivery.status == InboxStatus.PENDING else utcnow(),
    }
    # SQLite allows one writer; threads that collide wait in its busy handler, which sleeps in steps
    # of up to 100 ms. Queueing them on a lock in this process keeps the ack p99 low.
    lock = _SQLITE_WRITE_LOCK if engine.dialect.name == "sqlite" else nullcontext()
    with lock, engine.connect() as conn:
        try:
            row_id = conn.execute(_INSERT, values).scalar_one()
            conn.commit()
        except IntegrityError:
            conn.rollback()
            return None, False
    return row_id, True


def _claimable(now: datetime, lease: timedelta) -> sa.ColumnElement[bool]:
    return sa.or_(
        InboxEvent.status == InboxStatus.PENDING,
        sa.and_(InboxEvent.status == InboxStatus.FAILED, InboxEvent.attempts < MAX_PROCESS_ATTEMPTS),
        # A worker that died mid-processing: processing is idempotent, so take it over.
        sa.and_(InboxEvent.status == InboxStatus.PROCESSING, InboxEvent.claimed_at < now - lease),
    )


@dataclass(frozen=True)
class ClaimedRow:
    inbox_id: int
    topic: str
    ref: str  # the order name when known, for run names ops can search


def claim_batch(engine: Engine, limit: int, lease: timedelta = timedelta(minutes=5)) -> list[ClaimedRow]:
    """Mark up to `limit` processable rows as processing and return their ids, oldest first.
    On PostgreSQL the rows are locked with SKIP LOCKED so concurrent workers take disjoint sets;
    on SQLite the conditional UPDATE is the compare-and-set."""
    now = utcnow()
    rows = claim_rows(
        engine,
        InboxEvent,
        [InboxEvent.topic, InboxEvent.subject_ref],
        _claimable(now, lease),
        {"status": InboxStatus.PROCESSING, "claimed_at": now, "attempts": InboxEvent.attempts + 1},
        limit,
    )
    return [ClaimedRow(row_id, topic, ref or f"inbox-{row_id}") for row_id, topic, ref in rows]


def customer_keys(engine: Engine, inbox_ids: list[int]) -> dict[int, str]:
    """The customer each of these order deliveries is for ('email:<address>'), read from the stored
    bodies; rows without a usable email are left out. Lets callers keep one customer's orders in
    order while receiving different customers' at the same time."""
    if not inbox_ids:
        return {}
    table = InboxEvent.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c.body).where(table.c.id.in_(inbox_ids))).all()
    keys: dict[int, str] = {}
    for row_id, body in rows:
        try:
            data = json.loads(body)
            customer = data.get("customer") if isinstance(data.get("customer"), dict) else {}
            email = data.get("email") or data.get("contact_email") or customer.get("email")
        except (ValueError, AttributeError, RecursionError):
            continue
        if isinstance(email, str) and email.strip():
            keys[row_id] = "email:" + email.strip().lower()
    return keys


def finish(session: Session, row: InboxEvent, status: InboxStatus, reason: str | None = None) -> None:
    """Record the outcome of processing a row (inside the caller's transaction)."""
    row.status = status
    row.reason = reason
    row.processed_at = utcnow()
    session.add(row)


def mark_failed(engine: Engine, row_id: int, reason: str) -> None:
    """Record an unexpected processing error; the sweep retries until MAX_PROCESS_ATTEMPTS."""
    with Session(engine) as session:
        row = session.get(InboxEvent, row_id)
        if row is not None:
            finish(session, row, InboxStatus.FAILED, reason[:2000])
            session.commit()


def pending_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(
            select(sa.func.count()).select_from(InboxEvent).where(_claimable(utcnow(), timedelta(minutes=5)))
        ).one()
