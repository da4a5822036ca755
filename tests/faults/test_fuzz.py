"""Fuzzed webhooks (tests/faults/fuzz.py) on SQLite and PostgreSQL, and the crashes fuzzing found,
each pinned as the plain request or row that caused it.

`make test` posts AFTERCARE_FUZZ_EXAMPLES requests (default 300) with a fixed seed; the fault suite
sets it to 10,000, and AFTERCARE_FUZZ_SEED to draw other requests."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare.models import InboxEvent, InboxStatus, Order, Shipment
from aftercare.orders.shopify import sign
from aftercare.processing import process_row
from aftercare.reviews.intake import SIGNATURE_HEADER, import_reviews, review_delivery
from aftercare.reviews.policy import load_reviews_policy
from aftercare.reviews.triage import run_triage_jsonl
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine.db import migrate
from aftercare.spine.inbox import Delivery, claim_batch, store_delivery
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import SHOP, body_of, fulfillment_payload, order_payload, webhook_headers
from tests.faults.fuzz import FINAL, run_fuzz

FUZZ_EXAMPLES = int(os.environ.get("AFTERCARE_FUZZ_EXAMPLES", "300"))
FUZZ_SEED = int(os.environ.get("AFTERCARE_FUZZ_SEED", "20261130"))


def test_fuzzed_webhooks_get_no_5xx_and_every_delivery_ends_stored_with_a_reason_or_refused(settings):
    report = run_fuzz(settings, FUZZ_EXAMPLES, FUZZ_SEED)
    summary = report.summary()

    assert report.problems == [], summary
    assert report.requests == FUZZ_EXAMPLES and report.server_errors == 0, summary
    # Both paths were taken: most requests were signed and stored, forged ones refused with a 401.
    assert report.signed > report.requests // 2, summary
    assert report.answers[200] == report.stored + report.duplicates, summary
    assert 0 < report.refused.get(401, 0) <= report.requests - report.signed_for_us, summary
    assert set(report.answers) <= {200, 401, 413}, summary
    # Every acknowledged delivery, and nothing else, is in the inbox; each one ended accounted for.
    assert sum(report.rows.values()) == report.stored, summary
    assert set(report.rows) <= FINAL, summary
    assert report.processing_errors == 0, summary
    # The fuzzing reached past the signature check into every outcome.
    for status in (InboxStatus.PENDING, InboxStatus.INVALID, InboxStatus.IGNORED):
        assert report.stored_as[status] > 0, summary
    assert report.rows[InboxStatus.DONE] > 0 and report.rows[InboxStatus.INVALID] > 0, summary
    assert report.duplicates > 0 and report.replays > 0, summary


def test_the_same_seed_sends_the_same_requests(tmp_path):
    """A failing seed can be run again: the report is the same, request for request."""
    counts = []
    for n in (1, 2):
        var = tmp_path / f"run{n}"
        settings = Settings(
            environment="test",
            var_dir=var,
            database_url=f"sqlite:///{tmp_path / f'run{n}.db'}",
            shopify_webhook_secret=TEST_SECRET,
            wake_prefect=False,
        )
        migrate(settings)
        report = run_fuzz(settings, 40, seed=7)
        counts.append((report.answers, report.stored_as, report.rows, report.replays))
    assert counts[0] == counts[1]


# --- crashes the fuzzing found, pinned --------------------------------------------------------------


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, waker=NoWaker())) as c:
        yield c


def inbox_rows(rt: Runtime) -> list[InboxEvent]:
    with Session(rt.engine) as s:
        return list(s.exec(select(InboxEvent).order_by(InboxEvent.id)))


DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"order":' * 50_000 + b"1" + b"}" * 50_000


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_a_signed_body_nested_past_the_recursion_limit_is_stored_invalid_not_a_500(client, rt, body):
    """Found by fuzzing: json.loads raised RecursionError, which the app answered with a 500, so Shopify
    retried a body that can never be read."""
    resp = client.post("/webhooks/shopify", content=body, headers=webhook_headers(body, secret=TEST_SECRET))

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == InboxStatus.INVALID
    assert "nested too deeply" in resp.json()["reason"]
    [row] = inbox_rows(rt)
    assert row.status == InboxStatus.INVALID and row.body == body


def test_a_signed_review_nested_past_the_recursion_limit_is_stored_invalid_not_a_500(client, rt, settings):
    headers = {SIGNATURE_HEADER: sign(settings.reviews_webhook_secret.get_secret_value(), DEEP_ARRAY)}
    resp = client.post("/webhooks/reviews", content=DEEP_ARRAY, headers=headers)

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == InboxStatus.INVALID
    assert "nested too deeply" in resp.json()["reason"]
    assert [r.status for r in inbox_rows(rt)] == [InboxStatus.INVALID]


def test_an_imported_review_line_nested_too_deeply_is_reported_and_the_others_are_stored(rt, tmp_path):
    good = {
        "platform": "own",
        "review_id": "r-1",
        "rating": 4,
        "body": "ok",
        "author": "A",
        "created_at": "2026-11-28T20:12:00+09:00",
    }
    path = tmp_path / "reviews.jsonl"
    path.write_bytes(DEEP_ARRAY + b"\n" + json.dumps(good).encode() + b"\n")

    report = import_reviews(rt.engine, path)

    assert (report.read, report.stored) == (2, 1)
    assert report.errors == [{"line": 1, "error": "JSON nested too deeply to read"}]


def test_a_triage_line_nested_too_deeply_is_an_error_line_and_the_run_goes_on(settings):
    out = io.StringIO()
    lines = DEEP_ARRAY.decode() + "\n" + json.dumps({"id": "a", "text": "great", "rating": 5}) + "\n"

    code = run_triage_jsonl(io.StringIO(lines), out, load_reviews_policy(settings.policies_dir))

    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 1
    assert results[0] == {"line": 1, "error": "JSON nested too deeply to read"}
    assert results[1]["id"] == "a" and "negative" in results[1]


@pytest.mark.parametrize(
    "header", ["X-Shopify-Topic", "X-Shopify-Shop-Domain", "X-Shopify-Webhook-Id", "X-Shopify-Event-Id"]
)
def test_a_header_with_a_nul_byte_is_stored_not_a_500(client, rt, header):
    """Found by fuzzing on PostgreSQL: a NUL in a header we store failed the insert ("text fields
    cannot contain NUL"), a 500. The delivery is kept with the NUL shown as U+FFFD."""
    body = body_of(order_payload())
    headers = webhook_headers(body, secret=TEST_SECRET)
    headers[header] = headers[header] + "\x00"
    raw = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]

    resp = client.post("/webhooks/shopify", content=body, headers=raw)

    if header == "X-Shopify-Shop-Domain":  # not a shop this installation serves: refused, not a 500
        assert resp.status_code == 401 and "shop" in resp.json()["error"], resp.text
        assert inbox_rows(rt) == []
        return
    assert resp.status_code == 200, resp.text
    [row] = inbox_rows(rt)
    stored = {
        "X-Shopify-Topic": row.topic,
        "X-Shopify-Shop-Domain": row.shop_domain,
        "X-Shopify-Webhook-Id": row.delivery_id,
        "X-Shopify-Event-Id": row.event_id,
    }[header]
    assert stored == headers[header][:-1] + "\ufffd"
    if header == "X-Shopify-Topic":
        assert resp.json()["status"] == row.status == InboxStatus.IGNORED
        assert "is not handled" in (row.reason or "")


