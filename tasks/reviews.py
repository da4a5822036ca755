"""Prefect tasks and helpers for the review-reply flow: thin wrappers over aftercare.reviews, and the
form (`DecisionInput`) approvers fill in the Prefect UI.

Nothing here caches (NO_CACHE): a resumed flow run runs again from the top under the same flow run
id, and what was already done is found in our database, never in a cached task result."""

from __future__ import annotations

import logging
import socket
from dataclasses import asdict
from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.models import Review as ReviewRow
from aftercare.models import ReviewDecision, ReviewDraft, utcnow
from aftercare.recovery import apology
from aftercare.recovery.policy import load_recovery_policy
from aftercare.rendering import Renderer
from aftercare.reviews import intake, notify, store
from aftercare.reviews.approval import DecisionForm, guarded_from_stored, redraft_feedback
from aftercare.reviews.context import DraftContext
from aftercare.reviews.drafting import Drafter, build_drafter
from aftercare.reviews.guardrails import GuardedDraft, draft_with_guardrails
from aftercare.reviews.models import Draft, ReplyRequest
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.publishing import publish_reply
from aftercare.reviews.settings import LLMSettings
from aftercare.runtime import Runtime, current
from aftercare.spine import outbox
from aftercare.surveys.policy import load_survey_policy

# Re-exported: process-inbox imports them from tasks.review_sweep, which stays light (no LLM SDK).
from tasks.review_sweep import REVIEW_DEPLOYMENT, platform_for, review_sweep, start_review_flow  # noqa: F401

log = logging.getLogger(__name__)


class DecisionInput(RunInput, DecisionForm):
    """The approval form in the Prefect UI: its fields and their descriptions come from
    `DecisionForm`; the review, the draft and its checks are shown as the form's description."""


def decision_form(markdown: str, draft_text: str) -> type[DecisionInput]:
    """The form for one wait: `markdown` above it, `edited_text` pre-filled with the draft (so an
    edit starts from it). The field is passed as a FieldInfo so it keeps its description."""
    original = DecisionForm.model_fields["edited_text"]
    edited = Field(default=draft_text, description=original.description, max_length=4000)
    return DecisionInput.with_initial_data(description=markdown, edited_text=edited)


def reviews_policy(rt: Runtime) -> ReviewsPolicy:
    # Loaded once per process: each deployment run is a process of its own, so an edit to the policy
    # (a new approver) applies from the next run or resume.
    return intake.reviews_policy(rt.settings.policies_dir)


# -- the draft ------------------------------------------------------------------------------------


class _Instructed:
    """A drafter told the approver's instructions on every attempt, before any guardrail feedback."""

    def __init__(self, inner: Drafter, instructions: list[str]):
        self.inner = inner
        self.instructions = instructions

    def draft(self, request: ReplyRequest, *, feedback: list[str] | tuple[str, ...] = ()) -> Draft:
        return self.inner.draft(request, feedback=[*self.instructions, *feedback])


def draft_context(rt: Runtime, review_id: int, policy: ReviewsPolicy | None = None) -> DraftContext:
    """Everything drafting and checking a reply to this review needs, read from the database (a
    recovery case's private apology gets its own: aftercare/recovery/apology.py)."""
    return apology.reply_context(
        rt.engine,
        review_id,
        reviews=policy or reviews_policy(rt),
        shipping=rt.policies.shipping,
        shop_name=rt.settings.shop_name,
        policies_dir=rt.settings.policies_dir,
    )


def make_draft(
    rt: Runtime,
    review_id: int,
    *,
    instructions: str | None = None,
    drafter: Drafter | None = None,
    llm: LLMSettings | None = None,
) -> ReviewDraft:
    """Draft a reply (LLM with template fallback, or templates), check it, and store it."""
    ctx = draft_context(rt, review_id)
    if drafter is None and apology.is_private(ctx.review):
        drafter = apology.apology_drafter(
            llm or LLMSettings(),
            ctx,
            engine=rt.engine,
            recovery=load_recovery_policy(rt.settings.policies_dir),
            surveys=load_survey_policy(rt.settings.policies_dir),
            settings=rt.settings,
        )
    drafter = drafter or build_drafter(
        llm or LLMSettings(), ctx.policy, templates_dir=rt.settings.templates_dir
    )
    if instructions:
        drafter = _Instructed(drafter, redraft_feedback(instructions))
    guarded = draft_with_guardrails(
        ctx.request, drafter=drafter, policy=ctx.policy, private=ctx.parties.private
    )
    return store.save_draft(rt.engine, review_id, guarded, instructions=instructions)


