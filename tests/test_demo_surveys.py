"""The survey cases of `aftercare demo` (aftercare/demo.py) do what the demo says, whatever the hour
it runs at: posted to the real web app (signed webhooks, a one-click unsubscribe), received by the
real pipeline, judged by the real dispatcher at that moment."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare import demo, timed
from aftercare.contact.policy import load_contact_policy
from aftercare.models import Order, OutboxMessage, Touchpoint
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.factories import SHOP, body_of, webhook_headers
from tests.pipeline import drain


def _survey(rt, name: str) -> Touchpoint:
    with Session(rt.engine) as session:
        return session.exec(
            select(Touchpoint)
            .join(Order, Order.id == Touchpoint.order_id)
            .where(Order.name == name, Touchpoint.kind == "delivery_survey")
        ).one()


@pytest.mark.parametrize("hour_utc", [0, 6, 12, 18])
def test_the_three_survey_cases_at_any_hour(rt, settings, hour_utc):
    now = datetime(2026, 12, 2, hour_utc, 30, tzinfo=UTC)
    policy = load_contact_policy(settings.policies_dir / "contact.yaml")
    days = rt.policies.delivery.survey_days_after_delivery
    cases = demo.survey_cases(now, policy, days)
    assert [c.label for c in cases] == ["due now", "quiet hours", "unsubscribed"]
    assert cases[0].zone != cases[1].zone
    secret = settings.shopify_webhook_secret.get_secret_value()
    with TestClient(create_app(settings, waker=NoWaker())) as client:
        for case in cases:
            if case.label == "unsubscribed":
                url, body, headers = demo.unsubscribe_request(
                    case,
                    secret=settings.link_secret.get_secret_value(),
                    shop_domain=SHOP,
                    base_url="",
                    now=now,
                )
                assert client.post(url, content=body, headers=headers).status_code == 200
            for topic, payload in (
                ("orders/create", case.order),
                ("fulfillments/create", case.fulfillment),
                ("fulfillments/update", case.delivered),
            ):
                body = body_of(payload)
                answer = client.post(
                    "/webhooks/shopify",
                    content=body,
                    headers=webhook_headers(body, secret=secret, topic=topic),
                )
                assert answer.status_code == 200, answer.text
    while drain(rt):
        pass
    result = timed.dispatch_due(rt, now)
    lines = {}
    for case in cases:
        survey = _survey(rt, case.order["name"])
        assert survey.verdict is not None, case.label
        lines[case.label] = survey.verdict["line"]
        assert survey.verdict["line"].startswith(case.expect), (case.label, survey.verdict["line"])
    assert "(quiet hours)" in lines["quiet hours"]
    assert "unsubscribed from surveys" in lines["unsubscribed"]
    assert len(result.sent) == 1
    # The unsubscribed customer still got the order mails; no survey.
    with Session(rt.engine) as session:
        kinds = {
            m.kind
            for m in session.exec(
                select(OutboxMessage).where(OutboxMessage.to_email == cases[2].order["email"])
            )
        }
    assert {"order_confirmation", "shipment_notice"} <= kinds and "delivery_survey" not in kinds
