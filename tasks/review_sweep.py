"""What process-inbox does for reviews on every loop: start one approval run per new review that
needs a reply, escalate the reviews waiting past the policy's window, and settle replies a stopped
worker left `publishing`.

Kept apart from tasks.reviews so that process-inbox, which imports this on every run, does not load
the drafting stack (the openai SDK and the guardrails): ~1 s of CPU per run it would not use."""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from prefect.deployments import run_deployment
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from aftercare.errors import AftercareError
from aftercare.models import ReplyStatus, utcnow
from aftercare.models import Review as ReviewRow
from aftercare.rendering import Renderer
from aftercare.reviews import intake, notify
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.publishing import make_platform, publish_reply, recover_stale
from aftercare.runtime import current

log = logging.getLogger(__name__)

REVIEW_DEPLOYMENT = "review-reply/review-reply"


def start_review_flow(review_id: int, name: str | None = None) -> str:
    """Create the review's approval run (one per review, ever: the idempotency key makes a second
    call return the first run), named `<platform> <platform's review id>`, and remember its id on
    the review. Returns the flow run id."""
    engine = current().engine
    if name is None:
        with Session(engine) as session:
            review = session.get(ReviewRow, review_id)
        if review is None:
            raise AftercareError(f"no review with id {review_id}")
        name = f"{review.platform} {review.platform_review_id}"
    run = run_deployment(
        REVIEW_DEPLOYMENT,
        parameters={"review_id": review_id},
        flow_run_name=name,
        timeout=0,
        idempotency_key=f"review-{review_id}",
        as_subflow=False,
    )
    # What store.set_flow_run does, without importing the store (and with it the drafting stack).
    with engine.begin() as conn:
        conn.execute(sa.update(ReviewRow).where(ReviewRow.id == review_id).values(flow_run_id=str(run.id)))
    return str(run.id)


def reviews_needing_a_run(engine: Engine, policy: ReviewsPolicy, limit: int = 20) -> list[tuple[int, str]]:
    """New reviews that call for a reply (negative ones; positive ones too when the policy says so)
    and have no approval run yet, with the run name each gets."""
    query = select(ReviewRow.id, ReviewRow.platform, ReviewRow.platform_review_id).where(
        ReviewRow.status == "new",
        ReviewRow.flow_run_id.is_(None),  # type: ignore[union-attr]
    )
    if not policy.approval.reply_to_positive:
        query = query.where(ReviewRow.triage_negative == sa.true())
    with Session(engine) as session:
        rows = session.exec(query.order_by(ReviewRow.id).limit(limit))
        return [(i, f"{platform} {ref}") for i, platform, ref in rows if i is not None]


def review_sweep(limit: int = 20) -> dict[str, list[int]]:
    """Plain calls, cheap when there is nothing to do (two indexed queries): start an approval run
    for each new review that needs one, and escalate the ones waiting past the policy's window.
    A Prefect error leaves the review as it is, for the next loop."""
    rt = current()
    policy = intake.reviews_policy(rt.settings.policies_dir)
    started: list[int] = []
    for review_id, name in reviews_needing_a_run(rt.engine, policy, limit):
        try:
            start_review_flow(review_id, name)
        except Exception as exc:  # any Prefect/HTTP error: the review stays new, retried next loop
            log.warning(
                "could not start the approval run for review %s (retried next loop): %s", review_id, exc
            )
            continue
        started.append(review_id)
    escalated: list[int] = []
    try:
        escalated = notify.escalate_overdue(
            rt.engine, policy, rt.settings, Renderer(rt.settings.templates_dir)
        )
    except (AftercareError, SQLAlchemyError):
        # Escalation must never hold up orders; a failed transaction claimed nothing, so the next
        # loop retries. (Sending is the outbox's: the notices go out with this round's mail.)
        log.exception("escalating overdue reviews failed; retried next loop")
    return {"started": started, "escalated": escalated, "recovered": recover_replies()}


def recover_replies() -> list[int]:
    """Settle replies left `publishing` past the lease (`publishing.recover_stale`) and publish the
    ones the platform certainly does not have. Returns the review ids settled."""
    rt = current()
    settings = rt.settings
    try:
        outcome = recover_stale(
            rt.engine,
            lambda platform: make_platform(settings, platform),
            timedelta(seconds=settings.review_publish_lease_s),
            utcnow(),
        )
        for review_id, status in outcome.items():
            if status == ReplyStatus.PENDING:
                with Session(rt.engine) as session:
                    review = session.get(ReviewRow, review_id)
                assert review is not None
                publish_reply(
                    rt.engine,
                    review_id,
                    make_platform(settings, review.platform),
                    max_attempts=settings.review_publish_max_attempts,
                    backoff_base_s=settings.review_publish_backoff_base_s,
                )
    except (AftercareError, SQLAlchemyError):
        log.exception("settling replies left publishing failed; retried next loop")
        return []
    return sorted(outcome)
