"""The send-timed-messages flow on a real Prefect test server (SQLite and PostgreSQL): its run is
named for what it sent, the next send time is a scheduled run named for what it will send, the
patrol's helpers start a run for a survey already due, and a composer's failure fails this run only.

The survey's own composer is another branch's (aftercare/surveys/mail.py): the wiring point that
will hold it (`aftercare.timed.default_composers`) is given a plain composer here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
)
from sqlmodel import Session

from aftercare import timed
from aftercare.models import OutboxMessage, Touchpoint
from aftercare.runtime import Runtime
from flows.contact import send_timed_messages
from tasks import contact as contact_tasks
from tests.contact.survey_setup import COMPOSERS, make_survey
from tests.pipeline import rows

TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.fixture
def deployment(flow_rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Runtime, str]]:
    """`send-timed-messages/send-timed-messages` exists (served by nobody here), and the survey has
    a composer."""
    monkeypatch.setattr(timed, "default_composers", lambda *_a, **_k: dict(COMPOSERS))
    deployment_id = send_timed_messages.to_deployment(name="send-timed-messages").apply()
    try:
        yield flow_rt, str(deployment_id)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def day_of_this_test() -> datetime:
    """A day of its own per test and database: Prefect keeps idempotency keys for good, and the keys
    here are times."""
    return datetime(2030, 1, 1, tzinfo=TOKYO) + timedelta(days=uuid.uuid4().int % 20000)


def runs_of(deployment_id: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[uuid.UUID(deployment_id)])
            )
        )


def test_a_run_is_named_for_what_it_sent_and_schedules_the_next_send_time(deployment):
    rt, deployment_id = deployment
    day = day_of_this_test()
    ten = (day + timedelta(hours=10)).astimezone(UTC)
    make_survey(rt, 1, due_at=ten)
    make_survey(rt, 2, due_at=(day + timedelta(hours=3)).astimezone(UTC))  # quiet hours: held until 09:00
    make_survey(rt, 3, due_at=(day + timedelta(hours=3)).astimezone(UTC))
    early = (day + timedelta(hours=3)).astimezone(UTC)

    state = send_timed_messages(now=early, return_state=True)
    assert state.is_completed(), state.message
    assert state.message.startswith("timed messages sent at 03:00 JST: 0; nothing sent, held: 2")
    assert "next: surveys at 09:00 JST: 2" in state.message
    with get_client(sync_client=True) as client:
        this = client.read_flow_run(state.state_details.flow_run_id)
    assert this.name == "timed messages sent at 03:00 JST: 0"
    [scheduled] = [r for r in runs_of(deployment_id) if r.state and r.state.is_scheduled()]
    assert scheduled.name == "surveys at 09:00 JST: 2"
    assert scheduled.expected_start_time == (day + timedelta(hours=9)).astimezone(UTC)

    # The scheduled moment comes: both held surveys go; the next is the 10:00 one.
    nine = (day + timedelta(hours=9)).astimezone(UTC)
    state = send_timed_messages(now=nine, return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        this = client.read_flow_run(state.state_details.flow_run_id)
    assert this.name == "surveys sent at 09:00 JST: 2"
    assert "next: surveys at 10:00 JST: 1" in state.message
    with get_client(sync_client=True) as client:  # the survey report, as an artifact of each run
        report = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=["survey-report"]))
        )
    assert report and report[0].flow_run_id == this.id
    assert "response rate" in str(report[0].data)
    sent = rows(rt, OutboxMessage, OutboxMessage.kind == "delivery_survey")
    assert len(sent) == 2 and {m.status for m in sent} == {"sent"}
    assert all(
        t.status == "done" for t in rows(rt, Touchpoint, Touchpoint.id.in_([m.touchpoint_id for m in sent]))
    )

    # Asking again for the same minute creates no second scheduled run; one more survey planned for
    # that minute renames it.
    make_survey(rt, 6, due_at=ten)
    send_timed_messages(now=nine, return_state=True)
    names = [r.name for r in runs_of(deployment_id) if r.state and r.state.is_scheduled()]
    assert [n for n in names if "10:00" in n] == ["surveys at 10:00 JST: 2"]


def test_the_patrol_starts_one_run_a_minute_for_a_survey_already_due(deployment):
    rt, deployment_id = deployment
    now = (day_of_this_test() + timedelta(hours=11)).astimezone(UTC)
    assert not contact_tasks.needs_dispatch_now(rt.engine, now)
    make_survey(rt, 4, due_at=now - timedelta(minutes=5))  # planned already due: a late delivered event
    assert contact_tasks.needs_dispatch_now(rt.engine, now)
    first = contact_tasks.ensure_dispatch_run(now)
    again = contact_tasks.ensure_dispatch_run(now + timedelta(seconds=30))
    assert first is not None and first == again
    state = send_timed_messages(now=now, return_state=True)
    assert state.is_completed() and "surveys sent at" in state.message
    assert not contact_tasks.needs_dispatch_now(rt.engine, now)


def test_the_patrol_helper_says_none_when_prefect_is_away(flow_rt, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert contact_tasks.ensure_dispatch_run(datetime.now(UTC)) is None


def test_a_composer_failure_fails_this_run_with_the_reason_and_leaves_the_survey_planned(
    deployment, monkeypatch
):
    rt, _ = deployment
    now = (day_of_this_test() + timedelta(hours=12)).astimezone(UTC)
    tp_id = make_survey(rt, 5, due_at=now)

    def broken(ctx):
        raise KeyError("score_links")

    monkeypatch.setattr(timed, "default_composers", lambda *_a, **_k: {"delivery_survey": broken})
    state = send_timed_messages(now=now, return_state=True)
    assert state.is_failed()
    assert f"touchpoint {tp_id} (#7005): could not be written: KeyError" in state.message
    with Session(rt.engine) as s:
        tp = s.get(Touchpoint, tp_id)
        assert tp is not None and tp.status == "planned" and tp.verdict is None
