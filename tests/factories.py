"""Test data in Shopify's webhook shape. Each test states the fields it cares about as overrides."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

from aftercare import samples, shopify
from aftercare.inbox import Delivery, store_delivery

SHOP = "test-shop.myshopify.com"


def order_payload(sample: str = "ja-first-gift", **overrides: Any) -> dict[str, Any]:
    """A sample order (see aftercare/samples/) with top-level fields replaced."""
    payload = copy.deepcopy(samples.load(sample))
    payload.update(overrides)
    return payload


def webhook_headers(body: bytes, *, secret: str, topic: str = "orders/create", webhook_id: str | None = None,
                    event_id: str | None = None, shop: str = SHOP) -> dict[str, str]:
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


def deliver(engine: Any, payload: dict[str, Any], *, topic: str = "orders/create",
            webhook_id: str | None = None, event_id: str | None = None) -> int | None:
    """Store a delivery as the web app would (status pending); returns the inbox id, None if duplicate."""
    inbox_id, _new = store_delivery(engine, Delivery(
        source="shopify", delivery_id=webhook_id or str(uuid.uuid4()), event_id=event_id, topic=topic,
        shop_domain=SHOP, triggered_at=None, body=body_of(payload), subject_ref=payload.get("name"),
    ))
    return inbox_id
