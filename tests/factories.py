"""Test data in Shopify's webhook shape. Each test states the fields it cares about as overrides."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from aftercare import samples
from aftercare.orders import shopify
from aftercare.spine.inbox import Delivery, store_delivery

SHOP = "test-shop.myshopify.com"


def order_payload(sample: str = "ja-first-gift", **overrides: Any) -> dict[str, Any]:
    """A sample order (see aftercare/samples/) with top-level fields replaced."""
    payload = copy.deepcopy(samples.load(sample))
    payload.update(overrides)
    return payload


def webhook_headers(
    body: bytes,
    *,
    secret: str,
    topic: str = "orders/create",
    webhook_id: str | None = None,
    event_id: str | None = None,
    shop: str = SHOP,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Hmac-Sha256": shopify.sign(secret, body),
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
        "X-Shopify-Triggered-At": "2026-11-20T01:15:00Z",
    }


def body_of(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def deliver(
    engine: Any,
    payload: dict[str, Any],
    *,
    topic: str = "orders/create",
    webhook_id: str | None = None,
    event_id: str | None = None,
    shop: str = SHOP,
) -> int | None:
    """Store a delivery as the web app would (status pending); returns the inbox id, None if duplicate."""
    inbox_id, _new = store_delivery(
        engine,
        Delivery(
            source="shopify",
            delivery_id=webhook_id or str(uuid.uuid4()),
            event_id=event_id,
            topic=topic,
            shop_domain=shop,
            triggered_at=None,
            body=body_of(payload),
            subject_ref=payload.get("name"),
        ),
    )
    return inbox_id


def fulfillment_payload(
    order: dict[str, Any], *, fulfillment_id: int = 5550001, lines: list[int] | None = None, **overrides: Any
) -> dict[str, Any]:
    """A fulfillments/create body for a sample order: every line (or the line ids given), shipped by
    Yamato with one tracking number, in Shopify's fulfillment shape."""
    payload = samples.fulfillment(order, fulfillment_id=fulfillment_id, lines=lines)
    payload.update(
        tracking_company="ヤマト運輸",
        tracking_number="4321-0987-6543",
        tracking_numbers=["4321-0987-6543"],
        tracking_url="https://toi.kuronekoyamato.co.jp/cgi-bin/tneko?number01=432109876543",
        tracking_urls=["https://toi.kuronekoyamato.co.jp/cgi-bin/tneko?number01=432109876543"],
    )
    payload.update(overrides)
    return payload


def refund_payload(
    order: dict[str, Any], *, refund_id: int = 6660001, lines: dict[int, int] | None = None, **overrides: Any
) -> dict[str, Any]:
    """A refunds/create body: the given {line id: quantity}, or every line in full."""
    wanted = lines if lines is not None else {li["id"]: li["quantity"] for li in order["line_items"]}
    payload: dict[str, Any] = {
        "id": refund_id,
        "order_id": order["id"],
        "created_at": "2026-11-26T10:00:00+09:00",
        "processed_at": "2026-11-26T10:00:00+09:00",
        "note": "返品",
        "restock": True,
        "refund_line_items": [
            {"id": refund_id * 10 + n, "line_item_id": line_id, "quantity": qty}
            for n, (line_id, qty) in enumerate(wanted.items())
        ],
        "transactions": [],
    }
    payload.update(overrides)
    return payload
