"""Staff mail (approval requests, escalations, ops alerts) goes through the outbox like customer mail:
one row per message per recipient, no retries around a send, nothing lost when a process dies after
the claim, and provider-side ids that never collide. The provider is the fake SendGrid on loopback,
scripted to fail for one recipient only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr
from sqlmodel import Session, select

from aftercare.cli import outbox_rows
from aftercare.models import OutboxMessage, Review, WarehouseHandoff, utcnow
from aftercare.rendering import Renderer
from aftercare.reviews import intake, notify
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.settings import LLMSettings
from aftercare.runtime import Runtime, use_runtime
from aftercare.settings import PROJECT_ROOT, Settings
from aftercare.spine import outbox
from aftercare.spine.email import make_backend
from tasks.reviews import make_draft, notify_approvers
from tasks.shipping import warehouse_alerts
from tests.conftest import shared_path
from tests.factories import order_payload
from tests.fakes.sendgrid import FakeSendGrid, _recipients, serve
from tests.pipeline import receive
from tests.reviews.helpers import FakeChat, add_review

OWNER, LEAD, MANAGER = "owner@example.com", "support-lead@example.com", "manager@example.com"
TEMPLATE_LLM = LLMSettings(_env_file=None, base_url="", model="")  # the template drafter: no network


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    yield from serve(shared_path("contracts", "sendgrid", "tsg_mail_v3.json"))


def sendgrid(settings: Settings, fake: FakeSendGrid) -> Settings:
    return settings.model_copy(
        update={
            "email_backend": "sendgrid",
            "sendgrid_api_key": SecretStr(fake.api_key),
            "sendgrid_base_url": fake.url,
            "sendgrid_timeout_s": 2.0,
            # A send retried inline waits 10 ms doubling (tests/conftest.py): its 12 attempts would
            # sleep 20 s. Capped, they take half a second; the count of attempts is what is tested.
            "send_backoff_cap_s": 0.05,
        }
    )


@pytest.fixture
def sg(settings: Settings, fake: FakeSendGrid) -> Iterator[Runtime]:
    runtime = Runtime.build(sendgrid(settings, fake))
    yield runtime
    runtime.engine.dispose()


def policy_of(rt: Runtime, **approval: Any) -> ReviewsPolicy:
    policy = intake.reviews_policy(rt.settings.policies_dir)
    return policy.model_copy(update={"approval": policy.approval.model_copy(update=approval)})


def drain(rt: Runtime, now: Any = None) -> list[outbox.DeliveryResult]:
    """What process-inbox's drain loop does with the outbox: claim what is due, deliver it."""
    claimed = outbox.claim_due(rt.engine, 50, "drain", **({"now": now} if now else {}))
    return [outbox.deliver(rt.engine, c.outbox_id, rt.backend, rt.settings) for c in claimed]


def staff_rows(rt: Runtime) -> list[OutboxMessage]:
    with Session(rt.engine) as s:
        return list(
            s.exec(
                select(OutboxMessage)
                .where(OutboxMessage.touchpoint_id.is_(None))  # type: ignore[union-attr]
                .order_by(OutboxMessage.id)  # type: ignore[arg-type]
            )
        )


def outbox_ids_sent(fake: FakeSendGrid) -> list[str]:
    return [p["custom_args"]["outbox_id"] for m in fake.messages for p in m["personalizations"]]


def overdue_review(rt: Runtime, ref: str) -> int:
    return add_review(
        rt.engine,
        platform_review_id=ref,
        status="awaiting_approval",
        approval_requested_at=utcnow() - timedelta(hours=30),
        flow_run_id="0b7e3f4e-5f6a-4c7d-8e9f-0a1b2c3d4e5f",
    )


