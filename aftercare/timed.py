"""Timed contact wired: the contact wing's dispatcher (aftercare/contact/dispatch.py) given what the
other wings own: the orders wing's measure of a cancelled or fully refunded order, and the composers
of each kind's words (surveys, review requests and their reminder). Above the wings, like
aftercare/processing.py, so no wing imports a sibling. Used by the Prefect tasks (tasks/contact.py),
the CLI and the benchmark."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from aftercare.contact import dispatch as dispatcher
from aftercare.contact.compose import Composer, Composers
from aftercare.contact.policy import ContactPolicy, load_contact_policy
from aftercare.contact.rules import OrderFacts
from aftercare.contact.sender import ShopPolicy, load_shop_policy
from aftercare.models import Order
from aftercare.orders import shipping
from aftercare.reviews import invitations
from aftercare.reviews.request_policy import load_review_request_policy
from aftercare.reviews.requests import request_composers, shipped_composers
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.surveys.mail import shipped_survey_composer, survey_composer
from aftercare.surveys.policy import load_survey_policy


def order_facts(session: Session, orders: Sequence[Order]) -> dict[int, OrderFacts]:
    """What the contact rules need of each order, by the orders wing's own measure of "refunded in
    full" (`shipping.nothing_left` over `shippable_quantities`), read for all orders in two queries."""
    lines = shipping.lines_of(session, [o.id for o in orders if o.id is not None])
    shippable = shipping.shippable_quantities_of(session, orders, lines)
    facts: dict[int, OrderFacts] = {}
    for order in orders:
        assert order.id is not None
        facts[order.id] = OrderFacts(
            cancelled_at=order.cancelled_at,
            financial_status=order.financial_status,
            refunded_in_full=shipping.nothing_left(lines.get(order.id, []), shippable[order.id]),
            test=order.is_test,
        )
    return facts


def default_composers(policies_dir: Path | None = None) -> dict[str, Composer]:
    """The composers of the kinds we send today: the satisfaction survey (aftercare/surveys/mail.py)
    under `policies_dir`'s surveys.yaml, and the review request and its reminder
    (aftercare/reviews/requests.py) under its review_requests.yaml (the shipped ones when None)."""
    if policies_dir is None:
        return {shipping.DELIVERY_SURVEY: shipped_survey_composer(), **shipped_composers()}
    return {
        shipping.DELIVERY_SURVEY: survey_composer(load_survey_policy(policies_dir)),
        **request_composers(load_review_request_policy(policies_dir)),
    }


def send_review_invitations(
    rt: Runtime, now: datetime, limit: int = 50, api: invitations.TrustpilotInvitations | None = None
) -> list[invitations.Sent]:
    """Send the review invitations due now (Trustpilot's Invitation API; aftercare/reviews/
    invitations.py). Without Trustpilot's settings nothing is sent and the rows wait (logged)."""
    settings = rt.settings
    policy = load_review_request_policy(settings.policies_dir)
    if api is None:
        try:
            api = invitations.TrustpilotInvitations.from_settings(settings)
        except invitations.TrustpilotNotConfigured:
            api = None
    return invitations.send_due(rt.engine, api, policy, settings, now, limit)


@cache
def _policies(policies_dir: Path) -> tuple[ContactPolicy, ShopPolicy]:
    return load_contact_policy(policies_dir / "contact.yaml"), load_shop_policy(policies_dir)


def policies_of(rt: Runtime | Settings) -> tuple[ContactPolicy, ShopPolicy]:
    """policies/contact.yaml and policies/shop.yaml of these settings (read once per directory)."""
    settings = rt if isinstance(rt, Settings) else rt.settings
    return _policies(settings.policies_dir)


def dispatch_due(
    rt: Runtime, now: datetime, limit: int = 1000, composers: Composers | None = None
) -> dispatcher.DispatchResult:
    """Decide and enqueue what is due now (`contact.dispatch.dispatch`, wired)."""
    contact, shop = policies_of(rt)
    return dispatcher.dispatch(
        rt.engine,
        rt.settings,
        contact,
        default_composers(rt.settings.policies_dir) if composers is None else composers,
        now,
        limit,
        order_facts=order_facts,
        renderer=rt.renderer,
        shop=shop,
    )


def composed_kinds(rt: Runtime | Settings, composers: Mapping[str, Composer] | None = None) -> list[str]:
    """The timed kinds the dispatcher sends: those with a composer."""
    contact, _shop = policies_of(rt)
    settings = rt if isinstance(rt, Settings) else rt.settings
    have = default_composers(settings.policies_dir) if composers is None else composers
    return [k for k in dispatcher.timed_kinds(contact) if k in have]


def preview_due(
    engine: Engine,
    settings: Settings,
    now: datetime,
    before: datetime,
    composers: Composers | None = None,
    limit: int = 1000,
) -> list[dispatcher.Planned]:
    """What is due by `before`, and what the rules would say at its moment (`aftercare touchpoints due`)."""
    contact, _shop = policies_of(settings)
    with Session(engine) as session:
        return dispatcher.preview(
            session,
            contact,
            default_composers(settings.policies_dir) if composers is None else composers,
            now,
            before,
            order_facts=order_facts,
            limit=limit,
        )
