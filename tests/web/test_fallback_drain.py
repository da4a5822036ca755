"""When no process-inbox run can start (Prefect's own server locked or down), the web app drains due
work itself under a free drain slot, with no Prefect call (aftercare/web/app.py `fallback_patrol`,
tasks/drain_here.py); never while every slot is held by a live drainer. Found by the SQLite fault
suite: the embedded Prefect server stalled on `database is locked` and orders waited."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from prefect.client import base as prefect_client_base
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.drainers import drain_slot
from aftercare.models import InboxEvent, InboxStatus, OutboxMessage, OutboxStatus, WarehouseHandoff
from aftercare.spine.db import make_engine
from aftercare.web.app import DueFor, create_app, fallback_patrol
from aftercare.web.patrol import Patrol
from aftercare.web.wake import NoWaker
from tests.factories import deliver, order_payload
from tests.pipeline import wait_for


@pytest.fixture
def prefect_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every request a Prefect client would make, refused and recorded: a stuck server, seen from here."""
    calls: list[str] = []

    def refuse(self: object, request: object, *args: object, **kwargs: object) -> object:
        calls.append(str(getattr(request, "url", request)))
        raise RuntimeError("Prefect's server is not answering")

    async def refuse_async(self: object, request: object, *args: object, **kwargs: object) -> object:
        return refuse(self, request)

    monkeypatch.setattr(prefect_client_base.PrefectHttpxSyncClient, "send", refuse)
    monkeypatch.setattr(prefect_client_base.PrefectHttpxAsyncClient, "send", refuse_async)
    yield calls


@contextmanager
def live_run(engine: Engine, holder: str) -> Iterator[Callable[[], None]]:
    """A live process-inbox run (a thread) holding the only drain slot, in `holder`'s name, until
    the function it yields ends it, or the block does."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with drain_slot(engine, 1, wait_s=5, holder=holder) as slot:
            assert slot == 0
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)

    def end() -> None:
        release.set()
        thread.join(10)

    try:
        yield end
    finally:
        end()


def test_due_for_counts_an_unbroken_stretch_of_due_work():
    seen = DueFor()
    assert seen.seen(False, 10.0) == 0.0
    assert seen.seen(True, 11.0) == 0.0  # just became due
    assert seen.seen(True, 14.5) == 3.5
    assert seen.seen(False, 15.0) == 0.0  # drained: the stretch ends
    assert seen.seen(True, 20.0) == 0.0 and seen.seen(True, 21.0) == 1.0


def test_an_order_goes_through_when_no_run_can_start_and_prefect_is_never_called(settings, prefect_calls):
    stuck = settings.model_copy(update={"wake_prefect": True, "fallback_drain_after_s": 0.4})
    engine = make_engine(stuck)
    inbox_id = deliver(engine, order_payload(name="#7701", id=97701))
    with TestClient(create_app(stuck, waker=NoWaker(), patrol=Patrol())) as client:
        assert client.get("/healthz").status_code == 200

        def confirmed_and_handed() -> bool:
            with Session(engine) as s:
                mails = s.exec(select(OutboxMessage).where(OutboxMessage.order_name == "#7701")).all()
                handed = s.exec(select(WarehouseHandoff).where(WarehouseHandoff.order_name == "#7701")).all()
            return (
                bool(mails)
                and all(m.status == OutboxStatus.SENT for m in mails)
                and bool(handed)
                and all(h.status == "sent" for h in handed)
            )

        assert wait_for(confirmed_and_handed, 20), "the web app did not drain the order"
    with Session(engine) as s:
        row = s.get(InboxEvent, inbox_id)
        assert row is not None and row.status == InboxStatus.DONE
        kinds = [m.kind for m in s.exec(select(OutboxMessage).where(OutboxMessage.order_name == "#7701"))]
    assert kinds == ["order_confirmation"]  # once, not once per check
    assert prefect_calls == []
    engine.dispose()


def test_nothing_is_drained_here_while_a_live_run_holds_every_drain_slot(settings, prefect_calls):
    stuck = settings.model_copy(update={"wake_prefect": True, "fallback_drain_after_s": 0.2, "workers": 1})
    engine = make_engine(stuck)
    inbox_id = deliver(engine, order_payload(name="#7702", id=97702))
    with live_run(engine, "flow-run-1") as end_run:
        with TestClient(create_app(stuck, waker=NoWaker(), patrol=Patrol())) as client:
            job = client.app.state.fallback.jobs[0]  # type: ignore[attr-defined]
            assert wait_for(lambda: job.last_result == "every drain slot is held by a live run", 10)
            with Session(engine) as s:
                row = s.get(InboxEvent, inbox_id)
                assert row is not None and row.status == InboxStatus.PENDING  # left to the live run
            end_run()

            def done() -> bool:
                with Session(engine) as s:
                    row = s.get(InboxEvent, inbox_id)
                    return row is not None and row.status == InboxStatus.DONE

            assert wait_for(done, 20), "once the slot was free, the web app drained the waiting order"
    assert prefect_calls == []
    engine.dispose()


def test_no_fallback_drain_when_turned_off_or_without_prefect(settings):
    off = settings.model_copy(update={"wake_prefect": True, "fallback_drain_after_s": 0})
    assert create_app(off, waker=NoWaker(), patrol=Patrol()).state.fallback is None
    # Without Prefect (AFTERCARE_WAKE_PREFECT=false) the operator runs `aftercare process` themselves.
    assert create_app(settings, waker=NoWaker(), patrol=Patrol()).state.fallback is None


def test_time_a_live_run_drained_does_not_count_towards_the_fallback(settings, prefect_calls):
    """Issue 8: under a steady stream of orders work is due for minutes while runs drain it; the web
    app took the drain slot the moment a healthy run ended and drained slower than a run, while the
    runs that started found the slot taken. Only time with no drain slot held counts."""
    stuck = settings.model_copy(update={"wake_prefect": True, "fallback_drain_after_s": 60, "workers": 1})
    engine = make_engine(stuck)
    inbox_id = deliver(engine, order_payload(name="#7703", id=97703))
    clock = [1000.0]
    job = fallback_patrol(stuck, every_s=5, clock=lambda: clock[0]).jobs[0]

    def status() -> str:
        with Session(engine) as s:
            row = s.get(InboxEvent, inbox_id)
            assert row is not None
            return row.status

    with live_run(engine, "flow-run-2"):
        for _ in range(20):  # 100 s of due work, all of it while a live run held the slot
            assert job.run() in (None, "every drain slot is held by a live run")
            assert status() == InboxStatus.PENDING
            clock[0] += 5
    # The run ended with the order still due (it arrived as the run lingered out): a new run is on
    # its way, and the web app leaves it the time it is allowed.
    assert job.run() is None and status() == InboxStatus.PENDING
    clock[0] += 55
    assert job.run() is None and status() == InboxStatus.PENDING
    clock[0] += 6
    summary = job.run()
    assert isinstance(summary, str) and summary.startswith("received 1 deliveries"), summary
    assert status() == InboxStatus.DONE
    assert prefect_calls == []
    engine.dispose()
