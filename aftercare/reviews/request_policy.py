"""`policies/review_requests.yaml`, validated: where the customer writes (own form, Google,
Trustpilot), the one reminder, the per-product memory, what is not a reviewable product, and whose
addresses are staff. Nothing in it can look at a score, a rating or a complaint: there is no field
for one (see the file's own header)."""

from __future__ import annotations

import re
import unicodedata
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aftercare.policies import load_policy_file

Destination = Literal["own", "google", "trustpilot"]
_PLACE_ID = re.compile(r"^[A-Za-z0-9_\-]{10,300}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)+$"
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def fold(text: str | None) -> str:
    """How names are compared: NFKC (full-width letters as ASCII), case folded, spaces trimmed."""
    return unicodedata.normalize("NFKC", text or "").casefold().strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reminder(_Strict):
    enabled: bool = True
    days_after_request: int = Field(default=7, ge=1, le=60)


class Exclusions(_Strict):
    skus: list[str] = Field(default_factory=list, max_length=200)
    titles: list[str] = Field(default_factory=list, max_length=200)
    product_types: list[str] = Field(default_factory=list, max_length=200)
    gift_cards: bool = True
    not_shipped: bool = True

    @field_validator("skus", "titles", "product_types")
    @classmethod
    def _no_blank(cls, v: list[str]) -> list[str]:
        if any(not fold(p) or fold(p).strip("*?") == "" for p in v):
            raise ValueError("a pattern must name something (not empty, not only * or ?)")
        return v

    def why_excluded(
        self, *, sku: str | None, title: str | None, product_type: str | None, gift_card: bool, shipped: bool
    ) -> str | None:
        """Why a line is not a product to ask about (the pattern that matched), or None."""
        if self.gift_cards and gift_card:
            return "a gift card"
        if self.not_shipped and not shipped:
            return "needs no shipping (a digital add-on or a service)"
        for what, value, patterns in (
            ("SKU", sku, self.skus),
            ("title", title, self.titles),
            ("product type", product_type, self.product_types),
        ):
            folded = fold(value)
            if not folded:
                continue
            for pattern in patterns:
                if fnmatchcase(folded, fold(pattern)):
                    return f"{what} {value!r} matches {pattern!r}"
        return None


class Staff(_Strict):
    domains: list[str] = Field(default_factory=list, max_length=100)
    addresses: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = [d.strip().lower().lstrip("@") for d in v]
        bad = [d for d in out if not _DOMAIN.match(d)]
        if bad:
            raise ValueError(f"staff.domains: {bad!r} are not domain names")
        return out

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        out = [a.strip().lower() for a in v]
        bad = [a for a in out if not _EMAIL.match(a)]
        if bad:
            raise ValueError(f"staff.addresses: {bad!r} are not email addresses")
        return out

    def is_staff(self, email: str | None) -> bool:
        """Whether an address is the shop's own: listed, or at a staff domain or one of its subdomains."""
        address = fold(email)
        if not address or "@" not in address:
            return False
        if address in self.addresses:
            return True
        domain = address.rsplit("@", 1)[1].rstrip(".")
        return any(domain == d or domain.endswith("." + d) for d in self.domains)


class Google(_Strict):
    place_id: str = ""

    @field_validator("place_id")
    @classmethod
    def _place_id(cls, v: str) -> str:
        v = v.strip()
        if v and not _PLACE_ID.match(v):
            raise ValueError(f"google.place_id {v!r} is not a Google Place ID")
        return v


class TrustpilotInvitations(_Strict):
    template_id: str = Field(default="", max_length=64)
    sender_name: str = Field(default="", max_length=100)
    sender_email: str = Field(default="", max_length=320)
    reply_to: str = Field(default="", max_length=320)
    redirect_uri: str = Field(default="", max_length=2000)
    locales: dict[Literal["ja", "en"], str] = Field(default_factory=lambda: {"ja": "ja-JP", "en": "en-US"})

    @field_validator("sender_email", "reply_to")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v and not _EMAIL.match(v):
            raise ValueError(f"{v!r} is not an email address")
        return v

    @field_validator("redirect_uri")
    @classmethod
    def _https(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("trustpilot.redirect_uri must be an http(s) URL")
        return v

    def locale(self, lang: str) -> str:
        return self.locales.get(lang) or self.locales.get("en") or "en-US"  # type: ignore[call-overload]


class ReviewRequestPolicy(_Strict):
    version: str = Field(min_length=1, max_length=32)
    destination: Destination = "own"
    form_link_valid_days: int = Field(default=60, ge=1, le=400)
    reminder: Reminder = Field(default_factory=Reminder)
    product_memory_months: int = Field(default=12, ge=0, le=60)
    max_products_listed: int = Field(default=10, ge=1, le=50)
    exclude: Exclusions = Field(default_factory=Exclusions)
    staff: Staff = Field(default_factory=Staff)
    google: Google = Field(default_factory=Google)
    trustpilot: TrustpilotInvitations = Field(default_factory=TrustpilotInvitations)

    @model_validator(mode="after")
    def _destination_complete(self) -> ReviewRequestPolicy:
        if self.destination == "google" and not self.google.place_id:
            raise ValueError("destination google needs google.place_id")
        if self.destination == "trustpilot":
            missing = [
                name
                for name in ("template_id", "sender_email", "reply_to")
                if not getattr(self.trustpilot, name)
            ]
            if missing:
                raise ValueError(f"destination trustpilot needs trustpilot.{', trustpilot.'.join(missing)}")
        return self

    @property
    def memory_days(self) -> int:
        """The per-product memory in days (a month counted as 365/12 days, rounded up)."""
        return -(-self.product_memory_months * 365 // 12)

    def mails(self) -> bool:
        """Whether we write the request ourselves (own form, Google) or a platform does (Trustpilot)."""
        return self.destination != "trustpilot"


_cache: dict[Path, tuple[tuple[int, int], ReviewRequestPolicy]] = {}


def load_review_request_policy(policies_dir: Path) -> ReviewRequestPolicy:
    """Read and validate `<policies_dir>/review_requests.yaml` (a ConfigError naming the file
    otherwise); read again only when the file changes."""
    path = policies_dir / "review_requests.yaml"
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (-1, -1)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    policy = load_policy_file(path, ReviewRequestPolicy)
    _cache[path] = (stamp, policy)
    return policy
