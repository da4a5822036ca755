"""Review intake: the documented review JSON, how a delivery of one is classified and stored in the
inbox (the same stored-then-acked spine as Shopify's webhooks), and how a stored row becomes a
`reviews` row linked to its order and customer, with its triage.

The review JSON (`POST /webhooks/reviews`, one line of `aftercare reviews import`)::

    {
      "platform":   "trustpilot",        # required: who hosts the review; [a-z0-9_-], <= 32 chars
                                         #   ("own", "google", "trustpilot", "yotpo", ...)
      "review_id":  "5f2c...",           # required: the platform's id for it, <= 128 chars (a number
                                         #   is read as text). Google: the review's resource name
                                         #   accounts/{a}/locations/{l}/reviews/{r}, or its reviewId
      "product_ref": "ARITA-MUG-01",     # optional: the product's SKU, handle or id
      "order_ref":  "#1101",             # optional: the order's name (#1101 or 1101) or Shopify id
      "rating":     2,                   # required: whole stars 1..5
      "title":      "残念",               # optional
      "body":       "届くのが遅く…",      # required (may be ""), <= 20,000 chars
      "author":     "Hanako",            # required (may be ""): the reviewer's public display name
      "language":   "ja",                # optional: BCP 47 tag; detected from the text when absent
      "created_at": "2026-11-27T09:30:00+09:00",  # required: ISO 8601 with a UTC offset
      "shop_domain": "x.myshopify.com",  # optional: narrows the order lookup when several shops
      "revision":   2                    # optional: the platform's version of an edited review
    }

Unknown fields are ignored. The inbox delivery id is `platform:review_id`, so the same review posted
or imported twice is stored once. A body that is authentic but not such an object is stored
`invalid` with the reason (shown to ops, never processed).

An edited review is a new delivery of the same `review_id` with a higher `revision` (and a delivery id
of its own: our review form sends `own:<review_id>#r<revision>`, aftercare/reviews/own_form.py): it
refreshes the review's content and triage; a revision older than the one applied changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import InvalidPayload
from aftercare.models import PRIVATE_REPLY_PLATFORM, InboxEvent, InboxStatus, Order, Review, ReviewStatus
from aftercare.orders.shopify import parse_json
from aftercare.orders.timeline import OrderNotFound, find_order
from aftercare.reviews.models import Review as ReviewText
from aftercare.reviews.policy import ReviewsPolicy, load_reviews_policy
from aftercare.reviews.triage import Analyser, Triager
from aftercare.spine.inbox import Delivery, store_delivery

SOURCE = "reviews"
TOPIC = "reviews/create"
# History from `aftercare reviews import`: stored and triaged like a webhook review, but as status
# `history`, so no approval run starts and no second public reply goes to an answered review.
TOPIC_IMPORT = "reviews/import"
TOPICS = frozenset({TOPIC, TOPIC_IMPORT})
SIGNATURE_HEADER = "X-Aftercare-Hmac-Sha256"
MAX_TEXT = 20_000


class ReviewPayload(BaseModel):
    """One review as we accept it (see the module docstring for the documented JSON)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    platform: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    review_id: str = Field(min_length=1, max_length=128)
    product_ref: str | None = Field(default=None, max_length=255)
    order_ref: str | None = Field(default=None, max_length=128)
    rating: int = Field(ge=1, le=5)
    title: str | None = Field(default=None, max_length=500)
    body: str = Field(max_length=MAX_TEXT)
    author: str = Field(max_length=255)
    language: str | None = Field(default=None, max_length=35)
    created_at: AwareDatetime
    shop_domain: str | None = Field(default=None, max_length=255)
    revision: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("platform", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("platform", mode="after")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        # Our own private replies (recovery apologies) live under this platform: a review sent in
        # under it could take a case's row, or be mailed to a customer as if it were theirs.
        if v == PRIVATE_REPLY_PLATFORM:
            raise ValueError(f"platform {v!r} is reserved for the shop's private replies")
        return v

    @field_validator("review_id", "order_ref", "product_ref", mode="before")
    @classmethod
    def _id_as_text(cls, v: object) -> object:
        if isinstance(v, bool):
            return v  # refused below as not a string
        if isinstance(v, int):
            return str(v)
        return v.strip() if isinstance(v, str) else v

    @field_validator("order_ref", "product_ref", "title", "language", "shop_domain", mode="after")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None

    @field_validator("rating", mode="before")
    @classmethod
    def _whole_stars(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError("rating must be a whole number of stars 1..5")
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, v: object) -> object:
        # PostgreSQL text cannot hold NUL; the raw body in the inbox keeps it.
        return v.replace("\x00", "") if isinstance(v, str) else v

    @property
    def delivery_id(self) -> str:
        return delivery_id_for(self.platform, self.review_id)


def delivery_id_for(platform: str, review_id: str) -> str:
    """The inbox delivery id of a review: `platform:review_id` (hashed when over 128 chars)."""
    plain = f"{platform}:{review_id}"
    if len(plain) <= 128:
        return plain
    return f"{platform}:sha256:{hashlib.sha256(review_id.encode()).hexdigest()}"


def describe(exc: ValidationError) -> str:
    """A validation error as `field: message; ...`, naming every field that was wrong."""
    parts = [f"{'.'.join(map(str, e['loc'])) or '(body)'}: {e['msg']}" for e in exc.errors()[:8]]
    more = len(exc.errors()) - 8
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_review(data: Any) -> ReviewPayload:
    """Validate one decoded review object, or raise InvalidPayload naming the bad fields."""
    if not isinstance(data, Mapping):
        raise InvalidPayload(f"review payload must be a JSON object, got {type(data).__name__}")
    try:
        return ReviewPayload.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidPayload(f"review payload is missing or has bad fields: {describe(exc)}") from exc


def parse_review_body(body: bytes) -> ReviewPayload:
    """Decode and validate a review delivery's raw body, or raise InvalidPayload."""
    return parse_review(parse_json(body))


def review_delivery(body: bytes, *, triggered_at: datetime | None = None) -> Delivery:
    """The inbox delivery for an authentic review body: pending with delivery id `platform:review_id`
    when it is a usable review, else invalid with the reason (delivery id: the body's hash, so the
    same broken body twice is still stored once)."""
    try:
        payload = parse_review_body(body)
    except InvalidPayload as exc:
        return Delivery(
            source=SOURCE,
            delivery_id="sha256:" + hashlib.sha256(body).hexdigest(),
            event_id=None,
            topic=TOPIC,
            shop_domain="",
            triggered_at=triggered_at,
            body=body,
            status=InboxStatus.INVALID,
            reason=str(exc),
        )
    return Delivery(
        source=SOURCE,
        delivery_id=payload.delivery_id,
        event_id=None,
        topic=TOPIC,
        shop_domain=payload.shop_domain or "",
        triggered_at=triggered_at,
        body=body,
        subject_ref=payload.order_ref or payload.delivery_id[:128],
    )


# --- processing: inbox row -> reviews row -------------------------------------------------------------


@cache
def _policy_at(policies_dir: Path) -> ReviewsPolicy:
    return load_reviews_policy(policies_dir)


def reviews_policy(policies_dir: Path) -> ReviewsPolicy:
    """The reviews policy under `policies_dir`, loaded once per process."""
    return _policy_at(Path(policies_dir))


@dataclass
class IntakeResult:
    review: Review
    created: bool
    order: Order | None
    note: str | None  # e.g. why the review is not linked to an order


def link_order(session: Session, payload: ReviewPayload, shop_domain: str) -> tuple[Order | None, str | None]:
    """The order the review's `order_ref` names (by name or Shopify id), or (None, why not)."""
    if not payload.order_ref:
        return None, None
    try:
        return find_order(session, payload.order_ref, shop_domain or None), None
    except OrderNotFound as exc:
        return None, f"{exc}; review stored without an order"


def triage_text(payload: ReviewPayload) -> str:
    """What triage reads: the title and the body (a title alone often carries the complaint)."""
    text = f"{payload.title}\n{payload.body}" if payload.title else payload.body
    return text[:MAX_TEXT]


def upsert_review(
    session: Session,
    row: InboxEvent,
    payload: ReviewPayload,
    policy: ReviewsPolicy,
    analysers: dict[str, Analyser] | None = None,
    *,
    status_if_new: ReviewStatus = ReviewStatus.NEW,
) -> IntakeResult:
    """Create the review (status new, or history for an import) or refresh its content, link it to
    its order and customer when the reference allows, and store its triage. Inside the caller's
    transaction; idempotent: a row processed again leaves the review as it was (status and SLA
    timestamps are never touched here)."""
    shop = payload.shop_domain or row.shop_domain
    review = session.exec(
        select(Review).where(
            Review.platform == payload.platform, Review.platform_review_id == payload.review_id
        )
    ).first()
    created = review is None
    edit_note = None
    if review is not None and payload.revision is not None:
        applied = review.revision or 0
        if payload.revision < applied:
            # Revisions processed out of order (two workers, a retry): the newer one stands.
            order = session.get(Order, review.order_id) if review.order_id is not None else None
            note = f"revision {payload.revision} is older than revision {applied}, applied already: ignored"
            return IntakeResult(review=review, created=False, order=order, note=note)
        if payload.revision > applied and review.status not in (ReviewStatus.NEW, ReviewStatus.HISTORY):
            edit_note = (
                f"edited by its author (revision {payload.revision}) while {review.status}: the approval "
                "page shows the edited text; a decision or reply made on the earlier text stands"
            )
    if review is None:
        review = Review(
            platform=payload.platform,
            platform_review_id=payload.review_id,
            rating=payload.rating,
            source_created_at=payload.created_at,
            received_at=row.received_at,
            status=status_if_new,
        )
    order, note = link_order(session, payload, shop)
    result = Triager(policy, analysers).triage(
        ReviewText(
            id=payload.delivery_id,
            text=triage_text(payload),
            rating=payload.rating,
            lang=payload.language,
            display_name=payload.author or None,
        )
    )
    review.shop_domain = (order.shop_domain if order is not None else shop) or ""
    review.order_id = order.id if order is not None else None
    review.customer_id = order.customer_id if order is not None else None
    review.order_ref = payload.order_ref
    review.product_ref = payload.product_ref
    review.rating = payload.rating
    review.title = payload.title
    review.body = payload.body
    review.author_display_name = payload.author or None
    review.language = payload.language or result.lang
    review.source_created_at = payload.created_at
    review.triage_negative = result.negative
    review.triage_score = result.score
    review.triage_reasons = list(result.reasons)
    review.policy_version = policy.version
    if payload.revision is not None:
        review.revision = payload.revision
    session.add(review)
    session.flush()
    note = "; ".join(filter(None, [note, edit_note])) or None
    return IntakeResult(review=review, created=created, order=order, note=note)


def process_review_row(
    session: Session, row: InboxEvent, policy: ReviewsPolicy, analysers: dict[str, Analyser] | None = None
) -> IntakeResult:
    """Turn a stored `reviews/create` row into its review (InvalidPayload when the body is unusable)."""
    payload = parse_review_body(row.body)
    status = ReviewStatus.HISTORY if row.topic == TOPIC_IMPORT else ReviewStatus.NEW
    result = upsert_review(session, row, payload, policy, analysers, status_if_new=status)
    if result.order is not None:
        row.subject_ref = result.order.name  # the order's timeline finds the review's delivery
    return result


# --- history: `aftercare reviews import FILE` ---------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did: rows read, stored (new, pending), already stored, and each bad line."""

    read: int = 0
    stored: int = 0
    duplicates: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # [{"line", "error", "review_id"?}]

    def as_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "errors": self.errors,
        }


