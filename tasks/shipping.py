"""Prefect tasks for the warehouse hand-off: thin wrappers over aftercare.warehouse, named by order
number (task-run names, artifact keys) so ops find each order's hand-off in the UI."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_markdown_artifact

from aftercare import warehouse
from aftercare.errors import AftercareError
from aftercare.models import WarehouseHandoff
from aftercare.runtime import current
from tasks.receipt import artifact_key


class HandoffFailed(AftercareError):
    """The warehouse refused an instruction, or attempts ran out; the reason is the warehouse's own."""


def handoff_markdown(handoff: WarehouseHandoff) -> str:
    """What ops see in the UI: status, the warehouse's reference or reason, flags, and the requests."""
    data = handoff.instruction
    lines = [
        f"# {handoff.order_name}: warehouse hand-off v{handoff.version}",
        "",
        f"- status: **{handoff.status}**"
        + (f" (reference `{handoff.reference}`)" if handoff.reference else ""),
        f"- attempts: {handoff.attempts}, policy: {handoff.policy_version}",
    ]
    if handoff.last_error:
        lines.append(f"- last error: {handoff.last_error}")
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


@task(name="claim-handoffs", retries=3, retry_delay_seconds=[1, 5, 15])
def claim_handoffs(limit: int) -> list[warehouse.ClaimedHandoff]:
    return warehouse.claim_due(current().engine, limit)


@task(name="hand-off", task_run_name="hand-off {item.order_name} v{item.version}")
def hand_off(item: warehouse.ClaimedHandoff) -> dict[str, object]:
    """Send one version of an order's shipping instruction. No Prefect retries: `warehouse.hand_off`
    retries transient failures itself with backoff, and a 4xx must not be repeated."""
    rt = current()
    port = rt.warehouse or warehouse.make_warehouse(rt.settings)
    result = warehouse.hand_off(rt.engine, item.handoff_id, port, rt.renderer, rt.policies, rt.settings)
    stored = warehouse.get(rt.engine, item.handoff_id)
    if stored is not None:
        create_markdown_artifact(
            key=artifact_key(item.order_name, "handoff"),
            markdown=handoff_markdown(stored),
            description=f"warehouse hand-off v{item.version} for {item.order_name}: {stored.status}",
        )
    if result.status == "failed":
        raise HandoffFailed(f"hand-off {item.handoff_id} ({item.order_name} v{item.version}): {result.error}")
    return asdict(result)
