"""Telling people a reply waits for them: the approval request when a draft is ready, and one
escalation notice when nobody decided within the policy's window.

These are staff emails, not customer contacts, so they do not go through touchpoints and the
outbox (a touchpoint needs an order, and many reviews have none). They are rendered from
templates/<locale>/{approval_request,escalation_notice}.* and handed to the project's email
backend directly, with a deterministic id: for the file backend each lands at
`<outbox_dir>/staff/<kind>/<id>.eml`, so sending again rewrites the same file. What makes them
happen once is recorded elsewhere: an approval request is sent only before a pause key the flow
run has not used yet (Prefect keeps those), and an escalation claims `reviews.escalated_at` with
a compare-and-set before it is sent (and gives it back if the send fails).

A Slack-compatible incoming webhook, when configured, gets the same news in one line with the
link to the run. It is best effort: the email is the record."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.email import EmailBackend, OutgoingEmail, make_backend
from aftercare.errors import SendError
from aftercare.models import Review as ReviewRow
from aftercare.models import utcnow
from aftercare.rendering import Renderer
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.settings import Settings

if TYPE_CHECKING:  # the guardrails load the drafting stack; the sweep that escalates needs none of it
    from aftercare.reviews.guardrails import GuardedDraft

log = logging.getLogger(__name__)

APPROVAL_REQUEST = "approval_request"
ESCALATION_NOTICE = "escalation_notice"
# One file per (id, recipient): ids are spaced so that up to this many recipients never collide.
RECIPIENT_SLOTS = 100


def run_url(settings: Settings, flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run, where the approval form is."""
    if not flow_run_id:
        return None
    return f"{settings.prefect_ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def staff_backend(settings: Settings, kind: str) -> EmailBackend:
    """The project's email backend; the file backend writes under `<outbox_dir>/staff/<kind>/` so
    staff mail never shares a file name with a customer message."""
    assert settings.outbox_dir is not None
    return make_backend(settings.model_copy(update={"outbox_dir": settings.outbox_dir / "staff" / kind}))


@dataclass(frozen=True)
class StaffEmail:
    kind: str
    key: int  # the draft id (approval requests) or the review id (escalations)
    recipients: list[str]
    locale: str
    context: dict[str, Any]


def send_staff_email(settings: Settings, renderer: Renderer, email: StaffEmail) -> list[str]:
    """Render once, send one message per recipient; returns the provider's ids. A provider error
    propagates (a SendError): the caller decides whether it is retried."""
    rendered = renderer.render_email(
        email.kind, email.locale, {"shop_name": settings.shop_name, **email.context}
    )
    backend = staff_backend(settings, email.kind)
    ids = []
    for slot, to in enumerate(email.recipients[:RECIPIENT_SLOTS]):
        ids.append(
            backend.send(
                OutgoingEmail(
                    outbox_id=email.key * RECIPIENT_SLOTS + slot,
                    kind=email.kind,
                    to_email=to,
                    to_name=None,
                    from_email=settings.email_from,
                    from_name=settings.email_from_name,
                    subject=rendered.subject,
                    text=rendered.text,
                    html=rendered.html,
                    categories=("staff",),
                )
            )
        )
    return ids


def post_webhook(url: str | None, text: str, *, timeout_s: float = 5.0) -> bool:
    """POST `{"text": ...}` to a Slack-compatible incoming webhook. Best effort: a failure is logged
    and reported as False, never raised (the email already carries the news)."""
    if not url:
        return False
    request = urllib.request.Request(
        url,
        data=json.dumps({"text": text}, ensure_ascii=False).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        log.warning("chat webhook failed (the email was sent anyway): %s", exc)
        return False


def _review_context(review: ReviewRow) -> dict[str, Any]:
    text = "\n".join(p for p in (review.title, review.body) if p)
    return {
        "platform": review.platform,
        "platform_review_id": review.platform_review_id,
        "review_id": review.id,
        "rating": review.rating,
        "stars": "★" * max(0, min(5, review.rating or 0)) + "☆" * (5 - max(0, min(5, review.rating or 0))),
        "author": review.author_display_name,
        "excerpt": text if len(text) <= 600 else text[:600] + "…",
        "negative": review.triage_negative,
    }


def notify_approval_request(
    settings: Settings,
    renderer: Renderer,
    policy: ReviewsPolicy,
    review: ReviewRow,
    *,
    draft_id: int,
    guarded: GuardedDraft,
    flow_run_id: str | None,
    deadline: datetime,
) -> list[str]:
    """Email every approver (and post to the chat webhook) that a draft waits for them."""
    url = run_url(settings, flow_run_id)
    context = {
        "review": _review_context(review),
        "draft_text": guarded.draft.reply.reply_text,
        "draft_source": guarded.draft.source,
        "fallback_reason": guarded.draft.fallback_reason,
        "publishable": guarded.publishable,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in guarded.checks],
        "run_url": url,
        "deadline": deadline.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "approvers": policy.approval.approvers,
    }
    ids = send_staff_email(
        settings,
        renderer,
        StaffEmail(APPROVAL_REQUEST, draft_id, policy.approval.approvers, policy.approval.locale, context),
    )
    post_webhook(
        policy.approval.slack_webhook_url,
        f"Review reply waiting for approval: {review.platform} {review.platform_review_id} "
        f"({review.rating}/5){' - draft FAILED checks' if not guarded.publishable else ''}. "
        f"Decide by {context['deadline']}: {url or '(run link unavailable)'}",
    )
    return ids


