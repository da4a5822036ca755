"""Shipping: fulfillments become shipments (one notice each), carrier events are kept beside them,
delivery is recorded (a delivered fulfillment or carrier event) or estimated, and what is planned after
it (survey, review request) follows; cancellations and refunds take back what was planned and not yet
sent. Everything here runs inside the caller's transaction and is idempotent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import InvalidPayload
from aftercare.models import (
    ORDER_ENDING_SPARES,
    Customer,
    InboxEvent,
    InboxStatus,
    InboxWait,
    Order,
    OrderLine,
    OutboxMessage,
    OutboxStatus,
    Refund,
    Shipment,
    ShipmentEvent,
    Touchpoint,
    TouchpointStatus,
    UTCDateTime,
    utcnow,
)
from aftercare.orders.shopify import ShopifyFulfillment, ShopifyFulfillmentEvent, ShopifyRefund
from aftercare.policies import DeliveryPolicy, Policies
from aftercare.rendering import RenderedEmail, Renderer
from aftercare.spine import addresses

SHIPMENT_NOTICE = "shipment_notice"
DELIVERY_SURVEY = "delivery_survey"
REVIEW_REQUEST = "review_request"
AFTER_DELIVERY = (DELIVERY_SURVEY, REVIEW_REQUEST)

DELIVERED = "delivered"
# Why the survey and review request are cancelled when every shipment that had left is called back;
# a later shipment plans them again (no other cancellation is ever undone).
NOTHING_ON_ITS_WAY = "no shipment of the order is on its way any more"
# Fulfillment statuses after which nothing left the warehouse (or it was called back).
VOID_STATUSES = frozenset({"cancelled", "error", "failure"})


# --- Orders, by their Shopify id --------------------------------------------------------------------


def find_order(session: Session, order_shopify_id: int) -> Order | None:
    """The order with this Shopify id. Ids are global: one order, whatever shop header a delivery
    names (a read only; a handler that acts on the order takes `receipt.lock_order`)."""
    return session.exec(select(Order).where(Order.shopify_id == order_shopify_id)).first()


# --- Waiting inbox rows: a fulfillment or refund before its order, a carrier event before its fulfillment


def park(
    session: Session, row: InboxEvent, order_shopify_id: int, *, fulfillment_shopify_id: int | None = None
) -> None:
    """Keep a row whose order (or, for a carrier event, whose fulfillment) we have not seen: it waits
    (not retried, not dropped) until that arrives and `release_waiting` / `release_fulfillment_waiting`
    puts it back in the queue."""
    assert row.id is not None
    row.status = InboxStatus.WAITING
    row.reason = (
        f"waiting for order {order_shopify_id}: it has not arrived yet"
        if fulfillment_shopify_id is None
        else f"waiting for fulfillment {fulfillment_shopify_id} of order {order_shopify_id}: "
        "it has not arrived yet"
    )
    row.processed_at = utcnow()
    session.add(row)
    wait = session.exec(select(InboxWait).where(InboxWait.inbox_id == row.id)).first()
    if wait is None:
        wait = InboxWait(inbox_id=row.id, shop_domain=row.shop_domain, order_shopify_id=order_shopify_id)
    wait.order_shopify_id, wait.fulfillment_shopify_id = order_shopify_id, fulfillment_shopify_id
    session.add(wait)


def release_waiting(session: Session, order_shopify_id: int) -> list[int]:
    """Put the rows waiting for this order back in the queue (inside the order's own transaction),
    whichever configured shop's header they came with. Carrier events waiting for a fulfillment stay:
    the order alone does not let them apply."""
    return _release(
        session,
        select(InboxWait).where(
            InboxWait.order_shopify_id == order_shopify_id,
            InboxWait.fulfillment_shopify_id.is_(None),  # type: ignore[union-attr]
        ),
    )


def release_fulfillment_waiting(session: Session, fulfillment_shopify_id: int) -> list[int]:
    """Put the carrier events waiting for this fulfillment back in the queue (inside the transaction
    that recorded its shipment)."""
    return _release(
        session, select(InboxWait).where(InboxWait.fulfillment_shopify_id == fulfillment_shopify_id)
    )


def _release(session: Session, waiting: Any) -> list[int]:
    waits = list(session.exec(waiting))
    ids = [w.inbox_id for w in waits]
    if ids:
        session.execute(
            sa.update(InboxEvent)
            .where(InboxEvent.id.in_(ids), InboxEvent.status == InboxStatus.WAITING)  # type: ignore[union-attr]
            .values(status=InboxStatus.PENDING, reason=None, claimed_at=None)
        )
        for wait in waits:
            session.delete(wait)
    return ids


def ready_condition() -> sa.ColumnElement[bool]:
    """Waiting rows whose order (or, for a carrier event, whose fulfillment) exists by now."""
    order_arrived = sa.exists().where(Order.shopify_id == InboxWait.order_shopify_id)
    fulfillment_arrived = sa.exists().where(Shipment.shopify_id == InboxWait.fulfillment_shopify_id)
    return sa.or_(
        sa.and_(InboxWait.fulfillment_shopify_id.is_(None), order_arrived),  # type: ignore[union-attr]
        sa.and_(InboxWait.fulfillment_shopify_id.is_not(None), fulfillment_arrived),  # type: ignore[union-attr]
    )


def release_ready(engine: Engine) -> list[int]:
    """Release waiting rows whose order (or, for a carrier event, whose fulfillment) exists by now: the
    sweep's guard against the race where it committed between a row's lookup and its parking. One
    query when nothing is ready: this runs on every claim of the inbox."""
    with Session(engine) as session:
        released = _release(session, select(InboxWait).where(ready_condition()))
        session.commit()
    return released


# --- Touchpoints -----------------------------------------------------------------------------------


def ensure_touchpoint(
    session: Session,
    *,
    order: Order,
    kind: str,
    seq: int,
    due_at: datetime,
    policy_version: str,
    revive_reason: str | None = None,
) -> Touchpoint:
    """The touchpoint (order, kind, seq), created once; a planned one follows the newest due time. One
    cancelled for exactly `revive_reason` is planned again."""
    assert order.id is not None
    values = {
        "order_id": order.id,
        "kind": kind,
        "seq": seq,
        "due_at": due_at,
        "status": TouchpointStatus.PLANNED,
        "policy_version": policy_version,
        "created_at": utcnow(),
    }
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(Touchpoint).values(**values).on_conflict_do_nothing(index_elements=["order_id", "kind", "seq"])
    )
    touchpoint = session.exec(
        select(Touchpoint).where(
            Touchpoint.order_id == order.id, Touchpoint.kind == kind, Touchpoint.seq == seq
        )
    ).one()
    if (
        revive_reason
        and touchpoint.status == TouchpointStatus.CANCELLED
        and touchpoint.reason == revive_reason
    ):
        touchpoint.status, touchpoint.reason = TouchpointStatus.PLANNED, None
        session.add(touchpoint)
    if touchpoint.status == TouchpointStatus.PLANNED and (
        touchpoint.due_at != due_at or touchpoint.policy_version != policy_version
    ):
        touchpoint.due_at, touchpoint.policy_version = due_at, policy_version
        session.add(touchpoint)
    return touchpoint


# `ensure_touchpoint` (without the revival) as one cacheable statement, for many touchpoints in one
# executemany: created once; a planned one follows the newest due time and policy version.
# Parameters: `planned_row`.
ENSURE_PLANNED = sa.text(
    "INSERT INTO touchpoints (order_id, kind, seq, due_at, status, policy_version, created_at) "
    "VALUES (:order_id, :kind, :seq, :due_at, :status, :policy_version, :created_at) "
    "ON CONFLICT (order_id, kind, seq) DO UPDATE SET due_at = excluded.due_at, "
    f"policy_version = excluded.policy_version WHERE touchpoints.status = '{TouchpointStatus.PLANNED.value}'"
).bindparams(sa.bindparam("due_at", type_=UTCDateTime()), sa.bindparam("created_at", type_=UTCDateTime()))


def planned_row(
    *, order_id: int, kind: str, seq: int, due_at: datetime, policy_version: str
) -> dict[str, Any]:
    """The parameters of `ENSURE_PLANNED` for the touchpoint (order, kind, seq)."""
    return {
        "order_id": order_id,
        "kind": kind,
        "seq": seq,
        "due_at": due_at,
        "status": TouchpointStatus.PLANNED.value,
        "policy_version": policy_version,
        "created_at": utcnow(),
    }


def cancel_touchpoints(session: Session, touchpoints: list[Touchpoint], reason: str) -> list[Touchpoint]:
    """Cancel those still planned, and their outbox messages no worker has claimed yet (a claimed one
    is already with the provider or about to be: it cannot be called back). Returns the cancelled."""
    cancelled = [t for t in touchpoints if t.status == TouchpointStatus.PLANNED]
    for touchpoint in cancelled:
        touchpoint.status, touchpoint.reason = TouchpointStatus.CANCELLED, reason
        session.add(touchpoint)
    ids = [t.id for t in cancelled]
    if ids:
        session.execute(
            sa.update(OutboxMessage)
            .where(OutboxMessage.touchpoint_id.in_(ids), OutboxMessage.status == OutboxStatus.PENDING)  # type: ignore[attr-defined]
            .values(status=OutboxStatus.CANCELLED, last_error=f"not sent: {reason}")
        )
    session.flush()
    return cancelled


def touchpoints_of(session: Session, order: Order, kinds: tuple[str, ...] | None = None) -> list[Touchpoint]:
    query = select(Touchpoint).where(Touchpoint.order_id == order.id)
    if kinds is not None:
        query = query.where(Touchpoint.kind.in_(kinds))  # type: ignore[attr-defined]
    return list(session.exec(query.order_by(Touchpoint.id)))


def order_mails(session: Session, order: Order) -> list[Touchpoint]:
    """The touchpoints the order's own fate decides (all but `ORDER_ENDING_SPARES`: a reply to
    what the customer told us goes out whatever happens to the order)."""
    return [t for t in touchpoints_of(session, order) if t.kind not in ORDER_ENDING_SPARES]


def cancel_order(session: Session, order: Order) -> list[Touchpoint]:
    """A cancelled order: every mail of its own still planned is cancelled (`order_mails`), the
    reason saying when."""
    assert order.cancelled_at is not None
    reason = f"order cancelled at {order.cancelled_at.astimezone(UTC).isoformat()}"
    return cancel_touchpoints(session, order_mails(session, order), reason)


# --- Shipments -------------------------------------------------------------------------------------


@dataclass
class ShipmentResult:
    shipment: Shipment
    created: bool
    applied: bool  # False when the delivery was older than what we hold
    reason: str | None = None


def linkable(url: str | None) -> str | None:
    """The URL when it is safe to put in a link (http or https with a host); otherwise None. Other
    schemes (javascript:, data:, ...) are kept in the database but never linked."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def upsert_shipment(
    session: Session, *, order: Order, parsed: ShopifyFulfillment, policy: DeliveryPolicy
) -> ShipmentResult:
    """Create or update the shipment for a fulfillment. A delivery older (by `updated_at`) than what
    we hold changes nothing. Delivery is estimated from the carrier's transit days until a real
    `delivered` event sets it."""
    assert order.id is not None
    shipment = session.exec(select(Shipment).where(Shipment.shopify_id == parsed.id)).first()
    if shipment is not None and shipment.order_id != order.id:
        raise InvalidPayload(f"fulfillment {parsed.id} belongs to another order than {parsed.order_id}")
    created = shipment is None
    if shipment is not None and parsed.updated_at < shipment.source_updated_at:
        return ShipmentResult(
            shipment,
            created=False,
            applied=False,
            reason=f"stale: updated_at {parsed.updated_at.isoformat()} is older than "
            f"{shipment.source_updated_at.isoformat()}",
        )
    if shipment is None:
        shipment = Shipment(
            order_id=order.id,
            shop_domain=order.shop_domain,
            shopify_id=parsed.id,
            status=parsed.status,
            shipped_at=parsed.created_at,
            source_updated_at=parsed.updated_at,
        )
    carrier = policy.carrier(parsed.tracking_company)
    shipment.name = parsed.name
    shipment.status = parsed.status
    if parsed.shipment_status == DELIVERED or shipment.delivered_at is None:
        shipment.shipment_status = parsed.shipment_status  # a delivered parcel stays delivered
    shipment.carrier = carrier.name if carrier else parsed.tracking_company
    shipment.tracking_numbers = parsed.all_tracking_numbers
    shipment.tracking_urls = parsed.all_tracking_urls
    shipment.lines = [
        {
            "line_id": li.id,
            "sku": li.sku,
            "title": li.title,
            "variant_title": li.variant_title,
            "quantity": li.quantity,
        }
        for li in parsed.line_items
    ]
    shipment.shipped_at = parsed.created_at
    shipment.estimated_delivery_at = parsed.created_at + timedelta(
        days=policy.transit_days(parsed.tracking_company)
    )
    shipment.estimate_policy_version = policy.version
    if parsed.shipment_status == DELIVERED:
        # The event's own time when a carrier gives one; else the update that reported it. A real
        # time we already hold is kept: a later re-delivery of the same news does not move it.
        shipment.delivered_at = parsed.delivered_at or shipment.delivered_at or parsed.updated_at
    shipment.source_updated_at = parsed.updated_at
    shipment.updated_at = utcnow()
    shipment.raw = parsed.model_dump(mode="json")
    session.add(shipment)
    session.flush()
    return ShipmentResult(shipment, created=created, applied=True)


