"""The fault suite's workload: orders with a known intended final state, the webhooks Shopify (and a
review platform) would send for them, and what the database and the 3PL must show at the end.

Each order gets one intent; its webhooks are real-shaped bodies varied from aftercare/samples. Every
logical delivery has its own X-Shopify-Webhook-Id (its duplicates share it). Phase 1 carries what
happens at checkout; phase 2 what happens after the warehouse has had time to take the order
(fulfillments, refunds, late cancellations, reviews)."""

from __future__ import annotations

import copy
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aftercare import samples
from aftercare.orders import shopify

SHOP = "faults.myshopify.com"
PAID_SAMPLES = ("ja-first-gift", "en-first", "ja-repeat", "en-repeat-gift")
KONBINI = "ja-pending-konbini"

# intent -> weight in the mix
INTENTS = {
    "shipped": 25,  # paid, handed off, fulfilled (some delivered)
    "paid": 20,  # paid, handed off, not fulfilled yet
    "cancelled_before": 10,  # cancelled at checkout time, before the warehouse could have it
    "cancelled_after": 10,  # cancelled in phase 2, after the warehouse may have it
    "refunded_full": 10,  # fully refunded before fulfillment
    "refunded_partial": 15,  # one unit refunded before fulfillment: the warehouse ships the rest
    "konbini": 10,  # konbini, never paid
}


@dataclass
class Delivery:
    """One logical webhook: posted `copies` times with the same ids."""

    endpoint: str  # "shopify" or "reviews"
    topic: str
    body: bytes
    webhook_id: str  # X-Shopify-Webhook-Id; for reviews the inbox delivery id is platform:review_id
    event_id: str | None
    phase: int
    order_name: str

    def headers(self, shopify_secret: str, reviews_secret: str, *, sign: bool = True) -> dict[str, str]:
        if self.endpoint == "reviews":
            signature = shopify.sign(reviews_secret, self.body) if sign else "bad"
            return {"Content-Type": "application/json", "X-Aftercare-Hmac-Sha256": signature}
        return {
            "Content-Type": "application/json",
            "X-Shopify-Topic": self.topic,
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-Hmac-Sha256": shopify.sign(shopify_secret, self.body) if sign else "bad",
            "X-Shopify-Webhook-Id": self.webhook_id,
            "X-Shopify-Event-Id": self.event_id or self.webhook_id,
            "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
        }

    @property
    def inbox_key(self) -> tuple[str, str]:
        """(source, delivery_id) of the inbox row this delivery must become."""
        if self.endpoint == "reviews":
            data = json.loads(self.body)
            return "reviews", f"{data['platform']}:{data['review_id']}"
        return "shopify", self.webhook_id


@dataclass
class Expected:
    """What must be true of one order at the end."""

    name: str
    shopify_id: int
    intent: str
    email: str
    cancelled: bool
    financial_status: str
    lines: dict[int, int]  # line id -> ordered quantity
    refunded: dict[int, int] = field(default_factory=dict)
    fulfilled: bool = False
    review: tuple[str, int] | None = None  # (review id, rating)

    @property
    def must_not_ship(self) -> bool:
        return self.cancelled or self.intent in ("refunded_full", "konbini")

    @property
    def must_be_handed_off(self) -> bool:
        """The 3PL must hold a ship instruction for it (fulfilled orders may have shipped before it)."""
        return self.intent in ("paid", "refunded_partial")

    @property
    def net_quantities(self) -> dict[int, int]:
        net = {line: qty - self.refunded.get(line, 0) for line, qty in self.lines.items()}
        return {line: qty for line, qty in net.items() if qty > 0}

    @property
    def confirmation(self) -> str:
        """'one': exactly one confirmation reaches the customer; 'at_most_one' where a cancellation
        may legitimately stop it before it is sent."""
        return "at_most_one" if self.cancelled or self.intent == "refunded_full" else "one"


@dataclass
class Workload:
    deliveries: list[Delivery]
    expected: list[Expected]

    def phase(self, n: int) -> list[Delivery]:
        return [d for d in self.deliveries if d.phase == n]


def _ts(t: datetime) -> str:
    return t.isoformat()


