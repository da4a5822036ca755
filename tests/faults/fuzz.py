"""Fuzzing the webhook entry points: hypothesis draws webhook requests (bodies mutated from the real
samples, headers missing, duplicated, garbage, signed or forged), posts them to the real FastAPI app,
then processes every stored row with the real processing code, and reports what happened.

The promise it checks (issue 8, "Prove the spine"): no answer is a 5xx; every acknowledged delivery
is in the inbox; every refusal is a 4xx whose JSON body names the problem; and after processing every
row is done, ignored, invalid (with its reason) or waiting, never failed, never left processing.

`run_fuzz(settings, examples, seed)` returns a `FuzzReport`; `report.problems` lists each broken
promise with the request that broke it (the body and headers, to pin as a plain regression test).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import random
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from sqlmodel import Session, select

from aftercare import samples
from aftercare.models import InboxEvent, InboxStatus
from aftercare.processing import process_row
from aftercare.reviews import intake as review_intake
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine import inbox
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker

SHOPIFY_URL = "/webhooks/shopify"
REVIEWS_URL = "/webhooks/reviews"
SHOP = "fuzz-shop.myshopify.com"
# Where a row may end after processing; anything else (failed, processing, pending) breaks the promise.
FINAL = {InboxStatus.DONE, InboxStatus.IGNORED, InboxStatus.INVALID, InboxStatus.WAITING}
KEEP_PROBLEMS = 50  # the first problems are kept whole; the rest are counted


@dataclass
class Problem:
    """One broken promise and the request (or row) that broke it."""

    what: str
    detail: str
    url: str | None = None
    headers: list[tuple[str, str]] | None = None
    body: bytes | None = None
    inbox_id: int | None = None

    def __str__(self) -> str:
        where = f"{self.url} " if self.url else f"inbox {self.inbox_id} " if self.inbox_id else ""
        body = f"\n    body[:300]={self.body[:300]!r}" if self.body is not None else ""
        headers = f"\n    headers={self.headers!r:.1000}" if self.headers is not None else ""
        return f"{self.what}: {where}{self.detail}{headers}{body}"


@dataclass
class FuzzReport:
    """What a fuzz run sent, what the app answered, and where every stored row ended."""

    seed: int | None = None
    requests: int = 0
    signed: int = 0  # of the requests, correctly signed
    signed_for_us: int = 0  # of those, naming exactly the shop the app serves
    stored: int = 0  # 2xx answers that stored a new row
    duplicates: int = 0  # 2xx answers {"status": "duplicate"}
    replays: int = 0  # requests that repeated an earlier one byte for byte
    answers: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    stored_as: Counter[str] = field(default_factory=Counter)  # status in the 2xx answer -> count
    rows: Counter[str] = field(default_factory=Counter)  # inbox status after processing -> count
    processed: int = 0  # process_row calls
    processing_errors: int = 0  # process_row calls that raised
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.answers.items() if status >= 500)

    @property
    def refused(self) -> dict[int, int]:
        return {status: n for status, n in sorted(self.answers.items()) if 400 <= status < 500}

    def problem(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < KEEP_PROBLEMS:
            self.problems.append(problem)

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {self.requests} requests ({self.signed} correctly signed, "
            f"{self.replays} replays)",
            f"  answers: {dict(sorted(self.answers.items()))}; 5xx: {self.server_errors}",
            f"  2xx stored: {self.stored} {dict(self.stored_as)}; duplicates: {self.duplicates}",
            f"  4xx by status: {self.refused}",
            f"  rows after processing: {dict(sorted(self.rows.items()))}",
            f"  process_row calls: {self.processed}; raised: {self.processing_errors}",
            f"  problems: {self.problem_count}",
        ]
        lines += [f"  - {p}" for p in self.problems[:10]]
        return "\n".join(lines)


# --- what is sent --------------------------------------------------------------------------------------


def _order_bases() -> list[tuple[str, dict[str, Any]]]:
    return [("orders/create", samples.load(name)) for name in samples.names()]


def _base_documents() -> list[tuple[str, str, dict[str, Any]]]:
    """(url, topic, document): real-shaped bodies of every kind the app takes."""
    orders = _order_bases()
    docs: list[tuple[str, str, dict[str, Any]]] = []
    for topic, order in orders:
        docs.append((SHOPIFY_URL, topic, order))
        docs.append((SHOPIFY_URL, "orders/updated", {**order, "financial_status": "paid"}))
        docs.append((SHOPIFY_URL, "orders/cancelled", {**order, "cancelled_at": order["updated_at"]}))
        fulfillment = samples.fulfillment(order)
        docs.append((SHOPIFY_URL, "fulfillments/create", fulfillment))
        docs.append((SHOPIFY_URL, "fulfillments/update", {**fulfillment, "shipment_status": "delivered"}))
        docs.append(
            (
                SHOPIFY_URL,
                "fulfillment_events/create",
                {
                    "id": order["id"] * 100 + 7,
                    "fulfillment_id": fulfillment["id"],
                    "order_id": order["id"],
                    "status": "delivered",
                    "message": "配達完了",
                    "happened_at": "2026-11-25T11:00:00+09:00",
                    "city": "Tokyo",
                    "country": "Japan",
                },
            )
        )
        docs.append(
            (
                SHOPIFY_URL,
                "refunds/create",
                {
                    "id": order["id"] * 100 + 9,
                    "order_id": order["id"],
                    "created_at": "2026-11-26T10:00:00+09:00",
                    "note": "返品",
                    "refund_line_items": [
                        {"line_item_id": li["id"], "quantity": li["quantity"]} for li in order["line_items"]
                    ],
                },
            )
        )
    for name in samples.review_names():
        review = samples.review(name)
        docs.append((REVIEWS_URL, review_intake.TOPIC, review))
        docs.append(
            (REVIEWS_URL, review_intake.TOPIC, {**review, "review_id": "other-1", "order_ref": "#1102"})
        )
    return docs


BASES = _base_documents()
TOPICS = sorted({topic for url, topic, _ in BASES if url == SHOPIFY_URL})

_DEEP = "\x01deep:"  # a marker replaced by deep nesting in the serialised text (json.dumps would recurse)

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",  # a lone surrogate: valid in a JSON escape, not encodable as UTF-8
    "\udfff tail",
    "\ufeff",
    "\u202eevil",
    "\u0000\u0001\u001f\u007f",
    "𝕏𝕐ℤ",
    "ｅｍｏｊｉ😀👩‍👩‍👧",
    "NaN",
    "Infinity",
    "1e999",
    "-0",
    "0x10",
    "null",
    "true",
    "<script>alert(1)</script>",
    "'; DROP TABLE inbox; --",
    "../../etc/passwd",
    "%s%s%n",
    "{{ 7*7 }}",
    "2026-13-45T99:99:99Z",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "2026-11-20T10:15:00",
    "2026-11-20",
    "10:15",
    "2026-11-20T10:15:00+09:00",
    "#1101",
    "order-id:1",
    "not-an-email",
    "a@b",
    "x" * 300,
]
HUGE_NUMBERS = [0, -1, -(2**63), 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 10**400, 1.5, -0.0, 1e308]


def _nested(depth: int) -> str:
    return f"{_DEEP}{depth}"


def _hostile_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(HUGE_NUMBERS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(ODD_STRINGS),
        st.text(max_size=40),
        st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),
        st.text(alphabet=st.characters(categories=["Cs", "Co", "Cn", "Zs", "Mn"]), max_size=10),
        st.integers(min_value=256, max_value=300_000).map(lambda n: "ü" * n),
        st.integers(min_value=50, max_value=100_000).map(_nested),
    )
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=4),
        st.dictionaries(st.text(max_size=8), scalars, max_size=4),
    )


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (dict keys and list indexes), the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def _mutated_document(draw: st.DrawFn, doc: dict[str, Any]) -> Any:
    """A copy of `doc` with a few fields replaced by hostile values, removed, or added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        paths = [p for p in _paths(doc) if p]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "root"]))
        if action == "root":
            return draw(_hostile_values())
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        if action == "replace":
            parent[path[-1]] = draw(_hostile_values())
        elif action == "delete":
            del parent[path[-1]]
        else:
            target = parent if isinstance(parent, dict) else doc
            target[draw(st.sampled_from(["extra", "", "\x00", "id", "order", "__proto__"]))] = draw(
                _hostile_values()
            )
    return doc


