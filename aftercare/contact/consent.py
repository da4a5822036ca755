"""A customer's email-marketing consent, resolved from what Shopify tells us, in any order.

Shopify sends `email_marketing_consent` = {state, opt_in_level, consent_updated_at}:
- on the customer inside order payloads (`orders/create`, `orders/updated`, ...),
- at the top level of `customers/create` and `customers/update` (API versions before 2025-01; from
  2025-01 on Shopify sends consent only through the next topic),
- in `customers_email_marketing_consent/update` as {customer_id, email_address,
  email_marketing_consent}.
Older payloads carry `accepts_marketing` and `accepts_marketing_updated_at` instead; the order
itself carries `buyer_accepts_marketing` (the checkout box).

How they combine (Shopify's own rule, and the safer side where it is silent):
- the newest `consent_updated_at` wins; an event older than the state held changes nothing (webhooks
  arrive late and out of order). Without a date, Shopify says the time the information was sent
  counts: the caller passes it as `sent_at`;
- two events of the same moment that disagree: the one with less consent wins, whatever the order
  they arrived in;
- `buyer_accepts_marketing` is the weakest signal: it counts only while no customer-level consent is
  known, so it never overrides a customer who unsubscribed (Shopify records a box ticked at checkout
  on the customer too, and tells us through the customer's consent); `false` there is no refusal
  (the box was simply not ticked) and changes nothing.
The result depends only on which events were seen, not on the order they arrived in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aftercare.contact.policy import SHOPIFY_CONSENT_STATES

# States that end consent until the customer gives it again.
REFUSED = frozenset({"unsubscribed", "redacted", "invalid"})
# Ties at the same instant go to the state with less consent (order-independent).
_TIE_RANK = {
    "redacted": 0,
    "invalid": 1,
    "unsubscribed": 2,
    "not_subscribed": 3,
    "pending": 4,
    "subscribed": 5,
}
_LEVEL_RANK = {"unknown": 1, "single_opt_in": 2, "confirmed_opt_in": 3}

ORDER_CHECKBOX = "order buyer_accepts_marketing"


@dataclass(frozen=True)
class Consent:
    """One consent state: as held for a customer, or as one event reports it."""

    state: str  # Shopify's state, lower-case: subscribed, not_subscribed, pending, unsubscribed, ...
    updated_at: datetime  # consent_updated_at (or when Shopify sent it, if it gave no date); aware
    source: str  # which payload said so: a topic, or ORDER_CHECKBOX
    opt_in_level: str | None = None  # single_opt_in, confirmed_opt_in, unknown
    weak: bool = False  # the order's checkbox: never overrides a refusal

    @property
    def refused(self) -> bool:
        return self.state in REFUSED


@dataclass(frozen=True)
class ConsentChange:
    """The state after one event, and whether and why it changed."""

    consent: Consent | None
    changed: bool
    reason: str


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as Shopify writes it, as an aware datetime (naive ones taken as UTC)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _state(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    state = value.strip().lower()
    return state if state in SHOPIFY_CONSENT_STATES else None


def from_email_marketing_consent(obj: Any, *, source: str, sent_at: datetime) -> Consent | None:
    """One `email_marketing_consent` object; None when it is missing or its state is not Shopify's."""
    if not isinstance(obj, Mapping):
        return None
    state = _state(obj.get("state"))
    if state is None:
        return None
    level = obj.get("opt_in_level")
    return Consent(
        state=state,
        updated_at=_plausible(parse_time(obj.get("consent_updated_at"))) or sent_at,
        source=source,
        opt_in_level=level.strip().lower() if isinstance(level, str) and level.strip() else None,
    )


