"""Review requests: one per order, some days after delivery, listing the order's reviewable products,
in the customer's language, with a link to where the review is written; and one reminder.

Whether and when a request goes out is the contact rules' (aftercare/contact/rules.py, the
`review_request` and `review_reminder` kinds of policies/contact.yaml): consent, the
`review_requests` list, send window, caps, the stale limit, and never for a cancelled, fully refunded
or test order. What is asked, and where, is this module's, under policies/review_requests.yaml:

- Reviewable products: the order's lines the customer still has (a refunded line is left out), that
  are not gift wrap, shipping protection, a gift card or a digital add-on (SKU, title and product
  type patterns; a line that needs no shipping), and that this customer neither reviewed nor was
  asked about within the policy's months (the per-product memory: `review_request_items`, and the
  customer's reviews by SKU or product id). Two lines of one product are asked about once.
- Never to a staff address (the policy's domains and addresses).
- Nothing left to ask about, or a staff address: the composer answers `NotMailed("skipped", why)`
  and the touchpoint is skipped with that reason.
- Where: `own` (a signed link to our form per product, aftercare/reviews/form_links.py), `google`
  (the Business Profile's write-a-review page), `trustpilot` (no mail of ours: one invitation row per
  order, sent by aftercare/reviews/invitations.py; the touchpoint is done).

The reminder is planned when the request is composed (touchpoint `review_reminder` seq 1, due the
policy's days later) and decided again when due, like any timed message (so an unsubscribe in
between cancels it, and the rules judge the order again). Its composer sends it only when the
request was delivered (outbox `sent`), nothing was reviewed for the order since (a review linked to
the order, or the customer's review of an asked product), and products are left to ask about.

Both composers are BatchComposers (aftercare/contact/compose.py): what the dispatcher's batch of
requests (or reminders) needs is read for all of them in a few queries, in its transaction and under
its lock (`prepare_requests`, `prepare_reminders`), and what a request writes (the products it asks
about, its reminder, a Trustpilot invitation) is handed back in its answer and written by the
dispatcher with its verdict, or not at all.

No gating: nothing here reads a survey answer, a review's rating or triage, or a complaint. The
only reviews read are the customer's own, by product and date, whatever they say."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlmodel import Session

from aftercare.contact.compose import (
    BatchComposer,
    ComposeContext,
    Composed,
    Composer,
    NotMailed,
    Prepare,
    Write,
)
from aftercare.models import (
    PRIVATE_REPLY_PLATFORM,
    Order,
    OrderLine,
    OutboxMessage,
    OutboxStatus,
    Review,
    ReviewRequestItem,
    Touchpoint,
    UTCDateTime,
)
from aftercare.orders import shipping
from aftercare.reviews import invitations
from aftercare.reviews.form_links import review_form_url
from aftercare.reviews.request_policy import Exclusions, ReviewRequestPolicy, load_review_request_policy
from aftercare.settings import PROJECT_ROOT

REQUEST = shipping.REVIEW_REQUEST  # "review_request": templates/<lang>/review_request.*
REMINDER = "review_reminder"  # templates/<lang>/review_reminder.*
GOOGLE_WRITE_REVIEW = "https://search.google.com/local/writereview"

_ITEMS: sa.Table = ReviewRequestItem.__table__  # type: ignore[attr-defined]
_TP: sa.Table = Touchpoint.__table__  # type: ignore[attr-defined]
_ORDERS: sa.Table = Order.__table__  # type: ignore[attr-defined]
_OUTBOX: sa.Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_REVIEWS: sa.Table = Review.__table__  # type: ignore[attr-defined]
# A request whose mail never left does not count as having asked (per-product memory).
_NOT_MAILED = (OutboxStatus.FAILED, OutboxStatus.CANCELLED)


@dataclass(frozen=True)
class Product:
    """One product to ask about: the order's line it came on and how we recognise it again."""

    line_id: int
    key: str  # product:<id> | sku:<SKU> | title:<title>
    refs: frozenset[str]  # what a review's product_ref may say for it (SKU, product id, variant id), folded
    title: str
    variant: str | None
    quantity: int


