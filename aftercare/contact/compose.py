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

The dispatcher decides a chunk of touchpoints in one transaction. A `BatchComposer` reads what the
chunk's messages of its kind need first, in a few queries for all of them (`prepare`, whose answer
each message finds in `ComposeContext.prepared`), and writes nothing through the session while it
composes: the rows a message needs written with it (the products a review request asked about, the
reminder it plans) are returned in its answer's `writes`, and the dispatcher writes them at the
chunk's end with its outbox rows and verdicts, together with every other message's rows of the same
statement. A message that fails (its composer raised, or its mail was refused after composing)
writes nothing; its answer's `kept` is called only for a message kept, before the next one is
composed, so what the composer remembers within the chunk (say, a customer's products asked about)
counts only what will be written. A plain composer (a function) is still called one message at a
time, in a savepoint of its own, and may read and write through the session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
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
    # What the kind's BatchComposer prepared for the chunk this touchpoint is decided in (None for a
    # plain composer, or a BatchComposer called on its own, which then prepares for this one).
    prepared: Any = None

    def footer_vars(self) -> dict[str, Any]:
        """What `{% include locale ~ "/_feedback_footer.txt" %}` (and .html) needs."""
        return {"shop": self.shop, "unsubscribe_url": self.unsubscribe_url}


@dataclass(frozen=True)
class Write:
    """One row a message needs written with it: `row`, the parameters of `statement`. Executed in
    the dispatcher's transaction only when the message is kept, with every other kept message's rows
    of the same statement object in one executemany: build the statement once (module level)."""

    statement: sa.Executable
    row: Mapping[str, Any]


@dataclass(frozen=True)
class Composed:
    subject: str
    text_body: str
    html_body: str
    # Added to the kind's own (the dispatcher adds List-Unsubscribe and List-Unsubscribe-Post).
    headers: dict[str, str] = field(default_factory=dict)
    writes: tuple[Write, ...] = ()  # written with the message (a BatchComposer's; see the module docstring)
    kept: Callable[[], None] | None = field(default=None, compare=False)  # called once the message is kept


@dataclass(frozen=True)
class NotMailed:
    """A composer's answer when no mail of ours goes for this touchpoint (see the module docstring)."""

    status: Literal["skipped", "done"]
    reason: str
    writes: tuple[Write, ...] = ()  # written with the touchpoint's verdict, as a Composed's
    kept: Callable[[], None] | None = field(default=None, compare=False)


# (session, the chunk's touchpoints of the kind, their orders by id, now) -> what they need.
Prepare = Callable[[Session, Sequence[Touchpoint], Mapping[int, Order], datetime], Any]


@dataclass(frozen=True)
class BatchComposer:
    """A composer that reads for a chunk of its touchpoints at once and writes only through its
    answers' `writes` (see the module docstring). `prepare` runs in the dispatcher's transaction,
    under its lock, after the rules' facts were read: what it reads is as current as they are. Called
    on its own (outside the dispatcher, with no `prepared`), it prepares for the one touchpoint; its
    answer's writes are then its caller's to make."""

    prepare: Prepare
    compose: Callable[[ComposeContext], Composed | NotMailed]

    def __call__(self, ctx: ComposeContext) -> Composed | NotMailed:
        if ctx.prepared is None:
            assert ctx.order.id is not None
            prepared = self.prepare(ctx.session, [ctx.touchpoint], {ctx.order.id: ctx.order}, ctx.now)
            ctx = replace(ctx, prepared=prepared)
        return self.compose(ctx)


Composer = Callable[[ComposeContext], Composed | NotMailed]  # a function, or a BatchComposer
# Kind -> composer. Wired above the wings (the router, like aftercare/processing.py), so contact never
# imports surveys: e.g. {"delivery_survey": aftercare.surveys.mail.compose_survey}.
Composers = Mapping[str, Composer]
