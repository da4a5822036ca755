"""The unsubscribe link of a non-transactional mail: an opaque token (aftercare.signing, purpose
`unsubscribe`, signed with Settings.link_secret) naming the shop, a hash of the address (never the
address), the list and the touchpoint; and the RFC 8058 headers that carry it.

The token is good for `UNSUBSCRIBE_VALID_DAYS` after the mail was composed: CAN-SPAM asks for an
opt-out that works for at least 30 days, mailbox providers expect the header to keep working; a
year and a month covers a customer who finds an old mail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from aftercare import signing
from aftercare.contact.store import email_hash

PURPOSE = "unsubscribe"
UNSUBSCRIBE_VALID_DAYS = 400


@dataclass(frozen=True)
class UnsubscribeClaims:
    shop_domain: str
    email_hash: str
    list_name: str
    touchpoint_id: int | None
    locale: str | None = None  # the mail's language (ja, en), so the page speaks it


LOCALES = ("ja", "en")


def unsubscribe_token(
    secret: str,
    *,
    shop_domain: str,
    email_key: str,
    list_name: str,
    touchpoint_id: int | None,
    now: datetime,
    locale: str | None = None,
) -> str:
    """The token of one mail's unsubscribe link. `locale`: the mail's language, for the page."""
    claims: dict[str, object] = {
        "s": shop_domain,
        "h": email_hash(email_key),
        "l": list_name,
        "t": touchpoint_id,
    }
    if locale in LOCALES:
        claims["g"] = locale
    return signing.sign(secret, PURPOSE, claims, expires_at=now + timedelta(days=UNSUBSCRIBE_VALID_DAYS))


def read_unsubscribe_token(secret: str, token: str, *, now: datetime) -> UnsubscribeClaims:
    """The claims of an unsubscribe token of ours; signing.TokenInvalid / TokenExpired otherwise."""
    claims = signing.verify(secret, PURPOSE, token, now=now)
    shop, digest, list_name, tp = claims.get("s"), claims.get("h"), claims.get("l"), claims.get("t")
    if not (isinstance(shop, str) and isinstance(digest, str) and isinstance(list_name, str)):
        raise signing.TokenInvalid("the token lacks its claims")
    if tp is not None and (not isinstance(tp, int) or isinstance(tp, bool)):
        raise signing.TokenInvalid("the token lacks its claims")
    locale = claims.get("g")
    return UnsubscribeClaims(shop, digest, list_name, tp, locale if locale in LOCALES else None)


def unsubscribe_url(base_url: str, token: str) -> str:
    """The page behind the link (GET shows a choice, POST unsubscribes: RFC 8058 one-click)."""
    return f"{base_url.rstrip('/')}/unsubscribe/{token}"


def list_unsubscribe_headers(url: str, mailto: str | None) -> dict[str, str]:
    """RFC 8058: exactly one List-Unsubscribe with the HTTPS URL (and a mailto when we have one), and
    List-Unsubscribe-Post saying a POST to that URL is a one-click unsubscribe."""
    targets = [f"<{url}>"]
    if mailto:
        targets.append(f"<mailto:{quote(mailto, safe='@')}?subject=unsubscribe>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
