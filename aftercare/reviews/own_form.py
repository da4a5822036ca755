"""Our own review form: what a customer may review from the link in a review request, reading what
they send as a stranger may send it, and storing it so that it enters through the same inbox path
as `POST /webhooks/reviews` (aftercare/reviews/intake.py).

The link (aftercare/reviews/form_links.py) names an order and the review-request touchpoint it was
mailed for. The page lists the order's reviewable products (`reviewable_products`); a product is
named by its `product_ref` (the line's SKU, else its title), the key the public product page
(`/products/<ref>/reviews`) lists reviews by.

Each submission is a `review_revisions` row numbered per (order, product), and in the same
transaction an inbox delivery of the documented review JSON: platform `own`, `review_id` stable per
order and product (`<order's Shopify id>/<product_ref>`), `revision` its number, delivery id
`own:<review_id>#r<revision>`. So the review is processed, triaged and (when negative) drafted a
reply that a person approves exactly like a webhook review, and an edit is a new delivery that
updates the same review and triages it again. A submission equal to the latest revision stores
nothing (a double click, a reload that posts again, two tabs); two racing for the same number: the
database lets one in, the other reads again and finds its twin, or takes the next number."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from aftercare.errors import AftercareError
from aftercare.models import (
    Customer,
    InboxStatus,
    Order,
    OrderLine,
    Refund,
    ReviewRevision,
    Touchpoint,
)
from aftercare.orders import shipping
from aftercare.reviews import intake
from aftercare.reviews.form_links import ReviewFormLink
from aftercare.reviews.request_policy import Exclusions
from aftercare.reviews.requests import not_reviewable, raw_items_of
from aftercare.spine import addresses, outbox
from aftercare.spine.db import autocommit
from aftercare.spine.inbox import Delivery, insert_delivery

PLATFORM = "own"
# The touchpoints whose mail carries a review-form link (the request, and its reminder).
FORM_KINDS = frozenset({"review_request", "review_reminder"})
MAX_TEXT = intake.MAX_TEXT  # what the review JSON takes: 20,000 characters
MAX_TITLE = 200
MAX_NAME = 60
_RATING = re.compile(r"^[1-5]$")
# A review key longer than this is hashed, so that `own:<key>#r<revision>` fits the inbox's 128.
_MAX_KEY = 100


class ReviewRefused(AftercareError):
    """A review we cannot take as sent; `field` names what to correct (rating, title, body,
    display_name, product, form)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# -- what can be reviewed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewableProduct:
    ref: str  # product_ref: the SKU, else the title
    title: str
    variant_title: str | None


def product_ref_of(line: OrderLine) -> str:
    """The key a product's reviews are kept and shown under: its SKU, else its title (an order line
    carries no Shopify product id here). Variants with their own SKUs are reviewed apart."""
    return ((line.sku or "").strip() or line.title.strip())[:255]


def reviewable_lines(
    lines: Sequence[OrderLine],
    keeps: Mapping[int, int],
    items: Mapping[int, Mapping[str, Any]],
    exclude: Exclusions | None = None,
) -> list[OrderLine]:
    """The order's lines a customer may review: every line with units the customer still has (`keeps`:
    `shipping.keeps`, so a line refunded in full is left out) and, given the review-request policy's
    `exclude`, that is a product to review (not gift wrap, shipping protection, a digital add-on:
    `requests.not_reviewable` over the line's raw Shopify item in `items`, the measure the request
    mail asks by). `lines`: OrderLine rows, or rows with the same fields."""
    return [
        line
        for line in lines
        if line.quantity > 0
        and keeps.get(line.shopify_id, line.quantity) > 0
        and (exclude is None or not_reviewable(line, items.get(line.shopify_id, {}), exclude) is None)
    ]


