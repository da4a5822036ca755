"""The link to our own review form (`/r/<token>`), mailed with the review request of one order.

The token (aftercare.signing, purpose `review_form`, Settings.link_secret) names the order and the
review-request touchpoint it was mailed for, and expires `REVIEW_FORM_OPEN_DAYS` after the mail was
composed: until then the customer may write, and change, a review of each product of that order.
It is opaque and carries nothing personal (two database ids and the expiry); a token made for
another purpose (a survey, an unsubscribe, an approval) never verifies here, and a token names
exactly one order: it cannot review another's products."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from aftercare import signing

PURPOSE = "review_form"
# How long the link in a review request (and its reminder) stays good: time for the reminder, and
# for a customer who uses the product a while before writing.
REVIEW_FORM_OPEN_DAYS = 60


@dataclass(frozen=True)
class ReviewFormLink:
    order_id: int
    touchpoint_id: int
    closes_at: datetime  # the token's expiry: the form takes reviews until then


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def review_form_token(link_secret: str, order_id: int, touchpoint_id: int, now: datetime) -> str:
    """The token of one order's review form, good for REVIEW_FORM_OPEN_DAYS from `now`."""
    if not (_is_id(order_id) and _is_id(touchpoint_id)):
        raise ValueError("order_id and touchpoint_id must be database ids")
    claims = {"o": order_id, "t": touchpoint_id}
    return signing.sign(link_secret, PURPOSE, claims, expires_at=now + timedelta(days=REVIEW_FORM_OPEN_DAYS))


def review_form_url(base_url: str, link_secret: str, order_id: int, touchpoint_id: int, now: datetime) -> str:
    """The review form's address for one order, as a review request mails it: `<base>/r/<token>`."""
    return f"{base_url.rstrip('/')}/r/{review_form_token(link_secret, order_id, touchpoint_id, now)}"


def verify_review_form_token(link_secret: str, token: str, *, now: datetime) -> ReviewFormLink:
    """The order and touchpoint a review-form token of ours names, and when it closes;
    signing.TokenInvalid when it is not ours (forged, altered, another purpose's), signing.TokenExpired
    when the form has closed."""
    claims, closes_at = signing.verify_until(link_secret, PURPOSE, token, now=now)
    order_id, touchpoint_id = claims.get("o"), claims.get("t")
    if not (_is_id(order_id) and _is_id(touchpoint_id)):
        raise signing.TokenInvalid("the token lacks its claims")
    assert isinstance(order_id, int) and isinstance(touchpoint_id, int)
    return ReviewFormLink(order_id, touchpoint_id, closes_at)
