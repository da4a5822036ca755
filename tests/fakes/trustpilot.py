"""A fake Trustpilot on loopback (stdlib http.server on 127.0.0.1:0) for the review invitations, so the
real adapter and httpx run in tests (aftercare/reviews/invitations.py). Both hosts on one server:

- `POST /v1/oauth/oauth-business-users-for-applications/accesstoken`: HTTP Basic with the API key
  and secret, form body `grant_type=client_credentials` -> `{"access_token", "expires_in", ...}`
  (`expires_in` as a string, as Trustpilot sends it).
- `POST /v1/private/business-units/{BUSINESS_UNIT_ID}/email-invitations`: a bearer token it issued,
  a JSON body with consumerEmail, consumerName, referenceNumber, locale, senderEmail, replyTo and
  serviceReviewInvitation {templateId, preferredSendTime "MM/dd/yyyy HH:mm:ss", redirectUri?};
  anything else is a 400 and a `violations` entry. Accepted: 202, and the invitation is kept in
  `invitations` (what a customer would receive).

Answers to invitation requests can be scripted one at a time: `plan(429)`, `plan(500, made=True)`
(Trustpilot made the invitation, then failed to say so), `plan(delay_s=2)` (answer after the
client's timeout; `made` says whether it was made meanwhile), `plan(hang_up=True, made=True)`."""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "fake-trustpilot-api-key"
API_SECRET = "fake-trustpilot-api-secret"
BUSINESS_UNIT_ID = "46d6a890000064000500e0c3"
TOKEN_PATH = "/v1/oauth/oauth-business-users-for-applications/accesstoken"
_INVITE_PATH = re.compile(r"^/v1/private/business-units/([^/]+)/email-invitations$")
_SEND_TIME = re.compile(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}$")
_REQUIRED = ("consumerEmail", "consumerName", "referenceNumber", "locale", "senderEmail", "replyTo")


@dataclass
class Planned:
    status: int | None = None  # None: answer as Trustpilot would
    made: bool = False  # with a planned error: Trustpilot made the invitation all the same
    delay_s: float = 0.0
    hang_up: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class FakeTrustpilot:
    def __init__(self, *, token_lifetime_s: int = 359999) -> None:
        self.token_lifetime_s = token_lifetime_s
        self.requests: list[Recorded] = []
        self.token_requests = 0
        self.tokens: set[str] = set()
        self.invitations: list[dict[str, Any]] = []  # made: what customers receive
        self.violations: list[str] = []
        self._plans: deque[Planned] = deque()
        self._token_plans: deque[int] = deque()
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
        made: bool = False,
        delay_s: float = 0.0,
        hang_up: bool = False,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        with self._lock:
            self._plans.append(Planned(status, made, delay_s, hang_up, dict(headers or {}), body))

    def plan_token(self, status: int) -> None:
        """The next token request answers `status` instead of a token."""
        with self._lock:
            self._token_plans.append(status)

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (401), as an expired one does."""
        with self._lock:
            self.tokens.clear()

    def made_for(self, reference: str) -> list[dict[str, Any]]:
        return [i for i in self.invitations if i.get("referenceNumber") == reference]

    def start(self) -> FakeTrustpilot:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeTrustpilot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering ------------------------------------------------------------------------------------

    def handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]] | None:
        entry = Recorded(path, headers, raw)
        with self._lock:
            self.requests.append(entry)
        if path == TOKEN_PATH:
            answer = self._token(headers, raw)
        elif match := _INVITE_PATH.match(path):
            answer = self._invite(match.group(1), headers, raw)
        else:
            answer = (404, {"message": "Not found"}, {})
        if answer is not None:
            entry.status = answer[0]
        return answer

    def _token(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        expected = "Basic " + base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
        form = urllib.parse.parse_qs(raw.decode())
        with self._lock:
            self.token_requests += 1
            planned = self._token_plans.popleft() if self._token_plans else None
            if planned is not None:
                return planned, {"fault": {"faultstring": "planned"}}, {}
            if headers.get("authorization") != expected:
                return 401, {"fault": {"faultstring": "Invalid client credentials"}}, {}
            if form.get("grant_type") != ["client_credentials"]:
                self.violations.append(f"token request with grant_type {form.get('grant_type')!r}")
                return 400, {"error": "unsupported_grant_type"}, {}
            token = f"tp-token-{self.token_requests}"
            self.tokens.add(token)
        return (
            200,
            {
                "access_token": token,
                "expires_in": str(self.token_lifetime_s),
                "issued_at": "0",
                "status": "approved",
            },
            {},
        )

    def _check(self, body: Any) -> list[str]:
        if not isinstance(body, dict):
            return ["the body is not a JSON object"]
        problems = [
            f"{k} missing or empty" for k in _REQUIRED if not isinstance(body.get(k), str) or not body[k]
        ]
        service = body.get("serviceReviewInvitation")
        if not isinstance(service, dict):
            return [*problems, "serviceReviewInvitation missing"]
        if not isinstance(service.get("templateId"), str) or not service["templateId"]:
            problems.append("serviceReviewInvitation.templateId missing")
        send_time = service.get("preferredSendTime")
        if send_time is not None and not (isinstance(send_time, str) and _SEND_TIME.match(send_time)):
            problems.append(f"preferredSendTime {send_time!r} is not MM/dd/yyyy HH:mm:ss")
        redirect = service.get("redirectUri")
        if redirect is not None and not str(redirect).startswith(("http://", "https://")):
            problems.append("redirectUri is not a URL")
        if "@" not in str(body.get("consumerEmail", "")):
            problems.append("consumerEmail is not an address")
        return problems

    def _invite(
        self, unit: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]] | None:
        with self._lock:
            planned = self._plans.popleft() if self._plans else None
            authorised = headers.get("authorization", "").removeprefix("Bearer ") in self.tokens
        if unit != BUSINESS_UNIT_ID:
            return 404, {"message": "Business unit not found"}, {}
        if not authorised:
            return 401, {"message": "Unauthorized"}, {}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        problems = self._check(body)
        if problems:
            with self._lock:
                self.violations.extend(problems)
            return 400, {"message": "Invalid request", "details": "; ".join(problems)}, {}
        if planned is None or planned.made:
            with self._lock:
                self.invitations.append(body)
        if planned is not None:
            if planned.delay_s and self._closing.wait(planned.delay_s):
                return None
            if planned.hang_up:
                return None
            if planned.status is not None:
                answer = (
                    planned.body if planned.body is not None else {"message": f"planned {planned.status}"}
                )
                return planned.status, answer, planned.headers
        return 202, None, {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeTrustpilot


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.fake.handle(self.path.split("?", 1)[0], headers, raw)
        if answer is None:
            self.close_connection = True
            return
        status, body, extra = answer
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass
