"""The public review page GET /reviews/<public id>: only a review whose approved reply is published,
by an id nobody can guess; every other request is one and the same 404; phone numbers and email
addresses in the review masked on the page (not in the database); HTML escaped; the API docs off
unless AFTERCARE_API_DOCS=true. Each test runs the real app (TestClient) on SQLite and PostgreSQL;
reviews arrive through the signed webhook and the inbox, as in production."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlmodel import Session, select

from aftercare.models import InboxEvent, ReplyStatus, Review, ReviewReply, ReviewStatus
from aftercare.reviews import store
from aftercare.reviews.intake import parse_review, reviews_policy, upsert_review
from aftercare.reviews.masking import mask_contacts
from aftercare.reviews.publishing import (
    AmbiguousPublishError,
    OwnStorePlatform,
    PermanentPublishError,
    public_page_url,
    publish_reply,
)
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine.db import alembic_config, make_engine, migrate
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.reviews.intake_helpers import process_all, review_body, review_payload, signed_headers

URL_SAFE_22 = re.compile(r"[A-Za-z0-9_-]{22}")
AT = datetime(2026, 11, 28, 11, 12, tzinfo=UTC)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, waker=NoWaker())) as c:
        yield c


def intake(client: TestClient, rt: Runtime, **overrides: Any) -> Review:
    """A review posted to the signed webhook and processed from the inbox, as it is in production."""
    body = review_body(review_payload(**overrides))
    secret = rt.settings.reviews_webhook_secret.get_secret_value()
    resp = client.post("/webhooks/reviews", content=body, headers=signed_headers(body, secret))
    assert resp.json()["status"] == "pending", resp.text
    [outcome] = process_all(rt)
    review = store.get_review(rt.engine, outcome.review_id)
    assert review is not None
    return review


def publish(rt: Runtime, review: Review, text: str = "ご迷惑をおかけし申し訳ございません。") -> None:
    """Approve `text` and publish it to our own page, through the code the review-reply flow runs."""
    assert review.id is not None
    store.set_status(rt.engine, review.id, ReviewStatus.APPROVED)
    store.enqueue_reply(rt.engine, review.id, text, "sato@shop.example")
    reply = publish_reply(rt.engine, review.id, OwnStorePlatform())
    assert reply.status == ReplyStatus.PUBLISHED
    assert store.get_review(rt.engine, review.id).status == ReviewStatus.PUBLISHED


def signature(resp: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Everything a prober sees of an answer."""
    return resp.status_code, resp.content, sorted(resp.headers.items())


def never_issued() -> str:
    return secrets.token_urlsafe(16)


# --- the published case --------------------------------------------------------------------------


def test_a_published_reply_is_shown_with_its_review_at_the_public_id(client, rt):
    review = intake(client, rt)
    publish(rt, review, "この度はご迷惑をおかけし、誠に申し訳ございません。")

    resp = client.get(f"/reviews/{review.public_id}")

    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert '<html lang="ja">' in page and "★★☆☆☆" in page
    assert "贈り物に間に合わず残念でした" in page and "はなこ" in page  # title and author
    assert "からの返信" in page and "誠に申し訳ございません" in page
    assert resp.headers["content-security-policy"].startswith("default-src 'none'")
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"


def test_the_link_we_give_out_is_the_public_one(client, rt):
    review = intake(client, rt)
    publish(rt, review)
    url = public_page_url(rt.settings.model_copy(update={"web_base_url": "https://shop.example/"}), review)
    assert url == f"https://shop.example/reviews/{review.public_id}"
    assert client.get(url.removeprefix("https://shop.example")).status_code == 200
    assert not url.endswith(f"/reviews/{review.id}")  # a public id, never the row's number


def test_an_english_review_gets_the_english_page(client, rt):
    review = intake(
        client, rt, review_id="en-1", language="en", rating=4, title="Nice", body="Soft, slow.", author="Bob"
    )
    publish(rt, review, "Thank you, Bob. We are sorry about the delay.")
    page = client.get(f"/reviews/{review.public_id}").text
    assert '<html lang="en">' in page and "★★★★☆" in page and "Reply from" in page and "Bob" in page