def find_shipment(session: Session, fulfillment_shopify_id: int) -> Shipment | None:
    """The shipment of this fulfillment; Shopify ids are global, like an order's."""
    return session.exec(select(Shipment).where(Shipment.shopify_id == fulfillment_shopify_id)).first()


# --- Carrier events (fulfillment_events/create) -----------------------------------------------------


@dataclass
class EventResult:
    event: ShipmentEvent
    created: bool  # False: this event id was recorded before, nothing changed
    delivery_changed: bool  # the shipment's real delivery time was set or corrected
    reason: str | None = None


def events_of(session: Session, shipment_ids: list[int]) -> list[ShipmentEvent]:
    if not shipment_ids:
        return []
    return list(
        session.exec(
            select(ShipmentEvent)
            .where(ShipmentEvent.shipment_id.in_(shipment_ids))  # type: ignore[attr-defined]
            .order_by(ShipmentEvent.happened_at, ShipmentEvent.id)
        )
    )


def record_event(session: Session, *, shipment: Shipment, parsed: ShopifyFulfillmentEvent) -> EventResult:
    """Record a carrier event once (by its Shopify id). A `delivered` event sets the shipment's real
    delivery time: the earliest delivered event's own time, which replaces an estimate and the time a
    delivered fulfillment update implied. Any other status is kept for the timeline and moves the
    carrier status forward only: nothing regresses a delivered shipment, and an event older than the
    newest we hold leaves the status alone. Nothing here sends anything."""
    assert shipment.id is not None
    seen = session.exec(
        select(ShipmentEvent).where(
            ShipmentEvent.shop_domain == shipment.shop_domain, ShipmentEvent.shopify_id == parsed.id
        )
    ).first()
    if seen is not None:
        return EventResult(
            seen, created=False, delivery_changed=False, reason=f"event {parsed.id} was already recorded"
        )
    earlier = events_of(session, [shipment.id])
    event = ShipmentEvent(
        shipment_id=shipment.id,
        order_id=shipment.order_id,
        shop_domain=shipment.shop_domain,
        shopify_id=parsed.id,
        status=parsed.status,
        message=parsed.message,
        location=parsed.location,
        happened_at=parsed.happened_at,
        estimated_delivery_at=parsed.estimated_delivery_at,
        raw=parsed.model_dump(mode="json"),
    )
    changed = False
    if parsed.status == DELIVERED:
        first = min([e.happened_at for e in earlier if e.status == DELIVERED] + [parsed.happened_at])
        changed = shipment.delivered_at != first
        if first != parsed.happened_at:
            event.note = f"delivered earlier ({first.isoformat()}): that time is kept"
        shipment.delivered_at, shipment.shipment_status = first, DELIVERED
    elif shipment.delivered_at is not None:
        event.note = "the shipment was delivered already: its status is kept"
    elif earlier and parsed.happened_at < earlier[-1].happened_at:
        event.note = f"older than the {earlier[-1].status} event we hold: status kept"
    else:
        shipment.shipment_status = parsed.status
    shipment.updated_at = utcnow()
    session.add_all([shipment, event])
    session.flush()
    return EventResult(event, created=True, delivery_changed=changed, reason=event.note)


