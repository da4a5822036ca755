"""Our own review form under load: p50/p99 of a review submitted (`POST /r/<token>`, the link in a
review request) at an open-loop rate on loopback, against the web app served as `aftercare up` serves
it (uvicorn, one process), on SQLite and/or PostgreSQL. Goal: p99 under 50 ms at 100 req/s.

Every POST is the first review of a different order's product (the orders as bench/review_requests.py
writes them, their requests mailed), so each one stores a review revision and its inbox delivery in
one transaction. Latency is measured from the moment each request was due (bench/loadgen.py), so
queueing shows. Afterwards the database is counted: one revision and one inbox row per 303.

    python -m bench.review_form                         # 30 s at 100 req/s, both databases
    python -m bench.review_form --db postgres --seconds 60
    python -m bench.review_form --seconds 3 --rate 20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aftercare.reviews import intake
from aftercare.reviews.form_links import review_form_token
from aftercare.settings import Settings
from aftercare.spine.db import make_engine
from aftercare.stack import wait_http, web_app_args
from bench import loadgen
from bench.review_requests import REVIEWABLE, load_review_requests
from bench.run import HOST, REVIEWS_SECRET, base_env, child, count, database, say
from bench.survey_page import GOAL_P99_MS, get_request, phase

LINK_SECRET = REVIEWS_SECRET + "-link"  # what bench.run.base_env gives the web app


def seed(url: str, n: int) -> list[str]:
    """n delivered orders whose review request went out yesterday; each one's form-link token."""
    engine = make_engine(Settings(database_url=url))
    now = datetime.now(UTC)
    load_review_requests(engine, n, now - timedelta(days=1), status="done")
    engine.dispose()
    # Order i's request is touchpoint i (bench/contact.py's loaders number them so).
    return [review_form_token(LINK_SECRET, i, i, now) for i in range(1, n + 1)]


def review(i: int) -> bytes:
    """The i-th review as the page's form sends it (templates/<lang>/review_form.html)."""
    return urlencode(
        {
            "product": REVIEWABLE[i % len(REVIEWABLE)],
            "rating": str(i % 5 + 1),
            "title": f"ベンチ {i}",
            "body": f"手触りがよく、家族にも好評です。ベンチ {i}",
            "display_name": "花子 山.",
        }
    ).encode()


def run_db(kind: str, workdir: Path, seconds: float, rate: float, port: int) -> dict[str, Any]:
    n = max(1, int(seconds * rate))
    with database(kind, workdir) as url:
        say(f"  {kind}: seeding {n} orders with a review request mailed")
        tokens = seed(url, n)
        env = base_env(
            url, workdir, AFTERCARE_WAKE_PREFECT="false", AFTERCARE_PUBLIC_URL=f"http://{HOST}:{port}"
        )
        with child(web_app_args(HOST, port), env, workdir / f"web-review-form-{kind}.log"):
            wait_http(f"http://{HOST}:{port}/healthz", 60)
            say(f"  warm-up done {loadgen.wait_warm(HOST, port):.1f} s after the app answered")
            # A short warm-up (imports, the first page render, the pool): GETs, which store nothing.
            loadgen.run(HOST, port, [get_request(port, f"/r/{t}") for t in tokens[:20]], 50)
            posts = [
                loadgen.build_request(
                    HOST,
                    port,
                    f"/r/{token}",
                    review(i),
                    {"Content-Type": "application/x-www-form-urlencoded"},
                )
                for i, token in enumerate(tokens)
            ]
            result = loadgen.run(HOST, port, posts, rate)
        out = phase("post", result, 303)["post"]
        say(
            f"    POST review {rate:.0f} req/s: p50 {out['p50_ms']} ms  p99 {out['p99_ms']} ms  "
            f"(CPU stolen {out['cpu_steal_pct']}%)"
        )
        accepted = result.statuses.get(303, 0)
        stored = {
            "revisions": count(url, "SELECT count(*) FROM review_revisions"),
            "inbox": count(url, f"SELECT count(*) FROM inbox WHERE source = '{intake.SOURCE}'"),
            "expected": accepted,
        }
        say(f"    database: {stored}")
        out["database"] = stored
        out["consistent"] = out["unexpected"] == 0 and stored["revisions"] == stored["inbox"] == accepted
        out["meets_goal"] = out["meets_goal"] and out["consistent"]
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=100.0, help="offered requests per second (default 100)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--port", type=int, default=8781)
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "goal_p99_ms": GOAL_P99_MS}
    with tempfile.TemporaryDirectory(prefix="aftercare-bench-review-form-") as tmp:
        for kind in kinds:
            results[kind] = run_db(kind, Path(tmp), args.seconds, args.rate, args.port)
    say(json.dumps(results, ensure_ascii=False, indent=2))
    return 0 if all(results[k]["consistent"] for k in kinds) else 1


if __name__ == "__main__":
    sys.exit(main())
