"""Consent and suppressions in the database: what the pure rules (`consent`, `rules`) read and what
the webhooks, the unsubscribe page and a redaction write. Every function takes the caller's session
and commits nothing: the caller's transaction is the unit.

- `record_consent`: keep a consent event (always, as history) and the state it leaves us holding.
- `held_consent`: the state held for an address of a shop, as `consent.Consent`.
- `suppress`: an address leaves a list; its planned touchpoints on that list are cancelled at once
  (with their unsent outbox rows), the reason saying when and how.
- `suppressions_for`: the lists an address has left, as `rules.Suppression`.

Addresses are keyed as everywhere else (`spine.addresses.customer_key`: trimmed, lower-cased);
suppressions by `email_hash` of that key, so they outlive a redaction that erases the address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.contact import consent as consent_rules
from aftercare.contact.policy import ContactPolicy, MessageClass
from aftercare.contact.rules import EVERY_LIST
from aftercare.contact.rules import Suppression as SuppressionFact
from aftercare.contact.timezones import address_country
from aftercare.models import (
    ConsentRecord,
    Customer,
    CustomerConsent,
    Order,
    OutboxMessage,
    OutboxStatus,
    Suppression,
    Touchpoint,
    TouchpointStatus,
    UTCDateTime,
    utcnow,
)
from aftercare.spine import addresses


def email_hash(email_key: str) -> str:
    """The suppression key of an address: sha256 of its key (trimmed, lower-cased)."""
    return hashlib.sha256(email_key.strip().lower().encode("utf-8")).hexdigest()


# -- consent -----------------------------------------------------------------------------------------


def _as_consent(row: CustomerConsent | None) -> consent_rules.Consent | None:
    if row is None:
        return None
    return consent_rules.Consent(
        state=row.state,
        updated_at=row.consent_updated_at,
        source=row.source,
        opt_in_level=row.opt_in_level,
        weak=row.weak,
    )


def held_consent(session: Session, shop_domain: str, email_key: str) -> consent_rules.Consent | None:
    """The consent state we hold for this address of this shop (None: we were never told)."""
    row = session.exec(
        select(CustomerConsent).where(
            CustomerConsent.shop_domain == shop_domain, CustomerConsent.email_key == email_key
        )
    ).first()
    return _as_consent(row)


def _held_row(session: Session, shop_domain: str, email_key: str) -> CustomerConsent | None:
    return session.exec(
        select(CustomerConsent)
        .where(CustomerConsent.shop_domain == shop_domain, CustomerConsent.email_key == email_key)
        .with_for_update()
    ).first()


def record_consent(
    session: Session,
    *,
    shop_domain: str,
    email_key: str,
    event: consent_rules.Consent,
    customer_shopify_id: int | None = None,
    inbox_id: int | None = None,
    wording_version: str | None = None,
) -> consent_rules.ConsentChange:
    """Keep the event, apply it to the state held (`consent.apply`: the newest consent_updated_at
    wins, the order checkbox never overrides a refusal), and return what changed. The held row is
    read FOR UPDATE (PostgreSQL), so two workers with two events for one address give the result of
    one after the other; two first events at once: the unique constraint keeps one row, the other
    worker applies its event to it."""
    row = _held_row(session, shop_domain, email_key)
    if row is None:
        try:
            with session.begin_nested():
                row = CustomerConsent(
                    shop_domain=shop_domain,
                    email_key=email_key,
                    state=event.state,
                    opt_in_level=event.opt_in_level,
                    consent_updated_at=event.updated_at,
                    source=event.source[:64],
                    weak=event.weak,
                    wording_version=wording_version,
                )
                session.add(row)
            change = consent_rules.apply(None, event)
        except sa.exc.IntegrityError:
            row = _held_row(session, shop_domain, email_key)
            assert row is not None
            change = consent_rules.apply(_as_consent(row), event)
    else:
        change = consent_rules.apply(_as_consent(row), event)
    record = ConsentRecord(
        shop_domain=shop_domain,
        email_key=email_key,
        customer_shopify_id=customer_shopify_id,
        state=event.state,
        opt_in_level=event.opt_in_level,
        consent_updated_at=event.updated_at,
        source=event.source[:64],
        weak=event.weak,
        wording_version=wording_version,
        inbox_id=inbox_id,
        applied=change.changed,
        reason=change.reason,
    )
    session.add(record)
    session.flush()
    held = change.consent
    if held is not None and held != _as_consent(row):  # changed, or the same state, newer
        row.state, row.opt_in_level, row.consent_updated_at = held.state, held.opt_in_level, held.updated_at
        row.source, row.weak = held.source[:64], held.weak
        row.wording_version = wording_version
    if held is event:
        row.record_id = record.id
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return change


# -- suppressions ----------------------------------------------------------------------------------


def kinds_on_list(policy: ContactPolicy, list_name: str) -> set[str]:
    """The message kinds a suppression of `list_name` stops: a kind's own list, a class's name (all
    its kinds), or `all` (every kind that is not transactional)."""
    kinds = set()
    for kind, rule in policy.kinds.items():
        if rule.message_class is MessageClass.TRANSACTIONAL:
            continue
        if list_name in (EVERY_LIST, rule.message_class.value, rule.list_name):
            kinds.add(kind)
    return kinds


def known_list(policy: ContactPolicy, list_name: str) -> bool:
    """A list a customer can leave: some kind's own list, a non-transactional class, or `all`."""
    lists = {r.list_name for r in policy.kinds.values() if r.list_name}
    classes = {c.value for c in MessageClass if c is not MessageClass.TRANSACTIONAL}
    return list_name in lists | classes | {EVERY_LIST}


