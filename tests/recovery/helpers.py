"""A survey answered through the real page of the real app (the answer's transaction opens the
case), and a case's apology drafted, its approvers asked and decided as the review-reply flow does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from aftercare.models import RecoveryCase, Review
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.web.app import create_app
from aftercare.web.wake import NoWaker
from tests.surveys.helpers import Survey
from tests.web.approval_helpers import RecordingResumer, page_settings


def app_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The test's own copy of the policies (approvers named), the app at http://testserver."""
    return page_settings(settings, tmp_path)


def client_for(settings: Settings, resumer: RecordingResumer | None = None) -> TestClient:
    return TestClient(create_app(settings, waker=NoWaker(), resumer=resumer or RecordingResumer()))


def answer(client: TestClient, survey: Survey, score: int | str, comment: str = "", **more: Any) -> int:
    """Post the survey's form as the page does; the HTTP status."""
    data: dict[str, Any] = {"score": str(score), "comment": comment, **more}
    response = client.post(survey.path(), data=data, follow_redirects=False)
    return response.status_code


def cases(rt: Runtime) -> list[RecoveryCase]:
    with Session(rt.engine) as s:
        return list(s.exec(select(RecoveryCase).order_by(RecoveryCase.id)))  # type: ignore[arg-type]


def reply_row(rt: Runtime, case: RecoveryCase) -> Review:
    with Session(rt.engine) as s:
        review = s.get(Review, case.review_id)
    assert review is not None
    return review
