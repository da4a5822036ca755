"""Order receipt: turn an orders/* delivery into order state, check it, and plan and write the one
confirmation the customer is owed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from aftercare.models import Customer, Order, OrderLine, Touchpoint, TouchpointStatus, utcnow
from aftercare.orders.inventory import InventoryPort, StockRequest
from aftercare.orders.shopify import ShopifyOrder
from aftercare.policies import MessagesPolicy, Policies
from aftercare.rendering import RenderedEmail, Renderer
from aftercare.spine import addresses

CONFIRMATION = "order_confirmation"

FLAG_MISSING_EMAIL = "missing_email"
FLAG_MISSING_ADDRESS = "missing_shipping_address"
FLAG_PAYMENT_PENDING = "payment_pending"
FLAG_NO_LINES = "no_line_items"
FLAG_STOCK_SHORT = "stock_short"
FLAG_EMAIL_UNUSUAL = addresses.FLAG_EMAIL_UNUSUAL  # kept as written, mailed; the provider judges it
FLAG_EMAIL_NOT_ADDRESS = addresses.FLAG_EMAIL_NOT_ADDRESS  # kept, never mailed (spine.addresses)

PAID_STATUSES = {"paid", "partially_paid", "partially_refunded"}
PENDING_STATUSES = {"pending", "authorized"}


@dataclass
class UpsertResult:
    order: Order
    created: bool
    applied: bool  # False when the delivery was older than what we hold
    reason: str | None = None


def _gift(parsed: ShopifyOrder, policy: MessagesPolicy) -> tuple[bool, str | None]:
    message_names = {n.strip().lower() for n in policy.gift_message_attributes}
    flag_names = {n.strip().lower() for n in policy.gift_flag_attributes}
    message: str | None = None
    flagged = False
    for attr in parsed.note_attributes:
        key = attr.name.strip().lower()
        value = "" if attr.value is None else str(attr.value).strip()
        if key in message_names and value:
            message = value
        elif key in flag_names and value.lower() not in ("", "no", "false", "0", "いいえ", "不要"):
            flagged = True
    return flagged or message is not None, message


def _upsert_customer(
    session: Session, shop_domain: str, parsed: ShopifyOrder, locale: str
) -> Customer | None:
    """The customer of this order, recognised across orders by the lower-cased address; none when
    the order has no address a mail could be attempted to."""
    email = parsed.customer_email
    key = addresses.customer_key(email)
    if email is None or key is None:
        return None
    customer = session.exec(
        select(Customer).where(Customer.shop_domain == shop_domain, Customer.email_key == key)
    ).first()
    src = parsed.customer
    if customer is None:
        customer = Customer(shop_domain=shop_domain, email_key=key, email=email)
    if src is not None:
        customer.shopify_id = src.id or customer.shopify_id
        customer.first_name = src.first_name or customer.first_name
        customer.last_name = src.last_name or customer.last_name
    customer.locale = parsed.customer_locale or customer.locale or locale
    customer.updated_at = utcnow()
    session.add(customer)
    session.flush()
    return customer


def _purchase_seq(session: Session, order: Order, parsed: ShopifyOrder) -> int:
    """This customer's Nth purchase: what we have seen, or what Shopify says, whichever is more."""
    seen = 1
    if order.customer_id is not None:
        seen = session.exec(
            select(sa.func.count())
            .select_from(Order)
            .where(
                Order.customer_id == order.customer_id,
                Order.placed_at <= order.placed_at,
                Order.cancelled_at.is_(None),  # type: ignore[union-attr]
                Order.is_test.is_(False),  # type: ignore[attr-defined]
            )
        ).one()
    shopify_count = parsed.customer.orders_count if parsed.customer and parsed.customer.orders_count else 0
    return max(seen, shopify_count, 1)