def generate(n_orders: int, seed: int, run_tag: str) -> Workload:
    """n_orders orders in the intents' mix, their webhooks, and what must hold at the end."""
    rng = random.Random(seed)
    names = list(INTENTS)
    weights = [INTENTS[k] for k in names]
    base_id = 7_000_000_000 + rng.randrange(1_000_000) * 1000
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    deliveries: list[Delivery] = []
    expected: list[Expected] = []

    def add(endpoint: str, topic: str, payload: dict[str, Any], phase: int, name: str) -> None:
        deliveries.append(
            Delivery(
                endpoint=endpoint,
                topic=topic,
                body=json.dumps(payload, ensure_ascii=False).encode(),
                webhook_id=str(uuid.uuid4()),
                event_id=str(uuid.uuid4()),
                phase=phase,
                order_name=name,
            )
        )

    for i in range(n_orders):
        intent = names[i % len(names)] if i < len(names) else rng.choices(names, weights)[0]
        sample = KONBINI if intent == "konbini" else PAID_SAMPLES[i % len(PAID_SAMPLES)]
        order = copy.deepcopy(samples.load(sample))
        oid = base_id + i
        name = f"#{run_tag}{i:04d}"
        email = f"c{i}.{run_tag.lower()}@example.jp"
        placed = t0 + timedelta(seconds=i)
        order.update(
            id=oid,
            admin_graphql_api_id=f"gid://shopify/Order/{oid}",
            name=name,
            number=i + 1,
            order_number=10_000 + i,
            email=email,
            contact_email=email,
            created_at=_ts(placed),
            processed_at=_ts(placed),
            updated_at=_ts(placed),
        )
        if isinstance(order.get("customer"), dict):
            order["customer"].update(id=oid + 500_000_000, email=email, orders_count=1)
        lines: dict[int, int] = {}
        for k, line in enumerate(order["line_items"]):
            line["id"] = oid * 100 + k
            qty = rng.randint(2, 3) if intent == "refunded_partial" and k == 0 else rng.randint(1, 3)
            line["quantity"] = qty
            line["fulfillable_quantity"] = qty
            lines[line["id"]] = qty
        exp = Expected(
            name=name,
            shopify_id=oid,
            intent=intent,
            email=email,
            cancelled=intent.startswith("cancelled"),
            financial_status=str(order.get("financial_status")),
            lines=lines,
        )
        paid_later = intent != "konbini" and rng.random() < 0.3
        if paid_later:  # orders/create pending, then orders/paid a minute later
            created = dict(order, financial_status="pending")
            add("shopify", "orders/create", created, 1, name)
            add("shopify", "orders/paid", dict(order, updated_at=_ts(placed + timedelta(minutes=1))), 1, name)
        else:
            add("shopify", "orders/create", order, 1, name)
        if intent.startswith("cancelled"):
            cancelled = dict(
                order,
                cancelled_at=_ts(placed + timedelta(minutes=2)),
                cancel_reason="customer",
                financial_status="refunded",
                updated_at=_ts(placed + timedelta(minutes=2)),
            )
            exp.financial_status = "refunded"
            add("shopify", "orders/cancelled", cancelled, 1 if intent == "cancelled_before" else 2, name)
        if intent.startswith("refunded"):
            first = next(iter(lines))
            wanted = dict(lines) if intent == "refunded_full" else {first: 1}
            exp.refunded = wanted
            refund_id = oid * 10 + 7
            refund = {
                "id": refund_id,
                "order_id": oid,
                "created_at": _ts(placed + timedelta(minutes=3)),
                "processed_at": _ts(placed + timedelta(minutes=3)),
                "note": "返品",
                "restock": True,
                "refund_line_items": [
                    {"id": refund_id * 10 + n, "line_item_id": line_id, "quantity": qty}
                    for n, (line_id, qty) in enumerate(wanted.items())
                ],
                "transactions": [],
            }
            status = "refunded" if intent == "refunded_full" else "partially_refunded"
            exp.financial_status = status
            add("shopify", "refunds/create", refund, 2, name)
            updated = dict(order, financial_status=status, updated_at=_ts(placed + timedelta(minutes=3)))
            add("shopify", "orders/updated", updated, 2, name)
        if intent == "shipped":
            exp.fulfilled = True
            shipped_at = _ts(placed + timedelta(minutes=30))
            add("shopify", "fulfillments/create", samples.fulfillment(order, at=shipped_at), 2, name)
            if rng.random() < 0.5:
                delivered = samples.fulfillment(
                    order,
                    at=shipped_at,
                    shipment_status="delivered",
                    updated_at=_ts(placed + timedelta(minutes=50)),
                )
                add("shopify", "fulfillments/update", delivered, 2, name)
            if rng.random() < 0.3:
                rating = rng.choice([1, 2, 5])
                review_id = f"faults-{run_tag}-{i}"
                exp.review = (review_id, rating)
                text = (
                    "届くのが遅く、箱もつぶれていて残念でした。"
                    if rating <= 2
                    else "とても良いタオルでした。また買います。"
                )
                review = {
                    "platform": "own",
                    "review_id": review_id,
                    "product_ref": order["line_items"][0].get("sku"),
                    "order_ref": name,
                    "rating": rating,
                    "title": "遅延" if rating <= 2 else "満足",
                    "body": text,
                    "author": "faults",
                    "language": "ja",
                    "created_at": _ts(placed + timedelta(hours=1)),
                }
                add("reviews", "reviews/create", review, 2, name)
        expected.append(exp)
    return Workload(deliveries, expected)
