"""`python -m bench.contact`: timed contact's figures, on SQLite and PostgreSQL.

1. Throughput: N surveys come due at once (the morning after quiet hours). The dispatcher decides
   each by the contact rules (customer by customer, under the lock), composes it, enqueues it, and
   the outbox sends it into the loopback SendGrid fake (the SDK for real), in batches as the
   send-timed-messages flow does (without Prefect's per-task cost). Beside it, in the same run, the
   bare render+send loop (bench/run.py). Goal: at least 0.33x the bare loop.
2. The due query (`contact.dispatch.due`) with a large table of touchpoints and outbox rows, nearly
   all done, against the same query with a small one; the planned rows are the same in both.
   Goal: under 2x.

The composer is the kind's own, as send-timed-messages uses it (`timed.default_composers`). The
review requests' figure (bench/review_requests.py) is the same measurement of another kind.

    python -m bench.contact [--surveys 20000] [--large 1000000] [--small 10000] [--dbs sqlite,postgres]
    python -m bench.contact --quick       # a small size, to check it works
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from aftercare import timed
from aftercare.contact import dispatch as dispatcher
from aftercare.contact.compose import Composer
from aftercare.models import UTCDateTime
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine import outbox
from bench.run import API_KEY, REVIEWS_SECRET, SECRET, bare_loop, database, fake_sendgrid, say

SHOP = "bench.myshopify.com"
TOKYO_ADDRESS = {"country_code": "JP", "province": "東京都", "city": "渋谷区", "zip": "150-0001"}


GOAL_RATIO = 0.33  # of the bare render+send loop's emails per second, measured in the same run


def bench_composer(kind: str = "delivery_survey") -> tuple[Composer, str]:
    """The kind's own composer, as send-timed-messages uses it (`timed.default_composers`), and its name."""
    compose = timed.default_composers()[kind]
    named = getattr(compose, "compose", compose)  # a BatchComposer's own function
    return compose, f"{named.__module__}.{named.__qualname__}"


# -- data ------------------------------------------------------------------------------------------


def bound_sql(text: str) -> sa.TextClause:
    """A statement whose time parameters are bound as the models bind them (UTC; naive on SQLite)."""
    stmt = sa.text(text)
    names = [n for n in ("due", "placed", "stamp", "later") if f":{n}" in text]
    return stmt.bindparams(*[sa.bindparam(n, type_=UTCDateTime) for n in names])


def numbers(n: int) -> str:
    return f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {int(n)}) "


def load_surveys(engine: sa.Engine, n: int, due_at: datetime) -> None:
    """n customers, one order each (Tokyo, Japanese), each with a survey due at `due_at`: written with
    INSERT ... SELECT over a number series (the pipeline would take longer than what is measured)."""
    placed = due_at - timedelta(days=10)
    with engine.begin() as conn:
        load_orders(conn, n, placed)
        load_touchpoints(conn, n, "delivery_survey", due_at, placed)
        fix_sequences(conn, ("customers", "orders", "touchpoints"))


def concat(conn: sa.Connection) -> Callable[[str, str], str]:
    """`a || b` for a text and a number, as the dialect writes it."""
    if conn.dialect.name == "postgresql":
        return lambda a, b: f"({a} || {b}::text)"
    return lambda a, b: f"({a} || {b})"


def load_orders(conn: sa.Connection, n: int, placed: datetime) -> None:
    """Customers and orders 1..n (customer i's order i, Tokyo, Japanese, placed at `placed`)."""
    address = json.dumps(TOKYO_ADDRESS, ensure_ascii=False)
    pg = conn.dialect.name == "postgresql"
    cat = concat(conn)
    conn.execute(
        bound_sql(
            numbers(n) + "INSERT INTO customers (id, shop_domain, email_key, email, first_name, last_name, "
            "locale, created_at, updated_at) SELECT i, :shop, "
            + cat("'c'", "i")
            + " || '@example.jp', "
            + cat("'c'", "i")
            + " || '@example.jp', '花子', '山田', 'ja', :placed, :placed FROM n"
        ),
        {"shop": SHOP, "placed": placed},
    )
    conn.execute(
        bound_sql(
            numbers(n) + "INSERT INTO orders (id, shop_domain, shopify_id, name, number, customer_id, email, "
            "locale, currency, subtotal, total_discounts, total_shipping, total_tax, total, "
            "taxes_included, financial_status, requires_shipping, shipping_address, is_gift, "
            "discount_codes, is_test, flags, "
            "placed_at, source_updated_at, purchase_seq, created_at, updated_at, raw) "
            "SELECT i, :shop, 70000000 + i, "
            + cat("'#S'", "i")
            + ", i, i, "
            + cat("'c'", "i")
            + " || '@example.jp', 'ja', 'JPY', 5500, 0, 0, 500, 5500, "
            + ("true" if pg else "1")
            + ", 'paid', "
            + ("true" if pg else "1")
            + ", "
            + ("CAST(:address AS JSON)" if pg else ":address")
            + ", "
            + ("false" if pg else "0")
            + ", '[]', "
            + ("false" if pg else "0")
            + ", '[]', :placed, :placed, 1, :placed, :placed, "
            + ("CAST('{}' AS JSON)" if pg else "'{}'")
            + " FROM n"
        ),
        {"shop": SHOP, "placed": placed, "address": address},
    )


