"""The web app's wake: coalesced, best effort, and never the only way work gets done."""

from __future__ import annotations

import asyncio
import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

from aftercare.web.wake import PrefectWaker
from flows.receipt import process_inbox


async def _runs_of(name: str) -> int:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
        )
        return len(runs)


def test_a_burst_of_pokes_creates_one_run(prefect_server):
    async def scenario():
        deployment = await process_inbox.ato_deployment(name="wake-test")
        await deployment.apply()
        waker = PrefectWaker("process-inbox/wake-test", min_interval_s=0.05)
        await waker.start()
        for _ in range(300):
            waker.poke()
            await asyncio.sleep(0)
        await asyncio.sleep(1.0)
        for _ in range(50):  # the run is still scheduled (no runner here), so nothing new is created
            waker.poke()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        await waker.stop()
        return waker.created_runs, await _runs_of("wake-test")

    created, runs = asyncio.run(scenario())
    assert created == 1 and runs == 1


def test_a_wake_that_cannot_reach_its_deployment_is_logged_not_raised(prefect_server, caplog):
    async def scenario():
        waker = PrefectWaker("process-inbox/does-not-exist", min_interval_s=0.05)
        await waker.start()
        waker.poke()
        await asyncio.sleep(1.0)
        await waker.stop()
        return waker.created_runs

    with caplog.at_level(logging.WARNING, logger="aftercare.web.wake"):
        assert asyncio.run(scenario()) == 0
    assert "scheduled sweep will pick the work up" in caplog.text
