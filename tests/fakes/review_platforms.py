"""Fake review-platform reply APIs on loopback (stdlib http.server), so the real adapters and httpx
run in tests: Google Business Profile `accounts.locations.reviews.updateReply`
(`PUT /v4/accounts/{a}/locations/{l}/reviews/{r}/reply`, `{"comment"}`) and Trustpilot's business
reply (`POST /v1/private/reviews/{reviewId}/reply`, `{"authorBusinessUserId", "message"}`), both
with bearer tokens. Every request is recorded; answers can be scripted one request at a time."""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOGLE_TOKEN = "fake-google-token"
TRUSTPILOT_TOKEN = "fake-trustpilot-token"
BUSINESS_USER_ID = "507f191e810c19729de860ea"

_GOOGLE_PATH = re.compile(r"^/v4/accounts/([^/]+)/locations/([^/]+)/reviews/([^/]+)/reply$")
_TRUSTPILOT_PATH = re.compile(r"^/v1/private/reviews/([^/]+)/reply$")
_GOOGLE_REVIEW = re.compile(r"^/v4/(accounts/[^/]+/locations/[^/]+/reviews/[^/]+)$")  # reviews.get


@dataclass
class Planned:
    """The answer to the next reply request. status None: answer as the platform would.
    `delay_s`: wait before answering (longer than the client's timeout makes it time out);
    `hang_up`: read the request, then close the connection without answering."""

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang_up: bool = False


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    status: int | None = None


class FakeReviewPlatforms:
    """Both platforms on one server: `url` is the base URL for either adapter."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: dict[str, str] = {}  # accepted replies: "google:<name>" / "trustpilot:<id>" -> text
        self.accepted = 0
        self._plans: deque[Planned] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def plan(
        self,
        status: int | None = None,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
        hang_up: bool = False,
    ) -> None:
        with self._lock:
            self._plans.append(Planned(status, body, dict(headers or {}), delay_s, hang_up))

    def start(self) -> FakeReviewPlatforms:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-review-platforms",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeReviewPlatforms:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Answer | None:
        entry = Recorded(method, path, headers, raw)
        with self._lock:
            self.requests.append(entry)
            planned = self._plans.popleft() if self._plans else None
        if planned and planned.delay_s and self._closing.wait(planned.delay_s):
            return None
        if planned and planned.hang_up:
            return None
        answer = self._answer(method, path, headers, raw, planned, entry)
        entry.status = answer.status
        return answer

    def _answer(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        planned: Planned | None,
        entry: Recorded,
    ) -> _Answer:
        google, trustpilot = _GOOGLE_PATH.match(path), _TRUSTPILOT_PATH.match(path)
        review = _GOOGLE_REVIEW.match(path)
        if review and method == "GET":
            if headers.get("authorization") != f"Bearer {GOOGLE_TOKEN}":
                return _google_error(
                    401, "Request had invalid authentication credentials.", "UNAUTHENTICATED"
                )
            if planned is not None and planned.status is not None:
                return _Answer(planned.status, planned.body, planned.headers)
            found: dict[str, Any] = {"name": review.group(1), "starRating": "ONE"}
            with self._lock:
                comment = self.replies.get(f"google:{review.group(1)}")
            if comment is not None:
                found["reviewReply"] = {"comment": comment, "updateTime": "2026-11-29T01:00:00Z"}
            return _Answer(200, found)
        if google:
            expected_method, token = "PUT", GOOGLE_TOKEN
        elif trustpilot:
            expected_method, token = "POST", TRUSTPILOT_TOKEN
        else:
            return _Answer(404, {"message": "Not found"})
        if method != expected_method:
            return _Answer(405, {"message": "Method not allowed"})
        if headers.get("authorization") != f"Bearer {token}":
            return (
                _google_error(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")
                if google
                else _Answer(401, {"message": "Unauthorized"})
            )
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        entry.json = body
        if planned is not None and planned.status is not None:
            return _Answer(planned.status, planned.body, planned.headers)
        if google:
            if (
                not isinstance(body, dict)
                or set(body) != {"comment"}
                or not isinstance(body["comment"], str)
                or not body["comment"].strip()
            ):
                return _google_error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT")
            name = path.removeprefix("/v4/").removesuffix("/reply")
            with self._lock:
                self.replies[f"google:{name}"] = body["comment"]
                self.accepted += 1
            return _Answer(200, {"comment": body["comment"], "updateTime": "2026-11-29T01:00:00Z"})
        assert trustpilot is not None
        if (
            not isinstance(body, dict)
            or set(body) != {"authorBusinessUserId", "message"}
            or body["authorBusinessUserId"] != BUSINESS_USER_ID
            or not str(body["message"]).strip()
        ):
            return _Answer(400, {"message": "Invalid request", "details": "authorBusinessUserId and message"})
        with self._lock:
            self.replies[f"trustpilot:{trustpilot.group(1)}"] = body["message"]
            self.accepted += 1
        return _Answer(201, None)


def _google_error(code: int, message: str, status: str) -> _Answer:
    return _Answer(code, {"error": {"code": code, "message": message, "status": status}})


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeReviewPlatforms


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.fake.handle(method, self.path.split("?", 1)[0], headers, raw)
        if answer is None:
            self.close_connection = True
            return
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass
