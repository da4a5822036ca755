"""A fake OpenAI-compatible chat completions server on loopback, so tests run the real `openai` SDK
over HTTP (retries, Retry-After, timeouts and response parsing included).

`POST /v1/chat/completions` answers, in order, what the test planned:

    fake.plan_reply({...})                 # a structured-output answer (the dict, as JSON content)
    fake.plan_content("not json")          # any content string
    fake.plan_refusal("I can't help")      # message.refusal set, content null
    fake.plan_status(429, headers={"Retry-After": "1"})
    fake.plan_status(500)
    fake.plan_hang(5)                      # hold the request (longer than the client timeout)

and, once the plan is used up, whatever `responder(request_json)` returns (a dict becomes JSON
content; a string is sent as the content). Every request is kept in `requests`; a request that
breaks the shape the SDK should send is kept in `violations`, which a test asserts is empty.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETIONS_PATH = "/v1/chat/completions"
API_KEY = "sk-fake-test-key"

Responder = Callable[[dict[str, Any]], "dict[str, Any] | str"]


@dataclass
class Planned:
    kind: str  # "content" | "refusal" | "status" | "hang"
    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    finish_reason: str = "stop"


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answered: str
    at: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def all_text(self) -> str:
        """Everything the model was sent, as one string (to search for what must not be there)."""
        return json.dumps(self.body, ensure_ascii=False)


def _default_responder(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "reply_text": "Thank you for your review. We are sorry it did not meet your expectations, "
        "and we have shared your feedback with our team.",
        "language": "en",
        "apologises": True,
        "promised_actions": ["share the feedback with the team"],
        "risk_notes": [],
    }


class FakeOpenAI:
    def __init__(self, responder: Responder | None = None, *, api_key: str = API_KEY):
        self.responder: Responder = responder or _default_responder
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self._plans: deque[Planned] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- scripting ---------------------------------------------------------------------------

    def plan_reply(self, reply: dict[str, Any]) -> None:
        self._plan(Planned("content", content=json.dumps(reply, ensure_ascii=False)))

    def plan_content(self, content: str, finish_reason: str = "stop") -> None:
        self._plan(Planned("content", content=content, finish_reason=finish_reason))

    def plan_refusal(self, text: str = "I'm sorry, but I can't help with that.") -> None:
        self._plan(Planned("refusal", content=text))

    def plan_status(self, status: int, headers: dict[str, str] | None = None) -> None:
        self._plan(Planned("status", status=status, headers=dict(headers or {})))

    def plan_hang(self, seconds: float) -> None:
        self._plan(Planned("hang", delay_s=seconds))

    def _plan(self, planned: Planned) -> None:
        with self._lock:
            self._plans.append(planned)

    @property
    def planned(self) -> int:
        with self._lock:
            return len(self._plans)

    @property
    def answered(self) -> list[str]:
        return [r.answered for r in self.requests]

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> FakeOpenAI:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the endpoint ------------------------------------------------------------------------

    def _check_shape(self, headers: dict[str, str], body: Any) -> list[str]:
        """What the SDK must send for our drafter: auth, a model, messages, a strict json_schema."""
        problems = []
        if headers.get("authorization") != f"Bearer {self.api_key}":
            problems.append("missing or wrong bearer token")
        if not isinstance(body, dict):
            return [*problems, "body is not a JSON object"]
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append("model missing")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append("messages missing")
        else:
            for i, m in enumerate(messages):
                if m.get("role") not in {"system", "developer", "user", "assistant"} or not isinstance(
                    m.get("content"), str
                ):
                    problems.append(f"messages[{i}] is not a role/content message")
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        if fmt.get("type") != "json_schema" or not schema:
            problems.append("response_format is not a json_schema")
        elif schema.get("additionalProperties") is not False or set(schema.get("required", [])) != set(
            schema.get("properties", {})
        ):
            problems.append("json_schema is not strict-compatible (all properties required, no extras)")
        return problems

    def handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], Any] | None:
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        with self._lock:
            planned = self._plans.popleft() if self._plans else None
        record = Recorded(path, headers, body if isinstance(body, dict) else {}, "", time.monotonic())
        with self._lock:
            self.requests.append(record)
        if path != COMPLETIONS_PATH:
            record.answered = "404"
            return 404, {}, {"error": {"message": "not found", "type": "invalid_request_error"}}
        problems = self._check_shape(headers, body)
        if problems:
            with self._lock:
                self.violations.extend(problems)
            record.answered = "400"
            return 400, {}, {"error": {"message": "; ".join(problems), "type": "invalid_request_error"}}

        if planned is not None and planned.kind == "hang":
            record.answered = "hang"
            self._closing.wait(planned.delay_s)
            return None
        if planned is not None and planned.kind == "status":
            record.answered = str(planned.status)
            kind = "rate_limit_exceeded" if planned.status == 429 else "server_error"
            return (
                planned.status,
                planned.headers,
                {"error": {"message": f"fake {planned.status}", "type": kind}},
            )

        refusal = None
        finish = "stop"
        if planned is not None and planned.kind == "refusal":
            content, refusal = None, planned.content
            record.answered = "refusal"
        elif planned is not None:
            content, finish = planned.content, planned.finish_reason
            record.answered = "content"
        else:
            produced = self.responder(body)
            content = produced if isinstance(produced, str) else json.dumps(produced, ensure_ascii=False)
            record.answered = "responder"
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        }
        return 200, {}, completion


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeOpenAI


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
        status, extra_headers, payload = answer
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass
