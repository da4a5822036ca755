"""`make bench`: webhook ack latency and orders through receipt, on SQLite and PostgreSQL, each
beside a bare render+send loop measured in the same run. Everything is on loopback; the fake
SendGrid validates every request against SendGrid's OpenAPI document.

    python -m bench.run                    # full: 60 s at 300 req/s, 120 s at 20 orders/s, both DBs
    python -m bench.run --quick            # short smoke version of the same
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from aftercare import samples
from aftercare.orders import shopify
from aftercare.policies import load_policies
from aftercare.rendering import Renderer
from aftercare.settings import PROJECT_ROOT, Settings
from aftercare.spine.db import make_engine, migrate
from aftercare.spine.email import OutgoingEmail, SendGridBackend
from aftercare.stack import Stack, StackConfig, wait_http, web_app_args
from bench import loadgen
from tests.fakes.warehouse import FakeThreePL
from tests.shared_dir import find_shared

SECRET = "bench-webhook-secret"
REVIEWS_SECRET = "bench-reviews-secret"  # real backends refuse the public development secrets
BENCH_SHOP = "bench.myshopify.com"
API_KEY = "SG.fake-test-key"
SCHEMA = (find_shared() or PROJECT_ROOT.parent / "shared") / "contracts" / "sendgrid" / "tsg_mail_v3.json"
PG_ADMIN = os.environ.get("AFTERCARE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
HOST = "127.0.0.1"


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# --- databases -----------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, migrated database of the given kind; dropped afterwards."""
    if kind == "sqlite":
        path = workdir / f"app-{uuid.uuid4().hex[:6]}.db"
        url = f"sqlite:///{path}"
        migrate(Settings(database_url=url))
        yield url
        return
    name = f"aftercare_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count(url: str, sql: str) -> int:
    engine = make_engine(Settings(database_url=url))
    with engine.connect() as conn:
        value = conn.execute(sa.text(sql)).scalar_one()
    engine.dispose()
    return int(value)


# --- requests -------------------------------------------------------------------------------------


def order_requests(n: int, port: int, prefix: str) -> tuple[list[bytes], list[str]]:
    """n signed orders/create deliveries, each a distinct order; returns raw requests and order names."""
    base = samples.load("ja-first-gift")
    raws, names = [], []
    for i in range(n):
        payload = copy.deepcopy(base)
        payload["id"] = 50_000_000 + hash(prefix) % 1_000_000 * 1000 + i
        payload["name"] = f"#{prefix}{i}"
        payload["order_number"] = 100_000 + i
        body = json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": BENCH_SHOP,
            "X-Shopify-Hmac-Sha256": shopify.sign(SECRET, body),
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Event-Id": str(uuid.uuid4()),
            "X-Shopify-Triggered-At": "2026-11-20T01:15:00Z",
        }
        raws.append(loadgen.build_request(HOST, port, "/webhooks/shopify", body, headers))
        names.append(payload["name"])
    return raws, names


# --- processes ------------------------------------------------------------------------------------


@contextlib.contextmanager
def child(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def base_env(url: str, workdir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AFTERCARE_DATABASE_URL=url,
        AFTERCARE_VAR_DIR=str(workdir),
        AFTERCARE_SHOPIFY_WEBHOOK_SECRET=SECRET,
        AFTERCARE_REVIEWS_WEBHOOK_SECRET=REVIEWS_SECRET,
        AFTERCARE_APPROVAL_SECRET=REVIEWS_SECRET + "-approval",
        AFTERCARE_LINK_SECRET=REVIEWS_SECRET + "-link",
        AFTERCARE_SHOPIFY_SHOPS=BENCH_SHOP,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def fake_sendgrid(port: int, workdir: Path, latency_ms: float = 0.0) -> Iterator[str]:
    args = [
        sys.executable,
        "-m",
        "tests.fakes.sendgrid",
        "--port",
        str(port),
        "--schema",
        str(SCHEMA),
        "--api-key",
        API_KEY,
        "--latency-ms",
        str(latency_ms),
    ]
    with child(args, dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)), workdir / "fake-sendgrid.log"):
        url = f"http://{HOST}:{port}"
        wait_http(f"{url}/_fake/stats", 30)
        yield url


def fake_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=5) as resp:
        return json.load(resp)


# --- measurements ---------------------------------------------------------------------------------


def bare_loop(sendgrid_url: str, n: int) -> dict[str, float]:
    """The floor: render the confirmation templates and POST through the sendgrid SDK, in a loop,
    no database, no Prefect."""
    renderer = Renderer(PROJECT_ROOT / "templates")
    policies = load_policies(PROJECT_ROOT / "policies")
    settings = Settings(
        email_backend="sendgrid",
        sendgrid_api_key=API_KEY,
        sendgrid_base_url=sendgrid_url,
        shopify_webhook_secret=SECRET,
        reviews_webhook_secret=REVIEWS_SECRET,
        approval_secret=REVIEWS_SECRET + "-approval",
        link_secret=REVIEWS_SECRET + "-link",
    )
    backend = SendGridBackend.from_settings(settings)
    context = {
        "shop_name": "bench shop",
        "order_name": "#B0",
        "customer_name": "山田 花子",
        "lines": [
            {"title": "今治タオル", "variant": "白", "quantity": 2, "price": 5500, "line_total": 11000}
        ],
        "currency": "JPY",
        "subtotal": 11000,
        "discounts": 0,
        "discount_codes": [],
        "shipping": 0,
        "shipping_method": "宅急便",
        "tax": 1000,
        "taxes_included": True,
        "total": 11000,
        "address": {
            "name": "山田 花子",
            "zip": "150-0001",
            "province": "東京都",
            "city": "渋谷区",
            "address1": "神宮前1-2-3",
            "address2": "",
        },
        "requires_shipping": True,
        "expected_ship_date": policies.shipping.expected_ship_date(
            datetime.fromisoformat("2026-11-20T10:00:00+09:00")
        ),
        "payment_state": "paid",
        "purchase_seq": 2,
        "is_gift": True,
        "gift_message": "おめでとう",
        "note": None,
        "is_test": False,
        "seasonal_line": None,
    }
    started = time.perf_counter()
    for i in range(n):
        rendered = renderer.render_email("order_confirmation", "ja", dict(context, order_name=f"#B{i}"))
        backend.send(
            OutgoingEmail(
                outbox_id=10_000_000 + i,
                kind="order_confirmation",
                to_email="b@example.jp",
                to_name=None,
                from_email="shop@example.com",
                from_name="bench",
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
            )
        )
    elapsed = time.perf_counter() - started
    return {
        "emails": n,
        "seconds": round(elapsed, 2),
        "emails_per_s": round(n / elapsed, 1),
        "ms_per_email": round(elapsed / n * 1000, 3),
    }


def ack_phase(
    url: str, workdir: Path, seconds: float, rate: float, steps: list[float], step_seconds: float, port: int
) -> dict[str, Any]:
    """The web app alone (no wake, no processing): p50/p99 at the target rate, 0 lost, and the highest
    rate whose p99 stays under 100 ms with no errors."""
    env = base_env(url, workdir, AFTERCARE_WAKE_PREFECT="false")
    with child(web_app_args(HOST, port), env, workdir / "web-ack.log"):
        wait_http(f"http://{HOST}:{port}/healthz", 60)
        say(f"  warm-up done {loadgen.wait_warm(HOST, port):.1f} s after the app answered")
        raws, _ = order_requests(int(seconds * rate), port, "A")
        result = loadgen.run(HOST, port, raws, rate)
        stored = count(url, "SELECT count(*) FROM inbox")
        target = result.summary() | {"inbox_rows": stored, "lost": result.ok - stored}
        say(f"    {rate:.0f} req/s for {seconds:.0f} s: {json.dumps(target)}")
        ladder = []
        best = rate if result.errors == 0 and result.pct(99) < 100 else 0.0
        for step_rate in steps:
            raws, _ = order_requests(int(step_seconds * step_rate), port, f"S{int(step_rate)}-")
            r = loadgen.run(HOST, port, raws, step_rate, connections=128)
            s = r.summary()
            ladder.append(s)
            say(
                f"    step {step_rate:.0f} req/s: p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  "
                f"errors {s['errors']}"
            )
            if r.errors or r.pct(99) >= 100:
                break
            best = max(best, step_rate)
    return {"target": target, "ladder": ladder, "max_sustainable_rps": best}


