"""The survey page under load: GET (the page a score link opens) and POST (an answer stored), each
at an open-loop rate on loopback against the web app served as `aftercare up` serves it (uvicorn,
one process), on SQLite or PostgreSQL. Goal: p99 under 50 ms at 100 req/s.

Latency is measured from the moment each request was due (bench/loadgen.py), so queueing shows.
Every POST is a different answer (the score and comment vary), so each one stores a row; the run
checks that every 303 left exactly one row.

    python -m bench.survey_page                         # 30 s GET + 30 s POST at 100 req/s, SQLite
    python -m bench.survey_page --db postgres --seconds 60
    python -m bench.survey_page --seconds 2 --rate 20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlmodel import Session

from aftercare.models import Customer, Order, OrderLine, Touchpoint
from aftercare.settings import Settings
from aftercare.spine.db import make_engine
from aftercare.stack import wait_http
from aftercare.surveys.answers import survey_token
from bench import loadgen
from bench.run import BENCH_SHOP, HOST, REVIEWS_SECRET, base_env, child, count, database, web_app_args

LINK_SECRET = REVIEWS_SECRET + "-link"  # what bench.run.base_env gives the web app
GOAL_P99_MS = 50.0


def seed(url: str, n: int) -> list[str]:
    """n delivered orders, each with a survey whose mail went out; their link tokens."""
    engine = make_engine(Settings(database_url=url))
    now = datetime.now(UTC)
    tokens = []
    with Session(engine) as s:
        for i in range(n):
            customer = Customer(
                shop_domain=BENCH_SHOP, email_key=f"c{i}@bench.example", email=f"c{i}@bench.example"
            )
            s.add(customer)
            s.flush()
            order = Order(
                shop_domain=BENCH_SHOP,
                shopify_id=90_000_000 + i,
                name=f"#B{i}",
                customer_id=customer.id,
                locale="ja" if i % 2 else "en",
                currency="JPY",
                total=Decimal("4800"),
                placed_at=now - timedelta(days=7),
                source_updated_at=now - timedelta(days=7),
            )
            s.add(order)
            s.flush()
            s.add(OrderLine(order_id=order.id, shopify_id=1, title="今治タオル ギフトセット", quantity=1))
            touchpoint = Touchpoint(
                order_id=order.id, kind="delivery_survey", due_at=now - timedelta(days=1), status="done",
                policy_version="bench",
            )  # fmt: skip
            s.add(touchpoint)
            s.flush()
            tokens.append(
                survey_token(
                    LINK_SECRET,
                    touchpoint_id=touchpoint.id,  # type: ignore[arg-type]
                    order_id=order.id,  # type: ignore[arg-type]
                    scale="csat5",
                    closes_at=now + timedelta(days=30),
                )
            )
        s.commit()
    engine.dispose()
    return tokens


def get_request(port: int, path: str) -> bytes:
    head = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: keep-alive", "Accept-Language: ja"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


def phase(name: str, result: loadgen.Result, expected: int) -> dict[str, Any]:
    summary = result.summary()
    unexpected = sum(v for k, v in result.statuses.items() if k != expected)
    # loadgen counts only 2xx as ok; the answer's POST is a 303 by design.
    ok = result.statuses.get(expected, 0)
    achieved = round(ok / result.duration_s, 1) if result.duration_s else 0.0
    summary |= {"ok": ok, "errors": unexpected, "achieved_rps": achieved}
    summary |= {"statuses": {str(k): v for k, v in sorted(result.statuses.items())}, "unexpected": unexpected}
    summary["goal_p99_ms"] = GOAL_P99_MS
    summary["meets_goal"] = unexpected == 0 and summary["p99_ms"] < GOAL_P99_MS
    return {name: summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--surveys", type=int, default=500, help="distinct surveys the requests spread over")
    parser.add_argument("--port", type=int, default=8731)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    n = int(args.seconds * args.rate)
    with tempfile.TemporaryDirectory(prefix="survey-bench-") as tmp, database(args.db, Path(tmp)) as url:
        workdir = Path(tmp)
        tokens = seed(url, args.surveys)
        env = base_env(
            url, workdir, AFTERCARE_WAKE_PREFECT="false", AFTERCARE_PUBLIC_URL=f"http://{HOST}:{args.port}"
        )
        with child(web_app_args(HOST, args.port), env, workdir / "web.log"):
            wait_http(f"http://{HOST}:{args.port}/healthz", 60)
            waited = loadgen.wait_warm(HOST, args.port)  # stdout is the JSON alone
            sys.stderr.write(f"  warm-up done {waited:.1f} s after the app answered\n")
            out: dict[str, Any] = {
                "db": args.db,
                "rate": args.rate,
                "seconds": args.seconds,
                "surveys": args.surveys,
            }
            gets = [
                get_request(args.port, f"/survey/{rng.choice(tokens)}?score={rng.randint(1, 5)}")
                for _ in range(n)
            ]
            loadgen.run(HOST, args.port, gets[: min(50, n)], min(args.rate, 50.0))  # warm up
            out |= phase("get", loadgen.run(HOST, args.port, gets, args.rate), 200)
            posts = [
                loadgen.build_request(
                    HOST,
                    args.port,
                    f"/survey/{tokens[i % len(tokens)]}",
                    urlencode(
                        {"score": str(i % 5 + 1), "reason": "packaging", "comment": f"ベンチ {i}"}
                    ).encode(),
                    {"Content-Type": "application/x-www-form-urlencoded"},
                )
                for i in range(n)
            ]
            result = loadgen.run(HOST, args.port, posts, args.rate)
            out |= phase("post", result, 303)
            stored = count(url, "SELECT count(*) FROM survey_responses")
            out["post"] |= {"rows_stored": stored, "rows_expected": result.statuses.get(303, 0)}
            out["post"]["meets_goal"] = out["post"]["meets_goal"] and stored == result.statuses.get(303, 0)
    sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=2) + "\n")
    return 0 if out["get"]["meets_goal"] and out["post"]["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
