"""The shop as a feedback mail must present it (policies/shop.yaml): name, sender, postal address
and a contact, in the mail's language. Read by every composer of a non-transactional mail and shown
by the footer templates (templates/<lang>/_feedback_footer.{txt,html})."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aftercare.policies import load_policy_file


class Localized(BaseModel):
    # Stripped before the length check: a blank sender or address is refused, not shown as nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    ja: str = Field(min_length=1, max_length=300)
    en: str = Field(min_length=1, max_length=300)

    def in_(self, locale: str) -> str:
        return self.en if locale == "en" else self.ja


class ShopPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    version: str = Field(min_length=1, max_length=32)
    name: Localized
    sender: Localized
    postal_address: Localized
    contact_email: str = Field(min_length=3, max_length=320)
    contact_phone: str | None = Field(default=None, max_length=40)

    @field_validator("contact_email")
    @classmethod
    def _an_address(cls, v: str) -> str:
        if "@" not in v or any(c.isspace() for c in v):
            raise ValueError("contact_email must be one email address")
        return v

    def for_locale(self, locale: str) -> dict[str, str | None]:
        """What the footer templates read, in the mail's language."""
        return {
            "name": self.name.in_(locale),
            "sender": self.sender.in_(locale),
            "postal_address": self.postal_address.in_(locale),
            "contact_email": self.contact_email,
            "contact_phone": self.contact_phone,
        }


def load_shop_policy(policies_dir: Path) -> ShopPolicy:
    return load_policy_file(policies_dir / "shop.yaml", ShopPolicy)
