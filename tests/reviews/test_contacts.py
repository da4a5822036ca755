"""The contact guardrail flags every host it does not know, however it is written, and leaves
ordinary English and Japanese prose alone. Each sample is appended to a reply that passes."""

from __future__ import annotations

import time

import pytest

from aftercare.reviews.drafting import redact
from aftercare.reviews.policy import ReviewsPolicy
from aftercare.reviews.text import defang, find_contact_details, find_contacts, is_known_tld
from tests.reviews.test_guardrails import EN_OK, JA_OK, ctx, result

# The samples of issue 9 that passed the old check, then hostile spellings of our own.
ISSUE_SAMPLES = ["shop-help.ai/claim", "returns-desk.pw", "rb.gy/x", "help-desk.page", "evil。com"]
HOSTILE = [
    # any top-level domain, with or without a path
    "evil.shop",
    "evil.store/claim",
    "evil.zip",
    "claims.support",
    "EVIL.COM",
    "evil.zzz/claim",  # no such TLD, but a path: a link all the same
    "evil.zzz:8443",  # ... or a port
    "//evil.zzz",  # ... or a scheme-relative start
    # shorteners
    "bit.ly/abc123",
    "t.co/xyz",
    "goo.gl/x",
    "is.gd/x",
    "tinyurl.com/abc",
    "s.id/x",
    "ow.ly/x",
    "buff.ly/x",
    "cutt.ly/x",
    "lnkd.in/x",
    "tiny.cc/x",
    "v.gd/x",
    "bl.ink/x",
    "amzn.to/x",
    # full-width, half-width and ideographic dots; full-width letters
    "evil｡com",
    "evil．com",
    "ｅｖｉｌ．ｃｏｍ",
    "ｅｖｉｌ。ｃｏｍ／ｃｌａｉｍ",
    "evil﹒com",
    # spaced, bracketed and spelled-out dots
    "evil-shop . com",
    "evil-shop\u3000.\u3000com",
    "shop-help. ai/claim",
    "https:\\\\evil.com",
    "evil-shop .com",
    "evil-shop dot com",
    "evil-shop DOT co DOT jp",
    "evil-shop(dot)com",
    "evil-shop (dot) page",
    "evil-shop[.]com",
    "evil-shop［.］com",
    "evil-shop［．］ｃｏｍ",
    "evil-shop{.}com",
    "evil-shop【ドット】com",
    "evil-shop ドット com",
    "evil-shopドットcom",
    "evil-shop ﾄﾞｯﾄ com",
    "evil-shopドットコム",  # .コム is a TLD, and how "example.com" is read out in Japanese
    # IDN and punycode
    "例え.jp",
    "お名前.com",
    "例え．みんな",
    "xn--r8jz45g.xn--zckzah",
    "evil.xn--zckzah",
    # schemes, defanged schemes, www, IP addresses
    "hxxps://evil.example/claim",
    "hxxp://evil[.]com",
    "hxxps[:]//evil[.]com",
    "ftp://files.evil.example",
    "https：／／evil．example",
    "www.evil.zzz",
    "http://1.2.3.4/x",
    "1.2.3.4:8080/claim",
    # hidden characters inside a host do not hide it
    "evil.c\u200bom",
    "ev\u2060il.com/x",
    # look-alikes of the allow-listed contacts
    "https://example.com/pages/contact.evil.com",
    "https://example.com.evil.com/pages/contact",
    "https://example.com/pages/contact@evil.com",
    "https://example.com/pages/contact?next=evil.com",
    "support@example.com.evil.com",
    "owner＠example．com",
    "mailto:owner@evil.example",
    "example.com/claim",  # the shop's own host, but not the allow-listed page
    # Japanese context
    "詳しくはevil.comまで",
    "こちら：evil。com",
    # phones still count
    "call ０９０－９９９９－００００",
]
BENIGN = [
    # English prose with dots that are not hosts
    "e.g. the glaze",
    "i.e. the handle",
    "It is No. 5 in the series.",
    "Item No.5 is back.",
    "The app is at ver.2.0 now.",
    "Update to v2.0.1 please.",
    "You gave it 3.5 stars.",
    "Mr. Tanaka packed it.",
    "Mr.Tanaka packed it.",
    "It arrived.Thanks again.",  # no space, and "thanks" is no TLD: passes (see text.py)
    "We are sorry.Please write.",
    "Made in the U.S.A. and Japan.",
    "Open 10 a.m.-5 p.m. daily.",
    "It weighs approx. 1.5kg.",
    "Cups, saucers, etc. are fine.",
    "Utsuwa Co., Ltd. ships it.",
    "St. Louis is far away.",
    "Our polka dot design is popular.",
    "There is a red dot in the middle.",
    "The dot is missing.",
    "It measures 30.5 x 20.1 cm.",
    "We ship it on Dec. 3.",
    "See Fig. 2 in the leaflet.",
    "Our potter has a Ph.D. in ceramics.",
    "Delivered on 2026.11.30.",
    "1,234.56 yen was charged.",
    "The 2.5-inch mug.",
    "Great mug. So happy. It arrived. Love it.",  # .so, .it and .love are TLDs, but there is a space
    "Shipped to the UK. UK customers love it.",
    "We are sorry. It will not happen again.",
    # Japanese prose
    "ありがとうございました。またのご利用をお待ちしております。",
    "ver.2.0に更新しました。",
    "No.5のマグカップです。",
    "直径は3.5cmです。",
    "約1.5kgです。",
    "水玉ドット柄が人気です。",
    "ドットデザインのマグです。",
    "田中様。ご連絡ありがとうございます。",
    "ご購入ありがとうございました。Amazonでも販売しております。",
    "Aftercare。ありがとうございます。",
    "ｖｅｒ．２．０です。",
    "Ｎｏ．５です。",
    "午前10時～午後5時に営業しております。",
    "商品が届きました．ありがとうございます．",
]
# The allow-listed contacts (policies/reviews.yaml) pass in every spelling.
ALLOWED = [
    "https://example.com/pages/contact",
    "https://example.com/pages/contact/",
    "ｈｔｔｐｓ：／／ｅｘａｍｐｌｅ．ｃｏｍ／ｐａｇｅｓ／ｃｏｎｔａｃｔ",
    "example.com/pages/contact",
    "example.com",
    "Thanks. example.com/pages/contact",  # a sentence end before it does not make it another host
    "support@example.com",
    "ＳＵＰＰＯＲＴ＠ＥＸＡＭＰＬＥ．ＣＯＭ",
    "03-1234-5678",
    "０３－１２３４－５６７８",
    "詳しくは https://example.com/pages/contactをご覧ください。",
    "support@example.comまでご連絡ください。",
]


