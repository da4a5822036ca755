"""A fake 3PL on loopback (stdlib http.server on 127.0.0.1:0), so tests run the real HTTP adapter.

It checks each request's HMAC-SHA256 signature over the raw body (a bad one answers 401 and is kept
in `bad_signatures`), answers the same reference for a repeated idempotency key, and can be scripted:
`plan(503)`, `plan(422, {"error": "unknown SKU X"})`, `plan_delay(2.0)` (answer after that long).

Like a real 3PL it knows the orders it accepted (`orders`: Shopify order id -> reference) and takes
`"action": "cancel"` for them (`cancelled`); a cancel for an order it never accepted answers 404, and
one for an order it has dispatched (`dispatch(order_id)`) answers 409 "already dispatched".

For outages (the fault suite), `go_down()` closes its listening socket, so connections are refused as
from a 3PL that is down, and `come_up()` listens again on the same port. `log` keeps every accepted
instruction in the order it was accepted (a resent idempotency key included)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeThreePL:
    secret: str = "fake-3pl-signing-secret"
    requests: list[Received] = field(default_factory=list)
    bad_signatures: list[Received] = field(default_factory=list)
    accepted: dict[str, str] = field(default_factory=dict)  # idempotency key -> reference
    orders: dict[int, str] = field(default_factory=dict)  # Shopify order id -> reference of its ship
    cancelled: dict[int, str] = field(default_factory=dict)  # Shopify order id -> reference of its cancel
    dispatched: set[int] = field(default_factory=set)  # orders that left: too late to cancel
    _plans: deque[tuple[int, dict[str, Any] | None, float]] = field(default_factory=deque)
    latency_s: float = 0.0  # every unplanned answer takes this long (the benchmark's 50 ms 3PL)
    log: list[tuple[str, Any]] = field(default_factory=list)  # (idempotency key, instruction) accepted
    down_seconds: float = 0.0  # how long it has been down, over every go_down/come_up
    _down_since: float | None = None

    def plan(self, status: int, body: dict[str, Any] | None = None, *, delay: float = 0.0) -> None:
        self._plans.append((status, body, delay))

    def plan_delay(self, seconds: float) -> None:
        self._plans.append((200, None, seconds))

    def dispatch(self, order_id: int) -> None:
        """The parcel of this order has left the 3PL's dock: a cancel now is refused."""
        self.dispatched.add(order_id)

    def _refusal(self, instruction: Any) -> tuple[int, dict[str, Any]] | None:
        """Why this 3PL refuses a well-signed request, if it does (a cancel it cannot honour)."""
        if not isinstance(instruction, dict) or instruction.get("action") != "cancel":
            return None
        order = instruction.get("order") or {}
        if order.get("id") not in self.orders:
            return 404, {"error": f"unknown order {order.get('name')}"}
        if order["id"] in self.dispatched:
            return 409, {"error": f"order {order.get('name')} has already been dispatched"}
        return None

    def _accept(self, key: str, instruction: Any) -> str:
        reference = self.accepted.setdefault(key, f"3PL-{len(self.accepted) + 1:05d}")
        self.log.append((key, instruction))
        if isinstance(instruction, dict) and isinstance(instruction.get("order"), dict):
            book = self.cancelled if instruction.get("action") == "cancel" else self.orders
            book.setdefault(instruction["order"].get("id"), reference)
        return reference

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1/shipping-instructions"

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    def go_down(self) -> None:
        """Stop listening: every connection is refused until `come_up()`."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._server.shutdown()
            self._server.server_close()

    def come_up(self) -> None:
        """Listen again, on the same port, with everything it knew."""
        if self._down_since is not None:
            self.down_seconds += time.monotonic() - self._down_since
            self._down_since = None
            self._listen(self._server.server_address[1])

    def __enter__(self) -> FakeThreePL:
        self._listen(0)
        return self

    def _listen(self, port: int) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                fake.requests.append(got)
                expected = "sha256=" + hmac.new(fake.secret.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, got.headers.get("x-aftercare-signature", "")):
                    fake.bad_signatures.append(got)
                    return self._answer(401, {"error": "bad signature"})
                status, answer, delay = fake._plans.popleft() if fake._plans else (200, None, fake.latency_s)
                if delay:
                    time.sleep(delay)
                if status >= 300:
                    return self._answer(status, answer or {"error": f"planned {status}"})
                try:
                    instruction = got.json()
                except ValueError:
                    instruction = None
                refused = fake._refusal(instruction)
                if refused is not None:
                    return self._answer(*refused)
                reference = fake._accept(got.headers.get("idempotency-key", ""), instruction)
                self._answer(status, answer or {"id": reference, "status": "accepted"})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __exit__(self, *_exc: object) -> None:
        if self._down_since is None:
            self._server.shutdown()
            self._server.server_close()
