"""Prefect tasks for the receipt flow: thin wrappers over aftercare/, named so ops can find each
order by its number in the UI (task-run names, `order:<name>` tags, artifact keys)."""

from __future__ import annotations

import re
import socket
from dataclasses import asdict
from datetime import timedelta

from prefect import task
from prefect.artifacts import create_markdown_artifact

from aftercare import inbox, outbox, processing
from aftercare.errors import AftercareError
from aftercare.runtime import current


class SendFailed(AftercareError):
    """The provider refused a message; the reason is the provider's own."""


def artifact_key(order_name: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", order_name.lower()).strip("-") or "order"
    return f"order-{slug}-{kind.replace('_', '-')}"


@task(name="claim-inbox", retries=3, retry_delay_seconds=[1, 5, 15])
def claim_inbox(batch_size: int) -> list[inbox.ClaimedRow]:
    return inbox.claim_batch(current().engine, batch_size)


@task(name="receive", task_run_name="receive {row.topic} {row.ref}", retries=2, retry_delay_seconds=[1, 5])
def receive(row: inbox.ClaimedRow) -> processing.Outcome:
    """Turn one delivery into order state and its confirmation (written to the outbox, not sent)."""
    rt = current()
    try:
        outcome = processing.process_row(rt, row.inbox_id)
    except Exception as exc:
        inbox.mark_failed(rt.engine, row.inbox_id, f"{type(exc).__name__}: {exc}")
        raise
    if outcome.outbox_status == "pending" and outcome.order_name and outcome.text_preview:
        create_markdown_artifact(
            key=artifact_key(outcome.order_name, "confirmation"),
            markdown=_preview_markdown(outcome),
            description=f"Confirmation for {outcome.order_name} as written to the outbox",
        )
    return outcome


def _preview_markdown(outcome: processing.Outcome) -> str:
    flags = ", ".join(outcome.flags) or "none"
    body = (outcome.text_preview or "").replace("```", "'''")
    return (
        f"# {outcome.order_name}: confirmation\n\n"
        f"- outbox id: {outcome.outbox_id}\n- subject: {outcome.subject}\n- order flags: {flags}\n\n"
        f"```text\n{body}\n```\n"
    )


@task(name="claim-outbox", retries=3, retry_delay_seconds=[1, 5, 15])
def claim_outbox(limit: int) -> list[outbox.Claimed]:
    rt = current()
    recovered = outbox.recover_stale(rt.engine, rt.backend, timedelta(seconds=rt.settings.send_lease_s))
    if recovered:
        from prefect import get_run_logger

        get_run_logger().warning("settled messages left mid-send by a stopped worker: %s", recovered)
    return outbox.claim_due(rt.engine, limit, worker=socket.gethostname()[:40])


@task(name="send", task_run_name="send {item.kind} {item.order_name}")
def send(item: outbox.Claimed) -> dict[str, object]:
    """Send one claimed message. No Prefect retries: `deliver` retries transient errors itself,
    and a task retry after an uncertain send could mail the customer twice."""
    rt = current()
    result = outbox.deliver(rt.engine, item.outbox_id, rt.backend, rt.settings)
    if result.status == "failed":
        raise SendFailed(f"outbox {item.outbox_id} ({item.kind} {item.order_name}) not sent: {result.error}")
    return asdict(result)
