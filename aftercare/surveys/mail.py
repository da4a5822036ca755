"""The survey mail: "How was your order?" in the customer's language, the order and its items, the
score as one link per score (1-5, or 0-10 when the policy asks for NPS), and the footer the law
asks a feedback mail to show. Every link carries the survey's signed token (answers.survey_token),
which expires when the survey closes; opening a link records nothing (the page does, on POST).

`survey_composer(policy)` makes the composer the dispatcher calls (aftercare.contact.compose): a
BatchComposer that reads the items of every order of the dispatcher's batch in one query;
`compose_survey` is that composer with the shipped policies/surveys.yaml."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlmodel import Session

from aftercare.contact.compose import BatchComposer, ComposeContext, Composed
from aftercare.models import Order, OrderLine, Touchpoint
from aftercare.orders import shipping
from aftercare.settings import PROJECT_ROOT
from aftercare.surveys.answers import KIND, closes_at, survey_token, survey_url
from aftercare.surveys.policy import SurveyPolicy, load_survey_policy

TEMPLATE = KIND  # templates/<lang>/delivery_survey.{subject.txt,txt,html}
# The mail lists this many of the order's items, then says how many more there are.
MAX_LINES_SHOWN = 5


def order_lines(
    session: Session, touchpoints: Sequence[Touchpoint], _orders: Mapping[int, Order], _now: datetime
) -> dict[int, list[OrderLine]]:
    """The items of these surveys' orders, by order id, in the order's own order: one query (the
    composer's `prepare`)."""
    return shipping.lines_of(session, (t.order_id for t in touchpoints))


def mail_context(ctx: ComposeContext, policy: SurveyPolicy) -> dict[str, Any]:
    """What the survey templates read (`ctx.prepared`: `order_lines` of the batch)."""
    touchpoint, order = ctx.touchpoint, ctx.order
    if touchpoint.id is None or order.id is None:
        raise ValueError("the survey's touchpoint and order must be stored before it is composed")
    scale = policy.the_scale
    closing = closes_at(ctx.now, policy)
    token = survey_token(
        ctx.link_secret, touchpoint_id=touchpoint.id, order_id=order.id, scale=scale.name, closes_at=closing
    )
    lines: list[OrderLine] = ctx.prepared.get(order.id, [])
    shown = [
        {"title": li.title, "variant": li.variant_title, "quantity": li.quantity}
        for li in lines[:MAX_LINES_SHOWN]
    ]
    return {
        "shop_name": ctx.shop.get("name") or "",
        "customer_name": ctx.recipient.name,
        "order_name": order.name,
        "lines": shown,
        "more_lines": max(0, len(lines) - MAX_LINES_SHOWN),
        "scale": scale.name,
        "scores": [{"score": n, "url": survey_url(ctx.base_url, token, n)} for n in scale.scores],
        "low": scale.low,
        "high": scale.high,
        "page_url": survey_url(ctx.base_url, token),
        # The last whole day shown: the links work until the same time of the next day (UTC), so the
        # date holds in the customer's own zone too.
        "closes_on": (closing - timedelta(days=1)).date(),
        "is_test": order.is_test,
        **ctx.footer_vars(),
    }


def survey_composer(policy: SurveyPolicy) -> BatchComposer:
    """The composer for `delivery_survey` touchpoints under `policy`."""

    def compose(ctx: ComposeContext) -> Composed:
        rendered = ctx.renderer.render_email(TEMPLATE, ctx.recipient.locale, mail_context(ctx, policy))
        return Composed(subject=rendered.subject, text_body=rendered.text, html_body=rendered.html)

    return BatchComposer(prepare=order_lines, compose=compose)


@cache
def _shipped(policies_dir: Path) -> BatchComposer:
    return survey_composer(load_survey_policy(policies_dir))


def shipped_survey_composer() -> BatchComposer:
    """The survey composer under the shipped policies/surveys.yaml. Where the policies live elsewhere
    (AFTERCARE_POLICIES_DIR), wire `survey_composer(load_survey_policy(settings.policies_dir))`."""
    return _shipped(PROJECT_ROOT / "policies")


def compose_survey(ctx: ComposeContext) -> Composed:
    """The survey mail under the shipped policies/surveys.yaml, for one touchpoint on its own
    (`shipped_survey_composer` is the same composer, for a batch)."""
    composed = shipped_survey_composer()(ctx)
    assert isinstance(composed, Composed)
    return composed