def escalate_overdue(
    engine: Engine,
    policy: ReviewsPolicy,
    settings: Settings,
    renderer: Renderer,
    now: datetime | None = None,
) -> list[int]:
    """Send one escalation notice for every review that has waited longer than the policy's window
    without a decision; returns their ids. The run keeps waiting. Each review is claimed with a
    compare-and-set on `escalated_at`, so concurrent sweeps never notify twice; a failed send
    releases the claim for the next sweep."""
    now = now or utcnow()
    window = timedelta(hours=policy.approval.window_hours)
    overdue_before = now - window
    with Session(engine) as session:
        candidates = list(
            session.exec(
                select(ReviewRow.id).where(
                    ReviewRow.status == "awaiting_approval",
                    ReviewRow.escalated_at.is_(None),  # type: ignore[union-attr]
                    ReviewRow.approval_requested_at <= overdue_before,  # type: ignore[operator]
                )
            )
        )
    escalated: list[int] = []
    for review_id in candidates:
        if not _claim_escalation(engine, review_id, now):
            continue
        with Session(engine, expire_on_commit=False) as session:
            review = session.get(ReviewRow, review_id)
        assert review is not None and review.approval_requested_at is not None
        waited = now - review.approval_requested_at
        context = {
            "review": _review_context(review),
            "waited_hours": round(waited.total_seconds() / 3600, 1),
            "window_hours": f"{policy.approval.window_hours:g}",
            "requested_at": review.approval_requested_at.strftime("%Y-%m-%d %H:%M UTC"),
            "run_url": run_url(settings, review.flow_run_id),
            "approvers": policy.approval.approvers,
        }
        try:
            send_staff_email(
                settings,
                renderer,
                StaffEmail(
                    ESCALATION_NOTICE,
                    review_id,
                    policy.approval.escalation_recipients,
                    policy.approval.locale,
                    context,
                ),
            )
        except SendError:
            _release_escalation(engine, review_id, now)
            log.exception("escalation notice for review %s failed; the next sweep retries it", review_id)
            continue
        except BaseException:
            _release_escalation(engine, review_id, now)
            raise
        post_webhook(
            policy.approval.slack_webhook_url,
            f"Escalation: review {review.platform} {review.platform_review_id} has waited "
            f"{context['waited_hours']} h for approval (window {policy.approval.window_hours:g} h): "
            f"{context['run_url'] or '(run link unavailable)'}",
        )
        escalated.append(review_id)
    return escalated


def _claim_escalation(engine: Engine, review_id: int, now: datetime) -> bool:
    with Session(engine) as session:
        result = session.execute(
            sa.update(ReviewRow)
            .where(
                ReviewRow.id == review_id,
                ReviewRow.escalated_at.is_(None),  # type: ignore[union-attr]
                ReviewRow.status == "awaiting_approval",
            )
            .values(escalated_at=now)
        )
        session.commit()
        return result.rowcount == 1  # type: ignore[attr-defined]


def _release_escalation(engine: Engine, review_id: int, claimed_at: datetime) -> None:
    with Session(engine) as session:
        session.execute(
            sa.update(ReviewRow)
            .where(ReviewRow.id == review_id, ReviewRow.escalated_at == claimed_at)
            .values(escalated_at=None)
        )
        session.commit()
