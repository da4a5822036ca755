"""Prefect tasks for the warehouse hand-off: thin wrappers over aftercare.orders.warehouse, named by order
number (task-run names, artifact keys) so ops find each order's hand-off in the UI."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from prefect import task
from prefect.runtime import task_run
from sqlmodel import Session

from aftercare.models import WarehouseHandoff, utcnow
from aftercare.orders import warehouse
from aftercare.reviews import notify
from aftercare.runtime import Runtime, current
from aftercare.spine.db import get_many
from tasks.artifacts import post_markdown, post_table
from tasks.receipt import BatchFailed, artifact_key, each_concurrently, refs_label

WAREHOUSE_ALERT = "warehouse_alert"


class HandoffFailed(BatchFailed):
    """The warehouse refused instructions, or attempts ran out; each reason is the warehouse's own."""


def handoff_markdown(handoff: WarehouseHandoff) -> str:
    """What ops see in the UI: status, the warehouse's reference or reason, flags, and the requests;
    for a cancellation, what it cancels and why (it has no lines)."""
    data = handoff.instruction
    cancel = warehouse.is_cancellation(handoff)
    lines = [
        f"# {handoff.order_name}: warehouse {'cancellation' if cancel else 'hand-off'} v{handoff.version}",
        "",
        f"- status: **{handoff.status}**"
        + (f" (reference `{handoff.reference}`)" if handoff.reference else ""),
        f"- attempts: {handoff.attempts}, policy: {handoff.policy_version}",
    ]
    if handoff.last_error:
        lines.append(f"- last error: {handoff.last_error}")
    if cancel:
        cancels = f"v{data['cancels_version']}" + (
            f" (reference `{data['cancels_reference']}`)" if data.get("cancels_reference") else ""
        )
        lines += [
            f"- action: **cancel** {cancels}: do not ship",
            f"- reason: {data['reason']}, cancelled at {data['cancelled_at']}",
            "",
        ]
        return "\n".join(lines)
    if handoff.flags:
        lines.append(f"- flags: {', '.join(handoff.flags)}")
    lines += ["", "| SKU | title | variant | qty |", "|---|---|---|---|"]
    lines += [
        f"| {li['sku'] or ''} | {li['title']} | {li['variant'] or ''} | {li['quantity']} |"
        for li in data["lines"]
    ]
    delivery, gift = data["delivery"], data["gift"]
    lines += [
        "",
        f"- gift: {gift['is_gift']}, noshi: {gift['noshi']}, wrap: {gift['wrap']}",
        f"- requested delivery: {delivery['requested_date'] or delivery['requested_date_raw']}, "
        f"time: {delivery['time_window']}, leave at door: {delivery['leave_at_door']}",
        "",
    ]
    return "\n".join(lines)


def claim_handoffs(limit: int) -> list[warehouse.ClaimedHandoff]:
    rt = current()
    return warehouse.claim_due(
        rt.engine,
        limit,
        timedelta(seconds=rt.settings.handoff_lease_s),
        max_attempts=rt.settings.warehouse_max_attempts,
    )


def _hand_off_run_name() -> str:
    return "hand-off " + refs_label([f"{i.order_name} v{i.version}" for i in task_run.parameters["items"]])


def hand_off_items(
    rt: Runtime, items: list[warehouse.ClaimedHandoff]
) -> tuple[list[dict[str, object]], list[str]]:
    """Send versions of orders' shipping instructions (`warehouse.hand_off`, up to
    `warehouse_concurrency` at a time): each result, and one reason per instruction refused or out
    of attempts. No Prefect call (see tasks.receipt.receive_rows)."""
    port = rt.warehouse or warehouse.make_warehouse(rt.settings)
    handed = each_concurrently(
        items,
        lambda item: warehouse.hand_off(
            rt.engine, item.handoff_id, port, rt.renderer, rt.policies, rt.settings
        ),
        rt.settings.warehouse_concurrency,
    )
    results: list[dict[str, object]] = []
    failures: list[str] = []
    for item, result in zip(items, handed, strict=True):
        if result.status == "failed":
            failures.append(f"hand-off {item.handoff_id} ({item.order_name} v{item.version}): {result.error}")
        results.append(asdict(result))
    return results, failures