def reviewable_products(lines: Sequence[OrderLine]) -> list[ReviewableProduct]:
    """The products of `reviewable_lines`, each once (two lines of one SKU are one product)."""
    seen: dict[str, ReviewableProduct] = {}
    for line in lines:
        ref = product_ref_of(line)
        if ref and ref not in seen:
            seen[ref] = ReviewableProduct(ref, line.title, line.variant_title)
    return list(seen.values())


def default_display_name(
    first_name: str | None, last_name: str | None, shipping_address: Mapping[str, Any] | None
) -> str:
    """The name a review is shown under unless the customer writes another: the first name and the
    family name's initial ("Hanako Y.", "花子 山."), never the full name; "" when we know none. The
    customer's names first, else the shipping address's."""
    address = shipping_address or {}
    first = addresses.clean_name(first_name or address.get("first_name"))
    last = addresses.clean_name(last_name or address.get("last_name"))
    if first and last:
        return f"{first} {last[0]}."[:MAX_NAME]
    return (first or "")[:MAX_NAME]


# -- reading what was sent --------------------------------------------------------------------------


def parse_rating(raw: object) -> int:
    """Whole stars as a form sends them: the digit "1".."5" (an int is taken as well). "0", "6",
    "5.0", "5.5", "５" (full-width), " 5", "five" are refused, not guessed."""
    if isinstance(raw, bool):
        raise ReviewRefused("rating", "choose from 1 to 5 stars")
    if isinstance(raw, int) and 1 <= raw <= 5:
        return raw
    if isinstance(raw, str) and _RATING.match(raw):
        return int(raw)
    raise ReviewRefused("rating", "choose from 1 to 5 stars")


def clean_text(text: str | None, *, field: str, max_chars: int, multiline: bool = True) -> str:
    """Text as stored: line breaks made \\n (or spaces, for one-line fields), control characters
    (NUL, escape sequences, C1) and format characters (zero-width spaces and joiners, BOM, bidi
    overrides) removed, NFC, surrounding blanks trimmed. HTML stays as written: it is text, and
    every page escapes it. Longer than `max_chars` after cleaning: refused, never cut."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    if not multiline:
        text = text.replace("\n", " ").replace("\t", " ")
    keep = "\n\t" if multiline else ""
    text = "".join(
        ch for ch in text if ch in keep or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")
    )
    text = unicodedata.normalize("NFC", text)
    text = text.strip() if multiline else " ".join(text.split())
    if len(text) > max_chars:
        raise ReviewRefused(field, f"{len(text)} characters; at most {max_chars} are taken")
    return text


@dataclass(frozen=True)
class ReviewInput:
    product_ref: str
    rating: int
    title: str | None
    body: str
    display_name: str


def _one(fields: Mapping[str, Sequence[str]], name: str) -> str:
    values = fields.get(name, [])
    if len(values) > 1:
        raise ReviewRefused("form", f"send one {name}")
    return values[0] if values else ""


def read_review(fields: Mapping[str, Sequence[str]], products: Sequence[ReviewableProduct]) -> ReviewInput:
    """A review from the page's form fields (name -> values, as parse_qs gives them), checked
    against the order's reviewable products; ReviewRefused says what to correct."""
    product = _one(fields, "product")
    if product not in {p.ref for p in products}:
        raise ReviewRefused("product", "not a product of this order")
    ratings = fields.get("rating", [])
    if len(ratings) != 1:
        raise ReviewRefused("rating", "choose from 1 to 5 stars")
    name = clean_text(_one(fields, "display_name"), field="display_name", max_chars=MAX_NAME, multiline=False)
    if not name:
        raise ReviewRefused("display_name", "give the name your review is shown under")
    return ReviewInput(
        product_ref=product,
        rating=parse_rating(ratings[0]),
        title=clean_text(_one(fields, "title"), field="title", max_chars=MAX_TITLE, multiline=False) or None,
        body=clean_text(_one(fields, "body"), field="body", max_chars=MAX_TEXT),
        display_name=name,
    )


