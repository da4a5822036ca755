"""Serve aftercare's deployments from this process (what `make up` runs). Each run executes in a
subprocess. process-inbox is woken by the web app (after each delivery, and by its patrol when work
falls due: aftercare/due.py); its schedule is a safety sweep every 5 min, so an idle system makes no
empty runs and nothing depends on a wake arriving. Timed contact (send-timed-messages) runs at each
next send time it schedules itself, and hourly as a safety net. review-reply runs are created per
review by the web app's patrol and resumed by approvers."""

from __future__ import annotations

import os

from prefect import serve

from flows.contact import send_timed_messages
from flows.receipt import process_inbox
from flows.reviews import review_reply

# How early the runner takes a scheduled run (Prefect's default: 10 s). A run taken early holds the
# deployment's concurrency slot, Pending, until its scheduled time (Prefect delays its Running until
# then): a sweep, or a run waiting for the slot whose turn came, taken this way kept the slot from the
# waker's run for up to 10 s while deliveries waited (issue 8: Pending to Running took 9-13 s for
# such runs, 2-3 s for a woken one). The runner looks every second (PREFECT_RUNNER_POLL_FREQUENCY).
PREFETCH_SECONDS = 1


def main() -> None:
    sweep_seconds = int(os.environ.get("AFTERCARE_SWEEP_SECONDS", "300"))
    # Timed contact schedules its own next run at the next send time; this is only the safety net.
    timed_seconds = int(os.environ.get("AFTERCARE_TIMED_CONTACT_SECONDS", "3600"))
    serve(
        process_inbox.to_deployment(
            name="process-inbox",
            interval=sweep_seconds,
            concurrency_limit=int(os.environ.get("AFTERCARE_WORKERS", "1")),
            description="Receive webhooks from the inbox and send what the outbox owes. Woken by the web "
            "app after each delivery and when work falls due; also every 5 min as a safety sweep.",
            tags=["aftercare"],
        ),
        # Surveys (and each timed kind with a composer) when the contact rules let them go. Each run
        # leaves one scheduled run at the next send time, named for what it will send; the web app's
        # patrol starts one within a minute for a survey planned already due (tasks.contact).
        send_timed_messages.to_deployment(
            name="send-timed-messages",
            interval=timed_seconds,
            concurrency_limit=1,
            description="Send surveys when the contact rules let them go, in the customer's own time "
            "(held in quiet hours and over the frequency caps, skipped when refused, cancelled or stale); "
            "each run is named for what it sent, and schedules the next at the next send time.",
            tags=["aftercare", "contact"],
        ),
        # One run per review awaiting approval: started by the web app's patrol (tasks.review_sweep),
        # suspended while it waits for a person, resumed from the UI form or the API.
        review_reply.to_deployment(
            name="review-reply",
            description="Draft a reply to a review, wait for an approver (approve, edit, redraft or reject), "
            "publish it once.",
            tags=["aftercare", "reviews"],
        ),
        prefetch_seconds=PREFETCH_SECONDS,
    )


if __name__ == "__main__":
    main()
