"""The review-reply flow through Prefect's real suspend and resume: the flow is served as a deployment
by a Runner (in a background thread, polling every second) against the session's test server, each
run executes in its own subprocess, and approvers resume runs the way the UI and API do
(`resume_flow_run(run_id, run_input=...)`, or the REST endpoint).

The runs are started together by process-inbox's review sweep (so their subprocess start-ups
overlap); each test then drives its own run. Drafts come from a fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
import yaml
from markdown_it import MarkdownIt
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.flow_runs import resume_flow_run
from prefect.input.actions import read_flow_run_input
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL
from prefect.states import Scheduled

from aftercare.models import Review, utcnow
from aftercare.reviews import store
from aftercare.runtime import Runtime, use_runtime
from aftercare.settings import PROJECT_ROOT, Settings
from aftercare.spine.db import migrate
from flows.reviews import review_reply
from tasks.reviews import REVIEW_DEPLOYMENT, review_sweep, start_review_flow
from tests.pipeline import send_outbox, staff_mails
from tests.reviews.fake_openai import API_KEY, FakeOpenAI
from tests.reviews.helpers import FakeChat, add_review

T = TypeVar("T")
UI = "http://ui.test"
OWNER, LEAD, MANAGER = "owner@example.com", "support-lead@example.com", "manager@example.com"
FIRST_DRAFT = (
    "Thank you for your review. We are sorry it did not meet your expectations, and we have shared "
    "your feedback with our team."
)
REDRAFTED = (
    "Thank you for your review. We are sorry the mug arrived broken. Every glaze is applied by hand, "
    "and we have shared your feedback with our workshop."
)
GOOD_EDIT = (
    "Thank you for telling us. We are sorry the mug arrived broken; please write to support@example.com "
    "so that we can look into this with you."
)
SCENARIOS = ("approve", "invalid", "redraft", "reject")


def _llm_reply(body: dict[str, Any]) -> dict[str, Any]:
    asked = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
    text = REDRAFTED if "approver instructions" in asked else FIRST_DRAFT
    return {
        "reply_text": text,
        "language": "en",
        "apologises": True,
        "promised_actions": [],
        "risk_notes": [],
    }


class BackgroundRunner:
    """`review-reply` served by a Runner in a thread of this process, as flows/serve.py serves it."""

    def __init__(self) -> None:
        self.runner = Runner(
            name="review-approval-tests", query_seconds=1, limit=None, pause_on_shutdown=False
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="runner", daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.runner.aadd_flow(review_reply, name="review-reply")
        self.ready.set()
        await self.runner.start()

    def __enter__(self) -> BackgroundRunner:
        self.thread.start()
        assert self.ready.wait(60), "the runner did not register the deployment"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self.runner.started:
            asyncio.run_coroutine_threadsafe(self.runner.astop(), self.loop).result(30)
        self.thread.join(30)
        # Later tests in this session must not find a deployment nobody serves any more.
        with get_client(sync_client=True) as client:
            client.delete_deployment(client.read_deployment_by_name(REVIEW_DEPLOYMENT).id)


@dataclass
class Env:
    rt: Runtime
    llm: FakeOpenAI
    chat: FakeChat
    runs: dict[str, tuple[int, str]]
    positive_id: int

    @property
    def engine(self) -> sa.Engine:
        return self.rt.engine

    def staff_mail(self, kind: str, key: str) -> list[email.message.EmailMessage]:
        """The mails of this kind and key that went out (outbox rows without an order, each at
        staff/<outbox id>.eml); rows not sent yet are not among them."""
        return staff_mails(self.rt, kind, key)


@pytest.fixture(scope="module")
def env(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("review-approval")
    url = f"sqlite:///{root / 'aftercare.db'}"
    migrate(Settings(database_url=url))
    policies = root / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    with FakeChat() as chat, FakeOpenAI(_llm_reply) as llm, pytest.MonkeyPatch.context() as mp:
        data = yaml.safe_load((policies / "reviews.yaml").read_text(encoding="utf-8"))
        data["approval"].update(
            approvers=[OWNER, LEAD],
            escalation_contact=MANAGER,
            window_hours=24,
            locale="en",
            slack_webhook_url=chat.url,
            reply_to_positive=False,
        )
        (policies / "reviews.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        # The flow runs in subprocesses, which build their runtime from the environment.
        for name, value in {
            "AFTERCARE_ENVIRONMENT": "test",
            "AFTERCARE_DATABASE_URL": url,
            "AFTERCARE_VAR_DIR": str(root / "var"),
            "AFTERCARE_POLICIES_DIR": str(policies),
            "AFTERCARE_WAKE_PREFECT": "false",
            "AFTERCARE_PREFECT_UI_URL": UI,
            "AFTERCARE_LLM_BASE_URL": llm.base_url,
            "AFTERCARE_LLM_MODEL": "fake-model",
            "AFTERCARE_LLM_API_KEY": API_KEY,
            "AFTERCARE_LLM_MAX_RETRIES": "0",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        }.items():
            mp.setenv(name, value)
        rt = Runtime.build(Settings())
        try:
            with BackgroundRunner(), use_runtime(rt):
                ids = {
                    s: add_review(rt.engine, platform_review_id=f"r-{s}", author_display_name="Sam")
                    for s in SCENARIOS
                }
                positive = add_review(
                    rt.engine,
                    platform_review_id="r-happy",
                    rating=5,
                    body="Lovely mug!",
                    triage_negative=False,
                )
                swept = sweep_until_started(ids.values())  # what process-inbox does on each loop
                assert all(s["escalated"] == [] for s in swept), swept
                runs = {s: (ids[s], store.get_review(rt.engine, ids[s]).flow_run_id) for s in SCENARIOS}
                yield Env(rt=rt, llm=llm, chat=chat, runs=runs, positive_id=positive)
        finally:
            rt.engine.dispose()
        assert llm.violations == []


# -- helpers --------------------------------------------------------------------------------------


def sweep_until_started(review_ids: Iterable[int], sweeps: int = 5) -> list[dict[str, list[int]]]:
    """Run the review sweep, as process-inbox's loop does, until each review has its one approval run;
    returns every sweep's result. A start Prefect refuses leaves the review new for the next turn: the
    session's test server (SQLite) answers 503 now and then while other runs start on a busy machine."""
    swept: list[dict[str, list[int]]] = []
    started: list[int] = []
    for _ in range(sweeps):
        swept.append(review_sweep())
        started += swept[-1]["started"]
        if sorted(started) == sorted(review_ids):
            break
    assert sorted(started) == sorted(review_ids), swept  # each once, none twice
    return swept


