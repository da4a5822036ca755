"""The signed link to our own review form (`/r/<token>`), one per order per request mail.

The token (aftercare.signing, purpose `review-form`, Settings.link_secret) names the order and the
touchpoint whose mail carried it (the request, or its reminder) and expires `valid_for` after the
mail was written; nothing personal is in it (ids only: the payload is signed, not encrypted). A
token made for another purpose (a survey, an unsubscribe link, an approval) never verifies here,
and one altered in any character does not either. The page behind it (the review form) is another
module's; it calls `verify_review_form_token` and must still check that the order stands and that
a product posted is one of the order's.

A link per product is the same URL with `?item=<Shopify line item id>`: the page may open that
product first. The item is a hint, not a claim: it is outside the signature, so the page treats it
as untrusted input (an id not in the order is ignored)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from aftercare import signing

PURPOSE = "review-form"
# How long the link in a review request (and its reminder) stays good by default (the policy's
# `form_link_days` sets it): time for the reminder, and for a customer who uses the product a while
# before writing.
REVIEW_FORM_OPEN_DAYS = 60
DEFAULT_VALID_FOR = timedelta(days=REVIEW_FORM_OPEN_DAYS)


@dataclass(frozen=True)
class ReviewFormLink:
    order_id: int
    touchpoint_id: int
    closes_at: datetime  # the token's expiry: the form takes reviews, and changes to them, until then


def review_form_token(
    link_secret: str,
    order_id: int,
    touchpoint_id: int,
    now: datetime,
    *,
    valid_for: timedelta = DEFAULT_VALID_FOR,
) -> str:
    """The token of one mail's review-form link, good for `valid_for` from `now`."""
    for name, value in (("order_id", order_id), ("touchpoint_id", touchpoint_id)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a stored row's id, got {value!r}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return signing.sign(link_secret, PURPOSE, {"o": order_id, "t": touchpoint_id}, expires_at=now + valid_for)


def review_form_url(
    base_url: str,
    link_secret: str,
    order_id: int,
    touchpoint_id: int,
    now: datetime,
    *,
    valid_for: timedelta = DEFAULT_VALID_FOR,
    item: int | None = None,
) -> str:
    """`<base_url>/r/<token>` for this order and mail (and `?item=<line id>` for one product)."""
    token = review_form_token(link_secret, order_id, touchpoint_id, now, valid_for=valid_for)
    url = f"{base_url.rstrip('/')}/r/{token}"
    return url if item is None else f"{url}?item={int(item)}"


def verify_review_form_token(link_secret: str, token: str, *, now: datetime) -> ReviewFormLink:
    """The order and touchpoint a review-form token of ours names, and when it closes.
    `signing.TokenExpired` when it is past its expiry; `signing.TokenInvalid` when it is forged,
    altered, cut, signed with another secret, made for another purpose, or lacks its claims."""
    claims, closes_at = signing.verify_until(link_secret, PURPOSE, token, now=now)
    order_id, touchpoint_id = claims.get("o"), claims.get("t")
    for value in (order_id, touchpoint_id):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise signing.TokenInvalid("the token lacks its claims")
    if set(claims) != {"o", "t"}:
        raise signing.TokenInvalid("the token carries claims a review-form link never has")
    assert isinstance(order_id, int) and isinstance(touchpoint_id, int)
    return ReviewFormLink(order_id=order_id, touchpoint_id=touchpoint_id, closes_at=closes_at)
