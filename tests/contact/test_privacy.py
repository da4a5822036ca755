"""Shopify's compliance webhooks, end to end on SQLite and PostgreSQL: a customer's data is found in
every table and file we hold, then it is gone from every one of them (only a hashed suppression
kept); the books keep their orders; a replay does nothing more; a forged one stores nothing."""

from __future__ import annotations

import email
import email.policy
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session, SQLModel, select

from aftercare import samples
from aftercare.contact import privacy
from aftercare.contact.policy import contact_policy
from aftercare.contact.rules import CustomerFacts, Outcome, TouchpointFacts, decide
from aftercare.contact.store import email_hash, suppressions_for
from aftercare.models import (
    InboxEvent,
    InboxStatus,
    Order,
    OrderLine,
    OutboxMessage,
    PrivacyRequest,
    Review,
    ReviewRevision,
    Suppression,
    SurveyResponse,
    Touchpoint,
    utcnow,
)
from aftercare.reviews import own_form
from aftercare.reviews.form_links import ReviewFormLink
from aftercare.reviews.intake import review_delivery
from aftercare.spine.inbox import store_delivery
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.conftest import TEST_SECRET
from tests.factories import SHOP, body_of, fulfillment_payload, order_payload, webhook_headers
from tests.pipeline import drain, process, receive, rows, send_all, send_outbox

HANAKO = "hanako@example.jp"
# What identifies 山田 花子 in the sample order (ja-first-gift): none of it may be left anywhere.
HANAKO_TRACES = [
    HANAKO,
    "山田",
    "花子",
    "03-1234-5678",
    "神宮前1-2-3",
    "アフターケアビル",
    "お誕生日おめでとう",
]
EMMA = "emma@example.com"  # another customer, who must keep everything


def redact_body(customer_id: int | None = 7001, email_: str | None = HANAKO, orders=(820001,)) -> dict:
    """A customers/redact body, in Shopify's documented shape."""
    return {
        "shop_id": 954889,
        "shop_domain": SHOP,
        "customer": {"id": customer_id, "email": email_, "phone": "03-1234-5678"},
        "orders_to_redact": list(orders),
    }


def data_request_body(customer_id: int = 7001, email_: str = HANAKO) -> dict:
    return {
        "shop_id": 954889,
        "shop_domain": SHOP,
        "orders_requested": [820001],
        "customer": {"id": customer_id, "email": email_, "phone": "03-1234-5678"},
        "data_request": {"id": 9999},
    }


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings, waker=NoWaker())) as c:
        yield c


def post(client: TestClient, payload: Any, topic: str, **kw: Any) -> Any:
    body = body_of(payload)
    return client.post(
        "/webhooks/shopify",
        content=body,
        headers=webhook_headers(body, secret=TEST_SECRET, topic=topic, **kw),
    )


def everything_text(rt: Any) -> list[tuple[str, str]]:
    """Every text, bytes and JSON value in every table, as (where, text)."""
    found = []
    with rt.engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)).mappings():
                for column, value in row.items():
                    if isinstance(value, bytes | memoryview):
                        text = bytes(value).decode("utf-8", "replace")
                    elif isinstance(value, dict | list):
                        text = json.dumps(value, ensure_ascii=False)
                    elif isinstance(value, str):
                        text = value
                    else:
                        continue
                    found.append((f"{table.name}.{column} (id {row.get('id')})", text))
    return found


