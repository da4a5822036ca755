"""Telling people a reply waits for them: the approval request when a draft is ready, and one
escalation notice when nobody decided within the policy's window.

These are staff mails: outbox rows without a touchpoint (many reviews have no order), one per
message per recipient (`outbox.enqueue_staff`), claimed, sent, retried and settled by the same
machinery as customer mail; an approval request carries each approver's own signed link to the
approval page (`links`, issued in the same transaction as the rows). No code here talks to the
provider. Each row is inserted in one transaction with what records that the mail is owed: an
approval request with the review's move to `awaiting_approval` (keyed by the draft, so a resumed run
or a retried task inserts nothing new), an escalation with its claim on `reviews.escalated_at`. A
crash after that commit loses nothing: the row waits for the next drain.

A Slack-compatible incoming webhook, when configured, gets the same news in one line with the
link to the run. It is best effort, posted only by the call that inserted the rows (never again on
a resume or retry): the email is the record."""

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

from aftercare.models import PRIVATE_REPLY_PLATFORM, utcnow
from aftercare.models import Review as ReviewRow
from aftercare.rendering import Renderer
from aftercare.reviews import links
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.settings import Settings
from aftercare.spine import outbox

if TYPE_CHECKING:  # the guardrails load the drafting stack; the sweep that escalates needs none of it
    from aftercare.reviews.guardrails import GuardedDraft

log = logging.getLogger(__name__)

APPROVAL_REQUEST = "approval_request"
ESCALATION_NOTICE = "escalation_notice"