def from_customer(customer: Any, *, source: str, sent_at: datetime) -> Consent | None:
    """A Shopify customer object (top level of customers/*, or inside an order): its consent.

    `email_marketing_consent` when present; else the legacy `accepts_marketing` flag with
    `accepts_marketing_updated_at`. The customer's own `updated_at` stands in for a missing date."""
    if not isinstance(customer, Mapping):
        return None
    sent = parse_time(customer.get("updated_at")) or sent_at
    if "email_marketing_consent" in customer:
        return from_email_marketing_consent(
            customer.get("email_marketing_consent"), source=source, sent_at=sent
        )
    flag = customer.get("accepts_marketing")
    if isinstance(flag, bool):
        return Consent(
            state="subscribed" if flag else "not_subscribed",
            updated_at=_plausible(parse_time(customer.get("accepts_marketing_updated_at"))) or sent,
            source=f"{source} (accepts_marketing)",
            opt_in_level=customer.get("marketing_opt_in_level") if flag else None,
        )
    return None


def from_order(order: Mapping[str, Any], *, topic: str, sent_at: datetime) -> list[Consent]:
    """What an order payload says: the customer's consent, then the checkout box (if ticked)."""
    events: list[Consent] = []
    customer_consent = from_customer(
        order.get("customer"),
        source=f"{topic} customer",
        sent_at=parse_time(order.get("updated_at")) or sent_at,
    )
    if customer_consent is not None:
        events.append(customer_consent)
    if order.get("buyer_accepts_marketing") is True:
        at = parse_time(order.get("processed_at")) or parse_time(order.get("created_at")) or sent_at
        events.append(
            Consent(
                state="subscribed",
                updated_at=at,
                source=ORDER_CHECKBOX,
                opt_in_level="single_opt_in",
                weak=True,
            )
        )
    return events


def from_webhook(topic: str, payload: Mapping[str, Any], *, sent_at: datetime) -> list[Consent]:
    """The consent events a Shopify webhook carries (none for topics that carry none, or for a body
    that is not an object)."""
    if not isinstance(payload, Mapping):
        return []
    if topic.startswith("orders/"):
        return from_order(payload, topic=topic, sent_at=sent_at)
    if topic in {"customers/create", "customers/update"}:
        event = from_customer(payload, source=topic, sent_at=sent_at)
    elif topic == "customers_email_marketing_consent/update":
        event = from_email_marketing_consent(
            payload.get("email_marketing_consent"), source=topic, sent_at=sent_at
        )
    else:
        event = None
    return [event] if event is not None else []


def _key(c: Consent) -> tuple[datetime, int, int]:
    """Newer wins; at the same moment the state, then the opt-in level, with less consent wins."""
    return (c.updated_at, -_TIE_RANK[c.state], -_LEVEL_RANK.get(c.opt_in_level or "", 0))


def _when(c: Consent) -> str:
    return f"{c.updated_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def apply(held: Consent | None, event: Consent) -> ConsentChange:
    """The state after `event`, given the state held (see the module's rules).

    The result depends only on the set of events seen, never on the order they arrived in: the
    newest customer-level event (ties: less consent), or the newest checkbox while no customer-level
    event is known."""
    if held is None:
        return ConsentChange(event, True, f"first consent on record: {event.state} ({event.source})")
    if event.weak and not held.weak:
        if held.refused:
            return ConsentChange(
                held, False, f"the checkout box never overrides {held.state} of {_when(held)}"
            )
        return ConsentChange(held, False, f"the checkout box does not override {held.state} ({held.source})")
    if held.weak and not event.weak:
        return ConsentChange(event, True, f"{held.state} (checkout box) -> {event.state} ({event.source})")
    if _key(event) <= _key(held):
        if event.updated_at < held.updated_at:
            why = f"{event.state} of {_when(event)} is older than the {held.state} held ({_when(held)})"
        elif event.state == held.state:
            why = "the same consent again"
        else:
            why = f"same moment as {held.state}: the state with less consent stays"
        return ConsentChange(held, False, why)
    if event.state == held.state:
        return ConsentChange(event, False, f"{event.state} confirmed ({event.source})")
    return ConsentChange(event, True, f"{held.state} -> {event.state} ({event.source})")


