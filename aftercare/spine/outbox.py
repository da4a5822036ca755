"""The outbox: one row per touchpoint, claimed by one worker, sent once, its outcome recorded.

Exactly-once rests on three things: the unique touchpoint_id (a second enqueue is a no-op), the
claim (pending -> sending is a compare-and-set; SKIP LOCKED on PostgreSQL), and the rule that a row
left in `sending` by a dead worker is never resent blindly: the backend is asked whether it has the
message, and when it cannot tell, the row becomes `uncertain` for a person to decide."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import AmbiguousSendError, PermanentSendError, TransientSendError
from aftercare.models import OutboxMessage, OutboxStatus, Touchpoint, TouchpointStatus, UTCDateTime, utcnow
from aftercare.rendering import RenderedEmail
from aftercare.settings import Settings
from aftercare.spine.db import autocommit, claim_rows, dialect_insert
from aftercare.spine.email import EmailBackend, OutgoingEmail, check_headers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Enqueued:
    """What the receiving side needs of a touchpoint's outbox row (not the whole row: loading and
    building an ORM object per order is a measurable share of receiving one)."""

    id: int
    status: str
    subject: str
    text_body: str
    # enqueue_staff, enqueue_many: this call made the row (not a plan repeated after a crash, nor
    # another worker's)
    inserted: bool = False


_ENQUEUED_COLUMNS = ("id", "status", "subject", "text_body")


# A message in one of these may have reached its recipient (sent, or its send's outcome unknown).
MAY_HAVE_REACHED = (OutboxStatus.SENT, OutboxStatus.SENDING, OutboxStatus.UNCERTAIN)


def may_have_mailed(touchpoint_id: Any) -> sa.Exists:
    """EXISTS a message of this touchpoint (a column or value) that may have reached its recipient:
    for a query that reads it beside the touchpoint, in the same round trip."""
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    return sa.exists().where(
        table.c.touchpoint_id == touchpoint_id, table.c.status.in_([s.value for s in MAY_HAVE_REACHED])
    )


def called_off_unmailed(status: str, mailed: bool) -> bool:
    """A touchpoint we called off (cancelled, or skipped) before its mail could reach anyone: a link
    its mail would carry was never meant to be used. Once the mail may have reached the customer,
    the link is theirs whatever happened since."""
    return status in (TouchpointStatus.CANCELLED, TouchpointStatus.SKIPPED) and not mailed


def find(session: Session, touchpoint_id: int) -> Enqueued | None:
    """The outbox row of a touchpoint, if it has one."""
    columns = [getattr(OutboxMessage, c) for c in _ENQUEUED_COLUMNS]
    row = session.execute(sa.select(*columns).where(OutboxMessage.touchpoint_id == touchpoint_id)).first()
    return Enqueued(*row) if row is not None else None


def _new_row(*, rendered: RenderedEmail, now: datetime | None = None, **columns: Any) -> dict[str, Any]:
    """The values of a new, pending outbox row: one shape for customer and staff mail. `now`: when
    it was decided to send (the caps count from `created_at`), default the present moment."""
    at = utcnow()
    return {
        **columns,
        "text_body": rendered.text,
        "html_body": rendered.html,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": at,
        "created_at": now or at,
    }


@dataclass(frozen=True)
class TouchpointMail:
    """One customer mail for one touchpoint, as `enqueue` and `enqueue_many` store it. Its extra
    headers (List-Unsubscribe and List-Unsubscribe-Post on a feedback mail) are checked when it is
    made (`email.check_headers`: InvalidHeader, a ValueError, for a name or value a header cannot
    carry), so a message that could never be sent fails where it is written, alone, and a batch
    never holds one."""

    touchpoint_id: int
    order_id: int
    kind: str
    to_email: str
    to_name: str | None
    rendered: RenderedEmail
    locale: str
    order_name: str | None
    is_test: bool
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", check_headers(self.headers))

    @classmethod
    def of(
        cls,
        touchpoint: Touchpoint,
        *,
        to_email: str,
        to_name: str | None,
        rendered: RenderedEmail,
        locale: str,
        order_name: str | None,
        is_test: bool,
        headers: dict[str, str] | None = None,
    ) -> TouchpointMail:
        """The mail of a stored touchpoint."""
        assert touchpoint.id is not None
        return cls(
            touchpoint.id,
            touchpoint.order_id,
            touchpoint.kind,
            to_email,
            to_name,
            rendered,
            locale,
            order_name,
            is_test,
            headers,
        )

    def row(self, now: datetime | None = None) -> dict[str, Any]:
        """The values of its new, pending outbox row (`headers` None: no extra header)."""
        return _new_row(
            touchpoint_id=self.touchpoint_id,
            order_id=self.order_id,
            order_name=self.order_name,
            kind=self.kind,
            to_email=self.to_email,
            to_name=self.to_name,
            subject=("[TEST] " if self.is_test else "") + self.rendered.subject,
            rendered=self.rendered,
            locale=self.locale,
            is_test=self.is_test,
            headers=self.headers,
            now=now,
        )


def enqueue(
    session: Session,
    *,
    touchpoint: Touchpoint,
    to_email: str,
    to_name: str | None,
    rendered: RenderedEmail,
    locale: str,
    order_name: str | None,
    is_test: bool,
    headers: dict[str, str] | None = None,
) -> Enqueued:
    """Insert the message for a touchpoint unless it already exists; return the stored row. A row
    nobody has claimed yet is refreshed with this message (see below). `headers`: extra mail headers
    (List-Unsubscribe and List-Unsubscribe-Post on a feedback mail), checked here (`TouchpointMail`:
    InvalidHeader) and sent by every backend. For many touchpoints at once: `enqueue_many`."""
    mail = TouchpointMail.of(
        touchpoint,
        to_email=to_email,
        to_name=to_name,
        rendered=rendered,
        locale=locale,
        order_name=order_name,
        is_test=is_test,
        headers=headers,
    )
    values = mail.row()
    values["headers"] = values["headers"] if values["headers"] is not None else sa.null()  # SQL NULL
    insert = dialect_insert(session)
    # A message nobody has claimed yet is refreshed with the newest order state (say, payment
    # confirmed a second later); once claimed it is never touched again.
    refresh = {
        k: values[k]
        for k in ("subject", "text_body", "html_body", "to_email", "to_name", "locale", "headers")
    }
    stmt = insert(OutboxMessage).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["touchpoint_id"], set_=refresh, where=OutboxMessage.status == OutboxStatus.PENDING
    ).returning(*[getattr(OutboxMessage, c) for c in _ENQUEUED_COLUMNS])
    row = session.execute(stmt).first()
    if row is not None:  # inserted, or refreshed
        return Enqueued(*row)
    claimed = find(session, mail.touchpoint_id)  # claimed already: left as it is
    assert claimed is not None
    return claimed


_OUTBOX_TABLE: sa.Table = OutboxMessage.__table__  # type: ignore[attr-defined]
# What TouchpointMail.row() holds.
_MAIL_COLUMNS = (
    "touchpoint_id",
    "order_id",
    "order_name",
    "kind",
    "to_email",
    "to_name",
    "subject",
    "locale",
    "is_test",
    "headers",
    "text_body",
    "html_body",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
)


def _insert_mails(session: Session) -> Any:
    """INSERT ... ON CONFLICT (touchpoint_id) DO NOTHING RETURNING, for an executemany: SQLAlchemy
    sends the rows as multi-row VALUES (its "insertmanyvalues"), compiled once per call. `headers`
    None is SQL NULL, as `enqueue` stores it."""
    table = _OUTBOX_TABLE
    values = {c: sa.bindparam(c, type_=table.c[c].type) for c in _MAIL_COLUMNS}
    values["headers"] = sa.bindparam("headers", type_=sa.JSON(none_as_null=True))
    return (
        dialect_insert(session)(table)
        .values(values)
        .on_conflict_do_nothing(index_elements=["touchpoint_id"])
        .returning(table.c.touchpoint_id, *[table.c[c] for c in _ENQUEUED_COLUMNS])
    )


def enqueue_many(
    session: Session, mails: Sequence[TouchpointMail], *, now: datetime | None = None
) -> list[Enqueued]:
    """Insert the messages of many touchpoints in one statement (per about a thousand rows), each
    unless its touchpoint has a row already; return the stored row of each, in the order given,
    `inserted` True where this call made it. Exactly once, as `enqueue`: the unique touchpoint_id
    keeps one row per touchpoint, whether a touchpoint comes twice in `mails` (the first one is
    stored), again in a later call, or from another worker at the same moment. Unlike `enqueue`, a
    row that exists is left as it is (no refresh): a timed message is decided once. `now`: the
    rows' created_at, the moment it was decided to send them (the caps count from it)."""
    if not mails:
        return []
    first: dict[int, dict[str, Any]] = {}
    for mail in mails:
        first.setdefault(mail.touchpoint_id, mail.row(now))
    made = {
        row.touchpoint_id: Enqueued(row.id, row.status, row.subject, row.text_body, inserted=True)
        for row in session.execute(_insert_mails(session), list(first.values()))
    }
    there = [tp for tp in first if tp not in made]
    existing: dict[int, Enqueued] = {}
    if there:
        columns = [_OUTBOX_TABLE.c.touchpoint_id, *[_OUTBOX_TABLE.c[c] for c in _ENQUEUED_COLUMNS]]
        for row in session.execute(sa.select(*columns).where(_OUTBOX_TABLE.c.touchpoint_id.in_(there))):
            existing[row.touchpoint_id] = Enqueued(row.id, row.status, row.subject, row.text_body)
    out: list[Enqueued] = []
    for mail in mails:
        tp = mail.touchpoint_id
        if tp in made:
            out.append(made.pop(tp))  # the first of a touchpoint given twice; the next one finds it
            existing[tp] = replace(out[-1], inserted=False)
        else:
            out.append(existing[tp])
    return out


