"""The process-inbox flow on a real Prefect test server and a real database: one confirmation per
order, whatever arrives twice, re-runs, or stops half-way."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from sqlmodel import Session, select

from aftercare.models import Customer, InboxEvent, Order, OutboxMessage, utcnow
from aftercare.spine import outbox as outbox_mod
from aftercare.spine.email import FileOutboxBackend
from flows.receipt import process_inbox
from tests.factories import deliver, order_payload

SAMPLES = ["en-first", "en-repeat-gift", "ja-first-gift", "ja-pending-konbini", "ja-repeat"]


def run_flow(**params):
    return process_inbox(linger_seconds=0, **params, return_state=True)


def messages(rt) -> list[OutboxMessage]:
    with Session(rt.engine) as s:
        return list(s.exec(select(OutboxMessage).order_by(OutboxMessage.id)))


def eml_files(rt):
    return sorted(rt.settings.outbox_dir.glob("*.eml"))


def test_every_sample_gets_exactly_one_confirmation(flow_rt):
    for name in SAMPLES:
        deliver(flow_rt.engine, order_payload(name))
    state = run_flow()
    assert state.is_completed(), state.message
    assert "received 5 deliveries, sent 5 messages" in state.message
    msgs = messages(flow_rt)
    assert sorted(m.order_name for m in msgs) == ["#1101", "#1102", "#1103", "#1104", "#1105"]
    assert all(m.status == "sent" and m.provider_message_id for m in msgs)
    assert len(eml_files(flow_rt)) == 5


def test_duplicates_retries_and_reruns_never_send_twice(flow_rt):
    payload = order_payload("ja-first-gift")
    deliver(flow_rt.engine, payload, webhook_id="w-1", event_id="e-1")
    assert deliver(flow_rt.engine, payload, webhook_id="w-1") is None  # duplicate delivery id
    assert deliver(flow_rt.engine, payload, webhook_id="w-2", event_id="e-1") is None  # duplicate event id
    deliver(flow_rt.engine, payload, topic="orders/paid")  # a different topic for the same order
    assert run_flow().is_completed()
    assert run_flow().is_completed()  # a second run finds nothing to do
    # A re-delivery of the same order after the mail went out changes nothing either.
    deliver(
        flow_rt.engine,
        order_payload("ja-first-gift", updated_at="2026-11-21T10:00:00+09:00"),
        topic="orders/updated",
    )
    assert run_flow().is_completed()
    assert len(messages(flow_rt)) == 1 and len(eml_files(flow_rt)) == 1


def test_a_worker_killed_mid_send_is_settled_without_a_second_mail(flow_rt):
    deliver(flow_rt.engine, order_payload("en-first"))
    deliver(flow_rt.engine, order_payload("ja-repeat"))
    # First run writes both confirmations; then simulate a worker that claimed them and died:
    # one after the provider (the .eml file) had it, one before.
    from aftercare.processing import process_row
    from aftercare.spine.inbox import claim_batch

    for row in claim_batch(flow_rt.engine, 10):
        process_row(flow_rt, row.inbox_id)
    claimed = outbox_mod.claim_due(flow_rt.engine, 10, worker="doomed")
    assert len(claimed) == 2
    backend = flow_rt.backend
    assert isinstance(backend, FileOutboxBackend)
    delivered_id = claimed[0].outbox_id
    email = outbox_mod._outgoing(outbox_mod.get(flow_rt.engine, delivered_id), flow_rt.settings)
    backend.send(email)  # the provider got it; the worker died before recording it
    with Session(flow_rt.engine) as s:  # make the claims older than the lease
        s.execute(sa.update(OutboxMessage).values(claimed_at=utcnow() - timedelta(hours=1)))
        s.commit()

    assert run_flow().is_completed()
    msgs = {m.id: m for m in messages(flow_rt)}
    assert msgs[delivered_id].status == "sent" and "provider has it" in msgs[delivered_id].last_error
    other = claimed[1].outbox_id
    # The dead worker's claim counts as an attempt (a message that kills its worker runs out).
    assert msgs[other].status == "sent" and msgs[other].attempts == 2
    assert len(eml_files(flow_rt)) == 2  # each customer exactly one file, none rewritten twice


def test_unknown_backend_state_becomes_uncertain_not_resent(flow_rt):
    deliver(flow_rt.engine, order_payload("en-first"))
    from aftercare.processing import process_row
    from aftercare.spine.inbox import claim_batch

    for row in claim_batch(flow_rt.engine, 10):
        process_row(flow_rt, row.inbox_id)
    [claimed] = outbox_mod.claim_due(flow_rt.engine, 10, worker="doomed")

    class Unknowable(FileOutboxBackend):
        def was_delivered(self, outbox_id):
            return None

    with Session(flow_rt.engine) as s:
        s.execute(sa.update(OutboxMessage).values(claimed_at=utcnow() - timedelta(hours=1)))
        s.commit()
    result = outbox_mod.recover_stale(
        flow_rt.engine, Unknowable(flow_rt.settings.outbox_dir), timedelta(minutes=2)
    )
    assert result == {claimed.outbox_id: "uncertain"}
    assert run_flow().is_completed()
    [msg] = messages(flow_rt)
    assert msg.status == "uncertain" and f"outbox_id={msg.id}" in msg.last_error
    assert eml_files(flow_rt) == []


def test_unusable_rows_are_not_retried_into_a_crash_loop(flow_rt):
    deliver(flow_rt.engine, {"id": 1, "name": "#x"})  # stored as pending by a bypass; flow finds it invalid
    state = run_flow()
    assert state.is_completed()
    assert run_flow().is_completed()
    with Session(flow_rt.engine) as s:
        row = s.exec(select(InboxEvent)).one()
    assert row.status == "invalid" and row.attempts == 1 and "created_at" in row.reason


def test_a_failed_send_fails_the_run_with_the_reason_and_an_artifact(flow_rt, monkeypatch):
    from aftercare.errors import PermanentSendError

    class Refusing(FileOutboxBackend):
        def send(self, email):
            raise PermanentSendError(
                "SendGrid 400 Bad Request: The from address does not match a verified "
                "Sender Identity (from.email)",
                400,
            )

    flow_rt.backend = Refusing(flow_rt.settings.outbox_dir)
    deliver(flow_rt.engine, order_payload("en-first"))
    state = run_flow()
    assert state.is_failed()
    assert "verified Sender Identity" in state.message
    [msg] = messages(flow_rt)
    assert msg.status == "failed" and "verified Sender Identity" in msg.last_error

    async def artifact():
        async with get_client() as client:
            found = await client.read_artifacts(
                # This run's artifact: earlier tests in the session wrote the same key, and the
                # server's default order (random ids) would pick any of them.
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["order-1104-order-confirmation"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                )
            )
            return found[0] if found else None

    import asyncio

    art = asyncio.run(artifact())
    assert art is not None and "status: **failed**" in art.data and "verified Sender Identity" in art.data


@pytest.mark.parametrize(
    "bad", [{"batch_size": 0}, {"batch_size": "lots"}, {"linger_seconds": -1}, {"max_seconds": 0}]
)
def test_bad_flow_parameters_are_refused(flow_rt, bad):
    state = process_inbox(**{"linger_seconds": 0, **bad}, return_state=True)
    assert state.is_failed()
    assert "parameter" in (state.message or "").lower() or "validation" in (state.message or "").lower()


def test_concurrent_workers_claim_disjoint_rows(rt):
    """SKIP LOCKED on PostgreSQL; the conditional UPDATE (compare-and-set) on SQLite."""
    for i in range(40):
        deliver(rt.engine, order_payload("en-first", id=5000 + i, name=f"#{5000 + i}"))
    from aftercare.processing import process_row
    from aftercare.spine.inbox import claim_batch

    for row in claim_batch(rt.engine, 100):
        process_row(rt, row.inbox_id)
    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def worker(name):
        barrier.wait()
        got = []
        while batch := outbox_mod.claim_due(rt.engine, 3, worker=name):
            got.extend(c.outbox_id for c in batch)
        results.append(got)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for r in results for i in r]
    assert len(claimed) == 40 and len(set(claimed)) == 40
    if rt.engine.dialect.name == "postgresql":
        assert sum(1 for r in results if r) >= 2  # the work really was shared


def test_one_customers_orders_in_one_batch_are_counted_in_order_while_others_run_alongside(flow_rt):
    """On PostgreSQL a batch is received in parallel lanes; a customer's orders share one, so the
    Nth-purchase count is right (on SQLite everything is received in arrival order anyway)."""
    for i in range(5):
        deliver(
            flow_rt.engine,
            order_payload(
                "en-first",
                id=7100 + i,
                name=f"#E{i}",
                created_at=f"2026-11-20T10:1{i}:00+09:00",
                updated_at=f"2026-11-20T10:1{i}:00+09:00",
            ),
        )
        deliver(
            flow_rt.engine,
            order_payload(
                "ja-first-gift", id=7200 + i, name=f"#O{i}", email=f"other{i}@example.jp", customer=None
            ),
        )
    state = run_flow()
    assert state.is_completed(), state.message
    assert "received 10 deliveries, sent 10 messages, 0 failed" in state.message
    with Session(flow_rt.engine) as s:
        seqs = s.exec(
            sa.select(Order.name, Order.purchase_seq).where(Order.name.like("#E%")).order_by(Order.name)
        ).all()
        emma = s.execute(
            sa.select(sa.func.count()).select_from(Customer).where(Customer.email_key == "emma@example.com")
        ).scalar_one()
    assert [seq for _, seq in seqs] == [1, 2, 3, 4, 5] and emma == 1
    mails = {m.order_name: m.text_body for m in messages(flow_rt)}
    assert "5th" in mails["#E4"] and "2nd" in mails["#E1"]
