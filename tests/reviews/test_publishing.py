"""Publishing the one reply to a review: our own store, and Google Business Profile's and
Trustpilot's reply APIs against a loopback fake. One reply per review, ever: a second call, a retry
after an ambiguous failure, or racing workers never post twice."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from aftercare.models import ReplyStatus
from aftercare.reviews import store
from aftercare.reviews.publishing import (
    GoogleBusinessProfile,
    OwnStorePlatform,
    ReplyNotFound,
    Trustpilot,
    make_platform,
    publish_reply,
)
from aftercare.settings import Settings
from tests.fakes.review_platforms import BUSINESS_USER_ID, GOOGLE_TOKEN, TRUSTPILOT_TOKEN, FakeReviewPlatforms
from tests.reviews.intake_helpers import receive_review

GOOGLE_NAME = "accounts/111/locations/222/reviews/AbFvOq-3"
REPLY = "ご迷惑をおかけし、誠に申し訳ございません。いただいたご意見はスタッフ一同で共有いたします。"


@pytest.fixture
def fake() -> Iterator[FakeReviewPlatforms]:
    with FakeReviewPlatforms() as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=0.5) as c:
        yield c


def google(fake: FakeReviewPlatforms, client: httpx.Client, **kw) -> GoogleBusinessProfile:
    return GoogleBusinessProfile(client, base_url=fake.url, token=kw.pop("token", GOOGLE_TOKEN), **kw)


def trustpilot(fake: FakeReviewPlatforms, client: httpx.Client) -> Trustpilot:
    return Trustpilot(client, base_url=fake.url, token=TRUSTPILOT_TOKEN, business_user_id=BUSINESS_USER_ID)


def approved(rt, platform: str, review_id: str, text: str = REPLY) -> int:
    """A stored review from `platform` with its reply queued, as the approval flow leaves it."""
    rid = receive_review(rt, platform=platform, review_id=review_id, order_ref=...).review_id
    store.enqueue_reply(rt.engine, rid, text, "sato")
    store.set_status(rt.engine, rid, "approved")
    return rid


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --- our own store ----------------------------------------------------------------------------------


def test_own_store_publishes_by_recording_and_a_second_call_changes_nothing(rt):
    rid = approved(rt, "own", "own-1")
    reply = publish_reply(rt.engine, rid, OwnStorePlatform())

    assert reply.status == ReplyStatus.PUBLISHED and reply.platform_reply_id == f"own:{reply.id}"
    assert reply.attempts == 1 and reply.published_at is not None and reply.last_error is None
    review = store.get_review(rt.engine, rid)
    assert review.status == "published" and review.published_at == reply.published_at
    assert store.published_reply(rt.engine, rid).text == REPLY

    again = publish_reply(rt.engine, rid, OwnStorePlatform())
    assert again.attempts == 1 and again.published_at == reply.published_at


def test_no_reply_queued_is_a_named_error(rt):
    rid = receive_review(rt, order_ref=...).review_id
    with pytest.raises(ReplyNotFound, match="no reply queued"):
        publish_reply(rt.engine, rid, OwnStorePlatform())


# --- Google Business Profile ------------------------------------------------------------------------


def test_google_update_reply_puts_the_comment_once(rt, fake, client):
    rid = approved(rt, "google", GOOGLE_NAME)
    reply = publish_reply(rt.engine, rid, google(fake, client))

    assert reply.status == ReplyStatus.PUBLISHED and reply.platform_reply_id == f"{GOOGLE_NAME}/reply"
    [req] = fake.requests
    assert (req.method, req.path) == ("PUT", f"/v4/{GOOGLE_NAME}/reply")
    assert req.headers["authorization"] == f"Bearer {GOOGLE_TOKEN}"
    assert req.json == {"comment": REPLY}
    assert fake.replies == {f"google:{GOOGLE_NAME}": REPLY}

    assert publish_reply(rt.engine, rid, google(fake, client)).status == ReplyStatus.PUBLISHED
    assert len(fake.requests) == 1  # a re-run never posts again


def test_google_bare_review_id_uses_the_configured_location(rt, fake, client):
    rid = approved(rt, "google", "AbFvOq-3")
    reply = publish_reply(rt.engine, rid, google(fake, client, location="accounts/111/locations/222"))
    assert reply.status == ReplyStatus.PUBLISHED
    assert fake.requests[0].path == f"/v4/{GOOGLE_NAME}/reply"


def test_google_bare_review_id_without_a_location_fails_without_a_request(rt, fake, client):
    rid = approved(rt, "google", "AbFvOq-3")
    reply = publish_reply(rt.engine, rid, google(fake, client))
    assert reply.status == ReplyStatus.FAILED and "AFTERCARE_GOOGLE_BUSINESS_LOCATION" in reply.last_error
    assert fake.requests == []


def test_google_refusal_fails_with_googles_reason_and_is_not_retried(rt, fake, client):
    rid = approved(rt, "google", GOOGLE_NAME)
    reply = publish_reply(rt.engine, rid, google(fake, client, token="expired"), sleep=Sleeps())
    assert reply.status == ReplyStatus.FAILED
    assert "(401)" in reply.last_error and "invalid authentication credentials" in reply.last_error
    assert len(fake.requests) == 1
    assert store.get_review(rt.engine, rid).status == "approved"  # not published


# --- Trustpilot -----------------------------------------------------------------------------------


def test_trustpilot_business_reply_posts_once(rt, fake, client):
    rid = approved(rt, "trustpilot", "5f2c9a0e1b")
    reply = publish_reply(rt.engine, rid, trustpilot(fake, client))

    assert reply.status == ReplyStatus.PUBLISHED and reply.platform_reply_id == "trustpilot:5f2c9a0e1b/reply"
    [req] = fake.requests
    assert (req.method, req.path) == ("POST", "/v1/private/reviews/5f2c9a0e1b/reply")
    assert req.headers["authorization"] == f"Bearer {TRUSTPILOT_TOKEN}"
    assert req.json == {"authorBusinessUserId": BUSINESS_USER_ID, "message": REPLY}
    publish_reply(rt.engine, rid, trustpilot(fake, client))
    assert len(fake.requests) == 1 and fake.accepted == 1


def test_review_id_with_slashes_cannot_change_the_path(rt, fake, client):
    rid = approved(rt, "trustpilot", "../../admin")
    publish_reply(rt.engine, rid, trustpilot(fake, client))
    assert fake.requests[0].path == "/v1/private/reviews/..%2F..%2Fadmin/reply"


def test_429_then_success_is_retried_after_retry_after(rt, fake, client):
    rid = approved(rt, "trustpilot", "tp-429")
    fake.plan(429, body={"message": "Too many requests"}, headers={"Retry-After": "7"})
    sleeps = Sleeps()
    reply = publish_reply(rt.engine, rid, trustpilot(fake, client), sleep=sleeps)

    assert reply.status == ReplyStatus.PUBLISHED and reply.attempts == 2
    assert sleeps == [7.0]
    assert len(fake.requests) == 2 and fake.accepted == 1


def test_5xx_every_time_fails_after_max_attempts_with_backoff(rt, fake, client):
    rid = approved(rt, "trustpilot", "tp-503")
    for _ in range(3):
        fake.plan(503, body={"message": "Service unavailable"})
    sleeps = Sleeps()
    reply = publish_reply(
        rt.engine, rid, trustpilot(fake, client), max_attempts=3, backoff_base_s=1.0, sleep=sleeps
    )

    assert reply.status == ReplyStatus.FAILED and reply.attempts == 3
    assert "gave up after 3 attempts" in reply.last_error and "Service unavailable" in reply.last_error
    assert sleeps == [1.0, 2.0]
    assert len(fake.requests) == 3 and fake.accepted == 0
    publish_reply(rt.engine, rid, trustpilot(fake, client), sleep=sleeps)
    assert len(fake.requests) == 3  # failed stays failed: ops requeue it, nothing automatic


def test_4xx_fails_at_once_with_the_platforms_reason(rt, fake, client):
    rid = approved(rt, "trustpilot", "tp-400")
    fake.plan(400, body={"message": "Review already has a reply", "details": "reply exists"})
    reply = publish_reply(rt.engine, rid, trustpilot(fake, client), sleep=Sleeps())
    assert reply.status == ReplyStatus.FAILED and "Review already has a reply" in reply.last_error
    assert "(400)" in reply.last_error and len(fake.requests) == 1


def test_timeout_after_sending_is_uncertain_and_never_posted_again(rt, fake, client):
    rid = approved(rt, "trustpilot", "tp-slow")
    fake.plan(delay_s=2.0)  # the client gives up after 0.5 s; the platform may still publish it
    reply = publish_reply(rt.engine, rid, trustpilot(fake, client), sleep=Sleeps())

    assert reply.status == ReplyStatus.UNCERTAIN and "may be published" in reply.last_error
    assert len(fake.requests) == 1
    for _ in range(2):
        assert publish_reply(rt.engine, rid, trustpilot(fake, client)).status == ReplyStatus.UNCERTAIN
    assert len(fake.requests) == 1
    assert store.get_review(rt.engine, rid).status == "approved"


def test_connection_dropped_after_sending_is_uncertain(rt, fake, client):
    rid = approved(rt, "google", GOOGLE_NAME)
    fake.plan(hang_up=True)
    reply = publish_reply(rt.engine, rid, google(fake, client), sleep=Sleeps())
    assert reply.status == ReplyStatus.UNCERTAIN and len(fake.requests) == 1


def test_connection_refused_is_retried_then_failed_and_nothing_was_sent(rt, client):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rid = approved(rt, "trustpilot", "tp-down")
    port_down = Trustpilot(client, base_url=f"http://127.0.0.1:{port}", token="t", business_user_id="u")
    sleeps = Sleeps()
    reply = publish_reply(rt.engine, rid, port_down, max_attempts=2, sleep=sleeps)
    assert reply.status == ReplyStatus.FAILED and "could not reach trustpilot" in reply.last_error
    assert reply.attempts == 2 and len(sleeps) == 1


def test_racing_workers_post_once(rt, fake, client):
    rid = approved(rt, "google", GOOGLE_NAME)
    fake.plan(200, body={"comment": REPLY}, delay_s=0.2)  # hold the winner inside the request
    barrier = threading.Barrier(4)
    results: list[str] = []

    def run() -> None:
        barrier.wait()
        with httpx.Client(timeout=2) as own_client:
            results.append(publish_reply(rt.engine, rid, google(fake, own_client)).status)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.requests) == 1
    assert results.count(ReplyStatus.PUBLISHED) >= 1
    assert store.reply_of(rt.engine, rid).status == ReplyStatus.PUBLISHED


def test_an_adapter_crash_leaves_the_reply_uncertain(rt):
    class Broken:
        name = "broken"

        def publish(self, review, reply):
            raise RuntimeError("bug in the adapter")

    rid = approved(rt, "own", "own-crash")
    with pytest.raises(RuntimeError):
        publish_reply(rt.engine, rid, Broken())
    reply = store.reply_of(rt.engine, rid)
    assert reply.status == ReplyStatus.UNCERTAIN and "RuntimeError" in reply.last_error


# --- choosing the port ----------------------------------------------------------------------------


def test_make_platform_picks_the_api_when_configured_else_our_store(tmp_path):
    bare = Settings(_env_file=None, var_dir=tmp_path)
    assert isinstance(make_platform(bare, "google"), OwnStorePlatform)
    assert isinstance(make_platform(bare, "trustpilot"), OwnStorePlatform)
    configured = Settings(
        _env_file=None,
        var_dir=tmp_path,
        shopify_webhook_secret="shop-secret-for-a-real-backend",
        reviews_webhook_secret="reviews-secret-for-a-real-backend",
        approval_secret="approval-secret-for-a-real-backend",
        link_secret="link-secret-for-a-real-backend",
        google_business_token="g",
        trustpilot_token="t",
        trustpilot_business_user_id="u",
    )
    assert isinstance(make_platform(configured, "google"), GoogleBusinessProfile)
    assert isinstance(make_platform(configured, "trustpilot"), Trustpilot)
    assert isinstance(make_platform(configured, "yotpo"), OwnStorePlatform)