def _serialise(doc: Any, ascii_only: bool) -> bytes:
    text = json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True)
    while _DEEP in text:
        start = text.index('"' + json.dumps(_DEEP)[1:-1])
        end = text.index('"', start + 1)
        depth = int(json.loads(text[start : end + 1])[len(_DEEP) :])
        text = text[:start] + "[" * depth + "]" * depth + text[end + 1 :]
    # A lone surrogate survives ensure_ascii=False: sent as the bytes a careless encoder would write.
    return text.encode("utf-8", "surrogatepass")


@st.composite
def _body(draw: st.DrawFn, doc: dict[str, Any], topic: str) -> bytes:
    kind = draw(st.sampled_from(["intact", "mutated", "mutated", "mutated", "mutated", "bytes", "other"]))
    if kind == "other":
        return draw(
            st.one_of(
                st.just(b""),
                st.binary(max_size=200),
                st.sampled_from(
                    [b"null", b"[]", b"{}", b"0", b'"x"', b"NaN", b"-Infinity", b"\xef\xbb\xbf{}", b"{,}"]
                ),
                st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
                st.integers(min_value=2, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),
                st.integers(min_value=2, max_value=200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
            )
        )
    if kind == "intact":
        # A real-shaped body with fresh ids, so it is stored and processed all the way.
        doc = copy.deepcopy(doc)
        if "review_id" in doc:
            doc["review_id"] = f"fuzz-{draw(st.integers(min_value=0, max_value=10**6))}"
        body = json.dumps(doc, ensure_ascii=False).encode()
    else:
        body = _serialise(draw(_mutated_document(doc)), draw(st.booleans()))
    if kind == "bytes" and body:
        at = draw(st.integers(min_value=0, max_value=len(body)))
        edit = draw(st.sampled_from(["truncate", "insert", "bom", "wrap"]))
        if edit == "truncate":
            body = body[:at]
        elif edit == "insert":
            body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
        elif edit == "bom":
            body = b"\xef\xbb\xbf" + body
        else:
            body = b'{"' + topic.split("/")[0].rstrip("s").encode() + b'": ' + body + b"}"
    return body


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


_GARBAGE_HEADER = st.one_of(
    st.just(""),
    st.sampled_from([" ", "\t", "null", "undefined", "0", "-1", "x" * 2000, "orders/create\x00", "\x7f"]),
    # Header bytes as a client may send them (no CR/LF, which the HTTP layer itself refuses).
    st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").decode("latin-1")),
)


@st.composite
def _signature(draw: st.DrawFn, secret: str, body: bytes) -> tuple[list[str], bool]:
    """(values of the signature header, whether the first is right): most are right."""
    good = sign(secret, body)
    kind = draw(
        st.sampled_from(["good"] * 12 + ["padded", "missing", "forged", "other-body", "garbage", "twice"])
    )
    if kind == "good":
        return [good], True
    if kind == "padded":
        return [f"  {good} "], True  # surrounding whitespace is not part of the value
    if kind == "missing":
        return [], False
    if kind == "forged":
        return [base64.b64encode(draw(st.binary(min_size=32, max_size=32))).decode()], False
    if kind == "other-body":
        return [sign(secret, body + b" ")], False
    if kind == "garbage":
        return [draw(_GARBAGE_HEADER)], False
    # Twice: a forged value first, the right one second; only the first is read.
    return [sign("wrong-secret", body), good], False


@st.composite
def _header_value(draw: st.DrawFn, normal: str) -> list[str]:
    """Values for one header: usually the normal one, else missing, garbage or repeated."""
    kind = draw(st.sampled_from(["normal"] * 8 + ["missing", "garbage", "twice", "long"]))
    if kind == "normal":
        return [normal]
    if kind == "missing":
        return []
    if kind == "garbage":
        return [draw(_GARBAGE_HEADER)]
    if kind == "twice":
        return [normal, draw(_GARBAGE_HEADER)]
    return [normal * (1 + 400 // max(1, len(normal)))]


@dataclass
class _Request:
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    signed: bool
    # The shop header names exactly the shop the app serves (else a signed request is refused too:
    # the HMAC does not cover that header, so only configured shops are accepted).
    shop_ok: bool = True


@st.composite
def _request(draw: st.DrawFn, settings: Settings, serial: int) -> _Request:
    url, topic, doc = draw(st.sampled_from(BASES))
    body = draw(_body(doc, topic))
    headers: list[tuple[str, str]] = [("content-type", "application/json")]
    if url == REVIEWS_URL:
        values, signed = draw(_signature(settings.reviews_webhook_secret.get_secret_value(), body))
        headers += [(review_intake.SIGNATURE_HEADER, v) for v in values]
        return _Request(url, headers, body, signed)
    values, signed = draw(_signature(settings.shopify_webhook_secret.get_secret_value(), body))
    headers += [("X-Shopify-Hmac-Sha256", v) for v in values]
    topic = draw(st.sampled_from([topic] * 6 + TOPICS + ["orders/delete", "products/update"]))
    shop_ok = True
    for name, normal in (
        ("X-Shopify-Topic", topic),
        ("X-Shopify-Shop-Domain", SHOP),
        ("X-Shopify-Webhook-Id", f"fuzz-webhook-{serial}"),
        ("X-Shopify-Event-Id", f"fuzz-event-{serial}"),
        ("X-Shopify-Triggered-At", draw(st.sampled_from(["2026-11-20T01:15:00Z", *ODD_STRINGS[23:30]]))),
    ):
        values = draw(_header_value(normal))
        if name == "X-Shopify-Shop-Domain":
            shop_ok = values == [SHOP]
        headers += [(name, v) for v in values]
    return _Request(url, headers, body, signed, shop_ok)


# --- what is checked -----------------------------------------------------------------------------------


def _check_answer(report: FuzzReport, req: _Request, status: int, answer: Any, text: str) -> int | None:
    """Check one answer against the promise; the new inbox id when it stored a row."""

    def problem(what: str, detail: str) -> None:
        report.problem(Problem(what, detail, req.url, req.headers, req.body))

    if status >= 500:
        problem("5xx", f"HTTP {status}: {text[:2000]}")
        return None
    if status == 401 and req.signed and req.shop_ok:
        problem("authentic request refused", f"HTTP {status}: {text[:300]}")
    if 400 <= status < 500:
        error = answer.get("error") or answer.get("detail") if isinstance(answer, dict) else None
        if not isinstance(error, str) or not error.strip():
            problem("unclear 4xx", f"HTTP {status} without a JSON error naming the problem: {text[:300]}")
        return None
    if status != 200 or not isinstance(answer, dict):
        problem("odd answer", f"HTTP {status}: {text[:300]}")
        return None
    if not req.signed:
        problem("forged request acknowledged", f"HTTP {status}: {text[:300]}")
    stored = answer.get("status")
    if stored == "duplicate":
        report.duplicates += 1
        return None
    report.stored += 1
    report.stored_as[str(stored)] += 1
    if stored not in (InboxStatus.PENDING, InboxStatus.INVALID, InboxStatus.IGNORED):
        problem("odd answer", f"stored as {stored!r}")
    if stored in (InboxStatus.INVALID, InboxStatus.IGNORED) and not answer.get("reason"):
        problem("no reason", f"stored {stored} without a reason: {text[:300]}")
    inbox_id = answer.get("inbox_id")
    if not isinstance(inbox_id, int):
        problem("odd answer", f"stored without an inbox id: {text[:300]}")
        return None
    return inbox_id


def _send(client: TestClient, report: FuzzReport, req: _Request, acked: set[int]) -> None:
    report.requests += 1
    report.signed += req.signed
    report.signed_for_us += req.signed and req.shop_ok
    try:
        # As bytes: a header value is whatever octets the client sent (latin-1 is one byte per char).
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in req.headers]
        response = client.post(req.url, content=req.body, headers=raw)
    except Exception:  # the app raised: what a real server would answer 500 to
        report.answers[500] += 1
        detail = "".join(traceback.format_exc(limit=-6))
        report.problem(Problem("5xx", f"the app raised:\n{detail}", req.url, req.headers, req.body))
        return
    report.answers[response.status_code] += 1
    try:
        answer = response.json()
    except ValueError:
        answer = None
    inbox_id = _check_answer(report, req, response.status_code, answer, response.text)
    if inbox_id is not None:
        acked.add(inbox_id)


def _process_all(rt: Runtime, report: FuzzReport) -> None:
    """Drain the inbox as the process-inbox flow does: claim, process, record an error as failed."""
    raised: set[int] = set()
    while True:
        # A row that raised is failed, and claimed again until MAX_PROCESS_ATTEMPTS, as the sweep does.
        claimed = inbox.claim_batch(rt.engine, 100)
        if not claimed:
            return
        for row in claimed:
            report.processed += 1
            try:
                process_row(rt, row.inbox_id)
            except Exception as exc:
                report.processing_errors += 1
                detail = "".join(traceback.format_exception(exc, limit=-6))
                inbox.mark_failed(rt.engine, row.inbox_id, detail)
                if row.inbox_id in raised:
                    continue
                raised.add(row.inbox_id)
                with Session(rt.engine) as session:
                    stored = session.get(InboxEvent, row.inbox_id)
                    body, topic = (stored.body, stored.topic) if stored else (None, row.topic)
                report.problem(
                    Problem("processing raised", f"{topic}: {detail}", inbox_id=row.inbox_id, body=body)
                )


def _check_rows(rt: Runtime, report: FuzzReport, acked: set[int]) -> None:
    with Session(rt.engine) as session:
        rows = session.exec(select(InboxEvent)).all()
        ids = {row.id for row in rows}
        for missing in sorted(acked - ids):
            report.problem(Problem("acknowledged but not stored", "no such inbox row", inbox_id=missing))
        for row in rows:
            report.rows[row.status] += 1
            if row.status not in FINAL:
                report.problem(
                    Problem(
                        f"row left {row.status}",
                        f"{row.topic}: {(row.reason or '')[:2000]}",
                        inbox_id=row.id,
                        body=row.body,
                    )
                )
            elif row.status != InboxStatus.DONE and not (row.reason or "").strip():
                report.problem(Problem(f"{row.status} without a reason", row.topic, inbox_id=row.id))
            elif row.reason and "Traceback" in row.reason:
                report.problem(Problem("a traceback as the reason", row.reason[:500], inbox_id=row.id))
        extra = session.exec(
            select(sa.func.count()).select_from(InboxEvent).where(sa.not_(InboxEvent.id.in_(acked or {0})))
        ).one()
        if extra:
            report.problem(Problem("stored without being acknowledged", f"{extra} rows"))


def run_fuzz(settings: Settings, examples: int, seed: int | None = None) -> FuzzReport:
    """Post `examples` hypothesis-drawn webhook requests to the app built from `settings` (an empty,
    migrated database), replaying some earlier ones byte for byte, then process every stored row.
    The same seed draws the same requests."""
    seed = random.randrange(2**32) if seed is None else seed
    report = FuzzReport(seed=seed)
    # The fuzzer's shop is one the app serves; a mangled shop header is then refused like a forgery.
    settings = settings.model_copy(update={"shopify_shops": [*settings.shopify_shops, SHOP]})
    acked: set[int] = set()
    sent: list[_Request] = []
    serial = iter(range(10**9))

    app_log = logging.getLogger("aftercare.web.app")
    level = app_log.level
    app_log.setLevel(logging.ERROR)  # one warning per invalid delivery would drown the report
    with TestClient(create_app(settings, waker=NoWaker()), raise_server_exceptions=True) as client:

        @hypothesis.seed(seed)
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        @hypothesis.given(st.data())
        def one_request(data: st.DataObject) -> None:
            # Drawn the same way whatever was sent before: hypothesis needs the draws to depend only
            # on its own choices.
            replay = data.draw(st.integers(min_value=0, max_value=19)) == 0
            earlier = data.draw(st.integers(min_value=0, max_value=199))
            fresh = data.draw(_request(settings, next(serial)))
            if replay and sent:
                req = sent[earlier % len(sent)]
                report.replays += 1
            else:
                req = fresh
                sent.append(req)
                del sent[:-200]
            _send(client, report, req, acked)

        try:
            one_request()
        finally:
            app_log.setLevel(level)

    rt = Runtime.build(settings)
    try:
        _process_all(rt, report)
        _check_rows(rt, report, acked)
    finally:
        rt.engine.dispose()
    return report
