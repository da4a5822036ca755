"""The data model: what arrived (inbox), what we know (customers, orders), what we owe (touchpoints,
outbox). Money is Decimal beside its currency; every timestamp is timezone-aware UTC."""

from __future__ import annotations

import secrets
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
    WAITING = "waiting"  # needs an order we have not seen yet; released (never dropped) when it arrives


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
    # A failed row waits until then before it is claimed again (backoff, migration 0006).
    next_attempt_at: datetime | None = ts_field(index=True)
    # When ops were told this row ran out of attempts (once; migration 0006).
    alerted_at: datetime | None = ts_field()


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
    # Shopify ids are global: an order id seen under one shop is never a second order (0006).
    __table_args__ = (sa.UniqueConstraint("shopify_id", name="uq_order_shopify_id"),)

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
    __table_args__ = (
        sa.UniqueConstraint("order_id", "kind", "seq", name="uq_touchpoint"),
        # The due query of timed contact (migration 0009): planned touchpoints by due time.
        sa.Index("ix_touchpoints_status_due", "status", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    kind: str = Field(max_length=32)
    seq: int = 1
    due_at: datetime = ts_field(nullable=False, index=True)
    status: str = Field(default=TouchpointStatus.PLANNED, max_length=16, index=True)
    reason: str | None = None
    policy_version: str = Field(max_length=32)
    created_at: datetime = ts_field(nullable=False, default_now=True)
    # Timed contact (migration 0009): the last verdict of the contact rules (aftercare/contact/rules.py,
    # `Verdict.as_dict()`), when it was made, and the time a hold postponed the touchpoint to (the
    # stale limit counts from it). None for touchpoints the rules never judged (transactional ones).
    verdict: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    decided_at: datetime | None = ts_field()
    held_until: datetime | None = ts_field()


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by a worker; the provider may or may not have it yet
    SENT = "sent"
    FAILED = "failed"  # permanent: the provider said no, or attempts ran out
    UNCERTAIN = "uncertain"  # a worker died mid-send; never resent automatically
    CANCELLED = "cancelled"  # its touchpoint was cancelled before any worker claimed it; never sent


class OutboxMessage(SQLModel, table=True):
    """One email: unique per touchpoint (a customer's) or per message key (a staff mail: one row per
    message per recipient, migration 0006). The only guard against contacting anyone twice."""

    __tablename__ = "outbox"
    __table_args__ = (sa.UniqueConstraint("message_key", name="uq_outbox_message_key"),)

    id: int | None = Field(default=None, primary_key=True)
    touchpoint_id: int | None = Field(default=None, foreign_key="touchpoints.id", unique=True)
    # Staff mails have no touchpoint: e.g. "approval_request:draft-12:ops@shop.example" (0006).
    message_key: str | None = Field(default=None, max_length=255)
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
    # Extra mail headers (migration 0009), e.g. List-Unsubscribe and List-Unsubscribe-Post (RFC 8058)
    # on every non-transactional mail. None: none.
    headers: dict[str, str] | None = Field(default=None, sa_type=sa.JSON)


# --- Shipping: fulfillments, refunds, warehouse hand-offs (migration 0002) ---------------------------


class InboxWait(SQLModel, table=True):
    """An inbox row parked until its order arrives: (shop, Shopify order id) -> the waiting row. A
    carrier event waits for its fulfillment instead (`fulfillment_shopify_id` set, migration 0004):
    its order arriving is not enough to apply it."""

    __tablename__ = "inbox_waits"

    id: int | None = Field(default=None, primary_key=True)
    inbox_id: int = Field(foreign_key="inbox.id", unique=True)
    shop_domain: str = Field(max_length=255)
    order_shopify_id: int = Field(sa_type=sa.BigInteger, index=True)
    fulfillment_shopify_id: int | None = Field(default=None, sa_type=sa.BigInteger, index=True)
    created_at: datetime = ts_field(nullable=False, default_now=True)


class Shipment(SQLModel, table=True):
    """One Shopify fulfillment: what left the warehouse, with which carrier, and when it arrived."""

    __tablename__ = "shipments"
    # Shopify ids are global: a fulfillment id is one shipment whatever shop header came with it (0006).
    __table_args__ = (sa.UniqueConstraint("shopify_id", name="uq_shipment_shopify_id"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    shop_domain: str = Field(max_length=255)
    shopify_id: int = Field(sa_type=sa.BigInteger)
    name: str | None = Field(default=None, max_length=64)
    status: str = Field(max_length=32)  # Shopify fulfillment status: pending, open, success, cancelled...
    shipment_status: str | None = Field(default=None, max_length=32)  # carrier's: in_transit, delivered...
    carrier: str | None = None  # Shopify's tracking_company
    tracking_numbers: list[str] = json_field(list)
    tracking_urls: list[str] = json_field(list)  # stored verbatim; only http(s) ones are ever linked
    lines: list[dict[str, Any]] = json_field(list)  # [{line_id, sku, title, variant_title, quantity}]
    shipped_at: datetime = ts_field(nullable=False)
    delivered_at: datetime | None = ts_field()  # a real delivered event
    estimated_delivery_at: datetime | None = ts_field()  # shipped_at + the carrier's transit days
    estimate_policy_version: str | None = Field(default=None, max_length=32)
    source_updated_at: datetime = ts_field(nullable=False)
    created_at: datetime = ts_field(nullable=False, default_now=True)
    updated_at: datetime = ts_field(nullable=False, default_now=True)
    raw: dict[str, Any] = json_field()


class ShipmentEvent(SQLModel, table=True):
    """One carrier event of a shipment (Shopify's FulfillmentEvent: in_transit, delivered, ...), kept
    for the timeline. Unique per Shopify event id, so a repeated webhook records it once (migration
    0004). `note` says when the event did not change the shipment (older than what we held)."""

    __tablename__ = "shipment_events"
    __table_args__ = (sa.UniqueConstraint("shop_domain", "shopify_id", name="uq_shipment_event_source"),)

    id: int | None = Field(default=None, primary_key=True)
    shipment_id: int = Field(foreign_key="shipments.id", index=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    shop_domain: str = Field(max_length=255)
    shopify_id: int = Field(sa_type=sa.BigInteger)
    status: str = Field(max_length=32)
    message: str | None = None
    location: str | None = None  # city, province, zip, country as the carrier gave them
    happened_at: datetime = ts_field(nullable=False)
    estimated_delivery_at: datetime | None = ts_field()  # the carrier's own estimate, when it gives one
    note: str | None = None
    created_at: datetime = ts_field(nullable=False, default_now=True)
    raw: dict[str, Any] = json_field()


class Refund(SQLModel, table=True):
    """One Shopify refund and the lines (and quantities) it gave back."""

    __tablename__ = "refunds"
    __table_args__ = (sa.UniqueConstraint("shop_domain", "shopify_id", name="uq_refund_source"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    shop_domain: str = Field(max_length=255)
    shopify_id: int = Field(sa_type=sa.BigInteger)
    note: str | None = None
    lines: list[dict[str, Any]] = json_field(list)  # [{line_id, quantity}]
    refunded_at: datetime = ts_field(nullable=False)
    created_at: datetime = ts_field(nullable=False, default_now=True)
    raw: dict[str, Any] = json_field()


class HandoffStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"  # the warehouse acknowledged this version
    FAILED = "failed"  # the warehouse refused it (its reason kept) or attempts ran out
    SUPERSEDED = "superseded"  # a newer version of the order replaced it before it was sent


class WarehouseHandoff(SQLModel, table=True):
    """One version of an order's shipping instruction for the warehouse: unique per (order, version);
    a new version is written only when the instruction's content changes before the order ships. A
    cancellation after the warehouse had the order is a version too (`instruction["action"] ==
    "cancel"`), at most one per order, sent through the same claim and retry machinery."""

    __tablename__ = "warehouse_handoffs"
    __table_args__ = (sa.UniqueConstraint("order_id", "version", name="uq_handoff_version"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    order_name: str = Field(max_length=64)
    version: int = 1
    digest: str = Field(max_length=64)
    instruction: dict[str, Any] = json_field()
    policy_version: str = Field(max_length=32)
    flags: list[str] = json_field(list)
    status: str = Field(default=HandoffStatus.PENDING, max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime = ts_field(nullable=False, default_now=True)
    claimed_at: datetime | None = ts_field()
    last_error: str | None = None
    reference: str | None = Field(default=None, max_length=255)  # the warehouse's own id, on ack
    created_at: datetime = ts_field(nullable=False, default_now=True)
    sent_at: datetime | None = ts_field()
    # When ops were told it was refused, or not acknowledged within the policy's window (0005).
    alerted_at: datetime | None = ts_field()


# --- Reviews: intake, drafts, decisions, the one reply (migration 0003) ------------------------------


class ReviewStatus(StrEnum):
    NEW = "new"  # stored and triaged; no approval flow has picked it up yet
    DRAFTING = "drafting"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"  # a reply is queued in review_replies
    PUBLISHED = "published"
    REJECTED = "rejected"  # an approver decided not to reply
    HISTORY = "history"  # imported from the past: triaged and kept, never sent for a reply


# The public page's id of a review: 128 random bits, URL-safe base64 (22 characters). The database id
# is sequential and would let anyone walk the table; this one cannot be guessed (migration 0007).
PUBLIC_ID_BYTES = 16


def new_public_id() -> str:
    """A fresh, unguessable public id for a review (`/reviews/<public id>`)."""
    return secrets.token_urlsafe(PUBLIC_ID_BYTES)


class Review(SQLModel, table=True):
    """One review from a platform, unique per (platform, platform review id), linked to its order and
    customer when its order reference names one of ours. Triage is stored beside it."""

    __tablename__ = "reviews"
    __table_args__ = (
        sa.UniqueConstraint("platform", "platform_review_id", name="uq_review_source"),
        sa.UniqueConstraint("public_id", name="uq_review_public_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Set when the row is built (and by the column default for a Core insert), never changed.
    public_id: str = Field(
        default_factory=new_public_id, max_length=64, sa_column_kwargs={"default": new_public_id}
    )
    platform: str = Field(max_length=32)
    platform_review_id: str = Field(max_length=128)
    shop_domain: str = Field(default="", max_length=255)
    order_id: int | None = Field(default=None, foreign_key="orders.id", index=True)
    customer_id: int | None = Field(default=None, foreign_key="customers.id", index=True)
    order_ref: str | None = Field(default=None, max_length=128)  # as the platform gave it
    product_ref: str | None = Field(default=None, max_length=255)
    rating: int
    title: str | None = None
    body: str = ""
    author_display_name: str | None = Field(default=None, max_length=255)
    language: str | None = Field(default=None, max_length=35)
    source_created_at: datetime = ts_field(nullable=False)
    received_at: datetime = ts_field(nullable=False, default_now=True)
    triage_negative: bool = False
    triage_score: float = 0.0
    triage_reasons: list[str] = json_field(list)
    status: str = Field(default=ReviewStatus.NEW, max_length=32, index=True)
    flow_run_id: str | None = Field(default=None, max_length=64)
    approval_requested_at: datetime | None = ts_field()
    escalated_at: datetime | None = ts_field()
    decided_at: datetime | None = ts_field()
    published_at: datetime | None = ts_field()
    policy_version: str | None = Field(default=None, max_length=32)  # the reviews policy triage ran under
    # The platform's revision of the review last applied (our own form numbers each edit, 0012): an
    # older revision processed late never overwrites a newer one. None: the platform has no revisions.
    revision: int | None = None


class ReviewDraft(SQLModel, table=True):
    """One reply draft for a review, with the checks it was given; attempts count up per review."""

    __tablename__ = "review_drafts"
    __table_args__ = (sa.UniqueConstraint("review_id", "attempt", name="uq_review_draft_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    review_id: int = Field(foreign_key="reviews.id", index=True)
    attempt: int = 1
    text: str
    language: str = Field(max_length=35)
    apologises: bool = False
    promised_actions: list[str] = json_field(list)
    risk_notes: list[str] = json_field(list)
    source: str = Field(max_length=16)  # llm | template | fallback | approver_edit
    guardrails: list[dict[str, Any]] = json_field(list)  # [{name, passed, detail}]
    needs_attention: bool = False
    instructions: str | None = None  # the redraft instructions that produced it
    created_at: datetime = ts_field(nullable=False, default_now=True)


class DecisionVia(StrEnum):
    PREFECT = "prefect"  # the Prefect UI's form or its API (resume_flow_run)
    PAGE = "page"  # our approval page, reached by a signed link (approval_links)


class ReviewDecision(SQLModel, table=True):
    """One approver decision on a review: who, when, what, and the text they approved or wrote; from
    where (`via`), and for a decision on our page the link and the client it came from. One
    decision per draft (0008): the first recorded stands, whoever made it and wherever."""

    __tablename__ = "review_decisions"
    __table_args__ = (sa.UniqueConstraint("draft_id", name="uq_review_decision_draft"),)

    id: int | None = Field(default=None, primary_key=True)
    review_id: int = Field(foreign_key="reviews.id", index=True)
    draft_id: int | None = Field(default=None, foreign_key="review_drafts.id")
    approver: str = Field(max_length=255)
    action: str = Field(max_length=16)  # approve | edit | redraft | reject
    text: str | None = None
    instructions: str | None = None
    reason: str | None = None
    guardrails: list[dict[str, Any]] = json_field(list)
    decided_at: datetime = ts_field(nullable=False, default_now=True)
    via: str = Field(default=DecisionVia.PREFECT, max_length=16)
    link_id: int | None = Field(default=None, foreign_key="approval_links.id")
    client_ip: str | None = Field(default=None, max_length=64)
    client_agent: str | None = Field(default=None, max_length=512)


class ApprovalLink(SQLModel, table=True):
    """A signed link to the approval page, issued to one approver for one draft of a review (one
    per draft per approver). The token carries `nonce`, which names this row; the link is used once
    (`used_at`, set by a compare-and-set together with the decision it made)."""

    __tablename__ = "approval_links"
    __table_args__ = (
        sa.UniqueConstraint("draft_id", "approver", name="uq_approval_link_draft_approver"),
        sa.UniqueConstraint("nonce", name="uq_approval_link_nonce"),
    )

    id: int | None = Field(default=None, primary_key=True)
    review_id: int = Field(foreign_key="reviews.id", index=True)
    draft_id: int = Field(foreign_key="review_drafts.id")
    approver: str = Field(max_length=255)
    nonce: str = Field(max_length=64)
    issued_at: datetime = ts_field(nullable=False, default_now=True)
    expires_at: datetime = ts_field(nullable=False)
    used_at: datetime | None = ts_field()


class ReplyStatus(StrEnum):
    PENDING = "pending"
    PUBLISHING = "publishing"  # claimed; the platform may or may not have it yet
    PUBLISHED = "published"
    FAILED = "failed"  # the platform refused it (its reason kept), or attempts ran out
    UNCERTAIN = "uncertain"  # sent, no answer: never re-posted automatically


class ReviewReply(SQLModel, table=True):
    """The shop's public reply to a review: unique per review, ever. The row is the only guard
    against posting twice, as the platforms' reply endpoints take no idempotency key."""

    __tablename__ = "review_replies"

    id: int | None = Field(default=None, primary_key=True)
    review_id: int = Field(foreign_key="reviews.id", unique=True)
    platform: str = Field(max_length=32)
    text: str
    approved_by: str = Field(max_length=255)
    status: str = Field(default=ReplyStatus.PENDING, max_length=16, index=True)
    platform_reply_id: str | None = Field(default=None, max_length=255)
    attempts: int = 0
    claimed_at: datetime | None = ts_field()  # when a worker took it to publish (0006)
    last_error: str | None = None
    created_at: datetime = ts_field(nullable=False, default_now=True)
    published_at: datetime | None = ts_field()


# --- Timed contact: consent, suppressions, surveys, privacy requests (migration 0009) --------------


class ConsentRecord(SQLModel, table=True):
    """Every consent event we were told of, kept (history): who (shop + address key), what state, as
    of when (Shopify's consent_updated_at), from which payload, under which wording. Whether it
    changed what we hold, and why, is `applied`/`reason` (aftercare/contact/consent.apply)."""

    __tablename__ = "consent_records"
    __table_args__ = (sa.Index("ix_consent_records_subject", "shop_domain", "email_key"),)

    id: int | None = Field(default=None, primary_key=True)
    shop_domain: str = Field(max_length=255)
    email_key: str = Field(max_length=320)
    customer_shopify_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    state: str = Field(max_length=32)
    opt_in_level: str | None = Field(default=None, max_length=32)
    consent_updated_at: datetime = ts_field(nullable=False)
    source: str = Field(max_length=64)  # a webhook topic, "order buyer_accepts_marketing", "unsubscribe page"
    weak: bool = False
    wording_version: str | None = Field(default=None, max_length=64)
    inbox_id: int | None = Field(default=None, foreign_key="inbox.id")
    applied: bool = False
    reason: str | None = None
    recorded_at: datetime = ts_field(nullable=False, default_now=True)


class CustomerConsent(SQLModel, table=True):
    """The consent state we hold for one address of one shop: the newest event that counts."""

    __tablename__ = "customer_consents"
    __table_args__ = (sa.UniqueConstraint("shop_domain", "email_key", name="uq_customer_consent"),)

    id: int | None = Field(default=None, primary_key=True)
    shop_domain: str = Field(max_length=255)
    email_key: str = Field(max_length=320)
    state: str = Field(max_length=32)
    opt_in_level: str | None = Field(default=None, max_length=32)
    consent_updated_at: datetime = ts_field(nullable=False)
    source: str = Field(max_length=64)
    weak: bool = False
    wording_version: str | None = Field(default=None, max_length=64)
    record_id: int | None = Field(default=None, foreign_key="consent_records.id")
    updated_at: datetime = ts_field(nullable=False, default_now=True)


class Suppression(SQLModel, table=True):
    """An address that left a list ("surveys", "review_requests", a class such as "feedback", or
    "all"). Keyed by a hash of the address, so it outlives a redaction that erases the address."""

    __tablename__ = "suppressions"
    __table_args__ = (sa.UniqueConstraint("shop_domain", "email_hash", "list_name", name="uq_suppression"),)

    id: int | None = Field(default=None, primary_key=True)
    shop_domain: str = Field(max_length=255)
    email_hash: str = Field(max_length=64)  # aftercare.contact.store.email_hash(email_key)
    list_name: str = Field(max_length=32)
    source: str = Field(max_length=64)  # "unsubscribe page", "list-unsubscribe post", "customers/redact"
    touchpoint_id: int | None = Field(default=None, foreign_key="touchpoints.id")
    created_at: datetime = ts_field(nullable=False, default_now=True)


class SurveyResponse(SQLModel, table=True):
    """One answer to a survey touchpoint. A customer may change their answer while the survey is
    open: every answer is kept, the newest (highest id) is the one that counts."""

    __tablename__ = "survey_responses"
    # One answer per number per survey (migration 0010): two posts of the same answer at once leave
    # one row (aftercare/surveys/answers.py).
    __table_args__ = (sa.UniqueConstraint("touchpoint_id", "seq", name="uq_survey_response_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    touchpoint_id: int = Field(foreign_key="touchpoints.id", index=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    seq: int = 1  # the answer's number within its survey, from 1; the highest counts (0010)
    scale: str = Field(max_length=16)  # "csat5" (1-5) or "nps10" (0-10), from the policy at send time
    score: int
    comment: str | None = None
    reasons: list[str] = json_field(list)
    answered_at: datetime = ts_field(nullable=False, default_now=True, index=True)
    client_agent: str | None = Field(default=None, max_length=512)


class PrivacyRequest(SQLModel, table=True):
    """A Shopify compliance webhook we carried out (customers/redact, shop/redact,
    customers/data_request): one per inbox delivery, with what was done."""

    __tablename__ = "privacy_requests"
    __table_args__ = (sa.UniqueConstraint("inbox_id", name="uq_privacy_request_inbox"),)

    id: int | None = Field(default=None, primary_key=True)
    inbox_id: int = Field(foreign_key="inbox.id")
    topic: str = Field(max_length=64)
    shop_domain: str = Field(max_length=255)
    customer_shopify_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    email_hash: str | None = Field(default=None, max_length=64)
    summary: dict[str, Any] = json_field()
    export_path: str | None = None
    done_at: datetime = ts_field(nullable=False, default_now=True)


class Erasure(SQLModel, table=True):
    """One order, customer or shop a customers/redact or shop/redact erased, by its Shopify id only
    (a shop: id 0): a later delivery for it (a retry, a replayed body, an order listed for erasure
    that we had not stored) is carried out without its personal parts and erased again
    (aftercare.contact.privacy). It names no one: an id is not personal without what was erased."""

    __tablename__ = "erasures"
    __table_args__ = (sa.UniqueConstraint("kind", "shopify_id", "shop_domain", name="uq_erasure_subject"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # order | customer | shop
    shopify_id: int = Field(sa_type=sa.BigInteger)
    shop_domain: str = Field(max_length=255)
    inbox_id: int = Field(foreign_key="inbox.id")  # the compliance delivery that erased it
    erased_at: datetime = ts_field(nullable=False, default_now=True)


# --- Our own review form (issue 11, item 4: the form that closes the loop; migration 0012) ---------


class ReviewRevision(SQLModel, table=True):
    """One review of one product of an order as the customer sent it from our review form
    (/r/<token>): every version is kept, numbered per (order, product); the highest is the review.
    Each revision enters the inbox as a review delivery (`inbox_id`, in the same transaction), so
    it is processed, triaged and answered like a webhook review (aftercare/reviews/own_form.py)."""

    __tablename__ = "review_revisions"
    __table_args__ = (sa.UniqueConstraint("order_id", "product_ref", "seq", name="uq_review_revision_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    touchpoint_id: int | None = Field(default=None, foreign_key="touchpoints.id")
    product_ref: str = Field(max_length=255)
    seq: int = 1
    review_key: str = Field(max_length=128)  # the review's platform_review_id (platform "own")
    rating: int
    title: str | None = None
    body: str = ""
    display_name: str | None = Field(default=None, max_length=255)
    submitted_at: datetime = ts_field(nullable=False)
    inbox_id: int | None = Field(default=None, foreign_key="inbox.id")


class ModerationReason(StrEnum):
    """The only reasons a review is hidden from our public pages: never its rating or its tone
    (16 CFR 465.7(b))."""

    ABUSE = "abuse"  # threats, slurs, spam, content that is not a review
    PERSONAL_DATA = "personal_data"  # someone's personal data the masking did not catch


class ReviewModeration(SQLModel, table=True):
    """A moderator hid a review from the public pages, or showed it again; the newest row counts,
    every one is kept. The database refuses any reason but abuse and personal data (0012)."""

    __tablename__ = "review_moderations"
    __table_args__ = (
        sa.CheckConstraint("action IN ('hide', 'show')", name="ck_review_moderation_action"),
        sa.CheckConstraint("reason IN ('abuse', 'personal_data')", name="ck_review_moderation_reason"),
    )

    id: int | None = Field(default=None, primary_key=True)
    review_id: int = Field(foreign_key="reviews.id", index=True)
    action: str = Field(max_length=8)  # hide | show
    reason: str = Field(max_length=16)  # a ModerationReason
    note: str | None = None
    moderator: str = Field(max_length=255)
    decided_at: datetime = ts_field(nullable=False)


# --- Service recovery: one case per low survey answer (issue 11 item 5, migration 0013) --------------

# The platform of a review row that is a private reply to a customer's own complaint (a recovery
# case's apology): drafted, checked and approved like a public reply, mailed to the customer through
# the outbox instead of published, never shown on a public page, and escalated by its case's clock.
PRIVATE_REPLY_PLATFORM = "private"
# The touchpoint of that mail (policies/contact.yaml: transactional). It answers what the customer
# told us, so the order's fate never calls it off: a cancellation or a refund (often the very remedy
# the apology announces) ends the order's own mails (`ORDER_ENDING_SPARES`), not this one.
COMPLAINT_REPLY = "complaint_reply"
ORDER_ENDING_SPARES = (COMPLAINT_REPLY,)


class RecoveryStatus(StrEnum):
    OPEN = "open"  # no answer has gone to the customer yet (waiting for approval, or rejected)
    ANSWERED = "answered"  # an approved apology is in the outbox (or sent)


class RecoveryCase(SQLModel, table=True):
    """A survey answer at or below the recovery policy's threshold, or with a negative comment:
    one case per survey (unique touchpoint), whatever the customer answers afterwards. Later answers
    are recorded on the case (`answers`), never open a second one and never close it. The private
    apology waits for a person as a review row on the `private` platform (`review_id`)."""

    __tablename__ = "recovery_cases"
    __table_args__ = (
        sa.UniqueConstraint("touchpoint_id", name="uq_recovery_case_survey"),
        sa.UniqueConstraint("review_id", name="uq_recovery_case_review"),
        sa.Index("ix_recovery_cases_status_due", "status", "first_answer_due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    touchpoint_id: int = Field(foreign_key="touchpoints.id")
    order_id: int = Field(foreign_key="orders.id", index=True)
    review_id: int | None = Field(default=None, foreign_key="reviews.id")
    scale: str = Field(max_length=16)
    score: int  # the score of the answer that opened the case
    response_id: int = Field(foreign_key="survey_responses.id")
    reasons: list[str] = json_field(list)  # why it opened: "score 2 <= 2", "negative comment: ..."
    # Every later answer: [{response_id, seq, score, at, at_or_below_threshold, negative_comment}].
    answers: list[dict[str, Any]] = json_field(list)
    status: str = Field(default=RecoveryStatus.OPEN, max_length=16, index=True)
    opened_at: datetime = ts_field(nullable=False)
    first_answer_due_at: datetime = ts_field(nullable=False)  # opened_at + N business hours
    escalated_at: datetime | None = ts_field()
    answered_at: datetime | None = ts_field()
    apology_outbox_id: int | None = Field(default=None, foreign_key="outbox.id")
    policy_version: str = Field(max_length=32)


# --- Review requests (issue 11, items 1-3: the request, no gating, where the customer writes;
# migration 0011) -------------------------------------------------------------------------------------


class ReviewRequestItem(SQLModel, table=True):
    """One product a review request asked the customer about (aftercare/reviews/requests.py): the
    per-product memory (a product asked about within the policy's months is not asked about again)
    and what the reminder lists. Nothing personal: the customer is reached through the order, so a
    redaction (which unlinks the order from its customer) leaves nothing here that names anyone."""

    __tablename__ = "review_request_items"
    __table_args__ = (sa.UniqueConstraint("touchpoint_id", "product_key", name="uq_review_request_item"),)

    id: int | None = Field(default=None, primary_key=True)
    touchpoint_id: int = Field(foreign_key="touchpoints.id", index=True)
    order_id: int = Field(foreign_key="orders.id", index=True)
    line_id: int = Field(sa_type=sa.BigInteger)  # the Shopify line item asked about
    # "product:<Shopify product id>", else "sku:<SKU>", else "title:<title>" (requests.product_key).
    product_key: str = Field(max_length=300, index=True)
    asked_at: datetime = ts_field(nullable=False)


class InvitationStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed; the platform may or may not have it yet
    SENT = "sent"
    FAILED = "failed"  # the platform refused it (its reason kept), or it could not be built
    UNCERTAIN = "uncertain"  # sent, no clear answer: never sent again automatically
    CANCELLED = "cancelled"  # the order was refunded or cancelled before it went


class ReviewInvitation(SQLModel, table=True):
    """A review invitation a platform mails on the shop's behalf (Trustpilot's Invitation API): one
    per order, ever (the unique order_id), claimed pending -> sending like the outbox. The consumer's
    address and name are read from the order when it is sent, never stored here."""

    __tablename__ = "review_invitations"
    __table_args__ = (
        sa.UniqueConstraint("order_id", name="uq_review_invitation_order"),
        sa.UniqueConstraint("touchpoint_id", name="uq_review_invitation_touchpoint"),
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="orders.id")
    touchpoint_id: int = Field(foreign_key="touchpoints.id")
    platform: str = Field(max_length=32)
    locale: str = Field(max_length=16)
    send_at: datetime = ts_field(nullable=False)  # the moment the contact rules let it go
    policy_version: str = Field(max_length=32)
    status: str = Field(default=InvitationStatus.PENDING, max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime = ts_field(nullable=False, index=True)
    claimed_at: datetime | None = ts_field()
    sent_at: datetime | None = ts_field()
    last_error: str | None = None
    created_at: datetime = ts_field(nullable=False, default_now=True)
