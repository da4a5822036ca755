"""The signed link to our review form (aftercare/reviews/form_links.py), attacked: forged, altered in
any character, cut, expired, made for another purpose, signed with another secret, stuffed with
claims of another shape. Each is refused with a named error; only ours comes back as (order, mail)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer

from aftercare import signing
from aftercare.contact.links import unsubscribe_token
from aftercare.reviews.form_links import (
    PURPOSE,
    ReviewFormLink,
    review_form_token,
    review_form_url,
    verify_review_form_token,
)
from aftercare.surveys.answers import survey_token

SECRET = "link-secret-for-tests-0123456789"
NOW = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)


def token_in(url: str) -> str:
    return url.split("/r/", 1)[1].split("?", 1)[0]


def claims_of(token: str) -> dict:
    payload = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_a_link_names_its_order_and_mail_and_nothing_else():
    url = review_form_url("https://shop.example/", SECRET, 41, 977, NOW)
    assert url.startswith("https://shop.example/r/") and "?" not in url
    token = token_in(url)
    assert claims_of(token) == {"o": 41, "t": 977, "exp": int((NOW + timedelta(days=60)).timestamp())}
    closes = datetime.fromtimestamp(int((NOW + timedelta(days=60)).timestamp()), UTC)
    assert verify_review_form_token(SECRET, token, now=NOW) == ReviewFormLink(
        order_id=41, touchpoint_id=977, closes_at=closes
    )
    # Made again from the same row at the same moment: the same link (a re-sent mail is the same mail).
    assert review_form_url("https://shop.example", SECRET, 41, 977, NOW) == url


def test_a_product_link_carries_the_item_outside_the_signature():
    url = review_form_url("https://shop.example", SECRET, 41, 977, NOW, item=9100021)
    assert url.endswith("?item=9100021")
    assert verify_review_form_token(SECRET, token_in(url), now=NOW).order_id == 41


def test_it_expires_when_the_policy_says():
    token = review_form_token(SECRET, 41, 977, NOW, valid_for=timedelta(days=3))
    verify_review_form_token(SECRET, token, now=NOW + timedelta(days=3) - timedelta(seconds=1))
    with pytest.raises(signing.TokenExpired, match="expired at 2026-12-06 01:00 UTC"):
        verify_review_form_token(SECRET, token, now=NOW + timedelta(days=3))


def test_another_secret_or_a_forged_signature_is_refused():
    token = review_form_token("another-installation-secret-000", 41, 977, NOW)
    with pytest.raises(signing.TokenInvalid, match="signature does not match"):
        verify_review_form_token(SECRET, token, now=NOW)
    payload = token.split(".")[0]
    with pytest.raises(signing.TokenInvalid):
        verify_review_form_token(SECRET, payload + ".AAAAAAAAAAAAAAAAAAAAAAAAAAA", now=NOW)


def test_another_order_cannot_be_written_into_a_token():
    token = review_form_token(SECRET, 41, 977, NOW)
    payload, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"o": 42, "t": 977, "exp": 1_900_000_000}).encode())
    with pytest.raises(signing.TokenInvalid):
        verify_review_form_token(SECRET, forged.decode().rstrip("=") + "." + signature, now=NOW)


@given(st.data())
def test_any_single_character_changed_is_refused(data):
    token = review_form_token(SECRET, 41, 977, NOW)
    at = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    new = data.draw(st.sampled_from([c for c in alphabet if c != token[at]]))
    altered = token[:at] + new + token[at + 1 :]
    try:
        link = verify_review_form_token(SECRET, altered, now=NOW)
    except signing.TokenInvalid:
        return
    # base64 ignores the low bits of a last character: a change there can decode to the same bytes.
    assert (link.order_id, link.touchpoint_id) == (41, 977)


@pytest.mark.parametrize(
    "token",
    ["", "x", "a" * 2000, "ünïcode.tøken", "../../etc/passwd", "eyJvIjoxfQ", " " + "a" * 20],
)
def test_garbage_is_refused_as_not_ours(token):
    with pytest.raises(signing.TokenInvalid):
        verify_review_form_token(SECRET, token, now=NOW)


def test_tokens_made_for_other_links_never_open_the_form():
    survey = survey_token(
        SECRET, touchpoint_id=977, order_id=41, scale="csat5", closes_at=NOW + timedelta(days=9)
    )
    unsubscribe = unsubscribe_token(
        SECRET,
        shop_domain="s.myshopify.com",
        email_key="a@b.jp",
        list_name="review_requests",
        touchpoint_id=977,
        now=NOW,
    )
    for other in (survey, unsubscribe):
        with pytest.raises(signing.TokenInvalid, match="signature does not match"):
            verify_review_form_token(SECRET, other, now=NOW)


@pytest.mark.parametrize(
    "claims",
    [
        {"o": 41},
        {"t": 977},
        {"o": "41", "t": 977},
        {"o": 41, "t": True},
        {"o": 0, "t": 977},
        {"o": -3, "t": 977},
        {"o": 41, "t": 977, "e": "hanako@example.jp"},
    ],
)
def test_a_token_of_ours_with_claims_of_another_shape_is_refused(claims):
    # Signed with our secret and purpose (as a bug elsewhere might): still not a review-form link.
    token = URLSafeSerializer(SECRET, salt=f"aftercare.{PURPOSE}").dumps({**claims, "exp": 1_900_000_000})
    with pytest.raises(signing.TokenInvalid, match="claims"):
        verify_review_form_token(SECRET, token, now=NOW)


@pytest.mark.parametrize(("order_id", "touchpoint_id"), [(0, 1), (1, 0), (None, 1), (True, 1), ("1", 1)])
def test_a_link_is_only_made_for_stored_rows(order_id, touchpoint_id):
    with pytest.raises(ValueError, match="stored row"):
        review_form_token(SECRET, order_id, touchpoint_id, NOW)


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        review_form_token(SECRET, 1, 1, datetime(2026, 12, 3, 10, 0))
