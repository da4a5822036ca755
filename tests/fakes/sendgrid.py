"""A fake SendGrid v3 Mail Send server on loopback, so tests run the real `sendgrid` SDK over HTTP.

Every request body is validated against the requestBody schema of `POST /v3/mail/send` in SendGrid's
official OpenAPI document (../shared/contracts/sendgrid/tsg_mail_v3.json). A body that breaks the
contract answers 400 in SendGrid's error shape and is kept in `violations`, which a test asserts is
empty. An address SendGrid itself refuses (`sendgrid_refuses`) answers 400 "Does not contain a valid
address." naming the field, as SendGrid does; that is not a violation. Responses can be scripted:
`plan(429, headers={"Retry-After": "3"})`, `plan(500)`,
`plan(400, errors=[...])`, `plan_delay(5)`. For outages that last (the fault suite), a fault mode
answers every valid Mail Send request the same way until it is switched off: `set_fault("429",
retry_after=5)`, `set_fault("500")`, `set_fault("hang", hang_s=30)` (the message is accepted, so it
counts as delivered, then the connection is held unanswered until the client times out: the
"timeout after receiving" a real provider produces), `set_fault(None)`. Over HTTP: POST /_fake/fault.
`plan(503, to="b@example.com")` answers only the next request addressed to b@example.com (requests
to others go on as usual).

In a test:

    with FakeSendGrid(schema_path) as fake:
        backend = SendGridBackend(SendGridAPIClient(fake.api_key, host=fake.url))
        ...
        assert fake.violations == []

For the benchmark, standalone until killed (GET /_fake/stats reports counts and duplicate outbox ids):

    python -m tests.fakes.sendgrid --port 8025 --schema ../shared/contracts/sendgrid/tsg_mail_v3.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import signal
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

log = logging.getLogger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"
DEFAULT_API_KEY = "SG.fake-test-key"
_DOC_URI = "urn:sendgrid:tsg_mail_v3"
_BODY_POINTER = "/components/requestBodies/PostMailSend/content/application~1json/schema"
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
# What SendGrid itself says for these statuses when a test plans one without its own errors.
_DEFAULT_MESSAGES = {
    400: "Bad Request",
    401: "The provided authorization grant is invalid, expired, or revoked",
    403: "access forbidden",
    404: "not found",
    405: "method not allowed",
    413: "The JSON payload you have included in your request is too large.",
    429: "too many requests",
    500: "internal server error",
    503: "service unavailable",
}


@lru_cache(maxsize=8)
def load_mail_send_schema(path: str | Path) -> Draft202012Validator:
    """A validator for the Mail Send request body, built once per document (resolving its `$ref`s).

    The document declares message-level `custom_args` a string while SendGrid and its SDK take an
    object there (see SOURCE.md beside the document); only that one field is read as an object."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    document = copy.deepcopy(document)
    body = document
    for part in _BODY_POINTER.strip("/").split("/"):
        body = body[part.replace("~1", "/").replace("~0", "~")]
    body["properties"]["custom_args"] = {"type": "object", "additionalProperties": {"type": "string"}}
    registry = Registry().with_resource(_DOC_URI, Resource(contents=document, specification=DRAFT202012))
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"{_DOC_URI}#{_BODY_POINTER}",
    }
    Draft202012Validator.check_schema(body)
    return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def error_body(message: str, field_name: str | None = None, help_: Any = None) -> dict[str, Any]:
    """SendGrid's error shape: {"errors": [{"message", "field", "help"}]}."""
    return {"errors": [{"message": message, "field": field_name, "help": help_}]}


@dataclass
class Planned:
    """One scripted answer, used by the next request to arrive (to `to`, when given). status None =
    answer as usual."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    delay_s: float = 0.0
    to: str | None = None


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    status: int | None = None
    message_id: str | None = None


FAULT_MODES = ("429", "500", "hang")


@dataclass
class Violation:
    """A request body that breaks SendGrid's published contract."""

    path: str
    errors: list[str]
    body: Any


class FakeSendGrid:
    """The fake server: start()/stop() or a `with` block; `url` is the base URL to give the SDK."""

    def __init__(
        self,
        schema_path: str | Path,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        record: bool = True,
    ):
        self.validator = load_mail_send_schema(str(schema_path))
        self.api_key = api_key
        self.latency_s = latency_s
        self.record = record
        self.messages: list[Any] = []
        self.message_ids: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.violations: list[Violation] = []
        self.stats: Counter[str] = Counter()
        self._outbox_ids: Counter[str] = Counter()
        self._plans: deque[Planned] = deque()
        self._fault: tuple[str, float, float] | None = None  # (mode, retry_after, hang_s)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting -------------------------------------------------------------------------------

    def plan(
        self,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
        delay_s: float = 0.0,
        to: str | None = None,
    ) -> None:
        """Answer the next unplanned request (addressed to `to`, when given) with `status` (errors
        default to SendGrid's message)."""
        with self._lock:
            self._plans.append(Planned(status, dict(headers or {}), errors, delay_s, to and to.lower()))

    def plan_delay(self, seconds: float, status: int | None = None) -> None:
        """Hold the next request `seconds` before answering (longer than the client's timeout to
        make it time out); it is dropped unanswered if the fake stops first."""
        with self._lock:
            self._plans.append(Planned(status, {}, None, seconds))

    def set_fault(self, mode: str | None, *, retry_after: float = 5.0, hang_s: float = 30.0) -> None:
        """Answer every valid Mail Send request with this fault until called again with None:
        "429" (with Retry-After), "500", or "hang" (accept the message, then never answer)."""
        if mode is not None and mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {FAULT_MODES}")
        with self._lock:
            self._fault = None if mode is None else (mode, retry_after, hang_s)

    def accepted_outbox_ids(self) -> Counter[str]:
        """How many times each outbox id (personalization custom_args) was accepted for delivery."""
        with self._lock:
            return Counter(self._outbox_ids)

    def reset(self) -> None:
        with self._lock:
            self._fault = None
            self._plans.clear()
            self.messages.clear()
            self.message_ids.clear()
            self.requests.clear()
            self.violations.clear()
            self.stats.clear()
            self._outbox_ids.clear()

    def summary(self) -> dict[str, Any]:
        """Counts, and the outbox ids SendGrid would have delivered more than once."""
        with self._lock:
            dupes = sorted((k for k, n in self._outbox_ids.items() if n > 1), key=lambda k: (len(k), k))
            return {**self.stats, "duplicate_outbox_ids": dupes, "planned": len(self._plans)}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeSendGrid:
        self._closing.clear()
        # A short poll interval keeps stop() (which waits for the loop to notice) fast in every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-sendgrid",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # wakes delayed handlers, which then close without answering
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the endpoint ----------------------------------------------------------------------------

    def _next_plan(self, raw: bytes) -> Planned | None:
        with self._lock:
            if not self._plans:
                return None
            to = _recipients(raw) if any(p.to for p in self._plans) else set()
            for i, planned in enumerate(self._plans):
                if planned.to is None or planned.to in to:
                    del self._plans[i]
                    return planned
            return None

    def sent_to(self, address: str) -> list[Any]:
        """The accepted messages addressed to `address`."""
        with self._lock:
            return [m for m in self.messages if address.lower() in _recipients(json.dumps(m).encode())]

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Answer | None:
        """Decide the answer to one request; None means hang up without answering."""
        entry = RecordedRequest(method, path, headers, raw)
        with self._lock:
            self.stats["requests"] += 1
            if self.record:
                self.requests.append(entry)
        planned = self._next_plan(raw) if path == MAIL_SEND_PATH else None
        delay = self.latency_s + (planned.delay_s if planned else 0.0)
        if delay and self._closing.wait(delay):
            return None
        answer = self._answer(method, path, headers, raw, planned, entry)
        entry.status = answer.status
        with self._lock:
            self.stats[f"status_{answer.status}"] += 1
        if answer.hang_s:
            self._closing.wait(answer.hang_s)
            return None  # accepted, never answered: the client times out
        return answer

    def _answer(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        planned: Planned | None,
        entry: RecordedRequest,
    ) -> _Answer:
        if path != MAIL_SEND_PATH:
            return _Answer(404, error_body("not found"))
        if method != "POST":
            return _Answer(405, error_body("method not allowed"))
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _Answer(401, error_body(_DEFAULT_MESSAGES[401]))
        try:
            body = json.loads(raw)
        except ValueError as exc:
            self._violate(path, [f"body is not JSON: {exc}"], raw.decode("utf-8", "replace"))
            return _Answer(400, error_body("Bad Request", None, f"body is not JSON: {exc}"))
        entry.json = body
        errors = sorted(self.validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            self._violate(path, [f"{_field_of(e) or '<body>'}: {e.message}" for e in errors], body)
            return _Answer(
                400, {"errors": [{"message": e.message, "field": _field_of(e), "help": None} for e in errors]}
            )
        refused = _refused_addresses(body)
        if refused:
            # Not a contract violation: the body is well-formed, SendGrid judges the address itself.
            return _Answer(400, {"errors": refused})
        with self._lock:
            fault = self._fault
        if fault is not None and planned is None:
            mode, retry_after, hang_s = fault
            with self._lock:
                self.stats[f"fault_{mode}"] += 1
            if mode == "429":
                return _Answer(429, error_body(_DEFAULT_MESSAGES[429]), {"Retry-After": f"{retry_after:g}"})
            if mode == "500":
                return _Answer(500, error_body(_DEFAULT_MESSAGES[500]))
        if planned is not None and planned.status is not None:
            default = _DEFAULT_MESSAGES.get(planned.status) or _REASONS.get(planned.status, "error")
            errors_out = planned.errors if planned.errors is not None else error_body(default)["errors"]
            return _Answer(planned.status, {"errors": errors_out}, planned.headers)
        message_id = uuid.uuid4().hex[:22]
        entry.message_id = message_id
        with self._lock:
            self.stats["accepted"] += 1
            for personalization in body.get("personalizations", []):
                outbox_id = (personalization.get("custom_args") or {}).get("outbox_id")
                if outbox_id is not None:
                    self._outbox_ids[str(outbox_id)] += 1
            if self.record:
                self.messages.append(body)
                self.message_ids.append(message_id)
        if fault is not None and planned is None and fault[0] == "hang":
            return _Answer(202, None, {"X-Message-Id": message_id}, hang_s=fault[2])
        return _Answer(202, None, {"X-Message-Id": message_id})

    def _violate(self, path: str, errors: list[str], body: Any) -> None:
        log.warning("SendGrid contract violation on %s: %s", path, "; ".join(errors))
        with self._lock:
            self.stats["violations"] += 1
            self.violations.append(Violation(path, errors, body))


INVALID_ADDRESS = "Does not contain a valid address."
_ADDRESS_HELP = (
    "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.to"
)


def sendgrid_refuses(address: str) -> bool:
    """Whether SendGrid answers 400 for this address: it sends to any RFC-conforming address, and
    refuses the rest, such as the legacy Japanese carrier addresses with a leading, trailing or
    doubled dot in an unquoted local part (`taro..yamada@docomo.ne.jp`, `taro.@ezweb.ne.jp`), and a
    bracketed IP address as the domain."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in address):
        return True
    quoted = len(local) >= 2 and local.startswith('"') and local.endswith('"')
    if not quoted and (local.startswith(".") or local.endswith(".") or ".." in local):
        return True
    return domain.startswith("[") or "." not in domain or any(not label for label in domain.split("."))


def _refused_addresses(body: dict[str, Any]) -> list[dict[str, Any]]:
    """SendGrid's errors for every address in the request it would not send to."""
    found: list[tuple[str, Any]] = []
    for n, personalization in enumerate(body.get("personalizations") or []):
        for kind in ("to", "cc", "bcc"):
            for m, entry in enumerate(personalization.get(kind) or []):
                found.append((f"personalizations.{n}.{kind}.{m}.email", entry.get("email")))
    for kind in ("from", "reply_to"):
        if isinstance(body.get(kind), dict):
            found.append((f"{kind}.email", body[kind].get("email")))
    return [
        {"message": INVALID_ADDRESS, "field": name, "help": _ADDRESS_HELP}
        for name, email in found
        if isinstance(email, str) and sendgrid_refuses(email)
    ]


def _recipients(raw: bytes) -> set[str]:
    """The lower-cased `to` addresses of a Mail Send body (none when it is not one)."""
    try:
        body = json.loads(raw)
        return {
            str(to.get("email", "")).lower()
            for personalization in body.get("personalizations", [])
            for to in personalization.get("to", [])
        }
    except (ValueError, AttributeError, TypeError):
        return set()


def _field_of(error: Any) -> str | None:
    """SendGrid names the offending field with dots (personalizations.0.to); a missing required
    property is named itself."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            parts.append(missing[0])
    return ".".join(parts) or None


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0  # accepted, then held this long unanswered (fault mode "hang")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a benchmark opens a connection per request (urllib)
    fake: FakeSendGrid


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        if self.path == "/_fake/stats":
            self._send(_Answer(200, self.server.fake.summary()))
            return
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fake = self.server.fake
        if method == "POST" and self.path.startswith("/_fake/"):
            self._send(self._control(fake, raw))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = fake.handle(method, self.path.split("?", 1)[0], headers, raw)
        if answer is None:
            self.close_connection = True
            return
        self._send(answer)

    def _control(self, fake: FakeSendGrid, raw: bytes) -> _Answer:
        """Remote scripting for the standalone server: POST /_fake/plan {status, headers, errors,
        delay_s}; POST /_fake/fault {mode: "429"|"500"|"hang"|null, retry_after, hang_s};
        POST /_fake/reset."""
        if self.path == "/_fake/fault":
            spec = json.loads(raw or b"{}")
            fake.set_fault(
                spec.get("mode"),
                retry_after=float(spec.get("retry_after", 5.0)),
                hang_s=float(spec.get("hang_s", 30.0)),
            )
            return _Answer(200, {"ok": True})
        if self.path == "/_fake/reset":
            fake.reset()
            return _Answer(200, {"ok": True})
        if self.path == "/_fake/plan":
            spec = json.loads(raw or b"{}")
            if spec.get("status") is None:
                fake.plan_delay(float(spec.get("delay_s", 0.0)))
            else:
                fake.plan(
                    int(spec["status"]),
                    headers=spec.get("headers"),
                    errors=spec.get("errors"),
                    delay_s=float(spec.get("delay_s", 0.0)),
                )
            return _Answer(200, {"ok": True})
        return _Answer(404, error_body("not found"))

    def _send(self, answer: _Answer) -> None:
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status, _REASONS.get(answer.status))
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
        pass  # one line per request to stderr would cost more than the request at benchmark rates


def serve(schema_path: str | Path, **kwargs: Any) -> Iterator[FakeSendGrid]:
    """For a pytest fixture: `yield from serve(shared_path(...))` runs the fake for one test and,
    at its end, fails the test if anything it sent broke the contract (a test that sends a broken
    body on purpose clears `violations` once it has asserted on them)."""
    with FakeSendGrid(schema_path, **kwargs) as fake:
        yield fake
        assert fake.violations == [], f"requests broke SendGrid's Mail Send contract: {fake.violations}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake SendGrid Mail Send server (for tests and bench).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--schema", required=True, help="path to tsg_mail_v3.json")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--record", action="store_true", help="keep every body in memory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fake-sendgrid %(message)s")

    fake = FakeSendGrid(
        args.schema,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        latency_s=args.latency_ms / 1000.0,
        record=args.record,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with fake:
        log.info("listening on %s", fake.url)
        while not stop.wait(60):
            log.info("%s", json.dumps(fake.summary()))
    log.info("stopped: %s", json.dumps(fake.summary()))


if __name__ == "__main__":
    main()