def test_a_failure_for_the_second_approver_costs_the_first_no_second_copy(
    prefect_server, settings, fake, tmp_path
):
    """The approval request is the `notify approvers` task the review flow calls. SendGrid refuses
    the second approver once (429, come back in two minutes)."""
    with FakeChat() as chat:
        policies = _policies_with_webhook(tmp_path / "policies", chat.url)
        sg = Runtime.build(sendgrid(settings, fake).model_copy(update={"policies_dir": policies}))
        review_id = add_review(sg.engine, platform_review_id="jm-7")
        draft = make_draft(sg, review_id, llm=TEMPLATE_LLM)
        fake.plan(429, headers={"Retry-After": "120"}, to=LEAD)
        with use_runtime(sg):
            notify_approvers(review_id, draft.id, None)
            assert len(fake.sent_to(OWNER)) == 1  # before: the task's retries mailed the owner again
            notify_approvers(review_id, draft.id, None)  # a resumed run asks again: nobody is mailed twice
        assert len(fake.sent_to(OWNER)) == 1 and fake.sent_to(LEAD) == []
        assert len(chat.posts) == 1  # the chat line belongs to the rows' insertion, not to each call

    owner, lead = sorted(staff_rows(sg), key=lambda r: r.to_email)
    assert (owner.to_email, owner.status, owner.attempts) == (OWNER, "sent", 1)
    assert (lead.to_email, lead.status, lead.attempts) == (LEAD, "pending", 1)
    assert "SendGrid 429" in (lead.last_error or "")
    assert store_status(sg, review_id) == "awaiting_approval"

    assert drain(sg) == []  # not due yet: the provider asked for two minutes
    [later] = drain(sg, now=utcnow() + timedelta(minutes=3))
    assert (later.outbox_id, later.status) == (lead.id, "sent")
    assert drain(sg, now=utcnow() + timedelta(hours=1)) == []
    assert len(fake.sent_to(OWNER)) == 1 and len(fake.sent_to(LEAD)) == 1
    assert sorted(outbox_ids_sent(fake)) == sorted([str(owner.id), str(lead.id)])
    listed = outbox_rows(sg.settings, None, 10)  # what `aftercare outbox list` shows ops
    assert sorted((r["kind"], r["to"], r["status"]) for r in listed) == [
        ("approval_request", OWNER, "sent"),
        ("approval_request", LEAD, "sent"),
    ]
    sg.engine.dispose()


def _policies_with_webhook(folder: Path, url: str) -> Path:
    """The project's policies, with the reviews policy's chat webhook pointing at `url`."""
    folder.mkdir(parents=True)
    for path in (PROJECT_ROOT / "policies").glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        if path.name == "reviews.yaml":
            text = text.replace("slack_webhook_url: null", f'slack_webhook_url: "{url}"')
            assert url in text
        (folder / path.name).write_text(text, encoding="utf-8")
    return folder


def store_status(rt: Runtime, review_id: int) -> str:
    with Session(rt.engine) as s:
        review = s.get(Review, review_id)
    assert review is not None
    return review.status


def test_a_failing_escalation_is_not_repeated_by_later_sweeps(sg, fake):
    """Nobody decided in time; the notice goes to both approvers, and SendGrid keeps failing for the
    second. Three sweeps, each followed by the drain loop's sending, as process-inbox runs them."""
    policy = policy_of(sg, escalation_contact=None)  # the approvers get the escalation
    review_id = overdue_review(sg, "late-1")
    for _ in range(20):
        fake.plan(503, to=LEAD)
    renderer = Renderer(sg.settings.templates_dir)
    escalated = []
    for _ in range(3):
        escalated.append(notify.escalate_overdue(sg.engine, policy, sg.settings, renderer))
        drain(sg)
    assert len(fake.sent_to(OWNER)) == 1  # before: every sweep mailed the owner again
    assert escalated == [[review_id], [], []]
    lead_requests = [r for r in fake.requests if LEAD in _recipients(r.body)]
    assert len(lead_requests) == sg.settings.send_max_attempts  # the outbox's schedule, not the sweeps'
    [lead] = [r for r in staff_rows(sg) if r.to_email == LEAD]
    assert lead.status == "failed" and "gave up: SendGrid 503" in (lead.last_error or "")
    assert drain(sg, now=utcnow() + timedelta(days=1)) == []  # failed is for a person: `outbox resend`


CHILD = """
from tasks.review_sweep import review_sweep
review_sweep()
"""


