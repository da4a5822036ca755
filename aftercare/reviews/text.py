"""Script-based language detection and the text clean-ups triage, drafting and guardrails share:
contact details in any spelling (`find_contact_details`), and untrusted text made inert for the
approver's markdown (`inert_inline`, `fenced`)."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from publicsuffixlist import PublicSuffixList

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
# Each pattern starts only where its first run starts (a look-behind), so that a long run without a
# match costs linear time, not quadratic (reviews are up to 20,000 characters).
EMAIL_RE = re.compile(r"(?<![a-z0-9._%+\-])[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)+", re.IGNORECASE)
# URL characters are ASCII only, so Japanese text right after a URL ("…/contactまで") is not part of it.
_URL_CHARS = r"[a-z0-9\-._~:/?#\[\]@!$&*+,;=%]"
# Any scheme (https, hxxp, ftp...), also defanged ("hxxps[:]//"), or www.
URL_RE = re.compile(
    rf"(?<![a-z0-9+.\-])(?:[a-z][a-z0-9+.\-]*(?::|\[:\])//{_URL_CHARS}*|www\.{_URL_CHARS}+)", re.IGNORECASE
)
# An IPv4 address with a port or a path ("1.2.3.4:8080/claim"); without one it reads as a version.
_IP_URL_RE = re.compile(rf"(?<![\w.])\d{{1,3}}(?:\.\d{{1,3}}){{3}}(?::\d{{1,5}}|/){_URL_CHARS}*")
# At most 32 characters: 15 digits and their separators, and a bounded cost per start.
PHONE_RE = re.compile(r"(?<![\w])\+?\(?\d[\d\-\s().]{6,30}\d(?![\w])")
_DATE_RE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}")
_TRAILING = ".,;:!?)]}>、。」』）"

# -- host names without a scheme ---------------------------------------------------------------
#
# A host is labels joined by dots and ending in a top-level domain. Labels may be in any script
# (IDN) or punycode. The dot may be written ".", full-width "．" (NFKC folds it, and "｡" to "。"),
# as the ideographic full stop "。", bracketed ("[.]", "(dot)", "［．］", "【ドット】"), spaced
# ("example . com") or spelled out ("example dot com", "exampleドットcom"). Which spellings count
# depends on the top-level domain, so that ordinary prose passes:
#
# - "." and bracketed dots: any top-level domain in the Public Suffix List's ICANN section (the
#   IANA root zone, from the `publicsuffixlist` package) or punycode; any alphabetic one of 2+
#   letters when the host has a scheme-less "//", a port or a path ("evil.zzz/claim"). So "e.g.",
#   "No.5", "ver.2.0" and "3.5" pass, and so does "arrived.Thanks" (no such TLD), while
#   "arrived.Love it" fails: .love is a TLD. A reply should have a space after its full stops.
# - "。": only between Latin letters or digits ("evil。com"); in Japanese prose it ends sentences.
# - spaced and spelled-out dots: only the top-level domains people spell out (`SPELLED_TLDS`), so
#   "polka dot design" and "a red dot in the middle" pass; bracketed spellings take any TLD.
# - a dot followed by a space ("shop-help. ai/claim") is how sentences end: a host only right before
#   a known TLD with a port or path after it.
# Not read as hosts: "exampledotcom" (no separator), other dot look-alikes ("·", "・"), a space
# inside a label ("e x a m p l e . c o m"), and hosts on TLDs not in the list (they do not resolve).
SPELLED_TLDS = frozenset(
    "com net org info biz jp co io ly xyz ru cn uk de tk ai pw gg cc gl ml ga cf gq su コム".split()
)
# A label never contains "ドット", or "ドットドット…" could split in 2^n ways (catastrophic backtracking).
_LABEL = r"(?!ドット)[^\W_](?:(?:(?!ドット)[\w\-])*(?!ドット)[^\W_])?"
_TLD = r"xn--[a-z0-9\-]*[a-z0-9]|[a-z]{2,63}(?![a-z0-9\-])|[^\W\d_]+(?!\w)"
_SEP = (
    r"\s*[\[({<【〔「]\s*(?:\.|。|dot|ドット|点)\s*[\])}>】〕」]\s*"
    r"|\s+dot\s+|\s*ドット\s*"
    r"|\s+[.。]\s*"
    r"|[.。]\s+"
    r"|[.。]"
)
# A chain of labels joined by separators; a host is a run of it ending in a TLD-like label.
_CHAIN_RE = re.compile(rf"(?<![^\W_]|-){_LABEL}(?:(?:{_SEP}){_LABEL})+")
_CHAIN_PART_RE = re.compile(rf"(?P<label>{_LABEL})|(?P<sep>{_SEP})")
_TLD_RE = re.compile(_TLD)
_PORT_PATH_RE = re.compile(rf"(?P<port>:\d{{1,5}}(?!\d))?(?P<path>/{_URL_CHARS}+)?")
_ASCII_TAIL_RE = re.compile(r"[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\Z")


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # The ICANN section of the Public Suffix List: the top-level domains of the IANA root zone (IDN
    # ones in Unicode and punycode), bundled with the package and refreshed with its releases.
    return PublicSuffixList(only_icann=True, accept_unknown=False)


@functools.lru_cache(maxsize=4096)
def is_known_tld(label: str) -> bool:
    """Whether `label` is a top-level domain (any punycode label counts)."""
    label = fold(label)
    return label.startswith("xn--") or _public_suffixes().publicsuffix(f"x.{label}") is not None


@dataclass(frozen=True)
class Contact:
    """A contact detail found in a text. `value` is its canonical form (NFKC, case-folded, every
    spelling of a dot as "."), to compare with an allow-list; `raw` is the text as written."""

    kind: Literal["email", "url", "host", "phone"]
    value: str
    raw: str


class _Folded:
    """A text folded for matching (`fold`, invisible characters dropped) that remembers which
    character of the original each of its characters came from, so a match can be shown as written."""

    def __init__(self, text: str):
        # Folded a character at a time, except that a character whose folding is a combining mark
        # joins the one before it: "ﾄﾞｯﾄ" folds to "ドット" only as a whole.
        groups: list[tuple[int, int, str]] = []  # (first, last) index in `text`, folded
        for i, ch in enumerate(text):
            if is_invisible(ch):
                continue
            folded = fold(ch)
            if groups and folded and unicodedata.combining(folded[0]):
                first, _, _ = groups.pop()
                folded = fold("".join(c for c in text[first : i + 1] if not is_invisible(c)))
                groups.append((first, i, folded))
            else:
                groups.append((i, i, folded))
        self.source = text
        self.text = "".join(folded for _, _, folded in groups)
        self.first: list[int] = []
        self.last: list[int] = []
        for first, last, folded in groups:
            self.first += [first] * len(folded)
            self.last += [last] * len(folded)

    def raw(self, start: int, end: int) -> str:
        return self.source[self.first[start] : self.last[end - 1] + 1] if end > start else ""

    def take(self, kind: str, start: int, end: int, value: str | None = None) -> Contact:
        """The contact at [start, end), blanked out so that no later pattern finds it again."""
        contact = Contact(kind, value or self.text[start:end], self.raw(start, end))  # type: ignore[arg-type]
        self.text = self.text[:start] + " " * (end - start) + self.text[end:]
        return contact


def _sep_allowed(sep: str, left: str, tld: str, strong: bool, known: bool, before_tld: bool) -> bool:
    """Whether `left` + `sep` + ... + `tld` reads as a host (see the rules above); `known`: whether
    `tld` is a top-level domain, `strong`: whether the host has a port, a path or a leading "//",
    `before_tld`: whether `sep` is the one right before the TLD."""
    word = sep.strip()
    if sep == ".":
        return known or (strong and tld.isascii() and tld.isalpha() and len(tld) >= 2)
    if sep == "。":
        return left.isascii() and tld.isascii() and (known or strong)
    if word not in (".", "。", "dot", "ドット"):  # bracketed
        return known or (strong and tld.isascii() and tld.isalpha() and len(tld) >= 2)
    if sep[0] in ".。":  # "shop-help. ai/claim" but not "Thank you. example.com/x": a sentence end
        return strong and known and before_tld
    return tld in SPELLED_TLDS or (strong and known)  # spaced or spelled out


def _hosts_in_chain(view: _Folded, chain: re.Match[str]) -> list[Contact]:
    """The hosts in one chain of labels, right to left: each label that can be a TLD takes the
    labels on its left while their separator counts (`_sep_allowed`); a label of Japanese with a
    Latin tail ("詳しくはevil") gives its tail and ends the host. Linear in the chain's length."""
    labels: list[tuple[int, str]] = []  # (offset in view.text, label)
    seps: list[str] = []
    for part in _CHAIN_PART_RE.finditer(chain.group(0)):
        if part.group("label") is not None:
            labels.append((chain.start() + part.start(), part.group("label")))
        else:
            seps.append(part.group("sep"))
    after_slashes = view.text[max(0, chain.start() - 2) : chain.start()] == "//"
    found: list[Contact] = []
    i = len(labels) - 1
    while i >= 1:
        at, tld = labels[i]
        if i == len(labels) - 1 and not tld.isascii():  # "comまで": the TLD, then Japanese text
            head = _TLD_RE.match(tld)
            tld = head.group(0) if head and head.group(0).isascii() else tld
        if not _TLD_RE.fullmatch(tld) or (tld.isascii() and len(tld) < 2):  # "e.g": no TLD
            i -= 1
            continue
        end = at + len(tld)
        extra = _PORT_PATH_RE.match(view.text, end) if i == len(labels) - 1 else None
        port, path = (extra.group("port") or "", extra.group("path") or "") if extra else ("", "")
        strong = bool(port or path) or after_slashes
        known = is_known_tld(tld)
        host = [tld]
        start = -1
        j = i
        while j >= 1:
            left_at, left = labels[j - 1]
            tail = None if left.isascii() else _ASCII_TAIL_RE.search(left)
            left = tail.group(0) if tail else left
            if not _sep_allowed(seps[j - 1], left, tld, strong, known, before_tld=j == i):
                break
            j -= 1
            if tail is not None:
                host.insert(0, tail.group(0))
                start = left_at + tail.start()
                break
            host.insert(0, left)
            start = left_at
        if start < 0:
            i -= 1
            continue
        stop = end + len(port) + len(path)
        while path and view.text[stop - 1] in _TRAILING:  # "see evil.com/x." ends at x
            path, stop = path[:-1], stop - 1
        found.insert(0, view.take("host", start, stop, ".".join(host) + port + path))
        i = j - 1
    return found