@dataclass
class Selection:
    asked: list[Product] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (title, why)

    def why_none(self) -> str:
        """'no product left to ask about (Gift wrap: SKU 'WRAP-1' matches 'WRAP-*'; ...)'."""
        shown = "; ".join(f"{title}: {why}" for title, why in self.left_out[:5])
        more = f"; and {len(self.left_out) - 5} more" if len(self.left_out) > 5 else ""
        return f"no product left to ask about ({shown}{more})" if shown else "the order has no products"


def _fold(text: Any) -> str:
    return unicodedata.normalize("NFKC", str(text)).casefold().strip() if text not in (None, "") else ""


def raw_items(order: Order) -> dict[int, dict[str, Any]]:
    """Shopify line id -> the order's raw Shopify line item."""
    return raw_items_of((order.raw or {}).get("line_items"))


def raw_items_of(items: object) -> dict[int, dict[str, Any]]:
    """`raw_items` from the raw payload's `line_items` alone (as a query that reads only them gives it)."""
    out: dict[int, dict[str, Any]] = {}
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), int):
                out[item["id"]] = item
    return out


def product_of(line: OrderLine, raw: dict[str, Any]) -> Product:
    """How a line's product is recognised: its Shopify product id, else its SKU, else its title."""
    product_id, variant_id = raw.get("product_id"), raw.get("variant_id")
    if isinstance(product_id, int) and not isinstance(product_id, bool):
        key = f"product:{product_id}"
    elif line.sku:
        key = f"sku:{_fold(line.sku)}"
    else:
        key = f"title:{_fold(line.title)}"
    refs = {_fold(v) for v in (line.sku, product_id, variant_id) if v not in (None, "")}
    return Product(
        line_id=line.shopify_id,
        key=key[:300],
        refs=frozenset(r for r in refs if r),
        title=line.title,
        variant=line.variant_title,
        quantity=line.quantity,
    )


def not_reviewable(line: OrderLine, item: dict[str, Any], exclude: Exclusions) -> str | None:
    """Why a line is no product to review (gift wrap, shipping protection, a gift card: the policy's
    pattern that matched), or None. `item`: the line's raw Shopify line item (`raw_items`). The
    request mail and our review form (aftercare/reviews/own_form.py) ask by this one measure."""
    return exclude.why_excluded(
        sku=line.sku,
        title=line.title,
        product_type=item.get("product_type") if isinstance(item.get("product_type"), str) else None,
        gift_card=item.get("gift_card") is True,
        shipped=line.requires_shipping,
    )


# -- what a batch of requests or reminders reads at once ---------------------------------------------


@dataclass
class Requested:
    """An order's review request, as its reminder looks at it."""

    touchpoint_id: int
    mail_status: str | None  # its outbox row's status; None when it has none
    items: dict[str, datetime] = field(default_factory=dict)  # product key asked about -> when


@dataclass
class Known:
    """What the dispatcher's batch of requests (or of reminders) needs, read for all of them at once
    (their composers' `prepare`), in the batch's transaction."""

    lines: dict[int, list[OrderLine]]  # order id -> its lines, in the order's own order
    keeps: dict[int, dict[int, int]]  # order id -> Shopify line id -> units the customer still has
    # customer id -> (a product ref their review names, folded; when the review was written)
    reviews: dict[int, list[tuple[str, datetime]]]
    # customer id -> (the request's touchpoint id, a product key it asked about), within the memory
    asked: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    invited: set[int] = field(default_factory=set)  # orders with their Trustpilot invitation already
    requests: dict[int, Requested] = field(default_factory=dict)  # order id -> its request (reminders)
    reviewed_orders: set[int] = field(default_factory=set)  # orders with a review (reminders)

    def reviewed_refs(self, customer_id: int | None, since: datetime) -> set[str]:
        """What the customer's reviews written after `since` name as their product."""
        if customer_id is None:
            return set()
        return {ref for ref, at in self.reviews.get(customer_id, ()) if at > since}

    def asked_keys(self, customer_id: int | None, *, besides: int | None) -> set[str]:
        """The products this customer was asked about by another request than `besides` (a request
        whose mail failed or was cancelled did not ask)."""
        if customer_id is None:
            return set()
        return {key for tp, key in self.asked.get(customer_id, ()) if tp != besides}

    def asked_now(self, order: Order, touchpoint_id: int, products: list[Product]) -> None:
        """A request of this batch asks about these products: the customer's next request in the
        batch knows it (its rows are written at the batch's end)."""
        if order.customer_id is not None:
            self.asked.setdefault(order.customer_id, []).extend((touchpoint_id, p.key) for p in products)


