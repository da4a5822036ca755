"""What a customer's email address is to us, and how a person's name is made safe for a header or a
template. An address's syntax never costs us an order: it is judged here, not at parsing.

The line between "attempt, and let the provider judge" and "not an address":

- **not an address** (kept on the order, flagged `email_not_an_address`, no mail attempted, the
  touchpoint skipped with the reason): longer than 254 characters (RFC 5321's limit on a path; a
  longer value cannot be delivered anywhere), no `@` or more than one, nothing before or after the
  `@`, or any whitespace, control or format character, or a character that separates or groups
  addresses in a header (`,;<>()[]":\\`). Such a value could not be written into a To header as one
  mailbox, or would be read there as something else (two addresses, a display name, a new line).
- **unusual** (kept exactly as written, flagged `email_unusual_syntax`, a send attempted): one plain
  mailbox that email-validator refuses, such as the legacy Japanese carrier addresses
  `taro..yamada@docomo.ne.jp` and `taro.@ezweb.ne.jp`. The provider decides; its refusal fails that
  one message with its reason.
- **ok**: everything email-validator accepts (its syntax check only; no DNS).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from email_validator import EmailNotValidError, validate_email

FLAG_EMAIL_UNUSUAL = "email_unusual_syntax"
FLAG_EMAIL_NOT_ADDRESS = "email_not_an_address"

MAX_ADDRESS = 254  # RFC 5321: a path is at most 256 octets including its angle brackets
STORED_MAX = 320  # the email columns' width: a longer value is cut to it (it is not an address anyway)
_HEADER_SYNTAX = set(',;<>()[]":\\')
# Control, format, line and paragraph separators, surrogates: nothing a name or an address needs.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SPACES = re.compile(" {2,}")


class AddressKind(StrEnum):
    OK = "ok"
    UNUSUAL = "unusual"
    NOT_AN_ADDRESS = "not_an_address"


@dataclass(frozen=True)
class Verdict:
    kind: AddressKind
    reason: str | None = None  # why it is unusual or not an address

    @property
    def sendable(self) -> bool:
        """Whether a send is attempted (the provider judges an unusual address)."""
        return self.kind != AddressKind.NOT_AN_ADDRESS

    @property
    def flag(self) -> str | None:
        return {
            AddressKind.UNUSUAL: FLAG_EMAIL_UNUSUAL,
            AddressKind.NOT_AN_ADDRESS: FLAG_EMAIL_NOT_ADDRESS,
        }.get(self.kind)


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES


def judge(address: str) -> Verdict:
    """Sort an address (as written, trimmed) into ok, unusual (attempted) or not an address (not
    attempted); the module docstring draws the line."""
    if len(address) > MAX_ADDRESS:
        return Verdict(AddressKind.NOT_AN_ADDRESS, f"longer than {MAX_ADDRESS} characters")
    bad = sorted({f"U+{ord(c):04X}" for c in address if _unsafe(c) or c.isspace()})
    if bad:
        return Verdict(
            AddressKind.NOT_AN_ADDRESS, f"contains whitespace or control characters ({', '.join(bad)})"
        )
    syntax = sorted({c for c in address if c in _HEADER_SYNTAX})
    if syntax:
        shown = " ".join(repr(c) for c in syntax)
        return Verdict(AddressKind.NOT_AN_ADDRESS, f"contains {shown}, which a mail header reads as syntax")
    if address.count("@") != 1:
        return Verdict(AddressKind.NOT_AN_ADDRESS, "no @" if "@" not in address else "more than one @")
    local, domain = address.split("@")
    if not local or not domain:
        return Verdict(
            AddressKind.NOT_AN_ADDRESS, "nothing before the @" if not local else "nothing after the @"
        )
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return Verdict(AddressKind.UNUSUAL, str(exc))
    return Verdict(AddressKind.OK)


def as_written(value: object) -> str | None:
    """An email field of a payload as we keep it: text trimmed (nothing else changed), None when
    blank. A value that is not text becomes its text; judging it is `judge`'s job, not parsing's."""
    if value is None:
        return None
    text = (value if isinstance(value, str) else str(value)).strip()
    return text or None


def stored(address: str | None) -> str | None:
    """The address as the order keeps it: as written, cut to the column's width only when it is far
    too long to be an address (judging the cut value gives the same verdict)."""
    return address[:STORED_MAX] if address is not None else None


def customer_key(address: str | None) -> str | None:
    """What recognises a customer across orders: the lower-cased address, for an address a send is
    attempted to. Not for a value that is not an address: guests who typed `none` are not one person."""
    if not address or not judge(address).sendable:
        return None
    return address.strip().lower()


def clean_name(value: object) -> str | None:
    """A person's name as it may meet a mail header or a template: control, format and line-separator
    characters (CR, LF, tab, NUL, U+2028, zero-width, ...) become spaces, runs of spaces one space
    (an ideographic space between family and given name is kept). The one helper for every name we
    render or put in a From/To header; None when nothing is left."""
    if value is None:
        return None
    text = "".join(" " if _unsafe(c) else c for c in str(value))
    return _SPACES.sub(" ", text).strip(" ") or None


def with_clean_names(address: dict[str, Any] | None) -> dict[str, Any]:
    """A postal address for a template: the people's names in it cleaned by `clean_name`."""
    if not address:
        return {}
    names = ("name", "first_name", "last_name", "company")
    return {**address, **{k: clean_name(address.get(k)) for k in names if k in address}}
