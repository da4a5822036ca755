"""`python -m bench.review_requests`: N review requests due at once (the morning after quiet hours),
on SQLite and PostgreSQL, beside the bare render+send loop measured in the same run.

The same measurement as the surveys' (bench/contact.py, `against_bare`): the dispatcher decides each
request by the contact rules, the request's own composer (aftercare/reviews/requests.py, under the
shipped policies/review_requests.yaml) picks the order's reviewable products, remembers them, plans
the reminder and writes the mail with a signed link to our form per product, the outbox sends it
into the loopback SendGrid fake (the SDK for real), in batches as send-timed-messages does. Each
order was delivered (its shipment marked delivered) and has two products and a gift wrap
line the request leaves out. Goal: at least 0.33x the bare loop.

    python -m bench.review_requests [--requests 20000] [--bare 2000] [--dbs sqlite,postgres]
    python -m bench.review_requests --requests 500 --bare 200   # a small size, to check it works
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.contact import SHOP, against_bare, bound_sql, fix_sequences, load_orders, load_touchpoints, numbers
from bench.run import bare_loop, count, fake_sendgrid, say

KIND = "review_request"
# Each order's lines: two products to review and the gift wrap policies/review_requests.yaml excludes.
LINES = (
    ("今治タオル ギフトセット", "TOWEL-IMABARI-01", 3500),
    ("有田焼 マグカップ", "MUG-ARITA-02", 1800),
    ("ギフトラッピング", "WRAP-1", 200),
)
REVIEWABLE = [sku for _title, sku, _price in LINES if not sku.startswith("WRAP-")]


def load_review_requests(engine: sa.Engine, n: int, due_at: datetime, status: str = "planned") -> None:
    """n customers, one delivered order each (Tokyo, Japanese, the three `LINES`), each with its
    review request due at `due_at` (touchpoint i of order i, in `status`): INSERT ... SELECT over a
    number series, as bench/contact.py writes the surveys."""
    placed, delivered = due_at - timedelta(days=10), due_at - timedelta(days=7)
    pg = engine.dialect.name == "postgresql"
    true = "true" if pg else "1"
    as_json = (lambda v: f"CAST({v} AS JSON)") if pg else (lambda v: v)
    with engine.begin() as conn:
        load_orders(conn, n, placed)
        for position, (title, sku, price) in enumerate(LINES):
            conn.execute(
                bound_sql(
                    numbers(n) + "INSERT INTO order_lines (order_id, shopify_id, position, title, sku, "
                    "quantity, price, requires_shipping, properties) "
                    f"SELECT i, {position + 1}, {position}, :title, :sku, 1, {price}, {true}, "
                    + as_json("'[]'")
                    + " FROM n"
                ),
                {"title": title, "sku": sku},
            )
        conn.execute(
            bound_sql(
                numbers(n) + "INSERT INTO shipments (order_id, shop_domain, shopify_id, name, status, "
                "shipment_status, carrier, tracking_numbers, tracking_urls, lines, shipped_at, "
                "delivered_at, source_updated_at, created_at, updated_at, raw) "
                "SELECT i, :shop, 80000000 + i, '#S.1', 'success', 'delivered', 'Yamato', "
                + ", ".join(as_json("'[]'") for _ in range(3))
                + ", :placed, :stamp, :stamp, :placed, :stamp, "
                + as_json("'{}'")
                + " FROM n"
            ),
            {"shop": SHOP, "placed": placed + timedelta(days=1), "stamp": delivered},
        )
        load_touchpoints(conn, n, KIND, due_at, delivered, status=status)
        fix_sequences(conn, ("customers", "orders", "touchpoints"))


def counts(url: str, sent: int) -> dict[str, Any]:
    """After the run: each request sent asked about the two products (one `review_request_items` row
    each, the gift wrap left out), planned its one reminder, and is done."""
    out = {
        "requests_done": count(
            url, f"SELECT count(*) FROM touchpoints WHERE kind = '{KIND}' AND status = 'done'"
        ),
        "reminders_planned": count(
            url, "SELECT count(*) FROM touchpoints WHERE kind = 'review_reminder' AND status = 'planned'"
        ),
        "products_asked": count(url, "SELECT count(*) FROM review_request_items"),
    }
    out["consistent"] = (
        out["requests_done"] == out["reminders_planned"] == sent
        and out["products_asked"] == len(REVIEWABLE) * sent
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--bare", type=int, default=2_000)
    parser.add_argument("--dbs", default="sqlite,postgres")
    parser.add_argument("--port", type=int, default=18933)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-review-requests-") as tmp:
        workdir = Path(tmp)
        with fake_sendgrid(args.port, workdir) as sg_url:
            bare = bare_loop(sg_url, args.bare)
            say(f"bare render+send loop: {json.dumps(bare)}")
            report["bare"] = bare
            report |= against_bare(
                args.dbs.split(","),
                sg_url,
                workdir,
                args.requests,
                bare,
                kind=KIND,
                load=load_review_requests,
                what="review requests",
                check=counts,
            )
    say(json.dumps(report, ensure_ascii=False))
    # A run that did not send every request, or left other rows, measured something else: fail it
    # (whether the goal was met is reported, as bench/contact.py reports it).
    runs = [v for k, v in report.items() if k.startswith("dispatch_")]
    return 0 if all(v["sent"] == args.requests and v["database"]["consistent"] for v in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
