"""Prefect tasks for the receipt flow: thin wrappers over aftercare/, named so ops can find each
order by its number in the UI (task-run names and artifact keys)."""

from __future__ import annotations

import logging
import math
import re
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import timedelta
from typing import TypeVar

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.runtime import task_run
from sqlalchemy.exc import SQLAlchemyError

from aftercare import processing
from aftercare.errors import AftercareError
from aftercare.models import OutboxMessage
from aftercare.orders import shipping, timeline
from aftercare.orders.shopify import FULFILLMENT_EVENT_TOPICS, FULFILLMENT_TOPICS, ORDER_TOPICS, REFUND_TOPICS
from aftercare.runtime import Runtime, current
from aftercare.spine import addresses, inbox, outbox
from aftercare.spine.db import get_many, session_scope
from tasks.artifacts import post_markdown

T = TypeVar("T")
R = TypeVar("R")

TIMELINE_TOPICS = FULFILLMENT_TOPICS | FULFILLMENT_EVENT_TOPICS | REFUND_TOPICS | {"orders/cancelled"}


class BatchFailed(AftercareError):
    """Some items of a batch task failed; `failures` holds one reason per failed item, `done` counts
    the items that went through, so the flow can report both."""

    def __init__(self, failures: list[str], done: int):
        super().__init__("; ".join(failures))
        self.failures = failures
        self.done = done


class SendFailed(BatchFailed):
    """The provider refused messages; each reason is the provider's own."""


class ReceiveFailed(BatchFailed):
    """Processing deliveries raised; each row is marked failed with its reason and retried later."""


def each_concurrently(items: list[T], fn: Callable[[T], R], max_workers: int) -> list[R]:
    """fn over items, up to `max_workers` at a time (they wait on the network: the provider, the
    3PL), results in the items' order. Every item is attempted even when one raises (a claimed
    message left unattempted would later look like a dead worker's); the first error is raised
    after all have run."""
    if max_workers <= 1 or len(items) <= 1:
        results: list[R] = []
        errors: list[BaseException] = []
        for item in items:
            try:
                results.append(fn(item))
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return results
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="each") as pool:
        futures = [pool.submit(fn, item) for item in items]
    return [future.result() for future in futures]  # all done: the pool's exit waited for them