def test_the_page_shows_neither_the_order_nor_the_platform_review_id(client, rt):
    review = intake(client, rt, review_id="r-77", order_ref="#1101")
    publish(rt, review)
    page = client.get(f"/reviews/{review.public_id}").text
    assert "#1101" not in page and "r-77" not in page and "@" not in page


def test_a_review_of_an_order_we_do_not_know_is_shown_once_published(client, rt):
    review = intake(client, rt, order_ref="#424242")
    assert review.order_id is None
    assert client.get(f"/reviews/{review.public_id}").status_code == 404
    publish(rt, review)
    assert client.get(f"/reviews/{review.public_id}").status_code == 200


# --- public ids ----------------------------------------------------------------------------------


def test_every_review_gets_its_own_random_public_id_at_intake(client, rt):
    reviews = [intake(client, rt, review_id=f"r-{n}") for n in range(20)]
    ids = [r.public_id for r in reviews]
    assert all(URL_SAFE_22.fullmatch(i) for i in ids)  # 16 random bytes: 128 bits
    assert len(set(ids)) == 20


def test_reprocessing_a_review_keeps_its_public_id(client, rt):
    review = intake(client, rt)
    with Session(rt.engine) as session:
        row = session.exec(select(InboxEvent)).one()
        edited = parse_review(review_payload(body="edited later"))
        result = upsert_review(session, row, edited, reviews_policy(rt.settings.policies_dir))
        session.commit()
        assert not result.created and result.review.public_id == review.public_id


def test_public_ids_are_unique_in_the_database(rt):
    with Session(rt.engine) as session:
        a = Review(platform="own", platform_review_id="a", rating=1, source_created_at=AT)
        session.add(a)
        session.commit()
        b = Review(
            platform="own", platform_review_id="b", rating=1, source_created_at=AT, public_id=a.public_id
        )
        session.add(b)
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()


# --- nothing else is public ----------------------------------------------------------------------