@task(name="draft reply", cache_policy=NO_CACHE)
def draft_reply(review_id: int, instructions: str | None = None) -> int:
    """Draft, check and store a reply; returns the stored draft's id."""
    row = make_draft(current(), review_id, instructions=instructions)
    assert row.id is not None
    get_run_logger().info(
        "draft %s (attempt %s, %s)%s",
        row.id,
        row.attempt,
        row.source,
        " needs attention: " + ", ".join(g["name"] for g in row.guardrails if not g["passed"])
        if row.needs_attention
        else "",
    )
    return row.id


def guarded_draft(rt: Runtime, draft: ReviewDraft, policy: ReviewsPolicy) -> GuardedDraft:
    return guarded_from_stored(draft, policy.version)


# -- notifying ------------------------------------------------------------------------------------


def approval_deadline(review: ReviewRow, policy: ReviewsPolicy, now: datetime | None = None) -> datetime:
    start = review.approval_requested_at or now or utcnow()
    return start + timedelta(hours=policy.approval.window_hours)


@task(name="notify approvers", cache_policy=NO_CACHE)
def notify_approvers(review_id: int, draft_id: int, flow_run_id: str | None) -> list[dict[str, object]]:
    """Record that the draft waits for a decision with one outbox row per approver (and post to the
    chat webhook when the rows are new), then send exactly those rows at once, so approvers hear
    without waiting for a sweep. No Prefect retries: a row that is not sent here stays with the
    outbox, which retries it on its own schedule; a retry here could only mail someone twice."""
    rt = current()
    policy = reviews_policy(rt)
    review = store.get_review(rt.engine, review_id)
    with Session(rt.engine) as session:
        draft = session.get(ReviewDraft, draft_id)
    assert review is not None and draft is not None
    ids = notify.notify_approval_request(
        rt.engine,
        rt.settings,
        Renderer(rt.settings.templates_dir),
        policy,
        review,
        draft_id=draft_id,
        guarded=guarded_from_stored(draft, policy.version),
        flow_run_id=flow_run_id,
    )
    results = outbox.send_now(rt.engine, ids, rt.backend, rt.settings, worker=socket.gethostname()[:40])
    for result in results:
        if result.status != "sent":
            get_run_logger().warning(
                "approval request (outbox %s) is %s: %s; the outbox retries it",
                result.outbox_id,
                result.status,
                result.error,
            )
    return [asdict(result) for result in results]


# -- deciding and publishing ----------------------------------------------------------------------


def decision_on(engine: Engine, review_id: int, draft_id: int) -> ReviewDecision | None:
    """The decision already recorded on this draft (a valid one ends the wait for that draft)."""
    with Session(engine) as session:
        return session.exec(
            select(ReviewDecision)
            .where(ReviewDecision.review_id == review_id, ReviewDecision.draft_id == draft_id)
            .order_by(ReviewDecision.id)  # type: ignore[arg-type]
        ).first()


@task(name="publish reply", cache_policy=NO_CACHE)
def publish(review_id: int) -> dict[str, object]:
    """Publish the review's queued reply through its platform (our own store by default); at most
    once ever, whatever re-runs (the reply row is claimed before the platform is called)."""
    rt = current()
    review = store.get_review(rt.engine, review_id)
    assert review is not None
    reply = publish_reply(
        rt.engine,
        review_id,
        platform_for(rt, review.platform),
        max_attempts=rt.settings.review_publish_max_attempts,
        backoff_base_s=rt.settings.review_publish_backoff_base_s,
    )
    return {"status": reply.status, "platform_reply_id": reply.platform_reply_id, "error": reply.last_error}