def find_contact_details(text: str) -> list[Contact]:
    """Emails, URLs (with a scheme, www., or an IP address with a port or path), host names (see the
    rules above) and phone numbers (8-15 digits, not a date) in `text`, in that order of search.
    Each one found is blanked out before the next kind is looked for, so the host of an email is
    not also reported as a host. Invisible characters inside a contact do not hide it."""
    view = _Folded(text)
    found: list[Contact] = []
    for kind, pattern in (("email", EMAIL_RE), ("url", URL_RE), ("url", _IP_URL_RE)):
        for m in list(pattern.finditer(view.text)):
            end = m.end()
            while end > m.start() + 1 and view.text[end - 1] in _TRAILING:
                end -= 1
            found.append(view.take(kind, m.start(), end))
    for chain in list(_CHAIN_RE.finditer(view.text)):
        found += _hosts_in_chain(view, chain)
    for m in list(PHONE_RE.finditer(view.text)):
        if looks_like_phone(m.group(0)):
            found.append(view.take("phone", m.start(), m.end(), m.group(0).strip()))
    return found


def find_contacts(text: str) -> dict[str, list[str]]:
    """`find_contact_details` by kind, canonical values only: emails, urls (hosts too), phones."""
    found: dict[str, list[str]] = {"emails": [], "urls": [], "phones": []}
    key = {"email": "emails", "url": "urls", "host": "urls", "phone": "phones"}
    for contact in find_contact_details(text):
        found[key[contact.kind]].append(contact.value)
    return found


