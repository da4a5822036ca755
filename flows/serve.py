"""Serve aftercare's deployments from this process (what `make up` runs). Each run executes in a
subprocess; the inbox sweep runs every 30 s so nothing depends on a wake arriving. review-reply runs
are created per review by process-inbox and resumed by approvers."""

from __future__ import annotations

import os

from prefect import serve

from flows.receipt import process_inbox
from flows.reviews import review_reply


def main() -> None:
    sweep_seconds = int(os.environ.get("AFTERCARE_SWEEP_SECONDS", "30"))
    serve(
        process_inbox.to_deployment(
            name="process-inbox",
            interval=sweep_seconds,
            concurrency_limit=int(os.environ.get("AFTERCARE_WORKERS", "1")),
            description="Receive webhooks from the inbox and send what the outbox owes. Woken by the web "
            "app after each delivery; also runs on a schedule as the sweep.",
            tags=["aftercare"],
        ),
        # One run per review awaiting approval: started by process-inbox (tasks.reviews.start_review_flow),
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
