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

from aftercare.errors import AftercareError
from aftercare.models import InboxEvent, InboxStatus, utcnow
from aftercare.settings import Settings
from aftercare.spine import addresses
from aftercare.spine.db import claim_rows

# A failed row is retried by the sweep this many times, then left failed for ops: no crash loop.
MAX_PROCESS_ATTEMPTS = 10
# A row claimed longer ago than this without an outcome belongs to a worker that died on it.
DEFAULT_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Retry:
    """How a row that failed is tried again: after base * 2^(attempts-1) (capped), at most
    `max_attempts` times in all, a worker that died on it (lease expired) counting as an attempt.
    With the defaults the schedule spans hours, so a database blip or a short outage costs a
    few attempts, not all of them."""

    max_attempts: int = MAX_PROCESS_ATTEMPTS
    base: timedelta = timedelta(seconds=30)
    cap: timedelta = timedelta(hours=4)
    lease: timedelta = DEFAULT_LEASE

    @classmethod
    def from_settings(cls, settings: Settings) -> Retry:
        return cls(
            max_attempts=settings.inbox_max_attempts,
            base=timedelta(seconds=settings.inbox_retry_base_s),
            cap=timedelta(seconds=settings.inbox_retry_cap_s),
            lease=timedelta(seconds=settings.inbox_lease_s),
        )

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt."""
        return min(self.cap, self.base * 2 ** max(0, min(attempts - 1, 40)))


DEFAULT_RETRY = Retry()


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


def _values(delivery: Delivery) -> dict[str, object]:
    return {
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


def insert_delivery(conn: sa.Connection, delivery: Delivery) -> int:
    """Insert a delivery inside the caller's transaction (with rows that must exist only together
    with it, e.g. the review revision it carries); its id. A duplicate raises IntegrityError: the
    caller rolls back its whole transaction."""
    return int(conn.execute(_INSERT, _values(delivery)).scalar_one())


def store_delivery(engine: Engine, delivery: Delivery) -> tuple[int | None, bool]:
    """Insert a delivery and commit; (inbox id, True) when new, (None, False) when it duplicates one
    we have (same delivery id, or same event id). A Core insert: this is the webhook's hot path."""
    values = _values(delivery)
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


def _abandoned(now: datetime, lease: timedelta) -> sa.ColumnElement[bool]:
    """Claimed for processing longer ago than the lease, no outcome: the worker died on it."""
    return sa.and_(InboxEvent.status == InboxStatus.PROCESSING, InboxEvent.claimed_at < now - lease)


def _claimable(now: datetime, retry: Retry) -> sa.ColumnElement[bool]:
    due = sa.or_(InboxEvent.next_attempt_at.is_(None), InboxEvent.next_attempt_at <= now)  # type: ignore[union-attr]
    return sa.or_(
        InboxEvent.status == InboxStatus.PENDING,
        # Failed rows wait out their backoff; an exhausted one waits for a person (`inbox retry`).
        sa.and_(InboxEvent.status == InboxStatus.FAILED, InboxEvent.attempts < retry.max_attempts, due),
        # A worker that died mid-processing: processing is idempotent, so take it over. Its death
        # was an attempt (counted at its claim), so a row that kills every worker runs out too.
        sa.and_(_abandoned(now, retry.lease), InboxEvent.attempts < retry.max_attempts),
    )


@dataclass(frozen=True)
class ClaimedRow:
    inbox_id: int
    topic: str
    ref: str  # the order name when known, for run names ops can search


