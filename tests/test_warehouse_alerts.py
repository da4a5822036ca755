"""No acknowledgement from the warehouse within the policy's window, or a refusal: ops are alerted
once (an email to the policy's addresses, and a reason that fails the run), never silence."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from aftercare.errors import ConfigError
from aftercare.models import WarehouseHandoff, utcnow
from aftercare.orders import warehouse
from aftercare.orders.timeline import order_timeline, render_markdown
from aftercare.policies import RequestsPolicy, load_policy_file
from aftercare.runtime import Runtime, use_runtime
from tasks.shipping import WAREHOUSE_ALERT, warehouse_alerts
from tests.factories import order_payload
from tests.pipeline import http_port, receive, send_all, send_outbox, staff_mails


def only_handoff(rt) -> WarehouseHandoff:
    with Session(rt.engine) as s:
        [handoff] = s.exec(select(WarehouseHandoff)).all()
    return handoff


def prepared_minutes_ago(rt, minutes: float) -> None:
    with Session(rt.engine) as s:
        for h in s.exec(select(WarehouseHandoff)).all():
            h.created_at = utcnow() - timedelta(minutes=minutes)
            s.add(h)
        s.commit()


def alert_mails(rt) -> list[str]:
    """Each alert email the drain loop sent (it sends what the outbox holds first), as 'To / Subject
    / plain text', decoded."""
    send_outbox(rt)
    mails = []
    for msg in staff_mails(rt, WAREHOUSE_ALERT):
        text = msg.get_body(preferencelist=("plain",)).get_content()
        mails.append(f"To: {msg['To']}\nSubject: {msg['Subject']}\n\n{text}")
    return mails


def test_a_refusal_alerts_ops_once_with_the_warehouses_reason(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    three_pl.plan(422, {"error": "postcode 150-0001 is outside our delivery area"})
    [result] = send_all(rt, http_port(three_pl), inline_wait_cap_s=0)
    assert result.status == "failed"
    with use_runtime(rt):
        [reason] = warehouse_alerts()
        assert warehouse_alerts() == []  # told once
    assert "#1101 v1" in reason and "outside our delivery area" in reason
    [mail] = alert_mails(rt)
    assert "To: ops@example.com" in mail and "#1101 v1" in mail and "outside our delivery area" in mail
    assert "倉庫" in mail  # in the warehouse's language (policies/requests.yaml: ja)
    assert only_handoff(rt).alerted_at is not None


def test_no_acknowledgement_within_the_window_alerts_ops_and_not_before(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    three_pl.plan(503, {"error": "maintenance"})
    [result] = send_all(rt, http_port(three_pl), inline_wait_cap_s=0)
    assert result.status == "pending"  # rescheduled: the 3PL may come back
    with use_runtime(rt):
        assert warehouse_alerts() == []  # prepared just now: still within the 30 minutes
        prepared_minutes_ago(rt, 31)
        [reason] = warehouse_alerts()
    assert "not acknowledged within 30 min" in reason and "maintenance" in reason
    assert len(alert_mails(rt)) == 1
    story = render_markdown(order_timeline(rt.engine, "#1101", rt.policies.delivery), rt.policies.shipping.tz)
    assert "ops alerted about hand-off v1" in story


def test_an_acknowledged_hand_off_never_alerts(rt, three_pl):
    receive(rt, order_payload("ja-first-gift"))
    [result] = send_all(rt, http_port(three_pl), inline_wait_cap_s=0)
    assert result.status == "sent"
    prepared_minutes_ago(rt, 600)
    with use_runtime(rt):
        assert warehouse_alerts() == []
    assert alert_mails(rt) == []


def test_concurrent_sweeps_alert_once(rt):
    for i in range(6):
        receive(rt, order_payload("ja-first-gift", id=830000 + i, name=f"#{2000 + i}"))
    prepared_minutes_ago(rt, 45)
    got: list[list[warehouse.Unacknowledged]] = []
    barrier = threading.Barrier(3)

    def sweep():
        barrier.wait()
        got.append(warehouse.claim_alerts(rt.engine, timedelta(minutes=30)))

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [a.handoff_id for batch in got for a in batch]
    assert len(ids) == 6 and len(set(ids)) == 6


def test_when_telling_ops_fails_the_claim_stands_and_the_outbox_sends_the_alert_later(rt, settings):
    # SendGrid unreachable (nothing listens on port 9 here): the staff email cannot go out yet.
    broken = Runtime.build(
        settings.model_copy(
            update={
                "email_backend": "sendgrid",
                "sendgrid_api_key": SecretStr("SG.test"),
                "sendgrid_base_url": "http://127.0.0.1:9",
                "sendgrid_timeout_s": 1.0,
                "send_backoff_base_s": 60.0,  # past the inline cap: rescheduled for a later drain
            }
        )
    )
    try:
        receive(broken, order_payload("ja-first-gift"))
        prepared_minutes_ago(broken, 31)
        with use_runtime(broken):
            [reason] = warehouse_alerts()
        assert "not acknowledged" in reason
        results = send_outbox(broken)  # the customer's confirmation and the alert
        assert len(results) == 2
        assert all(r.status == "pending" and "unreachable" in (r.error or "") for r in results)
        assert only_handoff(broken).alerted_at is not None  # not given back: the row is the record
        with use_runtime(rt):
            assert warehouse_alerts() == []  # the next sweep owes nothing new
        assert send_outbox(rt) == []  # not due yet
        later = send_outbox(rt, now=utcnow() + timedelta(minutes=2))
        assert sorted(r.outbox_id for r in later) == sorted(r.outbox_id for r in results)
        assert {r.status for r in later} == {"sent"}
        [mail] = alert_mails(rt)
        assert "#1101" in mail and "ops@example.com" in mail
    finally:
        broken.engine.dispose()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("acknowledgement_window_minutes: 0\n", "acknowledgement_window_minutes"),
        ("acknowledgement_window_minutes: soon\n", "acknowledgement_window_minutes"),
        ("ops_alert_emails: [not-an-address]\n", "ops_alert_emails"),
        ("ops_alert_emails: ops@example.com\n", "ops_alert_emails"),
    ],
)
def test_a_bad_alert_policy_is_refused_naming_the_field(tmp_path, extra, message):
    path = tmp_path / "requests.yaml"
    path.write_text('version: "t1"\n' + extra, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_policy_file(path, RequestsPolicy)
