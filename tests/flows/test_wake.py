"""The web app's wake: coalesced, best effort, and never the only way work gets done."""

from __future__ import annotations

import asyncio
import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Completed, Pending, Running

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


async def _slot_taken_then_given_back(deployment_id, client) -> tuple[object, object]:
    """A run that took the deployment's only concurrency slot and drained, a run (a safety sweep)
    refused the slot meanwhile, then the draining run ended: the slot is free, and the refused run
    waits for its turn to ask again (Prefect's AwaitingConcurrencySlot, 30 s ahead)."""
    drained = await client.create_flow_run_from_deployment(deployment_id)
    assert (await client.set_flow_run_state(drained.id, Pending())).status == SetStateStatus.ACCEPT
    await client.set_flow_run_state(drained.id, Running())
    sweep = await client.create_flow_run_from_deployment(deployment_id)
    refused = await client.set_flow_run_state(sweep.id, Pending())
    assert refused.status == SetStateStatus.REJECT and refused.state.name == "AwaitingConcurrencySlot"
    await client.set_flow_run_state(drained.id, Completed())
    return drained, sweep


def test_a_poke_after_the_draining_run_ended_creates_a_run_though_another_waits_for_the_slot(prefect_server):
    """Issue 8 (the SQLite bench's receipt stall): the draining run ended with deliveries still
    arriving, and the waker took a sweep run waiting for the slot for one on its way, so nothing
    drained until that run's turn to ask again came (and its process started)."""

    async def scenario() -> None:
        deployment = await process_inbox.ato_deployment(name="slot-free-test", concurrency_limit=1)
        deployment_id = await deployment.apply()
        async with get_client() as client:
            _, sweep = await _slot_taken_then_given_back(deployment_id, client)
            waker = PrefectWaker("process-inbox/slot-free-test", min_interval_s=0.05, live_runs=lambda: set())
            await waker.start()
            waker.poke()
            await asyncio.sleep(1.0)
            await waker.stop()
            assert waker.created_runs == 1
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["slot-free-test"]))
            )
            woken = next(r for r in runs if "wake" in r.tags)
            # It takes the free slot at once; the sweep still waits for its turn.
            assert (await client.set_flow_run_state(woken.id, Pending())).status == SetStateStatus.ACCEPT
            assert (await client.read_flow_run(sweep.id)).state_name == "AwaitingConcurrencySlot"

    asyncio.run(scenario())


def test_pokes_while_the_woken_run_waits_for_the_slot_create_no_more_runs(prefect_server):
    """The run the waker created was refused the slot (another run took it first, or Prefect never
    gave one back): it asks again by itself within Prefect's 30 s, so pokes meanwhile do not pile up
    runs behind it (one created per second of webhooks, each refused in turn)."""

    async def scenario() -> None:
        deployment = await process_inbox.ato_deployment(name="slot-pile-test", concurrency_limit=1)
        deployment_id = await deployment.apply()
        async with get_client() as client:
            waker = PrefectWaker("process-inbox/slot-pile-test", min_interval_s=0.05, live_runs=lambda: set())
            await waker.start()
            waker.poke()
            await asyncio.sleep(1.0)
            assert waker.created_runs == 1
            [woken] = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["slot-pile-test"]))
            )
            other = await client.create_flow_run_from_deployment(deployment_id)
            assert (await client.set_flow_run_state(other.id, Pending())).status == SetStateStatus.ACCEPT
            refused = await client.set_flow_run_state(woken.id, Pending())
            assert refused.state.name == "AwaitingConcurrencySlot"
            await client.set_flow_run_state(other.id, Running())
            await client.set_flow_run_state(other.id, Completed())
            for _ in range(10):
                waker.poke()
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            await waker.stop()
            assert waker.created_runs == 1

    asyncio.run(scenario())
