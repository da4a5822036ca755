"""A review whose approval run died gets a fresh run (issue 8, found by the fault suite on PostgreSQL:
a worker killed while submitting two review-reply runs left them `Submitting` for good, and the
review's idempotency key kept handing the dead run back, so those reviews never reached an approver).

The deployment is registered on the session's test server but nobody serves it, so runs stay where
the test puts them; `now` is passed in instead of waiting out the never-started limit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Crashed, Failed, Paused, Pending

from aftercare.models import utcnow
from aftercare.reviews import store
from aftercare.runtime import Runtime
from flows.reviews import review_reply
from tasks import review_sweep as sweep
from tasks.review_sweep import MAX_RESTARTS, NEVER_STARTED_S, restart_dead_runs
from tasks.review_sweep import start_review_flow as start
from tests.reviews.helpers import add_review


@pytest.fixture
def deployment(flow_rt: Runtime) -> Iterator[Runtime]:
    """`review-reply/review-reply` exists (run_deployment needs it), served by nobody."""
    deployment_id = review_reply.to_deployment(name="review-reply").apply()
    try:
        yield flow_rt
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def _run(run_id: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def _set(run_id: str, state: object) -> None:
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), state, force=True)  # type: ignore[arg-type]


def _run_of(rt: Runtime, review_id: int) -> str:
    review = store.get_review(rt.engine, review_id)
    assert review is not None and review.flow_run_id
    return review.flow_run_id


LATER = timedelta(seconds=NEVER_STARTED_S + 1)


def test_a_run_left_submitting_is_crashed_and_the_review_gets_one_fresh_run(deployment: Runtime):
    rt = deployment
    review_id = add_review(rt.engine, platform_review_id="dead-submit")
    first = start(review_id)
    _set(first, Pending(name="Submitting"))  # the worker was killed here

    # Still within the worker's moment: left alone.
    assert restart_dead_runs(utcnow()) == []
    assert _run_of(rt, review_id) == first

    assert restart_dead_runs(utcnow() + LATER) == [review_id]
    assert _run(first).state_type.value == "CRASHED"
    second = _run_of(rt, review_id)
    assert second != first
    fresh = _run(second)
    assert fresh.parameters == {"review_id": review_id}
    assert fresh.name == "own dead-submit"
    assert "restart-1" in fresh.tags
    assert fresh.state_type.value == "SCHEDULED"  # a worker will pick it up

    # However many sweeps look, one dead run is followed by one fresh run.
    assert restart_dead_runs(utcnow() + LATER) == []
    assert start(review_id, after=first, restarts=1) == second


def test_a_crashed_run_is_restarted_up_to_the_limit_then_left_for_ops(deployment: Runtime):
    rt = deployment
    review_id = add_review(rt.engine, platform_review_id="dies-often")
    run = start(review_id)
    seen = {run}
    for n in range(1, MAX_RESTARTS + 1):
        _set(run, Crashed(message="no heartbeat for 90 s"))
        assert restart_dead_runs(utcnow()) == [review_id]
        run = _run_of(rt, review_id)
        assert run not in seen and f"restart-{n}" in _run(run).tags
        seen.add(run)
    _set(run, Crashed(message="no heartbeat for 90 s"))
    assert restart_dead_runs(utcnow()) == []  # a review that kills its runs is not restarted for ever
    assert _run_of(rt, review_id) == run


@pytest.mark.parametrize("status", ["new", "drafting", "awaiting_approval", "approved"])
def test_every_unfinished_status_is_restarted(deployment: Runtime, status: str):
    rt = deployment
    review_id = add_review(rt.engine, platform_review_id=f"unfinished-{status}", status=status)
    run = start(review_id)
    _set(run, Crashed())
    assert restart_dead_runs(utcnow()) == [review_id]
    assert _run_of(rt, review_id) != run


def test_live_finished_and_failed_runs_and_finished_reviews_are_left_alone(deployment: Runtime):
    rt = deployment
    cases = {}
    for name, state, status in [
        ("waiting", Paused(reschedule=True, pause_key="draft-1-0"), "awaiting_approval"),
        ("scheduled", None, "new"),
        ("failed", Failed(message="no approvers"), "new"),  # the flow said why: not run again
        ("completed", Completed(), "published"),
        ("rejected-then-crashed", Crashed(), "rejected"),
        ("published-then-crashed", Crashed(), "published"),
    ]:
        review_id = add_review(rt.engine, platform_review_id=f"alone-{name}", status=status)
        run = start(review_id)
        if state is not None:
            _set(run, state)
        cases[review_id] = run
    # A crashed run the review has moved on from (it has another run now) is not its run any more.
    moved = add_review(rt.engine, platform_review_id="alone-moved-on")
    old = start(moved)
    _set(old, Crashed())
    store.set_flow_run(rt.engine, moved, "00000000-0000-4000-8000-000000000001")
    assert restart_dead_runs(utcnow() + LATER) == []
    for review_id, run in cases.items():
        assert _run_of(rt, review_id) == run


def test_the_sweep_checks_at_most_once_a_minute(deployment: Runtime, monkeypatch: pytest.MonkeyPatch):
    rt = deployment
    review_id = add_review(rt.engine, platform_review_id="swept", status="drafting")
    run = start(review_id)
    _set(run, Crashed())
    monkeypatch.setattr(sweep, "_last_restart_check", float("-inf"))
    assert sweep.review_sweep()["restarted"] == [review_id]
    again = _run_of(rt, review_id)
    _set(again, Crashed())
    assert sweep.review_sweep()["restarted"] == []  # checked a moment ago: the next minute's sweep
    monkeypatch.setattr(sweep, "_last_restart_check", float("-inf"))
    assert sweep.review_sweep()["restarted"] == [review_id]


def test_prefect_unreachable_leaves_every_review_as_it_is(
    deployment: Runtime, monkeypatch: pytest.MonkeyPatch
):
    rt = deployment
    review_id = add_review(rt.engine, platform_review_id="unreachable", status="drafting")
    run = start(review_id)
    _set(run, Crashed())
    monkeypatch.setattr(sweep, "_last_restart_check", float("-inf"))
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = sweep.review_sweep()
    assert result["restarted"] == []
    assert _run_of(rt, review_id) == run
    assert restart_dead_runs(utcnow()) == [review_id]  # Prefect back: the next check restarts it


def test_the_web_apps_patrol_starts_and_restarts_runs_without_any_process_inbox_run(deployment: Runtime):
    """The web app's patrol thread (aftercare/web/app.prefect_patrol), on the app's own settings:
    a new review gets its approval run, and a dead run is followed by a fresh one, with no run of
    process-inbox at all (process-inbox makes no Prefect call)."""
    from aftercare.web.app import prefect_patrol

    rt = deployment
    review_id = add_review(rt.engine, platform_review_id="patrolled", status="new")
    run = start(review_id)
    _set(run, Crashed())
    fresh_id = add_review(rt.engine, platform_review_id="patrolled-new", status="new")
    patrol = prefect_patrol(rt.settings)
    assert len(patrol.run_due()) == len(patrol.jobs)  # every job, each once
    jobs = {job.name: job for job in patrol.jobs}
    starts = jobs["start approval runs for new reviews"]
    checks = jobs["restart dead approval runs, deliver stored decisions"]
    assert starts.last_error is None and checks.last_error is None
    assert fresh_id in starts.last_result  # type: ignore[operator]
    assert _run_of(rt, fresh_id) is not None
    restarted, delivered = checks.last_result  # type: ignore[misc]
    assert restarted == [review_id] and delivered == []
    assert _run_of(rt, review_id) != run
    assert patrol.run_due() == []  # neither job's turn again yet