def digits(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if ch.isdigit())


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


# -- untrusted text in markdown (the approver's Prefect form) -----------------------------------

# Characters that show as nothing or as blank space and are not ordinary spaces: Hangul fillers,
# the braille blank, the combining grapheme joiner, line/paragraph separators, variation selectors
# 17-256. With `is_invisible` (zero-width, bidi controls, tags, controls) they are shown by name.
_BLANK_LOOKALIKES = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f\u2028\u2029")


def is_hidden(ch: str) -> bool:
    """A character a reader cannot see: `is_invisible`, or a blank lookalike."""
    return is_invisible(ch) or ch in _BLANK_LOOKALIKES or 0xE0100 <= ord(ch) <= 0xE01EF


def show_hidden(text: str, keep: str = "\n\t") -> str:
    """`text` with every hidden character (except those in `keep`) written as its code point,
    `<U+200B>`: the approver sees the trick instead of falling for it, and nothing is dropped."""
    return "".join(f"<U+{ord(ch):04X}>" if ch not in keep and is_hidden(ch) else ch for ch in text)


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# Markdown syntax is ASCII punctuation only; CommonMark lets every one of them be backslash-escaped.
_MD_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")
_SLASHES = re.compile(r":?//")
# Schemes that link without "//" ("mailto:x@y").
_BARE_SCHEME = re.compile(
    r"(?<![a-z0-9+.\-])(?:mailto|tel|sms|callto|javascript|vbscript|data|file|sip|skype|facetime|intent)\s*:",
    re.IGNORECASE,
)
# A dot after anything but a space and before a letter: "evil.com", "ｅｖｉｌ．ｃｏｍ", "例え.jp", "☃.net".
_DOT = re.compile(r"(?<=\S)[.．﹒․](?=[^\W\d_])")
# The ideographic full stop between Latin letters or digits ("evil。com"); in Japanese it ends a sentence.
_LATIN_IDEO_DOT = re.compile(r"(?<=[A-Za-z0-9Ａ-Ｚａ-ｚ０-９])[。｡](?=[A-Za-z0-9Ａ-Ｚａ-ｚ０-９])")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")


