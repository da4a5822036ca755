"""The review form's signed link (aftercare/reviews/form_links.py): opaque, expiring, one order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aftercare import signing
from aftercare.contact.links import unsubscribe_token
from aftercare.reviews.form_links import (
    REVIEW_FORM_OPEN_DAYS,
    review_form_token,
    review_form_url,
    verify_review_form_token,
)

SECRET = "form-link-secret-0123456789abcdef"
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def test_the_url_names_the_order_and_touchpoint_and_closes_after_the_open_days():
    url = review_form_url("https://shop.example/", SECRET, 41, 7, NOW)
    assert url.startswith("https://shop.example/r/") and "//r" not in url
    token = url.rsplit("/", 1)[1]
    link = verify_review_form_token(SECRET, token, now=NOW + timedelta(days=REVIEW_FORM_OPEN_DAYS - 1))
    assert (link.order_id, link.touchpoint_id) == (41, 7)
    assert link.closes_at == NOW + timedelta(days=REVIEW_FORM_OPEN_DAYS)
    # The same inputs make the same link (a reminder mails the link the request mailed).
    assert review_form_url("https://shop.example", SECRET, 41, 7, NOW) == url


def test_nothing_personal_is_readable_in_the_token():
    token = review_form_token(SECRET, 41, 7, NOW)
    assert "@" not in token and "#" not in token and len(token) < 200


def test_expired_forged_altered_and_foreign_tokens_are_refused():
    token = review_form_token(SECRET, 41, 7, NOW)
    with pytest.raises(signing.TokenExpired):
        verify_review_form_token(SECRET, token, now=NOW + timedelta(days=REVIEW_FORM_OPEN_DAYS))
    with pytest.raises(signing.TokenInvalid):
        verify_review_form_token("another-secret-0123456789abcdef", token, now=NOW)
    with pytest.raises(signing.TokenInvalid):
        verify_review_form_token(SECRET, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), now=NOW)
    other = unsubscribe_token(
        SECRET, shop_domain="s", email_key="a@b.c", list_name="review_requests", touchpoint_id=7, now=NOW
    )
    with pytest.raises(signing.TokenInvalid):
        verify_review_form_token(SECRET, other, now=NOW)
    # Signed by us for this purpose but without the claims (bool is not an id).
    bad = signing.sign(SECRET, "review_form", {"o": True, "t": 7}, expires_at=NOW + timedelta(days=1))
    with pytest.raises(signing.TokenInvalid):
        verify_review_form_token(SECRET, bad, now=NOW)


def test_ids_must_be_database_ids():
    with pytest.raises(ValueError):
        review_form_token(SECRET, 0, 7, NOW)