def test_the_lists_are_long_enough():
    assert len(HOSTILE) >= 30 and len(BENIGN) >= 30


@pytest.mark.parametrize("sample", ISSUE_SAMPLES + HOSTILE)
def test_every_unknown_host_fails(policy: ReviewsPolicy, sample: str):
    r = result(policy, f"{EN_OK} Visit {sample} now.", "contacts_allow_listed")
    assert not r.passed, sample
    assert r.matches and all(m in f"{EN_OK} Visit {sample} now." for m in r.matches)


@pytest.mark.parametrize("sample", BENIGN)
def test_ordinary_prose_passes(policy: ReviewsPolicy, sample: str):
    base, lang = (JA_OK, "ja") if not sample.isascii() else (EN_OK, "en")
    r = result(policy, f"{base} {sample}", "contacts_allow_listed", lang, context=ctx(policy, lang))
    assert r.passed, r.detail


@pytest.mark.parametrize("sample", ALLOWED)
def test_allow_listed_contacts_pass_in_any_spelling(policy: ReviewsPolicy, sample: str):
    r = result(policy, f"{EN_OK} {sample}", "contacts_allow_listed")
    assert r.passed, r.detail


def test_a_known_tld_right_after_a_full_stop_is_flagged():
    """The other direction of "arrived.Thanks": a sentence end without a space before a word that
    is a TLD reads as a host. The reply needs the space."""
    assert is_known_tld("love") and not is_known_tld("thanks")
    assert find_contacts("It arrived.Love it.")["urls"] == ["arrived.love"]
    assert find_contacts("It arrived. Love it.")["urls"] == []
    assert find_contacts("Utsuwa Co.Ltd")["urls"] == ["co.ltd"]  # write "Co., Ltd."


def test_contacts_are_reported_as_written_and_compared_canonically():
    found = find_contact_details("Write to ｅｖｉｌ。ｃｏｍ／ｘ or example [.] co [.] jp, or evil.c\u200bom.")
    assert [(c.kind, c.value, c.raw) for c in found] == [
        ("host", "evil.com/x", "ｅｖｉｌ。ｃｏｍ／ｘ"),
        ("host", "example.co.jp", "example [.] co [.] jp"),
        ("host", "evil.com", "evil.c\u200bom"),
    ]


def test_a_rejected_spelling_leaves_the_host_on_its_left_found():
    # " dot design" is prose (design is not spelled out), "evil.com" before it is a host
    assert find_contacts("see evil.com dot design")["urls"] == ["evil.com"]
    assert find_contacts("our polka dot design")["urls"] == []
    assert find_contacts("詳しくはevil.comまで")["urls"] == ["evil.com"]


def test_emails_and_phones_keep_working():
    found = find_contacts("Mail support@example.com or call 03-1234-5678 (not 2026-11-30).")
    assert found == {"emails": ["support@example.com"], "urls": [], "phones": ["03-1234-5678"]}


def test_the_highlighted_draft_marks_a_host_as_written(policy: ReviewsPolicy):
    from aftercare.reviews.guardrails import draft_with_guardrails
    from tests.reviews.test_guardrails import ScriptedDrafter

    drafter = ScriptedDrafter(EN_OK + " See ｅｖｉｌ。ｃｏｍ／claim.", policy=policy)
    guarded = draft_with_guardrails(ctx(policy).request, drafter=drafter, policy=policy, max_attempts=1)
    assert "⟦ｅｖｉｌ。ｃｏｍ／claim⟧" in guarded.highlighted_text()


def test_defang_leaves_nothing_linkable():
    assert defang("https://evil.com/x and www.evil.com, 1.2.3.4") == (
        "https[://]evil[.]com/x and www[.]evil[.]com, 1[.]2[.]3[.]4"
    )
    assert defang("evil。com") == "evil[。]com"
    assert defang("ありがとう。またね 3.5 stars") == "ありがとう。またね 3.5 stars"


@pytest.mark.parametrize(
    "unit", ["a.", "a-", "1.2.", "ab.cd.", "ドット", "a dot ", "http", "www.", "1 (", "a@b."]
)
def test_long_hostile_runs_take_linear_time(unit: str):
    """Twice the longest review, of runs that made patterns backtrack: quadratic would take minutes."""
    text = unit * (40_000 // len(unit))
    find_contacts("warm up the suffix list: x.com")
    started = time.perf_counter()
    find_contact_details(text)
    redact(text, None)
    assert time.perf_counter() - started < 3