def receipt_phase(
    url: str, workdir: Path, seconds: float, rate: float, burst: int, ports: dict[str, int], bare_n: int
) -> dict[str, Any]:
    """The whole stack (Prefect server, served deployment, web app with wake) into the fake SendGrid."""
    three_pl = FakeThreePL(secret="bench-3pl-signing-secret", latency_s=0.05)
    with fake_sendgrid(ports["sendgrid"], workdir) as sg_url, three_pl:
        bare = bare_loop(sg_url, bare_n)
        say(f"    bare render+send loop: {json.dumps(bare)}")
        cfg = StackConfig(
            var_dir=workdir,
            prefect_port=ports["prefect"],
            web_port=ports["web"],
            sweep_seconds=30,
            extra_env={
                "AFTERCARE_DATABASE_URL": url,
                "AFTERCARE_SHOPIFY_WEBHOOK_SECRET": SECRET,
                "AFTERCARE_REVIEWS_WEBHOOK_SECRET": REVIEWS_SECRET,
                "AFTERCARE_APPROVAL_SECRET": REVIEWS_SECRET + "-approval",
                "AFTERCARE_LINK_SECRET": REVIEWS_SECRET + "-link",
                "AFTERCARE_SHOPIFY_SHOPS": BENCH_SHOP,
                "AFTERCARE_EMAIL_BACKEND": "sendgrid",
                "AFTERCARE_SENDGRID_API_KEY": API_KEY,
                "AFTERCARE_SENDGRID_BASE_URL": sg_url,
                # The 3PL answers each instruction in 50 ms, alongside the receipt flow.
                "AFTERCARE_WAREHOUSE_BACKEND": "http",
                "AFTERCARE_WAREHOUSE_URL": three_pl.url,
                "AFTERCARE_WAREHOUSE_SECRET": three_pl.secret,
                "PREFECT_LOGGING_LEVEL": "WARNING",
            },
        )
        stack = Stack(cfg, log_dir=workdir / "logs")
        try:
            stack.start()
            raws, names = order_requests(int(seconds * rate), ports["web"], "R")
            result = loadgen.run(HOST, ports["web"], raws, rate)
            load_end = time.time()
            drained = wait_sent(url, len(names), timeout_s=180)
            latencies = order_latencies(url, names, result.due_times)
            sent = count(url, "SELECT count(*) FROM outbox WHERE status = 'sent'")
            first_due = result.due_times[0]
            last_sent = latest_sent(url)
            width = 10.0 if seconds >= 60 else 5.0
            windows = window_rates(_sent_times(url), names, first_due, load_end, width)
            sustained = {
                "offered_orders_per_s": rate,
                "window_s": width,
                "orders": len(names),
                "webhooks_ok": result.ok,
                "sent": sent,
                "backlog_at_load_end": len(names) - sent_before(url, load_end),
                "drain_after_load_s": round(max(0.0, last_sent - load_end), 2) if drained else None,
                # Completions in each 10 s (5 s with --quick) of the load; the first window includes
                # the pipeline filling, so the sustained figure is the mean of the others.
                "window_orders_per_s": windows,
                "throughput_orders_per_s": round(sum(windows[1:]) / max(1, len(windows) - 1), 2),
                "webhook_to_provider_p50_s": pct(latencies, 50),
                "webhook_to_provider_p95_s": pct(latencies, 95),
                "webhook_to_provider_p99_s": pct(latencies, 99),
                "all_sent": drained,
            }
            say(f"    {rate:.0f} orders/s for {seconds:.0f} s: {json.dumps(sustained)}")
            handed = wait_rows(url, "warehouse_handoffs", len(names), timeout_s=120)
            acks = _sent_times(url, "warehouse_handoffs")
            ack_latencies = [
                acks[n] - due for n, due in zip(names, result.due_times, strict=True) if n in acks
            ]
            ack_windows = window_rates(acks, names, first_due, load_end, width)
            handoff = {
                "three_pl_latency_ms": 50,
                "window_s": width,
                "acknowledged": len(acks),
                "all_acknowledged": handed,
                "window_orders_per_s": ack_windows,
                "throughput_orders_per_s": round(sum(ack_windows[1:]) / max(1, len(ack_windows) - 1), 2),
                "paid_to_acknowledged_p50_s": pct(ack_latencies, 50),
                "paid_to_acknowledged_p95_s": pct(ack_latencies, 95),
                "three_pl_requests": len(three_pl.requests),
                "bad_signatures": len(three_pl.bad_signatures),
            }
            say(f"    hand-off alongside: {json.dumps(handoff)}")

            # Capacity: a burst far above the target, drained as fast as the pipeline can.
            raws, names = order_requests(burst, ports["web"], "C")
            before = sent
            t0 = time.time()
            loadgen.run(HOST, ports["web"], raws, rate=200)
            drained = wait_sent(url, before + burst, timeout_s=300)
            elapsed = latest_sent(url) - t0
            capacity = {
                "orders": burst,
                "seconds": round(elapsed, 2),
                "orders_per_s": round(burst / elapsed, 1),
                "all_sent": drained,
            }
            say(f"    burst of {burst}: {json.dumps(capacity)}")
            stats = fake_stats(sg_url)
        finally:
            stack.stop()
    per_order_ms = 1000 / capacity["orders_per_s"]
    return {
        "bare": bare,
        "sustained": sustained,
        "handoff": handoff,
        "capacity": capacity,
        "fake_sendgrid": stats,
        "ratio_capacity_to_bare": round(capacity["orders_per_s"] / bare["emails_per_s"], 4),
        "ms_per_order_vs_bare": f"{per_order_ms:.1f} ms vs {bare['ms_per_email']} ms "
        f"({per_order_ms / bare['ms_per_email']:.1f}x)",
    }


