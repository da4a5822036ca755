"""Neutral wording, linted: every review-request and reminder template (ja, en; subject, text, HTML
and the partials they include), every text in policies/review_requests.yaml, and the mails as they
are rendered for each destination, are free of gating and incentives: no star count asked for, no
"if you are happy / loved it", no diversion of unhappy customers, nothing offered for a review
(16 CFR 465; Google's and Trustpilot's policies; ../shared/COMPLIANCE.md)."""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from aftercare.rendering import Renderer
from aftercare.settings import PROJECT_ROOT

TEMPLATES = PROJECT_ROOT / "templates"
POLICY = PROJECT_ROOT / "policies" / "review_requests.yaml"
NAMES = ("review_request", "review_reminder", "_review_request_products")

# What a gating or incentivised request says, in either language (matched after NFKC + casefold).
FORBIDDEN = [
    # Asking for a rating.
    r"\b(5|five)[\s\-]*stars?\b",
    r"★\s*★\s*★\s*★\s*★",
    r"⭐",
    r"\b(positive|good|great|glowing|favorable|favourable)\s+(review|rating|feedback)",
    r"星\s*(5|五)",
    r"(5|五)\s*つ?\s*星",
    r"★\s*5",
    r"高評価",
    r"(良い|よい|いい)\s*(レビュー|評価|口コミ|クチコミ)",
    # Gating: asking only the happy ones, sending the others elsewhere.
    r"if\s+you\s+(are|were|'re|feel)\s+(happy|satisfied|pleased|delighted)",
    r"if\s+you\s+(loved|liked|enjoyed)",
    r"if\s+(you\s+are|you're)\s+not\s+(happy|satisfied)",
    r"(unhappy|not\s+satisfied|dissatisfied).{0,40}(contact|write to|email)\s+us",
    r"happy\s+customers?",
    r"満足\s*(いただけ|頂け|して\s*いただけ)",
    r"ご満足",
    r"お気に(召し|入り).{0,6}(ましたら|たら|れば)",
    r"気に入って\s*(いただけ|頂け)",
    r"(ご不満|不満).{0,20}(ございましたら|場合は|あれば)",
    # Incentives of any kind (none is allowed for Google or Trustpilot, none conditioned ever).
    r"coupon",
    r"discount",
    r"voucher",
    r"\b\d+\s*%\s*off\b",
    r"reward",
    r"\bpoints?\b",
    r"free\s+(gift|shipping)",
    r"prize|raffle|sweepstake|giveaway",
    r"クーポン",
    r"割引",
    r"ポイント",
    r"特典",
    r"プレゼント",
    r"抽選",
    r"値引",
]
_PATTERNS = [re.compile(p) for p in FORBIDDEN]


def findings(text: str) -> list[str]:
    """Each forbidden pattern found in `text`, with what it matched."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [f"{p.pattern!r}: {m.group(0)!r}" for p in _PATTERNS for m in [p.search(folded)] if m]


def template_files() -> list[Path]:
    found = sorted(
        p for lang in ("ja", "en") for p in (TEMPLATES / lang).iterdir() if p.name.startswith(NAMES)
    )
    return found


def policy_texts(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every string in the policy file (values and keys), with where it is."""
    if isinstance(node, dict):
        return [
            t for k, v in node.items() for t in [(f"{where}.{k}", str(k)), *policy_texts(v, f"{where}.{k}")]
        ]
    if isinstance(node, list):
        return [t for i, v in enumerate(node) for t in policy_texts(v, f"{where}[{i}]")]
    return [(where, str(node))] if isinstance(node, str) else []


def test_every_request_template_is_linted():
    names = {(p.parent.name, p.name) for p in template_files()}
    for lang in ("ja", "en"):
        for kind in ("review_request", "review_reminder"):
            for suffix in (".subject.txt", ".txt", ".html"):
                assert (lang, kind + suffix) in names
        assert (lang, "_review_request_products.txt") in names


@pytest.mark.parametrize("path", template_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_template_is_neutral(path: Path):
    assert findings(path.read_text(encoding="utf-8")) == []


def test_the_policy_is_neutral():
    texts = policy_texts(yaml.safe_load(POLICY.read_text(encoding="utf-8")))
    assert texts  # the file was read
    bad = [(where, found) for where, text in texts for found in findings(text)]
    assert bad == []


def context(destination: str, *, reminder: bool) -> dict[str, Any]:
    return {
        "shop_name": "aftercare demo shop",
        "customer_name": "山田 花子",
        "order_name": "#1101",
        "products": [{"title": "有田焼 マグカップ", "variant": "藍", "url": "https://s.example/r/t?item=1"}],
        "more_products": 2,
        "destination": destination,
        "order_url": "https://s.example/r/t",
        "closes_on": date(2027, 1, 31),
        "reminder": reminder,
        "is_test": True,
        "shop": {
            "name": "aftercare demo shop",
            "sender": "aftercare demo shop",
            "postal_address": "Tokyo",
            "contact_email": "support@shop.example",
            "contact_phone": None,
        },
        "unsubscribe_url": "https://s.example/unsubscribe/x",
    }


@pytest.mark.parametrize("lang", ["ja", "en"])
@pytest.mark.parametrize("name", ["review_request", "review_reminder"])
@pytest.mark.parametrize("destination", ["own", "google"])
def test_the_rendered_mail_is_neutral(lang, name, destination):
    mail = Renderer(TEMPLATES).render_email(
        name, lang, context(destination, reminder=name == "review_reminder")
    )
    # The footer is the dispatcher's and is linted with the survey; this mail's own words are here.
    for part in (mail.subject, mail.text, mail.html):
        assert findings(part) == []
    assert ("有田焼 マグカップ" in mail.text) and ("https://s.example/r/t" in mail.text)


@pytest.mark.parametrize(
    "bad",
    [
        "If you loved your order, please leave us 5 stars!",
        "Happy with your purchase? If you are happy, review us; if not, contact us.",
        "Leave a ★★★★★ review",
        "Get a 10% discount code for your review",
        "Review us and earn 100 points",
        "ご満足いただけましたら、レビューをお願いいたします",
        "満足いただけましたら星5つで",
        "高評価のレビューをお待ちしております",
        "レビューを書いてクーポンをもらおう",
        "ご不満な場合は、レビューではなくこちらへご連絡ください",
        "お気に召しましたらレビューをお願いします",
        "ＰＯＩＮＴＳ",  # full-width letters are read as ASCII
    ],
)
def test_the_lint_catches_gating_and_incentives(bad):
    assert findings(bad) != []


@pytest.mark.parametrize(
    "fine",
    [
        "Write about what worked for you and what did not: an honest review helps the next customer choose.",
        "良かった点も、気になった点も、そのままお書きください。",
        "Writing a review is entirely up to you.",
    ],
)
def test_the_lint_leaves_neutral_words_alone(fine):
    assert findings(fine) == []
