"""Trustpilot review invitations (aftercare/reviews/invitations.py) against a loopback Trustpilot
(tests/fakes/trustpilot.py), on SQLite and PostgreSQL: the API contract, the token, and exactly once
per order whatever Trustpilot answers (429, 500, a timeout, a dropped connection, a worker that
stopped mid-send, two workers at once)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlmodel import Session

from aftercare import timed
from aftercare.models import InvitationStatus, Order, ReviewInvitation
from aftercare.reviews import invitations
from aftercare.reviews.invitations import TrustpilotInvitations, TrustpilotNotConfigured
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from tests.factories import refund_payload
from tests.fakes.trustpilot import API_KEY, API_SECRET, BUSINESS_UNIT_ID, FakeTrustpilot
from tests.pipeline import receive, rows
from tests.reviews.request_setup import NOW, composers_for, dispatch, ordered, shipped_policy

POLICY = shipped_policy(
    destination="trustpilot",
    trustpilot={
        "template_id": "507f191e810c19729de860ea",
        "sender_name": "aftercare demo shop",
        "sender_email": "noreply.invitations@trustpilotmail.com",
        "reply_to": "support@shop.example",
        "redirect_uri": "https://shop.example/thanks",
        "locales": {"ja": "ja-JP", "en": "en-US"},
    },
)


@pytest.fixture
def fake() -> Iterator[FakeTrustpilot]:
    with FakeTrustpilot() as server:
        yield server
        assert server.violations == [], f"requests broke Trustpilot's contract: {server.violations}"


def api_for(fake: FakeTrustpilot, timeout: float = 2.0) -> TrustpilotInvitations:
    return TrustpilotInvitations(
        httpx.Client(timeout=timeout),
        api_base_url=fake.url,
        invitations_base_url=fake.url,
        api_key=API_KEY,
        api_secret=API_SECRET,
        business_unit_id=BUSINESS_UNIT_ID,
    )


def settings_for(settings: Settings, **changes) -> Settings:
    return settings.model_copy(
        update={
            "trustpilot_invitation_backoff_base_s": 60.0,
            "trustpilot_invitation_lease_s": 300.0,
            **changes,
        }
    )


def queued(rt, n: int = 40) -> ReviewInvitation:
    """An order whose review request the dispatcher handed to Trustpilot: one pending invitation."""
    req = ordered(rt, n)
    dispatch(rt, composers=composers_for(POLICY))
    [row] = rows(rt, ReviewInvitation, ReviewInvitation.order_id == req.order_id)
    assert row.status == InvitationStatus.PENDING
    return row


def invitation(rt, invitation_id: int) -> ReviewInvitation:
    with Session(rt.engine) as s:
        row = s.get(ReviewInvitation, invitation_id)
        assert row is not None
        return row


def drain(rt, api, settings, now=NOW):
    return invitations.send_due(rt.engine, api, POLICY, settings, now)


def test_one_invitation_in_trustpilot_s_shape_and_none_again(rt, fake):
    row = queued(rt)
    settings = settings_for(rt.settings)
    [sent] = drain(rt, api_for(fake), settings)
    assert sent.status == InvitationStatus.SENT
    [made] = fake.invitations
    assert made == {
        "consumerEmail": "buyer40@example.jp",
        "consumerName": "山田 花子",
        "referenceNumber": "#8040",
        "locale": "ja-JP",
        "senderEmail": "noreply.invitations@trustpilotmail.com",
        "senderName": "aftercare demo shop",
        "replyTo": "support@shop.example",
        "type": "email",
        "serviceReviewInvitation": {
            "templateId": "507f191e810c19729de860ea",
            "preferredSendTime": "12/03/2026 01:00:00",  # the moment the contact rules let it go, UTC
            "redirectUri": "https://shop.example/thanks",
        },
    }
    token_request, invite = fake.requests
    assert token_request.headers["authorization"].startswith("Basic ")
    assert invite.path == f"/v1/private/business-units/{BUSINESS_UNIT_ID}/email-invitations"
    assert invite.headers["authorization"] == "Bearer tp-token-1"
    done = invitation(rt, row.id)
    assert done.status == InvitationStatus.SENT and done.sent_at == NOW and done.attempts == 1
    # Drained again (the next run, another worker): nothing is sent twice.
    assert drain(rt, api_for(fake), settings, NOW + timedelta(days=1)) == []
    assert len(fake.invitations) == 1


def test_the_token_is_reused_until_it_expires_and_fetched_again_on_a_401(rt, fake):
    api = api_for(fake)
    first, second = queued(rt, 41), queued(rt, 42)
    settings = settings_for(rt.settings)
    drain(rt, api, settings)
    assert fake.token_requests == 1 and {invitation(rt, i.id).status for i in (first, second)} == {"sent"}
    third = queued(rt, 43)
    fake.revoke_tokens()  # Trustpilot forgot our token early: an unauthenticated request makes nothing
    [sent] = drain(rt, api, settings)
    assert sent.invitation_id == third.id and sent.status == InvitationStatus.SENT
    assert fake.token_requests == 2 and len(fake.invitations) == 3
    assert [r.status for r in fake.requests[-3:]] == [401, 200, 202]


def test_a_429_is_tried_again_after_the_backoff_and_made_once(rt, fake):
    row = queued(rt)
    settings = settings_for(rt.settings)
    fake.plan(429, headers={"Retry-After": "120"})
    [first] = drain(rt, api_for(fake), settings)
    assert first.status == InvitationStatus.PENDING and "429" in first.reason
    waiting = invitation(rt, row.id)
    assert waiting.status == InvitationStatus.PENDING and waiting.next_attempt_at == NOW + timedelta(
        seconds=120
    )
    assert drain(rt, api_for(fake), settings, NOW + timedelta(seconds=119)) == []
    [second] = drain(rt, api_for(fake), settings, NOW + timedelta(seconds=120))
    assert second.status == InvitationStatus.SENT
    assert len(fake.made_for("#8040")) == 1 and invitation(rt, row.id).attempts == 2


@pytest.mark.parametrize("made", [True, False])
@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_may_have_made_it_so_it_is_never_sent_again(rt, fake, status, made):
    row = queued(rt)
    settings = settings_for(rt.settings)
    fake.plan(status, made=made)
    [sent] = drain(rt, api_for(fake), settings)
    assert sent.status == InvitationStatus.UNCERTAIN and f"answered {status}" in sent.reason
    for later in (timedelta(hours=1), timedelta(days=3)):
        assert drain(rt, api_for(fake), settings, NOW + later) == []
    assert len(fake.made_for("#8040")) == (1 if made else 0)
    assert len([r for r in fake.requests if "email-invitations" in r.path]) == 1
    assert invitation(rt, row.id).status == InvitationStatus.UNCERTAIN


def test_a_503_is_tried_again(rt, fake):
    queued(rt)
    settings = settings_for(rt.settings)
    fake.plan(503)
    assert drain(rt, api_for(fake), settings)[0].status == InvitationStatus.PENDING
    assert drain(rt, api_for(fake), settings, NOW + timedelta(minutes=1))[0].status == InvitationStatus.SENT
    assert len(fake.invitations) == 1


@pytest.mark.parametrize("how", ["timeout", "hang_up"])
def test_no_answer_after_sending_is_uncertain_and_never_sent_again(rt, fake, how):
    row = queued(rt)
    settings = settings_for(rt.settings)
    if how == "timeout":
        fake.plan(delay_s=1.5, made=True)
    else:
        fake.plan(hang_up=True, made=True)
    [sent] = drain(rt, api_for(fake, timeout=0.4), settings)
    assert sent.status == InvitationStatus.UNCERTAIN and "it may have been made" in sent.reason
    assert drain(rt, api_for(fake), settings, NOW + timedelta(days=1)) == []
    assert len(fake.made_for("#8040")) == 1
    assert invitation(rt, row.id).status == InvitationStatus.UNCERTAIN


def test_trustpilot_down_is_tried_again_later(rt, fake):
    row = queued(rt)
    settings = settings_for(rt.settings)
    closed = api_for(fake)
    closed.invitations_base_url = closed.api_base_url = "http://127.0.0.1:9"  # nothing listens there
    [sent] = drain(rt, closed, settings)
    assert sent.status == InvitationStatus.PENDING and "could not" in sent.reason
    assert drain(rt, api_for(fake), settings, NOW + timedelta(minutes=1))[0].status == InvitationStatus.SENT
    assert len(fake.invitations) == 1 and invitation(rt, row.id).attempts == 2


def test_no_token_means_nothing_sent_and_a_later_try(rt, fake):
    queued(rt)
    fake.plan_token(503)
    [sent] = drain(rt, api_for(fake), settings_for(rt.settings))
    assert sent.status == InvitationStatus.PENDING and "token" in sent.reason
    assert not [r for r in fake.requests if "email-invitations" in r.path]


def test_attempts_run_out_then_it_fails_for_ops(rt, fake):
    row = queued(rt)
    settings = settings_for(rt.settings, trustpilot_invitation_max_attempts=2)
    fake.plan(429)
    fake.plan(429)
    assert drain(rt, api_for(fake), settings)[0].status == InvitationStatus.PENDING
    [last] = drain(rt, api_for(fake), settings, NOW + timedelta(hours=1))
    assert last.status == InvitationStatus.FAILED and last.reason.startswith("gave up after 2 attempts")
    assert drain(rt, api_for(fake), settings, NOW + timedelta(days=1)) == []
    assert invitation(rt, row.id).status == InvitationStatus.FAILED and fake.invitations == []


def test_a_refusal_fails_with_trustpilot_s_reason_without_the_address(rt, fake):
    row = queued(rt)
    fake.plan(400, body={"message": "consumerEmail buyer40@example.jp is blocked", "details": "blocklisted"})
    [sent] = drain(rt, api_for(fake), settings_for(rt.settings))
    assert sent.status == InvitationStatus.FAILED
    stored = invitation(rt, row.id).last_error
    assert stored == "Trustpilot refused the invitation (400): consumerEmail <consumer> is blocked"
    assert "buyer40" not in stored


def test_a_worker_that_stopped_mid_send_leaves_it_uncertain_never_resent(rt, fake):
    row = queued(rt)
    settings = settings_for(rt.settings)
    assert invitations.claim_due(rt.engine, NOW) == [row.id]  # claimed, then the worker died
    assert drain(rt, api_for(fake), settings, NOW + timedelta(seconds=299)) == []
    assert invitation(rt, row.id).status == InvitationStatus.SENDING  # its lease still runs
    assert drain(rt, api_for(fake), settings, NOW + timedelta(seconds=301)) == []
    stale = invitation(rt, row.id)
    assert stale.status == InvitationStatus.UNCERTAIN and "look in Trustpilot Business" in stale.last_error
    assert fake.requests == []


def test_two_workers_at_once_make_one_invitation(rt, fake):
    rows_ = [queued(rt, 50 + i) for i in range(4)]
    settings = settings_for(rt.settings)
    results: list = []
    barrier = threading.Barrier(3)

    def worker() -> None:
        barrier.wait()
        results.extend(drain(rt, api_for(fake), settings))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(r.invitation_id for r in results) == sorted(r.id for r in rows_)
    assert sorted(i["referenceNumber"] for i in fake.invitations) == ["#8050", "#8051", "#8052", "#8053"]


def test_an_order_refunded_after_it_was_queued_is_not_invited(rt, fake):
    req = ordered(rt, 44)
    dispatch(rt, composers=composers_for(POLICY))
    [row] = rows(rt, ReviewInvitation)
    receive(rt, refund_payload(req.payload, refund_id=6_500_044), topic="refunds/create")
    [sent] = drain(rt, api_for(fake), settings_for(rt.settings))
    assert sent.status == InvitationStatus.CANCELLED and sent.reason == "the order was refunded in full"
    assert invitation(rt, row.id).last_error == "not sent: the order was refunded in full"
    assert fake.requests == []


def test_a_customer_who_left_the_list_after_it_was_queued_is_not_invited(rt, fake):
    from aftercare.contact import store
    from aftercare.contact.policy import load_contact_policy
    from aftercare.models import Customer

    row = queued(rt)
    with Session(rt.engine) as s:
        order = s.get(Order, row.order_id)
        customer = s.get(Customer, order.customer_id)
        store.suppress(
            s,
            shop_domain=order.shop_domain,
            email_key=customer.email_key,
            list_name="review_requests",
            source="unsubscribe page",
            now=NOW,
            policy=load_contact_policy(rt.settings.policies_dir / "contact.yaml"),
        )
        s.commit()
    [sent] = drain(rt, api_for(fake), settings_for(rt.settings))
    assert sent.status == InvitationStatus.CANCELLED and "review_requests" in sent.reason
    assert fake.requests == []


def test_a_redacted_order_fails_without_a_request(rt, fake):
    row = queued(rt)
    with Session(rt.engine) as s:
        s.execute(sa.update(Order).where(Order.id == row.order_id).values(email=None, customer_id=None))
        s.commit()
    [sent] = drain(rt, api_for(fake), settings_for(rt.settings))
    assert sent.status == InvitationStatus.FAILED and "no customer email" in sent.reason
    assert fake.requests == []


def test_without_trustpilot_settings_the_invitations_wait(rt, fake):
    row = queued(rt)
    with pytest.raises(TrustpilotNotConfigured, match="AFTERCARE_TRUSTPILOT_API_KEY"):
        TrustpilotInvitations.from_settings(rt.settings)
    assert timed.send_review_invitations(rt, NOW) == []
    assert invitation(rt, row.id).status == InvitationStatus.PENDING


def test_the_wired_sender_uses_the_settings(rt, fake, tmp_path):
    from tests.reviews.request_setup import policies_dir_with

    configured = rt.settings.model_copy(
        update={
            "trustpilot_base_url": fake.url,
            "trustpilot_invitations_base_url": fake.url,
            "trustpilot_api_key": SecretStr(API_KEY),
            "trustpilot_api_secret": SecretStr(API_SECRET),
            "trustpilot_business_unit_id": BUSINESS_UNIT_ID,
            "policies_dir": policies_dir_with(
                tmp_path, **POLICY.model_dump(include={"destination", "trustpilot"})
            ),
        }
    )
    wired = Runtime.build(configured)
    try:
        req = ordered(wired, 60)
        dispatch(wired)  # the default composers under the configured policies: Trustpilot
        [sent] = timed.send_review_invitations(wired, NOW)
    finally:
        wired.engine.dispose()
    assert sent.status == InvitationStatus.SENT and len(fake.made_for(req.name)) == 1