STAFF_CATEGORY = "staff"
# One staff mail per message key. SQL text (the same on SQLite and PostgreSQL), as the suppression
# store does it: SQLAlchemy's dialect INSERT with ON CONFLICT has no cache key, so it was compiled
# again on every call (an approval request per approver, an ops alert per recovery case).
_INSERT_STAFF = (
    sa.text(
        "INSERT INTO outbox (touchpoint_id, order_id, order_name, kind, to_email, to_name, subject, "
        "text_body, html_body, locale, is_test, status, attempts, next_attempt_at, created_at, "
        "message_key) VALUES (:touchpoint_id, :order_id, :order_name, :kind, :to_email, :to_name, "
        ":subject, :text_body, :html_body, :locale, :is_test, :status, :attempts, :next_attempt_at, "
        ":created_at, :message_key) ON CONFLICT (message_key) DO NOTHING "
        "RETURNING " + ", ".join(_ENQUEUED_COLUMNS)
    )
    .bindparams(
        sa.bindparam("next_attempt_at", type_=UTCDateTime()), sa.bindparam("created_at", type_=UTCDateTime())
    )
    .columns(*[_OUTBOX_TABLE.c[c] for c in _ENQUEUED_COLUMNS])
)
_STAFF_ROW = sa.select(*[_OUTBOX_TABLE.c[c] for c in _ENQUEUED_COLUMNS]).where(
    _OUTBOX_TABLE.c.message_key == sa.bindparam("message_key")
)