def shipments_of(session: Session, order: Order) -> list[Shipment]:
    return list(
        session.exec(
            select(Shipment).where(Shipment.order_id == order.id).order_by(Shipment.shipped_at, Shipment.id)
        )
    )


def has_left(shipment: Shipment, policy: DeliveryPolicy) -> bool:
    """The parcel is with the carrier: a notifiable status (by policy), or delivered already."""
    return shipment.status in policy.notify_statuses or shipment.delivered_at is not None


@dataclass(frozen=True)
class OrderDelivery:
    """When the order (all of its shipments so far) arrived, or is expected to."""

    at: datetime
    estimated: bool
    policy_version: str | None  # the delivery policy that made the estimate; None when all real


def order_delivery(session: Session, order: Order, policy: DeliveryPolicy) -> OrderDelivery | None:
    """The latest arrival among the order's shipments that left: real where a delivered event came,
    else estimated. None while nothing has left."""
    left = [s for s in shipments_of(session, order) if s.status not in VOID_STATUSES and has_left(s, policy)]
    if not left:
        return None
    times = [(s.delivered_at or s.estimated_delivery_at, s.delivered_at is None, s) for s in left]
    at = max(t for t, _est, _s in times if t is not None)
    estimated = any(est for _t, est, _s in times)
    versions = [s.estimate_policy_version for _t, est, s in times if est]
    return OrderDelivery(at=at, estimated=estimated, policy_version=versions[0] if versions else None)