# -- the form and its reviews -----------------------------------------------------------------------


@dataclass(frozen=True)
class FormOrder:
    """What the form needs of the order a link names."""

    id: int
    shopify_id: int
    shop_domain: str
    name: str
    locale: str | None


@dataclass(frozen=True)
class Revision:
    """A stored revision of one product's review, as the form shows and compares it."""

    seq: int
    rating: int
    title: str | None
    body: str
    display_name: str | None
    submitted_at: datetime


@dataclass(frozen=True)
class FormState:
    link: ReviewFormLink
    order: FormOrder
    touchpoint_id: int
    products: list[ReviewableProduct]
    latest: dict[str, Revision]  # product_ref -> the revision that counts
    default_name: str
    closed_reason: str | None  # None: open for reviews
    first_submitted: dict[str, datetime] = field(default_factory=dict)  # product_ref -> revision 1's time

    @property
    def open(self) -> bool:
        return self.closed_reason is None


_TP: sa.Table = Touchpoint.__table__  # type: ignore[attr-defined]
_ORDERS: sa.Table = Order.__table__  # type: ignore[attr-defined]
_CUSTOMERS: sa.Table = Customer.__table__  # type: ignore[attr-defined]
_LINES: sa.Table = OrderLine.__table__  # type: ignore[attr-defined]
_REFUNDS: sa.Table = Refund.__table__  # type: ignore[attr-defined]
_REVISIONS: sa.Table = ReviewRevision.__table__  # type: ignore[attr-defined]

# Built once (constructing a statement costs more than running it at page rates). The touchpoint a
# link names with what the form needs of its order and customer, and whether its mail may have
# reached the customer: one round trip.
_FORM = (
    sa.select(
        _TP.c.kind,
        _TP.c.order_id,
        _TP.c.status,
        _ORDERS.c.shopify_id,
        _ORDERS.c.shop_domain,
        _ORDERS.c.name,
        _ORDERS.c.locale,
        _ORDERS.c.financial_status,
        _ORDERS.c.shipping_address,
        _ORDERS.c.raw["line_items"].label("items"),  # not the whole Shopify payload
        _CUSTOMERS.c.first_name,
        _CUSTOMERS.c.last_name,
        outbox.may_have_mailed(_TP.c.id).label("mailed"),
    )
    .select_from(
        _TP.join(_ORDERS, _ORDERS.c.id == _TP.c.order_id).outerjoin(
            _CUSTOMERS, _CUSTOMERS.c.id == _ORDERS.c.customer_id
        )
    )
    .where(_TP.c.id == sa.bindparam("tp"))
)
_FORM_LINES = (
    sa.select(
        _LINES.c.shopify_id,
        _LINES.c.title,
        _LINES.c.variant_title,
        _LINES.c.sku,
        _LINES.c.quantity,
        _LINES.c.requires_shipping,
    )
    .where(_LINES.c.order_id == sa.bindparam("order"))
    .order_by(_LINES.c.position, _LINES.c.id)
)
_FORM_REFUNDS = sa.select(_REFUNDS.c.lines).where(_REFUNDS.c.order_id == sa.bindparam("order"))
_REVISION_COLUMNS = (
    _REVISIONS.c.product_ref,
    _REVISIONS.c.seq,
    _REVISIONS.c.rating,
    _REVISIONS.c.title,
    _REVISIONS.c.body,
    _REVISIONS.c.display_name,
    _REVISIONS.c.submitted_at,
)
_FORM_REVISIONS = (
    sa.select(*_REVISION_COLUMNS)
    .where(_REVISIONS.c.order_id == sa.bindparam("order"))
    .order_by(_REVISIONS.c.seq)
)
_HISTORY = (
    sa.select(*_REVISION_COLUMNS)
    .where(_REVISIONS.c.order_id == sa.bindparam("order"), _REVISIONS.c.product_ref == sa.bindparam("ref"))
    .order_by(_REVISIONS.c.seq)
)
_INSERT_REVISION = _REVISIONS.insert()