def enqueue_staff(
    session: Session,
    *,
    key: str,
    kind: str,
    to_email: str,
    rendered: RenderedEmail,
    locale: str,
    order_id: int | None = None,
    order_name: str | None = None,
) -> Enqueued:
    """Insert one staff mail (an approval request, an escalation, an ops alert) for one recipient,
    unless a row with this message key exists; return the stored row. Staff mails have no
    touchpoint: `key` names the message and the recipient (say `approval_request:draft-12:<email>`),
    so planning the same mail twice, or after a crash, inserts nothing. They are claimed, sent and
    settled by the same machinery as customer mails: no retries around a send, one row per message
    per recipient."""
    values = _new_row(
        touchpoint_id=None,
        order_id=order_id,
        order_name=order_name,
        kind=kind,
        to_email=to_email.strip(),
        to_name=None,
        subject=rendered.subject,
        rendered=rendered,
        locale=locale,
        is_test=False,
    )
    values["message_key"] = f"{kind}:{key}:{to_email.strip().lower()}"[:255]
    row = session.execute(_INSERT_STAFF, values).first()
    if row is not None:
        return Enqueued(*row, inserted=True)
    row = session.execute(_STAFF_ROW, {"message_key": values["message_key"]}).first()
    assert row is not None
    return Enqueued(*row)


