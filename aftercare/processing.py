"""One inbox row in, domain state and owed messages out: the unit of work the flows orchestrate.
Everything here is idempotent, so a retried or re-run row changes nothing the second time."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from aftercare import inbox, receipt
from aftercare.errors import InvalidPayload
from aftercare.models import Customer, InboxEvent, InboxStatus, OutboxMessage, Touchpoint, TouchpointStatus
from aftercare.outbox import enqueue
from aftercare.runtime import Runtime
from aftercare.shopify import ORDER_TOPICS, parse_order


@dataclass
class Outcome:
    inbox_id: int
    topic: str
    status: str
    reason: str | None = None
    order_id: int | None = None
    order_name: str | None = None
    outbox_id: int | None = None
    outbox_status: str | None = None
    flags: list[str] = field(default_factory=list)
    subject: str | None = None
    text_preview: str | None = None


def process_row(rt: Runtime, inbox_id: int) -> Outcome:
    """Process a claimed inbox row; a race with another worker on the same order is retried once."""
    for attempt in (1, 2):
        try:
            return _process(rt, inbox_id)
        except (IntegrityError, OperationalError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _process(rt: Runtime, inbox_id: int) -> Outcome:
    with Session(rt.engine, expire_on_commit=False) as session:
        row = session.get(InboxEvent, inbox_id)
        if row is None:
            return Outcome(inbox_id, "?", "missing", "inbox row does not exist")
        if row.topic not in ORDER_TOPICS:
            inbox.finish(session, row, InboxStatus.IGNORED, f"topic {row.topic!r} is not handled")
            session.commit()
            return Outcome(inbox_id, row.topic, InboxStatus.IGNORED, row.reason)
        try:
            parsed = parse_order(row.body)
        except InvalidPayload as exc:
            inbox.finish(session, row, InboxStatus.INVALID, str(exc))
            session.commit()
            return Outcome(inbox_id, row.topic, InboxStatus.INVALID, str(exc))

        result = receipt.upsert_order(session, shop_domain=row.shop_domain, parsed=parsed, policies=rt.policies)
        order = result.order
        out = Outcome(inbox_id, row.topic, InboxStatus.DONE, result.reason, order.id, order.name)
        lines = receipt.lines_of(session, order)
        flags = receipt.check_order(order, lines, rt.inventory)
        if result.applied:
            order.flags = flags
            session.add(order)
        out.flags = flags

        if order.cancelled_at is None and lines:
            touchpoint = receipt.plan_confirmation(session, order, rt.policies)
            message = _write_confirmation(rt, session, order, lines, touchpoint, flags, out)
            if message is not None:
                out.outbox_id, out.outbox_status = message.id, message.status
        inbox.finish(session, row, InboxStatus.DONE, result.reason)
        session.commit()
        return out


def _write_confirmation(
    rt: Runtime,
    session: Session,
    order: receipt.Order,
    lines: list[receipt.OrderLine],
    touchpoint: Touchpoint,
    flags: list[str],
    out: Outcome,
) -> OutboxMessage | None:
    if touchpoint.status not in (TouchpointStatus.PLANNED, TouchpointStatus.SKIPPED):
        return session.exec(select(OutboxMessage).where(OutboxMessage.touchpoint_id == touchpoint.id)).first()
    if not order.email:
        touchpoint.status, touchpoint.reason = TouchpointStatus.SKIPPED, "no customer email on the order"
        session.add(touchpoint)
        return None
    customer = session.get(Customer, order.customer_id) if order.customer_id else None
    ctx = receipt.ConfirmationContext(
        order=order, lines=lines, customer=customer,
        expected_ship_date=rt.policies.shipping.expected_ship_date(order.placed_at), flags=flags,
    )
    rendered = receipt.render_confirmation(ctx, rt.renderer, rt.settings.shop_name)
    touchpoint.status, touchpoint.reason = TouchpointStatus.PLANNED, None
    session.add(touchpoint)
    message = enqueue(
        session, touchpoint=touchpoint, to_email=order.email, to_name=ctx.as_template_vars("")["customer_name"],
        rendered=rendered, locale=order.locale, order_name=order.name, is_test=order.is_test,
    )
    out.subject, out.text_preview = message.subject, message.text_body
    return message
