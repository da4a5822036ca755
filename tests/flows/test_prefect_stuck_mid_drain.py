"""A Prefect server that stops answering while process-inbox drains (its SQLite database locked for
its 60 s busy timeout: issue 8, the SQLite bench's 62 s receipt stall) delays what the UI shows, not
the orders: the drain waits on no Prefect call (tasks/artifacts.py), and the artifacts reach Prefect
once it answers again."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator

import pytest
from prefect.client import base as prefect_client_base
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from sqlmodel import Session, select

from aftercare.models import OutboxMessage, OutboxStatus
from flows.receipt import process_inbox
from tests.factories import deliver, order_payload
from tests.pipeline import wait_for


class StuckPrefect:
    """Prefect's API as this process sees it: after `stop_answering` each request hangs (as every
    request to a server whose database is locked does) until `answer_again`."""

    def __init__(self) -> None:
        self.answering = threading.Event()
        self.answering.set()
        self.held: list[str] = []

    def stop_answering(self) -> None:
        self.answering.clear()

    def answer_again(self) -> None:
        self.answering.set()

    def hold(self, request: object) -> None:
        if not self.answering.is_set():
            self.held.append(str(getattr(request, "url", request)))
            self.answering.wait(120)


@pytest.fixture
def prefect_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckPrefect]:
    stuck = StuckPrefect()
    sync_send = prefect_client_base.PrefectHttpxSyncClient.send
    async_send = prefect_client_base.PrefectHttpxAsyncClient.send

    def send(self: object, request: object, *args: object, **kwargs: object) -> object:
        stuck.hold(request)
        return sync_send(self, request, *args, **kwargs)  # type: ignore[arg-type]

    async def asend(self: object, request: object, *args: object, **kwargs: object) -> object:
        await asyncio.to_thread(stuck.hold, request)
        return await async_send(self, request, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prefect_client_base.PrefectHttpxSyncClient, "send", send)
    monkeypatch.setattr(prefect_client_base.PrefectHttpxAsyncClient, "send", asend)
    try:
        yield stuck
    finally:
        stuck.answer_again()


def mailed(engine: object, order_name: str) -> bool:
    with Session(engine) as s:  # type: ignore[arg-type]
        mails = s.exec(select(OutboxMessage).where(OutboxMessage.order_name == order_name)).all()
    return bool(mails) and all(m.status == OutboxStatus.SENT for m in mails)


def test_orders_keep_moving_while_prefect_stops_answering_mid_drain(flow_rt, prefect_api):
    deliver(flow_rt.engine, order_payload(name="#8801", id=98801))
    states: list[object] = []
    # The run drains in a thread of its own, in this test's context (its runtime, Prefect's settings).
    context = contextvars.copy_context()
    run = threading.Thread(
        target=lambda: states.append(
            context.run(process_inbox, linger_seconds=8, max_seconds=120, return_state=True)
        )
    )
    run.start()
    try:
        assert wait_for(lambda: mailed(flow_rt.engine, "#8801"), 30), "the first order was not mailed"
        prefect_api.stop_answering()
        # Orders that arrive now, one after the other: each round's artifacts wait for Prefect, the
        # orders do not.
        for n in (8802, 8803):
            deliver(flow_rt.engine, order_payload(name=f"#{n}", id=90000 + n))
            assert wait_for(lambda n=n: mailed(flow_rt.engine, f"#{n}"), 30), (
                f"#{n} waited for Prefect: the drain is held by a Prefect call ({prefect_api.held[:3]})"
            )
        assert prefect_api.held, "no Prefect call was made while it did not answer: nothing was tested"
    finally:
        prefect_api.answer_again()
        run.join(120)
    [state] = states
    assert state.is_completed(), state.message  # type: ignore[attr-defined]
    assert "received 3 deliveries, sent 3 messages" in state.message  # type: ignore[attr-defined]

    async def descriptions() -> list[str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])  # type: ignore[attr-defined]
                )
            )
        return [a.description or "" for a in found]

    # What the UI shows arrives once Prefect answers again: each order's mail, on its run.
    shown = " ".join(asyncio.run(descriptions()))
    assert all(f"#{n}" in shown for n in (8801, 8802, 8803)), shown
