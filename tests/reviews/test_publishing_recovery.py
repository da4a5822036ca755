"""A worker killed (kill -9) while publishing a reply leaves the row `publishing`; the review sweep
settles it once the lease has passed, like the outbox: published when the platform has our reply,
published again when it certainly has not, `uncertain` when it cannot tell. Never posted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import SecretStr

from aftercare.models import ReplyStatus, utcnow
from aftercare.reviews import publishing, store
from aftercare.runtime import Runtime, use_runtime
from tasks.review_sweep import review_sweep
from tests.fakes.review_platforms import BUSINESS_USER_ID, GOOGLE_TOKEN, TRUSTPILOT_TOKEN, FakeReviewPlatforms
from tests.reviews.intake_helpers import receive_review

GOOGLE_NAME = "accounts/111/locations/222/reviews/AbFvOq-3"
REPLY = "ご迷惑をおかけし、誠に申し訳ございません。"
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent(
    """
    import sys, time
    import httpx
    from aftercare.spine.db import make_engine
    from aftercare.settings import Settings
    from aftercare.reviews import publishing

    url, review_id, kind, base, marker = sys.argv[1:6]

    class SlowOwnStore(publishing.OwnStorePlatform):
        def publish(self, review, reply):
            open(marker, "w").close()
            time.sleep(60)  # killed here, with the row claimed
            return super().publish(review, reply)

    client = httpx.Client(timeout=60)
    platform = {
        "own": lambda: SlowOwnStore(),
        "google": lambda: publishing.GoogleBusinessProfile(client, base_url=base, token=sys.argv[6]),
        "trustpilot": lambda: publishing.Trustpilot(
            client, base_url=base, token=sys.argv[6], business_user_id=sys.argv[7]
        ),
    }[kind]()
    publishing.publish_reply(make_engine(Settings(database_url=url)), int(review_id), platform)
    """
)


@pytest.fixture
def fake() -> Iterator[FakeReviewPlatforms]:
    with FakeReviewPlatforms() as server:
        yield server


def approved(rt, platform: str, review_id: str) -> int:
    rid = receive_review(rt, platform=platform, review_id=review_id, order_ref=...).review_id
    store.enqueue_reply(rt.engine, rid, REPLY, "sato")
    store.set_status(rt.engine, rid, "approved")
    return rid


def kill_mid_publish(rt, rid: int, kind: str, fake: FakeReviewPlatforms, tmp_path, arrived) -> None:
    """Run publish_reply in its own process and SIGKILL it once `arrived()` says the platform call
    is under way; the row is left as a dead worker leaves it."""
    marker = tmp_path / "in-publish"
    token = {"google": GOOGLE_TOKEN, "trustpilot": TRUSTPILOT_TOKEN}.get(kind, "")
    args = [rt.settings.database_url, str(rid), kind, fake.url, str(marker), token, BUSINESS_USER_ID]
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, *args], env={**os.environ, "PYTHONPATH": PROJECT}, cwd=PROJECT
    )
    try:
        deadline = time.monotonic() + 30
        while not arrived(marker):
            assert proc.poll() is None, "the worker ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert store.reply_of(rt.engine, rid).status == ReplyStatus.PUBLISHING


def sweep(rt: Runtime, settings_update: dict) -> dict:
    swept = Runtime.build(rt.settings.model_copy(update={"review_publish_lease_s": 0.001, **settings_update}))
    try:
        with use_runtime(swept):
            return review_sweep()
    finally:
        swept.engine.dispose()


def google_settings(fake) -> dict:
    return {"google_business_base_url": fake.url, "google_business_token": SecretStr(GOOGLE_TOKEN)}


def test_own_store_reply_killed_mid_publish_is_published_by_the_sweep(rt, fake, tmp_path):
    rid = approved(rt, "own", "own-killed")
    kill_mid_publish(rt, rid, "own", fake, tmp_path, lambda marker: marker.exists())
    assert sweep(rt, {})["recovered"] == [rid]
    reply = store.reply_of(rt.engine, rid)
    assert reply.status == ReplyStatus.PUBLISHED and reply.platform_reply_id == f"own:{reply.id}"
    assert store.get_review(rt.engine, rid).status == "published"
    assert store.published_reply(rt.engine, rid).text == REPLY


def test_google_has_the_reply_a_killed_worker_sent_so_it_is_recorded_not_posted_again(rt, fake, tmp_path):
    rid = approved(rt, "google", GOOGLE_NAME)
    fake.plan(delay_s=0.5)  # Google takes the reply, slowly; the worker dies waiting
    kill_mid_publish(rt, rid, "google", fake, tmp_path, lambda _m: len(fake.requests) == 1)
    deadline = time.monotonic() + 10
    while fake.accepted == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.accepted == 1

    assert sweep(rt, google_settings(fake))["recovered"] == [rid]
    reply = store.reply_of(rt.engine, rid)
    assert reply.status == ReplyStatus.PUBLISHED and reply.platform_reply_id == f"{GOOGLE_NAME}/reply"
    assert [r.method for r in fake.requests] == ["PUT", "GET"] and fake.accepted == 1


def test_google_without_the_reply_gets_it_once_from_the_sweep(rt, fake, tmp_path):
    rid = approved(rt, "google", GOOGLE_NAME)
    fake.plan(delay_s=1.0, hang_up=True)  # the request never takes effect
    kill_mid_publish(rt, rid, "google", fake, tmp_path, lambda _m: len(fake.requests) == 1)

    assert sweep(rt, google_settings(fake))["recovered"] == [rid]
    reply = store.reply_of(rt.engine, rid)
    assert reply.status == ReplyStatus.PUBLISHED and fake.accepted == 1
    assert fake.replies == {f"google:{GOOGLE_NAME}": REPLY}
    assert [r.method for r in fake.requests] == ["PUT", "GET", "PUT"]


def test_trustpilot_cannot_tell_so_the_reply_is_uncertain_and_never_posted_again(rt, fake, tmp_path):
    rid = approved(rt, "trustpilot", "tp-killed")
    fake.plan(delay_s=0.5)
    kill_mid_publish(rt, rid, "trustpilot", fake, tmp_path, lambda _m: len(fake.requests) == 1)

    settings = {
        "trustpilot_base_url": fake.url,
        "trustpilot_token": SecretStr(TRUSTPILOT_TOKEN),
        "trustpilot_business_user_id": BUSINESS_USER_ID,
    }
    assert sweep(rt, settings)["recovered"] == [rid]
    reply = store.reply_of(rt.engine, rid)
    assert reply.status == ReplyStatus.UNCERTAIN and "check the review" in reply.last_error
    assert sweep(rt, settings)["recovered"] == []
    assert [r.method for r in fake.requests] == ["POST"]


def test_a_reply_still_within_its_lease_is_left_to_its_worker(rt):
    rid = approved(rt, "own", "own-busy")
    assert publishing._claim(rt.engine, rid)
    own = lambda _platform: publishing.OwnStorePlatform()  # noqa: E731
    assert publishing.recover_stale(rt.engine, own, timedelta(minutes=15), utcnow()) == {}
    assert store.reply_of(rt.engine, rid).status == ReplyStatus.PUBLISHING
    later = utcnow() + timedelta(minutes=16)
    assert publishing.recover_stale(rt.engine, own, timedelta(minutes=15), later) == {rid: "published"}