def artifact_key(order_name: str, kind: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", order_name.lower()).strip("-") or "order"
    return f"order-{slug}-{kind.replace('_', '-')}"


def _address_note(address: str) -> str:
    """The flag of an address that is attempted but unusual (the provider may refuse it)."""
    verdict = addresses.judge(address)
    return f" (**{verdict.flag}**: {verdict.reason})" if verdict.flag else ""


def preview_markdown(message: OutboxMessage) -> str:
    """What ops see in the UI: status, the provider's reason when it failed, and the text sent.
    Staff mails (approval requests, alerts) have no order."""
    fence = "`" * 3
    body = message.text_body.replace(fence, "'''")
    provider = f" (provider id `{message.provider_message_id}`)" if message.provider_message_id else ""
    lines = [
        f"# {message.order_name or 'staff mail'}: {message.kind}",
        "",
        f"- status: **{message.status}**{provider}",
        f"- to: {message.to_email}" + _address_note(message.to_email),
        f"- subject: {message.subject}",
        f"- outbox id: {message.id}, attempts: {message.attempts}"
        + (", TEST order" if message.is_test else ""),
    ]
    if message.last_error:
        lines.append(f"- last error: {message.last_error}")
    lines += ["", fence + "text", body, fence, ""]
    return "\n".join(lines)


def publish_previews(messages: list[OutboxMessage]) -> None:
    """Attach what was sent (or why not) to the task run, posted off the drain (tasks/artifacts.py).
    One artifact per order, keyed by its number, while volume is low; under load one artifact per
    batch holding every preview, because an artifact costs the Prefect server ~30 ms of CPU
    (measured), which at 20 orders/s is a core of its own."""
    if len(messages) == 1 and messages[0].order_name:
        [message] = messages
        post_markdown(
            key=artifact_key(message.order_name or "", message.kind),
            markdown=preview_markdown(message),
            description=f"{message.kind} for {message.order_name}: {message.status}",
        )
    elif messages:
        post_markdown(
            markdown="\n\n---\n\n".join(preview_markdown(m) for m in messages),
            description=f"{len(messages)} messages: "
            + " ".join(f"{m.order_name or m.id}={m.status}" for m in messages),
        )


# The claims are plain calls, not tasks: they run every loop of a draining flow, and a task run
# costs the Prefect server ~50 ms of CPU (measured) for a query that takes one. A claim that raises
# fails the run; the rows stay claimable and the next run (wake or sweep) takes them.
def claim_inbox(batch_size: int) -> list[inbox.ClaimedRow]:
    rt = current()
    # Rows that waited for an order which has arrived since (guards the arrive-while-parking race).
    shipping.release_ready(rt.engine)
    return inbox.claim_batch(rt.engine, batch_size, inbox.Retry.from_settings(rt.settings))


def chunked(items: list[T], *, max_size: int = 25, target_tasks: int = 4) -> list[list[T]]:
    """Split work into task-sized pieces: one item per task when there are few (each order then has
    a task run of its own, named by its number), up to `max_size` per task under load. A Prefect task
    run costs the server ~50 ms of CPU (measured), so at Black-Friday rates tasks must carry batches."""
    size = min(max_size, max(1, math.ceil(len(items) / target_tasks)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def receive_plan(
    rows: list[inbox.ClaimedRow],
    *,
    customers: dict[int, str] | None = None,
    max_size: int = 25,
    target_tasks: int = 4,
) -> tuple[list[list[inbox.ClaimedRow]], list[list[inbox.ClaimedRow]]]:
    """(chunks that may be received at the same time, chunks to receive one after another, after them).

    Without `customers` (SQLite, a single writer) everything is received in arrival order. With it
    (PostgreSQL), order deliveries go into parallel lanes: every delivery of one order, and every
    order of one customer (`customers`: inbox id -> customer key), in the same lane and in arrival
    order, so nothing that must be sequential races (an order's states; a customer's Nth purchase).
    Fulfillments, refunds and reviews follow, in order, once the lanes are done."""
    if customers is None:
        return [], chunked(rows, max_size=max_size, target_tasks=target_tasks)
    order_rows = [row for row in rows if row.topic in ORDER_TOPICS]
    rest = [row for row in rows if row.topic not in ORDER_TOPICS]
    # Union-find over the keys that tie deliveries together: the order, and the customer.
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for row in order_rows:
        if row.inbox_id in customers:
            parent[find("order:" + row.ref)] = find(customers[row.inbox_id])
    groups: dict[str, list[inbox.ClaimedRow]] = {}
    for row in order_rows:
        groups.setdefault(find("order:" + row.ref), []).append(row)
    lanes_n = min(len(groups), max(target_tasks, math.ceil(len(order_rows) / max_size)))
    lanes: list[list[inbox.ClaimedRow]] = [[] for _ in range(lanes_n)]
    for group in groups.values():  # oldest first, each into the emptiest lane
        min(lanes, key=len).extend(group)
    return [lane for lane in lanes if lane], chunked(rest, max_size=max_size, target_tasks=target_tasks)


def receive_lanes(
    rows: list[inbox.ClaimedRow],
) -> tuple[list[list[inbox.ClaimedRow]], list[list[inbox.ClaimedRow]]]:
    """receive_plan for the configured database: lanes on PostgreSQL, arrival order on SQLite."""
    engine = current().engine
    if engine.dialect.name != "postgresql":
        return receive_plan(rows)
    order_ids = [row.inbox_id for row in rows if row.topic in ORDER_TOPICS]
    return receive_plan(rows, customers=inbox.customer_keys(engine, order_ids))


def refs_label(refs: list[str], shown: int = 5) -> str:
    """'#1101 #1102 #1103 +7 more': what ops search for in the UI."""
    more = len(refs) - shown
    return " ".join(refs[:shown]) + (f" +{more} more" if more > 0 else "")


def _receive_run_name() -> str:
    return "receive " + refs_label([row.ref for row in task_run.parameters["rows"]])


def receive_rows(rt: Runtime, rows: list[inbox.ClaimedRow]) -> tuple[list[processing.Outcome], list[str]]:
    """Turn deliveries into order state and what it calls for (written to the outbox, not sent): the
    outcomes, and one reason per row that raised. A row that raises is marked failed and tried
    again after its backoff (up to its attempt limit, then ops are told: see inbox_alerts); the
    others are not held back by it. No Prefect call: the receive task and the web app's drain when
    Prefect is stuck (aftercare/web/fallback.py) both run it."""
    retry = inbox.Retry.from_settings(rt.settings)
    outcomes: list[processing.Outcome] = []
    failures: list[str] = []
    for row in rows:
        try:
            outcome = processing.process_row(rt, row.inbox_id)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            try:
                again = inbox.mark_failed(rt.engine, row.inbox_id, reason, retry)
                then = f"; tried again after {again:%H:%M:%S} UTC" if again else ""
            except SQLAlchemyError as record_exc:
                # The database is away (the blip that failed the row, say): the row stays claimed
                # and is taken over when its lease runs out, which counts as an attempt too.
                then = f"; not recorded ({type(record_exc).__name__}), taken over after the lease"
            failures.append(f"{row.topic} {row.ref} (inbox {row.inbox_id}): {reason}{then}")
            continue
        outcomes.append(outcome)
    return outcomes, failures


@task(name="receive", task_run_name=_receive_run_name)
def receive(rows: list[inbox.ClaimedRow]) -> list[processing.Outcome]:
    """receive_rows, with the order's timeline as an artifact after a shipment, refund or
    cancellation. No Prefect retries: they would repeat the rows that succeeded, at once, where the
    backoff waits."""
    rt = current()
    outcomes, failures = receive_rows(rt, rows)
    for outcome in outcomes:
        if outcome.order_name and outcome.status == "done" and outcome.topic in TIMELINE_TOPICS:
            # After a shipment, refund or cancellation ops want the whole story of the order in one place.
            tl = timeline.order_timeline(rt.engine, outcome.order_name, rt.policies.delivery)
            post_markdown(
                key=artifact_key(outcome.order_name, "timeline"),
                markdown=timeline.render_markdown(tl, rt.policies.shipping.tz),
                description=f"timeline of {outcome.order_name} after {outcome.topic}",
            )
    if failures:
        raise ReceiveFailed(failures, done=len(outcomes))
    return outcomes


INBOX_ALERT = "inbox_alert"


def inbox_alerts() -> list[str]:
    """Deliveries that used every attempt: each is told to ops once and returned as a reason, which
    fails the run so it shows red in the UI. The mail (one per sweep listing them all, to each of the
    policy's `ops_alert_emails`, in the warehouse's language) is an outbox row written in the same
    transaction as the claim on `inbox.alerted_at`: never lost, never sent twice; this run's send
    stage sends it. A plain call, not a task: it runs every round and is one indexed query when
    there is nothing to tell."""
    rt = current()
    policy = rt.policies.requests
    with session_scope(rt.engine) as session:
        exhausted = inbox.claim_alerts(session, inbox.Retry.from_settings(rt.settings))
        if not exhausted:
            return []
        tz = rt.policies.shipping.tz
        rendered = rt.renderer.render_email(
            INBOX_ALERT,
            policy.warehouse_locale,
            {
                "shop_name": rt.settings.shop_name,
                "rows": [
                    {
                        "id": e.inbox_id,
                        "topic": e.topic,
                        "ref": e.ref or "",
                        "attempts": e.attempts,
                        "received": e.received_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"),
                        "reason": e.reason or "",
                    }
                    for e in exhausted
                ],
            },
        )
        for to in policy.ops_alert_emails:
            outbox.enqueue_staff(
                session,
                key=f"inbox-{exhausted[0].inbox_id}",  # each row is claimed once: the first names the sweep
                kind=INBOX_ALERT,
                to_email=to,
                rendered=rendered,
                locale=policy.warehouse_locale,
            )
    return [e.describe() for e in exhausted]


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside a flow or task run; this module's outside one (the web app's drain)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def claim_outbox(limit: int) -> list[outbox.Claimed]:
    rt = current()
    recovered = outbox.recover_stale(
        rt.engine,
        rt.backend,
        timedelta(seconds=rt.settings.send_lease_s),
        max_attempts=rt.settings.send_max_attempts,
    )
    if recovered:
        _logger().warning("settled messages left mid-send by a stopped worker: %s", recovered)
    return outbox.claim_due(rt.engine, limit, worker=socket.gethostname()[:40])


def _send_run_name() -> str:
    items = task_run.parameters["items"]
    kinds = sorted({item.kind for item in items})
    return f"send {'/'.join(kinds)} " + refs_label(
        [item.order_name or f"outbox-{item.outbox_id}" for item in items]
    )


def send_items(rt: Runtime, items: list[outbox.Claimed]) -> tuple[list[dict[str, object]], list[str]]:
    """Send claimed messages (`outbox.deliver`, up to `send_concurrency` at a time): each result, and
    one reason per message the provider refused. No Prefect call (see receive_rows)."""
    delivered = each_concurrently(
        items,
        lambda item: outbox.deliver(rt.engine, item.outbox_id, rt.backend, rt.settings),
        rt.settings.send_concurrency,
    )
    results: list[dict[str, object]] = []
    failures: list[str] = []
    for item, result in zip(items, delivered, strict=True):
        if result.status == "failed":
            failures.append(
                f"outbox {item.outbox_id} ({item.kind} {item.order_name or 'staff mail'}) not sent: "
                f"{result.error}"
            )
        results.append(asdict(result))
    return results, failures


@task(name="send", task_run_name=_send_run_name)
def send(items: list[outbox.Claimed]) -> list[dict[str, object]]:
    """send_items, each message with its preview artifact (keyed by order number). No Prefect
    retries: `deliver` retries transient errors itself, and a task retry after an uncertain send
    could mail a customer twice."""
    rt = current()
    results, failures = send_items(rt, items)
    publish_previews(get_many(rt.engine, OutboxMessage, [item.outbox_id for item in items]))
    if failures:
        raise SendFailed(failures, done=len(results) - len(failures))
    return results
