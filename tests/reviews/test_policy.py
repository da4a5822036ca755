"""policies/reviews.yaml: the shipped file is valid, and a broken one is a ConfigError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aftercare.errors import ConfigError
from aftercare.reviews.policy import BANNED_KINDS, ReviewsPolicy, load_reviews_policy


def test_shipped_policy_is_versioned_and_complete(policy: ReviewsPolicy):
    assert policy.version.startswith("reviews-")
    assert set(policy.reply.length) == {"ja", "en"}
    for kind in BANNED_KINDS:
        lists = getattr(policy.reply.banned, kind)
        assert lists.ja and lists.en, f"banned.{kind} needs ja and en phrases"
    assert policy.reply.support_contacts.emails


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("version: x\nreply: {length: {ja: {min: 5, max: 1}}}\n", "is invalid"),
        ("version: x\nreply: [\n", "not valid YAML"),
        ("version: x\ntriage: {negative_rating_at_or_below: 9}\n", "is invalid"),
        ("version: x\nsurprise: 1\n", "is invalid"),
    ],
)
def test_broken_policy_is_a_config_error(tmp_path: Path, yaml_text: str, message: str):
    (tmp_path / "reviews.yaml").write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_reviews_policy(tmp_path)


def test_missing_policy_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing"):
        load_reviews_policy(tmp_path)
