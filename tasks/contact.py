"""Prefect tasks of timed contact (flows/contact.py): decide what is due through the contact rules
(aftercare/timed.py over aftercare/contact/dispatch.py), send what they let go, and tell Prefect when
the next timed messages go out (a scheduled run named for them). Plus what the web app's patrol
calls once a minute: `needs_dispatch_now` (one indexed query) and `ensure_dispatch_run` (one
Prefect call, idempotent per minute), so a survey already due when it is planned goes within a minute.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.runtime import task_run
from sqlalchemy.engine import Engine
from sqlmodel import Session

from aftercare import timed
from aftercare.contact import dispatch as dispatcher
from aftercare.contact.policy import ContactPolicy
from aftercare.contact.rules import local_label
from aftercare.runtime import current
from aftercare.spine import outbox
from tasks.receipt import BatchFailed, each_concurrently, refs_label
from tasks.review_sweep import prefect_briefly

log = logging.getLogger(__name__)

FLOW_NAME = "send-timed-messages"
DEPLOYMENT = f"{FLOW_NAME}/{FLOW_NAME}"


def kinds_label(policy: ContactPolicy, kinds: list[str]) -> str:
    """'surveys', 'surveys and review requests': a kind by the list it is left by, as people say it."""
    names = sorted({(policy.list_of(k) or k).replace("_", " ") for k in kinds})
    if not names:
        return "timed messages"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def minute_label(at: datetime, zone: ZoneInfo) -> str:
    """'09:00 JST', in the shop's zone."""
    return local_label(at, zone)


# -- deciding and sending ---------------------------------------------------------------------------


def _decide_run_name() -> str:
    now = task_run.parameters.get("now")
    return f"decide due at {now:%Y-%m-%d %H:%M} UTC" if isinstance(now, datetime) else "decide due"


@task(name="decide", task_run_name=_decide_run_name, cache_policy=NO_CACHE)
def decide(now: datetime, limit: int) -> dispatcher.DispatchResult:
    """Decide up to `limit` due timed touchpoints and enqueue the ones the rules let go (committed
    with their verdicts before anything is sent)."""
    return timed.dispatch_due(current(), now, limit=limit)


class TimedSendFailed(BatchFailed):
    """The provider refused timed messages; each reason is the provider's own."""


def _send_run_name() -> str:
    items = task_run.parameters["items"]
    kinds = sorted({item.kind for item in items})
    return f"send {'/'.join(kinds)} " + refs_label(
        [item.order_name or f"outbox-{item.outbox_id}" for item in items]
    )


@task(name="send", task_run_name=_send_run_name, cache_policy=NO_CACHE)
def send(items: list[outbox.Claimed]) -> int:
    """Send claimed timed messages through the outbox (its retries, its record); the count sent. No
    Prefect retries: a retry after an uncertain send could mail a customer twice."""
    rt = current()
    results = each_concurrently(
        items,
        lambda item: outbox.deliver(rt.engine, item.outbox_id, rt.backend, rt.settings),
        rt.settings.send_concurrency,
    )
    failures = [
        f"outbox {r.outbox_id} ({item.kind} {item.order_name}) not sent: {r.error}"
        for item, r in zip(items, results, strict=True)
        if r.status == "failed"
    ]
    sent = sum(1 for r in results if r.status == "sent")
    if failures:
        raise TimedSendFailed(failures, done=sent)
    return sent


@task(name="send review invitations", cache_policy=NO_CACHE)
def invite(now: datetime) -> list[str]:
    """Send the review invitations a platform mails for us (Trustpilot; aftercare/reviews/
    invitations.py) that are due; returns what ops must look at (failed, uncertain). No Prefect
    retries: a retry after an uncertain send could invite a customer twice."""
    results = timed.send_review_invitations(current(), now)
    return [
        f"review invitation {r.invitation_id} ({r.order_name}) {r.status}: {r.reason}"
        for r in results
        if r.status in ("failed", "uncertain")
    ]


def claim(outbox_ids: list[int]) -> list[outbox.Claimed]:
    """Claim exactly the rows this run enqueued (one another worker claimed first is left to it)."""
    if not outbox_ids:
        return []
    return outbox.claim_due(
        current().engine, len(outbox_ids), worker=socket.gethostname()[:40], ids=outbox_ids
    )


