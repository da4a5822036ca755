"""Review rows for approval tests, and a fake Slack-compatible incoming webhook on loopback."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from aftercare.models import Review

EN_COMPLAINT = "The mug arrived broken and the box was crushed. Very disappointed, waste of money."


def add_review(engine: Engine, **fields: Any) -> int:
    """Store a review row as intake would (triaged); every field a test relies on is passed in."""
    values: dict[str, Any] = {
        "platform": "own",
        "platform_review_id": "r-1",
        "rating": 1,
        "body": EN_COMPLAINT,
        "author_display_name": "Sam",
        "language": "en",
        "source_created_at": datetime(2026, 11, 20, 9, 0, tzinfo=UTC),
        "triage_negative": True,
        "triage_score": -0.8,
        "triage_reasons": ["rating 1 <= 2"],
        "status": "new",
    }
    values.update(fields)
    with Session(engine) as session:
        row = Review(**values)
        session.add(row)
        session.commit()
        assert row.id is not None
        return row.id


class FakeChat:
    """Records every JSON body POSTed to it; answers 200 (or `status`)."""

    def __init__(self, status: int = 200):
        self.status = status
        self.posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake._lock:
                    fake.posts.append(json.loads(body or b"{}"))
                self.send_response(fake.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks/T000/B000/XXXX"

    @property
    def texts(self) -> list[str]:
        with self._lock:
            return [str(p.get("text", "")) for p in self.posts]

    def __enter__(self) -> FakeChat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
