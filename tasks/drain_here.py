"""Drain without Prefect: the work of process-inbox (receive, tell ops, hand off, send), run in the
calling process with no Prefect call at all, for the web app to keep orders moving when no
process-inbox run can start.

Why: the SQLite fault suite stalled with work due because Prefect's own embedded server (on its own
SQLite file) was locked: it logged hundreds of `database is locked`, answered no request for minutes,
and every flow-run process waited on it. Orders were safe but nothing moved. The web app's patrol
(aftercare/web/app.py, `fallback_patrol`) notices work that has stayed due for
`AFTERCARE_FALLBACK_DRAIN_AFTER_S` and, when it can take a free drain slot (aftercare/drainers.py),
drains here under it. The claims are the same rows, leases and conditions as the flow's, so two
drainers side by side give the same result as one; the slot keeps the configured number of drainers.

The same plain steps as flows/receipt.py's `_drain`, without its task runs and artifacts (each a
Prefect API call): what was done is in the database, the timeline and the outbox either way, and
the summary is logged by the web app."""

from __future__ import annotations

import time

from aftercare.runtime import Runtime
from tasks.receipt import claim_inbox, claim_outbox, inbox_alerts, receive_rows, send_items
from tasks.review_sweep import review_housekeeping
from tasks.shipping import claim_handoffs, hand_off_items, warehouse_alerts


def drain_here(
    rt: Runtime, batch_size: int = 50, max_seconds: float = 60.0, linger_seconds: float = 1.0
) -> str:
    """Drain until nothing is left for `linger_seconds` (or `max_seconds` have passed); a summary.
    Runs under the caller's `use_runtime(rt)` (the claims read the current runtime)."""
    started = last_work = time.monotonic()
    counts = {"received": 0, "sent": 0, "handed": 0}
    failures: list[str] = []
    while time.monotonic() - started < max_seconds:
        rows = claim_inbox(batch_size)
        outcomes, failed = receive_rows(rt, rows)
        counts["received"] += len(outcomes)
        failures += failed
        review_housekeeping()
        failures += warehouse_alerts()
        failures += inbox_alerts()
        handoffs = claim_handoffs(batch_size)
        results, failed = hand_off_items(rt, handoffs)
        counts["handed"] += len(results) - len(failed)
        failures += failed
        claimed = claim_outbox(batch_size * 2)
        results, failed = send_items(rt, claimed)
        counts["sent"] += len(results) - len(failed)
        failures += failed
        if rows or claimed or handoffs:
            last_work = time.monotonic()
        elif time.monotonic() - last_work >= linger_seconds:
            break
        else:
            time.sleep(0.2)
    summary = (
        f"received {counts['received']} deliveries, sent {counts['sent']} messages, {len(failures)} failed, "
        f"{counts['handed']} handed to the warehouse"
    )
    return summary + (": " + " | ".join(failures[:5]) if failures else "")
