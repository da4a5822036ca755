"""Phone numbers and email addresses in a review, masked for our public page.

A reviewer sometimes writes their own number or address into a review ("call me on 090-1234-5678").
The page is public and crawled, so those are shown masked: `090-****-5678`, `t***@e***.com`. It is
for display only: the stored review keeps what the reviewer wrote (approvers and the reply need it).

What counts as a phone number, decided so that the numbers a review usually holds stay readable
(order numbers, prices, dates, postal codes, tracking and product codes):
- Japanese: 10 digits starting with 0 (not 00), or 11 digits starting 020/050/060/070/080/090
  (mobiles, IP phones, 0800), written with or without hyphens, dots, spaces or parentheses
  (`03(1234)5678`), in full-width digits and with any dash a Japanese IME produces (－ ー ‐ − …).
  An order number in that shape ("注文番号 0312345678") is masked too: a missed phone number costs
  more than a masked order number.
- International: `+` and 8 to 15 digits (E.164); with +81, the national number has 9 or 10 digits
  (`+81 90-1234-5678`, `+81(0)3-1234-5678`).
- North American with separators: `(415) 555-0100`, `415-555-0100`.
- A run glued to letters or more digits (`A0312345678`, `090-1234-5678-9`) or after `#` is not one.

Email addresses: `local@domain.tld`, also with a full-width `＠`/`．`, `[at]`/`(at)`/`アットマーク`
and `[dot]`/`ドット`. Zero-width and other invisible characters inside either are ignored, so they
cannot be used to slip a number past the mask.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from aftercare.reviews.text import is_invisible

# Dashes a Japanese IME (or a word processor) puts between digits, after NFKC.
_DASHES = frozenset("‐‑‒–—―−ー﹣")
_SEP = r"(?:[ \t]?[-.][ \t]?|[ \t])"
# Not inside a longer number or code, nor after "#" (an order number); "TEL.03-..." is a phone.
_BEFORE = r"(?<![0-9#+])(?<![0-9][-.])"
_AFTER = r"(?![0-9])(?![-.][0-9])"
_NATIONAL = re.compile(
    rf"{_BEFORE}\(?0[0-9]{{1,4}}(?:\)[ \t]?|{_SEP})?\(?[0-9]{{1,4}}(?:\)[ \t]?|{_SEP})?[0-9]{{3,4}}{_AFTER}"
)
_INTERNATIONAL = re.compile(
    rf"{_BEFORE}\+[ \t]?[1-9][0-9]{{0,3}}{_SEP}?(?:\(0\)[ \t]?)?\(?[0-9]{{1,4}}(?:\)[ \t]?|{_SEP})?"
    rf"[0-9]{{1,4}}(?:{_SEP}?[0-9]{{1,4}}){{1,2}}{_AFTER}"
)
_NANP = re.compile(
    rf"{_BEFORE}(?:\([2-9][0-9]{{2}}\)[ \t]?|[2-9][0-9]{{2}}{_SEP})[2-9][0-9]{{2}}{_SEP}[0-9]{{4}}{_AFTER}"
)
# "ー" in アットマーク reads as "-" here: the shadow text turns every long-vowel mark into a dash.
_AT = r"(?:[ \t]*@[ \t]*|[ \t]*[\[(][ \t]*at[ \t]*[\])][ \t]*|[ \t]*(?:アットマ-ク|あっとま-く)[ \t]*)"
_DOT = r"(?:\.|[ \t]*[\[(][ \t]*dot[ \t]*[\])][ \t]*|[ \t]*ドット[ \t]*)"
_EMAIL = re.compile(
    rf"(?<![A-Za-z0-9._%+\-])(?P<local>[A-Za-z0-9][A-Za-z0-9._%+\-]{{0,63}}){_AT}"
    rf"(?P<domain>(?:[A-Za-z0-9][A-Za-z0-9\-]{{0,62}}{_DOT}){{1,8}}[A-Za-z][A-Za-z0-9\-]{{0,62}})"
    r"(?![A-Za-z0-9\-])",
    re.IGNORECASE,
)
_DOT_SPLIT = re.compile(_DOT, re.IGNORECASE)
_MIN_MASKED = 4
_TAIL = 4


@dataclass(frozen=True)
class _Shadow:
    """The text as the patterns read it: each character NFKC-folded when that keeps it one
    character (full-width digits, letters, ＠ and parentheses become ASCII), dashes as "-", invisible
    characters left out; `pos[i]` is the index in the original text of shadow character i."""

    text: str
    pos: list[int]


def _shadow(text: str) -> _Shadow:
    chars: list[str] = []
    pos: list[int] = []
    for i, ch in enumerate(text):
        if is_invisible(ch):
            continue
        folded = unicodedata.normalize("NFKC", ch)
        if len(folded) != 1:
            folded = ch
        chars.append("-" if folded in _DASHES else folded)
        pos.append(i)
    return _Shadow("".join(chars), pos)


def _digit_groups(s: str) -> list[str]:
    return re.findall(r"[0-9]+", s)


def _phone_keep(span: str) -> tuple[int, int] | None:
    """(leading digits shown, trailing digits shown) when `span` is a phone number, else None."""
    groups = _digit_groups(span)
    digits = "".join(groups)
    n = len(digits)
    if span.lstrip().startswith("+"):
        if digits.startswith("81"):
            national = digits[2:]
            trunk = len(groups) > 1 and groups[0] == "81" and groups[1] == "0" and "(0)" in span
            if trunk:
                national = national[1:]
            if len(national) not in (9, 10):
                return None
            # "+81", the "(0)" if written, and the national number's first group
            rest = groups[2 if trunk else 1 :] if groups[0] == "81" else []
            lead = 2 + int(trunk) + (min(len(rest[0]), 4) if len(rest) > 1 else 2)
        else:
            if not 8 <= n <= 15:
                return None
            lead = min(len(groups[0]), 3) if len(groups) > 1 else 1
            if len(groups) > 2:
                lead += min(len(groups[1]), 4)
    elif digits.startswith("0"):
        valid = (n == 10 and not digits.startswith("00")) or (n == 11 and re.match(r"0[25-9]0", digits))
        if not valid:
            return None
        lead = min(len(groups[0]), 4) if len(groups) > 1 else 3
    else:  # North American, separators required by its pattern
        if n != 10:
            return None
        lead = 3
    lead = max(0, min(lead, n - _TAIL - _MIN_MASKED))
    return lead, _TAIL


def _mask_email(local: str, domain: str) -> str:
    labels = [label.strip("-") for label in _DOT_SPLIT.split(domain)]
    return f"{local[0]}***@{labels[0][:1]}***.{labels[-1]}"


def mask_contacts(text: str | None) -> str | None:
    """`text` with every email address and phone number in it masked (see the module docstring);
    everything else, including HTML, is returned as it was (escaping is the template's job)."""
    if not text:
        return text
    shadow = _shadow(text)
    s = shadow.text
    # (start, end) in the shadow text -> what replaces it: a string, or (lead, tail) digits kept.
    edits: list[tuple[int, int, str | tuple[int, int]]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b, _ in edits)

    for m in _EMAIL.finditer(s):
        edits.append((m.start(), m.end(), _mask_email(m.group("local"), m.group("domain"))))
    for pattern in (_INTERNATIONAL, _NATIONAL, _NANP):
        for m in pattern.finditer(s):
            keep = _phone_keep(m.group(0))
            if keep is not None and free(m.start(), m.end()):
                edits.append((m.start(), m.end(), keep))
    if not edits:
        return text
    out: list[str] = []
    cursor = 0
    for start, end, how in sorted(edits, key=lambda e: e[0]):
        first, last = shadow.pos[start], shadow.pos[end - 1] + 1
        out.append(text[cursor:first])
        if isinstance(how, str):
            out.append(how)
        else:
            out.append(_mask_digits(text, shadow, start, end, *how))
        cursor = last
    out.append(text[cursor:])
    return "".join(out)


def _mask_digits(text: str, shadow: _Shadow, start: int, end: int, lead: int, tail: int) -> str:
    """The original characters of a phone number, its digits between the first `lead` and the last
    `tail` shown as "*" ("＊" where the reviewer wrote a full-width digit); invisible characters
    inside it are dropped."""
    total = sum(1 for i in range(start, end) if shadow.text[i].isascii() and shadow.text[i].isdigit())
    out: list[str] = []
    k = 0
    for i in range(start, end):
        original = text[shadow.pos[i]]
        if shadow.text[i].isascii() and shadow.text[i].isdigit():
            shown = k < lead or k >= total - tail
            out.append(original if shown else ("＊" if original != shadow.text[i] else "*"))
            k += 1
        else:
            out.append(original)
    return "".join(out)
