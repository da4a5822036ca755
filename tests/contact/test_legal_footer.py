"""What the law asks a mail the customer did not ask for to show, checked on every such template.

Japan's 特定電子メール法 (Art 4 and its ordinance): the sender's name, the sender's postal address, a
contact for complaints and inquiries, and the opt-out address or URL with the words that the
recipient may refuse right beside it. The US CAN-SPAM Act: a valid physical postal address and a clear
way to opt out. Both languages are held to all of it.

The templates checked are found, not listed: every `templates/<lang>/<kind>.{txt,html}` whose kind
is feedback or promotional in policies/contact.yaml (the survey's `delivery_survey.*` as soon as it
exists), rendered with the shop of policies/shop.yaml and a sentinel unsubscribe URL; variables the
test cannot know are rendered as empty, so only the footer's own values decide. The footer partial
itself is checked through a small template of this test's own that includes it as a mail does. And
the check is shown to fail: each required element removed from the footer, one at a time, is caught."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from jinja2 import ChainableUndefined, ChoiceLoader, DictLoader, FileSystemLoader, Undefined

from aftercare.contact.policy import MessageClass, load_contact_policy
from aftercare.contact.sender import ShopPolicy, load_shop_policy
from aftercare.rendering import Renderer
from aftercare.settings import PROJECT_ROOT

TEMPLATES = PROJECT_ROOT / "templates"
POLICIES = PROJECT_ROOT / "policies"
LOCALES = ("ja", "en")
URL = "https://shop.example/unsubscribe/SENTINEL-token.Abc-123_xyz"
# The words that tell the reader they may refuse further mail, and how far from the link (in
# characters of what the reader sees) they may stand to count as "right beside it".
REFUSAL_WORDS = {
    "ja": ("受信を希望されない", "配信を停止", "配信停止", "受信を拒否", "受信拒否"),
    "en": ("unsubscribe", "opt out", "opt-out"),
}
BESIDE = 160
LINK_MARK = "\u27e6LINK\u27e7"


def non_transactional_kinds() -> set[str]:
    policy = load_contact_policy(POLICIES / "contact.yaml")
    return {
        kind
        for kind, rule in policy.kinds.items()
        if rule.message_class in (MessageClass.FEEDBACK, MessageClass.PROMOTIONAL)
    }


def mail_templates(root: Path = TEMPLATES) -> list[tuple[str, str]]:
    """(locale, file name) of every body template of a feedback or promotional kind."""
    kinds = non_transactional_kinds()
    found = []
    for locale in LOCALES:
        for path in sorted((root / locale).iterdir()):
            kind = path.name.split(".", 1)[0]
            if (
                kind in kinds
                and path.name.endswith((".txt", ".html"))
                and not path.name.endswith(".subject.txt")
            ):
                found.append((locale, path.name))
    return found


# -- rendering ------------------------------------------------------------------------------------


class Anything(ChainableUndefined):
    """A variable this test cannot know (an order, a score link): renders as nothing, compares as
    false, counts as zero, so a template renders with only its footer's values real."""

    def _false(self, *_: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]

    def _self(self, *_: Any) -> Anything:
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __mod__ = _self  # type: ignore[assignment]

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0


def _tolerant(f: Any) -> Any:
    def filter_(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, Undefined) or any(isinstance(a, Undefined) for a in args):
            return ""
        return f(value, *args, **kwargs)

    return filter_


def renderer(root: Path = TEMPLATES, own: dict[str, str] | None = None) -> Renderer:
    """The project's Renderer (its filters, autoescape) over `root`, lenient with unknown variables,
    with `own` templates of the test beside the real ones."""
    r = Renderer(root)
    r.env.loader = ChoiceLoader([DictLoader(own or {}), FileSystemLoader(str(root))])
    r.env.undefined = Anything
    for name in ("money", "long_date", "long_datetime", "ordinal", "person"):
        r.env.filters[name] = _tolerant(r.env.filters[name])
    return r


def shop_policy() -> ShopPolicy:
    return load_shop_policy(POLICIES)


def render(r: Renderer, name: str, locale: str, shop: dict[str, Any] | None = None) -> str:
    context = {"shop": shop or shop_policy().for_locale(locale), "unsubscribe_url": URL}
    return r.render(name, locale, context)


# -- the check ------------------------------------------------------------------------------------