def lock_order(session: Session, order_shopify_id: int) -> Order | None:
    """The order with this Shopify id (ids are global: whatever shop header a delivery came with),
    held by this transaction until it ends. Every handler that decides from an order's state (is this
    delivery older than what we hold, is the order cancelled, what is planned) takes it first, so two
    workers (the deployment and `aftercare process` beside it) give the result one would: the second
    waits here, then reads what the first committed.

    PostgreSQL: SELECT ... FOR UPDATE. An order not there yet cannot be locked: of two first inserts
    one loses on `uq_order_shopify_id` and `process_row` runs it again, finding the winner's row.
    SQLite: a write statement comes first, so the transaction holds the database's write lock before
    it reads (pysqlite begins a transaction only at the first write: a read before it may be stale by
    the time we write, when another process shares the file)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            sa.update(Order)
            .where(Order.shopify_id == order_shopify_id)  # type: ignore[arg-type]
            .values(shopify_id=Order.shopify_id)
            .execution_options(synchronize_session=False)
        )
    query = select(Order).where(Order.shopify_id == order_shopify_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.exec(query.execution_options(populate_existing=True)).first()


def upsert_order(
    session: Session, *, shop_domain: str, parsed: ShopifyOrder, policies: Policies
) -> UpsertResult:
    """Create or update the order from a delivery, under the order's lock (`lock_order`). A delivery
    whose `updated_at` is older than the state we hold changes nothing (webhooks arrive out of order).
    Shopify ids are global: a delivery of a known order under another (configured) shop's header
    updates that order, which keeps its own shop; `shop_domain` names the shop of a new order."""
    order = lock_order(session, parsed.id)
    created = order is None
    if order is not None and parsed.updated_at < order.source_updated_at:
        return UpsertResult(
            order,
            created=False,
            applied=False,
            reason=f"stale: updated_at {parsed.updated_at.isoformat()} is older than "
            f"{order.source_updated_at.isoformat()}",
        )
    address = parsed.shipping_address or parsed.billing_address
    locale = policies.messages.pick_locale(
        parsed.customer_locale,
        parsed.customer.locale if parsed.customer else None,
        country_code=address.country_code if address else None,
    )
    customer = _upsert_customer(session, order.shop_domain if order else shop_domain, parsed, locale)
    is_gift, gift_message = _gift(parsed, policies.messages)
    if order is None:
        order = Order(
            shop_domain=shop_domain,
            shopify_id=parsed.id,
            name=parsed.name,
            currency=parsed.currency,
            placed_at=parsed.processed_at or parsed.created_at,
            source_updated_at=parsed.updated_at,
        )
    order.name = parsed.name
    order.number = parsed.order_number
    order.customer_id = customer.id if customer else None
    order.email = addresses.stored(parsed.customer_email)
    order.locale = locale
    order.currency = parsed.currency.upper()
    order.subtotal = parsed.subtotal_price
    order.total_discounts = parsed.total_discounts
    order.total_shipping = parsed.total_shipping
    order.total_tax = parsed.total_tax
    order.total = parsed.total_price
    order.taxes_included = parsed.taxes_included
    order.financial_status = parsed.financial_status
    order.fulfillment_status = parsed.fulfillment_status
    order.shipping_address = parsed.shipping_address.model_dump() if parsed.shipping_address else None
    order.shipping_method = parsed.shipping_lines[0].title if parsed.shipping_lines else None
    order.is_gift = is_gift
    order.gift_message = gift_message
    order.note = parsed.note
    order.discount_codes = [d.code for d in parsed.discount_codes if d.code]
    order.is_test = parsed.test
    order.cancelled_at = parsed.cancelled_at
    order.placed_at = parsed.processed_at or parsed.created_at
    order.source_updated_at = parsed.updated_at
    order.updated_at = utcnow()
    order.raw = parsed.model_dump(mode="json")
    session.add(order)
    session.flush()
    if parsed.line_items is not None:
        _replace_lines(session, order, parsed)
    order.purchase_seq = _purchase_seq(session, order, parsed)
    session.add(order)
    session.flush()
    return UpsertResult(order, created=created, applied=True)


def _replace_lines(session: Session, order: Order, parsed: ShopifyOrder) -> None:
    assert order.id is not None and parsed.line_items is not None
    existing = {
        line.shopify_id: line
        for line in session.exec(select(OrderLine).where(OrderLine.order_id == order.id))
    }
    keep = set()
    for position, item in enumerate(parsed.line_items):
        line = existing.get(item.id) or OrderLine(
            order_id=order.id, shopify_id=item.id, title=item.title, quantity=0
        )
        line.position = position
        line.title = item.title
        line.variant_title = item.variant_title
        line.sku = item.sku
        line.quantity = item.quantity
        line.price = item.price
        line.requires_shipping = item.requires_shipping
        line.properties = [p.model_dump(mode="json") for p in item.properties]
        session.add(line)
        keep.add(item.id)
    for shopify_id, line in existing.items():
        if shopify_id not in keep:
            session.delete(line)
    session.flush()


def lines_of(session: Session, order: Order) -> list[OrderLine]:
    return list(
        session.exec(select(OrderLine).where(OrderLine.order_id == order.id).order_by(OrderLine.position))
    )


def check_order(order: Order, lines: list[OrderLine], inventory: InventoryPort) -> list[str]:
    """What staff would check before confirming; each problem becomes a flag on the order."""
    flags: list[str] = []
    if not order.email:
        flags.append(FLAG_MISSING_EMAIL)
    elif (flag := addresses.judge(order.email).flag) is not None:
        flags.append(flag)
    if not lines:
        flags.append(FLAG_NO_LINES)
    if any(line.requires_shipping for line in lines) and not _address_usable(order.shipping_address):
        flags.append(FLAG_MISSING_ADDRESS)
    if (order.financial_status or "") in PENDING_STATUSES:
        flags.append(FLAG_PAYMENT_PENDING)
    short = inventory.shortages([StockRequest(line.sku, line.title, line.quantity) for line in lines])
    flags.extend(f"{FLAG_STOCK_SHORT}:{s.sku or s.title}" for s in short)
    return flags


def _address_usable(address: dict[str, Any] | None) -> bool:
    """A street line plus a city or postcode: enough for a carrier label."""
    return bool(address and address.get("address1") and (address.get("city") or address.get("zip")))


def plan_confirmation(session: Session, order: Order, policies: Policies) -> Touchpoint:
    """The confirmation touchpoint for an order (created once; unique per order, kind, seq)."""
    assert order.id is not None
    values = {
        "order_id": order.id,
        "kind": CONFIRMATION,
        "seq": 1,
        "due_at": utcnow(),
        "status": TouchpointStatus.PLANNED,
        "policy_version": policies.messages.version,
        "created_at": utcnow(),
    }
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(Touchpoint).values(**values).on_conflict_do_nothing(index_elements=["order_id", "kind", "seq"])
    )
    return session.exec(
        select(Touchpoint).where(
            Touchpoint.order_id == order.id, Touchpoint.kind == CONFIRMATION, Touchpoint.seq == 1
        )
    ).one()


def payment_state(order: Order) -> str:
    status = order.financial_status or ""
    if status in PAID_STATUSES:
        return "paid"
    if status in PENDING_STATUSES:
        return "pending"
    return "other"


@dataclass
class ConfirmationContext:
    order: Order
    lines: list[OrderLine]
    customer: Customer | None
    expected_ship_date: date
    flags: list[str] = field(default_factory=list)
    # Seed 004: one short line about the next gift season, decided by the contact rules
    # (aftercare.contact.store.seasonal_line_for); None: no line.
    seasonal_line: str | None = None

    def as_template_vars(self, shop_name: str) -> dict[str, Any]:
        o = self.order
        address = addresses.with_clean_names(o.shipping_address)
        return {
            "shop_name": shop_name,
            "order_name": o.name,
            "customer_name": _display_name(self.customer, address, o.locale),
            "lines": [
                {
                    "title": line.title,
                    "variant": line.variant_title,
                    "quantity": line.quantity,
                    "price": line.price,
                    "line_total": line.price * line.quantity,
                }
                for line in self.lines
            ],
            "currency": o.currency,
            "subtotal": o.subtotal,
            "discounts": o.total_discounts,
            "discount_codes": o.discount_codes,
            "shipping": o.total_shipping,
            "shipping_method": o.shipping_method,
            "tax": o.total_tax,
            "taxes_included": o.taxes_included,
            "total": o.total,
            "address": address if _address_usable(address) else None,
            "requires_shipping": any(line.requires_shipping for line in self.lines),
            "expected_ship_date": self.expected_ship_date,
            "payment_state": payment_state(o),
            "purchase_seq": o.purchase_seq,
            "is_gift": o.is_gift,
            "gift_message": o.gift_message,
            "note": o.note,
            "is_test": o.is_test,
            "seasonal_line": self.seasonal_line,
        }


def _display_name(customer: Customer | None, address: dict[str, Any], locale: str) -> str | None:
    """The customer's name in the reader's order: family name first in Japanese. Cleaned of control
    characters: it goes into the To header and the templates."""
    first = (customer.first_name if customer else None) or address.get("first_name")
    last = (customer.last_name if customer else None) or address.get("last_name")
    parts = (last, first) if locale == "ja" else (first, last)
    name = " ".join(p for p in map(addresses.clean_name, parts) if p)
    return name or addresses.clean_name(address.get("name"))


def why_not_mailed(order: Order) -> str | None:
    """Why no message can be attempted to this order's customer (the touchpoint's skip reason), or
    None when one can: an unusual address is attempted and left to the provider."""
    if not order.email:
        return "no customer email on the order"
    verdict = addresses.judge(order.email)
    if not verdict.sendable:
        return f"the customer's email {order.email[:80]!r} is not an address ({verdict.reason}): nothing sent"
    return None


def customer_display_name(customer: Customer | None, order: Order) -> str | None:
    """How a message to this order's customer addresses them (family name first in Japanese)."""
    return _display_name(customer, order.shipping_address or {}, order.locale)


def render_confirmation(ctx: ConfirmationContext, renderer: Renderer, shop_name: str) -> RenderedEmail:
    return renderer.render_email(CONFIRMATION, ctx.order.locale, ctx.as_template_vars(shop_name))