def defang(text: str) -> str:
    """Links written as text made unlinkable, the way security tools write them:
    "https[://]evil[.]com", "mailto[:]owner@example[.]com", "1[.]2[.]3[.]4". No renderer or
    linkifier finds a scheme, a "//" or a dotted host name in the result, and the reader still sees
    where the link pointed. Prose keeps its look except "e[.]g." and a missing space ("end[.]Next")."""
    text = _SLASHES.sub(lambda m: f"[{m.group(0)}]", text)
    text = _BARE_SCHEME.sub(lambda m: f"{m.group(0)[:-1]}[:]", text)
    text = _IPV4.sub(lambda m: m.group(0).replace(".", "[.]"), text)
    text = _DOT.sub(lambda m: f"[{m.group(0)}]", text)
    return _LATIN_IDEO_DOT.sub(lambda m: f"[{m.group(0)}]", text)


def inert_inline(text: str) -> str:
    """Untrusted text as inline markdown that renders as exactly that text and nothing else: every
    ASCII punctuation character backslash-escaped (no emphasis, link, image, code span, HTML, entity,
    table cell break, heading, quote or list can start), newlines shown as " ↵ " (a value stays on
    its line), hidden characters shown as `<U+200B>`, links defanged (`defang`)."""
    text = show_hidden(_lines(text), keep="\n\t")
    text = re.sub(r"[ \t]*\n[ \t]*", " ↵ ", text).replace("\t", " ").strip()
    return _MD_PUNCT.sub(lambda m: "\\" + m.group(0), defang(text))


def fenced(text: str, info: str = "text") -> str:
    """Untrusted text as a fenced code block it cannot close: the fence is one backtick longer than
    the longest run of backticks inside. Shown as written, except hidden characters (`show_hidden`);
    nothing in a code block is a link, heading or HTML."""
    body = show_hidden(_lines(text), keep="\n\t")
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body}\n{fence}"
