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

No gating: nothing here reads a survey answer, a review's rating or triage, or a complaint. The
only reviews read are the customer's own, by product and date, whatever they say."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from aftercare.contact.compose import ComposeContext, Composed, Composer, NotMailed
from aftercare.models import (
    PRIVATE_REPLY_PLATFORM,
    Order,
    OrderLine,
    OutboxMessage,
    OutboxStatus,
    Review,
    ReviewRequestItem,
    Touchpoint,
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
    items = (order.raw or {}).get("line_items")
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


def _lines(session: Session, order: Order) -> list[OrderLine]:
    return list(
        session.exec(
            select(OrderLine).where(OrderLine.order_id == order.id).order_by(OrderLine.position, OrderLine.id)  # type: ignore[arg-type]
        )
    )


def reviewed_refs(session: Session, customer_id: int, since: datetime) -> set[str]:
    """What the customer's reviews since `since` name as their product (folded), whatever they say."""
    rows = session.execute(
        sa.select(_REVIEWS.c.product_ref).where(
            _REVIEWS.c.customer_id == customer_id,
            _REVIEWS.c.platform != PRIVATE_REPLY_PLATFORM,  # a recovery case's apology is no review
            _REVIEWS.c.source_created_at > since,
            _REVIEWS.c.product_ref.is_not(None),
        )
    )
    return {_fold(ref) for (ref,) in rows if _fold(ref)}


def asked_keys(session: Session, customer_id: int, since: datetime, *, besides: int | None) -> set[str]:
    """The products this customer was asked about since `since` by another request than `besides`
    (a request whose mail failed or was cancelled did not ask)."""
    failed = sa.exists().where(
        _OUTBOX.c.touchpoint_id == _ITEMS.c.touchpoint_id,
        _OUTBOX.c.status.in_([s.value for s in _NOT_MAILED]),
    )
    query = (
        sa.select(_ITEMS.c.product_key)
        .select_from(_ITEMS.join(_ORDERS, _ORDERS.c.id == _ITEMS.c.order_id))
        .where(_ORDERS.c.customer_id == customer_id, _ITEMS.c.asked_at > since, ~failed)
    )
    if besides is not None:
        query = query.where(_ITEMS.c.touchpoint_id != besides)
    return set(session.execute(query).scalars())


def select_products(
    session: Session, order: Order, policy: ReviewRequestPolicy, now: datetime, *, touchpoint_id: int | None
) -> Selection:
    """The order's products to ask this customer about now, and why each other line is left out."""
    lines = _lines(session, order)
    raw = raw_items(order)
    keeps = shipping.shippable_quantities(session, order, lines)
    since = now - timedelta(days=policy.memory_days)
    customer_id = order.customer_id
    reviewed = reviewed_refs(session, customer_id, since) if customer_id is not None else set()
    asked = (
        asked_keys(session, customer_id, since, besides=touchpoint_id) if customer_id is not None else set()
    )
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


def remember(session: Session, touchpoint: Touchpoint, products: list[Product], now: datetime) -> None:
    """Record what this request asks about (once per product per request)."""
    if not products:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    rows = [
        {
            "touchpoint_id": touchpoint.id,
            "order_id": touchpoint.order_id,
            "line_id": p.line_id,
            "product_key": p.key,
            "asked_at": now,
        }
        for p in products
    ]
    session.execute(insert(ReviewRequestItem).values(rows).on_conflict_do_nothing())


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
    """The review request of `ctx.touchpoint` (see the module docstring)."""
    order, touchpoint = ctx.order, ctx.touchpoint
    if touchpoint.id is None or order.id is None:
        raise ValueError("the request's touchpoint and order must be stored before it is composed")
    if policy.staff.is_staff(ctx.recipient.email):
        return NotMailed("skipped", "a staff address (policies/review_requests.yaml staff)")
    selection = select_products(ctx.session, order, policy, ctx.now, touchpoint_id=touchpoint.id)
    if not selection.asked:
        return NotMailed("skipped", selection.why_none())
    remember(ctx.session, touchpoint, selection.asked, ctx.now)
    if policy.destination == "trustpilot":
        invitation_id, created = invitations.create(
            ctx.session,
            order=order,
            touchpoint=touchpoint,
            locale=ctx.recipient.locale,
            send_at=ctx.now,
            policy_version=policy.version,
        )
        what = "handed to Trustpilot" if created else "already handed to Trustpilot"
        return NotMailed("done", f"{what}: invitation {invitation_id} (Trustpilot mails it)")
    if policy.reminder.enabled:
        shipping.ensure_touchpoint(
            ctx.session,
            order=order,
            kind=REMINDER,
            seq=1,
            due_at=ctx.now + timedelta(days=policy.reminder.days_after_request),
            policy_version=policy.version,
        )
    return _render(ctx, REQUEST, _mail_context(ctx, policy, selection.asked, reminder=False))


def compose_reminder(ctx: ComposeContext, policy: ReviewRequestPolicy) -> Composed | NotMailed:
    """The one reminder: the request's products not reviewed since, when the request was delivered
    and nothing was reviewed for the order."""
    session, order = ctx.session, ctx.order
    if ctx.touchpoint.id is None or order.id is None:
        raise ValueError("the reminder's touchpoint and order must be stored before it is composed")
    if not policy.mails():
        return NotMailed(
            "skipped", f"review requests now go to {policy.destination}, which reminds on its own"
        )
    if policy.staff.is_staff(ctx.recipient.email):
        return NotMailed("skipped", "a staff address (policies/review_requests.yaml staff)")
    request = session.exec(
        select(Touchpoint).where(
            Touchpoint.order_id == order.id, Touchpoint.kind == REQUEST, Touchpoint.seq == 1
        )
    ).first()
    mailed = (
        session.execute(
            sa.select(_OUTBOX.c.status, _OUTBOX.c.sent_at).where(_OUTBOX.c.touchpoint_id == request.id)
        ).first()
        if request is not None and request.id is not None
        else None
    )
    if request is None or mailed is None or mailed.status != OutboxStatus.SENT:
        state = mailed.status if mailed is not None else "never written"
        return NotMailed("skipped", f"the review request was not delivered (its mail: {state})")
    assert request.id is not None
    # A review of the order, on any platform; not the private row of a recovery case's apology (a
    # low survey score must not stop the reminder: no gating, tests/reviews/test_no_gating.py).
    written = sa.select(_REVIEWS.c.id).where(
        _REVIEWS.c.order_id == order.id, _REVIEWS.c.platform != PRIVATE_REPLY_PLATFORM
    )
    if session.execute(written.limit(1)).first():
        return NotMailed("skipped", "a review was written for this order")
    asked = {
        row.product_key: row
        for row in session.exec(
            select(ReviewRequestItem).where(ReviewRequestItem.touchpoint_id == request.id)
        )
    }
    if not asked:
        return NotMailed("skipped", "the review request asked about no product")
    lines = _lines(session, order)
    raw = raw_items(order)
    keeps = shipping.shippable_quantities(session, order, lines)
    since = min(row.asked_at for row in asked.values())
    reviewed = reviewed_refs(session, order.customer_id, since) if order.customer_id is not None else set()
    products: list[Product] = []
    for line in lines:
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
    """The composers of `review_request` and `review_reminder` under `policy`."""

    def request(ctx: ComposeContext) -> Composed | NotMailed:
        return compose_request(ctx, policy)

    def reminder(ctx: ComposeContext) -> Composed | NotMailed:
        return compose_reminder(ctx, policy)

    return {REQUEST: request, REMINDER: reminder}


@cache
def _shipped() -> dict[str, Composer]:
    return request_composers(load_review_request_policy(PROJECT_ROOT / "policies"))


def shipped_composers() -> dict[str, Composer]:
    """The composers under the shipped policies/review_requests.yaml."""
    return dict(_shipped())


def policy_for(policies_dir: Path) -> ReviewRequestPolicy:
    return load_review_request_policy(policies_dir)