def file_texts(root: Path) -> list[tuple[str, str]]:
    """Every file under `root`, decoded: mail files by their MIME parts (base64 or not)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        text = data.decode("utf-8", "replace")
        if path.suffix == ".eml":
            msg = email.message_from_bytes(data, policy=email.policy.default)
            parts = [str(v) for v in msg.values()]
            parts += [p.get_content() for p in msg.walk() if not p.is_multipart()]
            text += "\n".join(parts)
        found.append((str(path.relative_to(root)), text))
    return found


def traces(pairs: list[tuple[str, str]], needles: list[str]) -> list[str]:
    return [f"{where}: {n}" for where, text in pairs for n in needles if n.lower() in text.lower()]


def hanako_everywhere(rt: Any) -> None:
    """The customer's data, in every place we keep data: order, lines, customer, consent, outbox
    rows and their files, shipments, warehouse hand-off and its files, review, survey answer."""
    receive(rt, order_payload())  # #1101: gift message, address, phone, confirmation
    receive(rt, order_payload("en-first"))  # Emma's order, who keeps everything
    consent = {
        "customer_id": 7001,
        "email_address": HANAKO,
        "email_marketing_consent": {"state": "subscribed", "consent_updated_at": "2026-11-19T00:00:00Z"},
    }
    receive(rt, consent, topic="customers_email_marketing_consent/update")
    order = order_payload()
    fulfillment = fulfillment_payload(order)
    fulfillment["destination"] = order["shipping_address"]
    receive(rt, fulfillment, topic="fulfillments/create")
    send_all(rt, rt.warehouse)  # var/warehouse/<shop>/820001/...
    send_outbox(rt)  # var/outbox/*.eml
    review = {**samples.review("ja-late-gift"), "author": "山田 花子"}
    review["body"] += " 山田より。"
    inbox_id, _ = store_delivery(rt.engine, review_delivery(body_of(review), triggered_at=datetime.now(UTC)))
    process(rt, inbox_id)
    with Session(rt.engine) as s:  # a review on our own form, as its page stores it
        mine = s.exec(select(Order).where(Order.shopify_id == 820001)).one()
        request = s.exec(
            select(Touchpoint).where(Touchpoint.order_id == mine.id, Touchpoint.kind == "review_request")
        ).one()
    form = own_form.form_state(rt.engine, ReviewFormLink(mine.id, request.id, utcnow() + timedelta(days=9)))
    assert form is not None and form.default_name == "花子 山."
    fields = {"product": [form.products[0].ref], "rating": ["2"], "body": ["山田 花子です。"]}
    fields["display_name"] = [form.default_name]
    own_form.submit_review(rt.engine, form, own_form.read_review(fields, form.products), now=utcnow())
    drain(rt)
    with Session(rt.engine) as s:
        order_row = s.exec(select(Order).where(Order.shopify_id == 820001)).one()
        tp = s.exec(select(Touchpoint).where(Touchpoint.order_id == order_row.id)).first()
        assert tp is not None
        s.add(
            SurveyResponse(
                touchpoint_id=tp.id,
                order_id=order_row.id,
                scale="csat5",
                score=2,
                comment="山田 花子です。03-1234-5678 までお電話ください",
                client_agent="Mozilla/5.0",
            )
        )
        s.commit()


def test_after_a_redact_nothing_of_the_customer_is_left_in_any_table_or_file(client, rt):
    hanako_everywhere(rt)
    # A data export made earlier is one more file with their data in it.
    assert post(client, data_request_body(), "customers/data_request").status_code == 200
    drain(rt)
    send_outbox(rt)
    var = rt.settings.var_dir
    # Before: the test can see the data where it says it is (so "none left" below means something).
    before_db, before_files = (
        traces(everything_text(rt), HANAKO_TRACES),
        traces(file_texts(var), HANAKO_TRACES),
    )
    for place in (
        "orders.raw",
        "orders.email",
        "customers.",
        "consent_records.",
        "outbox.",
        "inbox.body",
        "reviews.author_display_name",
        "survey_responses.comment",
        "review_revisions.display_name",
        "review_revisions.body",
        "warehouse_handoffs.instruction",
    ):
        assert any(t.startswith(place) for t in before_db), place
    for place in ("outbox/", "warehouse/", "privacy/"):
        assert any(t.startswith(place) for t in before_files), place
    with Session(rt.engine) as s:
        books = {o.shopify_id: (o.name, o.total, o.currency, o.subtotal) for o in s.exec(select(Order))}
        lines_before = len(s.exec(select(OrderLine)).all())

    answer = post(client, redact_body(), "customers/redact")
    assert answer.status_code == 200 and answer.json()["status"] == InboxStatus.PENDING
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE, out.reason

    left = traces(everything_text(rt), HANAKO_TRACES) + traces(file_texts(var), HANAKO_TRACES)
    assert left == []
    # The books: every order, its id, name and totals, and its lines.
    with Session(rt.engine) as s:
        assert {
            o.shopify_id: (o.name, o.total, o.currency, o.subtotal) for o in s.exec(select(Order))
        } == books
        assert len(s.exec(select(OrderLine)).all()) == lines_before
        emma = s.exec(select(Order).where(Order.email == EMMA)).one()
        assert emma.shipping_address and emma.shipping_address["name"] == "Emma Wilson"
        [request] = s.exec(select(PrivacyRequest).where(PrivacyRequest.topic == "customers/redact")).all()
        assert request.email_hash == email_hash(HANAKO) and request.customer_shopify_id is None
        assert request.summary["erased"]["customers"] == 1
        [kept] = s.exec(select(Suppression)).all()
        assert (kept.list_name, kept.email_hash, kept.source) == (
            "all",
            email_hash(HANAKO),
            "customers/redact",
        )
    # Emma's mail file is still there, with her address.
    assert traces(file_texts(var / "outbox"), [EMMA])


def test_after_a_redact_a_new_order_is_confirmed_but_never_asked_for_feedback(rt):
    receive(rt, order_payload())
    process(rt, _deliver(rt, redact_body(), "customers/redact"))
    later = order_payload(id=820099, name="#1199", order_number=1199)
    out = receive(rt, later)
    assert out.status == InboxStatus.DONE and out.outbox_id is not None  # transactional mail works
    [sent] = [r for r in send_outbox(rt) if r.outbox_id == out.outbox_id]
    assert sent.status == "sent"
    with Session(rt.engine) as s:
        message = s.get(OutboxMessage, out.outbox_id)
        assert message is not None and message.to_email == HANAKO
        suppressed = suppressions_for(s, SHOP, HANAKO)
    assert [x.list_name for x in suppressed] == ["all"]
    policy = contact_policy(rt.settings.policies_dir)
    now = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
    for kind in ("delivery_survey", "review_request"):
        verdict = decide(
            TouchpointFacts(kind=kind, due_at=now - timedelta(hours=1)),
            CustomerFacts(shipping_address=later["shipping_address"], suppressions=suppressed),
            [],
            policy,
            now,
        )
        assert verdict.outcome is Outcome.SKIP, verdict.line()
        assert "unsubscribed from every mail" in verdict.line()


def _deliver(rt: Any, payload: dict, topic: str, webhook_id: str | None = None) -> int | None:
    from tests.factories import deliver

    return deliver(rt.engine, payload, topic=topic, webhook_id=webhook_id)


def test_a_redact_for_a_customer_we_never_saw_is_logged_without_error(rt):
    receive(rt, order_payload("en-first"))
    out = process(
        rt, _deliver(rt, redact_body(424242, "nobody@example.org", orders=[1, 2]), "customers/redact")
    )
    assert out.status == InboxStatus.DONE
    assert "held nothing" in out.reason
    [request] = rows(rt, PrivacyRequest)
    assert request.email_hash == email_hash("nobody@example.org")
    # Nothing of anyone else changed; the address is suppressed for the day it shows up.
    [emma] = rows(rt, Order)
    assert emma.email == EMMA and emma.shipping_address is not None
    assert [s.email_hash for s in rows(rt, Suppression)] == [email_hash("nobody@example.org")]


def test_a_replayed_redact_does_nothing_more(client, rt):
    receive(rt, order_payload())
    payload = redact_body()
    first = post(client, payload, "customers/redact", webhook_id="wh-redact-1")
    again = post(client, payload, "customers/redact", webhook_id="wh-redact-1")
    assert again.json() == {"status": "duplicate"}
    drain(rt)
    # The same delivery carried out again (a worker retrying the row): no second log, nothing done.
    inbox_id = first.json()["inbox_id"]
    from aftercare.processing import process_row

    second = process_row(rt, inbox_id)
    assert "already carried out" in second.reason
    assert len(rows(rt, PrivacyRequest)) == 1
    # Shopify asking again (a new delivery id): logged again, finds nothing left, still no error.
    post(client, payload, "customers/redact", webhook_id="wh-redact-2")
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE
    assert len(rows(rt, PrivacyRequest)) == 2
    assert len(rows(rt, Suppression)) == 1


def test_a_forged_or_foreign_compliance_webhook_is_refused_and_nothing_stored(client, rt):
    receive(rt, order_payload())
    body = body_of(redact_body())
    for topic in sorted(privacy.TOPICS):
        forged = webhook_headers(body, secret="someone-elses-secret", topic=topic)
        assert client.post("/webhooks/shopify", content=body, headers=forged).status_code == 401
        assert post(client, redact_body(), topic, shop="other-shop.myshopify.com").status_code == 401
    assert rows(rt, PrivacyRequest) == []
    assert [r.topic for r in rows(rt, InboxEvent)] == ["orders/create"]
    [order] = rows(rt, Order)
    assert order.email == HANAKO


def test_a_signed_body_naming_another_shop_erases_nothing(rt):
    receive(rt, order_payload())
    wrong = {**redact_body(), "shop_domain": "victim-shop.myshopify.com"}
    out = process(rt, _deliver(rt, wrong, "customers/redact"))
    assert out.status == InboxStatus.INVALID and "names shop" in out.reason
    assert rows(rt, PrivacyRequest) == []
    [order] = rows(rt, Order)
    assert order.email == HANAKO


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        ({"shop_domain": SHOP}, "no customer object"),
        ({"shop_domain": SHOP, "customer": {"phone": "1"}}, "names no customer"),
        ({"customer": {"id": 1}}, "no shop_domain"),
        ({"shop_domain": SHOP, "customer": {"id": 1}, "orders_to_redact": "all"}, "must be a list"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_an_unusable_compliance_body_is_kept_as_invalid_with_its_reason(client, rt, payload, said):
    answer = post(client, payload, "customers/redact")
    assert answer.status_code == 200
    assert answer.json()["status"] == InboxStatus.INVALID and said in answer.json()["reason"]
    [row] = rows(rt, InboxEvent)
    assert row.status == InboxStatus.INVALID and row.body == body_of(payload)


def test_shop_redact_erases_every_customer_of_the_shop(client, rt):
    hanako_everywhere(rt)
    answer = post(client, {"shop_id": 954889, "shop_domain": SHOP}, "shop/redact")
    assert answer.status_code == 200
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE and "shop redacted" in out.reason
    everyone = [*HANAKO_TRACES, EMMA, "Emma Wilson", "742 Evergreen Terrace"]
    left = traces(everything_text(rt), everyone) + traces(file_texts(rt.settings.var_dir), everyone)
    assert left == []
    assert len(rows(rt, Order)) == 2  # the books
    assert {s.email_hash for s in rows(rt, Suppression)} == {email_hash(HANAKO), email_hash(EMMA)}
    assert not (rt.settings.warehouse_dir / SHOP).exists()


def test_a_data_request_writes_an_export_and_tells_ops(client, rt):
    hanako_everywhere(rt)
    answer = post(client, data_request_body(), "customers/data_request")
    assert answer.status_code == 200
    [out] = drain(rt)
    assert out.status == InboxStatus.DONE and "export written" in out.reason and "ops told (1)" in out.reason
    [request] = rows(rt, PrivacyRequest)
    path = Path(request.export_path or "")
    assert path.is_relative_to(rt.settings.var_dir) and path.is_file()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["customers"][0]["email"] == HANAKO
    assert [o["name"] for o in doc["orders"]] == ["#1101"]
    assert doc["orders"][0]["shipping_address"]["address1"] == "神宮前1-2-3"
    assert doc["consent"]["records"][0]["state"] == "subscribed"
    assert doc["consent"]["records"][0]["wording_version"]
    assert {m["kind"] for m in doc["messages"]} >= {"order_confirmation"}
    assert doc["reviews"][0]["author"] == "山田 花子"
    # The staff mail says where the export is, and carries no personal data itself.
    staff = [m for m in rows(rt, OutboxMessage) if m.kind == privacy.STAFF_KIND]
    assert [m.to_email for m in staff] == ["ops@example.com"]
    assert str(path) in staff[0].text_body and "開示請求" in staff[0].subject
    assert traces([("mail", staff[0].subject + staff[0].text_body + staff[0].html_body)], HANAKO_TRACES) == []
    # Carried out again: nothing more (no second file, no second mail).
    from aftercare.processing import process_row

    assert "already carried out" in process_row(rt, out.inbox_id).reason
    assert len([m for m in rows(rt, OutboxMessage) if m.kind == privacy.STAFF_KIND]) == 1
    assert len(list(path.parent.iterdir())) == 1


def test_a_data_request_for_a_customer_we_never_saw(rt):
    out = process(rt, _deliver(rt, data_request_body(5151, "ghost@example.org"), "customers/data_request"))
    assert out.status == InboxStatus.DONE and "we hold nothing" in out.reason
    [request] = rows(rt, PrivacyRequest)
    doc = json.loads(Path(request.export_path or "").read_text(encoding="utf-8"))
    assert doc["customers"] == [] and doc["orders"] == []


def test_the_redacted_review_keeps_its_rating_and_text_without_the_author(rt):
    hanako_everywhere(rt)
    process(rt, _deliver(rt, redact_body(), "customers/redact"))
    review, own = rows(rt, Review)
    assert review.author_display_name is None and review.customer_id is None
    assert review.rating == 2 and "誕生日に間に合いませんでした" in review.body
    assert "山田" not in review.body
    # The review from our own form, and its revision: rating and text kept, the author gone.
    assert (own.platform, own.rating, own.author_display_name) == ("own", 2, None)
    [revision] = rows(rt, ReviewRevision)
    assert (revision.rating, revision.display_name) == (2, None) and "山田" not in revision.body
    assert "です。" in revision.body


def test_on_sqlite_the_database_file_itself_keeps_no_trace(client, rt):
    if rt.engine.dialect.name != "sqlite":
        pytest.skip("the file of an embedded database")
    path = Path(rt.engine.url.database or "")

    def file_bytes() -> bytes:
        # The last connection closing checkpoints the write-ahead log into the file: the running web
        # app's too, once its warm-up (which reads the database) is over.
        deadline = time.monotonic() + 60
        while not client.get("/healthz").json()["warm"]:
            assert time.monotonic() < deadline, "the web app's warm-up never finished"
            time.sleep(0.05)
        client.app.state.engine.dispose()
        rt.engine.dispose()
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())

    hanako_everywhere(rt)
    assert HANAKO.encode() in file_bytes()
    process(rt, _deliver(rt, redact_body(), "customers/redact"))
    data = file_bytes()
    # Deleted and replaced values are overwritten (PRAGMA secure_delete), not left in free pages.
    assert [n for n in HANAKO_TRACES if n.encode() in data] == []