@task(name="hand-off", task_run_name=_hand_off_run_name)
def hand_off(items: list[warehouse.ClaimedHandoff]) -> list[dict[str, object]]:
    """hand_off_items, with each order's hand-off as an artifact. No Prefect retries:
    `warehouse.hand_off` retries transient failures itself with backoff, and a 4xx must not be
    repeated."""
    rt = current()
    results, failures = hand_off_items(rt, items)
    _publish(get_many(rt.engine, WarehouseHandoff, [item.handoff_id for item in items]))
    if failures:
        raise HandoffFailed(failures, done=len(results) - len(failures))
    return results


def _publish(handoffs: list[WarehouseHandoff]) -> None:
    """One artifact per order while volume is low (key `order-<n>-handoff`); under load one table
    per batch instead: an artifact costs the Prefect server ~30 ms of CPU (measured), and the
    hand-off is also in each order's timeline."""
    if len(handoffs) == 1:
        [handoff] = handoffs
        post_markdown(
            key=artifact_key(handoff.order_name, "handoff"),
            markdown=handoff_markdown(handoff),
            description=f"warehouse {'cancellation' if warehouse.is_cancellation(handoff) else 'hand-off'} "
            f"v{handoff.version} for {handoff.order_name}: {handoff.status}",
        )
    elif handoffs:
        post_table(
            table=[
                {
                    "order": h.order_name,
                    "version": h.version,
                    "action": warehouse.action_of(h.instruction),
                    "status": h.status,
                    "reference": h.reference,
                    "flags": ", ".join(h.flags),
                    "last_error": h.last_error,
                }
                for h in handoffs
            ],
            description="warehouse hand-offs in this batch: " + " ".join(h.order_name for h in handoffs),
        )


def warehouse_alerts() -> list[str]:
    """Hand-offs the warehouse refused, or has not acknowledged within the policy's window: each is
    told to ops once (the policy's `ops_alert_emails`, one email per sweep listing them all) and
    returned as reasons, which fail the run so it shows red in the UI. The claim and the email's
    outbox rows are one transaction; the drain loop sends the rows (the same round, in
    process-inbox) and retries them on the outbox's schedule. A plain call, not a task: it runs
    every round of a draining flow and is one indexed query when there is nothing to tell."""
    rt = current()
    policy = rt.policies.requests
    window = timedelta(minutes=policy.acknowledgement_window_minutes)
    now = utcnow()
    with Session(rt.engine) as session:
        alerts = warehouse.claim_alerts(session, window, now=now)
        if not alerts:
            return []
        reasons = [alert.reason(window) for alert in alerts]
        if policy.ops_alert_emails:
            tz = rt.policies.shipping.tz
            ids = [alert.handoff_id for alert in alerts]
            email = notify.StaffEmail(
                kind=WAREHOUSE_ALERT,
                # Unique per claim: a hand-off is claimed once, and the claim time tells two apart.
                key=f"{now:%Y%m%dT%H%M%S.%f}:handoffs-{min(ids)}-{max(ids)}",
                recipients=policy.ops_alert_emails,
                locale=policy.warehouse_locale,
                context={
                    "window_minutes": policy.acknowledgement_window_minutes,
                    "alerts": [
                        {
                            "order_name": a.order_name,
                            "version": a.version,
                            "status": a.status,
                            "attempts": a.attempts,
                            "prepared": a.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"),
                            "reason": reason,
                        }
                        for a, reason in zip(alerts, reasons, strict=True)
                    ],
                },
            )
            notify.enqueue_staff_email(session, rt.settings, rt.renderer, email)
        session.commit()
    return reasons