# --- Refunds ---------------------------------------------------------------------------------------

# Shopify's word for an order the customer pays nothing for any more: every unit given back, or the
# authorisation voided. Nothing of it is left to ship, whether or not a refund delivery ever names the
# lines (`orders/updated` may be all we hear).
NOTHING_PAID = frozenset({"refunded", "voided"})


@dataclass
class RefundResult:
    refund: Refund
    created: bool
    cancelled: list[Touchpoint]
    fully_refunded: bool


def refunded_totals(refunds: Iterable[Iterable[Mapping[str, Any]]]) -> dict[int, int]:
    """Shopify line id -> quantity refunded, over the given refunds' `lines`."""
    totals: dict[int, int] = defaultdict(int)
    for refund_lines in refunds:
        for line in refund_lines:
            totals[int(line["line_id"])] += int(line["quantity"])
    return dict(totals)


def refunded_quantities(session: Session, order: Order) -> dict[int, int]:
    """Shopify line id -> quantity refunded so far, over every refund of the order."""
    return refunded_totals(r.lines for r in session.exec(select(Refund).where(Refund.order_id == order.id)))


def keeps(financial_status: str | None, lines: Iterable[Any], refunded: Mapping[int, int]) -> dict[int, int]:
    """`shippable_quantities` from what was read already: the order's financial status, its lines
    (anything with `shopify_id` and `quantity`) and `refunded_totals` of its refunds."""
    if (financial_status or "") in NOTHING_PAID:
        return {line.shopify_id: 0 for line in lines}
    return {line.shopify_id: max(0, line.quantity - refunded.get(line.shopify_id, 0)) for line in lines}


