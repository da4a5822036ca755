"""Signed tokens (aftercare/signing.py): claims come back only from a token we signed for the same
purpose with the same secret, before its expiry; the caller's clock decides expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aftercare.signing import TokenExpired, TokenInvalid, sign, verify

SECRET = "a-signing-secret-for-tests"
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
CLAIMS = {"r": 7, "d": 12, "a": "owner@example.com", "n": "nonce-1"}


def test_a_token_gives_its_claims_back_until_it_expires():
    token = sign(SECRET, "approval-link", CLAIMS, expires_at=T0 + timedelta(hours=1))
    assert token.isascii() and "/" not in token and "+" not in token  # fits a URL path segment
    assert verify(SECRET, "approval-link", token, now=T0) == CLAIMS
    assert verify(SECRET, "approval-link", token, now=T0 + timedelta(minutes=59, seconds=59)) == CLAIMS
    with pytest.raises(TokenExpired):
        verify(SECRET, "approval-link", token, now=T0 + timedelta(hours=1))
    # The same claims and expiry always make the same token (a link made again is the mailed one).
    assert sign(SECRET, "approval-link", CLAIMS, expires_at=T0 + timedelta(hours=1)) == token


def test_forged_tampered_and_misused_tokens_are_invalid():
    token = sign(SECRET, "approval-link", CLAIMS, expires_at=T0 + timedelta(hours=1))
    payload, signature = token.rsplit(".", 1)
    swapped = sign(SECRET, "approval-link", {**CLAIMS, "a": "mallory@example.com"}, expires_at=T0)
    bad = {
        "another secret": sign("another-secret", "approval-link", CLAIMS, expires_at=T0 + timedelta(hours=1)),
        "another purpose": sign(SECRET, "approval-form", CLAIMS, expires_at=T0 + timedelta(hours=1)),
        "tampered signature": payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:],
        "claims of one, signature of another": swapped.rsplit(".", 1)[0] + "." + signature,
        "cut short": token[:-4],
        "empty": "",
        "not ascii": token + "é",
        "huge": "a" * 5000,
        "not a token": "hello",
    }
    for name, value in bad.items():
        with pytest.raises(TokenInvalid):
            verify(SECRET, "approval-link", value, now=T0)
            pytest.fail(name)


def test_expiry_is_set_by_the_signer_only():
    with pytest.raises(ValueError, match="exp"):
        sign(SECRET, "approval-link", {"exp": 1}, expires_at=T0)
    with pytest.raises(ValueError, match="timezone"):
        sign(SECRET, "approval-link", CLAIMS, expires_at=datetime(2026, 11, 30, 9, 0))
