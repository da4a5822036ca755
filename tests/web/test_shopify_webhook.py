"""POST /webhooks/shopify: authenticate, bound the size, store in the inbox, then acknowledge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.models import InboxEvent, InboxStatus, Order, OrderLine
from aftercare.orders import shopify
from aftercare.settings import Settings
from aftercare.spine.db import make_engine
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import SHOP, body_of, fulfillment_payload, order_payload, refund_payload, webhook_headers
from tests.pipeline import drain

URL = "/webhooks/shopify"
MIB = 1024 * 1024


@pytest.fixture
def waker() -> NoWaker:
    return NoWaker()


@pytest.fixture
def client(settings: Settings, waker: NoWaker) -> Iterator[TestClient]:
    with TestClient(create_app(settings, waker=waker)) as c:
        yield c


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings)
    yield eng
    eng.dispose()


def inbox_rows(engine: Engine) -> list[InboxEvent]:
    with Session(engine) as s:
        return list(s.exec(select(InboxEvent).order_by(InboxEvent.id)).all())


def only_row(engine: Engine) -> InboxEvent:
    rows = inbox_rows(engine)
    assert len(rows) == 1, rows
    return rows[0]


def post(client: TestClient, body: bytes, **header_kw: Any) -> Any:
    return client.post(URL, content=body, headers=webhook_headers(body, secret=TEST_SECRET, **header_kw))


def assert_refused_unauthenticated(resp: Any, engine: Engine, waker: NoWaker) -> None:
    assert resp.status_code == 401
    assert "X-Shopify-Hmac-Sha256" in resp.json()["error"]
    assert inbox_rows(engine) == []
    assert waker.pokes == 0


# --- authentication ------------------------------------------------------------------------------


def test_wrong_hmac_is_refused_and_nothing_stored(client, engine, waker):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    headers["X-Shopify-Hmac-Sha256"] = base64.b64encode(b"\0" * 32).decode()
    assert_refused_unauthenticated(client.post(URL, content=body, headers=headers), engine, waker)


def test_hex_encoded_hmac_is_refused(client, engine, waker):
    """Shopify sends base64; the right digest in hex is still a wrong header."""
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    headers["X-Shopify-Hmac-Sha256"] = hmac.new(TEST_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert_refused_unauthenticated(client.post(URL, content=body, headers=headers), engine, waker)


def test_missing_hmac_is_refused(client, engine, waker):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    del headers["X-Shopify-Hmac-Sha256"]
    assert_refused_unauthenticated(client.post(URL, content=body, headers=headers), engine, waker)


def test_empty_hmac_is_refused(client, engine, waker):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    headers["X-Shopify-Hmac-Sha256"] = ""
    assert_refused_unauthenticated(client.post(URL, content=body, headers=headers), engine, waker)


def test_hmac_over_a_different_body_is_refused(client, engine, waker):
    signed = body_of(order_payload(total_price="12100"))
    tampered = body_of(order_payload(total_price="1"))
    headers = webhook_headers(signed, secret=TEST_SECRET)
    assert_refused_unauthenticated(client.post(URL, content=tampered, headers=headers), engine, waker)


def test_hmac_with_another_secret_is_refused(client, engine, waker):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret="some-other-shops-secret")
    assert_refused_unauthenticated(client.post(URL, content=body, headers=headers), engine, waker)


# --- a valid order -------------------------------------------------------------------------------


def test_valid_order_is_stored_pending_with_its_headers(client, engine, waker):
    body = body_of(order_payload())
    resp = post(client, body, topic="orders/paid", webhook_id="wh-valid-1", event_id="ev-valid-1")

    assert resp.status_code == 200
    row = only_row(engine)
    assert resp.json() == {"status": "pending", "inbox_id": row.id}
    assert row.status == InboxStatus.PENDING
    assert row.reason is None
    assert row.source == "shopify"
    assert row.body == body  # byte-for-byte, including the non-ASCII text
    assert row.subject_ref == "#1101"
    assert row.topic == "orders/paid"
    assert row.shop_domain == SHOP
    assert row.delivery_id == "wh-valid-1"
    assert row.event_id == "ev-valid-1"
    assert row.triggered_at is not None and row.triggered_at.tzinfo is not None
    assert row.triggered_at == datetime(2026, 11, 20, 1, 15, tzinfo=UTC)
    assert row.received_at.tzinfo is not None
    assert row.processed_at is None
    assert row.attempts == 0
    assert waker.pokes == 1


def test_raw_body_is_kept_byte_for_byte_even_when_not_canonical_json(client, engine):
    """Whitespace, key order and \\u escapes are part of what was signed; nothing is re-serialised."""
    payload = order_payload()
    body = ("\n  " + json.dumps(payload, ensure_ascii=True, indent=3, sort_keys=True) + "\r\n").encode()
    resp = post(client, body)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    assert only_row(engine).body == body


def test_order_wrapped_in_an_order_key_is_accepted(client, engine, waker):
    body = body_of({"order": order_payload(name="#W-1")})
    resp = post(client, body)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    assert only_row(engine).subject_ref == "#W-1"
    assert waker.pokes == 1


# --- duplicates ----------------------------------------------------------------------------------


def test_same_webhook_id_twice_is_stored_once(client, engine, waker):
    body = body_of(order_payload())
    first = post(client, body, webhook_id="wh-dup")
    second = post(client, body, webhook_id="wh-dup")  # a fresh event id: the webhook id alone decides

    assert first.status_code == 200 and first.json()["status"] == "pending"
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate"}
    row = only_row(engine)
    assert row.id == first.json()["inbox_id"]
    assert waker.pokes == 1


def test_same_event_id_with_a_different_webhook_id_is_a_duplicate(client, engine, waker):
    body = body_of(order_payload())
    first = post(client, body, webhook_id="wh-a", event_id="ev-shared")
    second = post(client, body, webhook_id="wh-b", event_id="ev-shared")

    assert first.json()["status"] == "pending"
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate"}
    assert only_row(engine).delivery_id == "wh-a"
    assert waker.pokes == 1


def test_different_ids_are_two_deliveries(client, engine, waker):
    """The control for the duplicate tests: distinct ids are not collapsed."""
    body = body_of(order_payload())
    assert post(client, body, webhook_id="wh-1", event_id="ev-1").json()["status"] == "pending"
    assert post(client, body, webhook_id="wh-2", event_id="ev-2").json()["status"] == "pending"
    assert [r.delivery_id for r in inbox_rows(engine)] == ["wh-1", "wh-2"]
    assert waker.pokes == 2


# --- authentic but unusable payloads: stored for ops, answered 200 -------------------------------


def assert_stored_invalid(resp: Any, engine: Engine, waker: NoWaker, body: bytes) -> InboxEvent:
    assert resp.status_code == 200
    row = only_row(engine)
    assert resp.json() == {"status": "invalid", "inbox_id": row.id, "reason": row.reason}
    assert row.status == InboxStatus.INVALID
    assert row.reason
    assert row.body == body
    assert row.subject_ref is None
    assert row.processed_at is not None  # settled at once: never claimed, never retried
    assert waker.pokes == 0
    return row


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json {",
        b'{"id": 1,',
        b"",
        b"\xff\xfe\x00not utf-8",
    ],
    ids=["text", "truncated", "empty", "not-utf8"],
)
def test_body_that_is_not_json_is_stored_invalid(client, engine, waker, body):
    row = assert_stored_invalid(post(client, body), engine, waker, body)
    assert "JSON" in row.reason


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda p: p.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p.__setitem__(key, value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_drop("id"), "id"),
        (_drop("name"), "name"),
        (_drop("total_price"), "total_price"),
        (_drop("created_at"), "created_at"),
        (_set("line_items", "not a list"), "line_items"),
        (_set("line_items", {"id": 1}), "line_items"),
        (_set("total_price", "abc"), "total_price"),
        (_set("currency", "YENS"), "currency"),
        (_set("created_at", "2026-11-20T10:15:00"), "created_at"),
        (_set("id", 2**63), "id"),
        (_set("id", 0), "id"),
    ],
    ids=[
        "no-id",
        "no-name",
        "no-total",
        "no-created-at",
        "line-items-str",
        "line-items-obj",
        "total-abc",
        "bad-currency",
        "naive-created-at",
        "id-beyond-bigint",
        "id-zero",
    ],
)
def test_json_with_missing_or_bad_fields_is_stored_invalid_naming_the_field(
    client, engine, waker, mutate, field
):
    payload = order_payload()
    mutate(payload)
    body = body_of(payload)
    row = assert_stored_invalid(post(client, body), engine, waker, body)
    assert re.search(rf"(?<![\w.]){re.escape(field)}(?![\w])", row.reason), row.reason


@pytest.mark.parametrize(
    ("topic", "make", "field"),
    [
        ("fulfillments/create", lambda o: fulfillment_payload(o, id=2**63), "id"),
        ("fulfillments/update", lambda o: fulfillment_payload(o, order_id=-5), "order_id"),
        ("refunds/create", lambda o: refund_payload(o, id=2**64), "id"),
    ],
    ids=["fulfillment-id-beyond-bigint", "fulfillment-negative-order-id", "refund-id-beyond-bigint"],
)
def test_ids_the_database_cannot_hold_are_stored_invalid_not_retried(
    client, engine, waker, topic, make, field
):
    body = body_of(make(order_payload()))
    row = assert_stored_invalid(post(client, body, topic=topic), engine, waker, body)
    assert re.search(rf"(?<![\w.]){re.escape(field)}(?![\w])", row.reason), row.reason


def test_bad_line_item_field_is_named_with_its_position(client, engine, waker):
    payload = order_payload()
    payload["line_items"][1]["quantity"] = -1
    body = body_of(payload)
    row = assert_stored_invalid(post(client, body), engine, waker, body)
    assert "line_items.1.quantity" in row.reason


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"id": 1}]', b'"an order"', b"null", b"42", b'{"order": null}'],
    ids=["empty-array", "array", "string", "null", "number", "order-null"],
)
def test_json_that_is_not_an_object_is_stored_invalid(client, engine, waker, body):
    row = assert_stored_invalid(post(client, body), engine, waker, body)
    assert "object" in row.reason or "Field required" in row.reason


def test_unknown_topic_is_stored_ignored(client, engine, waker):
    body = b'{"id": 632910392, "title": "IPod Nano - 8GB"}'
    resp = post(client, body, topic="products/create")

    assert resp.status_code == 200
    row = only_row(engine)
    assert resp.json() == {"status": "ignored", "inbox_id": row.id, "reason": row.reason}
    assert row.status == InboxStatus.IGNORED
    assert "products/create" in row.reason
    assert row.topic == "products/create"
    assert row.body == body
    assert row.subject_ref is None
    assert waker.pokes == 0


def test_missing_topic_header_is_stored_invalid(client, engine, waker):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    del headers["X-Shopify-Topic"]
    row = assert_stored_invalid(client.post(URL, content=body, headers=headers), engine, waker, body)
    assert "X-Shopify-Topic" in row.reason
    assert row.topic == ""


# --- size limit ----------------------------------------------------------------------------------


CAP = 8 * MIB  # the default hard cap (AFTERCARE_MAX_BODY_BYTES)


def big_order(size: int) -> bytes:
    """An order of about `size` bytes the way Shopify makes one large: hundreds of lines, a long note."""
    lines = [
        {**line, "id": 7000000 + n, "title": f"今治タオル {n}", "sku": f"TOWEL-{n:04d}"}
        for n, line in enumerate(order_payload()["line_items"] * 300)
    ]
    payload = order_payload(line_items=lines, note="")
    payload["note"] = "配達前にお電話ください。" * ((size - len(body_of(payload))) // 36 + 1)
    body = body_of(payload)
    assert size <= len(body) < size + 64
    return body


def assert_refused_too_large(resp: Any, engine: Engine, waker: NoWaker, caplog: Any, size: str) -> None:
    assert resp.status_code == 413 and str(CAP) in resp.json()["error"]
    assert inbox_rows(engine) == [] and waker.pokes == 0
    [warning] = [r.getMessage() for r in caplog.records if "over the" in r.getMessage()]
    assert size in warning and "nothing stored" in warning
    assert "'orders/create'" in warning and repr(SHOP) in warning and "'w-huge'" in warning


def test_a_signed_order_over_one_mib_is_stored_and_processed(client, engine, waker, rt):
    """Nothing a shop sends is lost: a 2 MiB order is authentic Shopify, not an attack."""
    body = big_order(2 * MIB)
    resp = client.post(URL, content=body, headers=webhook_headers(body, secret=TEST_SECRET))
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    assert only_row(engine).body == body and waker.pokes == 1

    [outcome] = drain(rt)
    assert outcome.status == "done"
    with Session(engine) as s:
        [order] = s.exec(select(Order)).all()
        assert order.name == "#1101" and order.note == json.loads(body)["note"]
        assert len(s.exec(select(OrderLine)).all()) == len(json.loads(body)["line_items"])


def test_a_forged_body_over_one_mib_is_401_and_nothing_stored(client, engine, waker):
    body = big_order(2 * MIB)
    headers = webhook_headers(body, secret="not-the-shops-secret")
    assert_refused_unauthenticated(client.post(URL, content=body, headers=headers), engine, waker)


def test_body_over_the_cap_with_content_length_is_413_and_logged(client, engine, waker, settings, caplog):
    assert settings.max_body_bytes == CAP
    body = b"x" * (CAP + 1)
    headers = webhook_headers(body, secret=TEST_SECRET, webhook_id="w-huge")  # authentic: only too big
    req = client.build_request("POST", URL, content=body, headers=headers)
    assert req.headers["content-length"] == str(CAP + 1)
    assert_refused_too_large(client.send(req), engine, waker, caplog, f"{CAP + 1} bytes")


def test_chunked_body_over_the_cap_without_content_length_is_413_and_logged(client, engine, waker, caplog):
    chunks = [b"y" * MIB] * 8 + [b"z"]  # the cap + 1 byte
    body = b"".join(chunks)
    headers = webhook_headers(body, secret=TEST_SECRET, webhook_id="w-huge")
    req = client.build_request("POST", URL, content=iter(chunks), headers=headers)
    assert "content-length" not in req.headers and req.headers["transfer-encoding"] == "chunked"
    assert_refused_too_large(client.send(req), engine, waker, caplog, f"more than {CAP} bytes")


def test_chunked_body_under_the_limit_is_accepted(client, engine, waker):
    """The control for the chunked refusal: streaming by itself is fine."""
    body = body_of(order_payload())
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    headers = webhook_headers(body, secret=TEST_SECRET)
    req = client.build_request("POST", URL, content=iter(chunks), headers=headers)
    assert "content-length" not in req.headers

    resp = client.send(req)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    assert only_row(engine).body == body
    assert waker.pokes == 1


def test_body_of_exactly_the_limit_is_accepted(client, engine, waker):
    base = body_of(order_payload(note=""))
    body = body_of(order_payload(note="x" * (MIB - len(base))))
    assert len(body) == MIB

    resp = post(client, body)
    assert resp.status_code == 200
    row = only_row(engine)
    assert resp.json() == {"status": "pending", "inbox_id": row.id}
    assert len(row.body) == MIB and row.body == body
    assert waker.pokes == 1


# --- hostile or odd content ----------------------------------------------------------------------


def test_html_and_script_in_order_text_are_stored_verbatim(client, engine):
    name = "<script>alert('name')</script>"
    note = '<img src=x onerror="alert(1)">&amp; notes'
    gift = "</p><script>document.cookie</script> おめでとう"
    first = "<b>Hanako</b>"
    payload = order_payload(
        name=name, note=note, note_attributes=[{"name": "ギフトメッセージ", "value": gift}]
    )
    payload["customer"]["first_name"] = first
    payload["shipping_address"]["name"] = first
    body = body_of(payload)

    resp = post(client, body)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    row = only_row(engine)
    assert row.body == body
    assert row.subject_ref == name
    stored = json.loads(row.body)
    assert stored["note"] == note
    assert stored["note_attributes"][0]["value"] == gift
    assert stored["customer"]["first_name"] == first
    assert b"&lt;" not in row.body


def test_huge_webhook_and_event_ids_are_truncated_to_the_column(client, engine, waker):
    body = body_of(order_payload())
    resp = post(client, body, webhook_id="w" * 500, event_id="e" * 500)

    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    row = only_row(engine)
    assert row.delivery_id == "w" * 128
    assert row.event_id == "e" * 128
    assert waker.pokes == 1


def test_unicode_webhook_id_does_not_crash(client, engine):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    raw_id = ("注文-ü-🎁-" * 60).encode()  # far over 128 bytes, not ASCII (HTTP carries it as latin-1)
    sent: dict[str, Any] = {**headers, "X-Shopify-Webhook-Id": raw_id}

    resp = client.post(URL, content=body, headers=sent)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    row = only_row(engine)
    assert row.delivery_id == raw_id.decode("latin-1")[:128]
    assert len(row.delivery_id) == 128


@pytest.mark.parametrize(
    "value",
    [
        "not-a-date",
        "2026-13-45T99:00:00Z",
        "2026-11-20T01:15:00",
        "1763601300",
        "",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
    ],
    ids=["text", "impossible", "naive", "epoch", "empty", "past-max-in-utc", "before-min-in-utc"],
)
def test_invalid_triggered_at_is_stored_as_none(client, engine, value):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    headers["X-Shopify-Triggered-At"] = value

    resp = client.post(URL, content=body, headers=headers)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    row = only_row(engine)
    assert row.triggered_at is None
    assert row.body == body


def test_triggered_at_with_an_offset_is_stored_in_utc(client, engine):
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    headers["X-Shopify-Triggered-At"] = "2026-11-20T10:15:00+09:00"

    assert client.post(URL, content=body, headers=headers).status_code == 200
    assert only_row(engine).triggered_at == datetime(2026, 11, 20, 1, 15, tzinfo=UTC)


def test_nul_in_order_name_does_not_fail_the_insert(client, engine, waker):
    """PostgreSQL text cannot hold NUL: the label drops it, the raw body keeps it."""
    body = body_of(order_payload(name="#11\u000001"))
    assert b"\\u0000" in body

    resp = post(client, body)
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    row = only_row(engine)
    assert row.subject_ref == "#1101"
    assert row.body == body
    assert waker.pokes == 1


# --- method --------------------------------------------------------------------------------------


def test_get_on_the_webhook_path_is_method_not_allowed(client, engine, waker):
    resp = client.get(URL)
    assert resp.status_code == 405
    assert "POST" in resp.headers["allow"]
    assert inbox_rows(engine) == []
    assert waker.pokes == 0


def test_signature_helper_matches_shopifys_documented_algorithm():
    """Guards the factories: a wrong `sign` would make every accept/refuse test above meaningless."""
    body = b'{"id": 1}'
    expected = base64.b64encode(hmac.new(b"k", body, hashlib.sha256).digest()).decode()
    assert shopify.sign("k", body) == expected
    assert shopify.verify("k", body, expected)
    assert not shopify.verify("k", body + b" ", expected)


# --- carrier events (fulfillment_events/create) --------------------------------------------------


def carrier_event(**overrides: Any) -> dict[str, Any]:
    """A FulfillmentEvent webhook body as Shopify sends it (the bare object)."""
    event = {
        "id": 12584341209251,
        "fulfillment_id": 5550001,
        "order_id": 820001,
        "status": "delivered",
        "message": None,
        "happened_at": "2026-11-27T11:30:00+09:00",
        "created_at": "2026-11-27T11:31:00+09:00",
        "updated_at": "2026-11-27T11:31:00+09:00",
        "estimated_delivery_at": None,
    }
    event.update(overrides)
    return event


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "wrapped"])
def test_carrier_event_is_stored_pending_under_its_order_id(client, engine, waker, wrap):
    payload = {"fulfillment_event": carrier_event()} if wrap else carrier_event()
    body = body_of(payload)
    resp = post(client, body, topic="fulfillment_events/create", webhook_id="wh-ev-1")
    assert resp.status_code == 200 and resp.json()["status"] == "pending"
    row = only_row(engine)
    assert (row.subject_ref, row.topic, row.body) == ("order-id:820001", "fulfillment_events/create", body)
    assert waker.pokes == 1


def test_carrier_event_delivered_twice_is_stored_once(client, engine, waker):
    body = body_of(carrier_event())
    first = post(client, body, topic="fulfillment_events/create", webhook_id="wh-ev-dup")
    second = post(client, body, topic="fulfillment_events/create", webhook_id="wh-ev-dup")
    assert first.json()["status"] == "pending" and second.json() == {"status": "duplicate"}
    assert only_row(engine).delivery_id == "wh-ev-dup" and waker.pokes == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (carrier_event(fulfillment_id=None), "fulfillment_id"),
        (carrier_event(happened_at="yesterday"), "happened_at"),
        (carrier_event(status="delivered; DROP TABLE inbox"), "status"),
        (carrier_event(order_id=-1), "order_id"),
        ({"fulfillment_event": None}, "object"),
        ([carrier_event()], "object"),
    ],
    ids=["no-fulfillment", "bad-time", "bad-status", "negative-order", "wrapped-null", "array"],
)
def test_unusable_carrier_event_is_stored_invalid_naming_the_field(client, engine, waker, payload, field):
    body = body_of(payload)
    row = assert_stored_invalid(post(client, body, topic="fulfillment_events/create"), engine, waker, body)
    assert field in row.reason or "Field required" in row.reason, row.reason


def test_carrier_event_with_a_bad_signature_is_refused(client, engine, waker):
    body = body_of(carrier_event())
    headers = webhook_headers(body, secret="not-the-secret", topic="fulfillment_events/create")
    assert_refused_unauthenticated(client.post(URL, content=body, headers=headers), engine, waker)
