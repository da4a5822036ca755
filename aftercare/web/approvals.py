"""The approval page: an approver opens the signed link from their request mail (no account, on a
phone as well), sees the review, the order's facts, the draft and every guardrail result, and
decides: approve, edit and approve (checked again), redraft with instructions, or reject.

`GET /approvals/<token>` shows the page while the link can decide, and what became of the decision
once it has (the outcome: the new draft after a redraft, the published reply after an approval).
`POST /approvals/<token>` decides, in this order: the link is ours and current; the form is this
page's (a per-page token bound to the link and to a SameSite=Strict cookie, and the Origin is ours);
the decision passes `resolve_decision`, as one made in Prefect's form must (an edit that fails a
guardrail is shown with why, the link stays usable and the run keeps waiting); the link is used up
and the decision stored in one transaction (`links.decide`: of two posts, one wins and the other is
shown the outcome); then the `review-reply` run is resumed with the same input as Prefect's form,
the approver being the link's, never a form field. The run applies the stored decision.

Every refusal (forged, tampered, expired, used, another approver's, an old draft's, a review decided
elsewhere) is a page saying so, with a 4xx status. What strangers wrote (the review, the author's
name, the triage reasons, the model's risk notes) is text: Jinja autoescapes it, nothing is rendered
as markdown, invisible and direction-changing characters are shown as their code points, and the
Content-Security-Policy allows no script at all. The page needs no JavaScript."""

from __future__ import annotations

import asyncio
import logging
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from aftercare.models import ReplyStatus, ReviewStatus, utcnow
from aftercare.policies import load_policies
from aftercare.recovery import apology
from aftercare.rendering import Renderer
from aftercare.reviews import intake, links
from aftercare.reviews.approval import DecisionForm, DecisionRefused, guarded_from_stored, resolve_decision
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.publishing import public_page_url
from aftercare.settings import Settings
from aftercare.web.bodies import BodyTooLarge, read_limited

log = logging.getLogger(__name__)

COOKIE = "aftercare_approval"
MAX_FORM_BYTES = 64 * 1024
REFRESH_S = 3
# No script, no plugin, no frame, forms only to ourselves; the Origin header is sent on our own
# posts (it is "null" under no-referrer), and no address leaves with a link the page shows.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# -- resuming the run -----------------------------------------------------------------------------


class Resumer(Protocol):
    """Resumes a suspended review-reply run with a decision's input (Prefect in production)."""

    async def resume(self, flow_run_id: str, run_input: dict[str, Any]) -> str:
        """'resumed'; 'not_waiting' when the run is not suspended (it applies the stored decision
        when it next waits); 'ended:<state>' when the run has ended (Crashed, Failed...: re-running
        it applies the decision). Raises ResumeFailed when Prefect cannot be asked."""
        ...


class ResumeFailed(Exception):
    """Prefect could not be asked (down, refused): the decision is stored, the run is resumed later."""


class PrefectResumer:
    """`resume_flow_run` through Prefect's client (PREFECT_API_URL and its auth from the environment)."""

    def __init__(self, timeout_s: float = 10.0):
        self.timeout_s = timeout_s

    async def resume(self, flow_run_id: str, run_input: dict[str, Any]) -> str:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import NotPausedError
        from prefect.flow_runs import aresume_flow_run

        try:
            await asyncio.wait_for(aresume_flow_run(UUID(flow_run_id), run_input=run_input), self.timeout_s)
        except NotPausedError:
            async with get_client() as client:
                state = (await client.read_flow_run(UUID(flow_run_id))).state
            return f"ended:{state.name}" if state is not None and state.is_final() else "not_waiting"
        except Exception as exc:  # the client's errors are many (HTTP, timeouts, a rejected resume)
            raise ResumeFailed(f"{type(exc).__name__}: {exc}") from exc
        return "resumed"


# -- text strangers wrote -------------------------------------------------------------------------


def visible(text: object) -> str:
    """Text with its invisible tricks made visible: format characters (zero-width spaces and
    joiners, bidirectional overrides and isolates, the BOM) and control characters other than
    line breaks and tabs are shown as [U+XXXX], so a name or a sentence cannot hide, reorder or
    fake what the approver reads. Escaping is still the template's (autoescape)."""
    out = []
    for ch in str(text):
        if ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cs", "Zl", "Zp"):
            out.append(f"[U+{ord(ch):04X}]")
        else:
            out.append(ch)
    return "".join(out)


# -- the page -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    action: str = "approve"
    edited_text: str = ""
    instructions: str = ""
    reason: str = ""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _client(request: Request) -> links.Client:
    return links.Client(
        ip=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:512] or None,
    )


