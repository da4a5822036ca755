"""Every delivery in the inbox becomes order state and, once per order, a warm confirmation; paid
orders are handed to the warehouse; shipments get one notice each."""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from aftercare.drainers import drain_slot
from aftercare.runtime import current
from tasks import artifacts
from tasks.receipt import (
    BatchFailed,
    chunked,
    claim_inbox,
    claim_outbox,
    inbox_alerts,
    receive,
    receive_lanes,
    send,
)
from tasks.review_sweep import review_housekeeping
from tasks.shipping import claim_handoffs, hand_off, warehouse_alerts


@flow(name="process-inbox", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=False)
def process_inbox(
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 50,
    linger_seconds: Annotated[float, Field(ge=0, le=60)] = 2.0,
    max_seconds: Annotated[float, Field(gt=0, le=3600)] = 600.0,
) -> State:
    """Drain the inbox: receive each delivery, then send what the outbox holds. Keeps draining while
    work keeps arriving (up to `max_seconds`), so a burst of webhooks is one run, not thousands.

    The run holds a drain slot in its name while it drains (aftercare/drainers.py): a slot dies
    with the process, so the waker can tell this run is alive, and crash a killed run that Prefect
    still shows Running (it would hold the deployment's concurrency slot for good). A run that finds
    every slot taken for a moment leaves the work to the runs that hold them.

    The drain makes no Prefect call it waits for: its tasks queue their artifacts, posted by a thread
    of this process (tasks/artifacts.py). A Prefect server that stops answering for a minute (its
    SQLite locked) then delays what the UI shows, not the orders (issue 8)."""
    rt = current()
    holder = str(flow_run.get_id() or "")
    try:
        with drain_slot(rt.engine, rt.settings.workers, wait_s=linger_seconds + 5, holder=holder) as slot:
            if slot is None:
                return Completed(message=f"all {rt.settings.workers} drain slots are held by live runs")
            return _drain(batch_size, linger_seconds, max_seconds)
    finally:
        # The artifacts the tasks queued (tasks/artifacts.py), posted after the slot is given back:
        # a Prefect that answers slowly then holds up no drainer.
        artifacts.flush(ARTIFACT_FLUSH_S)


# How long a run that has drained waits for its artifacts to reach Prefect before it ends.
ARTIFACT_FLUSH_S = 15.0


def _drain(batch_size: int, linger_seconds: float, max_seconds: float) -> State:
    logger = get_run_logger()
    started = last_work = time.monotonic()
    counts = {"received": 0, "sent": 0, "handed": 0}
    failures: list[str] = []

    def tally(state: State, key: str, size: int) -> None:
        """Count a batch task's items; a failed batch says which items failed and why."""
        if state.is_completed():
            counts[key] += size
            return
        error = state.result(raise_on_failure=False)
        if isinstance(error, BatchFailed):
            counts[key] += error.done
            failures.extend(error.failures)
        else:
            failures.append(state.message or f"{key} failed")

    def settle(batches: list[tuple[PrefectFuture, str, int]]) -> None:
        wait([future for future, _, _ in batches])
        for future, key, size in batches:
            tally(future.state, key, size)

    # A two-stage pipeline: the sends and hand-offs claimed in one round run in worker threads
    # while the next round's deliveries are received, so the provider's and the 3PL's latency
    # overlaps with our database work instead of adding to it.
    in_flight: list[tuple[PrefectFuture, str, int]] = []
    while time.monotonic() - started < max_seconds:
        rows = claim_inbox(batch_size)
        # Findable by order number through task-run names and artifact keys. Not through tags:
        # a dynamic tag costs ~1 s per task run in Prefect 3.8 (measured), 100x the task itself.
        # An order's deliveries are received in order, in one task; see receive_plan for what runs
        # at the same time (on PostgreSQL) and what waits.
        lanes, after = receive_lanes(rows)
        settle([(receive.submit(lane), "received", len(lane)) for lane in lanes])
        for chunk in after:
            tally(receive(chunk, return_state=True), "received", len(chunk))
        # Escalation of overdue reviews, replies left publishing: database only, cheap when idle. The
        # approval runs are started by the web app's patrol: no Prefect call holds up an order.
        review_housekeeping()

        # The previous round is collected before more is claimed: claimed work never queues in
        # this process, where a wait past its lease would look like a dead worker's.
        settle(in_flight)
        # Refused, or not acknowledged within the policy's window: ops are told once, the run fails.
        failures.extend(warehouse_alerts())
        # Deliveries out of attempts: ops are told once (the mail is in the outbox, sent just below).
        failures.extend(inbox_alerts())
        handoffs = claim_handoffs(batch_size)
        claimed = claim_outbox(batch_size * 2)
        in_flight = [(hand_off.submit(c), "handed", len(c)) for c in chunked(handoffs)]
        in_flight += [(send.submit(c), "sent", len(c)) for c in chunked(claimed)]

        if rows or claimed or handoffs:
            last_work = time.monotonic()
        elif time.monotonic() - last_work >= linger_seconds:
            break
        else:
            time.sleep(0.2)
    settle(in_flight)
    last_alerts = warehouse_alerts()  # what the last round's hand-offs left
    failures.extend(last_alerts)
    if last_alerts:  # the mails they owe ops go now, not at the next sweep
        settle([(send.submit(c), "sent", len(c)) for c in chunked(claim_outbox(batch_size * 2))])
    summary = (
        f"received {counts['received']} deliveries, sent {counts['sent']} messages, {len(failures)} failed, "
        f"{counts['handed']} handed to the warehouse"
    )
    logger.info(summary)
    if failures:
        return Failed(message=summary + ": " + " | ".join(failures[:5]))
    return Completed(message=summary)
