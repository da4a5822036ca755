"""One inbox row in, domain state and owed messages out: the unit of work the flows orchestrate.
Orders (create, paid, updated, cancelled), fulfillments, carrier events, refunds and reviews are
dispatched from `process_row`. A review is stored and triaged here; its approval flow is started
from the Prefect side with `Outcome.review_id`, never from here.
Everything here is idempotent, so a retried or re-run row changes nothing the second time."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.attributes import flag_modified, set_committed_value
from sqlmodel import Session, select

from aftercare.contact import consent as contact_consent
from aftercare.contact import privacy
from aftercare.contact import store as contact_store
from aftercare.contact.policy import contact_policy
from aftercare.errors import InvalidPayload
from aftercare.models import (
    Customer,
    InboxEvent,
    InboxStatus,
    Order,
    Shipment,
    Touchpoint,
    TouchpointStatus,
    utcnow,
)
from aftercare.orders import receipt, shipping, warehouse
from aftercare.orders.shopify import (
    FULFILLMENT_EVENT_TOPICS,
    FULFILLMENT_TOPICS,
    ORDER_TOPICS,
    REFUND_TOPICS,
    order_object,
    parse_fulfillment,
    parse_fulfillment_event,
    parse_order_object,
    parse_refund,
)
from aftercare.reviews import intake as review_intake
from aftercare.runtime import Runtime
from aftercare.spine import inbox
from aftercare.spine.outbox import Enqueued, enqueue
from aftercare.spine.outbox import find as find_message


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
    released: list[int] = field(default_factory=list)  # inbox rows that were waiting for this order
    cancelled: list[int] = field(default_factory=list)  # touchpoints this delivery cancelled
    shipment_id: int | None = None
    handoff_id: int | None = None  # the warehouse hand-off version this order state calls for
    review_id: int | None = None  # the review a reviews/create row created or refreshed
    review_negative: bool | None = None  # its triage verdict


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
        if row.topic in ORDER_TOPICS:
            handler = _process_order
        elif row.topic in FULFILLMENT_TOPICS:
            handler = _process_fulfillment
        elif row.topic in FULFILLMENT_EVENT_TOPICS:
            handler = _process_fulfillment_event
        elif row.topic in REFUND_TOPICS:
            handler = _process_refund
        elif row.topic in review_intake.TOPICS:
            handler = _process_review
        elif row.topic in contact_consent.TOPICS:
            handler = _process_consent
        elif row.topic in privacy.TOPICS:
            handler = _process_privacy
        else:
            inbox.finish(session, row, InboxStatus.IGNORED, f"topic {row.topic!r} is not handled")
            session.commit()
            return Outcome(inbox_id, row.topic, InboxStatus.IGNORED, row.reason)
        # A delivery for an order, customer or shop a redaction erased is carried out without its
        # personal parts, then erased again (aftercare.contact.privacy, "what was erased stays erased").
        names = privacy.subject_kind(row.topic)
        subjects = privacy.subjects_of(names, row.body) if names else privacy.Subjects()
        refill = privacy.erased_subject(session, row.shop_domain, subjects) if names else None
        if refill is not None:
            # Not written yet (the row's lock comes after the order's, as in a redaction); the handler
            # reads it, and `_erase_again` stores it or the stub.
            set_committed_value(row, "body", privacy.without_personal_parts(row.body))
        try:
            out = handler(rt, session, row)
        except InvalidPayload as exc:
            session.rollback()
            row = session.get(InboxEvent, inbox_id)
            assert row is not None
            reason = str(exc)
            if refill is not None:
                row.body = privacy.without_personal_parts(row.body)
                reason += f"; personal parts removed: {refill.line()}"
            inbox.finish(session, row, InboxStatus.INVALID, reason)
            session.commit()
            return Outcome(inbox_id, row.topic, InboxStatus.INVALID, reason)
        if handler is not _process_privacy:
            _erase_again(rt, session, row, out, subjects, refill)
        session.commit()
        return out


def _erase_again(
    rt: Runtime,
    session: Session,
    row: InboxEvent,
    out: Outcome,
    subjects: privacy.Subjects,
    refill: privacy.Refill | None,
) -> None:
    """The last step of a delivery's transaction: when it was for something a redaction erased, what
    it wrote is erased again. Checked once more here, after the handler took its locks: a redaction
    that committed while this delivery was being carried out is seen now (the order's lock, and
    SQLite's write lock, were taken after the first look). A delivery that waits for its order keeps
    its ids (it is erased again when it is carried out), not its personal parts."""
    stripped = refill is not None
    if out.order_id is not None and not subjects.order_ids:  # a review matched to an order
        order = session.get(Order, out.order_id)
        if order is not None:
            subjects = replace(subjects, order_ids=frozenset({order.shopify_id}))
    if refill is None:
        if not (subjects.order_ids or subjects.customer_ids or privacy.subject_kind(row.topic)):
            return
        refill = privacy.erased_subject(session, row.shop_domain, subjects)
        if refill is None:
            return
    if out.status == InboxStatus.WAITING:
        row.body = privacy.without_personal_parts(row.body)
        flag_modified(row, "body")
        words = f"personal parts removed: {refill.line()}"
    else:
        words = privacy.erase_again(
            session,
            row,
            refill,
            subjects,
            stripped=stripped,
            settings=rt.settings,
            policy=contact_policy(rt.settings.policies_dir),
            now=utcnow(),
        )
    out.reason = "; ".join(filter(None, [out.reason, words]))
    out.subject = out.text_preview = None  # a mail's text names the customer
    inbox.finish(session, row, out.status, out.reason)


def _process_order(rt: Runtime, session: Session, row: InboxEvent) -> Outcome:
    data = order_object(row.body)
    parsed = parse_order_object(data)
    assert row.id is not None
    result = receipt.upsert_order(session, shop_domain=row.shop_domain, parsed=parsed, policies=rt.policies)
    order = result.order
    buyer = parsed.customer.id if parsed.customer else None
    consent = _record_consent(rt, session, row, data, email=parsed.customer_email, customer_id=buyer)
    # Only a consent the delivery could not use is worth a word on the order's row.
    consent_note = consent.reason if consent.reason and "consent ignored" in consent.reason else None
    reason = "; ".join(filter(None, [result.reason, consent_note])) or None
    out = Outcome(row.id, row.topic, InboxStatus.DONE, reason, order.id, order.name)
    # Fulfillments and refunds that came first are queued again now that their order exists.
    out.released = shipping.release_waiting(session, parsed.id)
    lines = receipt.lines_of(session, order)
    _apply_waiting_refunds(session, order, lines, out.released)
    flags = receipt.check_order(order, lines, rt.inventory)
    if result.applied:
        order.flags = flags
        session.add(order)
    out.flags = flags

    refunded_in_full = shipping.is_fully_refunded(session, order, lines)
    if order.cancelled_at is None and lines and not refunded_in_full:
        touchpoint = receipt.plan_confirmation(session, order, rt.policies)
        message = _write_confirmation(rt, session, order, lines, touchpoint, flags, out)
        if message is not None:
            out.outbox_id, out.outbox_status = message.id, message.status
    if order.cancelled_at is not None:
        out.cancelled = [t.id for t in shipping.cancel_order(session, order) if t.id is not None]
    elif result.applied and order.financial_status in shipping.NOTHING_PAID:
        # Refunded or voided in Shopify, maybe with no refund delivery naming the lines.
        why = f"financial status {order.financial_status}"
        out.cancelled = [t.id for t in shipping.take_back(session, order, lines, why) if t.id is not None]
    handoff = warehouse.plan_handoff(session, order, lines, rt.policies)
    out.handoff_id = handoff.id if handoff else None
    inbox.finish(session, row, InboxStatus.DONE, reason)
    return out


def _sent_at(row: InboxEvent) -> datetime:
    return row.triggered_at or row.received_at or utcnow()


def _record_consent(
    rt: Runtime,
    session: Session,
    row: InboxEvent,
    payload: Any = None,
    *,
    email: str | None = None,
    customer_id: int | None = None,
) -> contact_store.ConsentFromDelivery:
    """The consent a delivery carries, kept (aftercare.contact.store.record_delivery_consent).
    `payload`: the body already decoded (an order's object, as the order was read from it); else
    the body is decoded here."""
    if payload is None:
        try:
            payload = json.loads(row.body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return contact_store.ConsentFromDelivery([], "body is not JSON: no consent read")
    return contact_store.record_delivery_consent(
        session,
        shop_domain=row.shop_domain,
        topic=row.topic,
        payload=payload,
        sent_at=_sent_at(row),
        policy=contact_policy(rt.settings.policies_dir),
        inbox_id=row.id,
        email=email,
        customer_id=customer_id,
    )


def _process_consent(rt: Runtime, session: Session, row: InboxEvent) -> Outcome:
    """customers/create, customers/update, customers_email_marketing_consent/update: consent kept."""
    assert row.id is not None
    result = _record_consent(rt, session, row)
    inbox.finish(session, row, InboxStatus.DONE, result.reason)
    return Outcome(row.id, row.topic, InboxStatus.DONE, result.reason)


def _process_privacy(rt: Runtime, session: Session, row: InboxEvent) -> Outcome:
    """customers/redact, shop/redact, customers/data_request (aftercare.contact.privacy)."""
    assert row.id is not None
    done = privacy.carry_out(
        session,
        row,
        settings=rt.settings,
        policy=contact_policy(rt.settings.policies_dir),
        renderer=rt.renderer,
        ops_emails=rt.policies.requests.ops_alert_emails,
        staff_locale=rt.policies.requests.warehouse_locale,
        now=utcnow(),
    )
    inbox.finish(session, row, InboxStatus.DONE, done.reason)
    return Outcome(row.id, row.topic, InboxStatus.DONE, done.reason)


def _apply_waiting_refunds(
    session: Session, order: Order, lines: list[receipt.OrderLine], released: list[int]
) -> None:
    """Refunds that came before their order are recorded in the order's own transaction, before its
    hand-off is planned: the warehouse never sees a version with units refunded already (the released
    rows find them recorded). One that cannot be parsed is left for its own row to mark invalid."""
    if not released:
        return
    waiting = session.exec(
        select(InboxEvent).where(
            InboxEvent.id.in_(released),  # type: ignore[union-attr]
            InboxEvent.topic.in_(REFUND_TOPICS),  # type: ignore[union-attr]
        )
    )
    for row in waiting:
        try:
            parsed = parse_refund(row.body)
        except InvalidPayload:
            continue
        if parsed.order_id == order.shopify_id:
            shipping.apply_refund(session, order=order, parsed=parsed, lines=lines)


def _order_for(session: Session, row: InboxEvent, order_shopify_id: int, out: Outcome) -> Order | None:
    """The order a fulfillment or refund belongs to, locked for this transaction (whatever configured
    shop's header the row came with: ids are global); when it has not arrived, the row waits for it."""
    order = receipt.lock_order(session, order_shopify_id)
    if order is None:
        shipping.park(session, row, order_shopify_id)
        out.status, out.reason = InboxStatus.WAITING, row.reason
        return None
    out.order_id, out.order_name = order.id, order.name
    row.subject_ref = order.name  # ops find every delivery of an order by its name
    return order


def _process_fulfillment(rt: Runtime, session: Session, row: InboxEvent) -> Outcome:
    parsed = parse_fulfillment(row.body)
    assert row.id is not None
    out = Outcome(row.id, row.topic, InboxStatus.DONE)
    order = _order_for(session, row, parsed.order_id, out)
    if order is None:
        return out
    result = shipping.upsert_shipment(session, order=order, parsed=parsed, policy=rt.policies.delivery)
    shipment = result.shipment
    out.reason, out.shipment_id = result.reason, shipment.id
    lines = receipt.lines_of(session, order)
    if result.applied:
        notices = [
            t
            for t in shipping.touchpoints_of(session, order, (shipping.SHIPMENT_NOTICE,))
            if t.seq == shipment.id
        ]
        if shipment.status in shipping.VOID_STATUSES:
            reason = f"fulfillment {parsed.id} is {shipment.status}"
            out.cancelled = [t.id for t in shipping.cancel_touchpoints(session, notices, reason) if t.id]
        elif order.cancelled_at is None and shipping.has_left(shipment, rt.policies.delivery):
            message = _write_notice(rt, session, order, lines, shipment, out)
            if message is not None:
                out.outbox_id, out.outbox_status = message.id, message.status
        shipping.plan_after_delivery(session, order, rt.policies, lines)
    # Carrier events that came before their fulfillment are queued again now that it is recorded.
    out.released = shipping.release_fulfillment_waiting(session, parsed.id)
    inbox.finish(session, row, InboxStatus.DONE, result.reason)
    return out


def _process_fulfillment_event(rt: Runtime, session: Session, row: InboxEvent) -> Outcome:
    """A carrier event: kept for the timeline; `delivered` re-keys the survey and review request on
    the real delivery time. It sends nothing. Before its fulfillment it waits, like a fulfillment
    waits for its order."""
    parsed = parse_fulfillment_event(row.body)
    assert row.id is not None
    out = Outcome(row.id, row.topic, InboxStatus.DONE)
    order = receipt.lock_order(session, parsed.order_id)
    shipment = shipping.find_shipment(session, parsed.fulfillment_id)
    if shipment is None:
        shipping.park(session, row, parsed.order_id, fulfillment_shopify_id=parsed.fulfillment_id)
        out.status, out.reason = InboxStatus.WAITING, row.reason
        return out
    if order is None or order.id != shipment.order_id:
        owner = session.get(Order, shipment.order_id)
        assert owner is not None
        raise InvalidPayload(
            f"fulfillment {parsed.fulfillment_id} belongs to order {owner.shopify_id}, "
            f"not to order {parsed.order_id} as the event says"
        )
    out.order_id, out.order_name, out.shipment_id = order.id, order.name, shipment.id
    row.subject_ref = order.name  # ops find every delivery of an order by its name
    result = shipping.record_event(session, shipment=shipment, parsed=parsed)
    out.reason = result.reason
    if result.delivery_changed:
        shipping.plan_after_delivery(session, order, rt.policies, receipt.lines_of(session, order))
    inbox.finish(session, row, InboxStatus.DONE, out.reason)
    return out


def _process_refund(rt: Runtime, session: Session, row: InboxEvent) -> Outcome:
    parsed = parse_refund(row.body)
    assert row.id is not None
    out = Outcome(row.id, row.topic, InboxStatus.DONE)
    order = _order_for(session, row, parsed.order_id, out)
    if order is None:
        return out
    lines = receipt.lines_of(session, order)
    result = shipping.apply_refund(session, order=order, parsed=parsed, lines=lines)
    out.cancelled = [t.id for t in result.cancelled if t.id is not None]
    if not result.created:
        out.reason = f"refund {parsed.id} was already recorded"
    # Fewer units to ship: a new version of the instruction, or the order called back from the warehouse.
    handoff = warehouse.plan_handoff(session, order, lines, rt.policies)
    out.handoff_id = handoff.id if handoff else None
    inbox.finish(session, row, InboxStatus.DONE, out.reason)
    return out


def _process_review(rt: Runtime, session: Session, row: InboxEvent) -> Outcome:
    assert row.id is not None
    policy = review_intake.reviews_policy(rt.settings.policies_dir)
    result = review_intake.process_review_row(session, row, policy)
    review = result.review
    ref = f"{review.platform}:{review.platform_review_id}"
    again = None if result.created else f"review {ref} was already stored"
    reason = "; ".join(filter(None, [again, result.note]))
    out = Outcome(
        row.id,
        row.topic,
        InboxStatus.DONE,
        reason or None,
        review_id=review.id,
        review_negative=review.triage_negative,
    )
    if result.order is not None:
        out.order_id, out.order_name = result.order.id, result.order.name
    inbox.finish(session, row, InboxStatus.DONE, out.reason)
    return out


def _write_notice(
    rt: Runtime,
    session: Session,
    order: Order,
    lines: list[receipt.OrderLine],
    shipment: Shipment,
    out: Outcome,
) -> Enqueued | None:
    """The one shipment notice for this fulfillment: its touchpoint's seq is the shipment's own id,
    so a re-delivered or updated fulfillment finds the same touchpoint and outbox row. Whether it is
    owed is decided here, before it is written: not when none of the units it carries is still the
    customer's (refunded, or the whole order refunded or voided). One written already is left alone."""
    assert shipment.id is not None
    touchpoint = shipping.ensure_touchpoint(
        session,
        order=order,
        kind=shipping.SHIPMENT_NOTICE,
        seq=shipment.id,
        due_at=shipment.shipped_at,
        policy_version=rt.policies.delivery.version,
    )
    if touchpoint.status not in (TouchpointStatus.PLANNED, TouchpointStatus.SKIPPED):
        assert touchpoint.id is not None
        return find_message(session, touchpoint.id)
    shippable = shipping.shippable_quantities(session, order, lines)
    if shipping.nothing_left_in(shipment, shippable):
        whole = shipping.nothing_left(lines, shippable)
        touchpoint.status = TouchpointStatus.PLANNED  # so that its unclaimed message goes too
        reason = "order fully refunded" if whole else "every line of this shipment was refunded"
        shipping.cancel_touchpoints(session, [touchpoint], f"{reason} before the notice was written")
        return None
    skip = receipt.why_not_mailed(order)
    if skip is not None:
        touchpoint.status, touchpoint.reason = TouchpointStatus.SKIPPED, skip
        session.add(touchpoint)
        return None
    assert order.email is not None
    name = receipt.customer_display_name(shipping.customer_of(session, order), order)
    context = shipping.notice_vars(session, order, shipment, rt.policies, rt.settings.shop_name, name)
    rendered = shipping.render_notice(rt.renderer, order.locale, context)
    touchpoint.status, touchpoint.reason = TouchpointStatus.PLANNED, None
    session.add(touchpoint)
    message = enqueue(
        session,
        touchpoint=touchpoint,
        to_email=order.email,
        to_name=name,
        rendered=rendered,
        locale=order.locale,
        order_name=order.name,
        is_test=order.is_test,
    )
    out.subject, out.text_preview = message.subject, message.text_body
    return message


def _write_confirmation(
    rt: Runtime,
    session: Session,
    order: receipt.Order,
    lines: list[receipt.OrderLine],
    touchpoint: Touchpoint,
    flags: list[str],
    out: Outcome,
) -> Enqueued | None:
    if touchpoint.status not in (TouchpointStatus.PLANNED, TouchpointStatus.SKIPPED):
        assert touchpoint.id is not None
        return find_message(session, touchpoint.id)
    skip = receipt.why_not_mailed(order)
    if skip is not None:
        touchpoint.status, touchpoint.reason = TouchpointStatus.SKIPPED, skip
        session.add(touchpoint)
        return None
    assert order.email is not None
    customer = session.get(Customer, order.customer_id) if order.customer_id else None
    seasonal = contact_store.seasonal_line_for(
        session, order=order, policy=contact_policy(rt.settings.policies_dir)
    )
    ctx = receipt.ConfirmationContext(
        order=order,
        lines=lines,
        customer=customer,
        expected_ship_date=rt.policies.shipping.expected_ship_date(order.placed_at),
        flags=flags,
        seasonal_line=seasonal.line,
    )
    rendered = receipt.render_confirmation(ctx, rt.renderer, rt.settings.shop_name)
    touchpoint.status, touchpoint.reason = TouchpointStatus.PLANNED, None
    session.add(touchpoint)
    message = enqueue(
        session,
        touchpoint=touchpoint,
        to_email=order.email,
        to_name=ctx.as_template_vars("")["customer_name"],
        rendered=rendered,
        locale=order.locale,
        order_name=order.name,
        is_test=order.is_test,
    )
    out.subject, out.text_preview = message.subject, message.text_body
    return message
