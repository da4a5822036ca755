"""The unsubscribe link under load: p50/p99 of the page (GET) and of the RFC 8058 one-click POST at a
fixed offered rate (default 100 req/s; the target is p99 under 50 ms), against the web app served by
uvicorn in its own process on loopback, on SQLite and/or PostgreSQL.

Every POST unsubscribes a different customer who has planned mail (a survey, a review request, an
order confirmation, each with a pending outbox row), so each one is a real write: the suppression
stored and the survey cancelled with its outbox row. Latency is measured open-loop from when each
request was due (bench/loadgen.py). Afterwards the database is counted: one suppression and one
cancelled survey per accepted POST, nothing else touched.

    python -m bench.unsubscribe                       # 30 s per phase at 100 req/s, both databases
    python -m bench.unsubscribe --seconds 3 --db sqlite   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from aftercare.contact import links
from aftercare.models import Customer, Order, OutboxMessage, Suppression, Touchpoint, utcnow
from aftercare.settings import Settings
from aftercare.spine.db import make_engine
from aftercare.stack import wait_http, web_app_args
from bench import loadgen
from bench.run import BENCH_SHOP, HOST, REVIEWS_SECRET, base_env, child, database

LINK_SECRET = REVIEWS_SECRET + "-link"  # what bench.run.base_env sets as AFTERCARE_LINK_SECRET
KINDS = ("delivery_survey", "review_request", "order_confirmation")
TARGET_P99_MS = 50.0


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the benchmark's report


def seed(url: str, customers: int) -> list[str]:
    """`customers` customers, each with one order, three planned touchpoints and their pending
    outbox rows, in bulk; returns each customer's survey unsubscribe token."""
    engine = make_engine(Settings(database_url=url))
    now = utcnow()
    tokens = []
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Customer),
            [
                {
                    "shop_domain": BENCH_SHOP,
                    "email_key": f"bench-{i}@example.jp",
                    "email": f"bench-{i}@example.jp",
                    "locale": "ja",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(customers)
            ],
        )
        ids = dict(conn.execute(sa.select(Customer.email_key, Customer.id)).all())  # type: ignore[call-overload]
        money = Decimal("0")
        conn.execute(
            sa.insert(Order),
            [
                {
                    "shop_domain": BENCH_SHOP,
                    "shopify_id": 9_000_000_000 + i,
                    "name": f"#B{i}",
                    "customer_id": ids[f"bench-{i}@example.jp"],
                    "email": f"bench-{i}@example.jp",
                    "locale": "ja",
                    "currency": "JPY",
                    "subtotal": money,
                    "total_discounts": money,
                    "total_shipping": money,
                    "total_tax": money,
                    "total": money,
                    "discount_codes": [],
                    "flags": [],
                    "raw": {},
                    "placed_at": now,
                    "source_updated_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(customers)
            ],
        )
        orders = dict(conn.execute(sa.select(Order.shopify_id, Order.id)).all())  # type: ignore[call-overload]
        conn.execute(
            sa.insert(Touchpoint),
            [
                {
                    "order_id": orders[9_000_000_000 + i],
                    "kind": kind,
                    "seq": 1,
                    "due_at": now + timedelta(days=3),
                    "status": "planned",
                    "policy_version": "bench",
                    "created_at": now,
                }
                for i in range(customers)
                for kind in KINDS
            ],
        )
        rows = conn.execute(sa.select(Touchpoint.id, Touchpoint.order_id, Touchpoint.kind)).all()
        conn.execute(
            sa.insert(OutboxMessage),
            [
                {
                    "touchpoint_id": tp_id,
                    "order_id": order_id,
                    "kind": kind,
                    "to_email": "x@example.jp",
                    "subject": kind,
                    "text_body": "t",
                    "html_body": "<p>h</p>",
                    "locale": "ja",
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for tp_id, order_id, kind in rows
            ],
        )
        survey = {o: t for t, o, k in rows if k == "delivery_survey"}
    engine.dispose()
    for i in range(customers):
        tokens.append(
            links.unsubscribe_token(
                LINK_SECRET,
                shop_domain=BENCH_SHOP,
                email_key=f"bench-{i}@example.jp",
                list_name="surveys",
                touchpoint_id=survey[orders[9_000_000_000 + i]],
                now=now,
                locale="ja",
            )
        )
    return tokens


def get_request(port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept-Language: ja\r\nConnection: keep-alive\r\n\r\n"
    ).encode("latin-1")


def counts(url: str) -> dict[str, int]:
    engine = make_engine(Settings(database_url=url))
    with engine.connect() as conn:
        out = {
            "suppressions": conn.execute(sa.select(sa.func.count()).select_from(Suppression)).scalar_one(),
            "cancelled_surveys": conn.execute(
                sa.select(sa.func.count())
                .select_from(Touchpoint)
                .where(Touchpoint.kind == "delivery_survey", Touchpoint.status == "cancelled")
            ).scalar_one(),
            "other_cancelled": conn.execute(
                sa.select(sa.func.count())
                .select_from(Touchpoint)
                .where(Touchpoint.kind != "delivery_survey", Touchpoint.status != "planned")
            ).scalar_one(),
        }
    engine.dispose()
    return out


def run_db(kind: str, workdir: Path, seconds: float, rate: float, port: int) -> dict[str, Any]:
    n = max(1, int(seconds * rate))
    with database(kind, workdir) as url:
        say(f"  {kind}: seeding {n} customers with planned mail")
        tokens = seed(url, n)
        env = base_env(url, workdir, AFTERCARE_WAKE_PREFECT="false")
        with child(web_app_args(HOST, port), env, workdir / f"web-unsubscribe-{kind}.log"):
            wait_http(f"http://{HOST}:{port}/healthz", 60)
            say(f"  warm-up done {loadgen.wait_warm(HOST, port):.1f} s after the app answered")
            # A short warm-up (imports, the first template renders, the pool), not measured.
            loadgen.run(HOST, port, [get_request(port, f"/unsubscribe/{tokens[0]}")] * 20, 50)
            pages = loadgen.run(HOST, port, [get_request(port, f"/unsubscribe/{t}") for t in tokens], rate)
            page = pages.summary()
            say(
                f"    GET  page      {rate:.0f} req/s: p50 {page['p50_ms']} ms  p99 {page['p99_ms']} ms  "
                f"(CPU stolen {page['cpu_steal_pct']}%)"
            )
            body = b"List-Unsubscribe=One-Click"
            posts = loadgen.run(
                HOST,
                port,
                [
                    loadgen.build_request(
                        HOST,
                        port,
                        f"/unsubscribe/{t}",
                        body,
                        {"Content-Type": "application/x-www-form-urlencoded"},
                    )
                    for t in tokens
                ],
                rate,
            )
            post = posts.summary()
            say(
                f"    POST one-click {rate:.0f} req/s: p50 {post['p50_ms']} ms  p99 {post['p99_ms']} ms  "
                f"(CPU stolen {post['cpu_steal_pct']}%)"
            )
        stored = counts(url)
        say(f"    database: {stored}")
        ok = (
            page["errors"] == 0
            and post["errors"] == 0
            and stored["suppressions"] == posts.ok == stored["cancelled_surveys"]
            and stored["other_cancelled"] == 0
        )
        return {
            "get": page,
            "post": post,
            "database": stored,
            "consistent": ok,
            "p99_under_target": page["p99_ms"] < TARGET_P99_MS and post["p99_ms"] < TARGET_P99_MS,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase (default 30)")
    parser.add_argument("--rate", type=float, default=100.0, help="offered requests per second (default 100)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "target_p99_ms": TARGET_P99_MS}
    with tempfile.TemporaryDirectory(prefix="aftercare-bench-unsub-") as tmp:
        for kind in kinds:
            results[kind] = run_db(kind, Path(tmp), args.seconds, args.rate, args.port)
    say(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0 if all(results[k]["consistent"] for k in kinds) else 1


if __name__ == "__main__":
    sys.exit(main())
