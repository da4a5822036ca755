"""The unsubscribe link (aftercare/web/unsubscribe.py) through the real app on SQLite and PostgreSQL:
RFC 8058 one-click POSTs in every shape a mailbox provider or a stranger sends, the page a person
sees (which changes nothing until its button is pressed), and every token it must refuse."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from aftercare import signing
from aftercare.contact import store
from aftercare.models import OutboxStatus, TouchpointStatus, utcnow
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine.email import FileOutboxBackend
from aftercare.spine.outbox import claim_due, deliver
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.contact.unsub_helpers import (
    ALL_PLANNED,
    Planned,
    plan_customer,
    reason_of,
    statuses,
    suppressions,
    token_for,
)
from tests.factories import SHOP
from tests.web.approval_helpers import Served

CANCELLED = (TouchpointStatus.CANCELLED.value, OutboxStatus.CANCELLED.value)
PLANNED = (TouchpointStatus.PLANNED.value, OutboxStatus.PENDING.value)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, waker=NoWaker())) as c:
        yield c


@pytest.fixture
def two(rt: Runtime) -> tuple[Planned, Planned]:
    """Hanako, who will unsubscribe, and Taro, who will not."""
    return plan_customer(rt.engine, "Hanako@Example.JP"), plan_customer(rt.engine, "taro@example.jp")


def path(token: str) -> str:
    return f"/unsubscribe/{token}"


# -- one-click (RFC 8058) -------------------------------------------------------------------------


def test_one_click_post_unsubscribes_that_list_at_once_and_nothing_else(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, taro = two
    token = token_for(settings, hanako, "surveys")

    response = client.post(path(token), data=ONE_CLICK, follow_redirects=False)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "配信を停止しました" in response.text and "アンケートのご案内" in response.text
    assert hanako.email.lower() not in response.text.lower()  # the page cannot show the address
    assert suppressions(rt.engine) == [
        (SHOP, store.email_hash(hanako.email), "surveys", "list-unsubscribe post")
    ]
    # Her survey (touchpoint and its pending outbox row) is cancelled with the reason; her review
    # request (another list) and her order confirmation (transactional) stand, and Taro's all stand.
    assert statuses(rt.engine, hanako) == {
        "delivery_survey": CANCELLED,
        "review_request": PLANNED,
        "order_confirmation": PLANNED,
    }
    assert statuses(rt.engine, taro) == ALL_PLANNED
    reason = reason_of(rt.engine, hanako.touchpoints["delivery_survey"])
    assert reason is not None and "list-unsubscribe post" in reason and "surveys" in reason


def test_transactional_mail_still_goes_after_unsubscribing_from_everything(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned], tmp_path
) -> None:
    hanako, _ = two
    response = client.post(path(token_for(settings, hanako, "all")), data=ONE_CLICK)
    assert response.status_code == 200
    assert statuses(rt.engine, hanako) == {
        "delivery_survey": CANCELLED,
        "review_request": CANCELLED,
        "order_confirmation": PLANNED,
    }
    # The confirmation is delivered as usual by the real outbox.
    backend = FileOutboxBackend(tmp_path / "outbox")
    claimed = [c.outbox_id for c in claim_due(rt.engine, 10, "t")]
    assert hanako.outbox["order_confirmation"] in claimed
    assert hanako.outbox["delivery_survey"] not in claimed
    result = deliver(rt.engine, hanako.outbox["order_confirmation"], backend, settings)
    assert result.status == OutboxStatus.SENT


@pytest.mark.parametrize(
    "shape",
    ["urlencoded", "multipart", "junk", "empty", "no_content_type", "binary", "form_field_junk"],
)
def test_any_post_body_unsubscribes_the_tokens_list(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned], shape: str
) -> None:
    hanako, taro = two
    url = path(token_for(settings, hanako, "surveys"))
    if shape == "urlencoded":
        response = client.post(url, data=ONE_CLICK)
    elif shape == "multipart":
        response = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})
        assert response.request.headers["content-type"].startswith("multipart/form-data")
    elif shape == "junk":
        response = client.post(url, content=b"<<<%%%&&&==junk", headers={"content-type": "text/plain"})
    elif shape == "empty":
        response = client.post(
            url, content=b"", headers={"content-type": "application/x-www-form-urlencoded"}
        )
    elif shape == "no_content_type":
        response = client.post(url)
    elif shape == "binary":
        response = client.post(
            url, content=os.urandom(4096), headers={"content-type": "application/octet-stream"}
        )
    else:  # our form's field with a value it never has: the token's list, not a wider one
        response = client.post(url, data={"scope": "everything", "x": "\x00\u202e"})

    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    assert [s[2] for s in suppressions(rt.engine)] == ["surveys"]
    assert statuses(rt.engine, hanako)["delivery_survey"] == CANCELLED
    assert statuses(rt.engine, hanako)["review_request"] == PLANNED
    assert statuses(rt.engine, taro) == ALL_PLANNED


def test_cookies_are_neither_needed_nor_set(
    settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, _ = two
    client.cookies.clear()
    response = client.post(path(token_for(settings, hanako)), data=ONE_CLICK)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    page = client.get(path(token_for(settings, hanako)))
    assert "set-cookie" not in page.headers


def test_a_body_over_64_kb_is_refused_cleanly_and_changes_nothing(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, _ = two
    url = path(token_for(settings, hanako))
    big = b"List-Unsubscribe=One-Click&" + b"x" * (64 * 1024)

    declared = client.post(url, content=big, headers={"content-type": "application/x-www-form-urlencoded"})

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused when the cap is passed
        for _ in range(40):
            yield b"y" * 4096

    streamed = client.post(
        url, content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
    )

    for response in (declared, streamed):
        assert response.status_code == 413
        assert 'data-reason="too_large"' in response.text
    assert suppressions(rt.engine) == []
    assert statuses(rt.engine, hanako) == ALL_PLANNED
    # Just under the cap is taken.
    ok = client.post(url, content=b"List-Unsubscribe=One-Click&" + b"x" * (60 * 1024))
    assert ok.status_code == 200 and len(suppressions(rt.engine)) == 1


def test_posting_twice_stores_one_suppression_and_says_so(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, _ = two
    url = path(token_for(settings, hanako))
    first = client.post(url, data=ONE_CLICK)
    second = client.post(url, data=ONE_CLICK)
    assert (first.status_code, second.status_code) == (200, 200)
    assert "すでに停止済み" not in first.text and "すでに停止済み" in second.text
    assert len(suppressions(rt.engine)) == 1


def test_concurrent_posts_store_one_suppression_without_an_error(
    rt: Runtime, settings: Settings, two: tuple[Planned, Planned]
) -> None:
    hanako, taro = two
    url = path(token_for(settings, hanako))
    with Served(create_app(settings, waker=NoWaker())) as served:

        def post(_: int) -> int:
            with httpx.Client(base_url=served.url, timeout=30) as c:
                return c.post(url, data=ONE_CLICK).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(post, range(16)))

    assert codes == [200] * 16
    assert len(suppressions(rt.engine)) == 1
    assert statuses(rt.engine, hanako)["delivery_survey"] == CANCELLED
    assert statuses(rt.engine, taro) == ALL_PLANNED


# -- the page: GET changes nothing ----------------------------------------------------------------


def test_get_shows_the_choice_and_changes_nothing(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, taro = two
    url = path(token_for(settings, hanako))
    for _ in range(3):  # a scanner, a preview, the person
        page = client.get(url, headers={"user-agent": "Mozilla/5.0 (compatible; SafeLinks scanner)"})
        assert page.status_code == 200
    head = client.head(url)
    assert head.status_code in (200, 405)

    assert suppressions(rt.engine) == []
    assert statuses(rt.engine, hanako) == ALL_PLANNED and statuses(rt.engine, taro) == ALL_PLANNED
    text = page.text
    assert "メールの配信停止" in text and "ボタンを押すまで何も変更されません" in text
    assert 'name="scope" value="list"' in text and 'name="scope" value="class"' in text
    assert "アンケートのご案内" in text and "ご感想をお伺いするメールすべて" in text
    assert "aftercare デモショップ" in text  # which shop
    assert hanako.email.lower() not in text.lower()
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert "script-src" not in page.headers["content-security-policy"]
    assert "<script" not in text


def test_the_form_can_leave_all_feedback_mail(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, taro = two
    response = client.post(path(token_for(settings, hanako)), data={"scope": "class"})
    assert response.status_code == 200
    assert "ご感想をお伺いするメールすべて" in response.text
    assert [(s[2], s[3]) for s in suppressions(rt.engine)] == [("feedback", "unsubscribe page")]
    assert statuses(rt.engine, hanako) == {
        "delivery_survey": CANCELLED,
        "review_request": CANCELLED,
        "order_confirmation": PLANNED,
    }
    assert statuses(rt.engine, taro) == ALL_PLANNED


def test_page_language_follows_the_mail_then_the_browser(
    settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, _ = two
    english = client.get(path(token_for(settings, hanako, locale="en")), headers={"accept-language": "ja"})
    assert "Unsubscribe" in english.text and "survey emails" in english.text and 'lang="en"' in english.text
    unknown = path(token_for(settings, hanako, locale=None))
    assert 'lang="en"' in client.get(unknown, headers={"accept-language": "en-US,en;q=0.9,ja;q=0.5"}).text
    assert 'lang="ja"' in client.get(unknown, headers={"accept-language": "fr, ja;q=0.4"}).text
    assert 'lang="ja"' in client.get(unknown).text
    done = client.post(unknown, data=ONE_CLICK, headers={"accept-language": "en"})
    assert "You are unsubscribed" in done.text and "no more survey emails" in done.text


# -- tokens we must refuse ------------------------------------------------------------------------


def bad_tokens(settings: Settings, planned: Planned) -> dict[str, str]:
    good = token_for(settings, planned)
    secret = settings.link_secret.get_secret_value()
    middle = len(good) // 2
    flipped = good[:middle] + ("A" if good[middle] != "A" else "B") + good[middle + 1 :]
    payload, _, signature = good.rpartition(".")
    claims = {"s": SHOP, "h": store.email_hash(planned.email), "l": "surveys", "t": None}
    return {
        "forged": token_for(settings, planned, secret="someone-elses-secret-0123456789abcdef"),
        "altered": flipped,
        "cut": good[: len(good) - 5],
        "no_signature": payload,
        "expired": token_for(settings, planned, now=utcnow() - timedelta(days=401)),
        "approval_token": signing.sign(
            secret, "approval-link", claims, expires_at=utcnow() + timedelta(days=3)
        ),
        "survey_token": signing.sign(secret, "survey", claims, expires_at=utcnow() + timedelta(days=3)),
        "unknown_list": signing.sign(
            secret,
            "unsubscribe",
            {**claims, "l": "order_confirmation"},
            expires_at=utcnow() + timedelta(days=3),
        ),
        "no_claims": signing.sign(secret, "unsubscribe", {"x": 1}, expires_at=utcnow() + timedelta(days=3)),
        "garbage": "not-a-token",
        "huge": "a" * 5000,
        "hostile": "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "signature_swapped": payload + "." + signature[::-1],
    }


def test_every_bad_token_gets_the_same_4xx_page_and_changes_nothing(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    hanako, taro = two
    pages = {}
    for name, token in bad_tokens(settings, hanako).items():
        for method in ("GET", "POST"):
            response = client.request(method, path(token), data=ONE_CLICK if method == "POST" else None)
            assert response.status_code == 404, (name, method, response.status_code)
            assert 'data-reason="invalid"' in response.text, name
            assert "<script>" not in response.text
            pages[(name, method)] = response.text
    assert len(set(pages.values())) == 1  # one page, whatever is wrong with the token
    assert "このリンクは無効です" in next(iter(pages.values()))
    assert suppressions(rt.engine) == []
    assert statuses(rt.engine, hanako) == ALL_PLANNED and statuses(rt.engine, taro) == ALL_PLANNED


def test_the_refusal_page_speaks_the_browsers_language(
    settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    response = client.get(path("not-a-token"), headers={"accept-language": "en-GB"})
    assert response.status_code == 404 and "This link is not valid" in response.text


def test_a_token_whose_touchpoint_is_another_customers_cancels_none_of_theirs(
    rt: Runtime, settings: Settings, client: TestClient, two: tuple[Planned, Planned]
) -> None:
    """A token naming Hanako's address but Taro's touchpoint (only we can sign one, but whatever it
    says, the address decides): Hanako is suppressed by her hash; nothing of Taro's is touched."""
    hanako, taro = two
    mixed = Planned(hanako.email, hanako.customer_id, hanako.order_id, touchpoints=dict(taro.touchpoints))
    response = client.post(path(token_for(settings, mixed)), data=ONE_CLICK)
    assert response.status_code == 200
    assert suppressions(rt.engine) == [
        (SHOP, store.email_hash(hanako.email), "surveys", "list-unsubscribe post")
    ]
    assert statuses(rt.engine, taro) == ALL_PLANNED


def test_a_database_that_cannot_be_reached_is_a_503_page_and_the_choice_still_shows(
    settings: Settings, tmp_path
) -> None:
    """The page needs no database (GET reads nothing); the POST says plainly that nothing was stored
    and to try again (503, Retry-After), never a 500 with a traceback, never a claim it worked."""
    down = settings.model_copy(update={"database_url": "postgresql://postgres@127.0.0.1:9/nowhere"})
    planned = Planned("hanako@example.jp", 1, 1, touchpoints={"delivery_survey": 1})
    url = path(token_for(down, planned))
    with TestClient(create_app(down, waker=NoWaker()), raise_server_exceptions=False) as c:
        assert c.get(url).status_code == 200
        response = c.post(url, data=ONE_CLICK)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert 'data-reason="unavailable"' in response.text and "何も変更されていません" in response.text