def _deliver(rt: Runtime, payload: dict, topic: str, shop: str) -> int:
    inbox_id, new = store_delivery(
        rt.engine,
        Delivery(
            source="shopify",
            delivery_id=f"{shop}:{topic}:{payload['id']}",
            event_id=None,
            topic=topic,
            shop_domain=shop,
            triggered_at=None,
            body=body_of(payload),
        ),
    )
    assert new and inbox_id is not None
    return inbox_id


def _process(rt: Runtime) -> dict[int, str]:
    return {c.inbox_id: process_row(rt, c.inbox_id).status for c in claim_batch(rt.engine, 10)}


def test_an_order_id_under_another_shop_header_is_the_one_order_not_a_failed_insert(rt):
    """Found by fuzzing: orders are unique per Shopify id (ids are global), but the order was looked up
    per shop, so a second shop's delivery of the same id failed its insert on every retry and ended
    `failed` with a traceback. Now it is the one order, which keeps its own shop."""
    order = order_payload()
    first = _deliver(rt, order, "orders/create", SHOP)
    assert _process(rt) == {first: InboxStatus.DONE}

    other = _deliver(
        rt, {**order, "updated_at": "2026-11-21T10:15:00+09:00"}, "orders/updated", "evil.example"
    )

    assert _process(rt) == {other: InboxStatus.DONE}
    with Session(rt.engine) as s:
        [kept] = s.exec(select(Order)).all()
    assert kept.shop_domain == SHOP and kept.source_updated_at.isoformat().startswith("2026-11-21")


