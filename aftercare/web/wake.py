"""Tell Prefect there is work, best effort. The scheduled sweep picks up anything a lost wake
leaves behind, so a Prefect outage delays work but loses none.

Wakes are coalesced: a burst of 300 webhooks/s becomes at most one flow-run creation per interval,
and none while a run of the deployment is already queued or draining the inbox (the run drains
until the inbox stays empty)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

log = logging.getLogger(__name__)


class Waker(Protocol):
    def poke(self) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class NoWaker:
    """For tests and for running without Prefect: the sweep alone does the work."""

    pokes = 0

    def poke(self) -> None:
        self.pokes += 1

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class PrefectWaker:
    def __init__(self, deployment_name: str, min_interval_s: float = 1.0):
        self.deployment_name = deployment_name
        self.min_interval_s = min_interval_s
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deployment_id = None
        self.created_runs = 0

    def poke(self) -> None:
        self._event.set()

    async def start(self) -> None:
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
            await self._event.wait()
            self._event.clear()
            started = time.monotonic()
            try:
                await self._wake_once()
            except Exception as exc:
                log.warning("could not wake Prefect (%s); the scheduled sweep will pick the work up", exc)
            await asyncio.sleep(max(0.0, self.min_interval_s - (time.monotonic() - started)))

    async def _wake_once(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        async with get_client() as client:
            if self._deployment_id is None:
                deployment = await client.read_deployment_by_name(self.deployment_name)
                self._deployment_id = deployment.id
            active = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self._deployment_id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(
                            any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
                        )
                    )
                ),
                limit=20,
            )
            soon = datetime.now(UTC) + timedelta(seconds=5)
            if any(
                run.state_type != StateType.SCHEDULED
                or (run.expected_start_time and run.expected_start_time <= soon)
                for run in active
            ):
                return
            bucket = int(time.time() // max(self.min_interval_s, 1.0))
            await client.create_flow_run_from_deployment(
                self._deployment_id,
                idempotency_key=f"wake-{bucket}",
                tags=["wake"],
            )
            self.created_runs += 1