def detect_format(path: Path, head: bytes) -> str:
    """'csv' or 'jsonl', by the file's suffix, else by its first non-blank character."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def _error(line: int, message: str, review_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"line": line, "error": message}
    if review_id not in (None, ""):
        out["review_id"] = str(review_id)[:128]
    return out


def _jsonl_records(raw: bytes) -> Iterator[tuple[int, bytes | None, Any, str | None]]:
    """(line number, stored body, decoded object, error) for each non-blank line."""
    for n, line in enumerate(raw.splitlines(), start=1):
        if n == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            yield n, line.strip(), json.loads(line), None
        except UnicodeDecodeError:
            yield n, None, None, "line is not UTF-8"
        except json.JSONDecodeError as exc:
            yield n, None, None, f"not JSON: {exc.msg} at column {exc.colno}"
        except RecursionError:
            yield n, None, None, "JSON nested too deeply to read"


def _csv_records(raw: bytes) -> Iterator[tuple[int, bytes | None, Any, str | None]]:
    """(line number, None, row as a dict, error) for each CSV record; the header names the fields."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield 0, None, None, f"file is not UTF-8 ({exc.reason} at byte {exc.start})"
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA, strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a broken record (stray quote): report it, read on
            yield reader.reader.line_num, None, None, f"CSV: {exc}"
            continue
        if _EXTRA in row:
            yield reader.line_num, None, None, f"{len(row[_EXTRA])} more fields than the header has"
            continue
        if all(v in (None, "") for v in row.values()):
            continue
        data = {k.strip(): v for k, v in row.items() if k and v not in (None, "")}
        missing = [k for k, v in row.items() if v is None]
        if missing:
            yield reader.line_num, None, data, f"fewer fields than the header (no {', '.join(missing)})"
            continue
        yield reader.line_num, None, data, None


