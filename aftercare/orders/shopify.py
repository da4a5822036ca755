"""Shopify's webhook contract: signatures on the raw body, headers, and the order resource's shape."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aftercare.errors import InvalidPayload
from aftercare.spine import addresses

ORDER_TOPICS = frozenset({"orders/create", "orders/paid", "orders/updated", "orders/cancelled"})
FULFILLMENT_TOPICS = frozenset({"fulfillments/create", "fulfillments/update"})
REFUND_TOPICS = frozenset({"refunds/create"})
# Carrier events of a fulfillment (Shopify's FulfillmentEvent): in_transit, delivered, failure, ...
FULFILLMENT_EVENT_TOPICS = frozenset({"fulfillment_events/create"})
KNOWN_TOPICS = ORDER_TOPICS | FULFILLMENT_TOPICS | REFUND_TOPICS | FULFILLMENT_EVENT_TOPICS


def sign(secret: str, body: bytes) -> str:
    """The X-Shopify-Hmac-Sha256 value Shopify would send for this body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(secret: str, body: bytes, header_value: str | None) -> bool:
    """Constant-time check of a webhook signature over the raw bytes."""
    if not header_value or not secret:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header_value.strip().encode())


_BIGINT = 2**63  # ids are stored as PostgreSQL BIGINT
# A Shopify id: positive and within BIGINT, so an absurd one is refused as invalid with the field named
# instead of failing the database insert (and being retried) later.
ShopifyId = Annotated[int, Field(gt=0, lt=_BIGINT)]
# Counts we store in INTEGER columns (quantities, order numbers): within 32 bits, for the same reason.
Count = Annotated[int, Field(ge=0, lt=2**31)]
# Money is stored as NUMERIC(18, 4): an amount beyond it (or NaN, Infinity) is refused here, naming the
# field, instead of failing the insert on every retry.
_MONEY_LIMIT = Decimal(10**13)
Money = Annotated[Decimal, Field(gt=-_MONEY_LIMIT, lt=_MONEY_LIMIT, allow_inf_nan=False)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ShopifyAddress(_Lenient):
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    address1: str | None = None
    address2: str | None = None
    city: str | None = None
    province: str | None = None
    province_code: str | None = None
    zip: str | None = None
    country: str | None = None
    country_code: str | None = None
    phone: str | None = None


class ShopifyProperty(_Lenient):
    name: str
    value: Any = None


class ShopifyLineItem(_Lenient):
    id: ShopifyId
    title: str
    variant_title: str | None = None
    sku: str | None = None
    quantity: Count
    price: Money
    requires_shipping: bool = True
    properties: list[ShopifyProperty] = Field(default_factory=list)
    # Which product a line is, and whether anyone reviews it (aftercare/reviews/requests.py). Never a
    # reason to refuse an order: a value of another shape is kept as None (False for gift_card).
    product_id: int | None = None
    variant_id: int | None = None
    gift_card: bool = False
    product_type: str | None = None

    @field_validator("properties", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return v or []

    @field_validator("product_id", "variant_id", mode="before")
    @classmethod
    def _id_or_none(cls, v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v < _BIGINT else None

    @field_validator("gift_card", mode="before")
    @classmethod
    def _only_true(cls, v: Any) -> bool:
        return v is True

    @field_validator("product_type", mode="before")
    @classmethod
    def _text_or_none(cls, v: Any) -> str | None:
        return v[:255] if isinstance(v, str) and v.strip() else None


class ShopifyShippingLine(_Lenient):
    title: str | None = None
    price: Money = Decimal("0")


class ShopifyDiscountCode(_Lenient):
    code: str | None = None
    amount: Money | None = None


class ShopifyCustomer(_Lenient):
    id: ShopifyId | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    orders_count: Count | None = None
    locale: str | None = None

    @field_validator("email", mode="before")
    @classmethod
    def _email_as_written(cls, v: Any) -> Any:
        return addresses.as_written(v)


class ShopifyOrder(_Lenient):
    """The fields of Shopify's REST order resource that aftercare uses."""

    id: ShopifyId
    name: str = Field(min_length=1, max_length=64)
    order_number: Count | None = None
    # Kept as written (trimmed): an address's syntax never drops an order. aftercare.spine.addresses judges
    # it later (flagged, attempted or not).
    email: str | None = None
    contact_email: str | None = None
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None = None
    cancelled_at: datetime | None = None
    # customer, fraud, inventory, declined, staff, other: told to the warehouse with a cancellation.
    cancel_reason: str | None = None
    currency: str = Field(min_length=3, max_length=3)
    subtotal_price: Money = Decimal("0")
    total_discounts: Money = Decimal("0")
    total_tax: Money = Decimal("0")
    total_price: Money
    taxes_included: bool = False
    financial_status: str | None = None
    fulfillment_status: str | None = None
    customer_locale: str | None = None
    test: bool = False
    note: str | None = None
    note_attributes: list[ShopifyProperty] = Field(default_factory=list)
    discount_codes: list[ShopifyDiscountCode] = Field(default_factory=list)
    # Absent in some REST list responses; an update without lines keeps the lines we know.
    line_items: list[ShopifyLineItem] | None = None
    shipping_lines: list[ShopifyShippingLine] = Field(default_factory=list)
    shipping_address: ShopifyAddress | None = None
    billing_address: ShopifyAddress | None = None
    customer: ShopifyCustomer | None = None
    total_shipping_price_set: dict[str, Any] | None = None

    @field_validator("email", "contact_email", mode="before")
    @classmethod
    def _email_as_written(cls, v: Any) -> Any:
        return addresses.as_written(v)

    @field_validator("cancel_reason", mode="before")
    @classmethod
    def _short_reason(cls, v: Any) -> Any:
        """Only a label: an odd value is cut short rather than costing us the cancellation itself."""
        return str(v)[:64] if v not in (None, "") else None

    @field_validator("note_attributes", "discount_codes", "shipping_lines", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return v or []

    @field_validator("created_at", "updated_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("timestamp has no UTC offset")
        return v

    @property
    def customer_email(self) -> str | None:
        return self.email or self.contact_email or (self.customer.email if self.customer else None)

    @property
    def total_shipping(self) -> Decimal:
        try:
            amount = Decimal(str(self.total_shipping_price_set["shop_money"]["amount"]))  # type: ignore[index]
            if amount.is_finite() and abs(amount) < _MONEY_LIMIT:
                return amount
        except (TypeError, KeyError, ArithmeticError):
            pass
        return sum((line.price for line in self.shipping_lines), Decimal("0"))


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(body)"
        parts.append(f"{loc}: {e['msg']}")
    more = len(err.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


MAX_DEPTH = 64  # Shopify's resources nest a few levels; a deeper body would only exhaust recursion later


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether JSON data nests lists and objects more than `limit` levels (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(body: bytes) -> Any:
    """Decode a webhook body, or raise InvalidPayload saying why. Nesting deeper than MAX_DEPTH is
    refused too: it is valid JSON, but no webhook is shaped so, and walking it (cleaning, validating,
    storing) would exhaust Python's recursion limit."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPayload(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidPayload("body is JSON nested too deeply to read") from exc
    if _deeper_than(data, MAX_DEPTH):
        raise InvalidPayload(f"body is JSON nested too deeply to read (over {MAX_DEPTH} levels)")
    return data


def _without_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL; no real order field needs one."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_nul(v) for k, v in value.items()}
    return value


def order_object(body: bytes) -> dict[str, Any]:
    """The order object of an orders/* webhook body (bare, or wrapped in {"order": ...})."""
    data = parse_json(body)
    if isinstance(data, dict) and isinstance(data.get("order"), dict):
        data = data["order"]
    if not isinstance(data, dict):
        raise InvalidPayload("order payload must be a JSON object")
    return data


def parse_order(body: bytes) -> ShopifyOrder:
    """Parse an orders/* webhook body (the bare order object, or one wrapped in {"order": ...})."""
    return parse_order_object(order_object(body))


def parse_order_object(data: dict[str, Any]) -> ShopifyOrder:
    """Validate an order object (`order_object`)."""
    try:
        return ShopifyOrder.model_validate(_without_nul(data))
    except ValidationError as exc:
        raise InvalidPayload(f"order payload is missing or has bad fields: {_describe(exc)}") from exc


class ShopifyFulfillmentLine(_Lenient):
    id: ShopifyId
    title: str | None = None
    variant_title: str | None = None
    sku: str | None = None
    quantity: int = Field(ge=0)


class ShopifyFulfillment(_Lenient):
    """The fields of Shopify's REST fulfillment resource (fulfillments/* webhooks) aftercare uses."""

    id: ShopifyId
    order_id: ShopifyId
    name: str | None = Field(default=None, max_length=64)
    status: str = Field(min_length=1, max_length=32)
    shipment_status: str | None = Field(default=None, max_length=32)
    tracking_company: str | None = None
    tracking_number: str | None = None
    tracking_numbers: list[str] = Field(default_factory=list)
    tracking_url: str | None = None
    tracking_urls: list[str] = Field(default_factory=list)
    line_items: list[ShopifyFulfillmentLine] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    # Not in Shopify's resource: set by a carrier integration or our tests alongside "delivered".
    delivered_at: datetime | None = None

    @field_validator("tracking_numbers", "tracking_urls", "line_items", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return [x for x in v if x] if isinstance(v, list) else (v or [])

    @field_validator("created_at", "updated_at", "delivered_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("timestamp has no UTC offset")
        return v

    @property
    def all_tracking_numbers(self) -> list[str]:
        """tracking_numbers, plus the singular field when only that is set; order kept, no repeats."""
        single = [self.tracking_number] if self.tracking_number else []
        return list(dict.fromkeys([*self.tracking_numbers, *single]))

    @property
    def all_tracking_urls(self) -> list[str]:
        single = [self.tracking_url] if self.tracking_url else []
        return list(dict.fromkeys([*self.tracking_urls, *single]))


class ShopifyRefundLine(_Lenient):
    line_item_id: ShopifyId
    quantity: int = Field(ge=0)


class ShopifyRefund(_Lenient):
    """The fields of Shopify's REST refund resource (refunds/create webhook) aftercare uses."""

    id: ShopifyId
    order_id: ShopifyId
    created_at: datetime
    processed_at: datetime | None = None
    note: str | None = None
    refund_line_items: list[ShopifyRefundLine] = Field(default_factory=list)

    @field_validator("refund_line_items", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return v or []

    @field_validator("created_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("timestamp has no UTC offset")
        return v


def _parse_resource(body: bytes, wrapper: str, model: type[_Lenient], what: str) -> Any:
    data = parse_json(body)
    if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
        data = data[wrapper]
    if not isinstance(data, dict):
        raise InvalidPayload(f"{what} payload must be a JSON object")
    try:
        return model.model_validate(_without_nul(data))
    except ValidationError as exc:
        raise InvalidPayload(f"{what} payload is missing or has bad fields: {_describe(exc)}") from exc


# Shopify's event statuses are lower-case words joined by underscores (label_printed, in_transit,
# out_for_delivery, attempted_delivery, delivered, failure, ...); anything else is not one.
_EVENT_STATUS = re.compile(r"^[a-z][a-z_]{0,31}$")
# A time no carrier reports: outside it the payload is refused instead of breaking date arithmetic.
_EARLIEST, _LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


class ShopifyFulfillmentEvent(_Lenient):
    """The fields of Shopify's REST FulfillmentEvent (fulfillment_events/create webhook) aftercare uses:
    one carrier event of one fulfillment."""

    id: int = Field(gt=0, lt=_BIGINT)
    fulfillment_id: int = Field(gt=0, lt=_BIGINT)
    order_id: int = Field(gt=0, lt=_BIGINT)
    status: str
    message: str | None = None
    happened_at: datetime
    created_at: datetime | None = None
    estimated_delivery_at: datetime | None = None
    city: str | None = None
    province: str | None = None
    zip: str | None = None
    country: str | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _known_shape(cls, v: Any) -> Any:
        v = v.strip().lower() if isinstance(v, str) else v
        if not isinstance(v, str) or not _EVENT_STATUS.match(v):
            raise ValueError("not a fulfillment event status (lower-case words joined by '_')")
        return v

    @field_validator("message", "city", "province", "zip", "country", mode="before")
    @classmethod
    def _short_text(cls, v: Any) -> Any:
        """Carrier text is shown to ops, never acted on: cut long text instead of refusing the event."""
        return str(v)[:500] if v not in (None, "") else None

    @field_validator("happened_at", "created_at", "estimated_delivery_at")
    @classmethod
    def _aware_and_plausible(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            raise ValueError("timestamp has no UTC offset")
        try:
            v = v.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError("timestamp is out of range") from exc
        if not _EARLIEST <= v < _LATEST:
            raise ValueError(f"timestamp {v.isoformat()} is outside {_EARLIEST.year}-{_LATEST.year}")
        return v

    @property
    def location(self) -> str | None:
        parts = [p for p in (self.city, self.province, self.zip, self.country) if p]
        return ", ".join(parts) or None


def parse_fulfillment(body: bytes) -> ShopifyFulfillment:
    """Parse a fulfillments/* webhook body (bare, or wrapped in {"fulfillment": ...})."""
    return _parse_resource(body, "fulfillment", ShopifyFulfillment, "fulfillment")  # type: ignore[no-any-return]


def parse_fulfillment_event(body: bytes) -> ShopifyFulfillmentEvent:
    """Parse a fulfillment_events/create webhook body (bare, or wrapped in {"fulfillment_event": ...})."""
    return _parse_resource(body, "fulfillment_event", ShopifyFulfillmentEvent, "fulfillment event")  # type: ignore[no-any-return]


def parse_refund(body: bytes) -> ShopifyRefund:
    """Parse a refunds/create webhook body (bare, or wrapped in {"refund": ...})."""
    return _parse_resource(body, "refund", ShopifyRefund, "refund")  # type: ignore[no-any-return]


def subject_ref(topic: str, body: bytes) -> str:
    """Parse a delivery of a known topic (InvalidPayload if unusable) and return the label ops search
    by: the order name, or for a fulfillment its name ('#1001.1') else the Shopify order id. A carrier
    event names no order: its Shopify order id, as a refund's (the name replaces it once applied)."""
    if topic in FULFILLMENT_EVENT_TOPICS:
        return f"order-id:{parse_fulfillment_event(body).order_id}"
    if topic in FULFILLMENT_TOPICS:
        fulfillment = parse_fulfillment(body)
        return fulfillment.name or f"order-id:{fulfillment.order_id}"
    if topic in REFUND_TOPICS:
        return f"order-id:{parse_refund(body).order_id}"
    return parse_order(body).name
