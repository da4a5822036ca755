"""Service time of the customer pages, one request at a time, in-process: what one request of each
kind costs the web app (ms of its one process), without the load generator's queueing. The open-loop
benches (bench.unsubscribe, bench.survey_page) give p99 at a rate; on a shared machine those are
noisy, and the service time is what decides whether 100 req/s fits in one process (10 ms each).

The app is the real one (`create_app`), called through ASGI directly (no sockets), on a fresh SQLite
or PostgreSQL database seeded by the benches' own seeders. With `--profile` the POSTs run under
cProfile and the top functions by cumulative time are printed.

    python -m bench.service_time --db sqlite --requests 300
    python -m bench.service_time --db postgres --profile unsubscribe_post
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aftercare.settings import Settings
from aftercare.web.app import create_app
from bench import survey_page as survey_bench
from bench import unsubscribe as unsubscribe_bench
from bench.run import BENCH_SHOP, database

PHASES = ("unsubscribe_get", "unsubscribe_post", "survey_get", "survey_post")


async def call(app: Any, method: str, target: str, body: bytes = b"", content_type: str | None = None) -> int:
    """One request through the ASGI app; its status."""
    path, _, query = target.partition("?")
    headers = [(b"host", b"127.0.0.1"), (b"accept-language", b"ja")]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def timed(
    app: Any, requests: list[tuple[str, str, bytes, str | None]], expect: int
) -> tuple[list[float], float]:
    """Each request in turn: each one's wall time, and the CPU time of this process per request (every
    thread's), in ms. The CPU time is the figure a busy machine disturbs least (on PostgreSQL the
    server's own work is not in it; the wall times hold it). Any other status than `expect` is an
    error."""

    async def run() -> list[float]:
        out = []
        for method, target, body, ctype in requests:
            start = time.perf_counter()
            status = await call(app, method, target, body, ctype)
            out.append((time.perf_counter() - start) * 1000)
            if status != expect:
                raise RuntimeError(f"{method} {target[:60]}: {status}, expected {expect}")
        return out

    cpu = time.process_time()
    wall = asyncio.run(run())
    return wall, (time.process_time() - cpu) * 1000 / len(requests)


def inline_threadpool() -> None:
    """Run what the app hands to its thread pool inline, so that cProfile (which sees one thread)
    sees the database work too. Only for --profile: it serialises the requests' waits."""
    import fastapi.routing

    from aftercare.web import surveys, unsubscribe

    async def inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    for module in (fastapi.routing, surveys, unsubscribe):
        module.run_in_threadpool = inline  # type: ignore[attr-defined]


def summary(ms: list[float], cpu_ms: float) -> dict[str, float]:
    data = sorted(ms)
    return {
        "n": len(data),
        "cpu_ms": round(cpu_ms, 2),
        "mean_ms": round(statistics.fmean(data), 2),
        "p50_ms": round(data[len(data) // 2], 2),
        "p90_ms": round(data[int(len(data) * 0.9)], 2),
        "min_ms": round(data[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--requests", type=int, default=300, help="per phase (default 300)")
    parser.add_argument("--profile", choices=PHASES, help="run this phase under cProfile")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args(argv)
    n = args.requests
    results: dict[str, Any] = {"db": args.db, "requests": n}
    with tempfile.TemporaryDirectory(prefix="aftercare-service-") as tmp, database(args.db, Path(tmp)) as url:
        unsub_tokens = unsubscribe_bench.seed(url, n + 20)
        survey_tokens = survey_bench.seed(url, n + 20)
        settings = Settings(
            database_url=url,
            var_dir=Path(tmp),
            link_secret=unsubscribe_bench.LINK_SECRET,
            shopify_shops=[BENCH_SHOP],
            wake_prefect=False,
        )
        app = create_app(settings)
        form = "application/x-www-form-urlencoded"
        phases: dict[str, tuple[Callable[[int], tuple[str, str, bytes, str | None]], int]] = {
            "unsubscribe_get": (lambda i: ("GET", f"/unsubscribe/{unsub_tokens[i]}", b"", None), 200),
            "unsubscribe_post": (
                lambda i: ("POST", f"/unsubscribe/{unsub_tokens[i]}", b"List-Unsubscribe=One-Click", form),
                200,
            ),
            "survey_get": (
                lambda i: ("GET", f"/survey/{survey_tokens[i]}?score={i % 5 + 1}", b"", None),
                200,
            ),
            "survey_post": (
                lambda i: (
                    "POST",
                    f"/survey/{survey_tokens[i]}",
                    urlencode(
                        {"score": str(i % 5 + 1), "reason": "packaging", "comment": f"bench {i}"}
                    ).encode(),
                    form,
                ),
                303,
            ),
        }
        for name, (build, expect) in phases.items():
            timed(app, [build(n + j) for j in range(20)], expect)  # warm-up on requests of their own
            requests = [build(i) for i in range(n)]
            if name == args.profile:
                inline_threadpool()
                prof = cProfile.Profile()
                prof.enable()
                ms, cpu_ms = timed(app, requests, expect)
                prof.disable()
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(args.top)
                sys.stdout.write(text.getvalue())
            else:
                ms, cpu_ms = timed(app, requests, expect)
            results[name] = summary(ms, cpu_ms)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
