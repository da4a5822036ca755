"""Orders with a planned survey, made through the real pipeline (order, then fulfillment), the
survey's due time then placed where a test wants it; and a plain composer standing in for the
survey's own (aftercare/surveys/mail.py, another branch)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare.contact.compose import ComposeContext, Composed
from aftercare.models import Touchpoint
from tests.factories import fulfillment_payload, order_payload
from tests.pipeline import receive

TOKYO = {"country_code": "JP", "country": "Japan", "province": "東京都", "city": "渋谷区", "zip": "150-0001"}
NEW_YORK = {"country_code": "US", "province_code": "NY", "city": "New York", "first_name": "Ann"}
BERLIN = {"country_code": "DE", "country": "Germany", "city": "Berlin"}


def compose_plain(ctx: ComposeContext) -> Composed:
    """A survey mail as plain as possible, with the link to leave the list and the sender's address."""
    return Composed(
        subject=f"How was your order {ctx.order.name}?",
        text_body=f"Tell us: {ctx.base_url}/s/{ctx.touchpoint.id}\n"
        f"{ctx.shop['name']}, {ctx.shop['postal_address']}\nUnsubscribe: {ctx.unsubscribe_url}\n",
        html_body=f'<p><a href="{ctx.unsubscribe_url}">Unsubscribe</a></p>',
    )


COMPOSERS = {"delivery_survey": compose_plain}


def make_survey(
    rt: Any,
    n: int,
    *,
    due_at: datetime,
    email: str | None = None,
    shipping: dict[str, Any] | None | str = "tokyo",
    billing: dict[str, Any] | None = None,
    **overrides: Any,
) -> int:
    """Order n (its own customer unless `email` is shared), shipped, its survey due at `due_at`;
    returns the survey touchpoint's id."""
    address = TOKYO if shipping == "tokyo" else shipping
    payload = order_payload(
        "ja-first-gift",
        id=9_100_000 + n,
        name=f"#{7000 + n}",
        order_number=7000 + n,
        email=email or f"buyer{n}@example.jp",
        shipping_address=address,
        billing_address=billing,
        **overrides,
    )
    payload["customer"] = {**payload["customer"], "id": 8_100_000 + n, "email": payload["email"]}
    out = receive(rt, payload)
    assert out.status == "done", out.reason
    shipped = receive(
        rt, fulfillment_payload(payload, fulfillment_id=6_100_000 + n), topic="fulfillments/create"
    )
    assert shipped.status == "done", shipped.reason
    with Session(rt.engine) as s:
        tp = s.exec(
            select(Touchpoint).where(
                Touchpoint.order_id == out.order_id, Touchpoint.kind == "delivery_survey"
            )
        ).one()
        assert tp.id is not None
        s.execute(sa.update(Touchpoint).where(Touchpoint.id == tp.id).values(due_at=due_at))
        # The review request is not what these tests look at: out of the way, well in the future.
        s.execute(
            sa.update(Touchpoint)
            .where(Touchpoint.order_id == out.order_id, Touchpoint.kind == "review_request")
            .values(due_at=datetime(2099, 1, 1, tzinfo=due_at.tzinfo))
        )
        s.commit()
        return tp.id


def touchpoint(rt: Any, tp_id: int) -> Touchpoint:
    with Session(rt.engine) as s:
        found = s.get(Touchpoint, tp_id)
        assert found is not None
        return found
