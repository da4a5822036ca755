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
    )


if __name__ == "__main__":
    main()