def publish_summary(result: dispatcher.DispatchResult, title: str) -> None:
    """One table per run: what went, what waits until when, what was not sent and why."""
    lines = [f"# {title}", "", "| outcome | kind | zone | reason | count |", "|---|---|---|---|---|"]
    rows = Counter(
        (d.outcome, d.kind, d.zone or "", d.line if d.outcome != "send" else "")
        for d in result.sent + result.held + result.skipped + result.failed
    )
    for (outcome, kind, zone, line), n in sorted(rows.items()):
        lines.append(f"| {outcome} | {kind} | {zone} | {line.replace('|', '/')} | {n} |")
    if not rows:
        lines.append("| nothing due | | | | 0 |")
    create_markdown_artifact(markdown="\n".join(lines) + "\n", key="timed-contact", description=title)


def publish_survey_report(now: datetime, weeks: int = 8) -> None:
    """The survey report (`aftercare surveys report`: response rate, CSAT or NPS, comments, by week
    and product) as an artifact after each dispatch, weeks counted in the shop's zone."""
    from aftercare.surveys.report import survey_report

    rt = current()
    contact, _shop = timed.policies_of(rt)
    with Session(rt.engine) as session:
        report = survey_report(session, now, weeks, tz=contact.shop_timezone)
    create_markdown_artifact(
        markdown=report.as_markdown(), key="survey-report", description=f"surveys, last {weeks} weeks"
    )


# -- the schedule Prefect shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledRun:
    flow_run_id: str
    name: str
    at: datetime
    count: int


def schedule_next(now: datetime) -> ScheduledRun | None:
    """Create the one scheduled run of this deployment at the next send time (the earliest due time
    or hold among planned timed touchpoints with a composer, to the minute), named for what it will
    send: 'surveys at 09:00 JST: 124'. Idempotent per minute (the key is the time). None when nothing
    is planned. Prefect errors are the caller's to log: the next run schedules again."""
    rt = current()
    contact, _shop = timed.policies_of(rt)
    kinds = timed.composed_kinds(rt)
    with Session(rt.engine) as session:
        nxt = dispatcher.next_send(session, now, kinds)
    if nxt is None:
        return None
    name = f"{kinds_label(contact, list(nxt.by_kind))} at {minute_label(nxt.at, contact.tz)}: {nxt.count}"
    with prefect_briefly():
        run = run_deployment(
            DEPLOYMENT,
            scheduled_time=nxt.at,
            flow_run_name=name,
            timeout=0,
            idempotency_key=f"timed-contact-at-{nxt.at.astimezone(UTC):%Y-%m-%dT%H:%MZ}",
            as_subflow=False,
        )
        if run.name != name and run.state is not None and run.state.is_scheduled():
            # The run of that minute exists (the key): more was planned for it since; say so.
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                client.update_flow_run(run.id, name=name)
    return ScheduledRun(str(run.id), name, nxt.at, nxt.count)


def needs_dispatch_now(engine: Engine, now: datetime) -> bool:
    """Whether a timed touchpoint with a composer is due and was never decided (a survey planned
    when it was already due: a late delivered event). One indexed query; for the web app's patrol."""
    kinds = sorted(timed.default_composers())
    with Session(engine) as session:
        return dispatcher.needs_dispatch_now(session, now, kinds)


def ensure_dispatch_run(now: datetime) -> str | None:
    """Start a run of send-timed-messages now, at most one per minute (the idempotency key is the
    minute): short timeouts, one retry (`prefect_briefly`). Returns the flow run id, or None when
    Prefect could not be reached (logged; the patrol asks again next minute, the hourly run sweeps)."""
    minute = now.astimezone(UTC).replace(second=0, microsecond=0)
    try:
        with prefect_briefly():
            run = run_deployment(
                DEPLOYMENT,
                timeout=0,
                idempotency_key=f"timed-contact-now-{minute:%Y-%m-%dT%H:%MZ}",
                as_subflow=False,
            )
    except Exception as exc:  # any Prefect or network failure: best effort, said in the log
        log.warning("could not start %s: %s: %s", DEPLOYMENT, type(exc).__name__, exc)
        return None
    return str(run.id)


def rename_run(flow_run_id: str, name: str) -> None:
    """Name this run for what it did ('surveys sent at 09:00 JST: 124'); best effort."""
    from prefect.client.orchestration import get_client

    try:
        with prefect_briefly(), get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, name=name)
    except Exception as exc:  # the run's result stands whatever its name
        get_run_logger().warning("could not rename the run to %r: %s", name, exc)
