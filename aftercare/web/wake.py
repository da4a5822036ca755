"""Tell Prefect there is work, best effort. The scheduled sweep picks up anything a lost wake
leaves behind, so a Prefect outage delays work but loses none.

Wakes are coalesced: a burst of 300 webhooks/s becomes at most one flow-run creation per interval,
and none while a run of the deployment is already queued or draining the inbox (the run drains
until the inbox stays empty).

A SIGKILLed run stays Running in Prefect and keeps the deployment's concurrency slot, so every later
run (the sweep's too) would wait for it, and the waker would see a run "draining". The waker asks
the drain slots (aftercare/drainers.py), which die with their process, which runs are alive: a
Pending/Running run past its start-up time that no slot names is marked Crashed, which frees the
slot. It does so on each wake and every `patrol_s` without one, so a dead worker costs about
`starting_s` (`pending_s` if it died before running) + `patrol_s` of processing, not the system."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

log = logging.getLogger(__name__)


class Waker(Protocol):
    def poke(self) -> None: ...
    def poke_from_thread(self) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class NoWaker:
    """For tests and for running without Prefect: the sweep alone does the work."""

    pokes = 0

    def poke(self) -> None:
        self.pokes += 1

    def poke_from_thread(self) -> None:
        self.pokes += 1

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class PrefectWaker:
    """Creates a run of the deployment when poked, unless one is on its way: a run due to start
    within seconds, a Pending/Running run that holds a drain slot or is still starting, or the run
    this waker created last while it still waits to start (for `requeue_s`). A run waiting for the
    deployment's concurrency slot (`AwaitingConcurrencySlot`) is not on its way: Prefect gave it a
    time up to 30 s ahead to ask again, so when the run that held the slot has ended, work would wait
    for that time (and a process start) while the slot is free (issue 8: the SQLite bench's stall).
    With `live_runs` (the ids of the runs holding a drain slot), a run that is past `starting_s`
    (Running) or `pending_s` (Pending/Submitting) and holds none is a dead process's: it is marked
    Crashed."""

    def __init__(
        self,
        deployment_name: str,
        min_interval_s: float = 1.0,
        *,
        live_runs: Callable[[], set[str]] | None = None,
        starting_s: float = 20.0,
        pending_s: float = 45.0,
        patrol_s: float = 10.0,
        requeue_s: float = 30.0,
    ):
        self.deployment_name = deployment_name
        self.min_interval_s = min_interval_s
        self.live_runs = live_runs
        self.starting_s = starting_s
        self.pending_s = pending_s
        self.patrol_s = patrol_s
        # Prefect's wait before a run refused the concurrency slot asks again
        # (PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS, 30 s by default).
        self.requeue_s = requeue_s
        self._last_created: tuple[UUID, float] | None = None  # (run id, time.monotonic())
        self._event = asyncio.Event()
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._deployment_id = None
        self.created_runs = 0
        self.crashed_runs = 0

    def poke(self) -> None:
        self._event.set()

    def poke_from_thread(self) -> None:
        """A poke from another thread (the patrol's): asyncio's event belongs to the app's loop."""
        loop = self._loop_ref
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._event.set)

    async def start(self) -> None:
        self._loop_ref = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop(), name="prefect-waker")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            poked = True
            try:
                await asyncio.wait_for(self._event.wait(), timeout=self.patrol_s)
            except TimeoutError:
                poked = False  # a patrol: only dead runs are settled, no run is created
            self._event.clear()
            started = time.monotonic()
            try:
                await self._wake_once(create=poked)
            except Exception as exc:
                log.warning("could not wake Prefect (%s); the scheduled sweep will pick the work up", exc)
            await asyncio.sleep(max(0.0, self.min_interval_s - (time.monotonic() - started)))

    async def _wake_once(self, *, create: bool = True) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.states import Crashed

        if not create and self.live_runs is None:
            return
        holders = await asyncio.to_thread(self.live_runs) if self.live_runs is not None else None
        async with get_client() as client:
            if self._deployment_id is None:
                deployment = await client.read_deployment_by_name(self.deployment_name)
                self._deployment_id = deployment.id
            deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[self._deployment_id]))
            now = datetime.now(UTC)
            soon = now + timedelta(seconds=5)
            # Scheduled runs asked for apart: a few hundred sweeps and wakes waiting for the slot must
            # not hide the Pending/Running run that holds it. The first ones are the next to start.
            scheduled = await client.read_flow_runs(
                deployment_filter=deployment_filter,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
                sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
                limit=5,
            )
            # One due to start now will drain: no need for another. When it next asks counts, not
            # when it was first meant to start: a run refused the concurrency slot keeps its expected
            # start and asks again only at its `next_scheduled_start_time`.
            on_its_way = any(
                bool(starts and starts <= soon)
                for starts in (run.next_scheduled_start_time or run.expected_start_time for run in scheduled)
            )
            active = await client.read_flow_runs(
                deployment_filter=deployment_filter,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                    )
                ),
                limit=50,
            )
            crashed = 0
            for run in active:
                if holders is None or str(run.id) in holders:
                    on_its_way = True  # no way to tell, or it holds a drain slot: alive
                    continue
                since = run.state.timestamp if run.state else run.created
                grace = self.starting_s if run.state_type == StateType.RUNNING else self.pending_s
                if since is None or now - since <= timedelta(seconds=grace):
                    on_its_way = True  # still starting: it has not taken its slot yet
                    continue
                # Past its start-up time and no drain slot names it: its process is gone. Crashed
                # releases the deployment's concurrency slot it holds.
                await client.set_flow_run_state(
                    run.id,
                    Crashed(
                        message=f"no live process holds a drain slot for it ({run.state_name} since {since})"
                    ),
                    force=True,
                )
                self.crashed_runs += 1
                crashed += 1
                log.warning("flow run %s (%s) has no live process: marked Crashed", run.name, run.id)
            # A slot we just freed goes to whoever asks first; runs AwaitingConcurrencySlot only
            # ask again after 30 s, so a poke creates a run at once.
            if not create or (on_its_way and not crashed):
                return
            if not crashed and await self._last_run_waits(client):
                return
            bucket = int(time.time() // max(self.min_interval_s, 1.0))
            created = await client.create_flow_run_from_deployment(
                self._deployment_id,
                idempotency_key=f"wake-{bucket}",
                tags=["wake"],
            )
            self._last_created = (created.id, time.monotonic())
            self.created_runs += 1

    async def _last_run_waits(self, client: PrefectClient) -> bool:
        """Whether the run this waker created last, less than `requeue_s` ago, still waits to start.
        Refused the slot (another run took it first, or a slot Prefect never gave back), it asks again
        by itself within `requeue_s`: one more run per poke would only pile up behind it."""
        from prefect.client.schemas.objects import StateType
        from prefect.exceptions import ObjectNotFound

        if self._last_created is None:
            return False
        run_id, at = self._last_created
        if time.monotonic() - at >= self.requeue_s:
            return False
        try:
            run = await client.read_flow_run(run_id)
        except ObjectNotFound:  # deleted in the UI meanwhile
            return False
        return run.state_type == StateType.SCHEDULED