def wait_rows(url: str, table: str, expected: int, timeout_s: float) -> bool:
    """Wait until `expected` rows of the outbox (or the hand-offs) are sent/acknowledged."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if count(url, f"SELECT count(*) FROM {table} WHERE status = 'sent'") >= expected:
            return True
        time.sleep(1)
    return False


def wait_sent(url: str, expected: int, timeout_s: float) -> bool:
    return wait_rows(url, "outbox", expected, timeout_s)


def _sent_times(url: str, table: str = "outbox") -> dict[str, float]:
    engine = make_engine(Settings(database_url=url))
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT order_name, sent_at FROM {table} WHERE status = 'sent'")).all()
    engine.dispose()
    out = {}
    for name, sent_at in rows:
        if isinstance(sent_at, str):
            sent_at = datetime.fromisoformat(sent_at)
        if sent_at.tzinfo is None:  # SQLite stores UTC without the zone
            sent_at = sent_at.replace(tzinfo=UTC)
        out[name] = sent_at.timestamp()
    return out


def latest_sent(url: str) -> float:
    return max(_sent_times(url).values())


def window_rates(
    done: dict[str, float], names: list[str], start: float, end: float, width: float
) -> list[float]:
    """Orders done (mail sent, hand-off acknowledged) in each `width`-second window from `start` to
    `end`, per second."""
    times = [done[n] for n in names if n in done]
    rates = []
    t = start
    while t + width <= end + 1e-6:
        rates.append(round(sum(1 for x in times if t <= x < t + width) / width, 1))
        t += width
    return rates


def sent_before(url: str, t: float) -> int:
    return sum(1 for v in _sent_times(url).values() if v <= t)


def order_latencies(url: str, names: list[str], due_times: list[float]) -> list[float]:
    sent = _sent_times(url)
    return [sent[n] - due for n, due in zip(names, due_times, strict=True) if n in sent]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return round(data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))], 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--ack-rate", type=float, default=300)
    parser.add_argument("--ack-seconds", type=float, default=60)
    parser.add_argument("--orders-rate", type=float, default=20)
    parser.add_argument("--orders-seconds", type=float, default=120)
    parser.add_argument("--burst", type=int, default=600)
    parser.add_argument("--bare", type=int, default=1000)
    parser.add_argument("--skip-ack", action="store_true", help="only the receipt phase")
    parser.add_argument("--quick", action="store_true", help="10 s phases, small burst: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.ack_seconds, args.orders_seconds, args.burst, args.bare = 10, 20, 150, 300
    if not SCHEMA.exists():
        say(f"the fake SendGrid validates against {SCHEMA}; it is not here (a clone without ../shared)")
        return 2
    steps = [450, 600, 800, 1000, 1300]
    report: dict[str, Any] = {"args": vars(args), "machine": {"cpus": os.cpu_count()}}
    for kind in [k.strip() for k in args.db.split(",") if k.strip()]:
        say(f"== {kind} ==")
        with tempfile.TemporaryDirectory(prefix=f"aftercare-bench-{kind}-") as tmp:
            workdir = Path(tmp)
            ack = None
            if not args.skip_ack:
                say("  webhook ack (web app alone)")
                with database(kind, workdir) as url:
                    ack = ack_phase(
                        url,
                        workdir,
                        args.ack_seconds,
                        args.ack_rate,
                        steps,
                        8 if args.quick else 15,
                        port=18080,
                    )
            say("  orders through receipt (whole stack)")
            with database(kind, workdir) as url:
                receipt = receipt_phase(
                    url,
                    workdir,
                    args.orders_seconds,
                    args.orders_rate,
                    args.burst,
                    {"sendgrid": 18090, "prefect": 14280, "web": 18081},
                    args.bare,
                )
        report[kind] = {"ack": ack, "receipt": receipt}
    out = PROJECT_ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, indent=2, default=str))
    say("\n== summary ==")
    for kind in report:
        if kind in ("args", "machine"):
            continue
        a, r = report[kind]["ack"], report[kind]["receipt"]
        t = a["target"] if a else None
        say(
            f"{kind}: ack skipped (--skip-ack)"
            if t is None
            else f"{kind}: ack at {t['offered_rps']:.0f} req/s: p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, "
            f"lost {t['lost']} (inbox rows {t['inbox_rows']} / ok {t['ok']}); max sustainable "
            f"{a['max_sustainable_rps']:.0f} req/s (p99 < 100 ms)"
        )
        s = r["sustained"]
        windows = s["window_orders_per_s"]
        say(
            f"{kind}: receipt at {s['offered_orders_per_s']:.0f} orders/s: "
            f"throughput {s['throughput_orders_per_s']}"
            f" orders/s, webhook->provider p50 {s['webhook_to_provider_p50_s']} s p95 "
            f"{s['webhook_to_provider_p95_s']} s, all sent: {s['all_sent']}, {s['window_s']:.0f} s windows "
            f"{min(windows, default=0)}-{max(windows, default=0)}"
            f" orders/s, backlog at load end {s['backlog_at_load_end']}; capacity "
            f"{r['capacity']['orders_per_s']} orders/s vs bare {r['bare']['emails_per_s']} emails/s "
            f"(ratio {r['ratio_capacity_to_bare']}; {r['ms_per_order_vs_bare']}); duplicates at provider: "
            f"{r['fake_sendgrid'].get('duplicate_outbox_ids', 'n/a')}"
        )
        h = r["handoff"]
        say(
            f"{kind}: hand-off alongside (3PL 50 ms): {h['throughput_orders_per_s']} orders/s, "
            f"paid->acknowledged p50 {h['paid_to_acknowledged_p50_s']} s "
            f"p95 {h['paid_to_acknowledged_p95_s']} s"
        )
    say(f"\nfull figures: {out / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
