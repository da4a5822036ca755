"""The real SendGridBackend (the official SDK, over HTTP) against a fake SendGrid on loopback, with the
real outbox on the real database. Every request the fake receives is checked against SendGrid's
published Mail Send contract; no test really sleeps (deliver's `sleep` is a recorder)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import Session

from aftercare.models import OutboxMessage, OutboxStatus, Touchpoint, utcnow
from aftercare.processing import process_row
from aftercare.rendering import RenderedEmail
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine.email import RESERVED_HEADERS, InvalidHeader, SendGridBackend, check_headers
from aftercare.spine.outbox import DeliveryResult, claim_due, deliver, enqueue, get
from tests import factories
from tests.conftest import shared_path
from tests.fakes.sendgrid import FakeSendGrid, serve

pytestmark = pytest.mark.contract


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    """Whatever else a test checks, nothing it sends may break SendGrid's published contract."""
    yield from serve(shared_path("contracts", "sendgrid", "tsg_mail_v3.json"))


def sendgrid_settings(settings: Settings, fake: FakeSendGrid, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "email_backend": "sendgrid",
        "sendgrid_api_key": SecretStr(fake.api_key),
        "sendgrid_base_url": fake.url,
        "sendgrid_timeout_s": 2.0,
        **overrides,
    }
    return settings.model_copy(update=values)


@pytest.fixture
def sg_settings(settings: Settings, fake: FakeSendGrid) -> Settings:
    return sendgrid_settings(settings, fake)


@pytest.fixture
def backend(sg_settings: Settings) -> SendGridBackend:
    return SendGridBackend.from_settings(sg_settings)


