"""An email address never drops an order (issue 8, defect 3), and a message that cannot be built never
loops (defect 8): the real pipeline on the real database, the real SendGrid SDK against the fake."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session

from aftercare.errors import TransientSendError
from aftercare.models import (
    Customer,
    HandoffStatus,
    InboxEvent,
    InboxStatus,
    Order,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
    TouchpointStatus,
    WarehouseHandoff,
)
from aftercare.orders import timeline, warehouse
from aftercare.rendering import RenderedEmail, Renderer
from aftercare.spine import outbox
from aftercare.spine.addresses import FLAG_EMAIL_NOT_ADDRESS, FLAG_EMAIL_UNUSUAL
from aftercare.spine.email import FileOutboxBackend, OutgoingEmail, SendGridBackend
from aftercare.spine.inbox import customer_keys
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tasks.receipt import preview_markdown
from tests.conftest import TEST_SECRET, shared_path
from tests.factories import SHOP, body_of, deliver, fulfillment_payload, order_payload, webhook_headers
from tests.fakes.sendgrid import INVALID_ADDRESS, FakeSendGrid, serve
from tests.pipeline import receive, rows, send_all

URL = "/webhooks/shopify"
LEGACY = ["taro..yamada@docomo.ne.jp", "taro.@ezweb.ne.jp"]
INJECTED_NAME = "Taro\r\nBcc: evil@example.com"


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    yield from serve(shared_path("contracts", "sendgrid", "tsg_mail_v3.json"))


def sendgrid(rt: Any, fake: FakeSendGrid) -> SendGridBackend:
    settings = rt.settings.model_copy(
        update={
            "email_backend": "sendgrid",
            "sendgrid_api_key": SecretStr(fake.api_key),
            "sendgrid_base_url": fake.url,
            "sendgrid_timeout_s": 2.0,
        }
    )
    return SendGridBackend.from_settings(settings)


def send_claimed(rt: Any, backend: Any) -> list[outbox.DeliveryResult]:
    claimed = outbox.claim_due(rt.engine, 10, "test-worker")
    return [
        outbox.deliver(rt.engine, c.outbox_id, backend, rt.settings, sleep=lambda _s: None) for c in claimed
    ]


def paid_order(email_value: Any, **overrides: Any) -> dict[str, Any]:
    payload = order_payload("ja-first-gift", **overrides)
    payload["email"] = email_value
    payload.pop("contact_email", None)
    if isinstance(payload.get("customer"), dict):
        payload["customer"]["email"] = email_value
    return payload


def the_order(rt: Any, order_id: int | None) -> Order:
    with Session(rt.engine) as s:
        order = s.get(Order, order_id)
        assert order is not None
        return order


# --- defect 3: an address email-validator refuses ------------------------------------------------------


@pytest.mark.parametrize("address", LEGACY)
def test_legacy_carrier_address_keeps_the_order_hand_off_and_fulfillment_and_is_attempted(rt, fake, address):
    payload = paid_order(f"  {address} ")
    out = receive(rt, payload)

    assert out.status == "done", out.reason
    order = the_order(rt, out.order_id)
    assert order.email == address  # as written, trimmed only
    assert FLAG_EMAIL_UNUSUAL in order.flags
    assert out.handoff_id is not None  # the warehouse is told to ship it
    [message] = rows(rt, OutboxMessage)
    assert message.to_email == address
    assert FLAG_EMAIL_UNUSUAL in preview_markdown(message)
    checked = timeline.order_timeline(rt.engine, order.name, rt.policies.delivery)
    assert FLAG_EMAIL_UNUSUAL in timeline.render_markdown(checked)

    shipped = receive(rt, fulfillment_payload(payload), topic="fulfillments/create")
    assert shipped.status == "done" and shipped.outbox_id is not None, shipped

    # A send is attempted for each; SendGrid refuses the address, failing just that message.
    results = send_claimed(rt, sendgrid(rt, fake))
    assert [r.status for r in results] == [OutboxStatus.FAILED, OutboxStatus.FAILED]
    assert all(INVALID_ADDRESS in (r.error or "") for r in results)
    assert [m["personalizations"][0]["to"][0]["email"] for m in fake.messages] == []
    assert len(fake.requests) == 2
    for touchpoint in rows(rt, Touchpoint, Touchpoint.kind.in_(("order_confirmation", "shipment_notice"))):
        assert touchpoint.status == TouchpointStatus.FAILED
        assert INVALID_ADDRESS in (touchpoint.reason or "")


def test_legacy_address_is_stored_by_the_webhook_as_pending_not_invalid(rt):
    payload = paid_order(LEGACY[0])
    body = body_of(payload)
    with TestClient(create_app(rt.settings, waker=NoWaker())) as client:
        response = client.post(URL, content=body, headers=webhook_headers(body, secret=TEST_SECRET))
    assert response.status_code == 200, response.text
    [row] = rows(rt, InboxEvent)
    assert (row.status, row.reason, row.subject_ref) == (InboxStatus.PENDING, None, payload["name"])


def test_customer_is_recognised_across_orders_by_the_lower_cased_address(rt):
    first = receive(rt, paid_order("Taro..Yamada@docomo.ne.jp", id=7001, name="#7001"))
    second = receive(rt, paid_order("taro..yamada@DOCOMO.ne.jp", id=7002, name="#7002"))

    [customer] = rows(rt, Customer)
    assert customer.email_key == "taro..yamada@docomo.ne.jp"
    assert the_order(rt, first.order_id).customer_id == customer.id
    assert the_order(rt, second.order_id).customer_id == customer.id
    assert the_order(rt, second.order_id).email == "taro..yamada@DOCOMO.ne.jp"
    assert the_order(rt, second.order_id).purchase_seq == 2
    # The receiving lanes (PostgreSQL) key the customer the same way, before anything is parsed.
    third = deliver(rt.engine, {"order": paid_order(" Taro..Yamada@docomo.ne.jp", id=7003, name="#7003")})
    nonsense = deliver(rt.engine, paid_order("none", id=7004, name="#7004"))
    assert third is not None and nonsense is not None
    assert customer_keys(rt.engine, [third, nonsense]) == {third: "email:taro..yamada@docomo.ne.jp"}


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("taro.docomo.ne.jp", "no @"),
        ("taro@docomo.ne.jp\nBcc: evil@example.com", "U+000A"),
        ("x" * 330 + "@example.com", "longer than 254"),
        ("a@example.com,b@example.com", "','"),
    ],
)
def test_a_value_that_is_not_an_address_keeps_the_order_and_skips_the_mail_saying_why(rt, address, why):
    payload = paid_order(address)
    out = receive(rt, payload)

    assert out.status == "done", out.reason
    order = the_order(rt, out.order_id)
    assert order.email == address[:320]
    assert FLAG_EMAIL_NOT_ADDRESS in order.flags
    assert out.handoff_id is not None
    assert rows(rt, OutboxMessage) == []
    assert rows(rt, Customer) == []  # guests who typed nonsense are not one customer
    [touchpoint] = rows(rt, Touchpoint, Touchpoint.kind == "order_confirmation")
    assert touchpoint.status == TouchpointStatus.SKIPPED
    assert "not an address" in (touchpoint.reason or "") and why in (touchpoint.reason or "")

    shipped = receive(rt, fulfillment_payload(payload), topic="fulfillments/create")
    assert shipped.status == "done" and shipped.outbox_id is None
    assert rows(rt, OutboxMessage) == []


# --- defect 8: a message that cannot be built or sent ----------------------------------------------


def test_control_characters_in_names_never_reach_a_header_or_a_template(rt):
    payload = order_payload("en-first")
    payload["customer"]["first_name"] = INJECTED_NAME
    payload["customer"]["last_name"] = "Yamada\u2028Bcc: evil2@example.com"
    out = receive(rt, payload)
    assert out.outbox_id is not None

    [result] = send_claimed(rt, rt.backend)

    assert result.status == OutboxStatus.SENT, result.error
    [message] = rows(rt, OutboxMessage)
    assert message.to_name is not None
    assert not any(c in message.to_name for c in "\r\n\x00\u2028")
    assert "\u2028" not in message.text_body and "\u2028" not in message.html_body
    assert "Dear Taro Bcc: evil@example.com Yamada Bcc: evil2@example.com," in message.text_body
    eml = email.message_from_bytes(
        FileOutboxBackend(rt.settings.outbox_dir).path_for(message.id).read_bytes(),
        policy=email.policy.default,
    )
    assert eml["Bcc"] is None
    assert [a.addr_spec for a in eml["To"].addresses] == [message.to_email]


def test_names_are_cleaned_when_the_mail_is_built_for_each_backend(tmp_path, fake):
    mail = OutgoingEmail(
        outbox_id=42,
        kind="test",
        to_email="taro@example.com",
        to_name="Taro\x00\r\nBcc: evil@example.com",
        from_email="shop@example.com",
        from_name="Shop\nBcc: evil@example.com\u2028",
        subject="s",
        text="t",
        html="<p>t</p>",
    )
    backend = FileOutboxBackend(tmp_path)
    backend.send(mail)
    raw = backend.path_for(42).read_bytes()
    headers = raw.split(b"\n\n", 1)[0]
    assert b"\x00" not in headers and b"Bcc" not in headers.split(b"To:", 1)[0].split(b"From:")[0]
    eml = email.message_from_bytes(raw, policy=email.policy.default)
    assert eml["Bcc"] is None
    assert eml["To"].addresses[0].display_name == "Taro Bcc: evil@example.com"
    assert eml["From"].addresses[0].display_name == "Shop Bcc: evil@example.com"

    body = SendGridBackend(sendgrid_client(fake)).build(mail).get()
    assert body["personalizations"][0]["to"][0]["name"] == "Taro Bcc: evil@example.com"
    assert body["from"]["name"] == "Shop Bcc: evil@example.com"


def sendgrid_client(fake: FakeSendGrid) -> Any:
    from sendgrid import SendGridAPIClient

    return SendGridAPIClient(api_key=fake.api_key, host=fake.url)


def test_a_message_the_email_library_refuses_fails_once_with_its_reason_and_is_never_requeued(rt):
    with Session(rt.engine) as s:
        staff = outbox.enqueue_staff(
            s,
            key="poison",
            kind="warehouse_alert",
            to_email="ops@example.com\nBcc: evil@example.com",
            rendered=RenderedEmail("alert", "text", "<p>html</p>"),
            locale="en",
        )
        s.commit()

    [result] = send_claimed(rt, rt.backend)

    assert result.status == OutboxStatus.FAILED
    assert result.error is not None and "ValueError" in result.error and "linefeed" in result.error
    # Nothing is left for recovery to requeue, nor for the next claim to take.
    assert outbox.recover_stale(rt.engine, rt.backend, timedelta(0)) == {}
    assert outbox.claim_due(rt.engine, 10, "test-worker") == []
    row = outbox.get(rt.engine, staff.id)
    assert row is not None and row.status == OutboxStatus.FAILED and row.attempts == 1


def test_an_unwritable_file_outbox_is_a_transient_error_not_a_failure(tmp_path):
    blocked = tmp_path / "outbox"
    backend = FileOutboxBackend(blocked)
    (blocked / "staff").write_text("a file where the staff folder goes")
    mail = OutgoingEmail(7, "k", "ops@example.com", None, "shop@example.com", None, "s", "t", "h", staff=True)
    with pytest.raises(TransientSendError):
        backend.send(mail)


def claimed_handoff(rt: Any) -> int:
    out = receive(rt, order_payload("ja-first-gift"))
    assert out.handoff_id is not None
    assert [c.handoff_id for c in warehouse.claim_due(rt.engine, 10)] == [out.handoff_id]
    return out.handoff_id


def test_a_hand_off_that_cannot_be_rendered_fails_with_its_reason_instead_of_staying_claimed(rt, tmp_path):
    handoff_id = claimed_handoff(rt)
    broken = Renderer(tmp_path / "no-templates")  # a deploy that lost its templates

    result = warehouse.hand_off(
        rt.engine,
        handoff_id,
        warehouse.FileWarehouse(rt.settings.warehouse_dir),
        broken,
        rt.policies,
        rt.settings,
    )

    assert result.status == HandoffStatus.FAILED
    assert result.error is not None and "TemplateNotFound" in result.error
    [row] = rows(rt, WarehouseHandoff)
    assert row.status == HandoffStatus.FAILED and row.attempts == 1
    assert warehouse.claim_due(rt.engine, 10, lease=timedelta(0)) == []


def test_a_hand_off_the_file_port_cannot_write_is_retried_with_attempts_counted(rt, tmp_path):
    handoff_id = claimed_handoff(rt)
    not_a_dir = tmp_path / "warehouse"
    not_a_dir.write_text("a file where the folder goes")

    result = warehouse.hand_off(
        rt.engine,
        handoff_id,
        warehouse.FileWarehouse(not_a_dir),
        rt.renderer,
        rt.policies,
        rt.settings,
        inline_wait_cap_s=0.0,
    )

    assert result.status == HandoffStatus.PENDING
    assert result.error is not None and "could not write the hand-off" in result.error
    [row] = rows(rt, WarehouseHandoff)
    assert row.status == HandoffStatus.PENDING and row.attempts == 1


def test_packing_slip_names_are_cleaned_like_every_name(rt):
    payload = order_payload("ja-first-gift")
    payload["shipping_address"]["name"] = "山田\u2028花子\r\nBcc: evil@example.com"
    assert receive(rt, payload).handoff_id is not None

    [result] = send_all(rt, warehouse.FileWarehouse(rt.settings.warehouse_dir))

    assert result.status == HandoffStatus.SENT, result.error
    folder = warehouse.order_folder(rt.settings.warehouse_dir, SHOP, str(payload["id"]))
    for name in ("packing_slip.txt", "packing_slip.html"):
        slip = (folder / name).read_text(encoding="utf-8")
        assert "\u2028" not in slip and "\r" not in slip
        assert "山田 花子 Bcc: evil@example.com" in slip
