"""How a timed message is written: the contract between the dispatcher (which decides when a due
touchpoint may go out, `rules.decide`, and puts it in the outbox) and the wing that owns the
message's words (surveys today; review requests next).

One composer per touchpoint kind, in a `Composers` mapping handed to the dispatcher. The dispatcher
builds a `ComposeContext` (the order, the recipient, the unsubscribe URL for the kind's list, the
shop as the law asks a feedback mail to show it, the time) and gets back `Composed`; it never
renders a kind it has no composer for (that touchpoint stays planned, and `aftercare touchpoints
due` says so).

A composer may instead answer `NotMailed`: the rules let the message go, but the wing that owns its
words finds nothing to send (`skipped`: e.g. every product of the order was reviewed lately) or has
handed it to another sender (`done`: e.g. a review platform mails its own invitation). The
dispatcher then settles the touchpoint with that reason and puts nothing in the outbox; a `done`
one counts in the customer's frequency caps like a mail of ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlmodel import Session

from aftercare.models import Order, Touchpoint
from aftercare.rendering import Renderer


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    email_key: str
    shop_domain: str
    locale: str  # a language we have templates for (ja, en)


@dataclass(frozen=True)
class ComposeContext:
    session: Session
    touchpoint: Touchpoint
    order: Order
    recipient: Recipient
    renderer: Renderer
    now: datetime
    list_name: str  # the list this kind is left by ("surveys")
    unsubscribe_url: str  # the visible link in the body (a page: GET changes nothing)
    # The shop as the footer shows it, in the recipient's language (`sender.ShopPolicy.for_locale`).
    shop: dict[str, str | None]
    base_url: str  # where customers reach our pages (Settings.customer_base_url), no trailing slash
    link_secret: str  # signs this installation's customer links (aftercare.signing; Settings.link_secret)

    def footer_vars(self) -> dict[str, Any]:
        """What `{% include locale ~ "/_feedback_footer.txt" %}` (and .html) needs."""
        return {"shop": self.shop, "unsubscribe_url": self.unsubscribe_url}


@dataclass(frozen=True)
class Composed:
    subject: str
    text_body: str
    html_body: str
    # Added to the kind's own (the dispatcher adds List-Unsubscribe and List-Unsubscribe-Post).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NotMailed:
    """A composer's answer when no mail of ours goes for this touchpoint (see the module docstring)."""

    status: Literal["skipped", "done"]
    reason: str


Composer = Callable[[ComposeContext], Composed | NotMailed]
# Kind -> composer. Wired above the wings (the router, like aftercare/processing.py), so contact never
# imports surveys: e.g. {"delivery_survey": aftercare.surveys.mail.compose_survey}.
Composers = Mapping[str, Composer]
