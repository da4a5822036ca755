"""The `aftercare` command line, end to end: `main(argv)` with Settings read from the environment,
against a real database (SQLite and PostgreSQL) and, for `demo`, a real web app on loopback."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from sqlmodel import Session, select

from aftercare import samples
from aftercare.cli import main
from aftercare.errors import PermanentSendError
from aftercare.models import InboxEvent, InboxStatus, OutboxMessage, OutboxStatus
from aftercare.processing import process_row
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine.inbox import Delivery, claim_batch, store_delivery
from aftercare.spine.outbox import claim_due, deliver
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import SHOP, order_payload
from tests.factories import deliver as deliver_webhook

SAMPLE_ORDER_NAMES = {"#1101", "#1102", "#1103", "#1104", "#1105"}
OUTBOX_FIELDS = {
    # documented
    "id",
    "to",
    "subject",
    "kind",
    "order_name",
    "status",
    "provider_id",
    "created_at",
    # printed as well
    "sent_at",
    "attempts",
    "last_error",
    "test",
}


def _set_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, var_dir: Path) -> None:
    """Only what the test says: no AFTERCARE_* from the shell, no .env from the working directory."""
    for name in list(os.environ):
        if name.startswith("AFTERCARE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFTERCARE_ENVIRONMENT", "test")
    monkeypatch.setenv("AFTERCARE_DATABASE_URL", database_url)
    monkeypatch.setenv("AFTERCARE_VAR_DIR", str(var_dir))
    monkeypatch.setenv("AFTERCARE_SHOPIFY_WEBHOOK_SECRET", TEST_SECRET)
    monkeypatch.setenv("AFTERCARE_WAKE_PREFECT", "false")


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    _set_env(monkeypatch, tmp_path, settings.database_url, settings.var_dir)
    return settings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop whatever earlier steps printed
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def receive(rt: Runtime, sample: str) -> int:
    """Store a sample order as the web app would, claim it and process it; the outbox id."""
    inbox_id = deliver_webhook(rt.engine, order_payload(sample))
    assert inbox_id is not None
    claim_batch(rt.engine, 10)
    outcome = process_row(rt, inbox_id)
    assert outcome.status == "done" and outcome.outbox_id is not None
    return outcome.outbox_id


def send(rt: Runtime, outbox_id: int, backend=None) -> None:  # type: ignore[no-untyped-def]
    assert [c.outbox_id for c in claim_due(rt.engine, 10, "test-worker", ids=[outbox_id])] == [outbox_id]
    deliver(rt.engine, outbox_id, backend or rt.backend, rt.settings)


def outbox_row(rt: Runtime, outbox_id: int) -> OutboxMessage:
    with Session(rt.engine) as s:
        row = s.get(OutboxMessage, outbox_id)
        assert row is not None
        return row


class RejectingBackend:
    name = "rejecting"

    def send(self, email):  # type: ignore[no-untyped-def]
        raise PermanentSendError("550 mailbox unavailable", status_code=550)

    def was_delivered(self, outbox_id: int) -> bool | None:
        return False


# --- outbox list -------------------------------------------------------------------------------


def test_outbox_list_json_shows_the_sent_confirmation_with_every_field(env, rt, capsys):
    sent_id = receive(rt, "ja-first-gift")
    send(rt, sent_id)
    pending_id = receive(rt, "en-first")  # written, not sent
    row = outbox_row(rt, sent_id)
    assert row.status == OutboxStatus.SENT

    code, out, err = run(capsys, "outbox", "list", "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert isinstance(rows, list) and [r["id"] for r in rows] == [sent_id, pending_id]  # oldest first
    for r in rows:
        assert set(r) == OUTBOX_FIELDS
    first = rows[0]
    assert first["to"] == "hanako@example.jp" == row.to_email
    assert first["subject"] == row.subject == "【aftercare demo shop】ご注文ありがとうございます #1101"
    assert first["kind"] == "order_confirmation"
    assert first["order_name"] == "#1101"
    assert first["status"] == "sent"
    assert first["provider_id"] == row.provider_message_id and first["provider_id"].startswith("file:")
    assert first["created_at"] == row.created_at.isoformat()
    assert first["sent_at"] == row.sent_at.isoformat()
    assert first["attempts"] == 1 and first["last_error"] is None and first["test"] is False
    assert rows[1]["order_name"] == "#1104" and rows[1]["status"] == "pending"
    assert rows[1]["provider_id"] is None and rows[1]["sent_at"] is None

    code, out, _ = run(capsys, "outbox", "list", "--json", "--status", "sent")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [sent_id]
    code, out, _ = run(capsys, "outbox", "list", "--json", "--status", "pending")
    assert code == 0 and [r["order_name"] for r in json.loads(out)] == ["#1104"]
    code, out, _ = run(capsys, "outbox", "list", "--json", "--status", "failed")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(capsys, "outbox", "list", "--json", "--limit", "1")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [pending_id]  # the newest one

    code, out, err = run(capsys, "outbox", "list")
    assert code == 0 and err == ""
    header, *lines = out.splitlines()
    assert header.split() == [
        "id",
        "status",
        "kind",
        "order_name",
        "to",
        "subject",
        "provider_id",
        "last_error",
    ]
    assert len(lines) == 2
    assert "#1101" in lines[0] and "sent" in lines[0] and "hanako@example.jp" in lines[0]
    assert "#1104" in lines[1] and "pending" in lines[1]


def test_outbox_list_of_an_empty_outbox(env, capsys):
    assert run(capsys, "outbox", "list", "--json") == (0, "[]\n", "")
    assert run(capsys, "outbox", "list") == (0, "(none)\n", "")


def test_outbox_list_refuses_a_zero_limit_and_an_unknown_status(env, capsys):
    code, out, err = run(capsys, "outbox", "list", "--limit", "0")
    assert code == 2 and out == ""
    assert "--limit must be at least 1" in err
    with pytest.raises(SystemExit) as exc:
        main(["outbox", "list", "--status", "bogus"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


# --- inbox list --------------------------------------------------------------------------------


def test_inbox_list_json_shows_an_invalid_row_with_its_reason(env, rt, capsys):
    body = b'{"name": "#1199", "id": "not-a-number"}'
    inbox_id, new = store_delivery(
        rt.engine,
        Delivery(
            source="shopify",
            delivery_id="bad-delivery-1",
            event_id=None,
            topic="orders/create",
            shop_domain=SHOP,
            triggered_at=None,
            body=body,
            status=InboxStatus.INVALID,
            reason="order id is not an integer",
            subject_ref="#1199",
        ),
    )
    assert new
    deliver_webhook(rt.engine, order_payload("ja-first-gift"), webhook_id="good-delivery-1")

    code, out, err = run(capsys, "inbox", "list", "--json")
    assert code == 0 and err == ""
    rows = json.loads(out)
    assert [r["status"] for r in rows] == ["invalid", "pending"]
    bad = rows[0]
    assert bad["id"] == inbox_id and bad["reason"] == "order id is not an integer"
    assert (
        bad["ref"] == "#1199" and bad["delivery_id"] == "bad-delivery-1" and bad["topic"] == "orders/create"
    )
    assert bad["shop"] == SHOP and bad["bytes"] == len(body) and bad["processed_at"] is not None
    assert rows[1]["ref"] == "#1101" and rows[1]["reason"] is None and rows[1]["processed_at"] is None

    code, out, _ = run(capsys, "inbox", "list", "--json", "--status", "invalid")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [inbox_id]
    code, out, _ = run(capsys, "inbox", "list")
    assert code == 0 and "order id is not an integer" in out and "bad-delivery-1" in out


def test_inbox_retry_requeues_a_failed_row_and_refuses_a_missing_or_unfailed_one(env, rt, capsys):
    from aftercare.spine.inbox import Retry, mark_failed

    failed_id = deliver_webhook(rt.engine, order_payload("ja-first-gift"))
    done_id = deliver_webhook(rt.engine, order_payload("en-first"))
    assert failed_id is not None and done_id is not None
    claimed = {c.inbox_id for c in claim_batch(rt.engine, 10)}
    assert claimed == {failed_id, done_id}
    assert process_row(rt, done_id).status == "done"
    # Out of attempts (a limit of one here): it waits for a person.
    assert mark_failed(rt.engine, failed_id, "OperationalError: the database went away", Retry(1)) is None

    code, out, _ = run(capsys, "inbox", "list", "--json", "--status", "failed")
    assert code == 0
    [row] = json.loads(out)
    assert (row["id"], row["attempts"], row["next_attempt_at"]) == (failed_id, 1, None)
    assert row["reason"] == "gave up after 1 attempts: OperationalError: the database went away"
    code, out, _ = run(capsys, "inbox", "list")
    assert code == 0 and "attempts" in out.splitlines()[0] and "next_attempt_at" in out.splitlines()[0]

    code, out, err = run(capsys, "inbox", "retry", "999999")
    assert code == 1 and out == "" and "no inbox row 999999" in err
    code, out, err = run(capsys, "inbox", "retry", str(done_id))
    assert code == 1 and f"inbox row {done_id} is done; only failed rows are retried" in err

    code, out, err = run(capsys, "inbox", "retry", str(failed_id))
    assert code == 0 and err == "" and f"inbox row {failed_id} requeued" in out
    with Session(rt.engine) as s:
        again = s.get(InboxEvent, failed_id)
        assert again is not None
        assert (again.status, again.attempts, again.next_attempt_at, again.alerted_at) == (
            "pending",
            0,
            None,
            None,
        )
        assert again.reason.startswith("retried by hand at ") and "database went away" in again.reason
    assert [c.inbox_id for c in claim_batch(rt.engine, 10)] == [failed_id]
    assert process_row(rt, failed_id).status == "done"
    code, out, err = run(capsys, "inbox", "retry", str(failed_id))
    assert code == 1 and "is done" in err  # retried once is enough


# --- outbox resend -----------------------------------------------------------------------------


def test_outbox_resend_refuses_a_sent_message_and_a_missing_id(env, rt, capsys):
    sent_id = receive(rt, "ja-first-gift")
    send(rt, sent_id)

    code, out, err = run(capsys, "outbox", "resend", str(sent_id))
    assert code == 1 and out == ""
    assert err == f"aftercare: outbox message {sent_id} is sent; only failed or uncertain ones are resent\n"
    assert outbox_row(rt, sent_id).status == OutboxStatus.SENT  # untouched

    code, out, err = run(capsys, "outbox", "resend", "999999")
    assert code == 1 and out == "" and err == "aftercare: no outbox message 999999\n"


def test_outbox_resend_requeues_a_failed_message(env, rt, capsys):
    failed_id = receive(rt, "en-first")
    send(rt, failed_id, RejectingBackend())
    assert outbox_row(rt, failed_id).status == OutboxStatus.FAILED

    code, out, err = run(capsys, "outbox", "resend", str(failed_id))
    assert code == 0 and err == ""
    assert f"outbox message {failed_id} requeued" in out
    row = outbox_row(rt, failed_id)
    assert row.status == OutboxStatus.PENDING and row.claimed_by is None and row.claimed_at is None
    assert row.last_error is not None and row.last_error.startswith("requeued by hand")
    assert "550 mailbox unavailable" in row.last_error  # what it was
    # And the next sweep can really send it.
    send(rt, failed_id)
    assert outbox_row(rt, failed_id).status == OutboxStatus.SENT


# --- timeline ----------------------------------------------------------------------------------


def test_timeline_text_and_json_of_a_processed_order(env, rt, capsys):
    outbox_id = receive(rt, "ja-first-gift")

    code, out, err = run(capsys, "timeline", "#1101")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == f"#1101 ({SHOP})"
    assert "orders/create received: done" in out
    assert "order_confirmation to hanako@example.jp: pending" in out, out

    code, out, err = run(capsys, "timeline", "#1101", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["order"]["name"] == "#1101" and data["order"]["shop_domain"] == SHOP
    [message] = [e for e in data["history"] if e["kind"] == "message"]
    assert message["detail"]["outbox_id"] == outbox_id and message["status"] == "pending"
    assert message["summary"].startswith("order_confirmation to hanako@example.jp")

    code, out, err = run(capsys, "timeline", "1101")  # without the '#'
    assert code == 0 and out.startswith("#1101")


def test_timeline_of_an_unknown_order_says_so(env, capsys):
    code, out, err = run(capsys, "timeline", "#9999")
    assert code == 1 and out == ""
    assert err.startswith("aftercare: no order '#9999'")


# --- reviews triage ----------------------------------------------------------------------------


def test_reviews_triage_json_reads_stdin_lines(monkeypatch, tmp_path, capsys):
    lines = [
        {
            "id": "ja-1",
            "text": "商品が壊れて届きました。最悪です。二度と買いません。",
            "rating": 4,
            "lang": "ja",
        },
        {"id": "en-1", "text": "Beautiful mug, fast shipping. I love it!", "rating": 5, "lang": "en"},
    ]
    raw = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n{not json\n"
    _set_env(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'unused.db'}", tmp_path / "var")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw.encode("utf-8")), encoding="utf-8"))

    code, out, err = run(capsys, "reviews", "triage", "--json")
    assert code == 1
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 3
    neg, pos, bad = results
    assert neg["id"] == "ja-1" and neg["negative"] is True and neg["score"] < 0
    assert pos["id"] == "en-1" and pos["negative"] is False and pos["score"] > 0
    assert set(neg) == set(pos) == {"id", "negative", "score", "reasons"}
    assert bad["line"] == 3 and bad["error"].startswith("not JSON") and "negative" not in bad


# --- demo against a real web app ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def web_url(env: Settings) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(env, waker=NoWaker()), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def inbox_events(rt: Runtime) -> list[InboxEvent]:
    with Session(rt.engine) as s:
        return list(s.exec(select(InboxEvent).order_by(InboxEvent.id)))


def process_everything(rt: Runtime) -> None:
    claimed = claim_batch(rt.engine, 100)
    assert claimed
    for c in claimed:
        assert process_row(rt, c.inbox_id).status == "done"


def outbox_messages(rt: Runtime) -> list[OutboxMessage]:
    with Session(rt.engine) as s:
        return list(s.exec(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_demo_orders_only_posts_the_samples_and_a_second_demo_mails_nobody_twice(env, rt, web_url, capsys):
    code, out, err = run(capsys, "demo", "--orders-only", "--url", web_url + "/")
    assert code == 0, err
    assert f"for {len(samples.names())} sample orders to {web_url}/webhooks/shopify" in out
    assert out.count("-> HTTP 200") == 5
    rows = inbox_events(rt)
    assert len(rows) == 5
    assert {r.status for r in rows} == {InboxStatus.PENDING}
    assert {r.topic for r in rows} == {"orders/create"}
    assert {r.subject_ref for r in rows} == SAMPLE_ORDER_NAMES
    assert {r.shop_domain for r in rows} == {"aftercare-demo.myshopify.com"}

    code, _, err = run(capsys, "demo", "--orders-only", "--url", web_url)
    assert code == 0, err
    rows = inbox_events(rt)
    assert len(rows) == 10
    assert len({r.delivery_id for r in rows}) == 10  # new webhook ids each run

    process_everything(rt)
    messages = outbox_messages(rt)
    assert len(messages) == 5
    assert {m.order_name for m in messages} == SAMPLE_ORDER_NAMES
    assert {m.kind for m in messages} == {"order_confirmation"}

    code, out, _ = run(capsys, "outbox", "list", "--json")
    assert code == 0 and len(json.loads(out)) == 5


def test_full_demo_posts_orders_then_shipments_and_twice_changes_no_mail(env, rt, web_url, capsys):
    # The review request, the review on our form and the recovery case wait for send-timed-messages
    # and an approval run, which nothing runs here: tests/test_demo_reviews.py proves that part.
    code, out, err = run(capsys, "demo", "--url", web_url, "--survey-wait", "0", "--reviews-wait", "0")
    assert code == 0, err
    rows = inbox_events(rt)
    assert out.count("-> HTTP 200") == len(rows)
    assert {r.status for r in rows} == {InboxStatus.PENDING}
    by_topic = {t: [r for r in rows if r.topic == t] for t in {r.topic for r in rows}}
    assert len(by_topic["orders/create"]) == 5
    # One shipment per paid order: the konbini order's payment has not cleared, so it is not shipped.
    assert len(by_topic["fulfillments/create"]) == 4
    assert len(by_topic["fulfillments/update"]) >= 1  # some parcels are delivered, the rest estimated
    assert rows[:5] == by_topic["orders/create"]  # orders first
    process_everything(rt)
    first = outbox_messages(rt)
    confirmations = [m for m in first if m.kind == "order_confirmation"]
    assert sorted(m.order_name for m in confirmations) == sorted(SAMPLE_ORDER_NAMES)
    notices = sorted(m.order_name for m in first if m.kind == "shipment_notice")
    assert notices == sorted(set(SAMPLE_ORDER_NAMES) - {"#1103"})

    assert len(by_topic["reviews/create"]) == 1  # the sample review of #1101, waiting for approval

    code, out, err = run(capsys, "demo", "--url", web_url, "--survey-wait", "0", "--reviews-wait", "0")
    assert code == 0, err
    # Shopify deliveries get new webhook ids; the review is the same review (platform + id): a no-op.
    assert '{"status":"duplicate"}' in out
    assert len(inbox_events(rt)) == 2 * len(rows) - 1
    process_everything(rt)
    assert [(m.id, m.kind, m.order_name) for m in outbox_messages(rt)] == [
        (m.id, m.kind, m.order_name) for m in first
    ]


def test_demo_posts_three_survey_cases_and_prints_what_the_rules_said(env, rt, web_url, capsys):
    """The survey part of the demo: three customers whose survey is due now (aftercare/demo.py; the
    cases themselves are proven in tests/test_demo_surveys.py). Without a dispatcher running the
    demo says which are not judged yet and fails; once send-timed-messages has run, it prints each
    timeline line and succeeds."""
    from aftercare import timed

    code, out, _ = run(capsys, "demo", "--url", web_url, "--survey-wait", "1", "--reviews-wait", "0")
    assert code == 1
    assert "one-click unsubscribe" in out and "survey-unsubscribed@example.com -> HTTP 200" in out
    assert out.count("orders/create        due now") == 1
    assert "not judged yet: due now, quiet hours, unsubscribed" in out
    process_everything(rt)
    timed.dispatch_due(rt, datetime.now(UTC))
    code, out, _ = run(capsys, "demo", "--url", web_url, "--survey-wait", "10", "--reviews-wait", "0")
    assert code == 0, out
    assert "#2101 due now" in out and ": sending at " in out
    assert "#2102 quiet hours" in out and "(quiet hours)" in out
    assert "#2103 unsubscribed" in out and "not sent: unsubscribed from surveys on" in out


def test_demo_against_a_closed_port_says_the_app_is_unreachable(env, capsys):
    port = free_port()  # bound then closed: nothing listens
    code, _, err = run(capsys, "demo", "--url", f"http://127.0.0.1:{port}")
    assert code == 1
    assert f"cannot reach http://127.0.0.1:{port}/webhooks/shopify" in err
    assert "is `make up` running?" in err


# --- migrate -----------------------------------------------------------------------------------


def test_migrate_creates_a_fresh_sqlite_database(monkeypatch, tmp_path, capsys):
    db = tmp_path / "fresh" / "aftercare.db"
    _set_env(monkeypatch, tmp_path, f"sqlite:///{db}", tmp_path / "var")
    assert not db.exists()

    code, out, err = run(capsys, "migrate")
    assert code == 0, err
    assert out == f"database at sqlite:///{db} is migrated\n"
    assert db.exists()
    # The schema is there: the outbox can be listed right away, and migrating again is a no-op.
    assert run(capsys, "outbox", "list", "--json")[:2] == (0, "[]\n")
    assert run(capsys, "migrate")[0] == 0


def test_demo_with_the_wrong_secret_reports_the_refusals_and_fails(env, rt, web_url, monkeypatch, capsys):
    monkeypatch.setenv("AFTERCARE_SHOPIFY_WEBHOOK_SECRET", "not-the-shops-secret")
    code, out, _ = run(capsys, "demo", "--orders-only", "--url", web_url)
    assert code == 1
    assert out.count("-> HTTP 401") == 5
    assert inbox_events(rt) == []
