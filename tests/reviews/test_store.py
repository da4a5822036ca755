"""The review store on a real database: status and SLA timestamps, drafts, decisions, the one reply
row per review, and the order facts a drafter may mention."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from aftercare.models import ReviewStatus
from aftercare.reviews import store
from aftercare.reviews.drafting import TemplateDrafter, build_reply_request
from aftercare.reviews.guardrails import GuardrailResult, draft_with_guardrails
from aftercare.reviews.models import ProductFacts
from aftercare.reviews.models import Review as ReviewText
from aftercare.reviews.triage import triage
from aftercare.settings import PROJECT_ROOT
from tests.factories import deliver, fulfillment_payload, refund_payload
from tests.reviews.intake_helpers import process_all, receive_order, receive_review

T0 = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


@pytest.fixture
def review_id(rt) -> int:
    out = receive_review(rt, order_ref=...)
    assert out.review_id is not None
    return out.review_id


# --- reviews and status -----------------------------------------------------------------------------


def test_get_and_find(rt, review_id):
    assert store.get_review(rt.engine, review_id).platform_review_id == "sample-review-1101"
    assert store.find_review(rt.engine, "own", "sample-review-1101").id == review_id
    assert store.find_review(rt.engine, "google", "sample-review-1101") is None
    assert store.get_review(rt.engine, review_id + 1000) is None


def test_set_status_records_timestamps_once_so_a_rerun_keeps_the_first(rt, review_id):
    assert store.set_status(rt.engine, review_id, "awaiting_approval", approval_requested_at=T0)
    assert store.set_status(
        rt.engine, review_id, "awaiting_approval", approval_requested_at=T0 + timedelta(hours=5)
    )
    review = store.get_review(rt.engine, review_id)
    assert review.status == ReviewStatus.AWAITING_APPROVAL
    assert review.approval_requested_at == T0


def test_set_status_compare_and_set(rt, review_id):
    assert store.set_status(rt.engine, review_id, "drafting", only_from=["new"]) is True
    assert store.set_status(rt.engine, review_id, "drafting", only_from=["new"]) is False
    assert store.get_review(rt.engine, review_id).status == "drafting"


def test_set_status_refuses_unknown_status_timestamp_naive_time_and_missing_review(rt, review_id):
    with pytest.raises(ValueError, match="unknown review status"):
        store.set_status(rt.engine, review_id, "done")
    with pytest.raises(ValueError, match="unknown review timestamps"):
        store.set_status(rt.engine, review_id, "approved", approved_at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.set_status(rt.engine, review_id, "approved", decided_at=datetime(2026, 11, 29))
    with pytest.raises(store.ReviewNotFound):
        store.set_status(rt.engine, review_id + 1000, "approved")
    assert store.get_review(rt.engine, review_id).status == "new"


def test_set_flow_run(rt, review_id):
    store.set_flow_run(rt.engine, review_id, "3f2a-flow-run")
    assert store.get_review(rt.engine, review_id).flow_run_id == "3f2a-flow-run"
    with pytest.raises(store.ReviewNotFound):
        store.set_flow_run(rt.engine, review_id + 1000, "x")


# --- drafts ---------------------------------------------------------------------------------------


@pytest.fixture
def policy():
    from aftercare.reviews.policy import load_reviews_policy

    return load_reviews_policy(PROJECT_ROOT / "policies")


def guarded(policy, review):
    text = ReviewText(
        id=str(review.id),
        text=review.body,
        rating=review.rating,
        lang=review.language,
        display_name=review.author_display_name,
    )
    request = build_reply_request(
        text,
        triage(text, policy=policy),
        product=ProductFacts(title="今治タオル"),
        order=None,
        shop_name="うつわ屋",
        policy=policy,
    )
    return draft_with_guardrails(
        request, drafter=TemplateDrafter(policy, PROJECT_ROOT / "templates"), policy=policy
    )


def test_save_draft_takes_everything_from_a_guarded_draft(rt, review_id, policy):
    g = guarded(policy, store.get_review(rt.engine, review_id))
    row = store.save_draft(rt.engine, review_id, g)

    assert row.id is not None and row.attempt == 1
    assert row.text == g.draft.reply.reply_text and row.language == "ja"
    assert row.source == "template" and row.apologises is True
    assert row.promised_actions == g.draft.reply.promised_actions
    assert row.needs_attention == g.needs_attention
    assert [c["name"] for c in row.guardrails] == [c.name for c in g.checks]
    assert set(row.guardrails[0]) == {"name", "passed", "detail"}
    assert store.latest_draft(rt.engine, review_id).id == row.id


def test_redraft_and_approver_edit_count_up_attempts(rt, review_id, policy):
    g = guarded(policy, store.get_review(rt.engine, review_id))
    first = store.save_draft(rt.engine, review_id, g)
    second = store.save_draft(rt.engine, review_id, g.draft, guardrails=g.checks, instructions="もっと短く")
    edit = store.save_draft(
        rt.engine,
        review_id,
        "ご迷惑をおかけし申し訳ございません。",
        source="approver_edit",
        guardrails=[GuardrailResult(name="length", passed=False, detail="too short")],
    )
    assert [d.attempt for d in store.drafts(rt.engine, review_id)] == [1, 2, 3]
    assert second.instructions == "もっと短く" and second.source == "template"
    assert edit.source == "approver_edit" and edit.language == "ja" and edit.needs_attention is True
    assert store.latest_draft(rt.engine, review_id).id == edit.id != first.id


def test_save_draft_refuses_unknown_source_and_missing_review(rt, review_id):
    with pytest.raises(ValueError, match="draft source"):
        store.save_draft(rt.engine, review_id, "text")
    with pytest.raises(store.ReviewNotFound):
        store.save_draft(rt.engine, review_id + 1000, "text", source="approver_edit")
    assert store.latest_draft(rt.engine, review_id) is None


def test_concurrent_drafts_get_distinct_attempts(rt, review_id):
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            store.save_draft(rt.engine, review_id, f"draft {n}", source="approver_edit")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(d.attempt for d in store.drafts(rt.engine, review_id)) == [1, 2, 3, 4]


# --- decisions ------------------------------------------------------------------------------------


def test_every_decision_is_kept_and_the_first_settling_one_sets_decided_at(rt, review_id):
    draft = store.save_draft(rt.engine, review_id, "最初の下書きです。", source="approver_edit")
    store.record_decision(
        rt.engine,
        review_id,
        approver="sato",
        action="redraft",
        instructions="丁寧に",
        draft_id=draft.id,
        decided_at=T0,
    )
    assert store.get_review(rt.engine, review_id).decided_at is None  # a redraft settles nothing
    store.record_decision(
        rt.engine,
        review_id,
        approver="suzuki",
        action="edit",
        text="編集した返信です。",
        guardrails=[{"name": "length", "passed": True, "detail": "ok"}],
        decided_at=T0 + timedelta(minutes=30),
    )
    store.record_decision(
        rt.engine, review_id, approver="sato", action="approve", text="x", decided_at=T0 + timedelta(hours=1)
    )

    got = store.decisions(rt.engine, review_id)
    assert [(d.approver, d.action) for d in got] == [
        ("sato", "redraft"),
        ("suzuki", "edit"),
        ("sato", "approve"),
    ]
    assert got[0].instructions == "丁寧に" and got[0].draft_id == draft.id
    assert got[1].text == "編集した返信です。" and got[1].guardrails[0]["name"] == "length"
    assert store.get_review(rt.engine, review_id).decided_at == T0 + timedelta(minutes=30)


def test_decision_refuses_unknown_action_and_nameless_approver(rt, review_id):
    with pytest.raises(ValueError, match="action"):
        store.record_decision(rt.engine, review_id, approver="sato", action="publish")
    with pytest.raises(ValueError, match="approver"):
        store.record_decision(rt.engine, review_id, approver="  ", action="approve")
    assert store.decisions(rt.engine, review_id) == []


# --- the one reply --------------------------------------------------------------------------------


def test_enqueue_reply_is_insert_or_return_existing(rt, review_id):
    first = store.enqueue_reply(rt.engine, review_id, "返信です。", "sato")
    second = store.enqueue_reply(rt.engine, review_id, "別の返信です。", "suzuki")
    assert second.id == first.id and second.text == "返信です。" and second.approved_by == "sato"
    assert first.status == "pending" and first.platform == "own" and first.attempts == 0
    assert store.reply_of(rt.engine, review_id).id == first.id
    assert store.published_reply(rt.engine, review_id) is None


def test_enqueue_reply_from_racing_threads_makes_one_row(rt, review_id):
    ids: list[int] = []
    barrier = threading.Barrier(4)

    def enqueue(n: int) -> None:
        barrier.wait()
        ids.append(store.enqueue_reply(rt.engine, review_id, f"reply {n}", f"approver {n}").id)

    threads = [threading.Thread(target=enqueue, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 and len(set(ids)) == 1


def test_enqueue_reply_refuses_empty_text_and_missing_review(rt, review_id):
    with pytest.raises(ValueError):
        store.enqueue_reply(rt.engine, review_id, "  ", "sato")
    with pytest.raises(store.ReviewNotFound):
        store.enqueue_reply(rt.engine, review_id + 1000, "x", "sato")
    assert store.reply_of(rt.engine, review_id) is None


# --- order facts ----------------------------------------------------------------------------------


def test_unlinked_review_has_no_order_facts(rt, review_id):
    assert store.order_facts(rt.engine, review_id) is None


def test_late_shipment_is_counted_in_days_after_the_expected_ship_date(rt):
    order = receive_order(rt)
    policy = rt.policies.shipping
    expected = policy.expected_ship_date(datetime.fromisoformat(order["created_at"]))
    shipped = datetime.combine(expected + timedelta(days=3), datetime.min.time(), policy.tz) + timedelta(
        hours=15
    )
    deliver(
        rt.engine,
        fulfillment_payload(order, created_at=shipped.isoformat(), updated_at=shipped.isoformat()),
        topic="fulfillments/create",
    )
    process_all(rt)
    review_id = receive_review(rt).review_id

    facts = store.order_facts(rt.engine, review_id, shipping=policy)
    assert facts.order_name == "#1101"
    assert (facts.shipped_late, facts.days_late) == (True, 3)
    assert (facts.delivered, facts.refunded, facts.cancelled) == (False, False, False)


def test_on_time_shipment_delivered_and_refunded(rt):
    order = receive_order(rt)
    policy = rt.policies.shipping
    expected = policy.expected_ship_date(datetime.fromisoformat(order["created_at"]))
    shipped = datetime.combine(expected, datetime.min.time(), policy.tz) + timedelta(hours=15)
    delivered = shipped + timedelta(days=1)
    deliver(
        rt.engine,
        fulfillment_payload(order, created_at=shipped.isoformat(), updated_at=shipped.isoformat()),
        topic="fulfillments/create",
    )
    deliver(
        rt.engine,
        fulfillment_payload(
            order,
            created_at=shipped.isoformat(),
            shipment_status="delivered",
            updated_at=delivered.isoformat(),
        ),
        topic="fulfillments/update",
    )
    deliver(rt.engine, refund_payload(order), topic="refunds/create")
    process_all(rt)
    review_id = receive_review(rt).review_id

    facts = store.order_facts(rt.engine, store.get_review(rt.engine, review_id), shipping=policy)
    assert (facts.shipped_late, facts.days_late) == (False, None)
    assert (facts.delivered, facts.refunded) == (True, True)


def test_nothing_shipped_after_the_expected_date_is_late_until_today(rt):
    order = receive_order(rt)
    policy = rt.policies.shipping
    expected = policy.expected_ship_date(datetime.fromisoformat(order["created_at"]))
    review_id = receive_review(rt).review_id

    late = store.order_facts(rt.engine, review_id, shipping=policy, today=expected + timedelta(days=2))
    on_time = store.order_facts(rt.engine, review_id, shipping=policy, today=expected)
    assert (late.shipped_late, late.days_late, late.delivered) == (True, 2, False)
    assert (on_time.shipped_late, on_time.days_late) == (False, None)


def test_cancelled_order_is_cancelled_and_its_lateness_unknown(rt):
    receive_order(rt, cancelled_at="2026-11-20T12:00:00+09:00", cancel_reason="customer")
    review_id = receive_review(rt).review_id
    facts = store.order_facts(rt.engine, review_id, today=date(2026, 12, 31))
    assert facts.cancelled is True and facts.shipped_late is None


# --- SLA ------------------------------------------------------------------------------------------


def test_sla_durations_between_received_requested_decided_published(rt, review_id):
    received = store.get_review(rt.engine, review_id).received_at
    store.set_status(
        rt.engine, review_id, "awaiting_approval", approval_requested_at=received + timedelta(seconds=90)
    )
    store.record_decision(
        rt.engine,
        review_id,
        approver="sato",
        action="approve",
        text="x",
        decided_at=received + timedelta(hours=2),
    )
    store.set_status(rt.engine, review_id, "published", published_at=received + timedelta(hours=2, seconds=5))

    figures = store.sla(rt.engine, review_id)
    assert figures["to_approval_request_s"] == 90.0
    assert figures["approval_wait_s"] == 7200.0 - 90.0
    assert figures["to_decision_s"] == 7200.0
    assert figures["to_publish_s"] == 5.0
    assert figures["total_s"] == 7205.0
    assert figures["decisions"] == 1 and figures["escalated"] is False and figures["status"] == "published"


def test_sla_of_an_open_review_has_no_durations_yet(rt, review_id):
    figures = store.sla(rt.engine, review_id)
    assert figures["received_at"] is not None
    assert figures["to_decision_s"] is None and figures["total_s"] is None and figures["decisions"] == 0
    with pytest.raises(store.ReviewNotFound):
        store.sla(rt.engine, review_id + 1000)


# --- the migration --------------------------------------------------------------------------------


def test_migration_0003_creates_the_review_tables_as_the_models_declare_them(rt):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    review_tables = {"reviews", "review_drafts", "review_decisions", "review_replies"}
    with rt.engine.connect() as conn:
        assert review_tables <= set(sa.inspect(conn).get_table_names())
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    about_reviews = [d for d in diffs if any(t in repr(d) for t in review_tables)]
    assert about_reviews == []


def test_migration_0003_downgrades_and_upgrades_again(own_database):
    from alembic import command

    from aftercare.spine.db import alembic_config, make_engine, migrate

    settings = own_database
    migrate(settings)
    cfg = alembic_config(settings)
    command.downgrade(cfg, "0002")
    engine = make_engine(settings)
    try:
        assert "reviews" not in sa.inspect(engine).get_table_names()
        assert "shipments" in sa.inspect(engine).get_table_names()
        migrate(settings)
        assert "review_replies" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
