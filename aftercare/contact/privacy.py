"""Shopify's mandatory compliance webhooks, carried out on our own tables and files.

- `customers/redact` {shop_id, shop_domain, customer: {id, email, phone}, orders_to_redact: [ids]}:
  erase that customer's personal data from every table and file we hold. Orders stay for the books
  (ids, names, totals, lines) with their personal fields replaced; the customer row, their consent
  rows, their inbox bodies, their outbox rows' addresses and bodies (and the .eml files), their
  review author data, warehouse folders, survey comments and data exports go. What is kept is one
  hashed suppression entry per address (list `all`), so a later order is never asked for feedback.
- `shop/redact` {shop_id, shop_domain}: the same for every customer of the shop.
- `customers/data_request` {shop_id, shop_domain, customer, orders_requested, data_request: {id}}:
  an export for ops, a JSON file under `<var>/privacy/<shop>/`, and a staff mail through the outbox
  (to `ops_alert_emails` of policies/requests.yaml) saying where it is; the mail carries no personal
  data itself.

What was erased stays erased: `mark_erased` records the Shopify ids of the erased orders (those in
orders_to_redact we never stored too), customers and shop in `erasures`. A later delivery for one of
them (a Shopify retry of one we failed to store in time, a signed body replayed under a new webhook
id: the signature does not cover that header) is found by `erased_subject` before it is carried out
(its body stored and acted on `without_personal_parts`, so the books get the cancellation, refund or
fulfillment, while no mail has an address and no warehouse instruction a name), and once more at the
end of its transaction, after its locks (a redaction that committed meanwhile); then `erase_again`
runs `redact` on a target of just that order or customer, in the same transaction. For a redacted
shop this holds for every order and customer from before the redaction (or undated); a shop that
installs us again keeps what is new. Such deliveries are no privacy requests: their inbox row's
reason says `erased again` and names the redaction.

Each is logged in `privacy_requests`, one per inbox delivery: carrying out the same delivery again
does nothing more. The payload's shop_domain must be the shop the delivery came for: the signature
does not cover the shop header, and a signed body replayed under another shop's name must not erase
that shop. Core: no Prefect, no web. The caller owns the transaction; files are removed before it
commits (removal is idempotent, so a retry after a failed commit finishes the job).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.contact.consent import TOPICS as CONSENT_TOPICS
from aftercare.contact.policy import ContactPolicy
from aftercare.contact.store import email_hash, suppress
from aftercare.errors import InvalidPayload
from aftercare.models import (
    ConsentRecord,
    Customer,
    CustomerConsent,
    Erasure,
    InboxEvent,
    InboxStatus,
    InboxWait,
    Order,
    OrderLine,
    OutboxMessage,
    OutboxStatus,
    PrivacyRequest,
    Refund,
    Review,
    ReviewDecision,
    ReviewDraft,
    ReviewReply,
    ReviewRevision,
    Shipment,
    ShipmentEvent,
    Suppression,
    SurveyResponse,
    Touchpoint,
    TouchpointStatus,
    WarehouseHandoff,
)
from aftercare.orders.shopify import FULFILLMENT_EVENT_TOPICS, FULFILLMENT_TOPICS, ORDER_TOPICS, REFUND_TOPICS
from aftercare.orders.warehouse import order_folder, path_segment
from aftercare.rendering import Renderer
from aftercare.spine import addresses
from aftercare.spine.outbox import enqueue_staff

CUSTOMERS_REDACT = "customers/redact"
SHOP_REDACT = "shop/redact"
DATA_REQUEST = "customers/data_request"
TOPICS = frozenset({CUSTOMERS_REDACT, SHOP_REDACT, DATA_REQUEST})
REDACTED = "[redacted]"
STAFF_KIND = "privacy_data_request"

# Keys whose whole value is personal wherever they appear in a stored JSON document (a raw payload, a
# warehouse instruction): addresses, the customer object, free text the buyer wrote, line properties
# (engravings, recipients' names), the browser's details.
_PERSONAL_CONTAINERS = frozenset(
    {
        "customer",
        "shipping_address",
        "billing_address",
        "default_address",
        "addresses",
        "destination",
        "ship_to",
        "client_details",
        "note",
        "note_attributes",
        "properties",
        "engraving",
        "requests",
        "gift",
        "gift_message",
        "message",
        "location",
    }
)
_PERSONAL_LEAVES = frozenset(
    {
        "email",
        "contact_email",
        "email_address",
        "phone",
        "first_name",
        "last_name",
        "browser_ip",
        "user_agent",
        "author",
        "author_name",
        "author_display_name",
        "reviewer",
        "customer_name",
        # A street address at any depth (a carrier event's "delivered" place is the customer's door).
        "address1",
        "address2",
        "latitude",
        "longitude",
    }
)


@dataclass(frozen=True)
class PrivacyPayload:
    topic: str
    shop_domain: str
    customer_id: int | None = None
    email: str | None = None
    phone: str | None = None
    order_ids: tuple[int, ...] = ()
    data_request_id: int | None = None


def _id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and 0 < value < 2**63 else None


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse(topic: str, body: bytes) -> PrivacyPayload:
    """A compliance webhook's body, or InvalidPayload saying what is wrong with it."""
    if topic not in TOPICS:
        raise InvalidPayload(f"{topic!r} is not a compliance topic")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidPayload(f"body is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, Mapping):
        raise InvalidPayload(f"{topic} payload must be a JSON object")
    shop = _text(data.get("shop_domain"))
    if shop is None:
        raise InvalidPayload(f"{topic} payload has no shop_domain")
    if topic == SHOP_REDACT:
        return PrivacyPayload(topic, shop.lower())
    customer = data.get("customer")
    if not isinstance(customer, Mapping):
        raise InvalidPayload(f"{topic} payload has no customer object")
    cid, email, phone = _id(customer.get("id")), _text(customer.get("email")), _text(customer.get("phone"))
    if cid is None and email is None:
        raise InvalidPayload(f"{topic} payload names no customer (no customer.id or customer.email)")
    orders_key = "orders_to_redact" if topic == CUSTOMERS_REDACT else "orders_requested"
    raw_orders = data.get(orders_key) or []
    if not isinstance(raw_orders, list):
        raise InvalidPayload(f"{topic} payload: {orders_key} must be a list of order ids")
    order_ids = tuple(i for i in (_id(v) for v in raw_orders[:10_000]) if i is not None)
    request = data.get("data_request")
    request_id = _id(request.get("id")) if isinstance(request, Mapping) else None
    return PrivacyPayload(topic, shop.lower(), cid, email, phone, order_ids, request_id)


def check_delivery(topic: str, body: bytes) -> tuple[bool, str | None, str | None]:
    """(usable, reason, subject ref) before the delivery is stored: an unusable one is kept as
    invalid with the reason. No subject ref: the inbox's search label would outlive the erasure."""
    try:
        parse(topic, body)
    except InvalidPayload as exc:
        return False, str(exc), None
    return True, None, None


# -- what belongs to whom -----------------------------------------------------------------------------


@dataclass
class Target:
    """Everything of one customer (or one whole shop) we hold, found before anything is changed."""

    shop: str
    whole_shop: bool
    keys: set[str] = field(default_factory=set)  # lower-cased addresses
    customer_shopify_id: int | None = None
    customers: list[Customer] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    needles: set[str] = field(default_factory=set)  # lower-cased text that identifies the person
    listed_order_ids: set[int] = field(default_factory=set)  # orders_to_redact, stored or not

    @property
    def order_ids(self) -> list[int]:
        return [o.id for o in self.orders if o.id is not None]

    @property
    def customer_ids(self) -> list[int]:
        return [c.id for c in self.customers if c.id is not None]


def _add_needle(needles: set[str], value: Any, minimum: int = 3) -> None:
    text = _text(value)
    if text is not None and len(text) >= minimum:
        needles.add(text.lower())


def _address_needles(needles: set[str], address: Any) -> None:
    if not isinstance(address, Mapping):
        return
    for key in ("address1", "address2", "phone", "company"):
        _add_needle(needles, address.get(key), 4)
    for key in ("name", "first_name", "last_name"):
        _add_needle(needles, address.get(key), 2)


def find_target(session: Session, payload: PrivacyPayload) -> Target:
    """The customers, orders and identifying text of a redaction or a data request."""
    shop = payload.shop_domain
    target = Target(shop=shop, whole_shop=payload.topic == SHOP_REDACT)
    if target.whole_shop:
        target.customers = list(session.exec(select(Customer).where(Customer.shop_domain == shop)))
        target.orders = list(session.exec(select(Order).where(Order.shop_domain == shop)))
    else:
        target.customer_shopify_id = payload.customer_id
        target.listed_order_ids = set(payload.order_ids)
        if payload.email:
            target.keys.add(payload.email.strip().lower())
        who = []
        if target.keys:
            who.append(Customer.email_key.in_(sorted(target.keys)))  # type: ignore[attr-defined]
        if payload.customer_id is not None:
            who.append(Customer.shopify_id == payload.customer_id)
        target.customers = list(
            session.exec(select(Customer).where(Customer.shop_domain == shop, sa.or_(*who)))
        )
        target.keys |= {c.email_key for c in target.customers}
        owned = [Order.shopify_id.in_(list(payload.order_ids))] if payload.order_ids else []  # type: ignore[attr-defined]
        if target.customer_ids:
            owned.append(Order.customer_id.in_(target.customer_ids))  # type: ignore[union-attr]
        if target.keys:
            owned.append(sa.func.lower(Order.email).in_(sorted(target.keys)))
        if owned:
            target.orders = list(session.exec(select(Order).where(Order.shop_domain == shop, sa.or_(*owned))))
    target.keys |= {o.email.strip().lower() for o in target.orders if o.email}
    target.keys |= {c.email_key for c in target.customers}
    if target.whole_shop:
        target.keys |= set(
            session.exec(select(CustomerConsent.email_key).where(CustomerConsent.shop_domain == shop))
        )
    _fill_needles(target, payload.phone)
    return target


def _fill_needles(target: Target, phone: str | None = None) -> None:
    needles = target.needles
    needles |= target.keys
    _add_needle(needles, phone, 4)
    for c in target.customers:
        _add_needle(needles, c.email, 3)
        _add_needle(needles, c.first_name, 2)
        _add_needle(needles, c.last_name, 2)
    for o in target.orders:
        _address_needles(needles, o.shipping_address)
        raw = o.raw if isinstance(o.raw, Mapping) else {}
        _address_needles(needles, raw.get("billing_address"))
        _address_needles(needles, raw.get("customer"))
        _add_needle(needles, raw.get("phone"), 4)


# -- scrubbing ----------------------------------------------------------------------------------------


def _mask(text: str, needles: Iterable[str]) -> str:
    """`text` with every needle (case-insensitively) replaced by [redacted]."""
    lowered = text.lower()
    for needle in sorted(needles, key=len, reverse=True):
        if needle not in lowered:
            continue
        out, start = [], 0
        while (at := lowered.find(needle, start)) >= 0:
            out.append(text[start:at])
            out.append(REDACTED)
            start = at + len(needle)
        out.append(text[start:])
        text = "".join(out)
        lowered = text.lower()
    return text


def scrub(value: Any, needles: Iterable[str]) -> Any:
    """A JSON document with its personal parts replaced: the values of personal keys (addresses, the
    customer, notes, line properties, contact details) become None, and any other text that holds
    an identifying string is masked."""
    needles = list(needles)
    if isinstance(value, Mapping):
        return {
            k: (
                None
                if isinstance(k, str) and k.lower() in _PERSONAL_CONTAINERS | _PERSONAL_LEAVES
                else scrub(v, needles)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v, needles) for v in value]
    if isinstance(value, str):
        return _mask(value, needles)
    return value


def _mask_or_none(text: str | None, needles: Iterable[str]) -> str | None:
    return None if text is None else _mask(text, needles)


@dataclass
class Erased:
    """What a redaction changed, by table and file kind: the privacy request's summary."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, n: int) -> None:
        if n:
            self.counts[what] = self.counts.get(what, 0) + n


def _stub(topic: str, inbox_id: int | None) -> bytes:
    return json.dumps({"redacted": True, "by": topic, "privacy_inbox_id": inbox_id}).encode()


def _inbox_rows_of(session: Session, target: Target, current_id: int | None) -> list[int]:
    """The inbox rows that carry this customer's data: every row of a redacted shop; otherwise rows
    whose body names one of the customer's orders (by Shopify id), the customer (by id), or holds an
    identifying string, and the rows labelled with their orders' names."""
    # Review deliveries name no shop: they are searched too.
    query = select(InboxEvent.id, InboxEvent.body, InboxEvent.subject_ref, InboxEvent.shop_domain).where(
        InboxEvent.shop_domain.in_([target.shop, ""])  # type: ignore[attr-defined]
    )
    shopify_order_ids = {o.shopify_id for o in target.orders}
    labels = {o.name for o in target.orders} | {f"order-id:{i}" for i in shopify_order_ids}
    if target.customer_shopify_id is not None:
        labels.add(f"customer-id:{target.customer_shopify_id}")
    strong = [n for n in target.needles if len(n) >= 5]
    found = []
    names = {o.name for o in target.orders}
    for row_id, body, ref, shop in session.execute(query.execution_options(yield_per=500)):
        if row_id == current_id or (target.whole_shop and shop == target.shop) or ref in labels:
            found.append(row_id)
            continue
        data = bytes(body or b"")
        lowered = data.decode("utf-8", "replace").lower()
        if any(n in lowered for n in strong) or _names_ids(
            data, shopify_order_ids, names, target.customer_shopify_id
        ):
            found.append(row_id)
    return found


def _names_ids(body: bytes, order_ids: set[int], names: set[str], customer_id: int | None) -> bool:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    if not isinstance(data, Mapping):
        return False
    for wrapper in ("order", "fulfillment", "refund", "fulfillment_event", "customer"):
        if isinstance(data.get(wrapper), Mapping) and len(data) == 1:
            data = data[wrapper]
    ids = {_id(data.get("id")), _id(data.get("order_id"))}
    if ids & order_ids or (data.get("order_ref") and data.get("order_ref") in names):
        return True
    if customer_id is None:
        return False
    customer = data.get("customer")
    return customer_id in {
        _id(data.get("customer_id")),
        _id(customer.get("id")) if isinstance(customer, Mapping) else None,
    }


def _remove(path: Path) -> int:
    try:
        if path.is_dir():
            shutil.rmtree(path)
            return 1
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _outbox_dir(settings: Any) -> Path | None:
    return getattr(settings, "outbox_dir", None)


def redact(
    session: Session,
    target: Target,
    *,
    settings: Any,
    policy: ContactPolicy,
    now: datetime,
    inbox_id: int | None,
    topic: str,
    again: bool = False,
) -> Erased:
    """Erase the target's personal data from every table and file (see the module's list), leaving a
    hashed `all` suppression per address. Idempotent: a second run finds nothing left to change.
    `again`: a later delivery for what was erased (`erase_again`): of the inbox only that delivery's
    own row is stubbed (every other delivery for it is erased again when it is carried out; one
    waiting for its order must keep its ids to be), and no file is touched (what a hand-off writes
    later comes from the instructions erased here)."""
    erased = Erased()
    if session.get_bind().dialect.name == "sqlite":
        # Overwrite what is deleted or replaced instead of leaving it in free pages of the file.
        session.execute(sa.text("PRAGMA secure_delete = ON"))
    needles = sorted(target.needles)
    order_ids = target.order_ids
    reason = f"customer data erased ({topic})"
    # Tables hanging off the orders.
    if order_ids:
        tps = list(
            session.exec(
                select(Touchpoint.id).where(
                    Touchpoint.order_id.in_(order_ids),  # type: ignore[attr-defined]
                    Touchpoint.status == TouchpointStatus.PLANNED,
                )
            )
        )
        if tps:
            session.execute(
                sa.update(Touchpoint)
                .where(Touchpoint.id.in_(tps))  # type: ignore[union-attr]
                .values(status=TouchpointStatus.CANCELLED, reason=reason)
            )
            erased.add("touchpoints cancelled", len(tps))
        for line in session.exec(select(OrderLine).where(OrderLine.order_id.in_(order_ids))):  # type: ignore[attr-defined]
            if line.properties:
                line.properties = []
                session.add(line)
                erased.add("order_lines", 1)
        for shipment in session.exec(select(Shipment).where(Shipment.order_id.in_(order_ids))):  # type: ignore[attr-defined]
            shipment.raw = scrub(shipment.raw, needles)
            session.add(shipment)
            erased.add("shipments", 1)
        for event in session.exec(select(ShipmentEvent).where(ShipmentEvent.order_id.in_(order_ids))):  # type: ignore[attr-defined]
            event.raw, event.location = scrub(event.raw, needles), None
            event.message = _mask_or_none(event.message, needles)
            session.add(event)
            erased.add("shipment_events", 1)
        for refund in session.exec(select(Refund).where(Refund.order_id.in_(order_ids))):  # type: ignore[attr-defined]
            refund.raw, refund.note = scrub(refund.raw, needles), None
            session.add(refund)
            erased.add("refunds", 1)
        for handoff in session.exec(
            select(WarehouseHandoff).where(WarehouseHandoff.order_id.in_(order_ids))  # type: ignore[attr-defined]
        ):
            handoff.instruction = scrub(handoff.instruction, needles)
            handoff.last_error = _mask_or_none(handoff.last_error, needles)
            session.add(handoff)
            erased.add("warehouse_handoffs", 1)
        answers = session.execute(
            sa.update(SurveyResponse)
            .where(SurveyResponse.order_id.in_(order_ids))  # type: ignore[attr-defined]
            .values(comment=None, client_agent=None)
        )
        erased.add("survey_responses", answers.rowcount or 0)
        for revision in session.exec(
            select(ReviewRevision).where(ReviewRevision.order_id.in_(order_ids))  # type: ignore[attr-defined]
        ):
            # What they wrote on our review form, every version: its name gone, their details masked.
            revision.display_name = None
            revision.title = _mask_or_none(revision.title, needles)
            revision.body = _mask(revision.body, needles)
            session.add(revision)
            erased.add("review_revisions", 1)
    # Reviews: the author's data, and the customer's identifiers in the texts about them.
    review_where = []
    if order_ids:
        review_where.append(Review.order_id.in_(order_ids))  # type: ignore[union-attr]
    if target.customer_ids:
        review_where.append(Review.customer_id.in_(target.customer_ids))  # type: ignore[union-attr]
    if target.whole_shop:
        review_where.append(Review.shop_domain == target.shop)
    reviews = list(session.exec(select(Review).where(sa.or_(*review_where)))) if review_where else []
    for review in reviews:
        review.author_display_name, review.customer_id = None, None
        review.title = _mask_or_none(review.title, needles)
        review.body = _mask(review.body, needles)
        review.order_ref = _mask_or_none(review.order_ref, needles)
        session.add(review)
        for model in (ReviewDraft, ReviewDecision, ReviewReply):
            for row in session.exec(select(model).where(model.review_id == review.id)):  # type: ignore[attr-defined]
                row.text = _mask_or_none(row.text, needles)
                session.add(row)
    erased.add("reviews", len(reviews))
    # Outbox rows: theirs by order or address, and any (staff) mail that names them.
    who = []
    if order_ids:
        who.append(OutboxMessage.order_id.in_(order_ids))  # type: ignore[union-attr]
    if target.keys:
        who.append(sa.func.lower(OutboxMessage.to_email).in_(sorted(target.keys)))
    for needle in [n for n in needles if len(n) >= 5][:200]:
        pattern = "%" + _like_escaped(needle) + "%"
        for column in (OutboxMessage.text_body, OutboxMessage.html_body, OutboxMessage.subject):
            who.append(sa.func.lower(column).like(pattern, escape="\\"))
    messages = list(session.exec(select(OutboxMessage).where(sa.or_(*who)))) if who else []
    directory = _outbox_dir(settings)
    for m in messages:
        if m.status == OutboxStatus.PENDING:
            m.status = OutboxStatus.CANCELLED
        m.to_email, m.to_name, m.subject = REDACTED, None, REDACTED
        m.text_body, m.html_body, m.headers = "", "", None
        m.last_error = _mask_or_none(m.last_error, needles)
        session.add(m)
        if directory is not None and m.id is not None:
            for path in (directory / f"{m.id:08d}.eml", directory / "staff" / f"{m.id:08d}.eml"):
                erased.add("outbox files", _remove(path))
    erased.add("outbox", len(messages))
    # The orders themselves: kept for the books, personal fields replaced.
    for order in target.orders:
        order.email, order.shipping_address, order.gift_message, order.note = None, None, None, None
        order.customer_id = None
        order.raw = scrub(order.raw, needles)
        session.add(order)
    erased.add("orders", len(target.orders))
    session.flush()
    # Customers and consent.
    if target.customer_ids:
        session.execute(
            sa.update(Review)
            .where(Review.customer_id.in_(target.customer_ids))  # type: ignore[union-attr]
            .values(customer_id=None)
        )
        session.execute(
            sa.update(Order)
            .where(Order.customer_id.in_(target.customer_ids))  # type: ignore[union-attr]
            .values(customer_id=None)
        )
        gone = session.execute(sa.delete(Customer).where(Customer.id.in_(target.customer_ids)))  # type: ignore[union-attr]
        erased.add("customers", gone.rowcount or 0)
    consent_who = []
    if target.keys:
        consent_who.append(ConsentRecord.email_key.in_(sorted(target.keys)))  # type: ignore[attr-defined]
    if target.customer_shopify_id is not None:
        consent_who.append(ConsentRecord.customer_shopify_id == target.customer_shopify_id)
    if target.whole_shop:
        consent_who.append(sa.true())
    if consent_who:
        keys_by_id = set(
            session.exec(
                select(ConsentRecord.email_key).where(
                    ConsentRecord.shop_domain == target.shop, sa.or_(*consent_who)
                )
            )
        )
        target.keys |= keys_by_id
    if target.keys or target.whole_shop:
        held_where = (
            sa.true() if target.whole_shop else CustomerConsent.email_key.in_(sorted(target.keys))  # type: ignore[attr-defined]
        )
        gone = session.execute(
            sa.delete(CustomerConsent).where(CustomerConsent.shop_domain == target.shop, held_where)
        )
        erased.add("customer_consents", gone.rowcount or 0)
    if consent_who:  # after the held rows, which point at their records
        if target.keys:
            consent_who.append(ConsentRecord.email_key.in_(sorted(target.keys)))  # type: ignore[attr-defined]
        gone = session.execute(
            sa.delete(ConsentRecord).where(ConsentRecord.shop_domain == target.shop, sa.or_(*consent_who))
        )
        erased.add("consent_records", gone.rowcount or 0)
    # Inbox bodies (this very delivery's too: it names the customer).
    if again:
        rows = [inbox_id] if inbox_id is not None else []
    else:
        rows = _inbox_rows_of(session, target, inbox_id)
    if rows:
        for chunk in range(0, len(rows), 500):
            ids = rows[chunk : chunk + 500]
            session.execute(
                sa.update(InboxEvent)
                .where(InboxEvent.id.in_(ids))  # type: ignore[union-attr]
                .values(body=_stub(topic, inbox_id), subject_ref=None)
            )
            # Deliveries not yet carried out would act on data that no longer exists.
            session.execute(
                sa.update(InboxEvent)
                .where(
                    InboxEvent.id.in_(ids),  # type: ignore[union-attr]
                    InboxEvent.id != inbox_id,
                    InboxEvent.status.in_(  # type: ignore[attr-defined]
                        [InboxStatus.PENDING, InboxStatus.FAILED, InboxStatus.WAITING]
                    ),
                )
                .values(status=InboxStatus.IGNORED, reason=f"body erased by {topic}")
            )
            session.execute(sa.delete(InboxWait).where(InboxWait.inbox_id.in_(ids)))  # type: ignore[attr-defined]
        erased.add("inbox bodies", len(rows) - (1 if inbox_id in rows else 0))
    # Files: warehouse folders and earlier data exports.
    warehouse_dir = getattr(settings, "warehouse_dir", None)
    var_dir = Path(settings.var_dir)
    if again:
        pass  # a hand-off writes its folder later, from the instructions scrubbed above
    elif target.whole_shop:
        if warehouse_dir is not None:
            erased.add("warehouse folders", _remove(Path(warehouse_dir) / path_segment(target.shop, "shop")))
        erased.add("data exports", _remove(export_dir(var_dir, target.shop)))
    else:
        if warehouse_dir is not None:
            for order in target.orders:
                folder = order_folder(
                    Path(warehouse_dir), order.shop_domain, str(order.shopify_id), order.name
                )
                erased.add("warehouse folders", _remove(folder))
        folder = export_dir(var_dir, target.shop)
        hashes = {email_hash(k)[:16] for k in target.keys}
        if folder.is_dir():
            for path in folder.iterdir():
                if any(h in path.name for h in hashes):
                    erased.add("data exports", _remove(path))
    # What is kept: one hashed suppression entry per address, on every list.
    for key in sorted(target.keys):
        made = suppress(
            session,
            shop_domain=target.shop,
            email_key=None,
            list_name="all",
            source=topic,
            now=now,
            policy=policy,
            address_hash=email_hash(key),
        )
        erased.add("suppressions added", 1 if made.created else 0)
    session.flush()
    return erased


# -- what was erased stays erased ---------------------------------------------------------------------

ORDER, CUSTOMER, SHOP = "order", "customer", "shop"


def mark_erased(session: Session, target: Target, *, inbox_id: int, now: datetime) -> int:
    """Record (once) the Shopify ids the redaction erased: its orders (those listed for it too, stored
    or not), its customers, and a redacted shop itself (id 0). Returns how many marks are new."""
    wanted: set[tuple[str, int]] = {(ORDER, o.shopify_id) for o in target.orders}
    wanted |= {(ORDER, i) for i in target.listed_order_ids}
    wanted |= {(CUSTOMER, c.shopify_id) for c in target.customers if c.shopify_id is not None}
    if target.customer_shopify_id is not None:
        wanted.add((CUSTOMER, target.customer_shopify_id))
    if target.whole_shop:
        wanted.add((SHOP, 0))
    if not wanted:
        return 0
    held: set[tuple[str, int]] = set()
    ids = sorted({sid for _, sid in wanted})
    for at in range(0, len(ids), 500):
        held |= set(
            session.execute(
                sa.select(Erasure.kind, Erasure.shopify_id).where(  # type: ignore[call-overload]
                    Erasure.shop_domain == target.shop,
                    Erasure.shopify_id.in_(ids[at : at + 500]),  # type: ignore[attr-defined]
                )
            ).tuples()
        )
    new = sorted(wanted - held)
    session.add_all(
        Erasure(kind=kind, shopify_id=sid, shop_domain=target.shop, inbox_id=inbox_id, erased_at=now)
        for kind, sid in new
    )
    session.flush()
    return len(new)


@dataclass(frozen=True)
class Subjects:
    """The orders and customer a delivery names (by Shopify id), when the thing it is about was
    created (an order's placing, a customer's creation; None when it does not say), and the address
    it carries."""

    order_ids: frozenset[int] = frozenset()
    customer_ids: frozenset[int] = frozenset()
    dated: datetime | None = None
    email: str | None = None
    phone: str | None = None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def subject_kind(topic: str) -> str | None:
    """How a delivery of `topic` names what it is about (`subjects_of`); None: it names no order or
    customer by Shopify id (a review, a compliance topic, a topic we do not handle)."""
    if topic in ORDER_TOPICS:
        return "order"
    if topic in FULFILLMENT_TOPICS or topic in FULFILLMENT_EVENT_TOPICS or topic in REFUND_TOPICS:
        return "order_id"
    if topic in CONSENT_TOPICS:
        return "customer"
    return None


def subjects_of(names: str, body: bytes) -> Subjects:
    """What a delivery names. `names`: "order" (the body is an order), "order_id" (a fulfillment, a
    carrier event or a refund: the order by its id) or "customer" (a customer or consent topic). An
    unreadable body names nothing (its handler says what is wrong with it)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return Subjects()
    if not isinstance(data, Mapping):
        return Subjects()
    for wrapper in ("order", "fulfillment", "refund", "fulfillment_event", "customer"):
        if isinstance(data.get(wrapper), Mapping) and len(data) == 1:
            data = data[wrapper]
    ids = lambda *values: frozenset(i for i in (_id(v) for v in values) if i is not None)  # noqa: E731
    if names == "order":
        return Subjects(
            order_ids=ids(data.get("id")),
            dated=_when(data.get("processed_at")) or _when(data.get("created_at")),
        )
    if names == "order_id":
        return Subjects(order_ids=ids(data.get("order_id")), dated=_when(data.get("created_at")))
    return Subjects(
        customer_ids=ids(data.get("id") if "customer_id" not in data else data.get("customer_id")),
        dated=_when(data.get("created_at")),
        email=_text(data.get("email")) or _text(data.get("email_address")),
        phone=_text(data.get("phone")),
    )


@dataclass(frozen=True)
class Refill:
    """A delivery for something a redaction erased: which mark it hit."""

    kind: str
    shopify_id: int
    shop_domain: str
    erased_by: int  # the compliance delivery's inbox id
    erased_at: datetime

    @property
    def topic(self) -> str:
        return SHOP_REDACT if self.kind == SHOP else CUSTOMERS_REDACT

    def line(self) -> str:
        what = f"shop {self.shop_domain}" if self.kind == SHOP else f"{self.kind} {self.shopify_id}"
        return f"{what} was erased by {self.topic} (inbox {self.erased_by})"


def erased_subject(session: Session, shop: str, subjects: Subjects) -> Refill | None:
    """The erasure a delivery of `shop` naming `subjects` runs into, if any: an order erased by its
    id (ids are global, whatever shop's header), a customer of that shop erased by id, or the shop
    itself redacted, when the delivery's subject dates from before (or does not say when)."""
    shop = shop.strip().lower()
    hits = [sa.and_(Erasure.kind == SHOP, Erasure.shopify_id == 0, Erasure.shop_domain == shop)]
    if subjects.order_ids:
        hits.append(sa.and_(Erasure.kind == ORDER, Erasure.shopify_id.in_(sorted(subjects.order_ids))))  # type: ignore[attr-defined]
    if subjects.customer_ids:
        hits.append(
            sa.and_(
                Erasure.kind == CUSTOMER,
                Erasure.shopify_id.in_(sorted(subjects.customer_ids)),  # type: ignore[attr-defined]
                Erasure.shop_domain == shop,
            )
        )
    found = list(session.exec(select(Erasure).where(sa.or_(*hits)).order_by(Erasure.kind)))  # type: ignore[attr-defined]
    for mark in found:  # shop last: an order's or customer's own mark is the better reason
        if mark.kind == SHOP and subjects.dated is not None and subjects.dated > mark.erased_at:
            continue  # made after the shop was redacted (installed again): new data, kept
        assert mark.inbox_id is not None
        return Refill(mark.kind, mark.shopify_id, mark.shop_domain, mark.inbox_id, mark.erased_at)
    return None


def without_personal_parts(body: bytes) -> bytes:
    """A delivery's body with the values of its personal keys (addresses, the customer, contact
    details, notes, line properties) set to null, the ids and the rest kept: what a delivery for an
    erased subject may store and act on. A body that is not JSON is replaced by a stub."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return _stub("refill", None)
    return json.dumps(scrub(data, []), ensure_ascii=False).encode()


def kept_body(session: Session, topic: str, shop: str, body: bytes) -> tuple[bytes, str | None]:
    """The body to store of a delivery that is kept unprocessed (unusable, or classified so at
    receipt), and a note: without its personal parts when it names something a redaction erased."""
    names = subject_kind(topic)
    refill = erased_subject(session, shop, subjects_of(names, body)) if names else None
    if refill is None:
        return body, None
    return without_personal_parts(body), f"personal parts removed: {refill.line()}"


def erase_again(
    session: Session,
    row: InboxEvent,
    refill: Refill,
    subjects: Subjects,
    *,
    stripped: bool,
    settings: Any,
    policy: ContactPolicy,
    now: datetime,
) -> str:
    """After a delivery for an erased subject was carried out (in the same transaction): erase its
    order(s) and customer again, the delivery's own inbox row included, and mark what it named as
    erased. `stripped`: its body had its personal parts removed before it was carried out, so
    nothing it wrote names anyone; otherwise (the redaction committed while this delivery was being
    carried out) the customer it names, by id and address, goes too. Returns the reason's words."""
    assert row.id is not None
    shop = row.shop_domain.strip().lower()
    ids = set(subjects.order_ids)
    orders = list(session.exec(select(Order).where(Order.shopify_id.in_(sorted(ids))))) if ids else []  # type: ignore[attr-defined]
    target = Target(shop=shop, whole_shop=False, orders=orders, listed_order_ids=ids)
    customer_ids = {o.customer_id for o in orders if o.customer_id is not None}
    if not stripped:
        if subjects.customer_ids:
            target.customer_shopify_id = min(subjects.customer_ids)
            customer_ids |= set(
                session.exec(
                    select(Customer.id).where(
                        Customer.shop_domain == shop,
                        Customer.shopify_id.in_(sorted(subjects.customer_ids)),  # type: ignore[union-attr]
                    )
                )
            )
        key = addresses.customer_key(subjects.email) or (subjects.email or "").strip().lower()
        if key:
            target.keys.add(key)
    if customer_ids:
        target.customers = list(session.exec(select(Customer).where(Customer.id.in_(sorted(customer_ids)))))  # type: ignore[union-attr]
    target.keys |= {o.email.strip().lower() for o in orders if o.email}
    target.keys |= {c.email_key for c in target.customers}
    _fill_needles(target, subjects.phone)
    redact(
        session,
        target,
        settings=settings,
        policy=policy,
        now=now,
        inbox_id=row.id,
        topic=refill.topic,
        again=True,
    )
    mark_erased(session, target, inbox_id=refill.erased_by, now=refill.erased_at)
    return f"erased again: {refill.line()}"


# -- the data request ---------------------------------------------------------------------------------


def export_dir(var_dir: Path, shop: str) -> Path:
    return var_dir / "privacy" / path_segment(shop.strip().lower(), "shop")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def export(session: Session, target: Target, payload: PrivacyPayload) -> dict[str, Any]:
    """Everything we hold about the customer, as one JSON-ready document."""
    order_ids = target.order_ids
    hashes = sorted(email_hash(k) for k in target.keys)
    doc: dict[str, Any] = {
        "request": {
            "topic": payload.topic,
            "shop_domain": payload.shop_domain,
            "customer_id": payload.customer_id,
            "email": payload.email,
            "data_request_id": payload.data_request_id,
            "orders_requested": list(payload.order_ids),
        },
        "customers": [
            {
                "shopify_id": c.shopify_id,
                "email": c.email,
                "first_name": c.first_name,
                "last_name": c.last_name,
                "locale": c.locale,
                "created_at": _iso(c.created_at),
            }
            for c in target.customers
        ],
        "orders": [],
        "consent": {"held": [], "records": []},
        "suppressions": [],
        "messages": [],
        "reviews": [],
        "survey_responses": [],
    }
    for o in target.orders:
        lines = session.exec(select(OrderLine).where(OrderLine.order_id == o.id).order_by(OrderLine.position))
        doc["orders"].append(
            {
                "shopify_id": o.shopify_id,
                "name": o.name,
                "placed_at": _iso(o.placed_at),
                "email": o.email,
                "currency": o.currency,
                "total": str(o.total),
                "shipping_address": o.shipping_address,
                "billing_address": (o.raw or {}).get("billing_address"),
                "note": o.note,
                "gift_message": o.gift_message,
                "lines": [
                    {"title": li.title, "sku": li.sku, "quantity": li.quantity, "properties": li.properties}
                    for li in lines
                ],
            }
        )
    if target.keys:
        keys = sorted(target.keys)
        for held in session.exec(
            select(CustomerConsent).where(
                CustomerConsent.shop_domain == target.shop,
                CustomerConsent.email_key.in_(keys),  # type: ignore[attr-defined]
            )
        ):
            doc["consent"]["held"].append(
                {"email": held.email_key, "state": held.state, "since": _iso(held.consent_updated_at)}
            )
        for rec in session.exec(
            select(ConsentRecord)
            .where(ConsentRecord.shop_domain == target.shop, ConsentRecord.email_key.in_(keys))  # type: ignore[attr-defined]
            .order_by(ConsentRecord.id)  # type: ignore[arg-type]
        ):
            doc["consent"]["records"].append(
                {
                    "email": rec.email_key,
                    "state": rec.state,
                    "opt_in_level": rec.opt_in_level,
                    "consent_updated_at": _iso(rec.consent_updated_at),
                    "source": rec.source,
                    "wording_version": rec.wording_version,
                    "applied": rec.applied,
                    "reason": rec.reason,
                }
            )
        for sup in session.exec(
            select(Suppression).where(
                Suppression.shop_domain == target.shop,
                Suppression.email_hash.in_(hashes),  # type: ignore[attr-defined]
            )
        ):
            doc["suppressions"].append(
                {"list": sup.list_name, "since": _iso(sup.created_at), "source": sup.source}
            )
    who = []
    if order_ids:
        who.append(OutboxMessage.order_id.in_(order_ids))  # type: ignore[union-attr]
    if target.keys:
        who.append(sa.func.lower(OutboxMessage.to_email).in_(sorted(target.keys)))
    if who:
        for m in session.exec(select(OutboxMessage).where(sa.or_(*who)).order_by(OutboxMessage.id)):  # type: ignore[arg-type]
            doc["messages"].append(
                {
                    "kind": m.kind,
                    "to": m.to_email,
                    "subject": m.subject,
                    "status": m.status,
                    "sent_at": _iso(m.sent_at),
                }
            )
    if order_ids:
        for r in session.exec(select(Review).where(Review.order_id.in_(order_ids))):  # type: ignore[union-attr]
            doc["reviews"].append(
                {
                    "platform": r.platform,
                    "rating": r.rating,
                    "title": r.title,
                    "body": r.body,
                    "author": r.author_display_name,
                    "created_at": _iso(r.source_created_at),
                }
            )
        for a in session.exec(select(SurveyResponse).where(SurveyResponse.order_id.in_(order_ids))):  # type: ignore[attr-defined]
            doc["survey_responses"].append(
                {"score": a.score, "scale": a.scale, "comment": a.comment, "answered_at": _iso(a.answered_at)}
            )
    return doc


def _write_export(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# -- one delivery -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivacyOutcome:
    request_id: int | None
    done_before: bool  # this delivery was carried out already: nothing more was done
    reason: str
    export_path: str | None = None
    staff_outbox_ids: list[int] = field(default_factory=list)


def carry_out(
    session: Session,
    row: InboxEvent,
    *,
    settings: Any,
    policy: ContactPolicy,
    renderer: Renderer,
    ops_emails: list[str],
    staff_locale: str,
    now: datetime,
) -> PrivacyOutcome:
    """Carry out one compliance delivery (InvalidPayload when its body cannot be used, or names
    another shop than the one it came for) and log it; a second time for the same delivery does
    nothing more."""
    assert row.id is not None
    done = session.exec(select(PrivacyRequest).where(PrivacyRequest.inbox_id == row.id)).first()
    if done is not None:
        return PrivacyOutcome(done.id, True, f"{row.topic} already carried out (privacy request {done.id})")
    payload = parse(row.topic, bytes(row.body))
    if payload.shop_domain != row.shop_domain.strip().lower():
        raise InvalidPayload(
            f"{row.topic} names shop {payload.shop_domain[:255]!r} but came for {row.shop_domain!r}: "
            "nothing done"
        )
    target = find_target(session, payload)
    first_key = addresses.customer_key(payload.email) or (payload.email or "").strip().lower() or None
    digest = email_hash(first_key) if first_key else None
    summary: dict[str, Any] = {"customers": len(target.customers), "orders": len(target.orders)}
    export_path: str | None = None
    staff_ids: list[int] = []
    if row.topic == DATA_REQUEST:
        doc = export(session, target, payload)
        name = f"data_request-{row.id:08d}-{(digest or 'no-address')[:16]}.json"
        path = export_dir(Path(settings.var_dir), payload.shop_domain) / name
        _write_export(path, doc)
        export_path = str(path)
        summary.update({k: len(v) for k, v in doc.items() if isinstance(v, list)})
        known = bool(target.customers or target.orders or doc["consent"]["records"])
        context = {
            "shop_domain": payload.shop_domain,
            "customer_id": payload.customer_id,
            "data_request_id": payload.data_request_id,
            "export_path": export_path,
            "known": known,
            "orders": len(target.orders),
            "inbox_id": row.id,
        }
        if ops_emails:
            rendered = renderer.render_email(STAFF_KIND, staff_locale, context)
            for address in ops_emails:
                queued = enqueue_staff(
                    session,
                    key=f"inbox-{row.id}",
                    kind=STAFF_KIND,
                    to_email=address,
                    rendered=rendered,
                    locale=staff_locale,
                )
                staff_ids.append(queued.id)
        reason = (
            f"data request: export written to {export_path}"
            + ("" if known else " (we hold nothing about this customer)")
            + (f"; ops told ({len(staff_ids)})" if staff_ids else "; no ops address configured")
        )
    else:
        erased = redact(
            session, target, settings=settings, policy=policy, now=now, inbox_id=row.id, topic=row.topic
        )
        summary["erased"] = erased.counts
        mark_erased(session, target, inbox_id=row.id, now=now)
        if row.topic == SHOP_REDACT:
            reason = f"shop redacted: {len(target.orders)} orders kept with personal fields erased"
        elif target.customers or target.orders or erased.counts.get("consent_records"):
            reason = f"customer redacted: {len(target.orders)} orders kept with personal fields erased"
        else:
            reason = "customer redacted: we held nothing about them (suppression kept)"
    request = PrivacyRequest(
        inbox_id=row.id,
        topic=row.topic,
        shop_domain=payload.shop_domain,
        # A redacted customer is named by nothing but the address's hash.
        customer_shopify_id=payload.customer_id if row.topic == DATA_REQUEST else None,
        email_hash=digest,
        summary=summary,
        export_path=export_path,
        done_at=now,
    )
    session.add(request)
    session.flush()
    return PrivacyOutcome(request.id, False, reason, export_path, staff_ids)
