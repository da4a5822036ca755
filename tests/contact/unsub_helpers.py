"""Customers with planned mail, and their unsubscribe links, for the unsubscribe and header tests:
real rows (customer, order, touchpoints, pending outbox rows) written with the real models."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.contact import links
from aftercare.models import (
    Customer,
    Order,
    OutboxMessage,
    OutboxStatus,
    Suppression,
    Touchpoint,
    TouchpointStatus,
    utcnow,
)
from aftercare.rendering import RenderedEmail
from aftercare.settings import Settings
from aftercare.spine import outbox
from tests.factories import SHOP

# Every kind a customer is planned to get here: two feedback lists and a transactional mail.
KINDS = ("delivery_survey", "review_request", "order_confirmation")


@dataclass
class Planned:
    email: str
    customer_id: int
    order_id: int
    touchpoints: dict[str, int] = field(default_factory=dict)  # kind -> touchpoint id
    outbox: dict[str, int] = field(default_factory=dict)  # kind -> outbox id


_orders = iter(range(7_100_000_000, 8_000_000_000))


def plan_customer(engine: Engine, email: str, *, shop: str = SHOP, locale: str = "ja") -> Planned:
    """A customer with one order and, on it, a planned survey, review request and confirmation,
    each with a pending outbox row."""
    now = utcnow()
    with Session(engine) as session:
        customer = Customer(shop_domain=shop, email_key=email.strip().lower(), email=email, locale=locale)
        session.add(customer)
        session.flush()
        order_id = next(_orders)
        order = Order(
            shop_domain=shop,
            shopify_id=order_id,
            name=f"#{order_id % 100000}",
            customer_id=customer.id,
            email=email,
            locale=locale,
            currency="JPY",
            placed_at=now,
            source_updated_at=now,
        )
        session.add(order)
        session.flush()
        assert customer.id is not None and order.id is not None
        planned = Planned(email=email, customer_id=customer.id, order_id=order.id)
        for kind in KINDS:
            tp = Touchpoint(order_id=order.id, kind=kind, due_at=now + timedelta(days=3), policy_version="t")
            session.add(tp)
            session.flush()
            assert tp.id is not None
            row = outbox.enqueue(
                session,
                touchpoint=tp,
                to_email=email,
                to_name=None,
                rendered=RenderedEmail(subject=f"{kind}", text="text", html="<p>html</p>"),
                locale=locale,
                order_name=order.name,
                is_test=False,
            )
            planned.touchpoints[kind] = tp.id
            planned.outbox[kind] = row.id
        session.commit()
    return planned


def token_for(
    settings: Settings,
    planned: Planned,
    list_name: str = "surveys",
    *,
    kind: str = "delivery_survey",
    locale: str | None = "ja",
    now: datetime | None = None,
    secret: str | None = None,
) -> str:
    return links.unsubscribe_token(
        secret or settings.link_secret.get_secret_value(),
        shop_domain=SHOP,
        email_key=planned.email.lower(),
        list_name=list_name,
        touchpoint_id=planned.touchpoints.get(kind),
        now=now or utcnow(),
        locale=locale,
    )


def statuses(engine: Engine, planned: Planned) -> dict[str, tuple[str, str]]:
    """kind -> (touchpoint status, outbox status)."""
    with Session(engine) as session:
        out = {}
        for kind, tp_id in planned.touchpoints.items():
            tp = session.get(Touchpoint, tp_id)
            row = session.get(OutboxMessage, planned.outbox[kind])
            assert tp is not None and row is not None
            out[kind] = (tp.status, row.status)
        return out


ALL_PLANNED = dict.fromkeys(KINDS, (TouchpointStatus.PLANNED.value, OutboxStatus.PENDING.value))


def suppressions(engine: Engine) -> list[tuple[str, str, str, str]]:
    """(shop, hash, list, source) of every suppression, oldest first."""
    with Session(engine) as session:
        rows = session.exec(select(Suppression).order_by(Suppression.id)).all()  # type: ignore[arg-type]
        return [(r.shop_domain, r.email_hash, r.list_name, r.source) for r in rows]


def reason_of(engine: Engine, touchpoint_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(Touchpoint.reason).where(Touchpoint.id == touchpoint_id)  # type: ignore[arg-type]
        ).scalar_one()
