"""Surveys as the dispatcher leaves them: an order through the real pipeline (order, fulfillment:
the survey touchpoint is planned from the estimated delivery), its survey mail composed by the real
composer with the context the dispatcher builds, put in the outbox and sent by the file backend."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from aftercare.contact.compose import ComposeContext, Composed, Composer, Recipient
from aftercare.contact.links import unsubscribe_token, unsubscribe_url
from aftercare.contact.sender import load_shop_policy
from aftercare.models import Customer, Order, OutboxMessage, Touchpoint, utcnow
from aftercare.rendering import RenderedEmail
from aftercare.spine import outbox
from aftercare.surveys.mail import survey_composer
from aftercare.surveys.policy import SurveyPolicy, load_survey_policy
from tests.factories import fulfillment_payload, order_payload
from tests.pipeline import receive, send_outbox

SCORE_URL = re.compile(r"https?://[^\s\"'<>]+/survey/[A-Za-z0-9_.\-]+\?score=\d+")


@dataclass
class Survey:
    order_id: int
    order_name: str
    touchpoint_id: int
    mail: Composed
    links: dict[int, str]  # score -> the URL in the text mail

    def path(self, score: int | None = None) -> str:
        url = self.links[next(iter(self.links))] if score is None else self.links[score]
        path = "/" + url.split("/", 3)[3]
        return path.split("?")[0] if score is None else path

    @property
    def token(self) -> str:
        return self.path().rsplit("/", 1)[1]


def delivered_order(
    rt: Any, n: int = 0, sample: str = "ja-first-gift", **overrides: Any
) -> tuple[Order, Touchpoint]:
    """The `n`th order of a test (its own Shopify ids and name), shipped: its survey is planned."""
    base = order_payload(sample)
    payload = order_payload(
        sample, id=base["id"] + 1000 * n, name=f"#{2000 + n}", order_number=2000 + n, **overrides
    )
    receive(rt, payload)
    receive(rt, fulfillment_payload(payload, fulfillment_id=7770000 + n), topic="fulfillments/create")
    with Session(rt.engine, expire_on_commit=False) as s:
        order = s.exec(select(Order).where(Order.shopify_id == payload["id"])).one()
        touchpoint = s.exec(
            select(Touchpoint).where(Touchpoint.order_id == order.id, Touchpoint.kind == "delivery_survey")
        ).one()
    return order, touchpoint


def compose(
    rt: Any,
    touchpoint: Touchpoint,
    *,
    now: datetime,
    policy: SurveyPolicy | None = None,
    composer: Composer | None = None,
) -> Composed:
    """The survey mail, composed with the context the dispatcher builds."""
    settings = rt.settings
    policy = policy or load_survey_policy(settings.policies_dir)
    with Session(rt.engine) as session:
        tp = session.get(Touchpoint, touchpoint.id)
        order = session.get(Order, tp.order_id)
        customer = session.get(Customer, order.customer_id)
        locale = order.locale
        name = " ".join(p for p in (customer.last_name, customer.first_name) if p) if locale == "ja" else None
        token = unsubscribe_token(
            settings.link_secret.get_secret_value(),
            shop_domain=order.shop_domain,
            email_key=customer.email_key,
            list_name="surveys",
            touchpoint_id=tp.id,
            now=now,
        )
        ctx = ComposeContext(
            session=session,
            touchpoint=tp,
            order=order,
            recipient=Recipient(customer.email, name, customer.email_key, order.shop_domain, locale),
            renderer=rt.renderer,
            now=now,
            list_name="surveys",
            unsubscribe_url=unsubscribe_url(settings.customer_base_url, token),
            shop=load_shop_policy(settings.policies_dir).for_locale(locale),
            base_url=settings.customer_base_url,
            link_secret=settings.link_secret.get_secret_value(),
        )
        return (composer or survey_composer(policy))(ctx)


def mailed_survey(
    rt: Any,
    n: int = 0,
    *,
    now: datetime | None = None,
    policy: SurveyPolicy | None = None,
    send: bool = True,
    **overrides: Any,
) -> Survey:
    """An order whose survey mail was composed at `now` (default: now) and sent."""
    order, touchpoint = delivered_order(rt, n, **overrides)
    now = now or utcnow()
    mail = compose(rt, touchpoint, now=now, policy=policy)
    with Session(rt.engine) as session:
        outbox.enqueue(
            session,
            touchpoint=session.get(Touchpoint, touchpoint.id),
            to_email=order.email or "x@example.com",
            to_name=None,
            rendered=RenderedEmail(mail.subject, mail.text_body, mail.html_body),
            locale=order.locale,
            order_name=order.name,
            is_test=order.is_test,
        )
        session.commit()
    if send:
        send_outbox(rt)
        with Session(rt.engine) as session:  # sent "at" the mail's time, for the report
            row = session.exec(
                select(OutboxMessage).where(OutboxMessage.touchpoint_id == touchpoint.id)
            ).one()
            if row.sent_at is not None:
                row.sent_at = now
                session.add(row)
                session.commit()
    links = {int(u.rsplit("=", 1)[1]): u for u in SCORE_URL.findall(mail.text_body)}
    return Survey(order.id, order.name, touchpoint.id, mail, links)
