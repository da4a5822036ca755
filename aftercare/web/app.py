"""FastAPI app: Shopify and review webhooks (store, then acknowledge), the public review page (published
replies only, by unguessable id), the approval page (aftercare/web/approvals.py), health. The API
docs only with AFTERCARE_API_DOCS=true."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from aftercare.contact import consent, privacy
from aftercare.drainers import live_holders
from aftercare.errors import InvalidPayload
from aftercare.models import (
    PRIVATE_REPLY_PLATFORM,
    InboxStatus,
    ReplyStatus,
    Review,
    ReviewReply,
    ReviewStatus,
    utcnow,
)
from aftercare.orders import shopify
from aftercare.rendering import Renderer
from aftercare.reviews import intake as review_intake
from aftercare.reviews.masking import mask_contacts
from aftercare.reviews.text import normalise_lang
from aftercare.settings import Settings, normalise_shop
from aftercare.spine import inbox
from aftercare.spine.db import make_engine, ping, prime_pool, start_checkpointer
from aftercare.web import approvals
from aftercare.web import review_form as review_form_pages
from aftercare.web import surveys as survey_pages
from aftercare.web import unsubscribe as unsubscribe_routes
from aftercare.web.bodies import BodyTooLarge, read_limited
from aftercare.web.patrol import Patrol
from aftercare.web.wake import NoWaker, PrefectWaker, Waker

log = logging.getLogger(__name__)


def refuse_too_large(source: str, request: Request, err: BodyTooLarge, limit: int) -> JSONResponse:
    """413, nothing stored, and a warning carrying what ops need to ask the sender for the delivery
    again (Shopify's topic, shop and webhook id): the one case where a shop's delivery is not kept."""
    h = request.headers
    log.warning(
        "%s webhook refused, body over the %s-byte cap (AFTERCARE_MAX_BODY_BYTES), nothing stored: "
        "size %s, topic %r, shop %r, webhook id %r",
        source,
        limit,
        err.size,
        h.get("x-shopify-topic"),
        h.get("x-shopify-shop-domain"),
        h.get("x-shopify-webhook-id"),
    )
    return JSONResponse({"error": f"body larger than {limit} bytes"}, status_code=413)


# What "the database cannot take the delivery now" raises: a refused or dropped connection (psycopg's
# AdminShutdown during a restart is an OperationalError), a closed one, a locked SQLite, a full pool.
DATABASE_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)
DATABASE_RETRY_AFTER_S = 5


def database_unavailable(delivery: inbox.Delivery, exc: Exception) -> JSONResponse:
    """503 + Retry-After: the sender keeps the delivery and tries again (Shopify retries any non-2xx)."""
    log.warning(
        "database unavailable, %s %s from %s not stored (answered 503): %s",
        delivery.source,
        delivery.topic,
        delivery.shop_domain or "?",
        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
    )
    return JSONResponse(
        {
            "error": "database_unavailable",
            "detail": "the delivery was not stored; send it again later",
            "retry_after_s": DATABASE_RETRY_AFTER_S,
        },
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # Normalised here: an offset that pushes it outside datetime's range must not fail the insert.
        return parsed.astimezone(UTC) if parsed.tzinfo else None
    except (ValueError, OverflowError):
        return None


def header_text(value: str | None, limit: int) -> str | None:
    """A header value as text a column can hold: cut to its length, and NUL (which PostgreSQL text
    cannot hold; an HTTP server refuses it, but not every proxy does) shown as U+FFFD, so the
    delivery is stored with what it said instead of failing the insert with a 500."""
    return value.replace("\x00", "\ufffd")[:limit] if value is not None else None


def classify_shopify(topic: str | None, body: bytes) -> tuple[str, str | None, str | None]:
    """(status, reason, order name) for an authentic delivery, decided before it is stored so that
    ops see unusable payloads at once and the flows never retry them."""
    if not topic:
        return InboxStatus.INVALID, "missing X-Shopify-Topic header", None
    for contact_topics, check in (
        (consent.TOPICS, consent.check_delivery),
        (privacy.TOPICS, privacy.check_delivery),
    ):
        if topic in contact_topics:  # consent and compliance topics (aftercare.contact)
            usable, why, ref = check(topic, body)
            return (InboxStatus.PENDING if usable else InboxStatus.INVALID), why, ref
    if topic not in shopify.KNOWN_TOPICS:
        return InboxStatus.IGNORED, f"topic {topic[:64]!r} is not handled", None
    try:
        ref = shopify.subject_ref(topic, body)
    except InvalidPayload as exc:
        return InboxStatus.INVALID, str(exc), None
    # PostgreSQL text cannot hold NUL; the name is only a search label, the raw body keeps it.
    return InboxStatus.PENDING, None, ref


# The page shows text strangers wrote: no script runs on it, whatever slips through.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# What a public review id looks like (aftercare.models.new_public_id: 22 URL-safe characters; up to
# the column's 64 should the id ever grow). Anything else is not looked up.
PUBLIC_ID_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")


def _not_found() -> HTMLResponse:
    """The one 404 page: the same bytes and headers whatever was not found, or why."""
    return HTMLResponse("<!doctype html><title>Not found</title><p>Not found</p>", 404, headers=PAGE_HEADERS)


def runtime_once(settings: Settings) -> Callable[[], Any]:
    """The Runtime the web app's patrols run their jobs under, built on first use (the app starts
    without one) and then shared by every job of both patrols."""
    from aftercare.runtime import Runtime

    @cache
    def runtime() -> Runtime:
        return Runtime.build(settings)

    return runtime


def prefect_patrol(
    settings: Settings, waker: Waker | None = None, runtime: Callable[[], Any] | None = None
) -> Patrol:
    """The jobs the web app's patrol thread runs (aftercare/web/patrol.py): wake process-inbox when
    the database holds work that is due (every 5 s; aftercare/due.py), so that its schedule is only
    a low-frequency safety sweep and an idle system makes no empty runs; start the approval run of
    each new review (every 2 s); start send-timed-messages when a timed message is due now (every
    15 s); restart review runs that died and deliver page decisions that did not reach their run
    (once a minute). The order path itself makes no Prefect call."""
    the_runtime = runtime or runtime_once(settings)

    def in_runtime(fn: Callable[[], object]) -> Callable[[], object]:
        def job() -> object:
            from aftercare.runtime import use_runtime

            with use_runtime(the_runtime()):
                return fn()

        return job

    from tasks.review_sweep import check_review_runs, start_new_review_runs

    patrol = Patrol()
    if waker is not None:
        the_waker = waker

        def wake_for_due_work() -> list[str]:
            from aftercare.due import work_due
            from aftercare.runtime import current

            rt = current()
            due = work_due(rt.engine, rt.settings, rt.policies.requests, utcnow())
            if due:
                the_waker.poke_from_thread()
            return due

        patrol.add("wake process-inbox for due work", 5.0, in_runtime(wake_for_due_work))
    patrol.add("start approval runs for new reviews", 2.0, in_runtime(start_new_review_runs))

    def timed_messages_due() -> str | None:
        """A timed message (a survey) already due when it was planned (a late delivered event) goes
        out within a minute: one send-timed-messages run per minute at most (tasks/contact.py)."""
        from aftercare.runtime import current
        from tasks.contact import ensure_dispatch_run, needs_dispatch_now

        now = utcnow()
        if needs_dispatch_now(current().engine, now):
            return ensure_dispatch_run(now)
        return None

    patrol.add("start send-timed-messages for messages due now", 15.0, in_runtime(timed_messages_due))
    patrol.add("restart dead approval runs, deliver stored decisions", 60.0, in_runtime(check_review_runs))
    return patrol


class DueFor:
    """How long the database has held due work without a pause, as seen by consecutive checks."""

    def __init__(self) -> None:
        self.since: float | None = None

    def seen(self, due: bool, at: float) -> float:
        """Record one check; the seconds work has been due (0 when it is not, or just became so)."""
        if not due:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = at
        return at - self.since


def fallback_patrol(
    settings: Settings,
    every_s: float | None = None,
    runtime: Callable[[], Any] | None = None,
    clock: Callable[[], float] | None = None,
) -> Patrol:
    """A patrol of its own (own thread, so a drain never holds up the Prefect jobs, nor they it): when
    work has been due for `settings.fallback_drain_after_s` with no drain slot held all that time, no
    process-inbox run is draining it (Prefect's server locked, say, so no run can start). Drain it
    here, with no Prefect call (tasks/drain_here.py), in a free slot's name; the summary is logged and
    returned. Time a live run held a slot does not count: under a steady stream of orders work is due
    for minutes on end while runs drain it, and the web app took the slot the moment a healthy run
    ended, draining slower than a run for a minute while the runs that started found it taken (issue
    8, seen in the bench)."""
    import os
    import time

    from aftercare.drainers import drain_slot, live_holders
    from aftercare.due import work_due
    from aftercare.runtime import use_runtime
    from tasks.drain_here import drain_here

    the_runtime = runtime or runtime_once(settings)
    due_for = DueFor()
    holder = f"aftercare-web-{os.getpid()}"

    now = clock or time.monotonic

    def drain_when_stuck() -> str | None:
        rt = the_runtime()
        due = work_due(rt.engine, rt.settings, rt.policies.requests, utcnow())
        holders = live_holders(rt.engine, settings.workers) if due else set()
        waited = due_for.seen(bool(due) and not holders, now())
        if holders:
            return (
                "every drain slot is held by a live run"
                if len(holders) >= settings.workers
                else "a live run holds a drain slot"
            )
        if waited < settings.fallback_drain_after_s or not due:
            return None
        with drain_slot(rt.engine, settings.workers, wait_s=0, holder=holder) as slot:
            if slot is None:
                return "every drain slot is held by a live run"
            log.warning(
                "work due for %.0f s (%s) and no process-inbox run drained it: draining in the web app",
                waited,
                ", ".join(due),
            )
            with use_runtime(rt):
                summary = drain_here(rt, batch_size=settings.batch_size)
            log.warning("drained in the web app: %s", summary)
        due_for.since = None
        return summary

    # Checked every 5 s (the waker's pace), more often when the wait allowed is shorter than that.
    every = every_s if every_s is not None else min(5.0, max(0.05, settings.fallback_drain_after_s / 4))
    patrol = Patrol(tick_s=min(0.5, every))
    patrol.add("drain here when no run drains due work", every, drain_when_stuck, warn_after_s=120.0)
    return patrol


def warm_up(
    steps: list[Callable[[], object]],
    done: threading.Event | None = None,
    stopping: threading.Event | None = None,
) -> None:
    """Run the pages' warm-ups (policies read, analysers and templates loaded) once the app has
    started, so the first customers do not wait for them. Best effort: a step that fails is logged,
    and the page it serves loads the same thing on first use (and answers its error there). `done`
    is set at the end, failed steps or not (`/healthz` says `warm`). Once `stopping` is set (the app
    shuts down) no further step starts: none opens connections to a pool being disposed."""
    try:
        for step in steps:
            if stopping is not None and stopping.is_set():
                break
            try:
                step()
            except Exception:  # logged; the page meets it again on first use and answers it there
                log.warning("warm-up step %s failed; the page loads it on first use", step, exc_info=True)
    finally:
        if done is not None:
            done.set()


def create_app(
    settings: Settings | None = None,
    *,
    waker: Waker | None = None,
    resumer: approvals.Resumer | None = None,
    patrol: Patrol | None = None,
) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings, background_checkpoints=True)
    secret = settings.shopify_webhook_secret.get_secret_value()
    reviews_secret = settings.reviews_webhook_secret.get_secret_value()
    renderer = Renderer(settings.templates_dir)
    the_waker: Waker = waker or (
        PrefectWaker(
            settings.wake_deployment,
            live_runs=lambda: live_holders(engine, settings.workers),
        )
        if settings.wake_prefect
        else NoWaker()
    )

    patrol_runtime = runtime_once(settings)
    if settings.wake_prefect:
        patrol = patrol or prefect_patrol(settings, the_waker, patrol_runtime)
    fallback = (
        fallback_patrol(settings, runtime=patrol_runtime)
        if settings.wake_prefect and settings.fallback_drain_after_s > 0
        else None
    )

    warm_ups: list[Callable[[], object]] = []
    warm, stopping = threading.Event(), threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        stop_checkpointer = start_checkpointer(engine)
        threading.Thread(
            target=warm_up, args=(warm_ups, warm, stopping), name="aftercare-warm-up", daemon=True
        ).start()
        await the_waker.start()
        for each in (patrol, fallback):
            if each is not None:
                each.start()
        yield
        stopping.set()
        for each in (patrol, fallback):
            if each is not None:
                each.stop()
        await the_waker.stop()
        stop_checkpointer()
        engine.dispose()

    # The API's own documentation is off unless asked for (AFTERCARE_API_DOCS=true): it lists every
    # route to whoever reaches the app, and nobody outside needs it.
    docs = settings.api_docs
    app = FastAPI(
        title="aftercare",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.waker = the_waker
    app.state.fallback = fallback

    async def store(delivery: inbox.Delivery) -> tuple[int | None, bool]:
        if engine.dialect.name == "sqlite":
            # Sub-millisecond and serialised anyway: a thread hop would cost more than the insert.
            return inbox.store_delivery(engine, delivery)
        # A network round trip: let concurrent deliveries overlap it (and PostgreSQL group-commit).
        return await run_in_threadpool(inbox.store_delivery, engine, delivery)

    def without_erased_parts(delivery: inbox.Delivery) -> inbox.Delivery:
        with Session(engine) as session:
            body, note = privacy.kept_body(session, delivery.topic, delivery.shop_domain, delivery.body)
        if note is None:
            return delivery
        reason = "; ".join(filter(None, [delivery.reason, note]))
        return dataclasses.replace(delivery, body=body, reason=reason)

    async def store_then_ack(delivery: inbox.Delivery) -> JSONResponse:
        """Commit the delivery to the inbox, then answer 200 (a duplicate changes nothing) and wake
        Prefect for work it can do. A database we cannot reach is a 503 with Retry-After, never a
        500 with a traceback: nothing was stored, and Shopify delivers again."""
        try:
            try:
                inbox_id, new = await store(delivery)
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # A pooled connection the server had closed (a restart, an idle kill). SQLAlchemy has
                # invalidated the pool (no pre-ping, on purpose: a round trip per request), so a
                # second try gets a fresh connection. Storing twice is harmless: a duplicate is a no-op.
                inbox_id, new = await store(delivery)
        except DATABASE_UNAVAILABLE as exc:
            return database_unavailable(delivery, exc)
        if not new:
            return JSONResponse({"status": "duplicate"}, status_code=200)
        answer: dict[str, Any] = {"status": delivery.status, "inbox_id": inbox_id}
        if delivery.reason:
            answer["reason"] = delivery.reason
            log.warning("inbox %s stored as %s: %s", inbox_id, delivery.status, delivery.reason)
        if delivery.status == InboxStatus.PENDING:
            the_waker.poke()
        return JSONResponse(answer, status_code=200)

    @app.post("/webhooks/shopify")
    async def shopify_webhook(request: Request) -> JSONResponse:
        try:
            body = await read_limited(request, settings.max_body_bytes)
        except BodyTooLarge as err:
            return refuse_too_large("shopify", request, err, settings.max_body_bytes)
        h = request.headers
        if not shopify.verify(secret, body, h.get("x-shopify-hmac-sha256")):
            return JSONResponse({"error": "invalid or missing X-Shopify-Hmac-Sha256"}, status_code=401)
        # The signature does not cover the shop header: a signed body replayed under another shop's
        # name would otherwise be a second delivery. Only the configured shops are heard.
        shop = normalise_shop(h.get("x-shopify-shop-domain") or "")
        if not settings.serves_shop(shop):
            log.warning("refused a signed delivery for shop %r: not in AFTERCARE_SHOPIFY_SHOPS", shop[:255])
            return JSONResponse(
                {"error": "missing X-Shopify-Shop-Domain or a shop this installation does not serve"},
                status_code=401,
            )
        topic = h.get("x-shopify-topic")
        webhook_id = h.get("x-shopify-webhook-id")
        event_id = h.get("x-shopify-event-id")
        status, reason, order_name = classify_shopify(topic, body)
        delivery_id = (
            webhook_id or event_id or "sha256:" + hashlib.sha256((topic or "").encode() + body).hexdigest()
        )
        delivery = inbox.Delivery(
            source="shopify",
            delivery_id=header_text(delivery_id, 128) or "",
            event_id=header_text(event_id, 128) or None,
            topic=header_text(topic, 64) or "",
            shop_domain=shop[:255],
            triggered_at=_parse_time(h.get("x-shopify-triggered-at")),
            body=body,
            status=status,
            reason=reason,
            subject_ref=order_name,
        )
        if status != InboxStatus.PENDING and privacy.subject_kind(delivery.topic):
            # Kept unprocessed: one naming an erased order or customer is kept without its personal
            # parts (one that is processed is erased again when it is carried out).
            try:
                delivery = await run_in_threadpool(without_erased_parts, delivery)
            except DATABASE_UNAVAILABLE as exc:
                return database_unavailable(delivery, exc)
        return await store_then_ack(delivery)

    @app.post("/webhooks/reviews")
    async def reviews_webhook(request: Request) -> JSONResponse:
        """A review in our documented JSON (aftercare.reviews.intake), signed with
        X-Aftercare-Hmac-Sha256 (base64 HMAC-SHA256 of the raw body): stored, then acknowledged."""
        try:
            body = await read_limited(request, settings.max_body_bytes)
        except BodyTooLarge as err:
            return refuse_too_large("reviews", request, err, settings.max_body_bytes)
        if not shopify.verify(reviews_secret, body, request.headers.get(review_intake.SIGNATURE_HEADER)):
            return JSONResponse(
                {"error": f"invalid or missing {review_intake.SIGNATURE_HEADER}"}, status_code=401
            )
        delivery = review_intake.review_delivery(body, triggered_at=datetime.now(UTC))
        return await store_then_ack(delivery)

    @app.get("/reviews/{public_id:path}", response_class=HTMLResponse)
    def review_page(public_id: str) -> HTMLResponse:
        """A review with the shop's approved, published reply, by its unguessable public id; its
        phone numbers and email addresses masked, everything HTML-escaped. Anything else (an unknown
        or malformed id, a database id, a review whose reply is not published) is the one 404 page,
        byte for byte, so the page tells nobody which reviews exist."""
        if not PUBLIC_ID_RE.fullmatch(public_id):
            return _not_found()
        with Session(engine) as session:
            found = session.exec(
                select(Review, ReviewReply)
                .join(ReviewReply, ReviewReply.review_id == Review.id)  # type: ignore[arg-type]
                .where(
                    Review.public_id == public_id,
                    # A private reply (a recovery case's apology) was mailed to its customer: the
                    # complaint it answers is never shown on a public page.
                    Review.platform != PRIVATE_REPLY_PLATFORM,
                    Review.status == ReviewStatus.PUBLISHED,
                    ReviewReply.status == ReplyStatus.PUBLISHED,
                )
            ).first()
        if found is None:
            return _not_found()
        review, reply = found
        locale = "ja" if normalise_lang(review.language) == "ja" else "en"
        html = renderer.render(
            "review_page.html",
            locale,
            {
                "shop_name": settings.shop_name,
                "rating": max(1, min(5, review.rating)),
                "title": mask_contacts(review.title),
                "author": mask_contacts(review.author_display_name),
                "created_at": review.source_created_at,
                "body": mask_contacts(review.body),
                # The reply is the shop's own words, approved by a person: shown as approved.
                "reply": reply.text,
                "reply_at": reply.published_at or reply.created_at,
            },
        )
        return HTMLResponse(html, headers=PAGE_HEADERS)

    app.include_router(approvals.router(settings, engine, resumer=resumer))
    app.include_router(unsubscribe_routes.router(settings, engine))
    app.include_router(survey_pages.router(settings, engine, warm_ups=warm_ups))
    app.include_router(review_form_pages.router(settings, engine, waker=the_waker, warm_ups=warm_ups))
    if settings.environment != "test":
        # Last: the pages' first SQL has run on one of them. Not in the test suite, whose hundreds of
        # short-lived apps would each hold a pool's worth of PostgreSQL connections (too many clients).
        warm_ups.append(lambda: prime_pool(engine))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the database answers. `warm` is false for the first seconds after a start, while
        the pages' analysers and templates load in the background: pages answer meanwhile, slower."""
        try:
            await run_in_threadpool(ping, engine)
        except Exception as exc:
            return JSONResponse(
                {
                    "status": "unhealthy",
                    "database": f"unreachable: {type(exc).__name__}",
                    "warm": warm.is_set(),
                },
                status_code=503,
            )
        return JSONResponse({"status": "ok", "database": "ok", "warm": warm.is_set()})

    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (`--factory`)."""
    return create_app(Settings())