@dataclass(frozen=True)
class Claimed:
    outbox_id: int
    kind: str
    order_name: str | None


def due_condition(now: datetime) -> sa.ColumnElement[bool]:
    """Rows to send now: pending, their (back-off) time come."""
    return sa.and_(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.next_attempt_at <= now)


def stale_condition(now: datetime, lease: timedelta) -> sa.ColumnElement[bool]:
    """Rows left in `sending` longer than the lease: their worker died."""
    return sa.and_(OutboxMessage.status == OutboxStatus.SENDING, OutboxMessage.claimed_at < now - lease)


def claim_due(
    engine: Engine, limit: int, worker: str, ids: list[int] | None = None, now: datetime | None = None
) -> list[Claimed]:
    """Move up to `limit` due pending rows to `sending` for this worker; return what was claimed.
    With `ids`, only those rows (a mail someone is waiting on, sent at once; one that is not due,
    or that a drain loop claimed first, is left to it)."""
    now = now or utcnow()
    claimable = due_condition(now)
    if ids is not None:
        claimable = sa.and_(claimable, OutboxMessage.id.in_(ids))  # type: ignore[union-attr]
    rows = claim_rows(
        engine,
        OutboxMessage,
        [OutboxMessage.kind, OutboxMessage.order_name],
        claimable,
        {"status": OutboxStatus.SENDING, "claimed_by": worker, "claimed_at": now},
        limit,
    )
    return [Claimed(row_id, kind, order_name) for row_id, kind, order_name in rows]


@dataclass(frozen=True)
class DeliveryResult:
    outbox_id: int
    status: str
    provider_message_id: str | None = None
    error: str | None = None
    attempts: int = 0


_OUTBOX: sa.Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_TOUCHPOINTS: sa.Table = Touchpoint.__table__  # type: ignore[attr-defined]
# Built once: constructing a statement costs more than executing it at Black-Friday rates.
# The row, and whether its touchpoint was cancelled since it was claimed (one round trip).
_LOAD = (
    sa.select(_OUTBOX, _TOUCHPOINTS.c.status.label("tp_status"), _TOUCHPOINTS.c.reason.label("tp_reason"))
    .select_from(_OUTBOX.outerjoin(_TOUCHPOINTS, _TOUCHPOINTS.c.id == _OUTBOX.c.touchpoint_id))
    .where(_OUTBOX.c.id == sa.bindparam("id"))
)
_TOUCHPOINT_CANCELLED = sa.select(_TOUCHPOINTS.c.reason).where(
    _TOUCHPOINTS.c.id == sa.bindparam("tp"), _TOUCHPOINTS.c.status == TouchpointStatus.CANCELLED
)


def _called_back(engine: Engine, touchpoint_id: int | None) -> str | None:
    """Why this message's touchpoint was cancelled after the row was claimed (an order refunded or
    cancelled meanwhile), or None when it still stands. Staff mail has no touchpoint."""
    if touchpoint_id is None:
        return None
    with autocommit(engine) as conn:
        row = conn.execute(_TOUCHPOINT_CANCELLED, {"tp": touchpoint_id}).first()
    return None if row is None else (row.reason or "its touchpoint was cancelled")


def _outgoing(row: Any, settings: Settings) -> OutgoingEmail:
    """The email for an outbox row (an OutboxMessage, or a Core row with the same columns)."""
    assert row.id is not None
    return OutgoingEmail(
        outbox_id=row.id,
        kind=row.kind,
        to_email=row.to_email,
        to_name=row.to_name,
        from_email=settings.email_from,
        from_name=settings.email_from_name,
        subject=row.subject,
        text=row.text_body,
        html=row.html_body,
        is_test=row.is_test,
        categories=(STAFF_CATEGORY,) if row.touchpoint_id is None else (),
        staff=row.touchpoint_id is None,
        headers=row.headers or None,
    )


