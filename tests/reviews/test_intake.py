"""Review intake on a real database: the documented JSON, processing into a linked and triaged
review, and `aftercare reviews import FILE` (JSON lines and CSV) through the same inbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlmodel import Session, select

from aftercare import samples
from aftercare.errors import InvalidPayload
from aftercare.models import InboxEvent, InboxStatus, Order, Review
from aftercare.reviews.cli import cmd_reviews_import
from aftercare.reviews.intake import (
    SOURCE,
    TOPIC,
    delivery_id_for,
    import_reviews,
    parse_review,
    review_delivery,
)
from aftercare.spine.inbox import store_delivery
from tests.reviews.intake_helpers import (
    process_all,
    receive_order,
    receive_review,
    review_body,
    review_payload,
)


def reviews(rt) -> list[Review]:
    with Session(rt.engine) as s:
        return list(s.exec(select(Review).order_by(Review.id)))


def inbox(rt) -> list[InboxEvent]:
    with Session(rt.engine) as s:
        return list(s.exec(select(InboxEvent).where(InboxEvent.source == SOURCE).order_by(InboxEvent.id)))


# --- the documented JSON -----------------------------------------------------------------------------


def test_sample_review_is_valid_japanese_two_stars_about_order_1101():
    payload = parse_review(samples.review("ja-late-gift"))
    assert (payload.platform, payload.rating, payload.language, payload.order_ref) == (
        "own",
        2,
        "ja",
        "#1101",
    )
    assert payload.created_at == datetime(2026, 11, 28, 11, 12, tzinfo=UTC)
    assert payload.delivery_id == "own:sample-review-1101"
    assert "ja-late-gift" in samples.review_names()
    assert "ja-late-gift" not in samples.names()  # the demo's order list stays orders only


@pytest.mark.parametrize("rating", [0, 6, -1, 2.5, "abc", True, None])
def test_rating_outside_whole_stars_1_to_5_is_refused_naming_rating(rating):
    with pytest.raises(InvalidPayload, match=r"\brating\b"):
        parse_review(review_payload(rating=rating))


@pytest.mark.parametrize("rating", [1, 5, 4.0, "3"])
def test_whole_star_ratings_are_accepted(rating):
    assert 1 <= parse_review(review_payload(rating=rating)).rating <= 5


@pytest.mark.parametrize("missing", ["platform", "review_id", "rating", "body", "author", "created_at"])
def test_each_required_field_missing_is_named(missing):
    with pytest.raises(InvalidPayload, match=rf"\b{missing}\b.*Field required"):
        parse_review(review_payload(**{missing: ...}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("created_at", "2026-11-28T20:12:00"),  # no offset: when was it?
        ("created_at", "yesterday"),
        ("platform", "Trust Pilot!"),
        ("platform", "x" * 33),
        ("review_id", ""),
        ("review_id", "r" * 129),
        ("body", "あ" * 20_001),
        ("author", ["a"]),
    ],
)
def test_bad_field_values_are_refused_naming_the_field(field, value):
    with pytest.raises(InvalidPayload, match=rf"\b{field}\b"):
        parse_review(review_payload(**{field: value}))


@pytest.mark.parametrize("body", [[], "a review", 42, None])
def test_a_json_value_that_is_not_an_object_is_refused(body):
    with pytest.raises(InvalidPayload, match="JSON object"):
        parse_review(body)


def test_numbers_become_text_blanks_become_none_and_unknown_fields_are_ignored():
    payload = parse_review(
        review_payload(review_id=98765, order_ref=1101, title="  ", language="", platform="Google", extra=1)
    )
    assert (payload.review_id, payload.order_ref, payload.title, payload.language) == (
        "98765",
        "1101",
        None,
        None,
    )
    assert payload.platform == "google"


def test_delivery_id_is_platform_and_review_id_and_stays_within_the_column():
    assert delivery_id_for("trustpilot", "abc") == "trustpilot:abc"
    long_a, long_b = delivery_id_for("google", "a" * 128), delivery_id_for("google", "a" * 127 + "b")
    assert len(long_a) <= 128 and long_a.startswith("google:sha256:") and long_a != long_b


def test_unusable_body_becomes_an_invalid_delivery_with_the_reason():
    body = b'{"platform": "own", "review_id": "x", "rating": 9}'
    delivery = review_delivery(body)
    assert delivery.status == InboxStatus.INVALID
    assert "rating" in delivery.reason and "body" in delivery.reason
    assert delivery.delivery_id.startswith("sha256:") and delivery.body == body
    assert review_delivery(b"not json").reason.startswith("body is not JSON")


# --- processing -----------------------------------------------------------------------------------


def test_review_of_a_known_order_is_linked_triaged_and_new(rt):
    order = receive_order(rt)
    out = receive_review(rt)

    assert out.status == InboxStatus.DONE and out.topic == TOPIC
    [review] = reviews(rt)
    assert out.review_id == review.id and out.review_negative is True
    assert out.order_name == "#1101"
    with Session(rt.engine) as s:
        db_order = s.exec(select(Order).where(Order.shopify_id == order["id"])).one()
    assert review.order_id == db_order.id and review.customer_id == db_order.customer_id is not None
    assert review.status == "new"
    assert (review.platform, review.platform_review_id, review.rating) == ("own", "sample-review-1101", 2)
    assert review.triage_negative is True and any("rating 2 <= 2" in r for r in review.triage_reasons)
    assert review.language == "ja" and review.author_display_name == "はなこ"
    assert review.policy_version and review.policy_version.startswith("reviews-")
    assert review.received_at.tzinfo is not None
    assert review.source_created_at == datetime(2026, 11, 28, 11, 12, tzinfo=UTC)
    [row] = inbox(rt)
    assert row.subject_ref == "#1101" and row.status == InboxStatus.DONE


def test_order_is_found_by_its_shopify_id_and_by_its_bare_number(rt):
    order = receive_order(rt)
    by_id = receive_review(rt, review_id="r-id", order_ref=str(order["id"]))
    by_number = receive_review(rt, review_id="r-num", order_ref="1101")
    assert by_id.order_name == by_number.order_name == "#1101"
    assert all(r.order_id is not None for r in reviews(rt))


def test_review_for_an_unknown_order_is_stored_without_it_and_says_so(rt):
    out = receive_review(rt, order_ref="#9999")

    assert out.status == InboxStatus.DONE and out.review_id is not None
    assert "#9999" in out.reason and "without an order" in out.reason
    [review] = reviews(rt)
    assert review.order_id is None and review.customer_id is None and review.order_ref == "#9999"
    assert review.triage_negative is True
    assert inbox(rt)[0].reason == out.reason  # ops see why it is not linked


def test_review_without_an_order_ref_is_stored_with_no_note(rt):
    out = receive_review(rt, order_ref=...)
    assert out.status == InboxStatus.DONE and out.reason is None
    assert reviews(rt)[0].order_id is None


def test_positive_review_is_triaged_not_negative(rt):
    out = receive_review(
        rt,
        review_id="happy",
        rating=5,
        title="最高",
        body="とても丁寧な梱包で、タオルの手触りも最高でした。",
        language="ja",
    )
    assert out.review_negative is False and reviews(rt)[0].triage_negative is False


def test_four_stars_with_a_complaint_is_negative_by_its_text(rt):
    out = receive_review(
        rt,
        review_id="en-4",
        rating=4,
        language="en",
        title=None,
        body="The mug arrived broken and support never answered. Never again.",
    )
    assert out.review_negative is True
    assert any("negative phrase" in r for r in reviews(rt)[0].triage_reasons)


def test_processing_a_row_twice_keeps_one_review_and_its_status(rt):
    receive_review(rt)
    [row] = inbox(rt)
    with Session(rt.engine) as s:
        review = s.exec(select(Review)).one()
        review.status = "awaiting_approval"
        s.add(review)
        db_row = s.get(InboxEvent, row.id)
        db_row.status = InboxStatus.PENDING  # as if the sweep took it again after a crash
        s.add(db_row)
        s.commit()
    [again] = process_all(rt)
    assert again.status == InboxStatus.DONE and "already stored" in again.reason
    [review] = reviews(rt)
    assert review.status == "awaiting_approval"  # processing never moves a review backwards


def test_same_review_delivered_twice_is_stored_once(rt):
    body = review_body(review_payload())
    assert store_delivery(rt.engine, review_delivery(body))[1] is True
    assert store_delivery(rt.engine, review_delivery(body))[1] is False
    # an edited copy of the same review is still the same delivery
    assert store_delivery(rt.engine, review_delivery(review_body(review_payload(rating=1))))[1] is False
    assert len(inbox(rt)) == 1


def test_hostile_text_is_stored_verbatim_and_nul_is_dropped(rt):
    body = "<script>alert(1)</script>\x00 壊れていた"
    receive_review(rt, body=body, author="<b>x</b>")
    [review] = reviews(rt)
    assert review.body == "<script>alert(1)</script> 壊れていた" and review.author_display_name == "<b>x</b>"


# --- import ---------------------------------------------------------------------------------------


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def line(**overrides) -> str:
    return json.dumps(review_payload(**overrides), ensure_ascii=False)


def test_jsonl_import_stores_good_lines_reports_broken_ones_and_reimport_is_a_no_op(rt, tmp_path):
    path = write_jsonl(
        tmp_path / "history.jsonl",
        [
            line(review_id="a"),
            "",
            '{"platform": "own", "review_id": "b",',  # truncated
            line(review_id="c", rating=6),
            line(review_id="d", body=...),
            "[1, 2]",
            line(review_id="e", order_ref="#9999", rating=5, body="Lovely towels"),
        ],
    )
    report = import_reviews(rt.engine, path)

    assert (report.read, report.stored, report.duplicates) == (6, 2, 0)
    assert [e["line"] for e in report.errors] == [3, 4, 5, 6]
    assert report.errors[0]["error"].startswith("not JSON")
    assert report.errors[1]["review_id"] == "c" and "rating" in report.errors[1]["error"]
    assert "body" in report.errors[2]["error"]
    assert "JSON object" in report.errors[3]["error"]
    assert [r.delivery_id for r in inbox(rt)] == ["own:a", "own:e"]
    assert {r.status for r in inbox(rt)} == {InboxStatus.PENDING}

    again = import_reviews(rt.engine, path)
    assert (again.stored, again.duplicates, len(again.errors)) == (0, 2, 4)
    assert len(inbox(rt)) == 2

    outcomes = process_all(rt)
    assert [o.status for o in outcomes] == [InboxStatus.DONE, InboxStatus.DONE]
    assert {r.platform_review_id for r in reviews(rt)} == {"a", "e"}
    # History is kept and triaged but never sent for a reply: it may have been answered already.
    assert {r.topic for r in inbox(rt)} == {"reviews/import"}
    assert {r.status for r in reviews(rt)} == {"history"}


CSV_HEADER = "platform,review_id,order_ref,rating,title,body,author,language,created_at\n"


def test_csv_import_with_bom_and_quoted_commas_and_broken_rows(rt, tmp_path):
    receive_order(rt)
    path = tmp_path / "export.csv"
    path.write_bytes(
        (
            "\ufeff"
            + CSV_HEADER
            + 'trustpilot,tp-1,#1101,2,遅い,"届くのが遅く, 箱もつぶれていました",はなこ,ja,'
            + "2026-11-28T20:12:00+09:00\n"
            + "trustpilot,tp-2,,abc,,text,Bob,en,2026-11-28T20:12:00+09:00\n"
            + "trustpilot,tp-3,,5,,Great,Bob,en,2026-11-28T20:12:00+09:00,surplus\n"
            + "trustpilot,tp-4,,5\n"
            + "\n"
            + "trustpilot,tp-5,,5,,Great,Bob,en,2026-11-28T20:12:00+09:00\n"
            + 'trustpilot,tp-6,,5,,"stray"quote,Bob,en,2026-11-28T20:12:00+09:00\n'
            + "trustpilot,tp-7,,4,,Fine,Bob,en,2026-11-28T20:12:00+09:00\n"
        ).encode("utf-8")
    )
    report = import_reviews(rt.engine, path)

    assert (report.read, report.stored) == (7, 3)
    errors = {e["line"]: e for e in report.errors}
    assert set(errors) == {3, 4, 5, 8}
    assert errors[8]["error"].startswith("CSV:")
    assert "rating" in errors[3]["error"] and errors[3]["review_id"] == "tp-2"
    assert "more fields than the header" in errors[4]["error"]
    assert "fewer fields" in errors[5]["error"]
    first = inbox(rt)[0]
    stored = json.loads(first.body)
    assert stored["rating"] == 2 and stored["body"] == "届くのが遅く, 箱もつぶれていました"
    assert first.delivery_id == "trustpilot:tp-1"

    process_all(rt)
    linked = [r for r in reviews(rt) if r.platform_review_id == "tp-1"][0]
    assert linked.order_id is not None and linked.triage_negative is True


def test_file_that_is_not_utf8_is_one_error(rt, tmp_path):
    path = tmp_path / "sjis.csv"
    path.write_bytes((CSV_HEADER + "own,x,,2,,届かない,a,ja,2026-11-28T20:12:00+09:00\n").encode("shift_jis"))
    report = import_reviews(rt.engine, path)
    assert report.stored == 0 and "not UTF-8" in report.errors[0]["error"]


def test_format_is_detected_from_the_content_when_the_suffix_says_nothing(rt, tmp_path):
    jsonl = write_jsonl(tmp_path / "reviews.txt", [line(review_id="t1")])
    csv_file = tmp_path / "reviews.dat"
    csv_file.write_text(CSV_HEADER + "own,t2,,5,,ok,a,en,2026-11-28T20:12:00+09:00\n", encoding="utf-8")
    assert import_reviews(rt.engine, jsonl).stored == 1
    assert import_reviews(rt.engine, csv_file).stored == 1
    assert [r.delivery_id for r in inbox(rt)] == ["own:t1", "own:t2"]


def test_cli_import_prints_counts_and_each_bad_line_and_exits_1(rt, tmp_path, capsys):
    path = write_jsonl(tmp_path / "h.jsonl", [line(review_id="ok"), line(review_id="bad", rating=0)])
    args = SimpleNamespace(file=str(path), format=None, json=False)
    assert cmd_reviews_import(args, rt.settings) == 1
    out = capsys.readouterr().out
    assert "2 read, 1 stored, 0 already stored, 1 with errors" in out
    assert "line 2 (review bad): review payload" in out and "rating" in out

    args = SimpleNamespace(file=str(path), format=None, json=True)
    assert cmd_reviews_import(args, rt.settings) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["stored"], report["duplicates"], report["errors"][0]["line"]) == (0, 1, 2)


def test_cli_import_of_a_clean_file_exits_0_and_a_missing_file_exits_1(rt, tmp_path, capsys):
    path = write_jsonl(tmp_path / "h.jsonl", [line(review_id="ok")])
    assert cmd_reviews_import(SimpleNamespace(file=str(path), format=None, json=False), rt.settings) == 0
    assert "1 stored" in capsys.readouterr().out
    missing = SimpleNamespace(file=str(tmp_path / "nope.jsonl"), format=None, json=False)
    assert cmd_reviews_import(missing, rt.settings) == 1
    assert "no such file" in capsys.readouterr().err


def test_import_is_registered_on_the_main_cli():
    from aftercare.cli import build_parser

    args = build_parser().parse_args(["reviews", "import", "history.csv", "--format", "csv"])
    assert args.func is cmd_reviews_import and (args.file, args.format) == ("history.csv", "csv")
