"""`policies/surveys.yaml`, validated: the scale (1-5 CSAT or 0-10 NPS), how long a survey stays
open, the reasons offered beside the score in each language, and the longest comment taken."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aftercare.policies import load_policy_file

LANGUAGES = ("ja", "en")
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Scale:
    """A score scale: its stored name, lowest and highest score, and what counts as good."""

    name: str
    low: int
    high: int

    @property
    def scores(self) -> list[int]:
        return list(range(self.low, self.high + 1))

    def holds(self, score: int) -> bool:
        return self.low <= score <= self.high


SCALES = {"csat5": Scale("csat5", 1, 5), "nps10": Scale("nps10", 0, 10)}
ScaleName = Literal["csat5", "nps10"]


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str
    ja: str = Field(min_length=1, max_length=60)
    en: str = Field(min_length=1, max_length=60)

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not _CODE.match(v):
            raise ValueError(f"reason code {v!r}: lower_snake_case, at most 32 characters")
        return v

    def label(self, locale: str) -> str:
        return self.en if locale == "en" else self.ja


class SurveyPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str = Field(min_length=1, max_length=32)
    scale: ScaleName = "csat5"
    open_days: int = Field(default=30, ge=1, le=365)
    comment_max_chars: int = Field(default=2000, ge=1, le=10_000)
    reasons: list[Reason] = Field(default_factory=list, max_length=20)

    @field_validator("reasons")
    @classmethod
    def _unique(cls, v: list[Reason]) -> list[Reason]:
        codes = [r.code for r in v]
        twice = sorted({c for c in codes if codes.count(c) > 1})
        if twice:
            raise ValueError(f"reason codes {twice} are listed more than once")
        return v

    @property
    def the_scale(self) -> Scale:
        return SCALES[self.scale]

    @property
    def reason_codes(self) -> list[str]:
        return [r.code for r in self.reasons]

    def reasons_for(self, locale: str) -> list[dict[str, str]]:
        """[{code, label}] in the reader's language, in the policy's order."""
        return [{"code": r.code, "label": r.label(locale)} for r in self.reasons]


_cache: dict[Path, tuple[tuple[int, int], SurveyPolicy]] = {}


def load_survey_policy(policies_dir: Path) -> SurveyPolicy:
    """Read and validate `<policies_dir>/surveys.yaml` (a ConfigError naming the file otherwise);
    read again only when the file changes, so the survey page can ask on every request."""
    path = policies_dir / "surveys.yaml"
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (-1, -1)  # missing: load_policy_file says so
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    policy = load_policy_file(path, SurveyPolicy)
    _cache[path] = (stamp, policy)
    return policy