def _set_reply(rt: Runtime, review_id: int, status: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(sa.update(ReviewReply).where(ReviewReply.review_id == review_id).values(status=status))


class _Platform:
    """A review platform port whose publish does `then` (look at the page, or fail)."""

    name = "own"

    def __init__(self, then: Any):
        self.then = then

    def publish(self, review: Review, reply: ReviewReply) -> str:
        return self.then(review)

    def find_reply(self, review: Review, reply: ReviewReply) -> str | None:
        return None


def _fail(exc: Exception) -> Any:
    def raise_it(review: Review) -> str:
        raise exc

    return raise_it


STATES = [
    "new",
    "drafting",
    "awaiting_approval",
    "rejected",
    "history",
    "approved, reply pending",
    "approved, reply uncertain (platform did not answer)",
    "approved, reply failed (platform refused)",
    "reply published but the review not marked published yet",
    "review marked published but its reply failed",
]


def _into(rt: Runtime, review: Review, state: str) -> None:
    rid = review.id
    assert rid is not None
    if state in ("new",):
        return
    if state in ("drafting", "awaiting_approval", "rejected", "history"):
        store.set_status(rt.engine, rid, state)
        return
    store.set_status(rt.engine, rid, ReviewStatus.APPROVED)
    store.enqueue_reply(rt.engine, rid, "<b>申し訳ございません</b>", "sato@shop.example")
    if state == "approved, reply pending":
        return
    if state.startswith("approved, reply uncertain"):
        reply = publish_reply(rt.engine, rid, _Platform(_fail(AmbiguousPublishError("timed out"))))
        assert reply.status == ReplyStatus.UNCERTAIN
    elif state.startswith("approved, reply failed"):
        reply = publish_reply(rt.engine, rid, _Platform(_fail(PermanentPublishError("refused", 400))))
        assert reply.status == ReplyStatus.FAILED
    elif state.startswith("reply published but"):
        publish_reply(rt.engine, rid, OwnStorePlatform())
        store.set_status(rt.engine, rid, ReviewStatus.APPROVED)
    else:
        _set_reply(rt, rid, ReplyStatus.FAILED)
        store.set_status(rt.engine, rid, ReviewStatus.PUBLISHED)


@pytest.mark.parametrize("state", STATES)
def test_a_review_without_a_published_reply_is_the_same_404_as_an_unknown_id(client, rt, state):
    review = intake(client, rt, body="<script>alert(1)</script> 090-1234-5678 の件")
    _into(rt, review, state)
    unknown = client.get(f"/reviews/{never_issued()}")
    assert unknown.status_code == 404

    for path in (f"/reviews/{review.public_id}", f"/reviews/{review.id}"):
        resp = client.get(path)
        assert signature(resp) == signature(unknown), path
        assert "090" not in resp.text and "申し訳" not in resp.text


def test_while_the_reply_is_being_published_the_page_is_still_404(client, rt):
    review = intake(client, rt)
    store.set_status(rt.engine, review.id, ReviewStatus.APPROVED)
    store.enqueue_reply(rt.engine, review.id, "申し訳ございません。", "sato@shop.example")
    seen: list[Any] = []

    def look(r: Review) -> str:
        assert store.reply_of(rt.engine, r.id).status == ReplyStatus.PUBLISHING
        seen.append(client.get(f"/reviews/{r.public_id}"))
        return "own:1"

    publish_reply(rt.engine, review.id, _Platform(look))

    [during] = seen
    assert signature(during) == signature(client.get(f"/reviews/{never_issued()}"))
    assert client.get(f"/reviews/{review.public_id}").status_code == 200  # and once published, shown


def test_sequential_database_ids_lead_nowhere(client, rt):
    reviews = [intake(client, rt, review_id=f"seq-{n}") for n in range(3)]
    for review in reviews:
        publish(rt, review)
    unknown = signature(client.get(f"/reviews/{never_issued()}"))
    probes = [f"/reviews/{n}" for n in range(0, 12)] + [
        f"/reviews/{reviews[0].id:022d}",  # a database id padded to the public id's length
        "/reviews/-1",
        "/reviews/0x1",
        "/reviews/1.0",
    ]
    for path in probes:
        assert signature(client.get(path)) == unknown, path
    assert all(client.get(f"/reviews/{r.public_id}").status_code == 200 for r in reviews)


def _flip_case(public_id: str) -> str:
    i = next(n for n, ch in enumerate(public_id) if ch.isalpha())
    return public_id[:i] + public_id[i].swapcase() + public_id[i + 1 :]


def test_forged_malformed_too_long_and_non_ascii_ids_are_the_same_404(client, rt):
    review = intake(client, rt)
    publish(rt, review)
    good = review.public_id
    unknown = signature(client.get(f"/reviews/{never_issued()}"))
    forged = [
        never_issued(),
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # one character off
        _flip_case(good),  # ids are case-sensitive
        good[:-1],  # a prefix
        good + "A",  # longer
        good + "/",
        good + "/extra",
        "A" * 65,  # over the column's 64
        "A" * 5000,
        "%EF%BC%91" * 22,  # full-width digits
        "ｈａｎａｋｏ" * 4,
        "é" * 22,
        good[:-1] + "%C3%A9",
        good + "%00",
        "%00" * 22,
        "' OR '1'='1' --" + "A" * 10,
        "..%2F..%2Fetc%2Fpasswd",
        "",
    ]
    for probe in forged:
        resp = client.get(f"/reviews/{probe}")
        assert signature(resp) == unknown, probe
    assert client.get(f"/reviews/{good}").status_code == 200


def test_the_404_keeps_the_page_headers_and_says_nothing_more(client, rt):
    resp = client.get(f"/reviews/{never_issued()}")
    assert resp.status_code == 404
    assert resp.text == "<!doctype html><title>Not found</title><p>Not found</p>"
    assert resp.headers["content-security-policy"].startswith("default-src 'none'")
    assert resp.headers["x-content-type-options"] == "nosniff"


# --- escaping and masking on the page --------------------------------------------------------------


def test_hostile_html_in_every_field_is_escaped(client, rt):
    body = '<script>alert("body")</script><img src=x onerror=alert(1)> 届かない'
    author = "<b onmouseover=alert(2)>はなこ</b>"
    title = "</title><script>alert(3)</script>"
    review = intake(client, rt, body=body, author=author, title=title)
    publish(rt, review, "<script>alert('reply')</script>ご迷惑をおかけしました。")

    resp = client.get(f"/reviews/{review.public_id}")
    page = resp.text
    assert resp.status_code == 200
    assert "<script" not in page and "<img" not in page and "<b " not in page
    assert str(escape(body)) in page
    assert "&lt;b onmouseover=alert(2)&gt;はなこ&lt;/b&gt;" in page
    assert "&lt;/title&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#39;reply&#39;)&lt;/script&gt;" in page
    assert "script-src" not in resp.headers["content-security-policy"]


def test_contacts_are_masked_on_the_page_and_kept_in_the_database(client, rt):
    body = (
        "配送が遅れました。連絡先: ０９０－１２３４－５６７８ または taro.yamada@example.co.jp、"
        "自宅 03(1234)5678、海外から +81 90 8765 4321。"
        "注文番号 #1101、¥12,800、2026-11-27 に注文、〒100-0001。<script>x</script>"
    )
    review = intake(client, rt, body=body, title="TEL 080-2222-3333 まで", author="hanako@example.com")
    publish(rt, review)

    page = client.get(f"/reviews/{review.public_id}").text

    for raw in ("１２３４", "taro.yamada", "example.co.jp", "1234)5678", "8765", "2222", "hanako@"):
        assert raw not in page, raw
    for masked in (
        "０９０－＊＊＊＊－５６７８",
        "t***@e***.jp",
        "03(****)5678",
        "+81 90 **** 4321",
        "080-****-3333",
        "h***@e***.com",
    ):
        assert masked in page, masked
    for readable in ("#1101", "¥12,800", "2026-11-27", "〒100-0001", "&lt;script&gt;x&lt;/script&gt;"):
        assert readable in page, readable
    stored = store.get_review(rt.engine, review.id)
    assert (stored.body, stored.title, stored.author_display_name) == (
        body,
        "TEL 080-2222-3333 まで",
        "hanako@example.com",
    )


def test_a_reply_is_shown_as_approved_not_masked(client, rt):
    review = intake(client, rt)
    publish(rt, review, "お手数ですが 0120-000-111 までお電話ください。")
    assert "0120-000-111" in client.get(f"/reviews/{review.public_id}").text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("090-1234-5678", "090-****-5678"),
        ("09012345678", "090****5678"),
        ("０９０－１２３４－５６７８", "０９０－＊＊＊＊－５６７８"),
        ("０９０ー１２３４ー５６７８", "０９０ー＊＊＊＊ー５６７８"),  # the IME's long-vowel mark as a dash
        ("090‐1234−5678", "090‐****−5678"),
        ("090 1234 5678", "090 **** 5678"),
        ("03-1234-5678", "03-****-5678"),
        ("(03)1234-5678", "(03)****-5678"),
        ("03（１２３４）５６７８", "03（＊＊＊＊）５６７８"),
        ("050-1234-5678", "050-****-5678"),
        ("0120-123-456", "01**-**3-456"),  # at least 4 digits hidden, the last 4 shown
        ("TEL.03-1234-5678", "TEL.03-****-5678"),
        ("電話09012345678まで", "電話090****5678まで"),
        ("+81 90-1234-5678", "+81 90-****-5678"),
        ("+81-3-1234-5678", "+81-3-****-5678"),
        ("+81 (0)3-1234-5678", "+81 (0)3-****-5678"),
        ("+819012345678", "+8190****5678"),
        ("＋８１ ９０ １２３４ ５６７８", "＋８１ ９０ ＊＊＊＊ ５６７８"),
        ("+44 20 7946 0958", "+44 20 **** 0958"),
        ("(415) 555-0100", "(41*) ***-0100"),
        ("090\u200b1234\u200b5678", "090****5678"),  # zero-width spaces cannot hide a number
        ("0\u200d90-12\u206034-5678", "090-****-5678"),
        # Decided: a 10-11 digit number shaped like a Japanese phone is masked even when the
        # reviewer calls it an order number (an order number with "#" stays readable, below).
        ("注文番号 0312345678", "注文番号 03****5678"),
        ("taro@example.com", "t***@e***.com"),
        ("Taro.Yamada+shop@mail.example.co.jp宛", "T***@m***.jp宛"),
        ("ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ", "t***@e***.com"),
        ("taro﹫example.com", "t***@e***.com"),
        ("taro [at] example [dot] com", "t***@e***.com"),
        ("taro(at)example.com", "t***@e***.com"),
        ("taro アットマーク example.com", "t***@e***.com"),
        ("tar\u200bo@exa\u200bmple.com", "t***@e***.com"),
        ("<a href='mailto:x@evil.example'>", "<a href='mailto:x***@e***.example'>"),
    ],
)
def test_phone_numbers_and_emails_are_masked(text, shown):
    assert mask_contacts(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "注文番号 #1101",
        "#09012345678",  # after "#": an order reference
        "¥12,800",
        "12800円",
        "$1,234.56",
        "2026-11-27 / 2026/11/27 / 2026.11.27",
        "〒100-0001 〒060-0001",
        "1234-5678-9012",  # a tracking number
        "0123-4567-8901",  # 12 digits: not a Japanese phone
        "090-1234-5678-9",  # part of a longer code
        "ARITA-MUG-01",
        "JAN 4901234567894",
        "9:00-18:00",
        "3日遅れ、2個注文",
        "v1.2.3",
        "price@1.5",
        "@hanako_shop",
        "hanako@localhost",
        "",
    ],
)
def test_numbers_that_are_not_phones_stay_readable(text):
    assert mask_contacts(text) == text


