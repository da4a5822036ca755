"""The survey report: response rate (answered / sent), CSAT (% of 4-5 on the 1-5 scale) or NPS (%
of 9-10 minus % of 0-6 on the 0-10 scale), and the comments; in total, by ISO week and by product.

Counted by the week a survey was sent (a cohort): a survey sent in week 47 and answered in week 48
counts in week 47, so each week's response rate is answered over sent of the same surveys. A
survey counts once, with the answer that counts (its latest). Sent means the outbox row of the
survey's touchpoint was sent; test orders are left out. A product is a line's title: a survey
counts for every product of its order. Surveys sent under either scale are each reported under
their own measure (CSAT or NPS) when the policy changed within the window.

`Report.as_markdown()` is what ops read (the CLI, a Prefect artifact): what customers wrote is
shown as plain text there (Markdown and HTML escaped, links defanged), never as markup."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from aftercare.models import Order, OrderLine, OutboxMessage, OutboxStatus, SurveyResponse, Touchpoint
from aftercare.surveys.answers import KIND

# The comments the Markdown shows (the JSON has them all).
MARKDOWN_COMMENTS = 200


def iso_week(moment: datetime, zone: ZoneInfo) -> str:
    year, week, _ = moment.astimezone(zone).isocalendar()
    return f"{year}-W{week:02d}"


@dataclass
class Tally:
    """One row of the report: a week, a product, or the total."""

    label: str
    sent: int = 0
    answered: int = 0
    csat_answers: int = 0
    satisfied: int = 0  # 4 or 5 of 5
    nps_answers: int = 0
    promoters: int = 0  # 9 or 10 of 10
    detractors: int = 0  # 0 to 6 of 10

    @property
    def response_rate(self) -> float | None:
        return round(100 * self.answered / self.sent, 1) if self.sent else None

    @property
    def csat(self) -> float | None:
        return round(100 * self.satisfied / self.csat_answers, 1) if self.csat_answers else None

    @property
    def nps(self) -> float | None:
        if not self.nps_answers:
            return None
        return round(100 * (self.promoters - self.detractors) / self.nps_answers, 1)

    def count(self, answer: SurveyResponse | None) -> None:
        self.sent += 1
        if answer is None:
            return
        self.answered += 1
        if answer.scale == "nps10":
            self.nps_answers += 1
            self.promoters += answer.score >= 9
            self.detractors += answer.score <= 6
        else:
            self.csat_answers += 1
            self.satisfied += answer.score >= 4

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "response_rate": self.response_rate, "csat": self.csat, "nps": self.nps}


@dataclass
class Comment:
    week: str
    order_name: str
    products: list[str]
    scale: str
    score: int
    reasons: list[str]
    comment: str
    answered_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "answered_at": self.answered_at.isoformat()}


@dataclass
class Report:
    now: datetime
    weeks: int
    since: datetime
    zone: str
    total: Tally
    by_week: list[Tally]
    by_product: list[Tally]
    comments: list[Comment] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "weeks": self.weeks,
            "since": self.since.isoformat(),
            "zone": self.zone,
            "counted_by": "the week the survey was sent",
            "total": self.total.as_dict(),
            "by_week": [t.as_dict() for t in self.by_week],
            "by_product": [t.as_dict() for t in self.by_product],
            "comments": [c.as_dict() for c in self.comments],
        }

    def as_markdown(self) -> str:
        uses_nps = self.total.nps_answers > 0
        uses_csat = self.total.csat_answers > 0 or not uses_nps
        head = ["", "sent", "answered", "response rate"]
        head += ["CSAT (4-5 of 5)"] * uses_csat + ["NPS"] * uses_nps

        def row(t: Tally) -> str:
            cells = [md_text(t.label), str(t.sent), str(t.answered), _pct(t.response_rate)]
            cells += [_pct(t.csat)] * uses_csat + [_signed(t.nps)] * uses_nps
            return "| " + " | ".join(cells) + " |"

        def table(title: str, tallies: list[Tally]) -> list[str]:
            out = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += [row(t) for t in tallies] or ["| (none) |" + " |" * (len(head) - 1)]
            return [*out, ""]

        local_now = self.now.astimezone(ZoneInfo(self.zone))
        lines = [
            f"# Survey report: {self.weeks} ISO week(s) to {local_now:%Y-%m-%d %H:%M} ({md_text(self.zone)})",
            "",
            "Counted by the week each survey was sent; a survey counts once, with its latest answer.",
            "",
            *table("Total", [self.total]),
            *table("By week", self.by_week),
            *table("By product", self.by_product),
            "## Comments",
            "",
        ]
        if not self.comments:
            lines.append("(none)")
        for c in self.comments[:MARKDOWN_COMMENTS]:
            reasons = f" ({', '.join(md_text(r) for r in c.reasons)})" if c.reasons else ""
            lines.append(
                f"- **{c.score}** of {'10' if c.scale == 'nps10' else '5'}, {md_text(c.order_name)}, "
                f"{c.week}{reasons}: {md_text(c.comment)}"
            )
        if len(self.comments) > MARKDOWN_COMMENTS:
            lines.append(
                f"- ... and {len(self.comments) - MARKDOWN_COMMENTS} more (`aftercare surveys report --json`)"
            )
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def md_text(text: str) -> str:
    """Text a customer wrote, safe in a Markdown line or table cell: one line, Markdown's
    punctuation escaped, HTML's characters as entities, links defanged (no image or link loads)."""
    one_line = " ".join(str(text).split())
    one_line = one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    one_line = re.sub(r"(?i)://", "[:]//", one_line)
    one_line = re.sub(r"(?i)\bwww\.", "www[.]", one_line)
    return _MD_SPECIAL.sub(r"\\\1", one_line)