def shippable_quantities(session: Session, order: Order, lines: list[OrderLine]) -> dict[int, int]:
    """Shopify line id -> units the customer still has: ordered minus refunded (never below 0), none
    at all once Shopify calls the order refunded or voided. The one measure of what a refund took
    back: it sets the warehouse instruction's quantities, decides whether the order is called back
    from the warehouse, and whether a shipment notice (or anything after delivery) is still owed."""
    if (order.financial_status or "") in NOTHING_PAID:
        return keeps(order.financial_status, lines, {})
    return keeps(order.financial_status, lines, refunded_quantities(session, order))


def lines_of(session: Session, order_ids: Iterable[int]) -> dict[int, list[OrderLine]]:
    """The lines of many orders in one query: order id -> its lines, in the order's own order."""
    ids = sorted(set(order_ids))
    lines: dict[int, list[OrderLine]] = defaultdict(list)
    if ids:
        query = (
            select(OrderLine)
            .where(OrderLine.order_id.in_(ids))  # type: ignore[attr-defined]
            .order_by(OrderLine.order_id, OrderLine.position, OrderLine.id)  # type: ignore[arg-type]
        )
        for line in session.exec(query):
            lines[line.order_id].append(line)
    return dict(lines)


def shippable_quantities_of(
    session: Session, orders: Iterable[Order], lines: Mapping[int, list[OrderLine]]
) -> dict[int, dict[int, int]]:
    """`shippable_quantities` of many orders (`lines`: order id -> its lines, as `lines_of` reads
    them), their refunds read in one query: order id -> Shopify line id -> units the customer has."""
    orders = list(orders)
    ids = sorted(o.id for o in orders if o.id is not None and (o.financial_status or "") not in NOTHING_PAID)
    refunds: dict[int, list[list[dict[str, Any]]]] = defaultdict(list)
    if ids:
        for refund in session.exec(select(Refund).where(Refund.order_id.in_(ids))):  # type: ignore[attr-defined]
            refunds[refund.order_id].append(refund.lines)
    out: dict[int, dict[int, int]] = {}
    for order in orders:
        assert order.id is not None
        out[order.id] = keeps(
            order.financial_status, lines.get(order.id, []), refunded_totals(refunds.get(order.id, []))
        )
    return out


