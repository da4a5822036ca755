"""The approval links table (aftercare/reviews/links.py) on SQLite and PostgreSQL: one link per
draft per approver, a token that names its row and nothing else, used once, and one decision per
draft whoever makes it and wherever (the page through a link, or Prefect)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from itsdangerous import URLSafeSerializer
from pydantic import SecretStr
from sqlmodel import Session, select

from aftercare.models import ApprovalLink, utcnow
from aftercare.reviews import links, store
from aftercare.runtime import Runtime
from tasks.reviews import make_draft
from tests.reviews.helpers import add_review
from tests.web.approval_helpers import LEAD, NO_LLM, OWNER

CLIENT = links.Client(ip="203.0.113.9", user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X)")


def draft_of(rt: Runtime, platform_review_id: str = "r-1") -> tuple[int, int]:
    review_id = add_review(rt.engine, status="awaiting_approval", platform_review_id=platform_review_id)
    draft = make_draft(rt, review_id, llm=NO_LLM)
    assert draft.id is not None
    return review_id, draft.id


def issue(rt: Runtime, review_id: int, draft_id: int, approver: str, hours: float = 720) -> ApprovalLink:
    now = utcnow()
    with Session(rt.engine, expire_on_commit=False) as session:
        link = links.issue(
            session,
            review_id=review_id,
            draft_id=draft_id,
            approver=approver,
            expires_at=now + timedelta(hours=hours),
            now=now,
        )
        session.commit()
    return link


def decide(rt: Runtime, link: ApprovalLink, action: str = "reject"):  # type: ignore[no-untyped-def]
    return links.decide(
        rt.engine,
        link,
        action=action,
        text=None,
        instructions=None,
        reason="spam" if action == "reject" else None,
        guardrails=[],
        client=CLIENT,
        now=utcnow(),
    )


def test_one_link_per_draft_and_approver_whatever_asks_again(rt):
    review_id, draft_id = draft_of(rt)
    first = issue(rt, review_id, draft_id, OWNER)
    again = issue(rt, review_id, draft_id, " Owner@Example.com ")  # the same person
    other = issue(rt, review_id, draft_id, LEAD)
    assert again.id == first.id and again.nonce == first.nonce and again.expires_at == first.expires_at
    assert other.nonce != first.nonce and len(first.nonce) >= 32
    assert links.url(rt.settings, first) == links.url(rt.settings, again)
    # The token is signed, not encrypted: it carries no address (a URL ends up in logs and histories).
    _, claims = URLSafeSerializer("anyone can read it").loads_unsafe(links.token(rt.settings, first))
    assert set(claims) == {"r", "d", "a", "n", "exp"} and claims["d"] == draft_id
    assert not any("@" in str(v) or "owner" in str(v).lower() for v in claims.values())
    with Session(rt.engine) as session:
        assert len(session.exec(select(ApprovalLink)).all()) == 2


def test_a_token_reads_back_its_own_link_only(rt):
    review_id, draft_id = draft_of(rt)
    owner, lead = issue(rt, review_id, draft_id, OWNER), issue(rt, review_id, draft_id, LEAD)
    assert links.read(rt.engine, rt.settings, links.token(rt.settings, owner), now=utcnow()).id == owner.id
    assert links.read(rt.engine, rt.settings, links.token(rt.settings, lead), now=utcnow()).id == lead.id
    with pytest.raises(links.LinkExpired):
        links.read(rt.engine, rt.settings, links.token(rt.settings, owner), now=owner.expires_at)
    other_secret = rt.settings.model_copy(update={"approval_secret": SecretStr("another-installation")})
    with pytest.raises(links.LinkInvalid):
        links.read(rt.engine, rt.settings, links.token(other_secret, owner), now=utcnow())


def test_a_link_decides_once_and_the_decision_says_who_when_from_where(rt):
    review_id, draft_id = draft_of(rt)
    link = issue(rt, review_id, draft_id, OWNER)
    decision = decide(rt, link)
    assert decision is not None
    assert (decision.via, decision.link_id, decision.approver, decision.draft_id) == (
        "page",
        link.id,
        OWNER,
        draft_id,
    )
    assert (decision.client_ip, decision.client_agent) == (CLIENT.ip, CLIENT.user_agent)
    assert decide(rt, link, "approve") is None  # used: nothing more is recorded
    [stored] = store.decisions(rt.engine, review_id)
    assert stored.action == "reject" and stored.reason == "spam"
    assert links.state(rt.engine, link).link.used_at == stored.decided_at
    assert store.get_review(rt.engine, review_id).decided_at == stored.decided_at


def test_concurrent_posts_through_one_link_record_one_decision(rt):
    review_id, draft_id = draft_of(rt)
    link = issue(rt, review_id, draft_id, OWNER)
    barrier = threading.Barrier(6)
    results: list[object] = []

    def post() -> None:
        barrier.wait()
        results.append(decide(rt, link))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6 and sum(r is not None for r in results) == 1
    assert len(store.decisions(rt.engine, review_id)) == 1


def test_two_approvers_racing_on_one_draft_leave_one_decision_and_the_loser_link_unused(rt):
    review_id, draft_id = draft_of(rt)
    owner, lead = issue(rt, review_id, draft_id, OWNER), issue(rt, review_id, draft_id, LEAD)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def post(link: ApprovalLink) -> None:
        barrier.wait()
        try:
            outcomes[link.approver] = "decided" if decide(rt, link) is not None else "used"
        except links.AlreadyDecided:
            outcomes[link.approver] = "already decided"

    threads = [threading.Thread(target=post, args=(link,)) for link in (owner, lead)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes.values()) == ["already decided", "decided"]
    [decision] = store.decisions(rt.engine, review_id)
    loser = lead if decision.approver == OWNER else owner
    assert links.state(rt.engine, loser).link.used_at is None  # it decided nothing


def test_prefect_and_the_page_share_one_decision_per_draft(rt):
    review_id, draft_id = draft_of(rt)
    link = issue(rt, review_id, draft_id, OWNER)
    page = decide(rt, link, "reject")
    assert page is not None
    # The run then reads an input sent through Prefect for the same draft: the page's stands.
    second = store.record_decision(
        rt.engine, review_id, approver=LEAD, action="approve", text="x", draft_id=draft_id, via="prefect"
    )
    assert (second.id, second.via, second.approver) == (page.id, "page", OWNER)
    assert len(store.decisions(rt.engine, review_id)) == 1

    # And the other way round: Prefect first, then a link finds the draft decided.
    review_2, draft_2 = draft_of(rt, "r-2")
    store.record_decision(rt.engine, review_2, approver=LEAD, action="reject", reason="r", draft_id=draft_2)
    with pytest.raises(links.AlreadyDecided):
        decide(rt, issue(rt, review_2, draft_2, OWNER))
    assert [d.via for d in store.decisions(rt.engine, review_2)] == ["prefect"]
    with pytest.raises(ValueError, match="via"):
        store.record_decision(rt.engine, review_2, approver=LEAD, action="reject", via="email")


def test_migration_0008_creates_what_the_models_declare(rt):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with rt.engine.connect() as conn:
        diffs = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert [d for d in diffs if "approval_links" in repr(d) or "review_decisions" in repr(d)] == []


def test_migration_0008_goes_down_and_up_again(own_database):
    from alembic import command

    from aftercare.spine.db import alembic_config, make_engine, migrate

    settings = own_database
    migrate(settings)
    engine = make_engine(settings)
    try:
        command.downgrade(alembic_config(settings), "0006")
        inspector = sa.inspect(engine)
        assert "approval_links" not in inspector.get_table_names()
        assert "via" not in {c["name"] for c in inspector.get_columns("review_decisions")}
        migrate(settings)
        assert "approval_links" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
