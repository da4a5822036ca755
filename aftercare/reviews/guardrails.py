"""Checks every reply draft must pass before a person is asked to approve it as-is, and the drafting
loop that redrafts (feeding the failures back) and otherwise flags the draft for attention.

Phrase checks are deliberately blunt: a false alarm costs an approver a second look, a miss can
cost the shop a public promise. All matching is on NFKC-folded text, so full-width letters count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from aftercare.reviews.drafting import Drafter, redact
from aftercare.reviews.models import CustomerPrivate, Draft, DraftReply, ReplyRequest
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.text import (
    Contact,
    detect_language,
    digits,
    fenced,
    find_contact_details,
    fold,
    inert_inline,
    is_invisible,
    piece_pattern,
    script_counts,
    script_of,
)

# Scripts a reply in each language may use (Latin in Japanese for product names and contacts).
_ALLOWED_SCRIPTS = {"ja": {"kana", "han", "latin"}, "en": {"latin"}}
# Base64 of text: a long unbroken run mixing upper case, lower case and digits.
_BASE64_RUN = re.compile(
    r"(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*\d)[A-Za-z0-9+/]{32,}={0,2}"
)
_MARKUP = re.compile(r"<\s*/?\s*[a-z][^>]*>|\]\([^)]*\)|javascript:|data:[a-z]+/", re.IGNORECASE)
_PERCENT = re.compile(r"(\d{1,3})\s*(?:%|パーセント|percent)")
_SENTENCE_END = "。！？!?"
_TRAILERS = "」』）)】〕…・〜~♪☆★ 　"


class GuardrailResult(BaseModel):
    """One check on one draft. `matches` are the offending snippets (for highlighting); `hint` is
    what a redraft is told, when `detail` must not be repeated to the model (personal data)."""

    name: str
    passed: bool
    detail: str
    matches: list[str] = []
    hint: str | None = None

    @property
    def feedback(self) -> str:
        return f"{self.name}: {self.hint or self.detail}"


@dataclass(frozen=True)
class GuardrailContext:
    request: ReplyRequest
    policy: ReviewsPolicy
    private: CustomerPrivate = field(default_factory=CustomerPrivate)


def _ok(name: str, detail: str = "ok") -> GuardrailResult:
    return GuardrailResult(name=name, passed=True, detail=detail)


def _fail(name: str, detail: str, matches: Sequence[str] = ()) -> GuardrailResult:
    return GuardrailResult(name=name, passed=False, detail=detail, matches=list(dict.fromkeys(matches)))


def _phrases_in(text: str, phrases: Sequence[str]) -> list[str]:
    folded = fold(text)
    return [p for p in phrases if p and fold(p) in folded]


# -- the checks --------------------------------------------------------------------------------


def check_language(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    """The reply is in the review's language, says so, and uses no other script."""
    want = ctx.request.language
    if ctx.request.review_language and ctx.request.review_language != want:
        return _fail(
            "language",
            f"the review is in {ctx.request.review_language!r}; replies are drafted in "
            f"{', '.join(ctx.policy.reply.languages)} only, so this one needs a person",
        )
    if reply.language != want:
        return _fail("language", f"draft says it is in {reply.language!r}, the review is in {want!r}")
    # Names may be in any script: the product, the shop and the reviewer's display name.
    text = reply.reply_text
    for name in (ctx.request.product_title, ctx.request.shop_name, ctx.request.display_name):
        if name:
            text = text.replace(name, " ")
    seen = detect_language(text)
    if seen != want:
        return _fail("language", f"reply text reads as {seen!r}, the review is in {want!r}")
    foreign = sorted(set(script_counts(text)) - _ALLOWED_SCRIPTS[want])
    if foreign:
        chars = [ch for ch in text if ch.isalpha() and script_of(ch) in foreign]
        return _fail("language", f"reply uses other scripts: {', '.join(foreign)}", ["".join(chars[:20])])
    return _ok("language", f"{want}")


def check_length(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    bounds = ctx.policy.reply.length[ctx.request.language]
    n = len(reply.reply_text.strip())
    if n < bounds.min:
        return _fail("length", f"{n} characters, fewer than {bounds.min}")
    if n > bounds.max:
        return _fail("length", f"{n} characters, more than {bounds.max}")
    return _ok("length", f"{n} characters within {bounds.min}-{bounds.max}")


def _banned(name: str, kind: str, reply: DraftReply, ctx: GuardrailContext, what: str) -> GuardrailResult:
    lang = ctx.request.language
    lists = getattr(ctx.policy.reply.banned, kind)
    # Both languages' lists: a Japanese reply can still say "refund".
    phrases = [*lists.get(lang), *lists.get("en" if lang == "ja" else "ja")]
    hits = _phrases_in(reply.reply_text, phrases)
    if hits:
        return _fail(name, f"{what}: {', '.join(hits)}", hits)
    return _ok(name)


def check_liability(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    return _banned("no_liability", "liability", reply, ctx, "admits legal liability")


def check_blame(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    return _banned("no_blaming", "blaming_customer", reply, ctx, "blames the customer")


def check_remedies(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    """Offers only the remedies the policy allows, in the reply and in `promised_actions`, and no
    discount above the policy's maximum percentage."""
    remedies = ctx.policy.reply.remedies
    banned = ctx.policy.reply.banned
    texts = [reply.reply_text, *reply.promised_actions]
    problems: list[str] = []
    matches: list[str] = []
    for kind in ("refund", "replacement", "discount", "compensation"):
        if remedies.allows(kind):
            continue
        lists = getattr(banned, kind)
        hits = [h for t in texts for h in _phrases_in(t, [*lists.get("ja"), *lists.get("en")])]
        if hits:
            problems.append(f"{kind} not allowed by policy ({', '.join(dict.fromkeys(hits))})")
            matches += hits
    if remedies.allows("discount"):
        for t in texts:
            for m in _PERCENT.finditer(fold(t)):
                if int(m.group(1)) > remedies.discount_percent_max:
                    problems.append(f"{m.group(0)} is above the policy's {remedies.discount_percent_max}%")
                    matches.append(m.group(0))
    if problems:
        return _fail("remedies_within_policy", "; ".join(problems), matches)
    return _ok("remedies_within_policy")


def _allowed_urls(urls: Sequence[str]) -> set[str]:
    """Each allow-listed URL as written, without its scheme, and its bare host: all canonical."""
    allowed: set[str] = set()
    for url in urls:
        url = fold(url).rstrip("/")
        bare = url.split("://", 1)[-1]
        allowed |= {url, bare, bare.split("/", 1)[0]}
    return allowed


def check_contacts(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    """No URL, host name, email or phone number except the shop's allow-listed support contacts.
    Host names are found in any spelling (`find_contact_details`); the allow-listed ones pass in
    any of them too (full-width, a trailing slash, without the scheme, or the URL's bare host)."""
    allowed = ctx.policy.reply.support_contacts
    ok_emails = {fold(e) for e in allowed.emails}
    ok_urls = _allowed_urls(allowed.urls)
    ok_phones = {digits(p) for p in allowed.phones}
    bad: list[Contact] = []
    for contact in find_contact_details(reply.reply_text):
        if contact.kind == "email":
            ok = contact.value in ok_emails
        elif contact.kind == "phone":
            ok = digits(contact.value) in ok_phones
        else:
            ok = contact.value.rstrip("/") in ok_urls
        if not ok:
            bad.append(contact)
    if bad:
        shown = [c.raw if c.raw == c.value else f"{c.raw} ({c.value})" for c in bad]
        return _fail(
            "contacts_allow_listed",
            f"not an allow-listed support contact: {', '.join(shown)}",
            [c.raw for c in bad],
        )
    return _ok("contacts_allow_listed")


def check_personal_data(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    """None of the customer's personal data: their name beyond the display name, email, phone or
    address pieces."""
    private = ctx.private
    text = fold(reply.reply_text)
    compact = re.sub(r"\s+", "", text)
    display = fold(ctx.request.display_name or "")
    hits: list[str] = []
    if private.email and fold(private.email) in text:
        hits.append(private.email)
    if (
        private.phone
        and len(digits(private.phone)) >= 6
        and digits(private.phone) in digits(reply.reply_text)
    ):
        hits.append(private.phone)
    for part in private.address_parts:
        if len(part.strip()) >= 2 and re.sub(r"\s+", "", fold(part)) in compact:
            hits.append(part)
    if private.full_name:
        full = re.sub(r"\s+", "", fold(private.full_name))
        if full and full != re.sub(r"\s+", "", display) and full in compact:
            hits.append(private.full_name)
        for token in private.full_name.split():
            if len(token) < 2 or fold(token) in display:
                continue
            if piece_pattern(fold(token)).search(text):
                hits.append(token)
    if hits:
        result = _fail("no_personal_data", f"repeats the customer's personal data: {', '.join(hits)}", hits)
        # The redraft is told what kind of problem it was, never the data itself.
        hint = (
            "the reply contains the customer's personal data (a name other than the display name, an "
            "email, a phone number or part of an address); leave all of it out"
        )
        return result.model_copy(update={"hint": hint})
    return _ok("no_personal_data")


def _sentences(text: str) -> list[tuple[str, bool]]:
    """(sentence, ended with punctuation) pieces of a Japanese text, split at 。！？ and newlines."""
    out: list[tuple[str, bool]] = []
    for line in text.splitlines():
        for piece in re.findall(rf"[^{_SENTENCE_END}]+[{_SENTENCE_END}]*", line):
            body = piece.strip()
            if body:
                ended = body[-1] in _SENTENCE_END
                body = body.rstrip(_SENTENCE_END).strip()
                # "…ご連絡ください（support@example.com）。" ends politely before its parenthesis
                body = re.sub(r"[（(][^（）()]*[）)]$", "", body).rstrip(_TRAILERS)
                out.append((body, ended))
    return out


def check_ja_polite(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    """Every sentence of a Japanese reply ends in polite form (です/ます...). Short unpunctuated lines
    (the salutation, the signature) are not sentences."""
    if ctx.request.language != "ja":
        return _ok("ja_polite_form", "not a Japanese reply")
    endings = tuple(ctx.policy.reply.ja_polite_endings)
    plain = [
        s
        for s, ended in _sentences(reply.reply_text)
        if (ended or len(s) >= 25)
        and not re.sub(r"[かねよがのでけれど]+$", "", s).endswith(endings)
        and not s.endswith(endings)
    ]
    if plain:
        return _fail("ja_polite_form", f"not in polite form: {' / '.join(plain)}", plain)
    return _ok("ja_polite_form")


def check_ja_cushion(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    """A Japanese reply to a negative review softens itself with at least one cushion word."""
    if ctx.request.language != "ja" or not ctx.request.negative:
        return _ok("ja_cushion_words", "not required")
    words = ctx.policy.reply.ja_cushion_words
    if not _phrases_in(reply.reply_text, words):
        return _fail("ja_cushion_words", f"no cushion word (one of: {'、'.join(words[:4])}…)")
    return _ok("ja_cushion_words")


def check_hidden_content(reply: DraftReply, ctx: GuardrailContext) -> GuardrailResult:
    """No invisible characters, markup or links in markup, or long encoded (base64-like) runs:
    the ways injected content hides from the person who approves the reply."""
    text = reply.reply_text
    problems: list[str] = []
    matches: list[str] = []
    invisible = [f"U+{ord(ch):04X}" for ch in text if is_invisible(ch)]
    if invisible:
        problems.append(f"invisible characters {', '.join(dict.fromkeys(invisible))}")
    for pattern, what in ((_MARKUP, "markup"), (_BASE64_RUN, "encoded-looking text")):
        found = [m.group(0) for m in pattern.finditer(text)]
        if found:
            problems.append(f"{what}: {', '.join(found)[:120]}")
            matches += found
    if problems:
        return _fail("no_hidden_content", "; ".join(problems), matches)
    return _ok("no_hidden_content")


CHECKS = (
    check_language,
    check_length,
    check_liability,
    check_blame,
    check_remedies,
    check_contacts,
    check_personal_data,
    check_ja_polite,
    check_ja_cushion,
    check_hidden_content,
)


def check(draft: Draft | DraftReply, context: GuardrailContext) -> list[GuardrailResult]:
    """Every guardrail on one draft, passed or not, in a fixed order."""
    reply = draft.reply if isinstance(draft, Draft) else draft
    return [rule(reply, context) for rule in CHECKS]


# -- the loop ----------------------------------------------------------------------------------


class Attempt(BaseModel):
    draft: Draft
    failures: list[GuardrailResult]


class GuardedDraft(BaseModel):
    """The final draft with its checks. `needs_attention` drafts failed a check in every attempt
    and are never `publishable`; a person must edit them."""

    draft: Draft
    checks: list[GuardrailResult]
    needs_attention: bool
    attempts: list[Attempt]

    @property
    def failures(self) -> list[GuardrailResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def publishable(self) -> bool:
        return not self.needs_attention and not self.failures

    def approver_markdown(self) -> str:
        """The draft, its origin and every check, for the person approving it (e.g. a Prefect form).
        Everything the model or a reviewer could have written is inert: the draft in a fence it
        cannot close, the LLM's failure, check details, promised actions and notes as escaped text
        (`inert_inline`)."""
        draft = self.draft
        origin = {
            "llm": "drafted by the LLM",
            "template": "from the reply template",
            "fallback": "from the reply template because the LLM failed",
        }[draft.source]
        status = (
            "**needs attention**: failed checks are marked ⟦like this⟧"
            if self.needs_attention
            else ("all checks passed" if self.publishable else "**checks failed**")
        )
        lines = [f"Draft {origin} ({status}; policy {inert_inline(draft.policy_version)}).", ""]
        if draft.fallback_reason:
            lines += [f"LLM failure: {inert_inline(draft.fallback_reason)}", ""]
        lines += [
            fenced(self.highlighted_text()),
            "",
            "| check | result | detail |",
            "|---|---|---|",
        ]
        for c in self.checks:
            name = c.name if re.fullmatch(r"[a-z_]+", c.name) else inert_inline(c.name)
            lines.append(f"| {name} | {'pass' if c.passed else '**FAIL**'} | {inert_inline(c.detail)} |")
        for title, items in (
            ("The draft promises:", draft.reply.promised_actions),
            ("Notes from the drafter:", draft.reply.risk_notes),
        ):
            if items:
                lines += ["", title, *(f"- {inert_inline(item)}" for item in items)]
        return "\n".join(lines)

    def highlighted_text(self, mark: tuple[str, str] = ("⟦", "⟧")) -> str:
        """The reply with every offending snippet wrapped in `mark`, for the approver."""
        text = self.draft.reply.reply_text
        snippets = sorted({m for c in self.failures for m in c.matches if m}, key=len, reverse=True)
        if not snippets:
            return text
        pattern = re.compile("|".join(re.escape(s) for s in snippets), re.IGNORECASE)
        return pattern.sub(lambda m: f"{mark[0]}{m.group(0)}{mark[1]}", text)


def feedback_for(failures: Sequence[GuardrailResult]) -> list[str]:
    """What the next drafting attempt is told about the last one's failures."""
    return [f.feedback for f in failures]


def draft_with_guardrails(
    request: ReplyRequest,
    *,
    drafter: Drafter,
    policy: ReviewsPolicy,
    private: CustomerPrivate | None = None,
    max_attempts: int = 3,
) -> GuardedDraft:
    """Draft, check, and redraft with the failures fed back, at most `max_attempts` times. A
    template or fallback draft is not redrafted (it would come out the same). A draft still failing
    at the end is returned with `needs_attention=True`."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    ctx = GuardrailContext(request=request, policy=policy, private=private or CustomerPrivate())
    attempts: list[Attempt] = []
    feedback: list[str] = []
    for _ in range(max_attempts):
        draft = drafter.draft(request, feedback=feedback)
        results = check(draft, ctx)
        failures = [r for r in results if not r.passed]
        attempts.append(Attempt(draft=draft, failures=failures))
        if not failures:
            return GuardedDraft(draft=draft, checks=results, needs_attention=False, attempts=attempts)
        if draft.source != "llm":
            break
        # Details quote the draft; redacted like the review, they cannot hand personal data back.
        feedback = [redact(line, ctx.private) for line in feedback_for(failures)]
    return GuardedDraft(draft=draft, checks=results, needs_attention=True, attempts=attempts)