def read_run(run_id: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def waiting(run_id: str, forms: int) -> FlowRun:
    """The run once it is suspended on its `forms`-th form (pause keys used so far)."""

    def check() -> FlowRun | None:
        run = read_run(run_id)
        if run.state and run.state.is_final():
            raise AssertionError(f"run ended instead of waiting: {run.state.type} {run.state.message}")
        used = len(run.empirical_policy.pause_keys or ())
        return run if run.state and run.state.is_paused() and used == forms else None

    return wait_for(check, f"run {run_id} to wait on form {forms}")


def finished(run_id: str, after_run_count: int = 0) -> FlowRun:
    def check() -> FlowRun | None:
        run = read_run(run_id)
        return run if run.state and run.state.is_final() and run.run_count > after_run_count else None

    return wait_for(check, f"run {run_id} to finish")


def form_text(run_id: str, draft_id: int, n: int) -> str:
    return str(read_flow_run_input(f"suspended-draft-{draft_id}-{n}-description", flow_run_id=UUID(run_id)))


def decisions(env: Env, review_id: int) -> list[tuple[str, str, int | None]]:
    return [(d.action, d.approver, d.draft_id) for d in store.decisions(env.engine, review_id)]


# -- the paths ------------------------------------------------------------------------------------


def test_new_negative_reviews_get_one_run_each_named_by_platform_and_review(env: Env):
    review_id, run_id = env.runs["approve"]
    run = waiting(run_id, forms=1)
    review = store.get_review(env.engine, review_id)
    assert run.name == f"own {review.platform_review_id}" and review.platform_review_id in run.name
    assert store.get_review(env.engine, env.positive_id).flow_run_id is None  # positive: no reply by policy
    with use_runtime(env.rt):
        assert start_review_flow(review_id) == run_id  # one run per review, ever
        assert review_sweep()["started"] == []


def test_approve_publishes_the_draft_once_even_when_the_run_is_run_again(env: Env):
    review_id, run_id = env.runs["approve"]
    waiting(run_id, forms=1)
    review = store.get_review(env.engine, review_id)
    draft = store.latest_draft(env.engine, review_id)
    assert review.status == "awaiting_approval" and review.approval_requested_at is not None
    assert draft.source == "llm" and draft.text == FIRST_DRAFT and not draft.needs_attention
    link = f"{UI}/runs/flow-run/{run_id}"
    mails = env.staff_mail("approval_request", f"draft-{draft.id}")  # sent by the run, not a sweep
    assert (
        sorted(m["To"] for m in mails) == [OWNER, LEAD]
        and link in mails[0].get_body(("plain",)).get_content()
    )
    assert any(link in t and "r-approve" in t for t in env.chat.texts)
    form = form_text(run_id, draft.id, 0)
    assert FIRST_DRAFT in form and "| length | pass |" in form and "drafted by the LLM" in form

    resume_flow_run(UUID(run_id), run_input={"approver": " Owner@Example.com", "action": "approve"})
    run = finished(run_id)
    assert run.state.is_completed(), run.state.message
    reply = store.reply_of(env.engine, review_id)
    assert (reply.status, reply.text, reply.approved_by, reply.attempts) == (
        "published",
        FIRST_DRAFT,
        OWNER,
        1,
    )
    assert store.get_review(env.engine, review_id).status == "published"
    assert f"/reviews/{review.public_id} " in (run.state.message or "")  # where to see it: the public id
    assert decisions(env, review_id) == [("approve", OWNER, draft.id)]
    sla = store.sla(env.engine, review_id)
    assert sla["approval_wait_s"] is not None and sla["to_publish_s"] is not None and not sla["escalated"]

    # Someone re-runs the finished run from the UI: it finds the reply published and posts nothing.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Scheduled(), force=True)
    again = finished(run_id, after_run_count=run.run_count)
    assert again.state.is_completed(), again.state.message
    after = store.reply_of(env.engine, review_id)
    assert (after.attempts, after.published_at, after.platform_reply_id) == (
        1,
        reply.published_at,
        reply.platform_reply_id,
    )
    assert len(decisions(env, review_id)) == 1


def test_redraft_drafts_again_with_the_instructions_then_approve_publishes_the_new_draft(env: Env):
    review_id, run_id = env.runs["redraft"]
    waiting(run_id, forms=1)
    first = store.latest_draft(env.engine, review_id)
    instructions = "Mention that every glaze is applied by hand."

    resume_flow_run(
        UUID(run_id), run_input={"approver": OWNER, "action": "redraft", "instructions": instructions}
    )
    waiting(run_id, forms=2)
    second = store.latest_draft(env.engine, review_id)
    assert second.id != first.id and second.instructions == instructions and second.text == REDRAFTED
    assert any(instructions in r.all_text for r in env.llm.requests)
    assert REDRAFTED in form_text(run_id, second.id, 0)
    assert len(env.staff_mail("approval_request", f"draft-{second.id}")) == 2  # they hear of the new draft

    resume_flow_run(UUID(run_id), run_input={"approver": OWNER, "action": "approve"})
    run = finished(run_id)
    assert run.state.is_completed(), run.state.message
    assert store.reply_of(env.engine, review_id).text == REDRAFTED
    assert decisions(env, review_id) == [("redraft", OWNER, first.id), ("approve", OWNER, second.id)]


def test_invalid_decisions_keep_the_run_waiting_with_the_error_shown_until_a_valid_edit(env: Env):
    review_id, run_id = env.runs["invalid"]
    waiting(run_id, forms=1)
    draft = store.latest_draft(env.engine, review_id)

    # An unknown approver and an edit that offers a refund: refused with both reasons shown.
    refund = GOOD_EDIT + " We will refund you."
    resume_flow_run(
        UUID(run_id),
        run_input={"approver": "mallory@example.com", "action": "edit", "edited_text": refund},
    )
    waiting(run_id, forms=2)
    form = form_text(run_id, draft.id, 1)
    assert "Your last decision was not applied" in form
    shown = MarkdownIt("commonmark").render(form)  # what the approver reads: form input made inert
    assert "'mallory@example[.]com' is not an approver" in shown and "remedies_within_policy" in shown
    assert (
        decisions(env, review_id) == []
        and store.get_review(env.engine, review_id).status == "awaiting_approval"
    )
    assert len(env.staff_mail("approval_request", f"draft-{draft.id}")) == 2  # none new for the same draft

    # Straight to the REST API with input the form's schema refuses: HTTP 200, status REJECT.
    response = httpx.post(
        f"{PREFECT_API_URL.value()}/flow_runs/{run_id}/resume",
        json={"run_input": {"approver": OWNER, "action": "maybe"}},
        timeout=10,
    )
    assert response.status_code == 200 and response.json()["status"] == "REJECT"
    assert read_run(run_id).state.is_paused()

    # Decided through the API client (what a script or another service would do).
    resume_flow_run(UUID(run_id), run_input={"approver": LEAD, "action": "edit", "edited_text": GOOD_EDIT})
    run = finished(run_id)
    assert run.state.is_completed(), run.state.message
    reply = store.reply_of(env.engine, review_id)
    assert (reply.status, reply.text, reply.approved_by) == ("published", GOOD_EDIT, LEAD)
    [decision] = store.decisions(env.engine, review_id)
    assert (decision.action, decision.text, decision.draft_id) == ("edit", GOOD_EDIT, draft.id)
    assert decision.guardrails and all(g["passed"] for g in decision.guardrails)


def test_a_review_waiting_past_the_window_is_escalated_once_then_rejected_with_a_reason(env: Env):
    review_id, run_id = env.runs["reject"]
    waiting(run_id, forms=1)
    with env.engine.begin() as conn:
        conn.execute(
            sa.update(Review)
            .where(Review.id == review_id)
            .values(approval_requested_at=utcnow() - timedelta(hours=25))
        )
    with use_runtime(env.rt):
        assert review_sweep()["escalated"] == [review_id]
        send_outbox(env.rt)  # process-inbox sends it in the same round
        assert review_sweep()["escalated"] == []  # once, not twice
    assert send_outbox(env.rt) == []
    [notice] = env.staff_mail("escalation_notice", f"review-{review_id}")
    link = f"{UI}/runs/flow-run/{run_id}"
    assert notice["To"] == MANAGER and link in notice.get_body(("plain",)).get_content()
    assert any("Escalation" in t and link in t for t in env.chat.texts)
    assert read_run(run_id).state.is_paused()  # still waiting for a person
    assert store.sla(env.engine, review_id)["escalated"]

    resume_flow_run(
        UUID(run_id), run_input={"approver": LEAD, "action": "reject", "reason": "Spam, not a customer"}
    )
    run = finished(run_id)
    assert run.state.is_completed() and "rejected" in (run.state.message or "")
    review = store.get_review(env.engine, review_id)
    assert review.status == "rejected" and review.decided_at is not None
    assert store.reply_of(env.engine, review_id) is None
    [decision] = store.decisions(env.engine, review_id)
    assert (decision.action, decision.reason) == ("reject", "Spam, not a customer")
    sla = store.sla(env.engine, review_id)
    assert sla["escalated"] and sla["approval_wait_s"] >= 25 * 3600
