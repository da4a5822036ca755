"""`python -m bench.reviews`: 100 negative reviews drafted by an LLM, checked by the guardrails and
stored awaiting approval, through the same code the review-reply flow runs (`tasks.reviews.make_draft`),
five at a time.

The LLM is a loopback fake OpenAI-compatible server that takes 1 s per answer and serves at most 5
requests at once (a 6th gets 429 with Retry-After, as a rate-limited provider would). Reported: the
wall time (goal: under 120 s) and our own overhead per draft, i.e. the time spent in our code with
the time spent waiting on the model (measured at the HTTP transport) taken out.

    python -m bench.reviews [--reviews 100] [--concurrency 5] [--latency 1.0] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
from sqlmodel import Session

from aftercare.models import Review, utcnow
from aftercare.reviews import store
from aftercare.reviews.drafting import build_drafter
from aftercare.reviews.settings import LLMSettings
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine.db import migrate
from tasks.reviews import make_draft, reviews_policy

COMPLAINTS = [
    "The mug arrived broken and the box was crushed. Very disappointed.",
    "Still waiting for my order after two weeks. Never again.",
    "The colour is not as described, it looks grey rather than blue.",
    "Handle cracked after a week of normal use. Waste of money.",
    "Parcel did not arrive and nobody answered my email.",
]
REPLY = {
    "reply_text": "Thank you for your review. We are sorry it did not meet your expectations, and we have "
    "shared your feedback with our team. Please write to support@example.com so that we can look into it.",
    "language": "en",
    "apologises": True,
    "promised_actions": ["share the feedback with the team"],
    "risk_notes": [],
}


class SlowLLM:
    """An OpenAI-compatible chat completions endpoint answering in `latency` s, `capacity` at once."""

    def __init__(self, latency: float, capacity: int):
        self.latency = latency
        self.slots = threading.BoundedSemaphore(capacity)
        self.answered = 0
        self.refused = 0
        self.peak = 0
        self._busy = 0
        self._lock = threading.Lock()
        llm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not llm.slots.acquire(blocking=False):
                    with llm._lock:
                        llm.refused += 1
                    self._answer(
                        429,
                        {"error": {"message": "too many requests", "type": "rate_limit_exceeded"}},
                        {"Retry-After": "1"},
                    )
                    return
                try:
                    with llm._lock:
                        llm._busy += 1
                        llm.peak = max(llm.peak, llm._busy)
                    time.sleep(llm.latency)
                    with llm._lock:
                        llm._busy -= 1
                        llm.answered += 1
                finally:
                    # Freed before the answer goes out: the client's next request may follow at once.
                    llm.slots.release()
                completion = {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:20]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "bench"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "logprobs": None,
                            "message": {"role": "assistant", "content": json.dumps(REPLY), "refusal": None},
                        }
                    ],
                    "usage": {"prompt_tokens": 400, "completion_tokens": 80, "total_tokens": 480},
                }
                self._answer(200, completion)

            def _answer(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> SlowLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ModelClock:
    """Time each thread spends in HTTP round trips to the model (request sent -> response read)."""

    local: threading.local = field(default_factory=threading.local)

    def reset(self) -> None:
        self.local.waited = 0.0

    @property
    def waited(self) -> float:
        return getattr(self.local, "waited", 0.0)

    def add(self, seconds: float) -> None:
        self.local.waited = self.waited + seconds


class TimedTransport(httpx.HTTPTransport):
    def __init__(self, clock: ModelClock, **kwargs: Any):
        super().__init__(**kwargs)
        self.clock = clock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = super().handle_request(request)
        response.read()
        self.clock.add(time.perf_counter() - started)
        return response


def seed(rt: Runtime, n: int) -> list[int]:
    ids = []
    with Session(rt.engine) as session:
        for i in range(n):
            row = Review(
                platform="own",
                platform_review_id=f"bench-{i}",
                rating=1 + i % 2,
                body=COMPLAINTS[i % len(COMPLAINTS)],
                author_display_name=f"Customer {i}",
                language="en",
                source_created_at=datetime.now(UTC),
                triage_negative=True,
                triage_score=-0.6,
                triage_reasons=["bench"],
                status="new",
            )
            session.add(row)
            session.flush()
            ids.append(row.id)
        session.commit()
    return ids


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(reviews: int, concurrency: int, latency: float, database_url: str | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="aftercare-bench-reviews-"))
    settings = Settings(
        environment="test", var_dir=workdir, database_url=database_url or "", wake_prefect=False
    )
    migrate(settings)
    rt = Runtime.build(settings)
    ids = seed(rt, reviews)
    policy = reviews_policy(rt)
    clock = ModelClock()
    with SlowLLM(latency, capacity=5) as llm:
        llm_settings = LLMSettings(
            _env_file=None,
            base_url=llm.base_url,
            model="bench",
            api_key="sk-bench",
            timeout_s=30,
            max_retries=5,
        )
        client = openai.OpenAI(
            base_url=llm.base_url,
            api_key="sk-bench",
            timeout=30,
            max_retries=5,
            http_client=httpx.Client(
                transport=TimedTransport(clock, limits=httpx.Limits(max_connections=50))
            ),
        )

        def one(review_id: int) -> tuple[float, float, str]:
            clock.reset()
            started = time.perf_counter()
            drafter = build_drafter(llm_settings, policy, templates_dir=settings.templates_dir, client=client)
            row = make_draft(rt, review_id, drafter=drafter)
            store.set_status(
                rt.engine,
                review_id,
                "awaiting_approval",
                only_from=("new", "drafting"),
                approval_requested_at=utcnow(),
            )
            return time.perf_counter() - started, clock.waited, row.source

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, ids))
        wall = time.perf_counter() - t0
    overhead_ms = [(total - waited) * 1000 for total, waited, _ in results]
    with Session(rt.engine) as session:
        waiting = sum(1 for i in ids if session.get(Review, i).status == "awaiting_approval")
    sources: dict[str, int] = {}
    for _, _, source in results:
        sources[source] = sources.get(source, 0) + 1
    rt.engine.dispose()
    return {
        "reviews": reviews,
        "concurrency": concurrency,
        "database": rt.settings.database_url.split(":", 1)[0],
        "model_latency_s": latency,
        "wall_s": round(wall, 2),
        "goal_wall_s": 120,
        "drafts_per_s": round(reviews / wall, 2),
        "awaiting_approval": waiting,
        "sources": sources,
        "llm_answered": llm.answered,
        "llm_refused_429": llm.refused,
        "llm_peak_concurrency": llm.peak,
        "model_wait_s_mean": round(statistics.mean(w for _, w, _ in results), 3),
        "overhead_ms": {
            "mean": round(statistics.mean(overhead_ms), 1),
            "p50": round(pct(overhead_ms, 0.5), 1),
            "p95": round(pct(overhead_ms, 0.95), 1),
            "max": round(max(overhead_ms), 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args(argv)
    result = run(args.reviews, args.concurrency, args.latency, args.database_url)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    ok = result["wall_s"] < result["goal_wall_s"] and result["awaiting_approval"] == result["reviews"]
    over = result["overhead_ms"]
    sys.stdout.write(
        f"{'OK' if ok else 'FAIL'}: {result['reviews']} reviews drafted+checked+stored in "
        f"{result['wall_s']} s (goal < 120 s) at concurrency {result['concurrency']}; our overhead per "
        f"draft p50 {over['p50']} ms, p95 {over['p95']} ms (model wait {result['model_wait_s_mean']} s "
        f"excluded); 429s from the LLM: {result['llm_refused_429']}\n"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
