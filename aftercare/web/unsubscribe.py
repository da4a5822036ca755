"""The unsubscribe link of a feedback or promotional mail (RFC 8058 one-click, and a page for people).

`POST /unsubscribe/<token>` unsubscribes at once: what a mailbox provider sends when the reader
presses its "Unsubscribe" button (`List-Unsubscribe=One-Click`, urlencoded or multipart, no cookies),
and what our own page's form sends. No cookie, login, CSRF token or confirmation is asked for: the
signed token alone says who and which list (RFC 8058 section 3.2). The answer is 200 with a page
saying what was done, never a redirect. The address leaves the token's list ("this kind"), or, when
our page's form chose it (`scope=class`), every mail of that list's class ("all feedback mails").
Any other body (the one-click body, a junk body, an empty one, a multipart one) means the token's
list. Stored through `contact.store.suppress`, which cancels the customer's planned touchpoints on
that list with the reason; a second POST, or two at once, changes nothing more and answers 200.

`GET /unsubscribe/<token>` only shows the choice (link scanners and mail previews fetch links): it
reads nothing and writes nothing in the database.

A token that is not ours for this purpose (forged, altered, cut, expired, an approval link's token)
gets one and the same 404 page, whatever is wrong with it, and changes nothing. The token carries a
hash of the address, never the address: the pages cannot show it, they say which list and which shop.
Pages are in the mail's language (a claim of the token), else the browser's (Accept-Language)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from aftercare import signing
from aftercare.contact import links, store
from aftercare.contact.policy import ContactPolicy, load_contact_policy
from aftercare.contact.rules import EVERY_LIST
from aftercare.contact.sender import load_shop_policy
from aftercare.models import Customer, Order, Touchpoint, utcnow
from aftercare.rendering import Renderer
from aftercare.settings import Settings
from aftercare.web.bodies import BodyTooLarge, read_limited

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# No script, no frame, no referrer (the token is in the URL), forms only to ourselves, never cached.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}
SOURCE_ONE_CLICK = "list-unsubscribe post"
SOURCE_PAGE = "unsubscribe page"
# A SQLite write that lost a race for the write lock ("database is locked" at once, not after the
# busy timeout, when a read transaction must be upgraded): the whole unit is tried again.
WRITE_TRIES = 4

# What each list is called on the pages. A list the policy knows but this table does not is shown
# by its name (say, a list added in policies/contact.yaml before its words are added here).
LIST_NAMES: dict[str, dict[str, str]] = {
    "surveys": {"ja": "アンケートのご案内", "en": "survey emails"},
    "review_requests": {"ja": "レビューのお願い", "en": "review requests"},
    "offers": {"ja": "お得なお知らせ", "en": "offers"},
    "feedback": {
        "ja": "ご感想をお伺いするメールすべて（アンケート・レビューのお願い）",
        "en": "all feedback emails (surveys and review requests)",
    },
    "promotional": {"ja": "お知らせ・ご案内のメールすべて", "en": "all promotional emails"},
    EVERY_LIST: {
        "ja": "ご注文に関するご連絡以外のメールすべて",
        "en": "all emails except those about your orders",
    },
}


_TP: sa.Table = Touchpoint.__table__  # type: ignore[attr-defined]
_ORDERS: sa.Table = Order.__table__  # type: ignore[attr-defined]
_CUSTOMERS: sa.Table = Customer.__table__  # type: ignore[attr-defined]
# The customer a mail's touchpoint was for (built once: the one-click POST is a hot path).
_TOUCHPOINT_OWNER = (
    sa.select(_CUSTOMERS.c.email_key, _CUSTOMERS.c.shop_domain, _TP.c.id)
    .select_from(
        _TP.join(_ORDERS, _ORDERS.c.id == _TP.c.order_id).join(
            _CUSTOMERS, _CUSTOMERS.c.id == _ORDERS.c.customer_id
        )
    )
    .where(_TP.c.id == sa.bindparam("tp"))
)


def list_label(list_name: str, locale: str) -> str:
    return LIST_NAMES.get(list_name, {}).get(locale, list_name)


def class_of(policy: ContactPolicy, list_name: str) -> str:
    """The list "all mails of this kind's class" stands for: a kind's list -> its class; a class
    or `all` -> itself."""
    for rule in policy.kinds.values():
        if rule.list_name == list_name:
            return rule.message_class.value
    return list_name


def pick_locale(accept_language: str | None) -> str:
    """ja or en from Accept-Language (by q-value, then order); ja when it names neither."""
    best: tuple[float, int, str] | None = None
    for i, part in enumerate((accept_language or "")[:512].split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in links.LOCALES:
            continue
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if q <= 0:
            continue
        if best is None or (-q, i) < (-best[0], best[1]):
            best = (q, i, primary)
    return best[2] if best else "ja"


@dataclass(frozen=True)
class Done:
    list_name: str
    created: bool
    cancelled: int


def form_choice(content_type: str, body: bytes) -> str | None:
    """What our page's form chose (`list` or `class`), or None when the body is not our form (the
    one-click body, a junk one, an empty one, a multipart one): then the token's list."""
    if "application/x-www-form-urlencoded" not in content_type.lower():
        return None
    try:
        fields = parse_qs(body.decode("ascii"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    scope = fields.get("scope", [""])[0]
    return scope if scope in ("list", "class") else None


def router(settings: Settings, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> APIRouter:
    """The unsubscribe routes, for `create_app` to include."""
    renderer = Renderer(settings.templates_dir)
    secret = settings.link_secret.get_secret_value()
    contact_policy = load_contact_policy(settings.policies_dir / "contact.yaml")
    shop_policy = load_shop_policy(settings.policies_dir)
    api = APIRouter()

    def page(name: str, status: int, locale: str, values: dict[str, Any]) -> HTMLResponse:
        shop = shop_policy.for_locale(locale)
        body = renderer.render(name, locale, {"shop": shop, **values})
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    def refused(request: Request, status: int, reason: str) -> HTMLResponse:
        """One page for every link we cannot act on (`reason`: invalid, too_large, unavailable)."""
        locale = pick_locale(request.headers.get("accept-language"))
        response = page("unsubscribe_page_error.html", status, locale, {"reason": reason})
        if status == 503:
            response.headers["Retry-After"] = "5"
        return response

    def claims_of(raw: str) -> links.UnsubscribeClaims | None:
        try:
            claims = links.read_unsubscribe_token(secret, raw, now=clock())
        except signing.TokenInvalid:  # TokenExpired too: the same page, whatever is wrong
            return None
        return claims if store.known_list(contact_policy, claims.list_name) else None

    def unsubscribe(claims: links.UnsubscribeClaims, list_name: str, source: str) -> Done:
        """Store the suppression and cancel the planned touchpoints, in one transaction."""
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                return _unsubscribe_once(claims, list_name, source)
            except sa.exc.OperationalError:
                if engine.dialect.name != "sqlite" or attempt == WRITE_TRIES:
                    raise
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    def _unsubscribe_once(claims: links.UnsubscribeClaims, list_name: str, source: str) -> Done:
        now = clock()
        with Session(engine) as session:
            email_key, touchpoint_id = None, None
            if claims.touchpoint_id is not None:
                # The mail's touchpoint names the customer: their planned mail on that list is
                # cancelled by address. The address must be the one the token was made for (its
                # hash): a customer redacted since, or any mismatch, is suppressed by the hash alone
                # (and the send-time rules stop whatever is still planned).
                found = session.execute(_TOUCHPOINT_OWNER, {"tp": claims.touchpoint_id}).first()
                if (
                    found is not None
                    and found.shop_domain == claims.shop_domain
                    and store.email_hash(found.email_key) == claims.email_hash
                ):
                    email_key, touchpoint_id = found.email_key, found.id
            result = store.suppress(
                session,
                shop_domain=claims.shop_domain,
                email_key=email_key,
                list_name=list_name,
                source=source,
                now=now,
                policy=contact_policy,
                touchpoint_id=touchpoint_id,
                address_hash=claims.email_hash,
            )
            session.commit()
        return Done(list_name, result.created, len(result.cancelled_touchpoints))

    @api.get("/unsubscribe/{raw:path}", response_class=HTMLResponse)
    def unsubscribe_page(raw: str, request: Request) -> HTMLResponse:
        """The choice, and nothing else: a GET changes nothing (scanners fetch links)."""
        claims = claims_of(raw)
        if claims is None:
            return refused(request, 404, "invalid")
        locale = claims.locale or pick_locale(request.headers.get("accept-language"))
        whole = class_of(contact_policy, claims.list_name)
        return page(
            "unsubscribe_page.html",
            200,
            locale,
            {
                "list_label": list_label(claims.list_name, locale),
                "class_label": list_label(whole, locale) if whole != claims.list_name else None,
            },
        )

    @api.post("/unsubscribe/{raw:path}", response_class=HTMLResponse)
    async def unsubscribe_post(raw: str, request: Request) -> HTMLResponse:
        """One-click (RFC 8058) or our form: unsubscribed at once, 200, never a redirect."""
        try:
            body = await read_limited(request, MAX_BODY_BYTES)
        except BodyTooLarge:
            return refused(request, 413, "too_large")
        claims = claims_of(raw)
        if claims is None:
            return refused(request, 404, "invalid")
        choice = form_choice(request.headers.get("content-type") or "", body)
        list_name = class_of(contact_policy, claims.list_name) if choice == "class" else claims.list_name
        source = SOURCE_ONE_CLICK if choice is None else SOURCE_PAGE
        try:
            done = await run_in_threadpool(unsubscribe, claims, list_name, source)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
            log.warning("unsubscribe not stored, database unavailable: %s", type(exc).__name__)
            return refused(request, 503, "unavailable")
        log.info(
            "unsubscribed %s… of %s from %s (%s): %s, %d planned cancelled",
            claims.email_hash[:12],
            claims.shop_domain,
            list_name,
            source,
            "new" if done.created else "already",
            done.cancelled,
        )
        locale = claims.locale or pick_locale(request.headers.get("accept-language"))
        return page(
            "unsubscribe_page_done.html",
            200,
            locale,
            {"list_label": list_label(list_name, locale), "already": not done.created},
        )

    return api