def _revision(row: sa.Row[Any]) -> Revision:
    return Revision(row.seq, row.rating, row.title, row.body, row.display_name, row.submitted_at)


def _closed_reason(status: str, mailed: bool) -> str | None:
    """Why this form takes no reviews (before its link's expiry), or None. A request we called off
    before its mail went out (the order cancelled or refunded, the customer unsubscribed) was never
    meant to reach anyone; once the mail may have reached the customer, the form is theirs until the
    link expires, whatever happened to the order since."""
    if not outbox.called_off_unmailed(status, mailed):
        return None
    return f"the review request was called off ({status})"


def revisions_of(engine: Engine, order_id: int, product_ref: str) -> list[Revision]:
    """Every revision of one product's review from one order, oldest first (its history)."""
    with autocommit(engine) as conn:
        return [_revision(row) for row in conn.execute(_HISTORY, {"order": order_id, "ref": product_ref})]


def warm(engine: Engine) -> None:
    """Run the form's reads once with ids no row has, so that their SQL is compiled before the first
    customer's (at start, in the web app's warm-up)."""
    with autocommit(engine) as conn:
        conn.execute(_FORM, {"tp": -1}).all()
        for query in (_FORM_LINES, _FORM_REFUNDS, _FORM_REVISIONS):
            conn.execute(query, {"order": -1}).all()
        conn.execute(_HISTORY, {"order": -1, "ref": ""}).all()


def form_state(engine: Engine, link: ReviewFormLink, exclude: Exclusions | None = None) -> FormState | None:
    """The form a verified link names; None when it is not one of ours (the touchpoint is not a
    review request of that order: another order's, or rows a reset database no longer has). At most
    four reads outside a transaction (a page shows them; what is stored is decided by the database's
    unique revision numbers, `submit_review`): on PostgreSQL no BEGIN and no ROLLBACK."""
    with autocommit(engine) as conn:
        row = conn.execute(_FORM, {"tp": link.touchpoint_id}).first()
        if row is None or row.kind not in FORM_KINDS or row.order_id != link.order_id:
            return None
        order_id = row.order_id
        lines = conn.execute(_FORM_LINES, {"order": order_id}).all()
        refunded = (
            {}
            if (row.financial_status or "") in shipping.NOTHING_PAID
            else shipping.refunded_totals(r.lines for r in conn.execute(_FORM_REFUNDS, {"order": order_id}))
        )
        latest: dict[str, Revision] = {}
        first: dict[str, datetime] = {}
        for rev in conn.execute(_FORM_REVISIONS, {"order": order_id}):
            latest[rev.product_ref] = _revision(rev)
            first.setdefault(rev.product_ref, rev.submitted_at)
    items = raw_items_of(row.items) if exclude is not None else {}
    keeps = shipping.keeps(row.financial_status, lines, refunded)
    return FormState(
        link=link,
        order=FormOrder(order_id, row.shopify_id, row.shop_domain, row.name, row.locale),
        touchpoint_id=link.touchpoint_id,
        products=reviewable_products(reviewable_lines(lines, keeps, items, exclude)),  # type: ignore[arg-type]
        latest=latest,
        default_name=default_display_name(row.first_name, row.last_name, row.shipping_address),
        closed_reason=_closed_reason(row.status, bool(row.mailed)),
        first_submitted=first,
    )


def review_key(order_shopify_id: int, product_ref: str) -> str:
    """The review's `review_id` on platform `own`: the same for every revision of one order's review
    of one product (hashed when long, so that its delivery ids fit)."""
    key = f"{order_shopify_id}/{product_ref}"
    if len(key) <= _MAX_KEY:
        return key
    return f"{order_shopify_id}/sha256:{hashlib.sha256(product_ref.encode()).hexdigest()[:40]}"