def window_start(now: datetime, weeks: int, zone: ZoneInfo) -> datetime:
    """Monday 00:00 (in `zone`) of the ISO week `weeks - 1` weeks before the one holding `now`."""
    local = now.astimezone(zone)
    monday = (local - timedelta(days=local.weekday())).date() - timedelta(weeks=weeks - 1)
    return datetime(monday.year, monday.month, monday.day, tzinfo=zone).astimezone(UTC)


def survey_report(session: Session, now: datetime, weeks: int, *, tz: str = "UTC") -> Report:
    """The report over the surveys sent in the last `weeks` ISO weeks (the current one included),
    weeks counted in the time zone `tz` (the CLI passes the shop's)."""
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    zone = ZoneInfo(tz)
    since = window_start(now, weeks, zone)
    sent = session.exec(
        select(Touchpoint.id, Order.id, Order.name, OutboxMessage.sent_at)
        .join(OutboxMessage, OutboxMessage.touchpoint_id == Touchpoint.id)  # type: ignore[arg-type]
        .join(Order, Order.id == Touchpoint.order_id)  # type: ignore[arg-type]
        .where(
            Touchpoint.kind == KIND,
            OutboxMessage.status == OutboxStatus.SENT,
            OutboxMessage.sent_at >= since,  # type: ignore[operator]
            OutboxMessage.sent_at <= now,  # type: ignore[operator]
            Order.is_test == False,  # noqa: E712
        )
    ).all()
    touchpoint_ids = [tp for tp, *_ in sent]
    order_ids = sorted({order for _, order, *_ in sent})
    latest: dict[int, SurveyResponse] = {}
    products: dict[int, list[str]] = defaultdict(list)
    for chunk in _chunks(touchpoint_ids):
        for answer in session.exec(
            select(SurveyResponse).where(SurveyResponse.touchpoint_id.in_(chunk))  # type: ignore[attr-defined]
        ):
            held = latest.get(answer.touchpoint_id)
            # Answered by `now`: a report for a past moment shows what was known then.
            if answer.answered_at <= now and (held is None or answer.seq > held.seq):
                latest[answer.touchpoint_id] = answer
    for chunk in _chunks(order_ids):
        for order_id, title in session.exec(
            select(OrderLine.order_id, OrderLine.title)
            .where(OrderLine.order_id.in_(chunk))  # type: ignore[attr-defined]
            .order_by(OrderLine.order_id, OrderLine.position, OrderLine.id)  # type: ignore[arg-type]
        ):
            if title not in products[order_id]:
                products[order_id].append(title)

    total = Tally("total")
    # Every week of the window has a row, surveys or not.
    by_week: dict[str, Tally] = {}
    for n in range(weeks):
        label = iso_week(since + timedelta(weeks=n, days=3), zone)
        by_week[label] = Tally(label)
    by_product: dict[str, Tally] = {}
    comments: list[Comment] = []
    for tp, order_id, order_name, sent_at in sent:
        week = iso_week(sent_at, zone)
        answer = latest.get(tp)
        total.count(answer)
        by_week.setdefault(week, Tally(week)).count(answer)
        for product in products[order_id]:
            by_product.setdefault(product, Tally(product)).count(answer)
        if answer is not None and answer.comment:
            comments.append(
                Comment(
                    week=week,
                    order_name=order_name,
                    products=products[order_id],
                    scale=answer.scale,
                    score=answer.score,
                    reasons=list(answer.reasons or []),
                    comment=answer.comment,
                    answered_at=answer.answered_at,
                )
            )
    comments.sort(key=lambda c: c.answered_at, reverse=True)
    return Report(
        now=now,
        weeks=weeks,
        since=since,
        zone=tz,
        total=total,
        by_week=[by_week[w] for w in sorted(by_week)],
        by_product=sorted(by_product.values(), key=lambda t: (-t.sent, t.label)),
        comments=comments,
    )


def _chunks(ids: list[int], size: int = 500) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]
