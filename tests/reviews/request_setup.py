"""Orders whose review request is due, made through the real pipeline (order, then fulfillment:
the request is planned 7 days after the estimated delivery, 2026-12-02 15:00 JST), dispatched by the
real dispatcher with the real composers at a moment inside the send window."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import yaml
from sqlmodel import Session, select

from aftercare import timed
from aftercare.contact.compose import Composer
from aftercare.models import OutboxMessage, Touchpoint
from aftercare.reviews.request_policy import ReviewRequestPolicy, load_review_request_policy
from aftercare.reviews.requests import request_composers
from aftercare.settings import PROJECT_ROOT
from tests.factories import fulfillment_payload, order_payload
from tests.pipeline import receive, rows, send_outbox

TOKYO = ZoneInfo("Asia/Tokyo")


def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO).astimezone(UTC)


# Inside the send window, after the request fell due (2026-12-02 15:00 JST), within the stale limit.
NOW = jst(2026, 12, 3, 10, 0)
FORM_URL = re.compile(r"https?://[^\s\"'<>]+/r/[A-Za-z0-9_.\-]+(?:\?item=\d+)?")


def _line(line_id: int, title: str, sku: str, product_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": line_id,
        "title": title,
        "variant_title": None,
        "name": title,
        "sku": sku,
        "quantity": 1,
        "price": "330",
        "product_id": product_id,
        "variant_id": product_id * 10 + 1,
        "properties": [],
        "fulfillment_status": None,
        "fulfillable_quantity": 1,
        "requires_shipping": True,
        "taxable": True,
        "gift_card": False,
        "product_exists": True,
        "vendor": "aftercare demo",
        "fulfillment_service": "manual",
        "grams": 0,
        **extra,
    }


# Lines that are not products a person reviews (policies/review_requests.yaml `exclude`).
GIFT_WRAP = _line(9100031, "ギフトラッピング", "GIFT-WRAP-01", 910003)
PROTECTION = _line(9100041, "Shipping Protection", "SP-001", 910004, requires_shipping=False)
GUIDE = _line(9100051, "器の手入れガイド", "DL-GUIDE-01", 910005, requires_shipping=False)
GIFT_CARD = _line(9100061, "ギフトカード", "GC-5000", 910006, gift_card=True, requires_shipping=False)
# The sample order ja-first-gift's own products: a towel set (product 910001) and mugs (910002).
TOWEL, MUG = 910001, 910002


@dataclass
class Request:
    order_id: int
    name: str
    touchpoint_id: int
    payload: dict[str, Any]


def ordered(
    rt: Any,
    n: int,
    *,
    sample: str = "ja-first-gift",
    email: str | None = None,
    extra_lines: list[dict[str, Any]] | None = None,
    keep_survey: bool = False,
    due_at: datetime | None = None,
    **overrides: Any,
) -> Request:
    """Order n (its own customer unless `email` is shared), shipped: its review request is planned.
    The survey is moved out of the way (2099) unless `keep_survey`."""
    base = order_payload(sample)
    address = email or f"buyer{n}@example.jp"
    payload = order_payload(
        sample, id=9_300_000 + n, name=f"#{8000 + n}", order_number=8000 + n, email=address, **overrides
    )
    payload["line_items"] = [*base["line_items"], *(extra_lines or [])]
    payload["customer"] = {**payload["customer"], "id": 8_300_000 + n, "email": address}
    out = receive(rt, payload)
    assert out.status == "done", out.reason
    shipped = receive(
        rt, fulfillment_payload(payload, fulfillment_id=6_300_000 + n), topic="fulfillments/create"
    )
    assert shipped.status == "done", shipped.reason
    with Session(rt.engine) as s:
        tp = s.exec(
            select(Touchpoint).where(Touchpoint.order_id == out.order_id, Touchpoint.kind == "review_request")
        ).one()
        s.expunge(tp)
        if due_at is not None:
            s.execute(sa.update(Touchpoint).where(Touchpoint.id == tp.id).values(due_at=due_at))
        if not keep_survey:
            s.execute(
                sa.update(Touchpoint)
                .where(Touchpoint.order_id == out.order_id, Touchpoint.kind == "delivery_survey")
                .values(due_at=datetime(2099, 1, 1, tzinfo=UTC))
            )
        s.commit()
        assert tp.id is not None and out.order_id is not None
        return Request(out.order_id, payload["name"], tp.id, payload)


def dispatch(
    rt: Any, now: datetime = NOW, composers: dict[str, Composer] | None = None, send: bool = True
) -> Any:
    """The real dispatcher with the real composers (or those given), then the outbox sends."""
    result = timed.dispatch_due(rt, now, composers=composers)
    if send:
        send_outbox(rt, now)
    return result


def composers_for(policy: ReviewRequestPolicy) -> dict[str, Composer]:
    """Every default composer, with the review request's under `policy`."""
    return {**timed.default_composers(), **request_composers(policy)}


def shipped_policy(**changes: Any) -> ReviewRequestPolicy:
    """policies/review_requests.yaml with top-level fields replaced (validated again)."""
    data = yaml.safe_load((PROJECT_ROOT / "policies" / "review_requests.yaml").read_text())
    data.update(changes)
    return ReviewRequestPolicy.model_validate(data)


def policies_dir_with(tmp_path: Path, **changes: Any) -> Path:
    """A copy of policies/ with review_requests.yaml changed."""
    target = tmp_path / "policies"
    target.mkdir(exist_ok=True)
    for path in (PROJECT_ROOT / "policies").glob("*.yaml"):
        (target / path.name).write_text(path.read_text())
    data = yaml.safe_load((target / "review_requests.yaml").read_text())
    data.update(changes)
    (target / "review_requests.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    load_review_request_policy(target)  # valid
    return target


def touchpoint(rt: Any, tp_id: int) -> Touchpoint:
    with Session(rt.engine) as s:
        found = s.get(Touchpoint, tp_id)
        assert found is not None
        return found


def of_order(rt: Any, order_id: int, kind: str) -> list[Touchpoint]:
    return rows(rt, Touchpoint, Touchpoint.order_id == order_id, Touchpoint.kind == kind)


def mails(rt: Any, kind: str, order_id: int | None = None) -> list[OutboxMessage]:
    where = [OutboxMessage.kind == kind]
    if order_id is not None:
        where.append(OutboxMessage.order_id == order_id)
    return rows(rt, OutboxMessage, *where)
