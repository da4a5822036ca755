"""Fixtures for review triage, drafting and guardrails: the project's reviews policy, a fake
OpenAI-compatible server on loopback, and LLM settings pointing at it (built here, passed in)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aftercare.reviews.drafting import TemplateDrafter, build_drafter
from aftercare.reviews.policy import ReviewsPolicy, load_reviews_policy
from aftercare.reviews.settings import LLMSettings
from aftercare.settings import PROJECT_ROOT
from tests.reviews.fake_openai import API_KEY, FakeOpenAI

TEMPLATES_DIR = PROJECT_ROOT / "templates"


@pytest.fixture(scope="session")
def policy() -> ReviewsPolicy:
    return load_reviews_policy(PROJECT_ROOT / "policies")


@pytest.fixture
def fake_llm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake
        assert fake.violations == [], f"requests the SDK sent broke the expected shape: {fake.violations}"


@pytest.fixture
def llm_settings(fake_llm: FakeOpenAI) -> LLMSettings:
    # Short timeout and one SDK retry keep the failure-mode tests to about a second each.
    return LLMSettings(
        _env_file=None,
        base_url=fake_llm.base_url,
        model="fake-model",
        api_key=API_KEY,
        timeout_s=0.5,
        max_retries=1,
        output_attempts=2,
    )


@pytest.fixture
def drafter(llm_settings: LLMSettings, policy: ReviewsPolicy):  # type: ignore[no-untyped-def]
    return build_drafter(llm_settings, policy, templates_dir=TEMPLATES_DIR)


@pytest.fixture
def template_drafter(policy: ReviewsPolicy) -> TemplateDrafter:
    return TemplateDrafter(policy, TEMPLATES_DIR)