def nothing_left(lines: list[OrderLine], shippable: dict[int, int]) -> bool:
    """The order had units and the customer keeps none of them: refunded in full (or voided)."""
    return any(line.quantity > 0 for line in lines) and not any(shippable.values())


def nothing_left_in(shipment: Shipment, shippable: dict[int, int]) -> bool:
    """None of the lines this shipment carries is still the customer's: its notice is not owed. A line
    the order does not know counts as the customer's (we cannot tell it was refunded)."""
    ids = [int(li["line_id"]) for li in shipment.lines]
    return bool(ids) and all(shippable.get(line_id, 1) == 0 for line_id in ids)


def fully_refunded_lines(session: Session, order: Order, lines: list[OrderLine]) -> set[int]:
    shippable = shippable_quantities(session, order, lines)
    return {line.shopify_id for line in lines if line.quantity > 0 and shippable[line.shopify_id] == 0}


def is_fully_refunded(session: Session, order: Order, lines: list[OrderLine]) -> bool:
    return nothing_left(lines, shippable_quantities(session, order, lines))


def take_back(session: Session, order: Order, lines: list[OrderLine], why: str) -> list[Touchpoint]:
    """Cancel what refunds took back and is not sent yet (with its unclaimed outbox message): the
    notice of a shipment none of whose units the customer still has, and, once nothing of the order
    is left, every mail of its own still planned (`order_mails`: no survey, no review request for
    an order they no longer have). `why` names the cause for the reasons: a refund, or the order's
    financial status."""
    shippable = shippable_quantities(session, order, lines)
    cancelled: list[Touchpoint] = []
    notices = {t.seq: t for t in touchpoints_of(session, order, (SHIPMENT_NOTICE,))}
    for shipment in shipments_of(session, order):
        if shipment.id in notices and nothing_left_in(shipment, shippable):
            cancelled += cancel_touchpoints(
                session, [notices[shipment.id]], f"every line of this shipment was refunded ({why})"
            )
    if nothing_left(lines, shippable):
        cancelled += cancel_touchpoints(session, order_mails(session, order), f"order fully refunded ({why})")
    return cancelled


def apply_refund(
    session: Session, *, order: Order, parsed: ShopifyRefund, lines: list[OrderLine]
) -> RefundResult:
    """Record a refund (once), then cancel what it takes back (`take_back`)."""
    assert order.id is not None
    refund = session.exec(
        select(Refund).where(Refund.shop_domain == order.shop_domain, Refund.shopify_id == parsed.id)
    ).first()
    created = refund is None
    if refund is None:
        refund = Refund(
            order_id=order.id,
            shop_domain=order.shop_domain,
            shopify_id=parsed.id,
            note=parsed.note,
            lines=[{"line_id": r.line_item_id, "quantity": r.quantity} for r in parsed.refund_line_items],
            refunded_at=parsed.processed_at or parsed.created_at,
            raw=parsed.model_dump(mode="json"),
        )
        session.add(refund)
        session.flush()
    cancelled = take_back(session, order, lines, f"refund {parsed.id}")
    return RefundResult(refund, created, cancelled, is_fully_refunded(session, order, lines))


