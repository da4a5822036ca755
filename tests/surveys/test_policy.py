"""policies/surveys.yaml, validated (aftercare/surveys/policy.py): the shipped file, and every
mistake a shop could make in it refused with the file named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aftercare.errors import ConfigError
from aftercare.settings import PROJECT_ROOT
from aftercare.surveys.policy import load_survey_policy

SHIPPED = PROJECT_ROOT / "policies"


def test_the_shipped_policy_is_versioned_on_the_1_to_5_scale_with_reasons_in_both_languages():
    policy = load_survey_policy(SHIPPED)
    assert policy.version.startswith("surveys-")
    assert (policy.scale, policy.the_scale.scores) == ("csat5", [1, 2, 3, 4, 5])
    assert policy.open_days == 30 and policy.comment_max_chars == 2000
    assert policy.reason_codes[0] == "product_quality" and "other" in policy.reason_codes
    ja, en = policy.reasons_for("ja"), policy.reasons_for("en")
    assert [r["code"] for r in ja] == [r["code"] for r in en] == policy.reason_codes
    assert ja[0]["label"] == "商品の品質" and en[0]["label"] == "Product quality"


def write(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((SHIPPED / "surveys.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    (tmp_path / "surveys.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"scale": "stars"}, "scale"),
        ({"scale": 5}, "scale"),
        ({"open_days": 0}, "open_days"),
        ({"open_days": "forever"}, "open_days"),
        ({"comment_max_chars": 0}, "comment_max_chars"),
        ({"comment_max_chars": 1_000_000}, "comment_max_chars"),
        ({"version": ""}, "version"),
        (
            {"reasons": [{"code": "a", "ja": "あ", "en": "A"}, {"code": "a", "ja": "い", "en": "B"}]},
            "more than once",
        ),
        ({"reasons": [{"code": "quality", "ja": "品質"}]}, "en"),
        ({"reasons": [{"code": "Quality Issues", "ja": "品質", "en": "Quality"}]}, "lower_snake_case"),
        ({"reasons": [{"code": "q", "ja": "品質", "en": "Quality", "fr": "Qualité"}]}, "fr"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_a_mistake_in_the_policy_is_refused_naming_the_file(tmp_path: Path, changes: dict, words: str):
    with pytest.raises(ConfigError) as err:
        load_survey_policy(write(tmp_path, **changes))
    assert "surveys.yaml" in str(err.value) and words in str(err.value)


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing"):
        load_survey_policy(tmp_path)
    (tmp_path / "surveys.yaml").write_text("scale: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_survey_policy(tmp_path)


def test_a_changed_file_is_read_again(tmp_path: Path):
    assert load_survey_policy(write(tmp_path, scale="csat5")).scale == "csat5"
    path = write(tmp_path, scale="nps10", version="surveys-2")
    import os

    st = (path / "surveys.yaml").stat()
    os.utime(path / "surveys.yaml", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_survey_policy(path).scale == "nps10"