def load_touchpoints(
    conn: sa.Connection, n: int, kind: str, due: datetime, placed: datetime, status: str = "planned"
) -> None:
    """Touchpoint i of `kind` for order i, 1..n, due at `due`."""
    conn.execute(
        bound_sql(
            numbers(n) + "INSERT INTO touchpoints (id, order_id, kind, seq, due_at, status, policy_version, "
            "created_at) SELECT i, i, :kind, 1, :due, :status, 'bench', :placed FROM n"
        ),
        {"kind": kind, "due": due, "placed": placed, "status": status},
    )


def load_history(engine: sa.Engine, rows: int, planned: int, now: datetime) -> None:
    """`rows` touchpoints and as many outbox rows, all done and sent but `planned` touchpoints (half
    due, half later), over 1,000 orders (the due query joins orders by key)."""
    orders = min(1000, rows)
    load_surveys(engine, orders, now + timedelta(days=365))  # customers and orders; their surveys later
    pg = engine.dialect.name == "postgresql"
    stamp, due, later = now - timedelta(days=30), now - timedelta(hours=1), now + timedelta(days=2)
    done = rows - planned
    with engine.begin() as conn:
        base = orders  # ids 1..orders hold the customers' own (later) surveys
        conn.execute(
            bound_sql(
                numbers(rows) + "INSERT INTO touchpoints (id, order_id, kind, seq, due_at, status, "
                "policy_version, created_at) SELECT :base + i, 1 + (i % :orders), "
                "CASE WHEN i % 2 = 0 THEN 'delivery_survey' ELSE 'review_request' END, 1 + i, "
                f"CASE WHEN i > {done} AND i % 2 = 0 THEN :due WHEN i > {done} THEN :later ELSE :stamp END, "
                f"CASE WHEN i > {done} THEN 'planned' ELSE 'done' END, 'bench', :stamp FROM n"
            ),
            {"base": base, "orders": orders, "due": due, "later": later, "stamp": stamp},
        )
        conn.execute(
            bound_sql(
                numbers(done)
                + "INSERT INTO outbox (id, touchpoint_id, order_id, order_name, kind, to_email, "
                "subject, text_body, html_body, locale, is_test, status, attempts, next_attempt_at, "
                "created_at, sent_at) SELECT i, :base + i, 1 + (i % :orders), '#S', 'delivery_survey', "
                "'c@example.jp', 's', 't', 'h', 'ja', "
                + ("false" if pg else "0")
                + ", 'sent', 1, :stamp, :stamp, :stamp FROM n"
            ),
            {"base": base, "orders": orders, "stamp": stamp},
        )
        fix_sequences(conn, ("touchpoints", "outbox"))
        conn.execute(sa.text("ANALYZE"))


def fix_sequences(conn: sa.Connection, tables: tuple[str, ...]) -> None:
    if conn.dialect.name != "postgresql":
        return
    for table in tables:
        conn.execute(
            bound_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            )
        )


# -- measurements ----------------------------------------------------------------------------------


Loader = Callable[[sa.Engine, int, datetime], None]  # (engine, n, due_at): n of a kind due at due_at


def dispatch_throughput(
    url: str,
    sendgrid_url: str,
    n: int,
    workdir: Path,
    batch: int = 500,
    *,
    kind: str = "delivery_survey",
    load: Loader = load_surveys,
) -> dict[str, Any]:
    """n touchpoints of `kind` (written by `load`) due at 09:00 JST, dispatched and sent in batches
    of `batch`, as the flow does."""
    settings = Settings(
        database_url=url,
        var_dir=workdir,
        email_backend="sendgrid",
        sendgrid_api_key=API_KEY,
        sendgrid_base_url=sendgrid_url,
        shopify_webhook_secret=SECRET,
        reviews_webhook_secret=REVIEWS_SECRET,
        approval_secret=REVIEWS_SECRET + "-approval",
        link_secret=REVIEWS_SECRET + "-link",
        shopify_shops=[SHOP],
        wake_prefect=False,
    )
    rt = Runtime.build(settings)
    now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC) - timedelta(hours=9)  # 09:00 JST
    load(rt.engine, n, now - timedelta(hours=6))
    compose, composer = bench_composer(kind)
    worker = socket.gethostname()[:40]
    decide_s = send_s = 0.0
    sent = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=settings.send_concurrency) as pool:
        while True:
            t0 = time.perf_counter()
            result = timed.dispatch_due(rt, now, limit=batch, composers={kind: compose})
            t1 = time.perf_counter()
            decide_s += t1 - t0
            ids = result.outbox_ids
            if not ids:
                break
            claimed = outbox.claim_due(rt.engine, len(ids), worker, ids=ids)
            results = list(
                pool.map(lambda c: outbox.deliver(rt.engine, c.outbox_id, rt.backend, settings), claimed)
            )
            sent += sum(1 for r in results if r.status == "sent")
            send_s += time.perf_counter() - t1
    elapsed = time.perf_counter() - started
    rt.engine.dispose()
    return {
        "kind": kind,
        "due": n,
        "sent": sent,
        "composer": composer,
        "seconds": round(elapsed, 2),
        "emails_per_s": round(sent / elapsed, 1) if elapsed else None,
        "decide_compose_enqueue_s": round(decide_s, 2),
        "claim_send_s": round(send_s, 2),
    }