def claim_batch(
    engine: Engine,
    limit: int,
    retry: Retry = DEFAULT_RETRY,
    *,
    now: datetime | None = None,
) -> list[ClaimedRow]:
    """Mark up to `limit` processable rows as processing and return their ids, oldest first. Each
    claim counts as an attempt. Rows a worker died on that have no attempts left are failed here
    instead (see `give_up_abandoned`), never taken over again.
    On PostgreSQL the rows are locked with SKIP LOCKED so concurrent workers take disjoint sets;
    on SQLite the conditional UPDATE is the compare-and-set."""
    now = now or utcnow()
    give_up_abandoned(engine, retry, now=now)
    rows = claim_rows(
        engine,
        InboxEvent,
        [InboxEvent.topic, InboxEvent.subject_ref],
        _claimable(now, retry),
        {"status": InboxStatus.PROCESSING, "claimed_at": now, "attempts": InboxEvent.attempts + 1},
        limit,
    )
    return [ClaimedRow(row_id, topic, ref or f"inbox-{row_id}") for row_id, topic, ref in rows]


def give_up_abandoned(
    engine: Engine, retry: Retry = DEFAULT_RETRY, *, now: datetime | None = None
) -> list[int]:
    """Fail the rows a worker died on (claim older than the lease) that have used every attempt:
    a delivery that crashes its worker each time is not retried forever; ops are told like for
    any exhausted row (`claim_alerts`). Returns their ids."""
    now = now or utcnow()
    earlier = sa.func.coalesce(sa.literal("; before that: ") + InboxEvent.reason, "")
    reason = (
        sa.literal("gave up after ")
        + sa.cast(InboxEvent.attempts, sa.String)
        + sa.literal(
            f" attempts: the worker died while processing it (no outcome within the "
            f"{int(retry.lease.total_seconds())} s lease)"
        )
        + earlier
    )
    rows = claim_rows(
        engine,
        InboxEvent,
        [],
        sa.and_(_abandoned(now, retry.lease), InboxEvent.attempts >= retry.max_attempts),
        {"status": InboxStatus.FAILED, "reason": reason, "processed_at": now, "next_attempt_at": None},
        1000,
    )
    return [row_id for (row_id,) in rows]


def customer_keys(engine: Engine, inbox_ids: list[int]) -> dict[int, str]:
    """The customer each of these order deliveries is for ('email:<address>'), read from the stored
    bodies the way receiving reads them (aftercare.spine.addresses.customer_key); rows without an address a
    customer is recognised by are left out. Lets callers keep one customer's orders in order while
    receiving different customers' at the same time."""
    if not inbox_ids:
        return {}
    table = InboxEvent.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c.body).where(table.c.id.in_(inbox_ids))).all()
    keys: dict[int, str] = {}
    for row_id, body in rows:
        try:
            data = json.loads(body)
            if isinstance(data.get("order"), dict):
                data = data["order"]
            customer = data.get("customer") if isinstance(data.get("customer"), dict) else {}
            fields = (data.get("email"), data.get("contact_email"), customer.get("email"))
        except (ValueError, AttributeError, RecursionError):
            continue
        email = next((e for e in map(addresses.as_written, fields) if e), None)
        key = addresses.customer_key(email)
        if key is not None:
            keys[row_id] = "email:" + key
    return keys


def finish(session: Session, row: InboxEvent, status: InboxStatus, reason: str | None = None) -> None:
    """Record the outcome of processing a row (inside the caller's transaction)."""
    row.status = status
    row.reason = reason
    row.processed_at = utcnow()
    session.add(row)


def mark_failed(
    engine: Engine,
    row_id: int,
    reason: str,
    retry: Retry = DEFAULT_RETRY,
    *,
    now: datetime | None = None,
) -> datetime | None:
    """Record an unexpected processing error. The row is tried again after its backoff (returned),
    or, with no attempts left, stays failed for ops (None; `claim_alerts` tells them). Only a row
    still in processing is touched: an outcome recorded meanwhile (by a takeover) is not overwritten."""
    now = now or utcnow()
    with Session(engine) as session:
        row = session.get(InboxEvent, row_id)
        if row is None or row.status != InboxStatus.PROCESSING:
            return None
        exhausted = row.attempts >= retry.max_attempts
        if exhausted:
            reason = f"gave up after {row.attempts} attempts: {reason}"
        finish(session, row, InboxStatus.FAILED, reason[:2000])
        row.processed_at = now
        row.next_attempt_at = None if exhausted else now + retry.backoff(row.attempts)
        session.commit()
        return row.next_attempt_at