@dataclass(frozen=True)
class Suppressed:
    created: bool  # False: the address had already left this list (nothing new stored)
    cancelled_touchpoints: list[int]


_TOUCHPOINTS: sa.Table = Touchpoint.__table__  # type: ignore[attr-defined]
_OUTBOX: sa.Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_ORDERS: sa.Table = Order.__table__  # type: ignore[attr-defined]
_CUSTOMERS: sa.Table = Customer.__table__  # type: ignore[attr-defined]

# Built once (an unsubscribe is a hot path: 100 one-click POSTs a second is the goal), each one
# statement, so a suppression is three round trips and one commit. The customer's orders, by address:
_OWNED_ORDERS = (
    sa.select(_ORDERS.c.id)
    .join(_CUSTOMERS, _CUSTOMERS.c.id == _ORDERS.c.customer_id)
    .where(_CUSTOMERS.c.shop_domain == sa.bindparam("shop"), _CUSTOMERS.c.email_key == sa.bindparam("key"))
)
# Only a touchpoint still planned is cancelled (one another unsubscribe, or the dispatcher, settled
# first stays as it is); the ids returned are the ones this statement cancelled.
_CANCEL_TOUCHPOINTS = (
    sa.update(_TOUCHPOINTS)
    .where(
        _TOUCHPOINTS.c.order_id.in_(_OWNED_ORDERS.scalar_subquery()),
        _TOUCHPOINTS.c.status == TouchpointStatus.PLANNED,
        _TOUCHPOINTS.c.kind.in_(sa.bindparam("kinds", expanding=True)),
    )
    .values(status=TouchpointStatus.CANCELLED, reason=sa.bindparam("reason"))
    .returning(_TOUCHPOINTS.c.id)
)
# Their outbox rows no worker has claimed (a claimed one is already on its way and is left to finish).
_CANCEL_OUTBOX = (
    sa.update(_OUTBOX)
    .where(
        _OUTBOX.c.touchpoint_id.in_(sa.bindparam("ids", expanding=True)),
        _OUTBOX.c.status == OutboxStatus.PENDING,
    )
    .values(status=OutboxStatus.CANCELLED, last_error=sa.bindparam("reason"))
)


# The suppression, unless the address has left this list already: ON CONFLICT on the unique
# (shop, hash, list) only. Written as SQL text (the same on SQLite and PostgreSQL) because
# SQLAlchemy's dialect INSERT with ON CONFLICT is not cacheable: it would be compiled again on
# every POST, about half a millisecond.
_INSERT_SUPPRESSION = (
    sa.text(
        "INSERT INTO suppressions (shop_domain, email_hash, list_name, source, touchpoint_id, created_at) "
        "VALUES (:shop_domain, :email_hash, :list_name, :source, :touchpoint_id, :created_at) "
        "ON CONFLICT (shop_domain, email_hash, list_name) DO NOTHING RETURNING id"
    )
    .bindparams(sa.bindparam("created_at", type_=UTCDateTime()))
    .columns(id=sa.Integer)
)


def _store_suppression(session: Session, values: dict[str, Any]) -> bool:
    """Insert the suppression unless the address has left this list already; True when inserted.
    One statement: two clicks at once keep one row and neither fails, while any other refusal (a
    touchpoint that does not exist) is an IntegrityError, never a suppression lost without a word."""
    return session.execute(_INSERT_SUPPRESSION, values).first() is not None


