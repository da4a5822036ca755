"""Timed contact as its own flow: surveys and review requests go out when the contact rules
let them, in the customer's own time; each run is named for what it sent ("surveys sent at 09:00
JST: 124"), and leaves one scheduled run at the next send time named for what it will send
("surveys at 09:00 JST: 124"), so the Prefect UI shows when the next timed messages go out and how
many. Its own deployment: a failure here never touches order receipt (process-inbox)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from aftercare import timed
from aftercare.contact.dispatch import DispatchResult
from aftercare.runtime import current
from tasks.contact import (
    BatchFailed,
    claim,
    decide,
    invite,
    kinds_label,
    minute_label,
    publish_summary,
    publish_survey_report,
    rename_run,
    schedule_next,
    send,
)
from tasks.receipt import chunked


@flow(name="send-timed-messages", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=False)
def send_timed_messages(
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 500,
    max_seconds: Annotated[float, Field(gt=0, le=3600)] = 900.0,
    now: datetime | None = None,
) -> State:
    """Decide every due survey (and each timed kind with a composer) by the contact rules, send the
    ones they let go, hold the rest until their moment, skip those they end; then schedule the next
    run at the next send time. `now` is for tests and replays; by default the clock's."""
    logger = get_run_logger()
    rt = current()
    contact, _shop = timed.policies_of(rt)
    started = time.monotonic()
    total = DispatchResult()
    sent, failures = 0, []
    first_now = None
    while time.monotonic() - started < max_seconds:
        at = (now or datetime.now(UTC)).astimezone(UTC)
        first_now = first_now or at
        result = decide(at, batch_size)
        for part in ("sent", "held", "skipped", "failed"):
            getattr(total, part).extend(getattr(result, part))
        claimed = claim(result.outbox_ids)
        futures = [send.submit(c) for c in chunked(claimed, max_size=50, target_tasks=8)]
        for future in futures:
            future.wait()
            if future.state.is_completed():
                sent += future.result()
                continue
            error = future.state.result(raise_on_failure=False)
            if isinstance(error, BatchFailed):
                sent += error.done
                failures.extend(error.failures)
            else:
                failures.append(future.state.message or "send failed")
        failures.extend(f"touchpoint {d.touchpoint_id} ({d.order_name}): {d.line}" for d in result.failed)
        decided = len(result.sent) + len(result.held) + len(result.skipped)
        if decided == 0 or decided + len(result.failed) < batch_size:
            break
    at = first_now or datetime.now(UTC)
    try:  # review requests that go to Trustpilot: its invitations, after the verdicts that queued them
        failures.extend(invite((now or datetime.now(UTC)).astimezone(UTC)))
    except Exception as exc:  # the invitations wait for the next run; the mails above stand
        failures.append(f"review invitations: {type(exc).__name__}: {exc}")
    what = kinds_label(contact, [d.kind for d in total.sent]) if total.sent else "timed messages"
    name = f"{what} sent at {minute_label(at, contact.tz)}: {sent}"
    summary = f"{name}; " + total.summary()
    publish_summary(total, name)
    try:
        publish_survey_report(at)
    except Exception as exc:  # a report that cannot be built never fails the sending
        logger.warning("could not publish the survey report: %s: %s", type(exc).__name__, exc)
    run_id = flow_run.get_id()
    if run_id:
        rename_run(str(run_id), name)
    try:
        nxt = schedule_next(now or datetime.now(UTC))
        summary += f"; next: {nxt.name}" if nxt else "; nothing more planned"
    except Exception as exc:  # Prefect away: the hourly run schedules again
        logger.warning("could not schedule the next run: %s: %s", type(exc).__name__, exc)
        summary += "; next run not scheduled (Prefect unreachable), the hourly run will"
    logger.info(summary)
    if failures:
        return Failed(message=summary + ": " + " | ".join(failures[:5]))
    return Completed(message=summary)
