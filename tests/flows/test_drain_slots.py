"""A SIGKILLed drainer must cost nothing but its claims' lease: its drain slot dies with it, the next
run drains, and the waker is not silenced by a run Prefect still shows as Running (issue 8)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Pending, Running

from aftercare.drainers import drain_slot, live_holders
from aftercare.settings import PROJECT_ROOT
from aftercare.web.wake import PrefectWaker
from flows.receipt import process_inbox
from tests.factories import deliver, order_payload

HOLDER = """
import sys, time
from aftercare.spine.db import make_engine
from aftercare.drainers import drain_slot
from aftercare.settings import Settings
engine = make_engine(Settings(database_url=sys.argv[1]))
with drain_slot(engine, 1, wait_s=5, holder="run-killed-later") as slot:
    print("held" if slot is not None else "busy", flush=True)
    time.sleep(600)
"""


def hold_slot_in_a_process(database_url: str) -> subprocess.Popen[str]:
    """A process that takes the only drain slot and keeps it, like a run draining a burst."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_drainer_leaves_no_slot_behind(flow_rt):
    deliver(flow_rt.engine, order_payload("ja-first-gift"))
    holder = hold_slot_in_a_process(flow_rt.settings.database_url)
    try:
        assert live_holders(flow_rt.engine, 1) == {"run-killed-later"}
        # While a live process drains, a second run leaves the work to it (no pile-up of drainers).
        state = process_inbox(linger_seconds=0, return_state=True)
        assert state.is_completed() and "drain slots are held" in state.message, state.message
        with drain_slot(flow_rt.engine, 1, wait_s=0) as slot:
            assert slot is None
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup of any kind runs
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10  # PostgreSQL ends the session when it sees the socket close
        while live_holders(flow_rt.engine, 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_holders(flow_rt.engine, 1) == set()
        state = process_inbox(linger_seconds=0, return_state=True)
        assert state.is_completed() and "received 1 deliveries, sent 1 messages" in state.message, (
            state.message
        )
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_run_left_running_by_a_killed_process_is_crashed_and_frees_the_deployment(prefect_server):
    async def scenario() -> None:
        deployment = await process_inbox.ato_deployment(name="zombie-test", concurrency_limit=1)
        deployment_id = await deployment.apply()
        async with get_client() as client:
            alive = await client.create_flow_run_from_deployment(deployment_id)
            await client.set_flow_run_state(alive.id, Running(), force=True)
        await asyncio.sleep(1.0)  # both past the start-up window (0.5 s here; the server stamps states)
        # A live drainer holds a slot in its run's name: not touched, and no second run is created.
        waker = PrefectWaker(
            "process-inbox/zombie-test",
            min_interval_s=0.05,
            starting_s=0.5,
            live_runs=lambda: {str(alive.id)},
        )
        await waker.start()
        waker.poke()
        await asyncio.sleep(1.0)
        await waker.stop()
        assert (waker.created_runs, waker.crashed_runs) == (0, 0)

        # Its process is SIGKILLed: Prefect still says Running, no drain slot names it any more.
        waker = PrefectWaker(
            "process-inbox/zombie-test", min_interval_s=0.05, starting_s=0.5, live_runs=lambda: set()
        )
        await waker.start()
        waker.poke()
        await asyncio.sleep(1.5)
        await waker.stop()
        async with get_client() as client:
            zombie = await client.read_flow_run(alive.id)
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["zombie-test"]))
            )
            # The deployment's concurrency slot is free again: a new run may start.
            fresh = next(r for r in runs if r.id != alive.id)
            started = await client.set_flow_run_state(fresh.id, Pending())
        assert zombie.state_type == StateType.CRASHED, zombie.state
        assert (waker.created_runs, waker.crashed_runs) == (1, 1)
        assert started.status == SetStateStatus.ACCEPT, started

    asyncio.run(scenario())