def suppress(
    session: Session,
    *,
    shop_domain: str,
    email_key: str | None,
    list_name: str,
    source: str,
    now: datetime,
    policy: ContactPolicy,
    touchpoint_id: int | None = None,
    address_hash: str | None = None,
) -> Suppressed:
    """The address leaves `list_name` at `now`: stored once (a second time changes nothing), and
    every planned touchpoint of this customer on that list is cancelled with its unsent outbox
    row, the reason saying when and how. `address_hash` instead of `email_key` when only the hash is
    known (a redacted customer): nothing can be cancelled by address then, the caller does it."""
    if not known_list(policy, list_name):
        raise ValueError(f"unknown list {list_name!r}")
    digest = address_hash or (email_hash(email_key) if email_key else None)
    if digest is None:
        raise ValueError("suppress needs an address or its hash")
    created = _store_suppression(
        session,
        {
            "shop_domain": shop_domain,
            "email_hash": digest,
            "list_name": list_name,
            "source": source[:64],
            "touchpoint_id": touchpoint_id,
            "created_at": now,
        },
    )
    cancelled: list[int] = []
    if email_key:
        kinds = kinds_on_list(policy, list_name)
        cancelled = cancel_planned(
            session,
            shop_domain=shop_domain,
            email_key=email_key,
            kinds=kinds,
            reason=f"{source}: left {list_name} on {now.date().isoformat()}",
        )
    return Suppressed(created=created, cancelled_touchpoints=cancelled)


def cancel_planned(
    session: Session, *, shop_domain: str, email_key: str, kinds: set[str], reason: str
) -> list[int]:
    """Cancel this customer's planned touchpoints of these kinds, and their outbox rows no worker
    has claimed (a claimed one is already on its way and is left to finish); the ids cancelled.
    Two set-based UPDATEs, whatever the number of touchpoints."""
    if not kinds:
        return []
    ids = sorted(
        session.execute(
            _CANCEL_TOUCHPOINTS,
            {"shop": shop_domain, "key": email_key, "kinds": sorted(kinds), "reason": reason},
        ).scalars()
    )
    if ids:
        session.execute(_CANCEL_OUTBOX, {"ids": ids, "reason": reason})
    return ids


def suppressions_for(session: Session, shop_domain: str, email_key: str) -> list[SuppressionFact]:
    """The lists this address has left, oldest first, for `rules.decide`."""
    rows = session.exec(
        select(Suppression)
        .where(Suppression.shop_domain == shop_domain, Suppression.email_hash == email_hash(email_key))
        .order_by(Suppression.created_at)  # type: ignore[arg-type]
    ).all()
    return [SuppressionFact(list_name=r.list_name, at=r.created_at, source=r.source) for r in rows]


# -- consent from a delivery -------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentFromDelivery:
    """What one delivery did to the consent we hold: the changes (one per event it carried) and a
    sentence for the inbox row and the timeline (None when it carried no consent and nothing to say)."""

    changes: list[consent_rules.ConsentChange]
    reason: str | None


def _known_address(session: Session, shop_domain: str, customer_id: int | None) -> str | None:
    if customer_id is None:
        return None
    row = session.exec(
        select(Customer.email_key)
        .where(Customer.shop_domain == shop_domain, Customer.shopify_id == customer_id)
        .order_by(Customer.id)  # type: ignore[arg-type]
    ).first()
    return row


def record_delivery_consent(
    session: Session,
    *,
    shop_domain: str,
    topic: str,
    payload: Any,
    sent_at: datetime,
    policy: ContactPolicy,
    inbox_id: int | None = None,
    email: str | None = None,
    customer_id: int | None = None,
) -> ConsentFromDelivery:
    """Keep the consent a Shopify delivery carries (an order's customer and checkout box, or a
    customers/* or consent topic), keyed by the customer's address (an order's: `email`; a customer
    topic's own, else the address we know for its customer id). Every event is recorded with the
    policy's wording version, applied or not; a malformed consent object is recorded nowhere and
    named in the reason: it never fails the delivery."""
    if not isinstance(payload, Mapping):
        return ConsentFromDelivery([], f"{topic} payload is not an object: no consent read")
    notes: list[str] = []
    customer = payload.get("customer") if topic.startswith("orders/") else payload
    if topic == consent_rules.CONSENT_UPDATE:
        found = consent_rules.problems(payload.get("email_marketing_consent"))
    elif isinstance(customer, Mapping) and "email_marketing_consent" in customer:
        found = consent_rules.problems(customer.get("email_marketing_consent"))
    else:
        found = []
    if found:
        verdict = "ignored" if consent_rules.fatal(found) else "read"
        notes.append(f"consent {verdict}: " + "; ".join(found))
    if not topic.startswith("orders/"):
        subject = consent_rules.subject_of(topic, payload)
        email, customer_id = subject.email, subject.customer_id
    key = addresses.customer_key(email) or _known_address(session, shop_domain, customer_id)
    events = consent_rules.from_webhook(topic, payload, sent_at=sent_at)
    if not events:
        if not found and not topic.startswith("orders/"):
            notes.append(f"{topic} carries no email marketing consent")
        return ConsentFromDelivery([], "; ".join(notes) or None)
    if key is None:
        who = f"customer {customer_id}" if customer_id else "this customer"
        notes.append(f"no address known for {who}: consent not kept")
        return ConsentFromDelivery([], "; ".join(notes))
    changes = [
        record_consent(
            session,
            shop_domain=shop_domain,
            email_key=key,
            event=event,
            customer_shopify_id=customer_id,
            inbox_id=inbox_id,
            wording_version=policy.consent.wording_version,
        )
        for event in events
    ]
    notes += [f"consent: {c.reason}" for c in changes]
    return ConsentFromDelivery(changes, "; ".join(notes))