def against_bare(
    dbs: list[str],
    sendgrid_url: str,
    workdir: Path,
    n: int,
    bare: dict[str, Any],
    *,
    kind: str = "delivery_survey",
    load: Loader = load_surveys,
    what: str = "surveys",
    check: Callable[[str, int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`dispatch_throughput` on each database, beside the bare loop measured in the same run.
    `check(url, sent)`: what the database holds afterwards, {"consistent": bool, ...}."""
    report: dict[str, Any] = {}
    for db in dbs:
        with database(db, workdir) as url:
            got = dispatch_throughput(url, sendgrid_url, n, workdir, kind=kind, load=load)
            if check is not None:
                got["database"] = check(url, got["sent"])
        ratio = got["emails_per_s"] / bare["emails_per_s"]
        consistent = got["sent"] == n and got.get("database", {}).get("consistent", True)
        got |= {
            "ratio_to_bare": round(ratio, 3),
            "goal_ratio": GOAL_RATIO,
            "meets_goal": consistent and ratio >= GOAL_RATIO,
        }
        say(f"{db}: {n} {what} due at once: {json.dumps(got, ensure_ascii=False)}")
        say(
            f"{db}: {got['emails_per_s']} {what}/s vs bare loop {bare['emails_per_s']}/s: {ratio:.2f}x "
            f"(goal >= {GOAL_RATIO}x), {got['sent']} of {n} sent"
            + (f", database {json.dumps(got['database'])}" if "database" in got else "")
        )
        report[f"dispatch_{db}"] = got
    return report


def due_query_time(url: str, rows: int, planned: int, repeats: int = 30) -> dict[str, Any]:
    settings = Settings(database_url=url)
    engine = Runtime.build(settings).engine
    now = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    load_history(engine, rows, planned, now)
    kinds = ["delivery_survey", "review_request"]
    times = []
    found = 0
    with Session(engine) as session:
        for _ in range(repeats):
            t0 = time.perf_counter()
            found = len(dispatcher.due(session, now, limit=500, kinds=kinds))
            times.append(time.perf_counter() - t0)
    engine.dispose()
    return {
        "rows": rows,
        "planned": planned,
        "due_found": found,
        "median_ms": round(statistics.median(times) * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--surveys", type=int, default=20_000)
    parser.add_argument("--bare", type=int, default=2_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--planned", type=int, default=1_000)
    parser.add_argument("--dbs", default="sqlite,postgres")
    parser.add_argument("--port", type=int, default=18931)
    parser.add_argument("--quick", action="store_true", help="a small size: does it work?")
    args = parser.parse_args(argv)
    if args.quick:
        args.surveys, args.bare, args.large, args.small, args.planned = 300, 200, 20_000, 2_000, 200
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-contact-") as tmp:
        workdir = Path(tmp)
        with fake_sendgrid(args.port, workdir) as sg_url:
            bare = bare_loop(sg_url, args.bare)
            say(f"bare render+send loop: {json.dumps(bare)}")
            report["bare"] = bare
            report |= against_bare(args.dbs.split(","), sg_url, workdir, args.surveys, bare)
        for kind in args.dbs.split(","):
            sizes = {}
            for rows in (args.small, args.large):
                with database(kind, workdir) as url:
                    sizes[rows] = due_query_time(url, rows, args.planned)
            ratio = sizes[args.large]["median_ms"] / sizes[args.small]["median_ms"]
            say(
                f"{kind}: due query {sizes[args.small]['median_ms']} ms at {args.small:,} rows, "
                f"{sizes[args.large]['median_ms']} ms at {args.large:,} rows: {ratio:.2f}x (goal < 2x)"
            )
            report[f"due_query_{kind}"] = {
                "small": sizes[args.small],
                "large": sizes[args.large],
                "ratio": round(ratio, 2),
            }
    say(json.dumps(report, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
