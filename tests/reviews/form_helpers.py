"""Orders with a review request, as the pipeline leaves them, and the link to their review form."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from aftercare.models import InboxEvent, Order, OrderLine, ReviewRevision, Touchpoint, utcnow
from aftercare.reviews.form_links import review_form_url
from tests.factories import fulfillment_payload, order_payload
from tests.pipeline import receive


@dataclass
class Reviewable:
    order_id: int
    order_name: str
    shopify_id: int
    touchpoint_id: int
    payload: dict[str, Any]
    url: str

    @property
    def path(self) -> str:
        return "/" + self.url.split("/", 3)[3]

    @property
    def token(self) -> str:
        return self.path.rsplit("/", 1)[1]


def delivered(
    rt: Any, n: int = 0, sample: str = "ja-first-gift", **overrides: Any
) -> tuple[Order, Touchpoint, dict]:
    """The `n`th order of a test, shipped: its review request is planned."""
    base = order_payload(sample)
    payload = order_payload(
        sample, id=base["id"] + 1000 * n, name=f"#{3000 + n}", order_number=3000 + n, **overrides
    )
    receive(rt, payload)
    receive(rt, fulfillment_payload(payload, fulfillment_id=8880000 + n), topic="fulfillments/create")
    with Session(rt.engine, expire_on_commit=False) as s:
        order = s.exec(select(Order).where(Order.shopify_id == payload["id"])).one()
        touchpoint = s.exec(
            select(Touchpoint).where(Touchpoint.order_id == order.id, Touchpoint.kind == "review_request")
        ).one()
    return order, touchpoint, payload


def reviewable(rt: Any, n: int = 0, *, now: datetime | None = None, **kw: Any) -> Reviewable:
    """An order with a review request and the form link its mail carries (made at `now`)."""
    order, touchpoint, payload = delivered(rt, n, **kw)
    url = review_form_url(
        rt.settings.customer_base_url,
        rt.settings.link_secret.get_secret_value(),
        order.id,
        touchpoint.id,
        now or utcnow(),
    )
    return Reviewable(order.id, order.name, order.shopify_id, touchpoint.id, payload, url)


def refs(rt: Any, order_id: int) -> list[str]:
    """The product refs of an order's lines (its SKUs), in order."""
    with Session(rt.engine) as s:
        lines = s.exec(select(OrderLine).where(OrderLine.order_id == order_id).order_by(OrderLine.position))
        return [line.sku or line.title for line in lines]


def revisions(rt: Any) -> list[ReviewRevision]:
    with Session(rt.engine) as s:
        return list(s.exec(select(ReviewRevision).order_by(ReviewRevision.id)))


def review_deliveries(rt: Any) -> list[InboxEvent]:
    with Session(rt.engine) as s:
        return list(s.exec(select(InboxEvent).where(InboxEvent.source == "reviews").order_by(InboxEvent.id)))