def test_masking_a_huge_hostile_body_is_fast():
    import time

    hostile = ("a" * 60 + "@" + "b-" * 30 + ".") * 300 + "0" * 20_000 + "+1 " * 3000 + "090-" * 2000
    start = time.perf_counter()
    mask_contacts(hostile)
    assert time.perf_counter() - start < 1.0


# --- the API's own docs ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_api_docs_are_off_by_default(client, path):
    assert Settings(_env_file=None).api_docs is False
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_api_docs_are_served_when_turned_on(settings, monkeypatch, path):
    monkeypatch.setenv("AFTERCARE_API_DOCS", "true")
    assert Settings(_env_file=None).api_docs is True
    with TestClient(create_app(settings.model_copy(update={"api_docs": True}), waker=NoWaker())) as c:
        resp = c.get(path)
    assert resp.status_code == 200
    if path == "/openapi.json":
        assert "/webhooks/shopify" in resp.json()["paths"]


# --- migration 0007 --------------------------------------------------------------------------------


def test_migration_0007_gives_existing_reviews_random_public_ids_and_goes_down_and_up(own_database):
    from alembic import command

    settings = own_database
    if settings.is_sqlite:
        make_engine(settings).dispose()
    command.upgrade(alembic_config(settings), "0006")
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:  # reviews stored before 0007: no public id
            for n in range(1, 31):
                conn.execute(
                    sa.text(
                        "INSERT INTO reviews (platform, platform_review_id, shop_domain, rating, body, "
                        "source_created_at, received_at, triage_negative, triage_score, triage_reasons, "
                        "status) VALUES ('own', :rid, '', 2, 'old', :at, :at, false, 0, '[]', 'published')"
                    ),
                    {"rid": f"old-{n}", "at": "2026-11-01 00:00:00"},
                )
        migrate(settings)  # 0007

        with engine.connect() as conn:
            ids = conn.execute(sa.text("SELECT public_id FROM reviews ORDER BY id")).scalars().all()
        assert len(ids) == 30 and all(URL_SAFE_22.fullmatch(i) for i in ids) and len(set(ids)) == 30
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("reviews")}
        assert columns["public_id"]["nullable"] is False
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("UPDATE reviews SET public_id = :p WHERE id = 2"), {"p": ids[0]})

        with Session(engine) as session:  # a review stored after it gets one from the model
            session.add(Review(platform="own", platform_review_id="new", rating=1, source_created_at=AT))
            session.commit()
            new = session.exec(select(Review).where(Review.platform_review_id == "new")).one()
            assert URL_SAFE_22.fullmatch(new.public_id) and new.public_id not in ids

        command.downgrade(alembic_config(settings), "0006")
        assert "public_id" not in {c["name"] for c in sa.inspect(engine).get_columns("reviews")}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM reviews")).scalar() == 31
        migrate(settings)
        with engine.connect() as conn:
            again = conn.execute(sa.text("SELECT public_id FROM reviews")).scalars().all()
        assert len(set(again)) == 31 and all(URL_SAFE_22.fullmatch(i) for i in again)
    finally:
        engine.dispose()
