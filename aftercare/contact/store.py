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
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.contact import consent as consent_rules
from aftercare.contact.policy import ContactPolicy, MessageClass
from aftercare.contact.rules import EVERY_LIST
from aftercare.contact.rules import Suppression as SuppressionFact
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
    utcnow,
)


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
    stored = select(Suppression.id).where(
        Suppression.shop_domain == shop_domain,
        Suppression.email_hash == digest,
        Suppression.list_name == list_name,
    )
    exists = session.exec(stored).first()
    created = False
    if exists is None:
        # Two clicks at once: the unique constraint keeps one; the loser's savepoint is rolled back.
        try:
            with session.begin_nested():
                session.add(
                    Suppression(
                        shop_domain=shop_domain,
                        email_hash=digest,
                        list_name=list_name,
                        source=source[:64],
                        touchpoint_id=touchpoint_id,
                        created_at=now,
                    )
                )
            created = True
        except sa.exc.IntegrityError:
            # Only the unique constraint means "already there": any other violation (a touchpoint
            # that does not exist) would otherwise lose the suppression without a word.
            if session.exec(stored).first() is None:
                raise
            created = False
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
    has claimed (a claimed one is already on its way and is left to finish)."""
    if not kinds:
        return []
    ids = list(
        session.exec(
            select(Touchpoint.id)
            .join(Order, Order.id == Touchpoint.order_id)  # type: ignore[arg-type]
            .join(Customer, Customer.id == Order.customer_id)  # type: ignore[arg-type]
            .where(
                Customer.shop_domain == shop_domain,
                Customer.email_key == email_key,
                Touchpoint.status == TouchpointStatus.PLANNED,
                Touchpoint.kind.in_(sorted(kinds)),  # type: ignore[attr-defined]
            )
        )
    )
    if not ids:
        return []
    session.execute(
        sa.update(Touchpoint)
        .where(Touchpoint.id.in_(ids), Touchpoint.status == TouchpointStatus.PLANNED)  # type: ignore[union-attr]
        .values(status=TouchpointStatus.CANCELLED, reason=reason)
    )
    session.execute(
        sa.update(OutboxMessage)
        .where(
            OutboxMessage.touchpoint_id.in_(ids),  # type: ignore[union-attr]
            OutboxMessage.status == OutboxStatus.PENDING,
        )
        .values(status=OutboxStatus.CANCELLED, last_error=reason)
    )
    return [i for i in ids if i is not None]


def suppressions_for(session: Session, shop_domain: str, email_key: str) -> list[SuppressionFact]:
    """The lists this address has left, oldest first, for `rules.decide`."""
    rows = session.exec(
        select(Suppression)
        .where(Suppression.shop_domain == shop_domain, Suppression.email_hash == email_hash(email_key))
        .order_by(Suppression.created_at)  # type: ignore[arg-type]
    ).all()
    return [SuppressionFact(list_name=r.list_name, at=r.created_at, source=r.source) for r in rows]