def _orders_of(touchpoints: Sequence[Touchpoint], orders: Mapping[int, Order]) -> list[Order]:
    return list({t.order_id: orders[t.order_id] for t in touchpoints}.values())


def _customers(orders: list[Order]) -> list[int]:
    return sorted({o.customer_id for o in orders if o.customer_id is not None})


def _reviews_of(
    session: Session, customer_ids: list[int], since: datetime
) -> dict[int, list[tuple[str, datetime]]]:
    """What these customers' reviews since `since` name as their product (folded), whatever they
    say; not the private row of a recovery case's apology."""
    out: dict[int, list[tuple[str, datetime]]] = {}
    if not customer_ids:
        return out
    rows = session.execute(
        sa.select(_REVIEWS.c.customer_id, _REVIEWS.c.product_ref, _REVIEWS.c.source_created_at).where(
            _REVIEWS.c.customer_id.in_(customer_ids),
            _REVIEWS.c.platform != PRIVATE_REPLY_PLATFORM,
            _REVIEWS.c.source_created_at > since,
            _REVIEWS.c.product_ref.is_not(None),
        )
    )
    for customer_id, ref, at in rows:
        if _fold(ref):
            out.setdefault(customer_id, []).append((_fold(ref), at))
    return out


def _asked_of(session: Session, customer_ids: list[int], since: datetime) -> dict[int, list[tuple[int, str]]]:
    """The products these customers were asked about since `since`, with the request that asked (a
    request whose mail failed or was cancelled did not ask)."""
    out: dict[int, list[tuple[int, str]]] = {}
    if not customer_ids:
        return out
    failed = sa.exists().where(
        _OUTBOX.c.touchpoint_id == _ITEMS.c.touchpoint_id,
        _OUTBOX.c.status.in_([s.value for s in _NOT_MAILED]),
    )
    rows = session.execute(
        sa.select(_ORDERS.c.customer_id, _ITEMS.c.touchpoint_id, _ITEMS.c.product_key)
        .select_from(_ITEMS.join(_ORDERS, _ORDERS.c.id == _ITEMS.c.order_id))
        .where(_ORDERS.c.customer_id.in_(customer_ids), _ITEMS.c.asked_at > since, ~failed)
    )
    for customer_id, touchpoint_id, key in rows:
        out.setdefault(customer_id, []).append((touchpoint_id, key))
    return out


def prepare_requests(policy: ReviewRequestPolicy) -> Prepare:
    """The requests composer's `prepare`: the orders' lines and refunds, and their customers'
    reviews and products asked about within the policy's memory: five queries for the batch."""

    def prepare(
        session: Session, touchpoints: Sequence[Touchpoint], orders: Mapping[int, Order], now: datetime
    ) -> Known:
        mine = _orders_of(touchpoints, orders)
        ids = [o.id for o in mine if o.id is not None]
        since = now - timedelta(days=policy.memory_days)
        customers = _customers(mine)
        lines = shipping.lines_of(session, ids)
        return Known(
            lines=lines,
            keeps=shipping.shippable_quantities_of(session, mine, lines),
            reviews=_reviews_of(session, customers, since),
            asked=_asked_of(session, customers, since),
            invited=invitations.invited(session, ids) if policy.destination == "trustpilot" else set(),
        )

    return prepare