_EXTRA = "\x00extra"


def import_reviews(engine: Engine, path: Path, *, fmt: str | None = None) -> ImportReport:
    """Store the reviews in a JSON lines or CSV file (same fields as the review JSON; a CSV's header
    names them) through the inbox, pending, exactly as if each had been posted to the webhook. A
    review already stored (same platform and review_id) is counted as a duplicate and left alone, so
    importing a file twice stores nothing new. A bad line is reported with its number and reason
    and not stored; the other lines are."""
    raw = Path(path).read_bytes()
    kind = fmt or detect_format(Path(path), raw[:64])
    if kind not in ("csv", "jsonl"):
        raise ValueError(f"unknown import format {kind!r}: csv or jsonl")
    report = ImportReport()
    records = _csv_records(raw) if kind == "csv" else _jsonl_records(raw)
    for line, body, data, problem in records:
        report.read += 1
        review_id = data.get("review_id") if isinstance(data, dict) else None
        if problem is not None:
            report.errors.append(_error(line, problem, review_id))
            continue
        try:
            payload = parse_review(data)
        except InvalidPayload as exc:
            report.errors.append(_error(line, str(exc), review_id))
            continue
        if body is None:  # a CSV row: stored as the documented JSON it stands for
            body = json.dumps(payload.model_dump(mode="json", exclude_none=True), ensure_ascii=False).encode()
        _inbox_id, new = store_delivery(
            engine,
            Delivery(
                source=SOURCE,
                delivery_id=payload.delivery_id,
                event_id=None,
                topic=TOPIC_IMPORT,
                shop_domain=payload.shop_domain or "",
                triggered_at=None,
                body=body,
                subject_ref=payload.order_ref or payload.delivery_id[:128],
            ),
        )
        if new:
            report.stored += 1
        else:
            report.duplicates += 1
    return report
