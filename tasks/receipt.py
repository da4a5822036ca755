"""Prefect tasks for the receipt flow: thin wrappers over aftercare/, named so ops can find each
order by its number in the UI (task-run names and artifact keys)."""

from __future__ import annotations

import re
import socket
from dataclasses import asdict
from datetime import timedelta

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from aftercare import inbox, outbox, processing, shipping, timeline
from aftercare.errors import AftercareError
from aftercare.models import OutboxMessage
from aftercare.runtime import current
from aftercare.shopify import FULFILLMENT_TOPICS, REFUND_TOPICS

TIMELINE_TOPICS = FULFILLMENT_TOPICS | REFUND_TOPICS | {"orders/cancelled"}


class SendFailed(AftercareError):
    """The provider refused a message; the reason is the provider's own."""


def artifact_key(order_name: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", order_name.lower()).strip("-") or "order"
    return f"order-{slug}-{kind.replace('_', '-')}"


def preview_markdown(message: OutboxMessage) -> str:
    """What ops see in the UI: status, the provider's reason when it failed, and the text sent."""
    fence = "`" * 3
    body = message.text_body.replace(fence, "'''")
    provider = f" (provider id `{message.provider_message_id}`)" if message.provider_message_id else ""
    lines = [
        f"# {message.order_name}: {message.kind}",
        "",
        f"- status: **{message.status}**{provider}",
        f"- to: {message.to_email}",
        f"- subject: {message.subject}",
        f"- outbox id: {message.id}, attempts: {message.attempts}" + (", TEST order" if message.is_test else ""),
    ]
    if message.last_error:
        lines.append(f"- last error: {message.last_error}")
    lines += ["", fence + "text", body, fence, ""]
    return "\n".join(lines)


@task(name="claim-inbox", retries=3, retry_delay_seconds=[1, 5, 15])
def claim_inbox(batch_size: int) -> list[inbox.ClaimedRow]:
    engine = current().engine
    # Rows that waited for an order which has arrived since (guards the arrive-while-parking race).
    shipping.release_ready(engine)
    return inbox.claim_batch(engine, batch_size)


@task(name="receive", task_run_name="receive {row.topic} {row.ref}", retries=2, retry_delay_seconds=[1, 5])
def receive(row: inbox.ClaimedRow) -> processing.Outcome:
    """Turn one delivery into order state and its confirmation (written to the outbox, not sent)."""
    rt = current()
    try:
        outcome = processing.process_row(rt, row.inbox_id)
    except Exception as exc:
        inbox.mark_failed(rt.engine, row.inbox_id, f"{type(exc).__name__}: {exc}")
        raise
    if outcome.order_name and outcome.status == "done" and outcome.topic in TIMELINE_TOPICS:
        # After a shipment, refund or cancellation ops want the whole story of the order in one place.
        tl = timeline.order_timeline(rt.engine, outcome.order_name, rt.policies.delivery)
        create_markdown_artifact(
            key=artifact_key(outcome.order_name, "timeline"),
            markdown=timeline.render_markdown(tl, rt.policies.shipping.tz),
            description=f"timeline of {outcome.order_name} after {outcome.topic}",
        )
    return outcome


@task(name="claim-outbox", retries=3, retry_delay_seconds=[1, 5, 15])
def claim_outbox(limit: int) -> list[outbox.Claimed]:
    rt = current()
    recovered = outbox.recover_stale(rt.engine, rt.backend, timedelta(seconds=rt.settings.send_lease_s))
    if recovered:
        get_run_logger().warning("settled messages left mid-send by a stopped worker: %s", recovered)
    return outbox.claim_due(rt.engine, limit, worker=socket.gethostname()[:40])


@task(name="send", task_run_name="send {item.kind} {item.order_name}")
def send(item: outbox.Claimed) -> dict[str, object]:
    """Send one claimed message. No Prefect retries: `deliver` retries transient errors itself,
    and a task retry after an uncertain send could mail the customer twice."""
    rt = current()
    result = outbox.deliver(rt.engine, item.outbox_id, rt.backend, rt.settings)
    message = outbox.get(rt.engine, item.outbox_id)
    if message is not None and item.order_name:
        # Attached to this task run (and so to its flow run); searchable by order number.
        create_markdown_artifact(
            key=artifact_key(item.order_name, item.kind),
            markdown=preview_markdown(message),
            description=f"{item.kind} for {item.order_name}: {message.status}",
        )
    if result.status == "failed":
        raise SendFailed(f"outbox {item.outbox_id} ({item.kind} {item.order_name}) not sent: {result.error}")
    return asdict(result)