def review_json(
    order: FormOrder, review: ReviewInput, *, key: str, seq: int, created_at: datetime, language: str
) -> bytes:
    """The documented review JSON (aftercare/reviews/intake.py) for one revision."""
    doc = {
        "platform": PLATFORM,
        "review_id": key,
        "revision": seq,
        "product_ref": review.product_ref,
        "order_ref": str(order.shopify_id),
        "rating": review.rating,
        "title": review.title,
        "body": review.body,
        "author": review.display_name,
        "language": language,
        "created_at": created_at.isoformat(),
        "shop_domain": order.shop_domain,
    }
    return json.dumps({k: v for k, v in doc.items() if v is not None}, ensure_ascii=False).encode()


def _same(row: Revision, review: ReviewInput) -> bool:
    return (
        row.rating == review.rating
        and (row.title or None) == review.title
        and row.body == review.body
        and (row.display_name or "") == review.display_name
    )


@dataclass(frozen=True)
class Submitted:
    revision: Revision
    created: bool  # False: the same review was already the one that counts


class SubmitConflict(AftercareError):
    """Other revisions of the same review kept arriving while this one was stored (not a person)."""


def submit_review(
    engine: Engine, state: FormState, review: ReviewInput, *, now: datetime, attempts: int = 8
) -> Submitted:
    """Store `review` as the newest revision of this order's review of its product, with its inbox
    delivery, unless it already is the newest. Safe against itself: identical posts at once leave
    one revision and one delivery; different ones are all kept, in order, the last one counting.

    The first try goes by the revisions `state` read: a revision stored since takes the number
    this one wants (unique per order and product, and so is the delivery id), so this one reads
    again and either finds its twin or takes the next number. Both rows are written with
    statements built once, in one transaction (on PostgreSQL: BEGIN, two inserts, COMMIT)."""
    order = state.order
    key = review_key(order.shopify_id, review.product_ref)
    language = "en" if (order.locale or "").lower().startswith("en") else "ja"
    latest: Revision | None = state.latest.get(review.product_ref)
    first_at = state.first_submitted.get(review.product_ref, now)
    with engine.connect() as conn:
        for attempt in range(attempts):
            try:
                with conn.begin():
                    if attempt:
                        history = conn.execute(_HISTORY, {"order": order.id, "ref": review.product_ref}).all()
                        latest = _revision(history[-1]) if history else None
                        first_at = history[0].submitted_at if history else now
                    if latest is not None and _same(latest, review):
                        return Submitted(latest, created=False)
                    seq = latest.seq + 1 if latest is not None else 1
                    body = review_json(
                        order, review, key=key, seq=seq, created_at=first_at, language=language
                    )
                    inbox_id = insert_delivery(
                        conn,
                        Delivery(
                            source=intake.SOURCE,
                            delivery_id=f"{PLATFORM}:{key}#r{seq}",
                            event_id=None,
                            topic=intake.TOPIC,
                            shop_domain=order.shop_domain,
                            triggered_at=now,
                            body=body,
                            status=InboxStatus.PENDING,
                            subject_ref=order.name,
                        ),
                    )
                    conn.execute(
                        _INSERT_REVISION,
                        {
                            "order_id": order.id,
                            "touchpoint_id": state.touchpoint_id,
                            "product_ref": review.product_ref,
                            "seq": seq,
                            "review_key": key,
                            "rating": review.rating,
                            "title": review.title,
                            "body": review.body,
                            "display_name": review.display_name,
                            "submitted_at": now,
                            "inbox_id": inbox_id,
                        },
                    )
            except sa.exc.IntegrityError:
                continue  # another submission took this number first (rolled back): read again
            revision = Revision(seq, review.rating, review.title, review.body, review.display_name, now)
            return Submitted(revision, created=True)
    raise SubmitConflict(f"order {order.id}, {review.product_ref!r}: gave up after {attempts} racing posts")