def prepare_reminders(policy: ReviewRequestPolicy) -> Prepare:
    """The reminders composer's `prepare`: each order's request with its mail's status and the
    products it asked about, the orders reviewed since, their lines and refunds, and their customers'
    reviews since the earliest request: six queries for the batch."""

    def prepare(
        session: Session, touchpoints: Sequence[Touchpoint], orders: Mapping[int, Order], now: datetime
    ) -> Known:
        if not policy.mails():
            return Known(lines={}, keeps={}, reviews={})  # nothing to read: no reminder is mailed
        mine = _orders_of(touchpoints, orders)
        ids = [o.id for o in mine if o.id is not None]
        requests: dict[int, Requested] = {}
        for order_id, touchpoint_id, status in session.execute(
            sa.select(_TP.c.order_id, _TP.c.id, _OUTBOX.c.status)
            .select_from(_TP.outerjoin(_OUTBOX, _OUTBOX.c.touchpoint_id == _TP.c.id))
            .where(_TP.c.order_id.in_(ids), _TP.c.kind == REQUEST, _TP.c.seq == 1)
        ):
            requests[order_id] = Requested(touchpoint_id, status)
        by_touchpoint = {r.touchpoint_id: r for r in requests.values()}
        if by_touchpoint:
            for touchpoint_id, key, at in session.execute(
                sa.select(_ITEMS.c.touchpoint_id, _ITEMS.c.product_key, _ITEMS.c.asked_at).where(
                    _ITEMS.c.touchpoint_id.in_(sorted(by_touchpoint))
                )
            ):
                by_touchpoint[touchpoint_id].items[key] = at
        # A review of the order, on any platform; not the private row of a recovery case's apology (a
        # low survey score must not stop the reminder: no gating, tests/reviews/test_no_gating.py).
        reviewed_orders = set(
            session.execute(
                sa.select(_REVIEWS.c.order_id)
                .where(_REVIEWS.c.order_id.in_(ids), _REVIEWS.c.platform != PRIVATE_REPLY_PLATFORM)
                .distinct()
            ).scalars()
        )
        lines = shipping.lines_of(session, ids)
        first_asked = min((at for r in requests.values() for at in r.items.values()), default=None)
        return Known(
            lines=lines,
            keeps=shipping.shippable_quantities_of(session, mine, lines),
            reviews={} if first_asked is None else _reviews_of(session, _customers(mine), first_asked),
            requests=requests,
            reviewed_orders=reviewed_orders,
        )

    return prepare


# -- composing ------------------------------------------------------------------------------------------


def select_products(
    known: Known, order: Order, policy: ReviewRequestPolicy, now: datetime, *, touchpoint_id: int | None
) -> Selection:
    """The order's products to ask this customer about now, and why each other line is left out."""
    assert order.id is not None
    lines = known.lines.get(order.id, [])
    raw = raw_items(order)
    keeps = known.keeps.get(order.id, {})
    since = now - timedelta(days=policy.memory_days)
    reviewed = known.reviewed_refs(order.customer_id, since)
    asked = known.asked_keys(order.customer_id, besides=touchpoint_id)
    out = Selection()
    seen: set[str] = set()
    for line in lines:
        item = raw.get(line.shopify_id, {})
        product = product_of(line, item)
        if line.quantity > 0 and keeps.get(line.shopify_id, 0) == 0:
            out.left_out.append((line.title, "refunded"))
            continue
        excluded = not_reviewable(line, item, policy.exclude)
        if excluded:
            out.left_out.append((line.title, f"not reviewable ({excluded})"))
            continue
        if product.key in seen:
            continue  # another variant of a product already listed
        if product.refs & reviewed:
            out.left_out.append((line.title, f"reviewed within {policy.product_memory_months} months"))
            continue
        if product.key in asked:
            out.left_out.append((line.title, f"asked about within {policy.product_memory_months} months"))
            continue
        seen.add(product.key)
        out.asked.append(product)
    return out