def _backoff(settings: Settings, attempt: int, retry_after: float | None) -> float:
    computed = min(
        settings.send_backoff_cap_s, settings.send_backoff_base_s * (2 ** max(0, min(attempt - 1, 40)))
    )
    return max(computed, retry_after or 0.0)


def deliver(
    engine: Engine,
    outbox_id: int,
    backend: EmailBackend,
    settings: Settings,
    *,
    inline_wait_cap_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """Send one claimed row. Transient failures are retried here with backoff (honouring the
    provider's Retry-After) while the wait is short; a longer wait reschedules the row for the
    sweep. Permanent failures mark it failed with the provider's reason, and so does any other error
    (its type and message): a claimed row never stays `sending` because of what it holds. Core
    statements, no ORM: this runs once per message, and each statement is a round trip on PostgreSQL
    (two in all for a message sent at the first attempt: the row read and the outcome written, each
    a statement of its own outside an explicit transaction)."""
    with autocommit(engine) as conn:
        row = conn.execute(_LOAD, {"id": outbox_id}).first()
    if row is None or row.status != OutboxStatus.SENDING:
        return DeliveryResult(
            outbox_id, row.status if row else "missing", row.provider_message_id if row else None
        )
    email = _outgoing(row, settings)
    attempts, touchpoint_id = row.attempts, row.touchpoint_id

    def record(status: OutboxStatus, **kwargs: object) -> DeliveryResult:
        return _record(engine, outbox_id, touchpoint_id, status, attempts, **kwargs)  # type: ignore[arg-type]

    called_back = (row.tp_reason or "its touchpoint was cancelled") if row.tp_status == "cancelled" else None
    while True:
        # Claimed earlier (a batch, a retry's wait): the order may have been refunded or cancelled
        # since. A claimed row is never called back by cancel_touchpoints, so it is checked here,
        # before every attempt, and ends `cancelled` instead of reaching the customer.
        if attempts > row.attempts:
            called_back = _called_back(engine, touchpoint_id)
        if called_back is not None:
            return record(OutboxStatus.CANCELLED, error=f"not sent: {called_back}")
        attempts += 1
        try:
            provider_id = backend.send(email)
        except TransientSendError as err:
            wait = _backoff(settings, attempts, err.retry_after)
            if attempts >= settings.send_max_attempts:
                return record(OutboxStatus.FAILED, error=f"gave up: {err.reason}")
            if wait > inline_wait_cap_s:
                return record(
                    OutboxStatus.PENDING, error=err.reason, next_attempt_at=utcnow() + timedelta(seconds=wait)
                )
            log.warning("outbox %s: %s; retrying in %.1fs", outbox_id, err.reason, wait)
            _note_attempt(engine, outbox_id, attempts, err.reason)
            sleep(wait)
            continue
        except PermanentSendError as err:
            return record(OutboxStatus.FAILED, error=err.reason)
        except AmbiguousSendError as err:
            return record(
                OutboxStatus.UNCERTAIN,
                error=f"{err.reason}. Not resent automatically: check the provider for custom_args "
                f"outbox_id={outbox_id}, then `aftercare outbox resend {outbox_id}` if it is not there",
            )
        except Exception as err:
            # A message that cannot be built or sent (an address the email library refuses, a bug):
            # sending it again would fail the same way. Left `sending`, recovery would requeue it for
            # ever with no attempt counted; it fails now with its reason instead.
            return record(OutboxStatus.FAILED, error=f"not sendable: {type(err).__name__}: {err}"[:2000])
        return record(OutboxStatus.SENT, provider_id=provider_id, backend=backend)


def send_now(
    engine: Engine, ids: list[int], backend: EmailBackend, settings: Settings, worker: str
) -> list[DeliveryResult]:
    """Claim exactly these rows and deliver them now, for mail a person is waiting on (an approver):
    it need not wait for the next sweep. Delivery is the outbox's own (its retries, its record);
    whatever is not sent here (claimed elsewhere, rescheduled, failed) stays with the outbox."""
    if not ids:
        return []
    claimed = claim_due(engine, len(ids), worker, ids=ids)
    return [deliver(engine, c.outbox_id, backend, settings) for c in claimed]


def get(engine: Engine, outbox_id: int) -> OutboxMessage | None:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(OutboxMessage, outbox_id)


def _note_attempt(engine: Engine, outbox_id: int, attempts: int, error: str) -> None:
    with autocommit(engine) as conn, conn.begin():
        conn.execute(
            _OUTBOX.update().where(_OUTBOX.c.id == outbox_id).values(attempts=attempts, last_error=error)
        )


def _record(
    engine: Engine,
    outbox_id: int,
    touchpoint_id: int | None,
    status: OutboxStatus,
    attempts: int,
    *,
    provider_id: str | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
    backend: EmailBackend | None = None,
) -> DeliveryResult:
    values: dict[str, object] = {"status": status, "attempts": attempts, "last_error": error}
    if status == OutboxStatus.SENT:
        values.update(
            provider_message_id=provider_id, sent_at=utcnow(), provider=backend.name if backend else None
        )
    if next_attempt_at is not None:
        values.update(next_attempt_at=next_attempt_at, claimed_by=None, claimed_at=None)
    settle: Any = _OUTBOX.update().where(_OUTBOX.c.id == outbox_id).values(**values)
    if touchpoint_id is not None and status in (OutboxStatus.SENT, OutboxStatus.FAILED):
        done = TouchpointStatus.DONE if status == OutboxStatus.SENT else TouchpointStatus.FAILED
        settle_touchpoint = (
            _TOUCHPOINTS.update().where(_TOUCHPOINTS.c.id == touchpoint_id).values(status=done, reason=error)
        )
        if engine.dialect.name == "postgresql":
            # Both rows in one statement (the outbox row's UPDATE in a WITH): atomic on its own, one
            # round trip instead of four (BEGIN, two UPDATEs, COMMIT), the window between "provider
            # accepted" and "row marked sent" as short as it gets.
            settle = settle_touchpoint.add_cte(settle.cte("settled"))
        else:
            with engine.begin() as conn:
                conn.execute(settle)
                conn.execute(settle_touchpoint)
            return DeliveryResult(outbox_id, status, provider_id, error, attempts)
    with autocommit(engine) as conn, conn.begin():
        conn.execute(settle)
    return DeliveryResult(outbox_id, status, provider_id, error, attempts)


def recover_stale(
    engine: Engine,
    backend: EmailBackend,
    lease: timedelta,
    *,
    max_attempts: int = 5,
    now: datetime | None = None,
) -> dict[int, str]:
    """Settle rows left in `sending` longer than the lease by a worker that died: sent if the
    backend has the message, pending if it certainly does not, uncertain when it cannot tell.
    The death is an attempt: a message whose sending kills its worker every time is failed after
    `max_attempts` (with the touchpoint), not requeued forever."""
    outcome: dict[int, str] = {}
    now = now or utcnow()
    with Session(engine) as session:
        stale = session.exec(select(OutboxMessage).where(stale_condition(now, lease))).all()
        for row in stale:
            assert row.id is not None
            known = backend.was_delivered(row.id)
            if known is True:
                row.status, row.sent_at, row.provider = OutboxStatus.SENT, now, backend.name
                row.last_error = "recovered after a worker stopped mid-send: the provider has it"
            elif known is False:
                row.attempts += 1
                row.claimed_by, row.claimed_at = None, None
                if row.attempts >= max_attempts:
                    row.status = OutboxStatus.FAILED
                    row.last_error = (
                        f"gave up after {row.attempts} attempts: the worker stopped mid-send "
                        "before the provider had it"
                    )
                    if row.touchpoint_id is not None:
                        session.execute(
                            _TOUCHPOINTS.update()
                            .where(_TOUCHPOINTS.c.id == row.touchpoint_id)
                            .values(status=TouchpointStatus.FAILED, reason=row.last_error)
                        )
                else:
                    row.status = OutboxStatus.PENDING
                    row.last_error = "worker stopped before the provider had it; requeued"
            else:
                row.status = OutboxStatus.UNCERTAIN
                row.last_error = (
                    f"worker stopped mid-send; {backend.name} may or may not have it. Check the provider "
                    f"for custom_args outbox_id={row.id}, then `aftercare outbox resend {row.id}` if needed"
                )
            outcome[row.id] = row.status
            session.add(row)
        session.commit()
    return outcome
