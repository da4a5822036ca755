"""The data model: what arrived (inbox), what we know (customers, orders), what we owe (touchpoints,
outbox). Money is Decimal beside its currency; every timestamp is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator):
    """Stores aware datetimes as UTC and always returns them aware (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a timezone-aware column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ts_field(*, nullable: bool = True, default_now: bool = False, index: bool = False) -> Any:
    kwargs: dict[str, Any] = {"sa_type": UTCDateTime, "nullable": nullable, "index": index}
    if default_now:
        kwargs["default_factory"] = utcnow
    else:
        kwargs["default"] = None
    return Field(**kwargs)


def money_field(*, default: Decimal | None = Decimal("0")) -> Any:
    return Field(default=default, sa_type=sa.Numeric(18, 4))


def json_field(default_factory: Any = dict) -> Any:
    return Field(default_factory=default_factory, sa_type=sa.JSON)


class InboxStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    IGNORED = "ignored"  # valid but not for us (unknown topic)
    INVALID = "invalid"  # authentic but unusable payload; kept for ops, never retried
    FAILED = "failed"  # processing raised; retried by the sweep until max attempts


class InboxEvent(SQLModel, table=True):
    """One webhook delivery, stored before it is acknowledged. The raw body is kept verbatim."""

    __tablename__ = "inbox"
    __table_args__ = (
        sa.UniqueConstraint("source", "delivery_id", name="uq_inbox_delivery"),
        sa.UniqueConstraint("source", "event_id", name="uq_inbox_event"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=32)
    delivery_id: str = Field(max_length=128)
    event_id: str | None = Field(default=None, max_length=128)
    topic: str = Field(max_length=64, index=True)
    shop_domain: str = Field(default="", max_length=255)
    triggered_at: datetime | None = ts_field()
    received_at: datetime = ts_field(nullable=False, default_now=True)
    body: bytes = Field(sa_type=sa.LargeBinary)
    status: str = Field(default=InboxStatus.PENDING, max_length=16, index=True)
    reason: str | None = Field(default=None)
    attempts: int = 0
    claimed_at: datetime | None = ts_field()
    processed_at: datetime | None = ts_field()
    subject_ref: str | None = Field(default=None, max_length=128, index=True)


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    __table_args__ = (sa.UniqueConstraint("shop_domain", "email_key", name="uq_customer_email"),)

    id: int | None = Field(default=None, primary_key=True)
    shop_domain: str = Field(max_length=255)
    # Lower-cased email identifies a customer across guest and account checkouts.
    email_key: str = Field(max_length=320)
    shopify_id: int | None = Field(default=None, sa_type=sa.BigInteger, index=True)
    email: str = Field(max_length=320)
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = Field(default=None, max_length=16)
    created_at: datetime = ts_field(nullable=False, default_now=True)
    updated_at: datetime = ts_field(nullable=False, default_now=True)


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (sa.UniqueConstraint("shop_domain", "shopify_id", name="uq_order_source"),)

    id: int | None = Field(default=None, primary_key=True)
    shop_domain: str = Field(max_length=255)
    shopify_id: int = Field(sa_type=sa.BigInteger)
    name: str = Field(max_length=64, index=True)
    number: int | None = None
    customer_id: int | None = Field(default=None, foreign_key="customers.id", index=True)
    email: str | None = Field(default=None, max_length=320)
    locale: str = Field(default="en", max_length=16)
    currency: str = Field(max_length=3)
    subtotal: Decimal = money_field()
    total_discounts: Decimal = money_field()
    total_shipping: Decimal = money_field()
    total_tax: Decimal = money_field()
    total: Decimal = money_field()
    taxes_included: bool = False
    financial_status: str | None = Field(default=None, max_length=32)
    fulfillment_status: str | None = Field(default=None, max_length=32)
    requires_shipping: bool = True
    shipping_address: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    shipping_method: str | None = None
    is_gift: bool = False
    gift_message: str | None = None
    note: str | None = None
    discount_codes: list[str] = json_field(list)
    is_test: bool = False
    flags: list[str] = json_field(list)
    placed_at: datetime = ts_field(nullable=False)
    source_updated_at: datetime = ts_field(nullable=False)
    cancelled_at: datetime | None = ts_field()
    purchase_seq: int = 1  # this customer's Nth order with the shop
    created_at: datetime = ts_field(nullable=False, default_now=True)
    updated_at: datetime = ts_field(nullable=False, default_now=True)
    raw: dict[str, Any] = json_field()


class OrderLine(SQLModel, table=True):
    __tablename__ = "order_lines"
    __table_args__ = (sa.UniqueConstraint("order_id", "shopify_id", name="uq_order_line"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    shopify_id: int = Field(sa_type=sa.BigInteger)
    position: int = 0
    title: str
    variant_title: str | None = None
    sku: str | None = None
    quantity: int
    price: Decimal = money_field()
    requires_shipping: bool = True
    properties: list[dict[str, Any]] = json_field(list)


class TouchpointStatus(StrEnum):
    PLANNED = "planned"
    DONE = "done"
    SKIPPED = "skipped"  # nothing to send (no email); reason says why
    FAILED = "failed"  # the provider refused the message; reason says why
    CANCELLED = "cancelled"


class Touchpoint(SQLModel, table=True):
    """Something we owe a customer, planned by policy: unique per (order, kind, sequence)."""

    __tablename__ = "touchpoints"
    __table_args__ = (sa.UniqueConstraint("order_id", "kind", "seq", name="uq_touchpoint"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    kind: str = Field(max_length=32)
    seq: int = 1
    due_at: datetime = ts_field(nullable=False, index=True)
    status: str = Field(default=TouchpointStatus.PLANNED, max_length=16, index=True)
    reason: str | None = None
    policy_version: str = Field(max_length=32)
    created_at: datetime = ts_field(nullable=False, default_now=True)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by a worker; the provider may or may not have it yet
    SENT = "sent"
    FAILED = "failed"  # permanent: the provider said no, or attempts ran out
    UNCERTAIN = "uncertain"  # a worker died mid-send; never resent automatically


class OutboxMessage(SQLModel, table=True):
    """One email, unique per touchpoint: the only guard against contacting a customer twice."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    touchpoint_id: int = Field(foreign_key="touchpoints.id", unique=True)
    order_id: int | None = Field(default=None, foreign_key="orders.id", index=True)
    order_name: str | None = Field(default=None, max_length=64)
    kind: str = Field(max_length=32)
    to_email: str = Field(max_length=320)
    to_name: str | None = None
    subject: str
    text_body: str
    html_body: str
    locale: str = Field(default="en", max_length=16)
    is_test: bool = False
    status: str = Field(default=OutboxStatus.PENDING, max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime = ts_field(nullable=False, default_now=True, index=True)
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_at: datetime | None = ts_field()
    provider: str | None = Field(default=None, max_length=32)
    provider_message_id: str | None = Field(default=None, max_length=255)
    last_error: str | None = None
    created_at: datetime = ts_field(nullable=False, default_now=True)
    sent_at: datetime | None = ts_field()