# What a request asks about (once per product per request): the per-product memory and what the
# reminder lists. SQL text: one cached statement for the batch's rows.
_REMEMBER = sa.text(
    "INSERT INTO review_request_items (touchpoint_id, order_id, line_id, product_key, asked_at) "
    "VALUES (:touchpoint_id, :order_id, :line_id, :product_key, :asked_at) ON CONFLICT DO NOTHING"
).bindparams(sa.bindparam("asked_at", type_=UTCDateTime()))


def remembered(touchpoint: Touchpoint, products: list[Product], now: datetime) -> list[Write]:
    """The rows recording what this request asks about, written with it."""
    return [
        Write(
            _REMEMBER,
            {
                "touchpoint_id": touchpoint.id,
                "order_id": touchpoint.order_id,
                "line_id": p.line_id,
                "product_key": p.key,
                "asked_at": now,
            },
        )
        for p in products
    ]


def google_url(place_id: str) -> str:
    return f"{GOOGLE_WRITE_REVIEW}?{urlencode({'placeid': place_id})}"


def _mail_context(
    ctx: ComposeContext, policy: ReviewRequestPolicy, products: list[Product], *, reminder: bool
) -> dict[str, Any]:
    order, touchpoint = ctx.order, ctx.touchpoint
    assert order.id is not None and touchpoint.id is not None
    valid_for = timedelta(days=policy.form_link_valid_days)
    shown = products[: policy.max_products_listed]
    if policy.destination == "google":
        order_url = google_url(policy.google.place_id)
        listed = [{"title": p.title, "variant": p.variant, "url": None} for p in shown]
        closes_on = None
    else:
        order_url = review_form_url(
            ctx.base_url, ctx.link_secret, order.id, touchpoint.id, ctx.now, valid_for=valid_for
        )
        listed = [
            {
                "title": p.title,
                "variant": p.variant,
                "url": review_form_url(
                    ctx.base_url,
                    ctx.link_secret,
                    order.id,
                    touchpoint.id,
                    ctx.now,
                    valid_for=valid_for,
                    item=p.line_id,
                ),
            }
            for p in shown
        ]
        # The last whole day shown: the links work until the same time of the next day (UTC).
        closes_on = (ctx.now + valid_for - timedelta(days=1)).date()
    return {
        "shop_name": ctx.shop.get("name") or "",
        "customer_name": ctx.recipient.name,
        "order_name": order.name,
        "products": listed,
        "more_products": max(0, len(products) - len(shown)),
        "destination": policy.destination,
        "order_url": order_url,
        "closes_on": closes_on,
        "reminder": reminder,
        "is_test": order.is_test,
        **ctx.footer_vars(),
    }


def _render(ctx: ComposeContext, template: str, context: dict[str, Any]) -> Composed:
    rendered = ctx.renderer.render_email(template, ctx.recipient.locale, context)
    return Composed(subject=rendered.subject, text_body=rendered.text, html_body=rendered.html)


def compose_request(ctx: ComposeContext, policy: ReviewRequestPolicy) -> Composed | NotMailed:
    """The review request of `ctx.touchpoint` (see the module docstring), from what `prepare_requests`
    read for the batch (`ctx.prepared`). Its rows (the products asked about, the reminder planned, a
    Trustpilot invitation) are in its answer's writes."""
    order, touchpoint = ctx.order, ctx.touchpoint
    if touchpoint.id is None or order.id is None:
        raise ValueError("the request's touchpoint and order must be stored before it is composed")
    known: Known = ctx.prepared
    if policy.staff.is_staff(ctx.recipient.email):
        return NotMailed("skipped", "a staff address (policies/review_requests.yaml staff)")
    selection = select_products(known, order, policy, ctx.now, touchpoint_id=touchpoint.id)
    if not selection.asked:
        return NotMailed("skipped", selection.why_none())
    writes = remembered(touchpoint, selection.asked, ctx.now)

    def kept() -> None:
        known.asked_now(order, touchpoint.id, selection.asked)

    if policy.destination == "trustpilot":
        already = order.id in known.invited
        row = invitations.pending_row(
            order_id=order.id,
            touchpoint_id=touchpoint.id,
            locale=ctx.recipient.locale,
            send_at=ctx.now,
            policy_version=policy.version,
        )

        def invited() -> None:
            kept()
            known.invited.add(order.id)

        what = "already handed to Trustpilot" if already else "handed to Trustpilot"
        return NotMailed(
            "done",
            f"{what}: invitation for order {order.name} (Trustpilot mails it)",
            writes=(*writes, Write(invitations.INSERT_PENDING, row)),
            kept=invited,
        )
    if policy.reminder.enabled:
        planned = shipping.planned_row(
            order_id=order.id,
            kind=REMINDER,
            seq=1,
            due_at=ctx.now + timedelta(days=policy.reminder.days_after_request),
            policy_version=policy.version,
        )
        writes.append(Write(shipping.ENSURE_PLANNED, planned))
    composed = _render(ctx, REQUEST, _mail_context(ctx, policy, selection.asked, reminder=False))
    return replace(composed, writes=tuple(writes), kept=kept)


