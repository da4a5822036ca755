"""The demo's own sample orders, in Shopify's documented orders/create webhook shape, and sample
reviews (reviews/*.json) in aftercare's documented review JSON (see aftercare.reviews.intake)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json") for p in resources.files(__name__).iterdir() if p.name.endswith(".json")
    )


def load(name: str) -> dict[str, Any]:
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))


def review_names() -> list[str]:
    """The sample reviews' names (reviews/<name>.json)."""
    folder = resources.files(__name__).joinpath("reviews")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def review(name: str) -> dict[str, Any]:
    """A sample review, e.g. `review("ja-late-gift")`: 2 stars, Japanese, about sample order #1101."""
    folder = resources.files(__name__).joinpath("reviews")
    return json.loads(folder.joinpath(f"{name}.json").read_text(encoding="utf-8"))


CARRIERS = {
    "JPY": ("ヤマト運輸", "https://toi.kuronekoyamato.co.jp/cgi-bin/tneko?number01={n}"),
    "USD": ("USPS", "https://tools.usps.com/go/TrackConfirmAction?tLabels={n}"),
    "GBP": ("Royal Mail", "https://www.royalmail.com/track-your-item#/tracking-results/{n}"),
}


def fulfillment(
    order: dict[str, Any],
    *,
    fulfillment_id: int | None = None,
    lines: list[int] | None = None,
    at: str = "2026-11-24T15:00:00+09:00",
    shipment_status: str | None = None,
    updated_at: str | None = None,
) -> dict[str, Any]:
    """A fulfillments/create (or /update) body for a sample order, in Shopify's fulfillment shape:
    every line (or the line ids given), one tracking number with the currency's usual carrier."""
    carrier, url = CARRIERS.get(order.get("currency", "JPY"), CARRIERS["JPY"])
    number = f"{order['id'] % 10_000_000:012d}"
    items = [li for li in order["line_items"] if lines is None or li["id"] in lines]
    return {
        "id": fulfillment_id or order["id"] * 10 + 1,
        "order_id": order["id"],
        "name": f"{order['name']}.1",
        "status": "success",
        "service": "manual",
        "shipment_status": shipment_status,
        "tracking_company": carrier,
        "tracking_number": number,
        "tracking_numbers": [number],
        "tracking_url": url.format(n=number),
        "tracking_urls": [url.format(n=number)],
        "created_at": at,
        "updated_at": updated_at or at,
        "line_items": [
            {k: li.get(k) for k in ("id", "title", "variant_title", "sku", "quantity", "requires_shipping")}
            for li in items
        ],
    }
