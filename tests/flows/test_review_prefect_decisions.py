"""A decision sent through Prefect (its form or its API) names an approver from the policy's list,
or it is refused: the run keeps waiting with the refusal shown in a fresh form, nothing is decided
and nothing is published. Prefect's basic auth is one shared login, so the approver field is a
claim; it must at least be one of the listed addresses, and not something that looks like one.

The run is real: served by a Runner in a thread against the session's test server (as in
test_review_approval.py), resumed with `resume_flow_run(..., run_input=...)` or the REST endpoint.
Every hostile value asks to *approve* a draft that passed its checks, so the approver check is the
only thing between it and a published reply."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
import yaml
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL

from aftercare.reviews import store
from aftercare.reviews.approval import DecisionForm, DecisionRefused, Resolution, resolve_decision
from aftercare.reviews.guardrails import GuardedDraft, GuardrailContext, check
from aftercare.reviews.models import Draft, DraftReply
from aftercare.reviews.policy import ApprovalPolicy, load_reviews_policy
from aftercare.runtime import Runtime, use_runtime
from aftercare.settings import PROJECT_ROOT, Settings
from aftercare.spine.db import migrate
from tests.flows.test_review_approval import (
    BackgroundRunner,
    finished,
    form_text,
    read_run,
    sweep_until_started,
    waiting,
)
from tests.reviews.factories import CUSTOMER, make_request
from tests.reviews.fake_openai import API_KEY, FakeOpenAI
from tests.reviews.helpers import EN_COMPLAINT, add_review

OWNER, KANRI, MANAGER = "owner@example.com", "kanri@example.com", "manager@example.com"
DRAFT = (
    "Thank you for your review. We are sorry it did not meet your expectations, and we have shared "
    "your feedback with our team."
)
RUNS = ("a", "b", "c")
# Names that are not a listed approver, though each looks like one or is blank. All of them are
# refused by the decision logic; the first six also go through the real flow (each round resumes the
# three runs at once, so their subprocesses overlap).
HOSTILE = [
    "",
    "Owner <owner@example.com>",  # a listed address with a display name
    "\u212aanri@example.com",  # KELVIN SIGN: str.lower() makes it an ASCII k
    "owner@example.com\u200b",  # zero-width space: not whitespace, not stripped
    "ｏｗｎｅｒ＠ｅｘａｍｐｌｅ．ｃｏｍ",  # full-width (an IME's)
    "\u043ewner@example.com",  # Cyrillic о
    " \t\u3000 ",  # whitespace only (the last an ideographic space)
    "owner @example.com",
    "owner@example.com\nmallory@example.com",
    "owner@example.com.attacker.test",
    "mailto:owner@example.com",
    '"owner"@example.com',
    MANAGER,  # the escalation contact is told, but does not approve
]
ROUNDS = [dict(zip(RUNS, HOSTILE[:3], strict=True)), dict(zip(RUNS, HOSTILE[3:6], strict=True))]
# The same person: surrounding whitespace (an IME's ideographic space too) and ASCII case only.
SAME = {
    OWNER: OWNER,
    " Owner@Example.COM ": OWNER,
    "KANRI@EXAMPLE.COM\u3000": KANRI,
    "\tkanri@example.com\n": KANRI,
}


def _reply(_body: dict[str, Any]) -> dict[str, Any]:
    return {
        "reply_text": DRAFT,
        "language": "en",
        "apologises": True,
        "promised_actions": [],
        "risk_notes": [],
    }


@dataclass
class Shop:
    rt: Runtime
    runs: dict[str, tuple[int, str]]  # name -> (review id, flow run id)


@pytest.fixture(scope="module")
def shop(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("review-prefect-decisions")
    url = f"sqlite:///{root / 'aftercare.db'}"
    migrate(Settings(database_url=url))
    policies = root / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    data = yaml.safe_load((policies / "reviews.yaml").read_text(encoding="utf-8"))
    data["approval"].update(
        approvers=[OWNER, KANRI], escalation_contact=MANAGER, locale="en", slack_webhook_url=None
    )
    (policies / "reviews.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with FakeOpenAI(_reply) as llm, pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AFTERCARE_ENVIRONMENT": "test",
            "AFTERCARE_DATABASE_URL": url,
            "AFTERCARE_VAR_DIR": str(root / "var"),
            "AFTERCARE_POLICIES_DIR": str(policies),
            "AFTERCARE_WAKE_PREFECT": "false",
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
                ids = {run: add_review(rt.engine, platform_review_id=f"hostile-{run}") for run in RUNS}
                sweep_until_started(ids.values())
                yield Shop(
                    rt=rt,
                    runs={run: (ids[run], store.get_review(rt.engine, ids[run]).flow_run_id) for run in RUNS},
                )
        finally:
            rt.engine.dispose()


def nothing_decided(shop: Shop, run: str) -> None:
    review_id, run_id = shop.runs[run]
    assert store.decisions(shop.rt.engine, review_id) == []
    assert store.reply_of(shop.rt.engine, review_id) is None
    assert store.get_review(shop.rt.engine, review_id).status == "awaiting_approval"
    assert read_run(run_id).state.is_paused()


@pytest.fixture(scope="module")
def approve_as() -> Callable[[str], Resolution]:
    """An approval of a draft that passed every check, decided as the flow decides it."""
    shipped = load_reviews_policy(PROJECT_ROOT / "policies")
    policy = shipped.model_copy(update={"approval": ApprovalPolicy(approvers=[OWNER, KANRI])})
    ctx = GuardrailContext(
        request=make_request(policy, EN_COMPLAINT, rating=1), policy=policy, private=CUSTOMER
    )
    draft = Draft(reply=DraftReply(**_reply({})), source="llm", policy_version=policy.version)
    guarded = GuardedDraft(draft=draft, checks=check(draft, ctx), needs_attention=False, attempts=[])
    assert guarded.publishable

    def approve(approver: str) -> Resolution:
        form = DecisionForm(approver=approver, action="approve")
        return resolve_decision(form, draft_id=1, guarded=guarded, approval=policy.approval, context=ctx)

    return approve


@pytest.mark.parametrize("value", HOSTILE)
def test_a_name_that_only_looks_like_a_listed_approver_is_refused(
    approve_as: Callable[[str], Resolution], value: str
):
    with pytest.raises(DecisionRefused, match="approver is empty|is not an approver"):
        approve_as(value)


@pytest.mark.parametrize("value", sorted(SAME))
def test_the_listed_address_with_ascii_case_or_surrounding_spaces_is_the_approver(
    approve_as: Callable[[str], Resolution], value: str
):
    assert approve_as(value).approver == SAME[value]


def test_a_prefect_resume_with_an_unknown_approver_keeps_waiting_and_publishes_nothing(shop: Shop):
    drafts = {}
    for run, (review_id, run_id) in shop.runs.items():
        waiting(run_id, forms=1)
        draft = store.latest_draft(shop.rt.engine, review_id)
        assert draft.text == DRAFT and not draft.needs_attention  # approvable: only the approver stops it
        drafts[run] = draft.id

    # Input Prefect's schema refuses never reaches the run: HTTP 200 with status REJECT.
    _, run_a = shop.runs["a"]
    for value in (None, 123, [OWNER], {"email": OWNER}, "o" * 310 + "@example.com"):
        response = httpx.post(
            f"{PREFECT_API_URL.value()}/flow_runs/{run_a}/resume",
            json={"run_input": {"approver": value, "action": "approve"}},
            timeout=10,
        )
        assert response.status_code == 200 and response.json()["status"] == "REJECT", (value, response.text)
    assert len(read_run(run_a).empirical_policy.pause_keys or ()) == 1

    for n, hostile in enumerate(ROUNDS, start=1):
        for run, value in hostile.items():
            resume_flow_run(UUID(shop.runs[run][1]), run_input={"approver": value, "action": "approve"})
        for run, value in hostile.items():
            review_id, run_id = shop.runs[run]
            waiting(run_id, forms=n + 1)  # a fresh form: the run waits again
            form = form_text(run_id, drafts[run], n)
            why = "approver is empty" if not value.strip() else "is not an approver"
            assert "Your last decision was not applied" in form and why in form, (value, form)
            nothing_decided(shop, run)

    # The listed address itself, in capitals between spaces (an IME's ideographic one too), is the
    # approver: recorded as listed, and the reply is published once.
    review_id, run_id = shop.runs["a"]
    resume_flow_run(UUID(run_id), run_input={"approver": " OWNER@Example.COM\u3000", "action": "approve"})
    run = finished(run_id)
    assert run.state.is_completed(), run.state.message
    [decision] = store.decisions(shop.rt.engine, review_id)
    assert (decision.approver, decision.action, decision.draft_id) == (OWNER, "approve", drafts["a"])
    reply = store.reply_of(shop.rt.engine, review_id)
    assert (reply.status, reply.text, reply.approved_by) == ("published", DRAFT, OWNER)
    for run in ("b", "c"):
        nothing_decided(shop, run)