def compose_reminder(ctx: ComposeContext, policy: ReviewRequestPolicy) -> Composed | NotMailed:
    """The one reminder: the request's products not reviewed since, when the request was delivered
    and nothing was reviewed for the order; from what `prepare_reminders` read for the batch."""
    order = ctx.order
    if ctx.touchpoint.id is None or order.id is None:
        raise ValueError("the reminder's touchpoint and order must be stored before it is composed")
    if not policy.mails():
        return NotMailed(
            "skipped", f"review requests now go to {policy.destination}, which reminds on its own"
        )
    if policy.staff.is_staff(ctx.recipient.email):
        return NotMailed("skipped", "a staff address (policies/review_requests.yaml staff)")
    known: Known = ctx.prepared
    request = known.requests.get(order.id)
    if request is None or request.mail_status != OutboxStatus.SENT:
        state = request.mail_status if request is not None and request.mail_status else "never written"
        return NotMailed("skipped", f"the review request was not delivered (its mail: {state})")
    if order.id in known.reviewed_orders:
        return NotMailed("skipped", "a review was written for this order")
    asked = request.items
    if not asked:
        return NotMailed("skipped", "the review request asked about no product")
    raw = raw_items(order)
    keeps = known.keeps.get(order.id, {})
    reviewed = known.reviewed_refs(order.customer_id, min(asked.values()))
    products: list[Product] = []
    for line in known.lines.get(order.id, []):
        product = product_of(line, raw.get(line.shopify_id, {}))
        if product.key not in asked or product.key in {p.key for p in products}:
            continue
        if line.quantity > 0 and keeps.get(line.shopify_id, 0) == 0:
            continue  # refunded since the request
        if product.refs & reviewed:
            return NotMailed("skipped", f"{line.title} was reviewed after the request")
        products.append(product)
    if not products:
        return NotMailed("skipped", "no product of the request is left to ask about (refunded since)")
    return _render(ctx, REMINDER, _mail_context(ctx, policy, products, reminder=True))


def request_composers(policy: ReviewRequestPolicy) -> dict[str, Composer]:
    """The composers of `review_request` and `review_reminder` under `policy` (BatchComposers: each
    reads for the dispatcher's whole batch at once)."""

    def request(ctx: ComposeContext) -> Composed | NotMailed:
        return compose_request(ctx, policy)

    def reminder(ctx: ComposeContext) -> Composed | NotMailed:
        return compose_reminder(ctx, policy)

    return {
        REQUEST: BatchComposer(prepare=prepare_requests(policy), compose=request),
        REMINDER: BatchComposer(prepare=prepare_reminders(policy), compose=reminder),
    }


@cache
def _shipped() -> dict[str, Composer]:
    return request_composers(load_review_request_policy(PROJECT_ROOT / "policies"))


def shipped_composers() -> dict[str, Composer]:
    """The composers under the shipped policies/review_requests.yaml."""
    return dict(_shipped())


def policy_for(policies_dir: Path) -> ReviewRequestPolicy:
    return load_review_request_policy(policies_dir)