def test_a_fulfillment_id_another_order_holds_is_invalid_naming_the_id_not_failed(rt):
    mine, theirs = order_payload(), order_payload("en-first")
    fulfillment = fulfillment_payload(mine)
    ids = [
        _deliver(rt, mine, "orders/create", SHOP),
        _deliver(rt, theirs, "orders/create", "other.example"),
        _deliver(rt, fulfillment, "fulfillments/create", SHOP),
    ]
    assert _process(rt) == dict.fromkeys(ids, InboxStatus.DONE)

    # The other order's fulfillment, with an id our order's shipment holds.
    forged = _deliver(
        rt, {**fulfillment_payload(theirs), "id": fulfillment["id"]}, "fulfillments/create", "other.example"
    )

    assert _process(rt) == {forged: InboxStatus.INVALID}
    row = next(r for r in inbox_rows(rt) if r.id == forged)
    assert row.reason == f"fulfillment {fulfillment['id']} belongs to another order than {theirs['id']}"
    with Session(rt.engine) as s:
        [shipment] = s.exec(select(Shipment)).all()
    assert shipment.shop_domain == SHOP


def test_a_body_nested_within_the_parser_but_past_what_we_walk_is_stored_invalid_not_a_500(client, rt):
    """Found by fuzzing: 600 levels parse, but cleaning the order of NUL recursed two frames per level
    and raised RecursionError: a 500 on every retry."""
    body = b'{"a":' * 600 + b"1" + b"}" * 600
    resp = client.post("/webhooks/shopify", content=body, headers=webhook_headers(body, secret=TEST_SECRET))

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == InboxStatus.INVALID
    assert resp.json()["reason"] == "body is JSON nested too deeply to read (over 64 levels)"
    assert [r.status for r in inbox_rows(rt)] == [InboxStatus.INVALID]


def _with_line_quantity(quantity: int) -> dict:
    payload = order_payload()
    payload["line_items"][0]["quantity"] = quantity
    return payload


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (order_payload(total_tax=2**63 - 1), "total_tax"),
        (order_payload(subtotal_price="-1e20"), "subtotal_price"),
        (order_payload(order_number=2**40), "order_number"),
        (_with_line_quantity(2**40), "line_items.0.quantity"),
    ],
    ids=["huge-tax", "huge-negative-subtotal", "huge-order-number", "huge-quantity"],
)
def test_an_amount_or_count_beyond_its_column_is_invalid_naming_the_field(client, rt, payload, field):
    """Found by fuzzing on PostgreSQL: such an order was acknowledged pending, then its insert failed
    (numeric field overflow / integer out of range) on every retry and the row ended `failed`."""
    body = body_of(payload)
    resp = client.post("/webhooks/shopify", content=body, headers=webhook_headers(body, secret=TEST_SECRET))

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == InboxStatus.INVALID
    assert resp.json()["reason"].startswith(f"order payload is missing or has bad fields: {field}: ")
    with Session(rt.engine) as s:
        assert s.exec(select(Order)).all() == []


@pytest.mark.parametrize("order_ref", ["99999999999999999999999", "²"])
def test_a_review_whose_order_ref_no_order_id_can_be_is_stored_without_an_order(rt, order_ref):
    """The review's order_ref went to the order lookup as a Shopify id: a number beyond BIGINT failed
    the query (OverflowError on SQLite, DataError on PostgreSQL), and '²' passed isdigit() but not
    int(); the row failed on every retry instead of storing the review unlinked."""
    body = json.dumps(
        {
            "platform": "own",
            "review_id": "r-odd-ref",
            "order_ref": order_ref,
            "rating": 2,
            "body": "late",
            "author": "A",
            "created_at": "2026-11-28T20:12:00+09:00",
        }
    ).encode()
    inbox_id, _ = store_delivery(rt.engine, review_delivery(body))

    assert _process(rt) == {inbox_id: InboxStatus.DONE}
    [row] = inbox_rows(rt)
    assert row.reason == f"no order {order_ref!r}: give the order name (#1001) or its Shopify id; " + (
        "review stored without an order"
    )
