"""What process-inbox does for reviews on every loop: start one approval run per new review that
needs a reply, escalate the reviews waiting past the policy's window, settle replies a stopped
worker left `publishing`, and (at most once a minute) start a fresh approval run for a review whose
run died (`restart_dead_runs`).

Kept apart from tasks.reviews so that process-inbox, which imports this on every run, does not load
the drafting stack (the openai SDK and the guardrails): ~1 s of CPU per run it would not use."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from uuid import UUID

import sqlalchemy as sa
from prefect.deployments import run_deployment
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from aftercare.errors import AftercareError
from aftercare.models import PRIVATE_REPLY_PLATFORM, ReplyStatus, ReviewDecision, ReviewDraft, utcnow
from aftercare.models import Review as ReviewRow
from aftercare.recovery.mail import PrivateApologyMail
from aftercare.recovery.store import overdue_condition
from aftercare.rendering import Renderer
from aftercare.reviews import intake, links, notify
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.publishing import ReviewPlatform, make_platform, publish_reply, recover_stale
from aftercare.runtime import Runtime, current

log = logging.getLogger(__name__)

REVIEW_DEPLOYMENT = "review-reply/review-reply"


def start_review_flow(
    review_id: int,
    name: str | None = None,
    *,
    after: str | None = None,
    restarts: int = 0,
) -> str:
    """Create the review's approval run (one per review: the idempotency key makes a second call
    return the first run), named `<platform> <platform's review id>`, and remember its id on the
    review. Returns the flow run id.

    The key is the review's random public id (`review-<public id>`), not its database id: Prefect
    keeps keys per flow for good, so a database id would hand a review the run of another
    installation's (or a reset database's) review of the same number. `after` names a run of this
    review that died (`restart_dead_runs`): the new run's key is `review-<public id>-after-<dead
    run id>`, so each dead run is followed by one new run, however many sweeps see it, and the new
    run carries the tag `restart-<restarts>`."""
    engine = current().engine
    with Session(engine) as session:
        review = session.get(ReviewRow, review_id)
    if review is None:
        raise AftercareError(f"no review with id {review_id}")
    if name is None:
        name = f"{review.platform} {review.platform_review_id}"
    key = f"review-{review.public_id}"
    run = run_deployment(
        REVIEW_DEPLOYMENT,
        parameters={"review_id": review_id},
        flow_run_name=name,
        timeout=0,
        idempotency_key=key if after is None else f"{key}-after-{after}",
        tags=[f"restart-{restarts}"] if restarts else None,
        as_subflow=False,
    )
    # What store.set_flow_run does, without importing the store (and with it the drafting stack). A
    # restart replaces only the dead run it follows: a review another sweep moved on keeps its run.
    update = sa.update(ReviewRow).where(ReviewRow.id == review_id)
    if after is not None:
        update = update.where(ReviewRow.flow_run_id == after)
    with engine.begin() as conn:
        conn.execute(update.values(flow_run_id=str(run.id)))
    return str(run.id)


def platform_for(rt: Runtime, platform: str) -> ReviewPlatform:
    """Where a reply of `platform` goes: a recovery case's private apology is mailed to its customer
    (aftercare/recovery/mail.py); any other through `publishing.make_platform`."""
    if platform == PRIVATE_REPLY_PLATFORM:
        return PrivateApologyMail(rt.engine, rt.settings, rt.renderer)
    return make_platform(rt.settings, platform)


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


@contextmanager
def prefect_briefly() -> Iterator[None]:
    """Prefect's API with a short timeout and one retry: the review sweep runs inside process-inbox's
    loop, and orders must not wait minutes behind a Prefect server that answers 503 or not at all
    (its client's defaults: 60 s a request, 5 retries with backoff). What fails is retried by the
    next loop. Found by the fault suite: a Prefect server under load held order processing for six
    minutes."""
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings(
        {PREFECT_API_REQUEST_TIMEOUT: PREFECT_BRIEF_TIMEOUT_S, PREFECT_CLIENT_MAX_RETRIES: 1}
    ):
        yield


PREFECT_BRIEF_TIMEOUT_S = 10.0


def start_new_review_runs(limit: int = 20) -> list[int]:
    """Start an approval run for each new review that needs one (cheap when there is none: one
    indexed query). A Prefect error leaves the review new, for the next turn, and stops this turn:
    Prefect is struggling."""
    rt = current()
    policy = intake.reviews_policy(rt.settings.policies_dir)
    started: list[int] = []
    with prefect_briefly():
        for review_id, name in reviews_needing_a_run(rt.engine, policy, limit):
            try:
                start_review_flow(review_id, name)
            except Exception as exc:  # any Prefect/HTTP error: the reviews stay new, retried next turn
                log.warning(
                    "could not start the approval run for review %s (it and the rest are retried next "
                    "turn): %s",
                    review_id,
                    exc,
                )
                break
            started.append(review_id)
    return started


def check_review_runs() -> tuple[list[int], list[int]]:
    """Restart approval runs whose process died, deliver page decisions that never reached their run.
    Once a minute is plenty (the caller's pace)."""
    with prefect_briefly():
        return restart_dead_runs(), deliver_stored_decisions()


def review_housekeeping() -> dict[str, list[int]]:
    """What process-inbox does on each loop: database work only, no Prefect call (an order never
    waits behind Prefect). Escalate the reviews waiting past the policy's window (the notices go out
    with this round's mail) and settle replies left `publishing` by a dead worker. The approval
    runs themselves are started and restarted by the web app's patrol (aftercare/web/patrol.py)."""
    rt = current()
    policy = intake.reviews_policy(rt.settings.policies_dir)
    escalated: list[int] = []
    try:
        escalated = notify.escalate_overdue(
            rt.engine, policy, rt.settings, Renderer(rt.settings.templates_dir)
        )
    except (AftercareError, SQLAlchemyError):
        # Escalation must never hold up orders; a failed transaction claimed nothing, so the next
        # loop retries.
        log.exception("escalating overdue reviews failed; retried next loop")
    return {
        "escalated": escalated,
        "cases_escalated": escalate_recovery_cases(),
        "recovered": recover_replies(),
    }


def escalate_recovery_cases(now: datetime | None = None) -> list[int]:
    """Recovery cases past their first-answer deadline (business hours): ops told once
    (aftercare/recovery/cases.py). One indexed query when none is due; the policies are read only
    when one is."""
    rt = current()
    now = now or utcnow()
    try:
        with rt.engine.connect() as conn:
            due = conn.execute(sa.select(sa.exists().where(overdue_condition(now)))).scalar()
        if not due:
            return []
        from aftercare.recovery.cases import Recovery

        return Recovery.load(rt.settings, rt.renderer).escalate_overdue(rt.engine, now)
    except (AftercareError, SQLAlchemyError):
        log.exception("escalating overdue recovery cases failed; retried next loop")
        return []


def review_sweep(limit: int = 20) -> dict[str, list[int]]:
    """Everything at once, for tests and one-off calls: start new approval runs, the housekeeping,
    and (at most once a minute) the dead-run check."""
    started = start_new_review_runs(limit)
    done = review_housekeeping()
    restarted: list[int] = []
    delivered: list[int] = []
    global _last_restart_check
    if time.monotonic() - _last_restart_check >= RESTART_CHECK_EVERY_S:
        _last_restart_check = time.monotonic()
        try:
            restarted, delivered = check_review_runs()
        except Exception as exc:  # Prefect unreachable: the next check tries again
            log.warning("could not check the approval runs (retried later): %s", exc)
    return {"started": started, **done, "restarted": restarted, "delivered": delivered}


# -- approval runs whose process died --------------------------------------------------------------

# Reviews whose approval run is still owed work: drafting, waiting, or publishing an approved reply.
UNFINISHED = ("new", "drafting", "awaiting_approval", "approved")
# A run Pending (or Submitting) this long never started: its worker died while submitting it. The
# same limit as the "never started" automation of `aftercare prefect-setup` (aftercare/stack.py).
NEVER_STARTED_S = 120.0
# A review whose runs keep dying is left Crashed in the UI for ops after this many fresh runs.
MAX_RESTARTS = 5
RESTART_CHECK_EVERY_S = 60.0
MAX_RESTARTS_PER_CHECK = 5
_last_restart_check = float("-inf")


def _restarts(tags: list[str] | None) -> int:
    counts = [int(t.removeprefix("restart-")) for t in tags or () if t.removeprefix("restart-").isdigit()]
    return max(counts, default=0)


def restart_dead_runs(
    now: datetime | None = None, *, never_started_s: float = NEVER_STARTED_S, limit: int = 200
) -> list[int]:
    """Give each unfinished review whose approval run died a fresh run, and return their ids.

    A run dies with its process: a worker killed while submitting it leaves it Pending/Submitting
    (marked Crashed here after `never_started_s`); a process killed while drafting or publishing
    leaves it Running until the heartbeat automation marks it Crashed. Nothing in Prefect starts a
    crashed run again, and the review's idempotency key would hand the dead run back, so the review
    would wait for ever. The new run picks up from what the database holds (the draft, the
    decision, the reply), mails no approver twice, and publishes nothing twice (flows/reviews.py).
    A run that ended Failed is not restarted: the flow said why (no approvers, a reply that could
    not be published), and running it again would say the same. One query to Prefect per call."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    rt = current()
    now = now or utcnow()
    with Session(rt.engine) as session:
        rows = session.exec(
            select(ReviewRow.id, ReviewRow.flow_run_id, ReviewRow.platform, ReviewRow.platform_review_id)
            .where(
                ReviewRow.status.in_(UNFINISHED),  # type: ignore[attr-defined]
                ReviewRow.flow_run_id.is_not(None),  # type: ignore[union-attr]
            )
            .order_by(ReviewRow.id.desc())  # type: ignore[union-attr]
            .limit(limit)
        ).all()
    by_run: dict[str, tuple[int, str]] = {}
    for review_id, run_id, platform, ref in rows:
        try:
            by_run[str(UUID(str(run_id)))] = (int(review_id), f"{platform} {ref}")
        except ValueError:
            continue  # not a Prefect run id (a hand-written row): nothing to ask Prefect
    if not by_run:
        return []
    restarted: list[int] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[UUID(r) for r in by_run]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.CRASHED])
                ),
            ),
            limit=limit,
        )
        for run in runs:
            review_id, name = by_run[str(run.id)]
            if run.state_type == StateType.PENDING:
                since = run.state.timestamp if run.state else run.created
                if since is None or (now - since).total_seconds() <= never_started_s:
                    continue  # being submitted: its worker has a moment yet
                client.set_flow_run_state(
                    run.id,
                    Crashed(message=f"{run.state_name} since {since:%H:%M:%S} UTC: its worker died"),
                    force=True,
                )
            n = _restarts(run.tags) + 1
            if n > MAX_RESTARTS:
                log.error(
                    "review %s: its approval run %s died after %s fresh runs; left Crashed for ops "
                    "(a run of review-reply/review-reply with review_id=%s, started in the UI, takes over)",
                    review_id,
                    run.id,
                    MAX_RESTARTS,
                    review_id,
                )
                continue
            if len(restarted) >= MAX_RESTARTS_PER_CHECK:
                break  # the rest next minute: a crowd of fresh runs at once would swamp the server
            new_id = start_review_flow(review_id, name, after=str(run.id), restarts=n)
            log.warning(
                "review %s: its approval run %s (%s) died; fresh run %s",
                review_id,
                run.id,
                run.state_name,
                new_id,
            )
            restarted.append(review_id)
    return restarted


def recover_replies() -> list[int]:
    """Settle replies left `publishing` past the lease (`publishing.recover_stale`) and publish the
    ones the platform certainly does not have. Returns the review ids settled."""
    rt = current()
    settings = rt.settings
    try:
        outcome = recover_stale(
            rt.engine,
            lambda platform: platform_for(rt, platform),
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
                    platform_for(rt, review.platform),
                    max_attempts=settings.review_publish_max_attempts,
                    backoff_base_s=settings.review_publish_backoff_base_s,
                )
    except (AftercareError, SQLAlchemyError):
        log.exception("settling replies left publishing failed; retried next loop")
        return []
    return sorted(outcome)


# A decision stored by the approval page resumes its run at once; this long after, a run still
# waiting did not get it (Prefect was away, or the run had not suspended yet).
DECISION_GRACE_S = 30.0


def deliver_stored_decisions(
    now: datetime | None = None, *, grace_s: float = DECISION_GRACE_S, limit: int = 50
) -> list[int]:
    """Resume each waiting run whose review has a decision stored on its newest draft (made on the
    approval page, aftercare/web/approvals.py) that has not reached the run, and return the review
    ids. The page resumes the run itself right after storing the decision; when Prefect could not
    be reached then, nothing else would, and the approver's decision would wait for ever while the
    review is escalated as undecided. The resumed run reads the stored decision (flows/reviews.py),
    so delivering it twice applies it once. Runs that are not suspended are left alone: a crashed
    one is `restart_dead_runs`'s, and a running one is applying it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    rt = current()
    now = now or utcnow()
    newest = (
        select(sa.func.max(ReviewDraft.id))
        .where(ReviewDraft.review_id == ReviewRow.id)
        .correlate(ReviewRow)
        .scalar_subquery()
    )
    with Session(rt.engine) as session:
        rows = session.exec(
            select(ReviewRow.id, ReviewRow.flow_run_id, ReviewDecision)
            .join(ReviewDecision, ReviewDecision.review_id == ReviewRow.id)  # type: ignore[arg-type]
            .where(
                ReviewRow.status == "awaiting_approval",
                ReviewRow.flow_run_id.is_not(None),  # type: ignore[union-attr]
                ReviewDecision.draft_id == newest,
                ReviewDecision.decided_at <= now - timedelta(seconds=grace_s),
            )
            .order_by(ReviewRow.id)
            .limit(limit)
        ).all()
    delivered: list[int] = []
    if not rows:
        return delivered
    with get_client(sync_client=True) as client:
        for review_id, run_id, decision in rows:
            try:
                run = client.read_flow_run(UUID(str(run_id)))
            except Exception as exc:  # not a run id, or Prefect does not know it
                log.warning("review %s: cannot read its run %s: %s", review_id, run_id, exc)
                continue
            if run.state_type != StateType.PAUSED:
                continue
            response = client.resume_flow_run(run.id, run_input=links.run_input(decision))
            if response.status.value != "ACCEPT":
                log.warning("review %s: resuming run %s was refused: %s", review_id, run.id, response.details)
                continue
            log.warning(
                "review %s: its %s decision (%s, %s) had not reached run %s: resumed",
                review_id,
                decision.action,
                decision.via,
                decision.decided_at,
                run.id,
            )
            delivered.append(int(review_id))
    return delivered
