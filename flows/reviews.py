"""A reply to a review is drafted, checked, and waits for a person: they approve it, edit it, ask for
a redraft or reject it, on our approval page, in the Prefect UI or through the API; only then is it
published, once.

One flow run per review (run name `<platform> <review id>`). The run suspends while it waits, so
nothing runs for the hours an approver takes; when resumed it runs again from the top. Every step
before the suspend is therefore idempotent: drafts, decisions and the reply live in our database,
and the flow picks up from what is stored (the newest draft, the decision on it). Each wait uses a
pause key `draft-<draft id>-<n>`: a resumed run asks for the newest key it used and gets the
approver's input back; an input that cannot be applied is shown as an error in a fresh form
(`n + 1`), and the run keeps waiting.

Approvers decide on the approval page (each has a signed link in the request mail,
`aftercare.web.approvals`: the page stores the decision, then resumes the run with the same input
as the form) or in Prefect's form (ops). A draft takes one decision, the first stored, and every
decision says where it was made (`via`: page or prefect).

The flow is async only because an async flow run ends ~1 s sooner than a sync one (Prefect 3.8's
sync engine joins a heartbeat thread that sleeps in 1 s steps), and every resume is a run's start
and end; the steps inside are plain blocking calls, one review at a time."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.flow_runs import asuspend_flow_run
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from aftercare.models import PRIVATE_REPLY_PLATFORM, DecisionVia, ReviewDraft, utcnow
from aftercare.reviews import store
from aftercare.reviews.approval import DecisionRefused, Resolution, approval_markdown, resolve_decision
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.publishing import public_page_url
from aftercare.runtime import Runtime, current
from tasks.reviews import (
    approval_deadline,
    decision_form,
    decision_on,
    draft_context,
    draft_reply,
    guarded_draft,
    notify_approvers,
    publish,
    reviews_policy,
)

OPEN = ("new", "drafting", "awaiting_approval")


def _run_name() -> str:
    review_id = flow_run.parameters["review_id"]
    review = store.get_review(current().engine, review_id)
    # The platform's own review id: what an approver sees on the platform and searches for here.
    return f"{review.platform} {review.platform_review_id}" if review is not None else f"review {review_id}"


def _used_pause_keys(flow_run_id: str) -> set[str]:
    # Read fresh from the API: the keys this run has already waited on (and been resumed from).
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
    return set(run.empirical_policy.pause_keys or ())


async def await_decision(
    rt: Runtime, policy: ReviewsPolicy, review_id: int, draft: ReviewDraft, run_id: str
) -> Resolution | None:
    """Ask for a decision on `draft` and return it once it can be applied. Suspends the run (the
    process exits) until an approver resumes it; an input that cannot be applied is refused with
    its reason shown in a new form, and the run waits again. None when the draft was decided on the
    approval page (stored by the page) before the run got to wait."""
    logger = get_run_logger()
    prefix = f"draft-{draft.id}-"
    used = [
        int(k[len(prefix) :])
        for k in _used_pause_keys(run_id)
        if k.startswith(prefix) and k[len(prefix) :].isdigit()
    ]
    n = max(used) if used else 0
    resumed = bool(used)  # the newest used key has fired: its input is waiting for us
    error: str | None = None
    guarded = guarded_draft(rt, draft, policy)
    timeout = int(policy.approval.expire_after_hours * 3600)
    while True:
        if not resumed and n == 0:
            # The first request for this draft: the clock starts (the first request's time is kept:
            # the SLA counts from it, across redrafts) and the approvers' mails are owed, together;
            # a re-run finds them owed already and mails nobody twice.
            state = notify_approvers(review_id, draft.id, run_id, return_state=True)
            if not state.is_completed():
                logger.error(
                    "approvers could not be notified (%s); the run waits in the UI anyway", state.message
                )
                store.set_status(
                    rt.engine, review_id, "awaiting_approval", only_from=OPEN, approval_requested_at=utcnow()
                )
        ctx = draft_context(rt, review_id, policy)
        markdown = approval_markdown(
            ctx.review,
            order=ctx.request.order,  # type: ignore[arg-type]
            guarded=guarded,
            approval=policy.approval,
            error=error,
            deadline=approval_deadline(ctx.review, policy),
        )
        form_type = decision_form(markdown, draft.text)
        if not resumed and store.decision_on_draft(rt.engine, draft.id) is not None:
            # An approver decided on the approval page while this run was getting ready to wait: the
            # page could not resume a run that was not suspended yet, so the decision is applied now.
            return None
        # Suspends (and exits) on a fresh key; returns the input at once for a key that has fired.
        form = await asuspend_flow_run(wait_for_input=form_type, key=f"{prefix}{n}", timeout=timeout)
        try:
            return resolve_decision(
                form, draft_id=draft.id, guarded=guarded, approval=policy.approval, context=ctx.guardrails
            )
        except DecisionRefused as exc:
            error = str(exc)
            logger.warning("decision on draft %s refused, waiting for another: %s", draft.id, error)
            n, resumed = n + 1, False


@flow(name="review-reply", flow_run_name=_run_name, log_prints=False)
async def review_reply(review_id: int) -> State:
    """Draft a reply to the review, wait for an approver's decision, and apply it: publish the
    approved (or edited) reply once, draft again with their instructions, or reject."""
    rt = current()
    logger = get_run_logger()
    policy = reviews_policy(rt)
    review = store.get_review(rt.engine, review_id)
    if review is None:
        return Failed(message=f"review {review_id} does not exist")
    if not policy.approval.approvers:
        return Failed(message="no approvers: list them under approval.approvers in policies/reviews.yaml")
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else None
    if run_id and review.flow_run_id != run_id:
        store.set_flow_run(rt.engine, review_id, run_id)

    while True:
        review = store.get_review(rt.engine, review_id)
        assert review is not None
        if review.status in ("rejected", "published"):
            return await _finished(rt, review_id, review.status)
        if review.status != "approved":
            draft = store.latest_draft(rt.engine, review_id)
            if draft is None:
                store.set_status(rt.engine, review_id, "drafting", only_from=("new", "drafting"))
                draft_reply(review_id)
                continue
            assert draft.id is not None
            decision = decision_on(rt.engine, review_id, draft.id)
            if decision is None:
                if run_id is None:
                    return Failed(message="review-reply waits for an approver: run it as a deployment")
                resolution = await await_decision(rt, policy, review_id, draft, run_id)
                if resolution is None:
                    decision = decision_on(rt.engine, review_id, draft.id)
                    assert decision is not None
                else:
                    # One decision per draft: when the approval page recorded one first, it stands.
                    decision = store.record_decision(
                        rt.engine,
                        review_id,
                        approver=resolution.approver,
                        action=resolution.action,
                        text=resolution.text,
                        instructions=resolution.instructions,
                        reason=resolution.reason,
                        guardrails=resolution.checks,
                        draft_id=draft.id,
                        via=DecisionVia.PREFECT,
                    )
                    if decision.via != DecisionVia.PREFECT:
                        logger.warning(
                            "review %s: %s's %s through Prefect came second; %s's %s on the approval "
                            "page stands",
                            review_id,
                            resolution.approver,
                            resolution.action,
                            decision.approver,
                            decision.action,
                        )
                logger.info(
                    "review %s: %s by %s (via %s)",
                    review_id,
                    decision.action,
                    decision.approver,
                    decision.via,
                )
            if decision.action == "redraft":
                store.set_status(rt.engine, review_id, "drafting", only_from=OPEN)
                draft_reply(review_id, instructions=decision.instructions)
                continue
            if decision.action == "reject":
                store.set_status(
                    rt.engine, review_id, "rejected", only_from=OPEN, decided_at=decision.decided_at
                )
                continue
            assert decision.text is not None
            store.enqueue_reply(rt.engine, review_id, decision.text, decision.approver)
            store.set_status(rt.engine, review_id, "approved", only_from=OPEN, decided_at=decision.decided_at)
        result = publish(review_id)
        if result["status"] != "published":
            return Failed(
                message=f"review {review_id}: the approved reply is {result['status']}: {result['error']} "
                "(it is never posted twice; see the review_replies row)"
            )
        return await _finished(rt, review_id, "published")


async def _finished(rt: Runtime, review_id: int, outcome: str) -> State:
    figures = store.sla(rt.engine, review_id)
    review = store.get_review(rt.engine, review_id)
    # Where the published reply can be seen on our own page (by the review's unguessable public id).
    # A recovery case's apology was mailed to its customer: it has no public page.
    public = review is not None and review.platform != PRIVATE_REPLY_PLATFORM
    page = f" at {public_page_url(rt.settings, review)}" if outcome == "published" and public else ""
    await acreate_markdown_artifact(
        key=f"review-{review_id}-sla",
        markdown="\n".join(
            [f"# review {review_id}: {outcome}{page}", "", "| figure | value |", "|---|---|"]
            + [f"| {k} | {v} |" for k, v in figures.items()]
        ),
        description=f"SLA figures of review {review_id}",
    )
    waited = figures.get("approval_wait_s")
    return Completed(message=f"review {review_id}: {outcome}{page} (approval wait {waited} s)")