def test_an_escalation_claimed_by_a_process_killed_before_sending_is_sent_by_the_next_drain(
    prefect_server, sg, fake, settings
):
    """kill -9 after the claim: the sweep runs in a process of its own, which is killed as soon as it
    has claimed the escalation and either handed nothing to the provider yet or is waiting on it."""
    review_id = overdue_review(sg, "late-2")
    fake.plan_delay(600, status=None)  # the provider holds the first request it gets
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "AFTERCARE_ENVIRONMENT": "test",
        "AFTERCARE_VAR_DIR": str(settings.var_dir),
        "AFTERCARE_DATABASE_URL": settings.database_url,
        "AFTERCARE_SHOPIFY_WEBHOOK_SECRET": settings.shopify_webhook_secret.get_secret_value(),
        # A real backend (SendGrid) refuses the public development secrets.
        "AFTERCARE_REVIEWS_WEBHOOK_SECRET": "staff-mail-test-reviews-secret",
        "AFTERCARE_APPROVAL_SECRET": "staff-mail-test-approval-secret",
        "AFTERCARE_LINK_SECRET": "staff-mail-test-link-secret",
        "AFTERCARE_WAKE_PREFECT": "false",
        "AFTERCARE_EMAIL_BACKEND": "sendgrid",
        "AFTERCARE_SENDGRID_API_KEY": fake.api_key,
        "AFTERCARE_SENDGRID_BASE_URL": fake.url,
        # The sweep's check of the approval runs asks the session's Prefect test server (without
        # it, Prefect starts a server of its own in the child: ~10 s).
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=PROJECT_ROOT)
    deadline = time.monotonic() + 60
    while child.poll() is None and not fake.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    with Session(sg.engine) as s:
        assert s.get(Review, review_id).escalated_at is not None  # claimed: no later sweep escalates it
    fake.reset()  # the held request died with the process

    with use_runtime(sg):
        notify.escalate_overdue(
            sg.engine, intake.reviews_policy(sg.settings.policies_dir), sg.settings, sg.renderer
        )
    drain(sg)
    [notice] = fake.sent_to(MANAGER)
    assert "late-2" in notice["subject"]
    assert [r.status for r in staff_rows(sg)] == ["sent"]


@pytest.mark.parametrize("backend", ["file", "sendgrid"])
def test_provider_ids_never_collide_across_customer_and_staff_mail(backend, rt, sg, fake):
    """An order's confirmation, the first review's approval request and escalation, and an ops
    alert about the order's hand-off: every mail has an id of its own at the provider."""
    use = sg if backend == "sendgrid" else rt
    receive(use, order_payload("ja-first-gift"))
    review_id = add_review(use.engine, platform_review_id="jm-9", status="awaiting_approval")
    draft = make_draft(use, review_id, llm=TEMPLATE_LLM)
    with use_runtime(use):
        notify_approvers.fn(review_id, draft.id, None)
        with use.engine.begin() as conn:
            conn.execute(
                sa.update(Review)
                .where(Review.id == review_id)
                .values(approval_requested_at=utcnow() - timedelta(hours=30))
            )
            conn.execute(sa.update(WarehouseHandoff).values(created_at=utcnow() - timedelta(hours=1)))
        policy = intake.reviews_policy(use.settings.policies_dir)
        assert notify.escalate_overdue(use.engine, policy, use.settings, use.renderer) == [review_id]
        assert warehouse_alerts()
    drain(use)
    if backend == "sendgrid":  # before: staff ids were draft/review/hand-off id * 100 + recipient
        assert fake.summary()["duplicate_outbox_ids"] == []
    with Session(use.engine) as s:
        rows = list(s.exec(select(OutboxMessage)))
    kinds = sorted(r.kind for r in rows)
    assert kinds == [
        "approval_request",
        "approval_request",
        "escalation_notice",
        "order_confirmation",
        "warehouse_alert",
    ]
    assert {r.status for r in rows} == {"sent"}
    provider_ids = [r.provider_message_id for r in rows]
    assert None not in provider_ids and len(set(provider_ids)) == len(rows)
    if backend == "sendgrid":
        assert sorted(outbox_ids_sent(fake), key=int) == [str(r.id) for r in sorted(rows, key=lambda r: r.id)]
    else:
        files = make_backend(use.settings)
        assert all(files.was_delivered(r.id) for r in rows)