def router(
    settings: Settings,
    engine: Engine,
    *,
    resumer: Resumer | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> APIRouter:
    """The approval page's routes, for `create_app` to include."""
    renderer = Renderer(settings.templates_dir)
    renderer.env.filters["visible"] = visible
    the_resumer: Resumer = resumer or PrefectResumer()
    shipping = load_policies(settings.policies_dir).shipping
    ours = {_origin(settings.web_base_url)}
    secure_cookie = settings.web_base_url.startswith("https://")
    api = APIRouter()

    def policy() -> ReviewsPolicy:
        return intake.reviews_policy(settings.policies_dir)

    def html(name: str, status: int, values: dict[str, Any]) -> HTMLResponse:
        locale = policy().approval.locale
        body = renderer.render(name, locale, {"shop_name": settings.shop_name, **values})
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    def notice(kind: str, status: int, **values: Any) -> HTMLResponse:
        """A refusal or an outcome: one template, `kind` says which."""
        base: dict[str, Any] = {
            "kind": kind,
            "detail": None,
            "decision": None,
            "review": None,
            "reply": None,
            "published_url": None,
            "new_draft": None,
            "next_url": None,
            "refresh_s": None,
            "approver": None,
            "run_ended": None,
        }
        return html("approval_page_notice.html", status, {**base, **values})

    def published_url(st: links.LinkState) -> str | None:
        reply = st.reply
        # The public page shows a review once both are published (app.review_page): not before.
        if (
            reply is None
            or reply.status != ReplyStatus.PUBLISHED
            or st.review.status != ReviewStatus.PUBLISHED
        ):
            return None
        if (reply.platform_reply_id or "").startswith("own:"):
            return public_page_url(settings, st.review)
        return None

    def outcome(st: links.LinkState, status: int, *, run_ended: str | None = None) -> HTMLResponse:
        """What became of the draft's decision: ours (this link's) or someone else's."""
        decision = st.decision
        assert decision is not None
        kind = "decided" if st.decided_here else "decided_elsewhere"
        values: dict[str, Any] = {"decision": decision, "review": st.review, "approver": st.link.approver}
        applied = st.review.status != ReviewStatus.AWAITING_APPROVAL or st.superseded
        if decision.action == "redraft":
            if st.superseded:
                values["new_draft"] = st.latest
                fresh = links.link_for(engine, st.latest.id, st.link.approver)  # type: ignore[arg-type]
                if fresh is not None and fresh.used_at is None:
                    values["next_url"] = links.url(settings, fresh)
                else:
                    values["refresh_s"] = REFRESH_S
            else:
                values["refresh_s"] = REFRESH_S  # the run is writing the new draft
        elif decision.action in ("approve", "edit"):
            values["reply"] = st.reply
            values["published_url"] = published_url(st)
            if st.reply is None or st.reply.status in (ReplyStatus.PENDING, ReplyStatus.PUBLISHING):
                values["refresh_s"] = REFRESH_S
        elif not applied:
            values["refresh_s"] = REFRESH_S
        if run_ended and not applied:  # nothing will happen by itself: say so, stop refreshing
            values.update(run_ended=run_ended, refresh_s=None)
        return notice(kind, status, **values)

    def load(raw: str) -> links.LinkState | HTMLResponse:
        try:
            link = links.read(engine, settings, raw, now=clock())
        except links.LinkRefused as exc:
            return notice(exc.kind, exc.status)
        if not policy().approval.is_approver(link.approver):
            return notice("not_approver", 403, approver=link.approver)
        return links.state(engine, link)

    def closed(st: links.LinkState, *, posted: bool = False, run_ended: str | None = None) -> HTMLResponse:
        """The page for a link that can no longer decide, with why: its own decision's outcome is
        a plain page to look at (200), refused (409) when something was posted again."""
        if st.decided_here:
            return outcome(st, 409 if posted else 200, run_ended=run_ended)
        if st.superseded:  # redrafted (by whoever): the approver's link to the new draft, when issued
            fresh = links.link_for(engine, st.latest.id, st.link.approver)  # type: ignore[arg-type]
            next_url = links.url(settings, fresh) if fresh is not None and fresh.used_at is None else None
            return notice("superseded", 410, next_url=next_url, review=st.review)
        if st.decision is not None:
            return outcome(st, 409)
        return notice("not_waiting", 409, review=st.review)

    def drafted(st: links.LinkState, p: ReviewsPolicy) -> tuple[Any, Any]:
        """The link's draft as it was checked, and the context it is checked in (an edit too)."""
        ctx = apology.reply_context(
            engine,
            st.review.id,  # type: ignore[arg-type]
            reviews=p,
            shipping=shipping,
            shop_name=settings.shop_name,
            policies_dir=settings.policies_dir,
        )
        return ctx, guarded_from_stored(st.draft, p.version)

    def form_page(
        st: links.LinkState,
        cookie: str,
        *,
        status: int = 200,
        error: str | None = None,
        sent: Submitted | None = None,
    ) -> HTMLResponse:
        p = policy()
        ctx, guarded = drafted(st, p)
        requested = st.review.approval_requested_at or clock()
        review = st.review
        response = html(
            "approval_page.html",
            status,
            {
                "review": review,
                "stars": "★" * max(0, min(5, review.rating)) + "☆" * (5 - max(0, min(5, review.rating))),
                "facts": ctx.request.order,
                "draft": st.draft,
                "guarded": guarded,
                "checks": guarded.checks,
                "deadline": requested + timedelta(hours=p.approval.window_hours),
                "approver": st.link.approver,
                "csrf": links.form_token(settings, st.link, cookie),
                "error": error,
                "sent": sent or Submitted(edited_text=st.draft.text),
            },
        )
        response.set_cookie(
            COOKIE,
            cookie,
            path="/approvals/",
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
        )
        return response

    async def complete(st: links.LinkState) -> str | None:
        """Resume the run when a stored decision of this link has not reached it yet (Prefect was
        away, or the run was not suspended yet): it applies the stored decision, nothing new. The
        state the run ended in, when it ended without applying it (ops re-run it)."""
        decision = st.decision
        if decision is None or not st.decided_here or not st.review.flow_run_id:
            return None
        if st.review.status != ReviewStatus.AWAITING_APPROVAL or st.superseded:
            return None  # the run has taken it
        try:
            result = await the_resumer.resume(st.review.flow_run_id, links.run_input(decision))
        except ResumeFailed as exc:
            log.warning("review %s: the decision is stored; resuming run failed: %s", st.review.id, exc)
            return None
        log.info("review %s: run %s %s", st.review.id, st.review.flow_run_id, result)
        return result.removeprefix("ended:") if result.startswith("ended:") else None

    @api.get("/approvals/{raw}", response_class=HTMLResponse)
    async def approval_page(raw: str, request: Request) -> Response:
        st = await run_in_threadpool(load, raw)
        if isinstance(st, HTMLResponse):
            return st
        if not st.open:
            ended = await complete(st)
            st = await run_in_threadpool(links.state, engine, st.link)
            return await run_in_threadpool(lambda: closed(st, run_ended=ended))
        cookie = request.cookies.get(COOKIE) or secrets.token_urlsafe(18)
        return await run_in_threadpool(form_page, st, cookie)

    @api.post("/approvals/{raw}", response_class=HTMLResponse)
    async def decide(raw: str, request: Request) -> Response:
        st = await run_in_threadpool(load, raw)
        if isinstance(st, HTMLResponse):
            return st
        # A form posted from another site never reaches a decision: the browser says where it was
        # (Origin, Sec-Fetch-Site), our cookie is SameSite=Strict, and the form token is bound to it.
        origin = request.headers.get("origin")
        allowed = ours | {_origin(str(request.base_url))}
        if (origin is not None and origin.lower() not in allowed) or request.headers.get(
            "sec-fetch-site"
        ) in ("cross-site", "same-site"):
            return notice("cross_site", 403)
        if "application/x-www-form-urlencoded" not in (request.headers.get("content-type") or ""):
            return notice("bad_form", 415)
        try:
            body = await read_limited(request, MAX_FORM_BYTES)
        except BodyTooLarge:
            return notice("bad_form", 413)
        fields = {
            k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
        }
        if not links.form_token_ok(
            settings, st.link, request.cookies.get(COOKIE), fields.get("csrf"), clock()
        ):
            return notice("cross_site", 403)
        if not st.open:
            return await run_in_threadpool(lambda: closed(st, posted=True))
        sent = Submitted(
            action=fields.get("action", ""),
            edited_text=fields.get("edited_text", "").replace("\r\n", "\n"),
            instructions=fields.get("instructions", ""),
            reason=fields.get("reason", ""),
        )
        cookie = request.cookies.get(COOKIE) or ""

        def validate_and_decide() -> Response | links.LinkState:
            p = policy()
            try:
                form = DecisionForm(
                    approver=st.link.approver,
                    action=sent.action,  # type: ignore[arg-type]
                    edited_text=sent.edited_text if sent.action == "edit" else "",
                    instructions=sent.instructions if sent.action == "redraft" else "",
                    reason=sent.reason if sent.action == "reject" else "",
                )
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                return form_page(st, cookie, status=422, error=problems, sent=sent)
            ctx, guarded = drafted(st, p)
            try:
                resolution = resolve_decision(
                    form,
                    draft_id=st.draft.id,
                    guarded=guarded,
                    approval=p.approval,
                    context=ctx.guardrails,  # type: ignore[arg-type]
                )
            except DecisionRefused as exc:
                return form_page(st, cookie, status=422, error=str(exc), sent=sent)
            try:
                decision = links.decide(
                    engine,
                    st.link,
                    action=resolution.action,
                    text=resolution.text,
                    instructions=resolution.instructions,
                    reason=resolution.reason,
                    guardrails=resolution.checks,
                    client=_client(request),
                    now=clock(),
                )
            except links.AlreadyDecided:
                return outcome(links.state(engine, st.link), 409)
            after = links.state(engine, st.link)
            if decision is None:  # this link was used by a post that came first
                return outcome(after, 409)
            log.info(
                "review %s: %s by %s on the approval page", st.review.id, decision.action, decision.approver
            )
            return after

        result = await run_in_threadpool(validate_and_decide)
        if isinstance(result, Response):
            return result
        await complete(result)
        return RedirectResponse(str(request.url.path), status_code=303, headers=PAGE_HEADERS)

    return api