class _Visible(HTMLParser):
    """What a reader sees of an HTML mail, with a mark where the unsubscribe link starts."""

    def __init__(self, url: str):
        super().__init__(convert_charrefs=True)
        self.url = url
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        if tag == "a" and dict(attrs).get("href") == self.url:
            self.parts.append(LINK_MARK)
        if tag in ("br", "p", "div", "tr", "li", "hr"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def legal_problems(
    rendered: str, *, html: bool, locale: str, shop: dict[str, Any], url: str = URL
) -> list[str]:
    """What the mail lacks of what the law asks it to show ([] when nothing)."""
    if html:
        parser = _Visible(url)
        parser.feed(rendered)
        parser.close()
        text = "".join(parser.parts)
    else:
        text = rendered.replace(url, LINK_MARK, 1)
    # The URL's own words ("/unsubscribe/") are not words the reader is told: only the text around it.
    text = text.replace(url, "")
    link_at = text.find(LINK_MARK)
    flat = re.sub(r"\s+", " ", text)
    problems = []
    for field, what in (
        ("sender", "sender"),
        ("postal_address", "postal address"),
        ("contact_email", "contact"),
    ):
        value = (shop.get(field) or "").strip()
        if not value or re.sub(r"\s+", " ", value) not in flat:
            problems.append(f"{what} missing")
    if link_at < 0:
        problems.append("unsubscribe link missing")
    else:
        window = text[max(0, link_at - BESIDE) : link_at + len(LINK_MARK) + BESIDE].lower()
        if not any(word in window for word in REFUSAL_WORDS[locale]):
            problems.append("refusal words missing beside the unsubscribe link")
    return problems


# -- every non-transactional template, in every language ------------------------------------------


# The test's own mail: a body, then the footer included as every feedback mail includes it.
PROBE = {
    f"{loc}/_legal_probe.{ext}": (
        ("<!doctype html><html><body><p>本文 / body</p>" if ext == "html" else "本文 / body\n")
        + f"{{% include locale ~ '/_feedback_footer.{ext}' %}}"
        + ("</body></html>" if ext == "html" else "")
    )
    for loc in LOCALES
    for ext in ("txt", "html")
}


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("ext", ["txt", "html"])
def test_the_footer_partial_shows_what_the_law_asks(locale: str, ext: str) -> None:
    rendered = render(renderer(own=PROBE), f"_legal_probe.{ext}", locale)
    assert (
        legal_problems(rendered, html=ext == "html", locale=locale, shop=shop_policy().for_locale(locale))
        == []
    )


def _ids() -> list[str]:
    return [f"{loc}/{name}" for loc, name in mail_templates()] or ["none-yet"]


@pytest.mark.parametrize("template", _ids())
def test_every_feedback_and_promotional_template_shows_what_the_law_asks(template: str) -> None:
    if template == "none-yet":
        pytest.skip("no feedback or promotional template exists yet (the footer partial is checked above)")
    locale, name = template.split("/", 1)
    rendered = render(renderer(), name, locale)
    problems = legal_problems(
        rendered, html=name.endswith(".html"), locale=locale, shop=shop_policy().for_locale(locale)
    )
    assert problems == [], f"{template}: {problems}"


def test_every_non_transactional_kind_with_a_template_has_it_in_both_languages() -> None:
    found = mail_templates()
    for locale, name in found:
        for other in LOCALES:
            assert (TEMPLATES / other / name).exists(), f"{locale}/{name} has no {other}/{name}"


def test_templates_are_found_by_their_kinds_class(tmp_path: Path) -> None:
    """A survey template added later is picked up; a transactional one and subjects are not."""
    for locale in LOCALES:
        (tmp_path / locale).mkdir()
        for name in (
            "delivery_survey.txt",
            "delivery_survey.html",
            "delivery_survey.subject.txt",
            "review_reminder.txt",
            "order_confirmation.txt",
            "_feedback_footer.txt",
        ):
            (tmp_path / locale / name).write_text("x", encoding="utf-8")
    assert mail_templates(tmp_path) == [
        (loc, name)
        for loc in LOCALES
        for name in ("delivery_survey.html", "delivery_survey.txt", "review_reminder.txt")
    ]


def test_the_shop_policy_has_every_field_in_both_languages() -> None:
    shop = shop_policy()
    for locale in LOCALES:
        values = shop.for_locale(locale)
        for field in ("name", "sender", "postal_address", "contact_email"):
            assert (values[field] or "").strip(), (locale, field)
    assert shop.for_locale("ja")["postal_address"] != shop.for_locale("en")["postal_address"]


# -- the check can fail ---------------------------------------------------------------------------


# What to take out of the footer, as a change to its source, and what the check must then say.
REMOVALS = {
    "sender": (r"[^\n]*shop\.sender[^\n]*\n", "sender missing"),
    "postal_address": (r"[^\n]*shop\.postal_address[^\n]*\n", "postal address missing"),
    "contact": (r"[^\n]*shop\.contact_email[^\n]*\n", "contact missing"),
    "link": (r"\{\{ unsubscribe_url \}\}", "unsubscribe link missing"),
}


def _footer_copy(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    for locale in LOCALES:
        (root / locale).mkdir(parents=True)
        for ext in ("txt", "html"):
            shutil.copy(
                TEMPLATES / locale / f"_feedback_footer.{ext}", root / locale / f"_feedback_footer.{ext}"
            )
    return root


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("ext", ["txt", "html"])
@pytest.mark.parametrize("removed", [*REMOVALS, "refusal_words"])
def test_the_check_fails_when_the_footer_loses_an_element(
    tmp_path: Path, locale: str, ext: str, removed: str
) -> None:
    root = _footer_copy(tmp_path)
    footer = root / locale / f"_feedback_footer.{ext}"
    source = footer.read_text(encoding="utf-8")
    if removed == "refusal_words":
        # Only in the words of the footer: not inside a Jinja tag or an HTML tag (the URL variable).
        parts = re.split(r"(\{\{.*?\}\}|\{%.*?%\}|<[^>]*>)", source)
        for i in range(0, len(parts), 2):
            for word in REFUSAL_WORDS[locale]:
                parts[i] = re.sub(re.escape(word), "…", parts[i], flags=re.IGNORECASE)
        changed = "".join(parts)
        expected = "refusal words missing beside the unsubscribe link"
    else:
        pattern, expected = REMOVALS[removed]
        changed = re.sub(pattern, "", source)
    assert changed != source, f"nothing to remove for {removed} in {locale}/{footer.name}"
    footer.write_text(changed, encoding="utf-8")

    rendered = render(renderer(root, own=PROBE), f"_legal_probe.{ext}", locale)

    assert expected in legal_problems(
        rendered, html=ext == "html", locale=locale, shop=shop_policy().for_locale(locale)
    )


@pytest.mark.parametrize("locale", LOCALES)
def test_the_check_fails_when_the_shop_lacks_a_value_or_the_words_stand_far_away(locale: str) -> None:
    shop = shop_policy().for_locale(locale)
    blank = {**shop, "postal_address": ""}
    rendered = render(renderer(own=PROBE), "_legal_probe.txt", locale, shop=blank)
    assert "postal address missing" in legal_problems(rendered, html=False, locale=locale, shop=shop)
    words = REFUSAL_WORDS[locale][0]
    far = (
        f"{shop['sender']} {shop['postal_address']} {shop['contact_email']}\n{words}\n"
        + "x" * 400
        + f"\n{URL}\n"
    )
    assert legal_problems(far, html=False, locale=locale, shop=shop) == [
        "refusal words missing beside the unsubscribe link"
    ]
    # An HTML mail whose link goes elsewhere, with the sentinel only as text, has no working link.
    elsewhere = f"<p>{shop['sender']} {shop['postal_address']} {shop['contact_email']} {words} <a href='https://x.example'>{URL}</a></p>"
    assert legal_problems(elsewhere, html=True, locale=locale, shop=shop) == ["unsubscribe link missing"]


def test_html_values_are_escaped_and_still_found() -> None:
    """A shop name with markup in it is shown as text (autoescape), and the check reads what a
    reader sees, not the source."""
    shop = {**shop_policy().for_locale("en"), "sender": "Tom & Jerry's <b>Shop</b>"}
    rendered = render(renderer(own=PROBE), "_legal_probe.html", "en", shop=shop)
    assert "<b>Shop</b>" not in rendered and "&lt;b&gt;" in rendered
    assert legal_problems(rendered, html=True, locale="en", shop=shop) == []