class Sleeps(list[float]):
    """Stands in for time.sleep: records the waits deliver asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def claimed_confirmation(rt: Runtime, sample: str = "ja-first-gift", **overrides: Any) -> int:
    """An order through the real processing, its confirmation claimed: the outbox id to deliver."""
    inbox_id = factories.deliver(rt.engine, factories.order_payload(sample, **overrides))
    assert inbox_id is not None
    outcome = process_row(rt, inbox_id)
    assert outcome.outbox_id is not None, outcome
    assert [c.outbox_id for c in claim_due(rt.engine, 10, "test-worker")] == [outcome.outbox_id]
    return outcome.outbox_id


def send(
    rt: Runtime, outbox_id: int, backend: SendGridBackend, settings: Settings, sleeps: Sleeps, **kw: Any
) -> DeliveryResult:
    return deliver(rt.engine, outbox_id, backend, settings, sleep=sleeps, **kw)


# -- success -------------------------------------------------------------------------------------


def test_sent_message_records_the_providers_id_and_meets_the_contract(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    outbox_id = claimed_confirmation(rt)

    result = send(rt, outbox_id, backend, sg_settings, sleeps)

    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (result.status, row.status, row.attempts) == ("sent", OutboxStatus.SENT, 1)
    assert row.provider == "sendgrid"
    assert row.provider_message_id == fake.message_ids[0] == result.provider_message_id
    assert row.sent_at is not None and row.last_error is None
    assert sleeps == []
    assert len(fake.requests) == 1 and fake.requests[0].headers["authorization"] == f"Bearer {fake.api_key}"
    [body] = fake.messages
    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": row.to_email, "name": row.to_name}]
    assert personalization["custom_args"] == {"outbox_id": str(outbox_id), "kind": row.kind}
    assert body["from"] == {"email": sg_settings.email_from, "name": sg_settings.email_from_name}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert sorted(body["categories"]) == sorted(["aftercare", row.kind])
    assert "custom_args" not in body  # the document types the message-level one as a string


def test_japanese_subject_and_body_arrive_intact(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    outbox_id = claimed_confirmation(rt, "ja-first-gift")

    send(rt, outbox_id, backend, sg_settings, sleeps)

    row = get(rt.engine, outbox_id)
    assert row is not None and row.locale == "ja"
    assert any("\u3040" <= ch <= "\u9fff" for ch in row.subject + row.text_body), "sample not Japanese"
    [body] = fake.messages
    assert body["subject"] == row.subject
    assert body["personalizations"][0]["to"][0]["name"] == row.to_name
    assert {c["type"]: c["value"] for c in body["content"]} == {
        "text/plain": row.text_body,
        "text/html": row.html_body,
    }


def test_test_orders_are_marked_for_the_provider(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    outbox_id = claimed_confirmation(rt, "en-first", test=True)

    send(rt, outbox_id, backend, sg_settings, sleeps)

    [body] = fake.messages
    assert "test" in body["categories"]
    assert body["personalizations"][0]["custom_args"]["test"] == "true"
    assert body["subject"].startswith("[TEST] ")


# -- transient errors: retried inline, honouring the provider's wait -----------------------------


def test_429_with_retry_after_waits_as_told_then_sends(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    outbox_id = claimed_confirmation(rt)
    fake.plan(429, headers={"Retry-After": "3"})

    result = send(rt, outbox_id, backend, sg_settings, sleeps)

    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (result.status, row.status, row.attempts) == ("sent", OutboxStatus.SENT, 2)
    assert sleeps == [3.0]
    assert [r.status for r in fake.requests] == [429, 202]
    assert row.provider_message_id == fake.message_ids[0]


def test_429_with_ratelimit_reset_waits_until_the_reset(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    outbox_id = claimed_confirmation(rt)
    fake.plan(429, headers={"X-RateLimit-Reset": str(int(time.time()) + 6)})

    result = send(rt, outbox_id, backend, sg_settings, sleeps)

    assert (result.status, result.attempts) == ("sent", 2)
    [wait] = sleeps
    assert 4.0 < wait <= 6.0
    assert [r.status for r in fake.requests] == [429, 202]


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_with_backoff(
    rt: Runtime,
    fake: FakeSendGrid,
    backend: SendGridBackend,
    sg_settings: Settings,
    sleeps: Sleeps,
    status: int,
) -> None:
    outbox_id = claimed_confirmation(rt)
    fake.plan(status)
    fake.plan(status)

    result = send(rt, outbox_id, backend, sg_settings, sleeps)

    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.SENT, 3, None)
    base = sg_settings.send_backoff_base_s
    assert sleeps == [base, base * 2]
    assert [r.status for r in fake.requests] == [status, status, 202]
    assert result.provider_message_id == fake.message_ids[0]


def test_a_provider_that_takes_the_request_but_never_answers_is_not_resent(
    rt: Runtime, settings: Settings, fake: FakeSendGrid, sleeps: Sleeps
) -> None:
    """A read timeout is ambiguous: SendGrid may have accepted the mail (the fake does, after the
    client gave up). Resending could mail the customer twice, so the row waits for a person."""
    fast = sendgrid_settings(settings, fake, sendgrid_timeout_s=0.5)
    outbox_id = claimed_confirmation(rt)
    fake.plan_delay(10)  # far beyond the client's timeout; dropped when the fake stops

    started = time.monotonic()
    result = send(rt, outbox_id, SendGridBackend.from_settings(fast), fast, sleeps)

    assert result.status == "uncertain" and time.monotonic() - started < 5
    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (row.status, row.attempts) == (OutboxStatus.UNCERTAIN, 1)
    assert f"outbox_id={outbox_id}" in (row.last_error or "")
    assert sleeps == []
    assert len(fake.requests) == 1  # never a second request


def test_an_unreachable_provider_is_retried_then_fails(
    rt: Runtime, settings: Settings, fake: FakeSendGrid, sleeps: Sleeps
) -> None:
    """Connection refused: nothing reached the provider, so retrying is safe."""
    closed = sendgrid_settings(settings, fake).model_copy(update={"sendgrid_base_url": "http://127.0.0.1:1"})
    outbox_id = claimed_confirmation(rt)

    result = send(rt, outbox_id, SendGridBackend.from_settings(closed), closed, sleeps)

    assert (
        result.status == "failed"
        and "gave up" in (result.error or "")
        and "unreachable" in (result.error or "")
    )
    assert len(sleeps) == closed.send_max_attempts - 1
    assert fake.requests == []


def test_attempts_run_out_and_the_row_fails(
    rt: Runtime, settings: Settings, fake: FakeSendGrid, sleeps: Sleeps
) -> None:
    few = sendgrid_settings(settings, fake, send_max_attempts=3)
    outbox_id = claimed_confirmation(rt)
    for _ in range(3):
        fake.plan(503)

    result = send(rt, outbox_id, SendGridBackend.from_settings(few), few, sleeps)

    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (result.status, row.status, row.attempts) == ("failed", OutboxStatus.FAILED, 3)
    assert row.last_error is not None and row.last_error.startswith("gave up")
    assert "503" in row.last_error
    assert len(fake.requests) == 3 and fake.messages == []
    assert len(sleeps) == 2


def test_a_long_retry_after_reschedules_instead_of_waiting(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    outbox_id = claimed_confirmation(rt)
    fake.plan(429, headers={"Retry-After": "120"})

    before = utcnow()
    result = send(rt, outbox_id, backend, sg_settings, sleeps, inline_wait_cap_s=30.0)

    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (result.status, row.status, row.attempts) == ("pending", OutboxStatus.PENDING, 1)
    assert before + timedelta(seconds=110) < row.next_attempt_at <= utcnow() + timedelta(seconds=121)
    assert row.claimed_by is None and row.last_error is not None and "429" in row.last_error
    assert sleeps == []
    assert len(fake.requests) == 1
    assert claim_due(rt.engine, 10, "another-worker") == []  # not due yet


# -- permanent errors: one request, the provider's reason kept -----------------------------------


@pytest.mark.parametrize(
    ("status", "message", "field"),
    [
        (400, "The from email does not contain a valid address.", "from.email"),
        (401, "The provided authorization grant is invalid, expired, or revoked", None),
        (403, "The from address does not match a verified Sender Identity.", None),
        (413, "The JSON payload you have included in your request is too large.", None),
    ],
)
def test_permanent_errors_are_not_retried(
    rt: Runtime,
    fake: FakeSendGrid,
    backend: SendGridBackend,
    sg_settings: Settings,
    sleeps: Sleeps,
    status: int,
    message: str,
    field: str | None,
) -> None:
    outbox_id = claimed_confirmation(rt)
    fake.plan(status, errors=[{"message": message, "field": field, "help": None}])

    result = send(rt, outbox_id, backend, sg_settings, sleeps)

    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (result.status, row.status, row.attempts) == ("failed", OutboxStatus.FAILED, 1)
    assert row.last_error is not None and message in row.last_error and str(status) in row.last_error
    assert len(fake.requests) == 1 and fake.messages == []
    assert sleeps == []


def test_a_wrong_api_key_is_refused_once(
    rt: Runtime, settings: Settings, fake: FakeSendGrid, sleeps: Sleeps
) -> None:
    wrong = sendgrid_settings(settings, fake, sendgrid_api_key=SecretStr("SG.not-the-key"))
    outbox_id = claimed_confirmation(rt)

    result = send(rt, outbox_id, SendGridBackend.from_settings(wrong), wrong, sleeps)

    row = get(rt.engine, outbox_id)
    assert row is not None
    assert (result.status, row.status) == ("failed", OutboxStatus.FAILED)
    assert row.last_error is not None and "401" in row.last_error and "authorization grant" in row.last_error
    assert [r.status for r in fake.requests] == [401]


# -- exactly once --------------------------------------------------------------------------------


def test_a_sent_message_is_never_sent_again(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    outbox_id = claimed_confirmation(rt)
    first = send(rt, outbox_id, backend, sg_settings, sleeps)

    again = send(rt, outbox_id, backend, sg_settings, sleeps)
    reclaimed = claim_due(rt.engine, 10, "another-worker")

    assert (first.status, again.status) == ("sent", "sent")
    assert again.provider_message_id == first.provider_message_id
    assert reclaimed == []
    assert len(fake.requests) == 1 and len(fake.messages) == 1


# -- the contract check itself -------------------------------------------------------------------


def post_raw(fake: FakeSendGrid, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        fake.url + "/v3/mail/send",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {fake.api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


VALID = {
    "personalizations": [{"to": [{"email": "hanako@example.jp"}], "custom_args": {"outbox_id": "1"}}],
    "from": {"email": "shop@example.com"},
    "subject": "ご注文ありがとうございます",
    "content": [{"type": "text/plain", "value": "本文"}],
    "custom_args": {"outbox_id": "1"},  # an object at the message level, as the SDK sends it
}


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ({k: v for k, v in VALID.items() if k != "personalizations"}, "personalizations"),
        ({**VALID, "personalizations": [{"custom_args": {"outbox_id": "1"}}]}, "personalizations.0.to"),
        ({**VALID, "from": {"name": "no address"}}, "from.email"),
        ({**VALID, "content": [{"type": "text/plain", "value": ""}]}, "content.0.value"),
        ({**VALID, "categories": ["aftercare", "aftercare"]}, "categories"),
    ],
)
def test_the_fake_rejects_a_body_that_breaks_the_contract(
    fake: FakeSendGrid, broken: dict[str, Any], field: str
) -> None:
    assert post_raw(fake, VALID)[0] == 202

    status, error = post_raw(fake, broken)

    assert status == 400
    assert field in [e["field"] for e in error["errors"]]
    assert all(set(e) == {"message", "field", "help"} for e in error["errors"])
    assert len(fake.violations) == 1 and fake.violations[0].body == broken
    assert len(fake.messages) == 1
    fake.violations.clear()  # seen and asserted: the fixture's own check would fail on it


def test_a_provider_down_for_minutes_is_waited_out_not_failed(
    rt: Runtime, settings: Settings, fake: FakeSendGrid, sleeps: Sleeps
) -> None:
    """Found by the fault suite: SendGrid answering 500 for a minute used up every attempt (2 s
    doubling, 5 attempts: half a minute) and the confirmation was failed for good. The defaults now
    wait out ~23 minutes of outage, in rescheduled steps, before a message is given up."""
    live = sendgrid_settings(settings, fake, send_backoff_base_s=2.0)  # the defaults' schedule
    outbox_id = claimed_confirmation(rt)
    fake.set_fault("500")
    waited = 0.0
    for _ in range(live.send_max_attempts):
        result = send(rt, outbox_id, SendGridBackend.from_settings(live), live, sleeps)
        waited = sum(sleeps)
        if result.status != "pending":
            break
        with Session(rt.engine) as s:  # the clock in the test's hands: the rescheduled try is due now
            row = s.get(OutboxMessage, outbox_id)
            waited += (row.next_attempt_at - utcnow()).total_seconds()
            row.next_attempt_at, row.status = utcnow(), "sending"
            s.add(row)
            s.commit()
        if waited > 120:  # two minutes of outage waited out, and still trying
            break
    assert result.status == "pending" and waited > 120, (result, waited)
    fake.set_fault(None)
    with Session(rt.engine) as s:
        row = s.get(OutboxMessage, outbox_id)
        row.next_attempt_at, row.status = utcnow(), "sending"
        s.add(row)
        s.commit()
    final = send(rt, outbox_id, SendGridBackend.from_settings(live), live, sleeps)
    assert final.status == "sent" and fake.requests[-1].status == 202


# -- extra headers (List-Unsubscribe, RFC 8058) -----------------------------------------------------


def _reserved_in_contract() -> set[str]:
    """The headers SendGrid's Mail Send document says may not be overridden, read from the document."""
    document = json.loads(
        shared_path("contracts", "sendgrid", "tsg_mail_v3.json").read_text(encoding="utf-8")
    )
    body = document["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]["schema"]
    description = body["properties"]["headers"]["description"]
    names = {n.lower() for n in re.findall(r"`([^`]+)`", description.split("may not override", 1)[1])}
    assert {"from", "to", "subject", "dkim-signature"} <= names, description
    return names


def test_extra_headers_travel_as_message_headers_within_the_contract(
    rt: Runtime, fake: FakeSendGrid, backend: SendGridBackend, sg_settings: Settings, sleeps: Sleeps
) -> None:
    inbox_id = factories.deliver(rt.engine, factories.order_payload("ja-first-gift"))
    assert inbox_id is not None
    outbox_id = process_row(rt, inbox_id).outbox_id
    assert outbox_id is not None
    unsubscribe = "https://shop.example/unsubscribe/" + "t" * 180
    headers = {
        "List-Unsubscribe": f"<{unsubscribe}>, <mailto:support@shop.example?subject=unsubscribe>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    with Session(rt.engine) as session:
        row = session.get(OutboxMessage, outbox_id)
        assert row is not None and row.touchpoint_id is not None
        touchpoint = session.get(Touchpoint, row.touchpoint_id)
        assert touchpoint is not None
        enqueue(  # the row is still pending: enqueue again refreshes it, headers included
            session,
            touchpoint=touchpoint,
            to_email=row.to_email,
            to_name=row.to_name,
            rendered=RenderedEmail(row.subject, row.text_body, row.html_body),
            locale=row.locale,
            order_name=row.order_name,
            is_test=False,
            headers=headers,
        )
        session.commit()
    assert [c.outbox_id for c in claim_due(rt.engine, 10, "test-worker")] == [outbox_id]

    assert send(rt, outbox_id, backend, sg_settings, sleeps).status == "sent"

    assert fake.violations == []
    [body] = fake.messages
    assert body["headers"] == headers  # message-level, exactly once each
    assert all(isinstance(v, str) for v in body["headers"].values())
    assert not {n.lower() for n in body["headers"]} & _reserved_in_contract()
    assert "headers" not in body["personalizations"][0]


def test_headers_the_contract_forbids_are_refused_before_sendgrid_is_asked(fake: FakeSendGrid) -> None:
    for name in sorted(_reserved_in_contract()):
        with pytest.raises(InvalidHeader):
            check_headers({name: "x"})
    assert RESERVED_HEADERS >= _reserved_in_contract()
    assert fake.requests == []