# -- the seasonal line (seed 004) --------------------------------------------------------------------


@dataclass(frozen=True)
class SeasonalDecision:
    """Whether an order confirmation carries the seasonal line, which, and why (or why not)."""

    line: str | None
    season: str | None
    reason: str


def promotional_lists(policy: ContactPolicy) -> set[str]:
    """The lists whose suppression stops promotional content: the promotional kinds' own lists, the
    class itself, and `all`."""
    own = {
        r.list_name
        for r in policy.kinds.values()
        if r.message_class is MessageClass.PROMOTIONAL and r.list_name is not None
    }
    return own | {MessageClass.PROMOTIONAL.value, EVERY_LIST}


def seasonal_line_for(session: Session, *, order: Order, policy: ContactPolicy) -> SeasonalDecision:
    """The one short line about the next gift season, for this order's confirmation, or None with
    the reason: the policy must enable it; the customer must be a repeat customer with an earlier
    order (one we hold, not cancelled, not a test) placed in a season the policy names; there must
    be a next season; and the customer's consent must allow promotional content in their region
    (opt-in: consent on record; opt-out: no refusal), with no suppression of offers, promotional
    mail or all mail."""
    rule = policy.seasonal_line
    if not rule.enabled:
        return SeasonalDecision(None, None, "seasonal line is off in policies/contact.yaml")
    customer = session.get(Customer, order.customer_id) if order.customer_id else None
    if customer is None:
        return SeasonalDecision(None, None, "no customer on the order")
    tz = policy.tz
    earlier = session.exec(
        select(Order.placed_at).where(
            Order.customer_id == customer.id,
            Order.id != order.id,
            Order.placed_at < order.placed_at,
            Order.cancelled_at.is_(None),  # type: ignore[union-attr]
            Order.is_test.is_(False),  # type: ignore[attr-defined]
        )
    ).all()
    if not earlier:
        return SeasonalDecision(None, None, "not a repeat customer (no earlier order on record)")
    seasons = [s for at in earlier if (s := rule.season_of(at.astimezone(tz).date())) is not None]
    if not seasons:
        return SeasonalDecision(None, None, "no earlier order fell in a gift season")
    upcoming = rule.next_after(order.placed_at.astimezone(tz).date())
    if upcoming is None:
        return SeasonalDecision(None, None, "no next gift season")
    left = {s.list_name for s in suppressions_for(session, customer.shop_domain, customer.email_key)}
    stopped = sorted(left & promotional_lists(policy))
    if stopped:
        return SeasonalDecision(None, upcoming.name, f"unsubscribed from {', '.join(stopped)}")
    raw = order.raw if isinstance(order.raw, Mapping) else {}
    country = address_country(order.shipping_address, raw.get("billing_address"))
    model = policy.consent_model(MessageClass.PROMOTIONAL, country)
    held = held_consent(session, customer.shop_domain, customer.email_key)
    state = held.state if held else None
    if model == "opt_in" and state not in policy.consent.consent_states:
        why = f"consent is {state}" if state else "no consent on record"
        return SeasonalDecision(None, upcoming.name, f"promotional content needs opt-in ({why})")
    if model == "opt_out" and state in policy.consent.refusal_states:
        return SeasonalDecision(None, upcoming.name, f"promotional content refused ({state})")
    line = upcoming.line.get(order.locale) or upcoming.line["en"]
    first = seasons[0].name
    return SeasonalDecision(line, upcoming.name, f"earlier order in {first}; next season {upcoming.name}")