# --- What is planned once the parcel has arrived ---------------------------------------------------


def plan_after_delivery(
    session: Session, order: Order, policies: Policies, lines: list[OrderLine]
) -> list[Touchpoint]:
    """Plan (or move) the survey and review request from the order's delivery, real or estimated.
    Nothing is planned for a cancelled or fully refunded order, or before anything has left; when the
    only shipments that had left are cancelled, what was planned from them is cancelled too."""
    if order.cancelled_at is not None or is_fully_refunded(session, order, lines):
        return []
    delivery = order_delivery(session, order, policies.delivery)
    if delivery is None:
        # Every shipment that had left was cancelled: what keyed on it goes too.
        cancel_touchpoints(session, touchpoints_of(session, order, AFTER_DELIVERY), NOTHING_ON_ITS_WAY)
        return []
    policy = policies.delivery
    return [
        ensure_touchpoint(
            session,
            order=order,
            kind=DELIVERY_SURVEY,
            seq=1,
            policy_version=policy.version,
            due_at=delivery.at + timedelta(days=policy.survey_days_after_delivery),
            revive_reason=NOTHING_ON_ITS_WAY,
        ),
        ensure_touchpoint(
            session,
            order=order,
            kind=REVIEW_REQUEST,
            seq=1,
            policy_version=policy.version,
            due_at=delivery.at + timedelta(days=policy.review_request_days_after_delivery),
            revive_reason=NOTHING_ON_ITS_WAY,
        ),
    ]


# --- The shipment notice ---------------------------------------------------------------------------


def tracking_entries(shipment: Shipment) -> list[dict[str, str | None]]:
    """Tracking numbers paired with their URLs; a URL that is not http(s) is left out of the link."""
    entries = []
    for number, url in zip_longest(shipment.tracking_numbers, shipment.tracking_urls):
        if number is None and linkable(url) is None:
            continue
        entries.append({"number": number, "url": linkable(url)})
    return entries


def notice_vars(
    session: Session,
    order: Order,
    shipment: Shipment,
    policies: Policies,
    shop_name: str,
    customer_name: str | None,
) -> dict[str, Any]:
    """Everything the shipment notice templates use."""
    lines = list(session.exec(select(OrderLine).where(OrderLine.order_id == order.id)))
    shippable = shippable_quantities(session, order, lines)  # a refunded unit is not "to come"
    shipped: dict[int, int] = defaultdict(int)
    for other in shipments_of(session, order):
        if other.status not in VOID_STATUSES:
            for li in other.lines:
                shipped[int(li["line_id"])] += int(li["quantity"])
    remaining = any(
        line.requires_shipping and shipped.get(line.shopify_id, 0) < shippable[line.shopify_id]
        for line in lines
    )
    tz = policies.shipping.tz
    estimate = shipment.delivered_at or shipment.estimated_delivery_at
    return {
        "shop_name": shop_name,
        "order_name": order.name,
        "carrier": shipment.carrier,
        "tracking": tracking_entries(shipment),
        "lines": [
            {
                "title": li.get("title") or li.get("sku") or "",
                "variant": li.get("variant_title"),
                "quantity": li["quantity"],
            }
            for li in shipment.lines
        ],
        "shipped_on": shipment.shipped_at.astimezone(tz).date(),
        "estimated_delivery_on": estimate.astimezone(tz).date() if estimate else None,
        "more_to_come": remaining,
        "address": addresses.with_clean_names(order.shipping_address) or None,
        "customer_name": addresses.clean_name(customer_name),
        "is_test": order.is_test,
    }


def render_notice(renderer: Renderer, locale: str, context: dict[str, Any]) -> RenderedEmail:
    return renderer.render_email(SHIPMENT_NOTICE, locale, context)


def customer_of(session: Session, order: Order) -> Customer | None:
    return session.get(Customer, order.customer_id) if order.customer_id else None
