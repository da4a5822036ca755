"""Signed tokens for links in mails and pages, through one well-kept library (itsdangerous).

A token carries its claims (a dict of short keys), its purpose (the serializer's salt: a token made
for one purpose never verifies for another) and an expiry (`exp`, seconds since the epoch) that is
checked on the way back against the `now` the caller passes in: time is an input, never read here.
The signature covers everything: a token that was forged, tampered with, cut, or signed with
another secret is `TokenInvalid`; one past its expiry is `TokenExpired`.

The expiry is a claim rather than itsdangerous' signing timestamp (`URLSafeTimedSerializer`), so
that it is checked against the caller's clock, and the same claims always make the same token: a
link made again from its row (for a page, a re-sent mail) is the link that was mailed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from aftercare.errors import AftercareError

# The longest token we read: a real one is ~150 characters; anything far longer is not ours.
MAX_TOKEN_CHARS = 1024


class TokenInvalid(AftercareError):
    """The token was not made by us for this purpose (forged, tampered with, cut short)."""


class TokenExpired(TokenInvalid):
    """The token is authentic but past its expiry."""


def _serializer(secret: str, purpose: str) -> URLSafeSerializer:
    if not secret:
        raise ValueError("a signing secret is required")
    return URLSafeSerializer(secret, salt=f"aftercare.{purpose}")


def sign(secret: str, purpose: str, claims: dict[str, Any], *, expires_at: datetime) -> str:
    """A URL-safe token carrying `claims` for `purpose`, valid until `expires_at`."""
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    if "exp" in claims:
        raise ValueError("'exp' is set from expires_at")
    return str(_serializer(secret, purpose).dumps({**claims, "exp": int(expires_at.timestamp())}))


def verify(secret: str, purpose: str, token: str, *, now: datetime) -> dict[str, Any]:
    """The claims of a token we signed for `purpose` (without `exp`); `TokenInvalid` when it was
    not, `TokenExpired` when `now` is past its expiry."""
    return verify_until(secret, purpose, token, now=now)[0]


def verify_until(secret: str, purpose: str, token: str, *, now: datetime) -> tuple[dict[str, Any], datetime]:
    """`verify`, and the moment the token expires (a page that says "you can change this until")."""
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TokenInvalid("not a token of ours")
    try:
        claims = _serializer(secret, purpose).loads(token)
    except BadSignature as exc:
        raise TokenInvalid("the signature does not match") from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
        raise TokenInvalid("the token carries no expiry")
    exp = claims.pop("exp")
    if now.timestamp() >= exp:
        raise TokenExpired(f"expired at {datetime.fromtimestamp(exp, UTC):%Y-%m-%d %H:%M} UTC")
    return claims, datetime.fromtimestamp(exp, UTC)
