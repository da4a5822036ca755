"""The survey page, reached from the score links in the survey mail (aftercare/surveys/mail.py).
An answer at or below the recovery policy's threshold, or with a negative comment, opens the
survey's recovery case in the answer's own transaction (aftercare/recovery/cases.py).

`GET /survey/<token>?score=N` shows the page with that score chosen and records nothing: mail
scanners and link previews open links. The page then posts the answer itself (a few lines of
script, allowed by a per-response CSP nonce; it waits while the page is prerendered or hidden);
without script, one button sends it. `POST /survey/<token>` stores the answer (score, ticked
reasons, optional comment) and answers 303 to the page, which thanks the customer, shows the answer
that counts and lets them change it while the survey is open (every answer is kept; the latest
counts; the same answer posted twice is stored once: aftercare/surveys/answers.py).

Refusals are pages with a 4xx status, in the order's language when we know the order, else the
browser's: a link that is not ours (forged, altered, another purpose's token) 404; a survey that
has closed or was called off 410; a form that is not ours 415/413; an answer we cannot take 422,
shown again with what to correct and with what was typed kept. What the customer wrote is text:
autoescaped, never markup."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from aftercare import signing
from aftercare.contact.policy import load_contact_policy
from aftercare.contact.sender import ShopPolicy, load_shop_policy
from aftercare.models import SurveyResponse, utcnow
from aftercare.recovery.cases import Recovery
from aftercare.rendering import BABEL_LOCALES, Renderer
from aftercare.settings import Settings
from aftercare.surveys.answers import (
    Answer,
    AnswerContext,
    AnswerRefused,
    Latest,
    SurveyLink,
    SurveyState,
    SurveyUnavailable,
    parse_score,
    read_answer,
    read_survey_token,
    record_answer,
    survey_state,
)
from aftercare.surveys.policy import SurveyPolicy, load_survey_policy
from aftercare.web.bodies import BodyTooLarge, read_limited

# A form with the longest comment the policy may allow (10,000 characters of 3-byte UTF-8, each
# byte %XX-escaped) fits; anything larger is not our form.
MAX_FORM_BYTES = 96 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


def _headers(nonce: str | None) -> dict[str, str]:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; script-src {script}; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        # The token is in the address: it leaves with no link, and no cache keeps the page.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Robots-Tag": "noindex, nofollow",
    }


def browser_locale(request: Request) -> str:
    """ja unless the browser prefers English (for pages before we know the order)."""
    first = (request.headers.get("accept-language") or "").split(",")[0].strip().lower()
    return "en" if first.startswith("en") else "ja"


def page_locale(order_locale: str | None) -> str:
    return "en" if (order_locale or "").lower().startswith("en") else "ja"


def _printable(text: str) -> str:
    """A refused comment as it is shown again: line breaks kept, other control characters gone."""
    text = text.replace("\r\n", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or not (ch < " " or "\x7f" <= ch <= "\x9f"))


def router(
    settings: Settings,
    engine: Engine,
    *,
    clock: Callable[[], datetime] = utcnow,
    warm_ups: list[Callable[[], object]] | None = None,
) -> APIRouter:
    """The survey page's routes, for `create_app` to include. `warm_ups` gets what the app should
    load once it has started (`create_app` runs them in the background)."""
    renderer = Renderer(settings.templates_dir)
    secret = settings.link_secret.get_secret_value()

    # Read on first use (the app starts without them), then kept, as the other pages keep theirs.
    @cache
    def zone() -> ZoneInfo:
        return ZoneInfo(load_contact_policy(settings.policies_dir / "contact.yaml").shop_timezone)

    @cache
    def shop() -> ShopPolicy:
        return load_shop_policy(settings.policies_dir)

    def when(value: datetime, locale: str) -> str:
        local = value.astimezone(zone())
        if locale == "ja":
            return format_datetime(local, "y年M月d日 H:mm", locale="ja_JP")
        return format_datetime(local, "MMMM d, y, h:mm a", locale=BABEL_LOCALES["en"]) + f" ({local:%Z})"

    renderer.env.filters["when"] = when
    api = APIRouter()

    @cache
    def recovery() -> Recovery:
        return Recovery.load(settings, renderer)

    def warm_up() -> None:
        """What the first answer would otherwise load while its customer waits (~0.4 s): the
        policies, the recovery wing and its comment analysers."""
        shop()
        zone()
        policy()
        recovery().warm()

    if warm_ups is not None:
        warm_ups.append(warm_up)

    def store(link: SurveyLink, the_answer: Answer) -> None:
        """Store the answer (SurveyUnavailable: the survey takes none); a low one, or a negative
        comment, opens the survey's recovery case, or is noted on it, in the same transaction
        (aftercare/recovery/cases.py). The comment is judged in the order's language."""
        now = clock()
        rec = recovery()

        def on_stored(session: Session, row: SurveyResponse, context: AnswerContext) -> object:
            assessment = rec.assess(
                score=the_answer.score,
                scale=link.scale.name,
                comment=the_answer.comment,
                locale=context.order_locale,
            )
            return rec.note_answer(session, row, assessment, now=now, context=context)

        record_answer(engine, link, the_answer, now=now, on_stored=on_stored)

    def policy() -> SurveyPolicy:
        return load_survey_policy(settings.policies_dir)

    def shop_name(locale: str) -> str:
        return shop().name.in_(locale)

    def notice(kind: str, status: int, locale: str) -> HTMLResponse:
        body = renderer.render(
            "survey_page_notice.html", locale, {"kind": kind, "shop_name": shop_name(locale)}
        )
        return HTMLResponse(body, status_code=status, headers=_headers(None))

    def verify(raw: str, request: Request) -> SurveyLink | HTMLResponse:
        try:
            return read_survey_token(secret, raw, now=clock())
        except signing.TokenExpired:
            return notice("expired", 410, browser_locale(request))
        except signing.TokenInvalid:
            return notice("invalid", 404, browser_locale(request))

    def load(raw: str, request: Request) -> tuple[SurveyLink, SurveyState] | HTMLResponse:
        link = verify(raw, request)
        if isinstance(link, HTMLResponse):
            return link
        st = survey_state(engine, link)
        if st is None:
            return notice("invalid", 404, browser_locale(request))
        if not st.open:
            return notice("closed", 410, page_locale(st.order_locale))
        return link, st

    def page(
        raw: str,
        link: SurveyLink,
        st: SurveyState,
        *,
        status: int = 200,
        chosen: int | None = None,
        autosubmit: bool = False,
        saved: bool = False,
        sent: dict[str, Any] | None = None,
        error: AnswerRefused | None = None,
    ) -> HTMLResponse:
        locale = page_locale(st.order_locale)
        p = policy()
        latest: Latest | None = st.latest
        if sent is not None:  # a refused answer, shown again as it was sent
            reasons, comment = sent["reasons"], sent["comment"]
        elif latest is not None:
            reasons, comment = list(latest.reasons), latest.comment or ""
        else:
            reasons, comment = [], ""
        if chosen is None and latest is not None and latest.scale == link.scale.name:
            chosen = latest.score
        nonce = secrets.token_urlsafe(16) if autosubmit else None
        body = renderer.render(
            "survey_page.html",
            locale,
            {
                "shop_name": shop_name(locale),
                "action": f"/survey/{raw}",
                "order_name": st.order_name,
                "lines": st.lines[:5],
                "more_lines": max(0, len(st.lines) - 5),
                "scale": link.scale.name,
                "scores": link.scale.scores,
                "low": link.scale.low,
                "high": link.scale.high,
                "chosen": chosen,
                "reasons": p.reasons_for(locale),
                "ticked": set(reasons),
                "comment": comment,
                "comment_max": p.comment_max_chars,
                "latest": latest,
                "saved": saved and latest is not None,
                "autosubmit": autosubmit,
                "csp_nonce": nonce,
                "error": None if error is None else {"field": error.field, "detail": str(error)},
                "comment_chars": len(comment),
            },
        )
        return HTMLResponse(body, status_code=status, headers=_headers(nonce))

    @api.get("/survey/{raw:path}", response_class=HTMLResponse)
    def survey_page(
        raw: str, request: Request, score: str | None = None, saved: str | None = None
    ) -> Response:
        """The page; never stores anything."""
        found = load(raw, request)
        if isinstance(found, HTMLResponse):
            return found
        link, st = found
        chosen = None
        if score is not None:
            try:
                chosen = parse_score(score, link.scale)
            except AnswerRefused:
                chosen = None  # a mangled link: the page asks for the score instead
        latest = st.latest
        autosubmit = chosen is not None and (
            latest is None or latest.score != chosen or latest.scale != link.scale.name
        )
        return page(raw, link, st, chosen=chosen, autosubmit=autosubmit, saved=saved == "1")

    @api.post("/survey/{raw:path}", response_class=HTMLResponse)
    async def answer(raw: str, request: Request) -> Response:
        """Store an answer, then show the page (303): a reload never posts it again. An answer the
        form gives us is stored in one transaction that also checks the survey (`record_answer`);
        only a form we refuse reads the survey first, so that a link that is not ours or a closed
        survey is answered as such (404/410) before what is wrong with the form (415/413/422)."""
        link = verify(raw, request)
        if isinstance(link, HTMLResponse):
            return link

        async def refuse(kind: str, status: int) -> Response:
            found = await run_in_threadpool(load, raw, request)
            if isinstance(found, HTMLResponse):
                return found
            return notice(kind, status, page_locale(found[1].order_locale))

        if (request.headers.get("content-type") or "").split(";")[0].strip().lower() != FORM_TYPE:
            return await refuse("bad_form", 415)
        try:
            body = await read_limited(request, MAX_FORM_BYTES)
        except BodyTooLarge:
            return await refuse("too_large", 413)
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        scores = fields.get("score", [])
        sent = {"reasons": fields.get("reason", []), "comment": (fields.get("comment") or [""])[0]}
        p = policy()
        try:
            if len(scores) != 1:
                raise AnswerRefused("score", "send exactly one score")
            if len(fields.get("comment", [])) > 1:
                raise AnswerRefused("form", "send one comment")
            the_answer: Answer = read_answer(
                score=scores[0], reasons=sent["reasons"], comment=sent["comment"], scale=link.scale, policy=p
            )
        except AnswerRefused as exc:
            refused, chosen = exc, None
            try:
                chosen = parse_score(scores[0], link.scale) if len(scores) == 1 else None
            except AnswerRefused:
                pass
            clean_sent = {
                "reasons": [r for r in sent["reasons"] if r in p.reason_codes],
                "comment": _printable(sent["comment"]),
            }

            def shown_again() -> Response:
                found = load(raw, request)
                if isinstance(found, HTMLResponse):
                    return found
                return page(raw, link, found[1], status=422, chosen=chosen, sent=clean_sent, error=refused)

            return await run_in_threadpool(shown_again)
        try:
            await run_in_threadpool(store, link, the_answer)
        except SurveyUnavailable as exc:
            if exc.closed:
                return notice("closed", 410, page_locale(exc.order_locale))
            return notice("invalid", 404, browser_locale(request))
        return RedirectResponse(f"/survey/{raw}?saved=1", status_code=303, headers=_headers(None))

    return api
