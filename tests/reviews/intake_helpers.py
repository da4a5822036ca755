"""Builders for review-intake tests: a review in the documented JSON, signed, stored and processed
the way the web app and the flows do it. Each test passes the fields it cares about."""

from __future__ import annotations

import copy
import json
from typing import Any

from aftercare import samples
from aftercare.orders import shopify
from aftercare.processing import Outcome, process_row
from aftercare.reviews.intake import review_delivery
from aftercare.runtime import Runtime
from aftercare.spine.inbox import claim_batch, store_delivery
from tests.factories import deliver, order_payload


def review_payload(**overrides: Any) -> dict[str, Any]:
    """The sample negative review (2 stars, Japanese, about order #1101) with fields replaced;
    a value of `...` removes the field."""
    payload = copy.deepcopy(samples.review("ja-late-gift"))
    for key, value in overrides.items():
        if value is ...:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def review_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def signed_headers(body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Aftercare-Hmac-Sha256": shopify.sign(secret, body)}


def process_all(rt: Runtime) -> list[Outcome]:
    return [process_row(rt, c.inbox_id) for c in claim_batch(rt.engine, 50)]


def receive_order(rt: Runtime, sample: str = "ja-first-gift", **overrides: Any) -> dict[str, Any]:
    """Store and process a sample order (so a review can link to it); returns its payload."""
    payload = order_payload(sample, **overrides)
    deliver(rt.engine, payload)
    process_all(rt)
    return payload


def receive_review(rt: Runtime, **overrides: Any) -> Outcome:
    """Store a review as the webhook would, process it, and return its outcome."""
    inbox_id, new = store_delivery(rt.engine, review_delivery(review_body(review_payload(**overrides))))
    assert new and inbox_id is not None
    [outcome] = [o for o in process_all(rt) if o.inbox_id == inbox_id]
    return outcome
