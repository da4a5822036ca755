"""A review waiting for approval with its approvers' links issued and mailed (through the real
notify code), a policies directory of the test's own, and a resumer that records what it was asked."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

from aftercare.models import ApprovalLink
from aftercare.rendering import Renderer
from aftercare.reviews import intake, links, notify, store
from aftercare.reviews.approval import guarded_from_stored
from aftercare.reviews.settings import LLMSettings
from aftercare.runtime import Runtime
from aftercare.settings import PROJECT_ROOT, Settings
from tasks.reviews import make_draft
from tests.reviews.helpers import add_review

OWNER, LEAD = "owner@example.com", "support-lead@example.com"
RUN_ID = "0b7e3f4e-5f6a-4c7d-8e9f-0a1b2c3d4e5f"
NO_LLM = LLMSettings(_env_file=None, base_url="", model="")


def own_policies(tmp_path: Path, **approval: Any) -> Path:
    """A copy of the project's policies with the approval section updated."""
    target = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", target)
    path = target / "reviews.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["approval"].update({"approvers": [OWNER, LEAD], "locale": "en", **approval})
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return target


def page_settings(
    settings: Settings, tmp_path: Path, base_url: str = "http://testserver", **approval: Any
) -> Settings:
    return settings.model_copy(
        update={"policies_dir": own_policies(tmp_path, **approval), "web_base_url": base_url}
    )


def ask_approvers(rt: Runtime, settings: Settings, review_id: int, draft_id: int) -> dict[str, str]:
    """notify_approval_request as the flow calls it: links issued, one mail per approver. Returns
    each approver's page URL (as in their mail)."""
    policy = intake.reviews_policy(settings.policies_dir)
    review = store.get_review(rt.engine, review_id)
    draft = next(d for d in store.drafts(rt.engine, review_id) if d.id == draft_id)
    notify.notify_approval_request(
        rt.engine,
        settings,
        Renderer(settings.templates_dir),
        policy,
        review,
        draft_id=draft_id,
        guarded=guarded_from_stored(draft, policy.version),
        flow_run_id=review.flow_run_id,
    )
    return {a: url_of(rt, settings, draft_id, a) for a in policy.approval.approvers}


def url_of(rt: Runtime, settings: Settings, draft_id: int, approver: str) -> str:
    link = links.link_for(rt.engine, draft_id, approver)
    assert link is not None, f"no link for {approver} on draft {draft_id}"
    return links.url(settings, link)


def waiting_review(rt: Runtime, settings: Settings, **fields: Any) -> tuple[int, int, dict[str, str]]:
    """A negative review with a template draft, awaiting approval, its approvers mailed."""
    review_id = add_review(rt.engine, flow_run_id=RUN_ID, **fields)
    draft = make_draft(rt, review_id, llm=NO_LLM)
    assert draft.id is not None
    return review_id, draft.id, ask_approvers(rt, settings, review_id, draft.id)


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form token"
    return found.group(1)


def link_row(rt: Runtime, draft_id: int, approver: str) -> ApprovalLink:
    link = links.link_for(rt.engine, draft_id, approver)
    assert link is not None
    return link


@dataclass
class RecordingResumer:
    """Stands in for Prefect's resume (the flow tests resume real runs): records each call."""

    answer: str = "resumed"
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def resume(self, flow_run_id: str, run_input: dict[str, Any]) -> str:
        self.calls.append((flow_run_id, dict(run_input)))
        return self.answer


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def named(self, name: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == name]


class Served:
    """The app served by uvicorn on a loopback socket of its own, in a thread (as `make up` serves
    it, minus the process): for real browsers and truly concurrent clients."""

    def __init__(self, app: Any, sock: socket.socket | None = None):
        import uvicorn

        self.sock = sock or loopback_socket()
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def loopback_socket() -> socket.socket:
    """A listening-ready socket on 127.0.0.1 with a free port (bound now, so the URL is known
    before the server starts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock
