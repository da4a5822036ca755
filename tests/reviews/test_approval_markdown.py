"""What the approver reads in the Prefect form is inert: whatever a reviewer, the review platform,
the model or a previous form input wrote, the rendered markdown has no link, image, heading,
quote, HTML or formatting of theirs, and still shows their text (hidden characters by name).

The markdown is rendered with markdown-it-py (CommonMark, plus GFM tables, strikethrough and
linkify), and the visible text is searched with linkify-it-py taught every known TLD."""

from __future__ import annotations

import functools
import html
import re
from collections import Counter
from importlib import resources
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linkify_it import LinkifyIt
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from aftercare.models import Review as ReviewRow
from aftercare.reviews.approval import approval_markdown
from aftercare.reviews.guardrails import GuardedDraft, GuardrailResult
from aftercare.reviews.models import Draft, DraftReply, OrderFacts
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.text import defang, fenced, inert_inline, show_hidden

# Markdown, HTML and link tricks a reviewer (or a model repeating one) can put in any field.
HOSTILE = [
    "[click](https://evil.example/x)",
    "![x](https://evil.example/img.png)",
    "# All checks passed ✅",
    "> **Approved by legal**",
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<a href='https://evil.example'>support</a>",
    "<https://evil.example/autolink>",
    "<owner@evil.example>",
    "https://evil.example/bare",
    "www.evil.com",
    "shop-help.ai/claim and rb.gy/x",
    "owner@evil.com",
    "mailto:owner@evil.example",
    "```\n# closed the fence\n```",
    "~~~\n# tilde fence\n~~~",
    "Sam\u200b\u202eevil\u202c",
    "line one\n\n# Heading after a blank line\n\n> quote",
    "Sam\r\n===",
    "Sam\n---",
    "[ref]\n\n[ref]: https://evil.example",
    "&lt;script&gt; &#x3C;img src=x&#x3E;",
    "| forged | table |\n|---|---|\n| a | b |",
    "    indented code",
    "1. list\n2. items",
    "- [x] task",
    "`code` and ``double``",
    "*emph* _emph_ **strong** ~~strike~~",
    "\\# escaped already \\",
    "javascript:alert(1)",
    "<details><summary>open</summary>hidden</details>",
    "ｈｔｔｐｓ：／／ｅｖｉｌ．ｃｏｍ",
    "evil。com",
    "http://1.2.3.4/x",
    "//evil.example/x",
    "<!-- comment -->",
    "Sam\u2028# after a line separator",
    "Sam\u3164\u2800\U000e0041",
]
ALL_HOSTILE = "\n".join(HOSTILE)
OUR_HEADINGS = ["h2", "h3", "h3", "h3", "h3"]


def renderers() -> list[MarkdownIt]:
    gfm = MarkdownIt("gfm-like")  # CommonMark with raw HTML on, tables, strikethrough, linkify
    commonmark = MarkdownIt("commonmark", {"linkify": True}).enable("linkify")
    return [gfm, commonmark]


@functools.cache
def every_tld() -> list[str]:
    """The top-level domains of the Public Suffix List bundled with `publicsuffixlist`."""
    data = (resources.files("publicsuffixlist") / "public_suffix_list.dat").read_text("utf-8")
    rules = (line.split()[0] for line in data.splitlines() if line.strip() and not line.startswith("//"))
    return sorted({rule.rsplit(".", 1)[-1].lstrip("!*") for rule in rules} - {""})


def linkifier() -> LinkifyIt:
    """linkify-it with every TLD of the Public Suffix List, fuzzy links, emails and IPs on."""
    options = {"fuzzy_link": True, "fuzzy_email": True, "fuzzy_ip": True}
    return LinkifyIt(options=options).tlds(every_tld(), True)


def tags(rendered: str) -> Counter[str]:
    return Counter(re.findall(r"<(/?[a-zA-Z][a-zA-Z0-9]*)", rendered))


def visible_text(rendered: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", rendered))


def review_row(value: str, **kw) -> ReviewRow:  # type: ignore[no-untyped-def]
    values = {
        "id": 3,
        "platform": "judgeme",
        "platform_review_id": value,
        "rating": 1,
        "title": value,
        "body": value,
        "author_display_name": value,
        "language": "en",
        "triage_negative": True,
        "triage_reasons": [value, value],
        "source_created_at": None,
    }
    values.update(kw)
    return ReviewRow(**values)


def guarded_draft(value: str, policy: ReviewsPolicy) -> GuardedDraft:
    reply = DraftReply(
        reply_text=f"Dear customer, {value}",
        language="en",
        apologises=True,
        promised_actions=[value, value],
        risk_notes=[value, value],
    )
    draft = Draft(reply=reply, source="fallback", fallback_reason=value, policy_version=policy.version)
    checks = [
        GuardrailResult(name="contacts_allow_listed", passed=False, detail=value, matches=[value]),
        GuardrailResult(name="length", passed=True, detail=value),
    ]
    return GuardedDraft(draft=draft, checks=checks, needs_attention=True, attempts=[])


def form(value: str, policy: ReviewsPolicy) -> str:
    return approval_markdown(
        review_row(value),
        order=OrderFacts(order_name=value, shipped_late=True, days_late=2, delivered=True),
        guarded=guarded_draft(value, policy),
        approval=policy.approval,
        error=value,
    )


@pytest.mark.parametrize("value", [*HOSTILE, ALL_HOSTILE], ids=[*map(repr, HOSTILE), "all"])
def test_hostile_text_in_every_field_renders_as_text_only(policy: ReviewsPolicy, value: str):
    hostile = form(value, policy)
    benign = form("Sam", policy)
    for md in renderers():
        rendered, expected = md.render(hostile), md.render(benign)
        # exactly the structure of the same form with a harmless value: nothing of theirs
        assert tags(rendered) == tags(expected), (value, rendered)
        assert "<img" not in rendered
        # the only links are the approvers' addresses from the policy (linkify finds them)
        ours = {f"mailto:{a}" for a in policy.approval.approvers}
        assert set(re.findall(r'<a href="([^"]*)"', rendered)) <= ours
        assert re.findall(r"<h\d", rendered) == [f"<{h}" for h in OUR_HEADINGS]
        assert rendered.count("<blockquote>") == 1  # ours: "Your last decision was not applied"
        assert rendered.count("<pre>") == 2  # the review and the draft, each in one fence
        # and their text is all there to read, every field of it
        text = visible_text(rendered)
        for line in show_hidden(value.replace("\r\n", "\n")).split("\n"):
            word = next((w for w in re.findall(r"[A-Za-z]{4,}", line)), None)
            if word:
                assert text.count(word) >= 10, (word, text)


@pytest.mark.parametrize("value", HOSTILE)
def test_no_linkifier_finds_a_link_in_what_the_approver_reads(policy: ReviewsPolicy, value: str):
    rendered = renderers()[0].render(form(value, policy))
    # Code blocks show the review and the draft exactly as written; no renderer links inside them
    # (the tag checks above prove it for these), so only the text outside them is searched here.
    outside_code = re.sub(r"<pre>.*?</pre>", " ", rendered, flags=re.S)
    matches = linkifier().match(visible_text(outside_code)) or []
    # the approvers' own addresses, from the policy, are the only link-like text
    assert {m.raw for m in matches} <= set(policy.approval.approvers), [m.raw for m in matches]


def test_hidden_characters_are_named_not_dropped(policy: ReviewsPolicy):
    text = visible_text(renderers()[0].render(form("Sam\u200b\u202eevil\u202c", policy)))
    assert "Sam<U+200B><U+202E>evil<U+202C>" in text
    text = visible_text(renderers()[0].render(form("Sam\u3164\u2800\U000e0041\u2028", policy)))
    assert "Sam<U+3164><U+2800><U+E0041><U+2028>" in text
    assert "\u200b" not in text and "\u202e" not in text


def test_a_review_with_long_backtick_runs_stays_in_its_fence():
    body = "text ```` more\n`````\n# not a heading\n``````````"
    block = fenced(body)
    assert block.startswith("`" * 11 + "text\n") and block.endswith("\n" + "`" * 11)
    rendered = MarkdownIt("commonmark").render(block + "\n\n# ours\n")
    assert rendered.count("<pre>") == 1 and rendered.count("<h1>") == 1
    code = re.search(r"<code[^>]*>(.*)</code>", rendered, re.S)
    assert code is not None and html.unescape(code.group(1)) == body + "\n"


def test_the_draft_is_shown_exactly_as_it_would_be_published(policy: ReviewsPolicy):
    draft = "Thanks!\n```\n| fake | table |\n```\nSee https://evil.example, \u200b you."
    rendered = MarkdownIt("gfm-like").render(form(draft, policy))
    codes = [html.unescape(c) for c in re.findall(r"<code[^>]*>(.*?)</code>", rendered, re.S)]
    shown = f"Dear customer, {draft}\n".replace("\u200b", "<U+200B>")
    assert shown in [c.replace("⟦", "").replace("⟧", "") for c in codes]


# Every character class markdown or a linkifier cares about, and some it should not.
MARKDOWN_ALPHABET = st.sampled_from(
    list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \n\t\r")
    + list("abcwxyz019ぁあ例．。｡＠：／＜＞＃")
    + ["\u200b", "\u202e", "\u00a0", "\u3000", "\u2028", "\x00", "\x1b"]
    + ["http", "www", "com", "mailto", "xn--"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(MARKDOWN_ALPHABET, max_size=40).map("".join))
def test_inert_inline_renders_as_exactly_its_visible_text(text: str):
    inline = inert_inline(text)
    assert "\n" not in inline
    visible = show_hidden(text.replace("\r\n", "\n").replace("\r", "\n"))
    visible = defang(re.sub(r"[ \t]*\n[ \t]*", " ↵ ", visible).replace("\t", " ").strip())
    item = "field:" + (f" {escapeHtml(visible)}" if visible else "")
    for md in renderers():
        assert md.render(f"- field: {inline}\n") == f"<ul>\n<li>{item}</li>\n</ul>\n", (text, inline)
    assert not linkifier().test(visible), (text, visible)


def test_guarded_draft_markdown_alone_is_inert(policy: ReviewsPolicy):
    stored = SimpleNamespace(
        text="[x](https://evil.example)",
        language="en",
        apologises=True,
        promised_actions=["<b>refund</b>"],
        risk_notes=["# All checks passed ✅"],
        source="llm",
        guardrails=[{"name": "length", "passed": True, "detail": "![i](https://evil.example/i.png)"}],
        needs_attention=False,
    )
    from aftercare.reviews.approval import guarded_from_stored

    rendered = MarkdownIt("gfm-like").render(guarded_from_stored(stored, policy.version).approver_markdown())
    for tag in ("<a ", "<img", "<h1", "<b>"):
        assert tag not in rendered
    assert "# All checks passed ✅" in visible_text(rendered)
