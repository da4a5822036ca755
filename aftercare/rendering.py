"""Jinja2 templates with strict variables, HTML autoescaping and Babel money/date formatting."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency
from jinja2 import Environment, FileSystemLoader, StrictUndefined, UndefinedError, select_autoescape

from aftercare.errors import TemplateMissingVariable
from aftercare.spine.addresses import clean_name

# Babel locales used for formatting each language we have templates for.
BABEL_LOCALES = {"ja": "ja_JP", "en": "en_US"}


def money(amount: Decimal | int | str, currency: str, locale: str) -> str:
    """Amount in its currency's own precision and symbol for the reader's locale (JPY: no decimals)."""
    return format_currency(Decimal(str(amount)), currency, locale=BABEL_LOCALES.get(locale, locale))


def long_date(value: date | datetime, locale: str) -> str:
    """A date as a customer writes it: '2026年11月24日(火)' / 'Tuesday, November 24, 2026'."""
    loc = BABEL_LOCALES.get(locale, locale)
    if locale == "ja":
        return format_date(value, "y年M月d日(E)", locale=loc)
    return format_date(value, "full", locale=loc)


def ordinal(n: int) -> str:
    """English ordinal: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def single_line(value: str) -> str:
    """Collapse whitespace so a user-supplied string cannot break out of a header line."""
    return " ".join(str(value).split())


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class Renderer:
    """Renders `templates/<locale>/<name>.{subject.txt,txt,html}`."""

    def __init__(self, templates_dir: Path):
        self.env = Environment(
            loader=FileSystemLoader(str(templates_dir)),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["money"] = money
        self.env.filters["long_date"] = long_date
        self.env.filters["ordinal"] = ordinal
        self.env.filters["person"] = clean_name  # a person's name, without control characters
        self.env.filters["long_datetime"] = lambda v, loc: format_datetime(
            v, "medium", locale=BABEL_LOCALES.get(loc, loc)
        )

    def render(self, name: str, locale: str, context: dict[str, Any]) -> str:
        try:
            return self.env.get_template(f"{locale}/{name}").render(**context, locale=locale)
        except UndefinedError as exc:
            raise TemplateMissingVariable(f"template {locale}/{name}: {exc.message}") from exc

    def preload(self, name: str, locale: str) -> None:
        """Compile a mail's three templates now (Jinja keeps them), not on its first render."""
        for suffix in (".subject.txt", ".txt", ".html"):
            self.env.get_template(f"{locale}/{name}{suffix}")

    def render_email(self, name: str, locale: str, context: dict[str, Any]) -> RenderedEmail:
        return RenderedEmail(
            subject=single_line(self.render(f"{name}.subject.txt", locale, context)),
            text=self.render(f"{name}.txt", locale, context),
            html=self.render(f"{name}.html", locale, context),
        )