def pending_count(engine: Engine, retry: Retry = DEFAULT_RETRY, *, now: datetime | None = None) -> int:
    """Rows a claim would take now."""
    with Session(engine) as session:
        return session.exec(
            select(sa.func.count()).select_from(InboxEvent).where(_claimable(now or utcnow(), retry))
        ).one()


@dataclass(frozen=True)
class Exhausted:
    """A delivery that used every attempt: ops must look at it, then `aftercare inbox retry ID`."""

    inbox_id: int
    topic: str
    ref: str | None
    attempts: int
    reason: str | None
    received_at: datetime

    def describe(self) -> str:
        what = f"{self.topic} {self.ref}" if self.ref else self.topic
        return (
            f"inbox {self.inbox_id} ({what}) failed {self.attempts} times, not retried: "
            f"{self.reason or 'no reason recorded'}; `aftercare inbox retry {self.inbox_id}` requeues it"
        )


def exhausted_unalerted(retry: Retry) -> sa.ColumnElement[bool]:
    """Rows out of attempts that ops have not been told about yet."""
    return sa.and_(
        InboxEvent.status == InboxStatus.FAILED,
        InboxEvent.attempts >= retry.max_attempts,
        InboxEvent.alerted_at.is_(None),  # type: ignore[union-attr]
    )


def claim_alerts(
    session: Session, retry: Retry = DEFAULT_RETRY, *, now: datetime | None = None, limit: int = 100
) -> list[Exhausted]:
    """Rows out of attempts that ops have not been told about, each marked alerted by the same
    compare-and-set (a conditional UPDATE: a concurrent sweep finds `alerted_at` set and skips it).
    Runs in the caller's transaction, so the mail that tells ops is written with the claim: both
    commit, or neither does."""
    now = now or utcnow()
    exhausted = exhausted_unalerted(retry)
    candidates = sa.select(InboxEvent.id).where(exhausted).order_by(InboxEvent.id).limit(limit)
    rows = session.execute(
        sa.update(InboxEvent)
        .where(InboxEvent.id.in_(candidates.scalar_subquery()), exhausted)  # type: ignore[union-attr]
        .values(alerted_at=now)
        .returning(
            InboxEvent.id,
            InboxEvent.topic,
            InboxEvent.subject_ref,
            InboxEvent.attempts,
            InboxEvent.reason,
            InboxEvent.received_at,
        )
    ).all()
    return sorted((Exhausted(*row) for row in rows), key=lambda e: e.inbox_id)


class NotRetryable(AftercareError):
    """`inbox retry` was asked for a row that does not exist or has not failed."""


def retry_by_hand(engine: Engine, row_id: int, *, now: datetime | None = None) -> None:
    """A person decided to try a failed row again: it is pending with every attempt back, and ops
    will be told again should it run out once more."""
    now = now or utcnow()
    with Session(engine) as session:
        row = session.get(InboxEvent, row_id)
        if row is None:
            raise NotRetryable(f"no inbox row {row_id}")
        if row.status != InboxStatus.FAILED:
            raise NotRetryable(f"inbox row {row_id} is {row.status}; only failed rows are retried")
        previous = (
            f"{row.reason} (after {row.attempts} attempts)" if row.reason else f"{row.attempts} attempts"
        )
        row.status, row.attempts, row.claimed_at, row.processed_at = InboxStatus.PENDING, 0, None, None
        row.next_attempt_at, row.alerted_at = None, None
        row.reason = f"retried by hand at {now.isoformat()} (was: {previous})"[:2000]
        session.add(row)
        session.commit()
