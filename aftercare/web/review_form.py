"""Our own review form, reached from the link in a review request (aftercare/reviews/form_links.py),
and the public page of a product's reviews.

`GET /r/<token>` shows, in the order's language, each reviewable product of the order with its form
(stars as radio buttons, a title, the text, the name it is shown under) and the review already sent,
if any; it stores nothing (mail scanners and link previews open links). `POST /r/<token>` takes one
product's review (the token in the address is the capability: it names one order, is signed and
expires; nothing else in the form is trusted) and answers 303 to the page, which thanks the customer
and says until when they can change it (aftercare/reviews/own_form.py stores it, once, through the
inbox). No script runs on these pages.

Refusals are pages with a 4xx status, in the order's language when we know the order, else the
browser's: a link that is not ours (forged, altered, another purpose's, another order's touchpoint)
404; a form that has closed (the link expired) or a request called off before it was mailed 410; a
body that is not our form 415/413/400; a product not in the order 422 with a page saying so; a review
we cannot take 422, shown again with what to correct and with what was typed kept.

`GET /products/<ref>/reviews` lists the reviews written on our form for one product, whatever their
rating: the average, the count per star, every review with its published reply. Only moderation for
abuse or personal data hides one (aftercare/reviews/showcase.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from aftercare import signing
from aftercare.contact.policy import load_contact_policy
from aftercare.contact.sender import ShopPolicy, load_shop_policy
from aftercare.models import utcnow
from aftercare.rendering import Renderer
from aftercare.reviews import own_form, showcase
from aftercare.reviews.form_links import verify_review_form_token
from aftercare.reviews.requests import policy_for as request_policy_for
from aftercare.settings import Settings
from aftercare.web.bodies import BodyTooLarge, read_limited
from aftercare.web.surveys import browser_locale, page_locale
from aftercare.web.wake import NoWaker, Waker

# The longest review the form takes (20,000 characters of 3-byte UTF-8, each byte %XX-escaped, is
# 180 KB) with its title and name fits; anything larger is not our form.
MAX_FORM_BYTES = 256 * 1024
MAX_FIELDS = 20
FORM_TYPE = "application/x-www-form-urlencoded"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The token is in the address: it leaves with no link, and no cache keeps the page.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
}
PUBLIC_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _printable(text: str) -> str:
    """A refused field as it is shown again: line breaks kept, other control characters gone."""
    text = text.replace("\r\n", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or not (ch < " " or "\x7f" <= ch <= "\x9f"))


def router(
    settings: Settings,
    engine: Engine,
    *,
    waker: Waker | None = None,
    clock: Callable[[], datetime] = utcnow,
    warm_ups: list[Callable[[], object]] | None = None,
) -> APIRouter:
    """The review form's and the product reviews page's routes, for `create_app` to include.
    `warm_ups` gets what the app should load once it has started (its policies, templates and SQL)."""
    renderer = Renderer(settings.templates_dir)
    secret = settings.link_secret.get_secret_value()
    the_waker: Waker = waker or NoWaker()
    api = APIRouter()

    @cache
    def zone() -> ZoneInfo:
        return ZoneInfo(load_contact_policy(settings.policies_dir / "contact.yaml").shop_timezone)

    @cache
    def shop() -> ShopPolicy:
        return load_shop_policy(settings.policies_dir)

    def warm_up() -> None:
        zone()
        shop()
        request_policy_for(settings.policies_dir)
        for locale in ("ja", "en"):
            for name in ("review_form.html", "review_form_notice.html", "product_reviews.html"):
                renderer.env.get_template(f"{locale}/{name}")
        own_form.warm(engine)

    if warm_ups is not None:
        warm_ups.append(warm_up)

    def notice(kind: str, status: int, locale: str, headers: dict[str, str] = HEADERS) -> HTMLResponse:
        body = renderer.render(
            "review_form_notice.html", locale, {"kind": kind, "shop_name": shop().name.in_(locale)}
        )
        return HTMLResponse(body, status_code=status, headers=headers)

    def load(raw: str, request: Request) -> own_form.FormState | HTMLResponse:
        try:
            link = verify_review_form_token(secret, raw, now=clock())
        except signing.TokenExpired:
            return notice("expired", 410, browser_locale(request))
        except signing.TokenInvalid:
            return notice("invalid", 404, browser_locale(request))
        state = own_form.form_state(engine, link, request_policy_for(settings.policies_dir).exclude)
        if state is None:
            return notice("invalid", 404, browser_locale(request))
        if not state.open:
            return notice("closed", 410, page_locale(state.order.locale))
        return state

    def page(
        raw: str,
        state: own_form.FormState,
        *,
        status: int = 200,
        saved: int | None = None,
        sent: dict[str, str] | None = None,
        error: own_form.ReviewRefused | None = None,
    ) -> HTMLResponse:
        locale = page_locale(state.order.locale)
        products: list[dict[str, Any]] = []
        for i, product in enumerate(state.products, start=1):
            latest = state.latest.get(product.ref)
            mine = sent is not None and sent.get("product") == product.ref
            if mine:
                assert sent is not None
                values = sent
            elif latest is not None:
                values = {
                    "rating": str(latest.rating),
                    "title": latest.title or "",
                    "body": latest.body,
                    "display_name": latest.display_name or "",
                }
            else:
                values = {"rating": "", "title": "", "body": "", "display_name": state.default_name}
            products.append(
                {
                    "n": i,
                    "ref": product.ref,
                    "title": product.title,
                    "variant_title": product.variant_title,
                    "latest": latest,
                    "values": values,
                    "error": (
                        {"field": error.field, "detail": str(error)} if (mine and error is not None) else None
                    ),
                }
            )
        body = renderer.render(
            "review_form.html",
            locale,
            {
                "shop_name": shop().name.in_(locale),
                "action": f"/r/{raw}",
                "order_name": state.order.name,
                "products": products,
                "saved": next((p for p in products if p["n"] == saved and p["latest"]), None),
                "closes": state.link.closes_at.astimezone(zone()),
                "max_text": own_form.MAX_TEXT,
                "max_title": own_form.MAX_TITLE,
                "max_name": own_form.MAX_NAME,
            },
        )
        return HTMLResponse(body, status_code=status, headers=HEADERS)

    @api.get("/r/{raw}", response_class=HTMLResponse)
    def review_form(raw: str, request: Request, saved: str | None = None) -> Response:
        """The form; never stores anything."""
        state = load(raw, request)
        if isinstance(state, HTMLResponse):
            return state
        shown = int(saved) if saved and saved.isascii() and saved.isdigit() and len(saved) < 4 else None
        return page(raw, state, saved=shown)

    @api.post("/r/{raw}", response_class=HTMLResponse)
    async def submit(raw: str, request: Request) -> Response:
        """Store one product's review, then show the page (303): a reload never posts it again."""
        state = await run_in_threadpool(load, raw, request)
        if isinstance(state, HTMLResponse):
            return state
        locale = page_locale(state.order.locale)
        if (request.headers.get("content-type") or "").split(";")[0].strip().lower() != FORM_TYPE:
            return notice("bad_form", 415, locale)
        try:
            body = await read_limited(request, MAX_FORM_BYTES)
        except BodyTooLarge:
            return notice("too_large", 413, locale)
        try:
            fields = parse_qs(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            return notice("bad_form", 400, locale)
        try:
            review = own_form.read_review(fields, state.products)
        except own_form.ReviewRefused as refused:
            exc = refused
            if exc.field == "product":
                return notice("not_in_order", 422, locale)
            sent = {
                name: _printable((fields.get(name) or [""])[0])
                for name in ("product", "rating", "title", "body", "display_name")
            }
            return await run_in_threadpool(lambda: page(raw, state, status=422, sent=sent, error=exc))
        done = await run_in_threadpool(own_form.submit_review, engine, state, review, now=clock())
        if done.created:
            the_waker.poke()
        n = next(i for i, p in enumerate(state.products, start=1) if p.ref == review.product_ref)
        return RedirectResponse(f"/r/{raw}?saved={n}#p{n}", status_code=303, headers=HEADERS)

    @api.get("/products/{ref}/reviews", response_class=HTMLResponse)
    def product_reviews(ref: str, request: Request, lang: str | None = None) -> Response:
        """Every published review of one product, whatever its rating, newest first."""
        locale = lang if lang in ("ja", "en") else browser_locale(request)
        if not showcase.product_ref_ok(ref):
            return notice("no_product", 404, locale, PUBLIC_HEADERS)
        shown = showcase.product_reviews(engine, ref)
        html = renderer.render(
            "product_reviews.html",
            locale,
            {
                "shop_name": shop().name.in_(locale),
                "product_ref": ref,
                "product_title": shown.product_title,
                "summary": shown.summary,
                "reviews": shown.reviews,
            },
        )
        return HTMLResponse(html, headers=PUBLIC_HEADERS)

    return api
