"""Script-based language detection and the text clean-ups triage, drafting and guardrails share."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# Scripts we can tell apart by code point alone. Kana is decisive for Japanese; Han without kana is
# read as Japanese too (this shop's customers write Japanese or English, rarely Chinese).
_SCRIPT_LANG = {
    "kana": "ja",
    "han": "ja",
    "hangul": "ko",
    "cyrillic": "ru",
    "greek": "el",
    "arabic": "ar",
    "hebrew": "he",
    "thai": "th",
    "devanagari": "hi",
    "latin": "en",
}


def script_of(ch: str) -> str | None:
    """The writing system of one character, or None for digits, punctuation, spaces and symbols."""
    cp = ord(ch)
    if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0xFF66 <= cp <= 0xFF9D:
        return "kana"
    if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or ch in "々〆ヶ":
        return "han"
    if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
        return "hangul"
    if not ch.isalpha():
        return None
    if cp < 0x250 or 0x1E00 <= cp <= 0x1EFF or 0xFF21 <= cp <= 0xFF5A:
        return "latin"
    if 0x0400 <= cp <= 0x052F:
        return "cyrillic"
    if 0x0370 <= cp <= 0x03FF:
        return "greek"
    if 0x0600 <= cp <= 0x06FF:
        return "arabic"
    if 0x0590 <= cp <= 0x05FF:
        return "hebrew"
    if 0x0E00 <= cp <= 0x0E7F:
        return "thai"
    if 0x0900 <= cp <= 0x097F:
        return "devanagari"
    return "other"


def script_counts(text: str) -> Counter[str]:
    return Counter(s for s in map(script_of, text) if s is not None)


def detect_language(text: str) -> str | None:
    """'ja' when the text has kana or kanji; otherwise the language of its most frequent script
    ('en' for Latin); None when the text has no letters at all."""
    counts = script_counts(text)
    if counts["kana"] or counts["han"]:
        return "ja"
    if not counts:
        return None
    script, _ = counts.most_common(1)[0]
    return _SCRIPT_LANG.get(script, "und")


def normalise_lang(tag: str | None) -> str | None:
    """'ja-JP' / 'JA_jp' -> 'ja'; '' -> None."""
    if not tag or not tag.strip():
        return None
    return tag.strip().replace("_", "-").split("-")[0].lower()


def is_invisible(ch: str) -> bool:
    """Zero-width and bidi control characters (Unicode category Cf), and other controls except
    newline and tab: they hide text from a human reader but not from a model."""
    cat = unicodedata.category(ch)
    return cat == "Cf" or (cat == "Cc" and ch not in "\n\t")


def strip_invisible(text: str) -> str:
    return "".join(ch for ch in text if not is_invisible(ch))


def fold(text: str) -> str:
    """NFKC + casefold, so full-width letters and digits match their ASCII phrases."""
    return unicodedata.normalize("NFKC", text).casefold()


# Contact details, matched on `fold`ed text (so full-width "ｈｔｔｐｓ：／／" and "０３" count).
EMAIL_RE = re.compile(r"[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)+", re.IGNORECASE)
# URL characters are ASCII only, so Japanese text right after a URL ("…/contactまで") is not part of it.
_URL_CHARS = r"[a-z0-9\-._~:/?#\[\]@!$&*+,;=%]"
URL_RE = re.compile(rf"(?:[a-z][a-z0-9+.\-]*://|www\.){_URL_CHARS}+", re.IGNORECASE)
# A host name without a scheme ("evil.example.com/x"): only common TLDs, to leave "e.g." alone.
BARE_DOMAIN_RE = re.compile(
    r"(?<![@\w.\-])(?:[a-z0-9\-]+\.)+(?:com|net|org|jp|co|io|ly|me|info|biz|shop|store|xyz|app|dev|link|site|"
    rf"online|top|ru|cn|gl|gg|to|tk|cc|us|uk|de)\b(?:/{_URL_CHARS}*)?"
)
PHONE_RE = re.compile(r"(?<![\w])\+?\(?\d[\d\-\s().]{6,}\d(?![\w])")
_DATE_RE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}")
_TRAILING = ".,;:!?)]}>、。」』）"


def digits(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if ch.isdigit())


def find_contacts(text: str) -> dict[str, list[str]]:
    """Emails, URLs (with a scheme, www., or a bare host name) and phone numbers (8-15 digits, not a date) in
    `text`, folded. Each kind is blanked out before the next is looked for, so the host of an email
    is not also reported as a URL."""
    rest = fold(text)
    found: dict[str, list[str]] = {"emails": [], "urls": [], "phones": []}
    for kind, pattern in (("emails", EMAIL_RE), ("urls", URL_RE), ("urls", BARE_DOMAIN_RE)):
        for m in pattern.finditer(rest):
            found[kind].append(m.group(0).rstrip(_TRAILING))
        rest = pattern.sub(" ", rest)
    found["phones"] = [m.group(0).strip() for m in PHONE_RE.finditer(rest) if looks_like_phone(m.group(0))]
    return found


def looks_like_phone(candidate: str) -> bool:
    """A PHONE_RE match that has 8-15 digits and is not a date (2026-11-22)."""
    return 8 <= len(digits(candidate)) <= 15 and not _DATE_RE.fullmatch(candidate.strip())


def piece_pattern(piece: str) -> re.Pattern[str]:
    """A case-insensitive pattern for a name or address piece: whole words when it is ASCII ("Li"
    must not match inside "quality"), anywhere when it is Japanese (no spaces between words)."""
    escaped = re.escape(piece)
    if piece.isascii():
        escaped = rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])"
    return re.compile(escaped, re.IGNORECASE)