def run_url(settings: Settings, flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run, where the approval form is."""
    if not flow_run_id:
        return None
    return f"{settings.prefect_ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


@dataclass(frozen=True)
class StaffEmail:
    kind: str
    key: str  # names the message, with `kind`: the draft (approval requests), the review (escalations)
    recipients: list[str]
    locale: str
    context: dict[str, Any]
    # The order the mail is about, when there is one: the timeline and a redaction find it by it.
    order_id: int | None = None
    order_name: str | None = None


def enqueue_staff_email(
    session: Session, settings: Settings, renderer: Renderer, email: StaffEmail
) -> list[outbox.Enqueued]:
    """Render once and insert one outbox row per recipient, in the caller's transaction (commit it
    with what records that the mail is owed). A row that exists already (same kind, key and
    recipient) is returned as it is, with `inserted` False: planning a mail twice sends it once."""
    rendered = renderer.render_email(
        email.kind, email.locale, {"shop_name": settings.shop_name, **email.context}
    )
    rows: dict[int, outbox.Enqueued] = {}
    for to in email.recipients:
        row = outbox.enqueue_staff(
            session,
            key=email.key,
            kind=email.kind,
            to_email=to,
            rendered=rendered,
            locale=email.locale,
            order_id=email.order_id,
            order_name=email.order_name,
        )
        rows.setdefault(row.id, row)
    return list(rows.values())


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
        log.warning("chat webhook failed (the email is in the outbox anyway): %s", exc)
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


OPEN = ("new", "drafting", "awaiting_approval")


def notify_approval_request(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    policy: ReviewsPolicy,
    review: ReviewRow,
    *,
    draft_id: int,
    guarded: GuardedDraft,
    flow_run_id: str | None,
    now: datetime | None = None,
) -> list[int]:
    """Record that a decision on this draft is asked for, and owe every approver an email about
    it, in one transaction: the review moves to `awaiting_approval` (its first request time kept:
    the SLA counts from it across redrafts) and one outbox row per approver is inserted, keyed by
    the draft. Returns the rows' ids, for the caller to send at once (`outbox.send_now`); what it
    cannot send stays for the drain loop. The chat webhook is posted only when rows were new."""
    now = now or utcnow()
    assert review.id is not None
    table: sa.Table = ReviewRow.__table__  # type: ignore[attr-defined]
    requested = table.c.approval_requested_at
    url = run_url(settings, flow_run_id)
    with Session(engine) as session:
        first_asked = session.execute(
            sa.update(table)
            .where(table.c.id == review.id, table.c.status.in_(OPEN))
            .values(
                status="awaiting_approval",
                approval_requested_at=sa.func.coalesce(
                    requested, sa.bindparam("asked_at", now, type_=requested.type)
                ),
            )
            .returning(requested)
        ).scalar()
        if first_asked is None:  # decided, or gone, meanwhile: nobody is asked
            return []
        deadline = first_asked + timedelta(hours=policy.approval.window_hours)
        expires_at = now + timedelta(hours=policy.approval.expire_after_hours)
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
        rows: list[outbox.Enqueued] = []
        for approver in policy.approval.approvers:
            # Each approver's own signed link to the approval page (the Prefect link stays for ops).
            link = links.issue(
                session,
                review_id=review.id,
                draft_id=draft_id,
                approver=approver,
                expires_at=expires_at,
                now=now,
            )
            rows += enqueue_staff_email(
                session,
                settings,
                renderer,
                StaffEmail(
                    APPROVAL_REQUEST,
                    f"draft-{draft_id}",
                    [approver],
                    policy.approval.locale,
                    {**context, "approval_url": links.url(settings, link)},
                ),
            )
        session.commit()
    if any(row.inserted for row in rows):
        post_webhook(
            policy.approval.slack_webhook_url,
            f"Review reply waiting for approval: {review.platform} {review.platform_review_id} "
            f"({review.rating}/5){' - draft FAILED checks' if not guarded.publishable else ''}. "
            f"Decide by {context['deadline']}: {url or '(run link unavailable)'}",
        )
    return [row.id for row in rows]


def escalate_overdue(
    engine: Engine,
    policy: ReviewsPolicy,
    settings: Settings,
    renderer: Renderer,
    now: datetime | None = None,
) -> list[int]:
    """Owe one escalation notice for every review that has waited longer than the policy's window
    without a decision; returns their ids. The run keeps waiting. Each review is claimed with a
    compare-and-set on `escalated_at`, in the same transaction as its notice's outbox rows, so
    concurrent sweeps never notify twice and a crash after the claim still leaves the rows. Nothing
    is sent here: the drain loop sends the rows, and retries them on the outbox's own schedule (a
    failed send is never answered by escalating again)."""
    now = now or utcnow()
    window = timedelta(hours=policy.approval.window_hours)
    overdue_before = now - window
    with Session(engine) as session:
        candidates = list(
            session.exec(
                select(ReviewRow.id).where(
                    # A private reply (a recovery case's apology) is escalated by its case's own
                    # clock, in business hours (aftercare/recovery/cases.py), not by this window.
                    ReviewRow.platform != PRIVATE_REPLY_PLATFORM,
                    ReviewRow.status == "awaiting_approval",
                    ReviewRow.escalated_at.is_(None),  # type: ignore[union-attr]
                    ReviewRow.approval_requested_at <= overdue_before,  # type: ignore[operator]
                )
            )
        )
    escalated: list[int] = []
    for review_id in candidates:
        with Session(engine, expire_on_commit=False) as session:
            # The claim first: on SQLite the write lock is taken (waiting its turn) before any read.
            if not _claim_escalation(session, review_id, now):
                continue
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
            enqueue_staff_email(
                session,
                settings,
                renderer,
                StaffEmail(
                    ESCALATION_NOTICE,
                    f"review-{review_id}",
                    policy.approval.escalation_recipients,
                    policy.approval.locale,
                    context,
                ),
            )
            session.commit()
        post_webhook(
            policy.approval.slack_webhook_url,
            f"Escalation: review {review.platform} {review.platform_review_id} has waited "
            f"{context['waited_hours']} h for approval (window {policy.approval.window_hours:g} h): "
            f"{context['run_url'] or '(run link unavailable)'}",
        )
        escalated.append(review_id)
    return escalated


def _claim_escalation(session: Session, review_id: int, now: datetime) -> bool:
    result = session.execute(
        sa.update(ReviewRow)
        .where(
            ReviewRow.id == review_id,
            ReviewRow.escalated_at.is_(None),  # type: ignore[union-attr]
            ReviewRow.status == "awaiting_approval",
        )
        .values(escalated_at=now)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]