def resolve(held: Consent | None, events: Iterable[Consent]) -> Consent | None:
    """The state after every event, applied in the order given."""
    state = held
    for event in events:
        state = apply(state, event).consent
    return state


# -- the consent topics as deliveries ----------------------------------------------------------------

# The Shopify topics that carry nothing but a customer and their consent (orders carry it too).
TOPICS = frozenset({"customers/create", "customers/update", "customers_email_marketing_consent/update"})
CONSENT_UPDATE = "customers_email_marketing_consent/update"
# The Shopify-wide range a consent date can be in: outside it the date is not read (the time Shopify
# sent the delivery stands in), so a hostile or broken date never wins "newest" forever.
_EARLIEST, _LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Subject:
    """Whose consent a delivery is about: the address as written and Shopify's customer id."""

    email: str | None
    customer_id: int | None


def _shopify_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and 0 < value < 2**63 else None


def subject_of(topic: str, payload: Any) -> Subject:
    """The customer a customers/* or consent delivery is about (either part may be missing)."""
    if not isinstance(payload, Mapping):
        return Subject(None, None)
    if topic == CONSENT_UPDATE:
        email, cid = payload.get("email_address"), payload.get("customer_id")
    else:
        email, cid = payload.get("email"), payload.get("id")
    return Subject(email.strip() if isinstance(email, str) and email.strip() else None, _shopify_id(cid))


def problems(obj: Any) -> list[str]:
    """What is wrong with one `email_marketing_consent` object, in words ops can act on (empty: it is
    usable as it is). A missing or unreadable date is a problem but not a fatal one: the time Shopify
    sent it stands in, as Shopify's own rule says."""
    if obj is None:
        return ["email_marketing_consent is null"]
    if not isinstance(obj, Mapping):
        return [f"email_marketing_consent is a {type(obj).__name__}, not an object"]
    found = []
    state = obj.get("state")
    if state is None:
        found.append("email_marketing_consent.state is missing")
    elif not isinstance(state, str):
        found.append(f"email_marketing_consent.state is a {type(state).__name__}, not text")
    elif _state(state) is None:
        found.append(f"email_marketing_consent.state {state[:40]!r} is not one of Shopify's states")
    level = obj.get("opt_in_level")
    if level is not None and not isinstance(level, str):
        found.append(f"email_marketing_consent.opt_in_level is a {type(level).__name__}, not text")
    at = obj.get("consent_updated_at")
    if at is not None and _plausible(parse_time(at)) is None:
        found.append(
            f"email_marketing_consent.consent_updated_at {str(at)[:40]!r} is not a date we can read "
            "(the time Shopify sent it stands in)"
        )
    return found


def fatal(found: list[str]) -> bool:
    """Whether these problems leave no usable consent (anything but an unreadable date)."""
    return any("consent_updated_at" not in p for p in found)


def _plausible(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    try:
        utc = at.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    return at if _EARLIEST <= utc < _LATEST else None


def check_delivery(topic: str, body: bytes) -> tuple[bool, str | None, str | None]:
    """(usable, reason, subject ref) for a consent topic's body, decided before it is stored: a body
    that is not a JSON object, or a consent update that names nobody, is kept as invalid with the
    reason; everything else is processed (a malformed consent is ignored there, with its reason)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return False, f"body is not JSON: {str(exc)[:200]}", None
    if not isinstance(payload, Mapping):
        return False, f"{topic} payload must be a JSON object", None
    subject = subject_of(topic, payload)
    if subject.email is None and subject.customer_id is None:
        what = "email_address or customer_id" if topic == CONSENT_UPDATE else "email or id"
        return False, f"{topic} payload names no customer (no {what})", None
    return True, None, f"customer-id:{subject.customer_id}" if subject.customer_id else None
