"""The dispatcher: every due timed touchpoint (survey, review request, ...) is decided by the contact
rules right before it is sent, and sent, held or skipped accordingly, with the verdict kept on it.

- `due(session, now, before=None, limit)`: planned touchpoints of non-transactional kinds whose next
  moment (`due_at`, or `held_until` for one a verdict postponed) has come by `before` (default now).
  Read through the (status, due_at) index; an outbox row of its own means it was decided to send and
  is on its way, so it is not due again.
- `dispatch(engine, settings, policy, composers, now, limit, order_facts=...)`: the due touchpoints
  whose kind has a composer, decided customer by customer: a customer's touchpoints one at a time,
  with every message already sent or claimed to that customer (outbox rows of non-transactional
  kinds) and each one sent in this run in the history, so the caps see them. SEND: composed,
  enqueued in the outbox with the RFC 8058 headers, the verdict stored (the touchpoint stays planned
  until the outbox has sent it, as order confirmations do). HOLD: the verdict and `held_until`.
  SKIP: status skipped, the verdict's line as the reason. Kinds without a composer are never touched.
  A composer that answers `NotMailed` (compose.py) settles its touchpoint without a mail: skipped
  with its reason, or done (sent for us by another sender, counted in the caps from then on).
- `preview(...)`: what the rules would say at each touchpoint's next moment, without writing
  (`aftercare touchpoints due`).

Exactly once under concurrency: a batch of customers is locked first thing in its transaction (a
row lock on each customer on PostgreSQL; on SQLite the first statement is a write, so the whole
transaction holds SQLite's write lock), and the touchpoints are read again under that lock. Two
dispatchers at once therefore decide a customer one after the other, and the second sees the first's
outbox rows (in its caps, and as "not due any more"). The outbox's unique touchpoint_id is the last
guard.

A batch costs a few statements, whatever its size: the rules' facts for all its customers, what
each kind's BatchComposer needs for all its messages (compose.py), and at its end one write per
statement for all its messages (outbox rows, verdicts, the composers' rows), in a savepoint; a
message whose rows the database refuses is then written again alone, and fails alone. A plain
composer is called in a savepoint of its own, per message.

What the rules need to know about an order (cancelled, refunded in full, a test) is asked of the
caller (`order_facts`): contact does not import orders; the wiring above the wings
(aftercare/timed.py) passes the orders wing's own measure.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.contact import links, rules
from aftercare.contact.compose import (
    BatchComposer,
    ComposeContext,
    Composed,
    Composers,
    NotMailed,
    Recipient,
    Write,
)
from aftercare.contact.consent import Consent
from aftercare.contact.policy import ContactPolicy, MessageClass
from aftercare.contact.rules import (
    CustomerFacts,
    OrderFacts,
    Outcome,
    SentMessage,
    TouchpointFacts,
    Verdict,
    local_label,
)
from aftercare.contact.sender import ShopPolicy
from aftercare.contact.store import email_hash
from aftercare.models import (
    Customer,
    CustomerConsent,
    Order,
    OutboxMessage,
    OutboxStatus,
    Suppression,
    Touchpoint,
    TouchpointStatus,
)
from aftercare.rendering import BABEL_LOCALES, RenderedEmail, Renderer
from aftercare.settings import Settings
from aftercare.spine import addresses, outbox

log = logging.getLogger(__name__)

# Order -> what the rules need to know of it; given every order of a batch at once (one query for all).
OrderFactsFn = Callable[[Session, Sequence[Order]], Mapping[int, OrderFacts]]

# Outbox rows that count in a customer's history: went out, or may have, or are about to.
COUNTED = (OutboxStatus.PENDING, OutboxStatus.SENDING, OutboxStatus.SENT, OutboxStatus.UNCERTAIN)
# Customers decided in one transaction: their locks are held while their mails are composed.
CUSTOMERS_PER_BATCH = 100
_ONE_MINUTE = timedelta(minutes=1)

_TP: sa.Table = Touchpoint.__table__  # type: ignore[attr-defined]
_OUTBOX: sa.Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_ORDERS: sa.Table = Order.__table__  # type: ignore[attr-defined]
_CUSTOMERS: sa.Table = Customer.__table__  # type: ignore[attr-defined]


def timed_kinds(policy: ContactPolicy) -> list[str]:
    """The kinds the rules time (every class but transactional)."""
    return sorted(k for k, r in policy.kinds.items() if r.message_class is not MessageClass.TRANSACTIONAL)


def next_moment(due_at: datetime, held_until: datetime | None) -> datetime:
    """When a touchpoint is next looked at: the later of its due time and the time a hold moved it to."""
    return max(due_at, held_until) if held_until else due_at


@dataclass(frozen=True)
class DueTouchpoint:
    id: int
    order_id: int
    order_name: str
    customer_id: int | None
    kind: str
    due_at: datetime
    held_until: datetime | None
    decided_at: datetime | None
    verdict: dict[str, Any] | None

    @property
    def next_at(self) -> datetime:
        """When it is next looked at: the later of its due time and the time a hold moved it to."""
        return next_moment(self.due_at, self.held_until)


def _due_condition(before: datetime, kinds: Iterable[str]) -> sa.ColumnElement[bool]:
    no_message = ~sa.exists().where(_OUTBOX.c.touchpoint_id == _TP.c.id)
    return sa.and_(
        _TP.c.status == TouchpointStatus.PLANNED,
        _TP.c.due_at <= before,  # the (status, due_at) index
        sa.or_(_TP.c.held_until.is_(None), _TP.c.held_until <= before),
        _TP.c.kind.in_(sorted(kinds)),
        no_message,
    )


def due(
    session: Session,
    now: datetime,
    before: datetime | None = None,
    limit: int = 1000,
    *,
    kinds: Iterable[str] | None = None,
    policy: ContactPolicy | None = None,
) -> list[DueTouchpoint]:
    """Planned touchpoints of timed kinds (`kinds`, else every non-transactional kind of `policy`,
    else every kind but those named transactional in the shipped policy) whose next moment has come by
    `before` (default `now`), soonest first, at most `limit`. Held ones count from `held_until`."""
    before = before or now
    if kinds is None:
        if policy is None:
            raise ValueError("due() needs the kinds to look for, or the contact policy naming them")
        kinds = timed_kinds(policy)
    kinds = list(kinds)
    if not kinds:
        return []
    next_at = sa.case((_TP.c.held_until > _TP.c.due_at, _TP.c.held_until), else_=_TP.c.due_at)
    # Two queries, not a join: with the touchpoints' predicates correlated, PostgreSQL estimated 3
    # due rows and joined orders by a nested loop over every order (80 ms at 1,000,000 rows, where
    # the touchpoints alone take 2 ms). The orders are then read by primary key.
    query = (
        sa.select(
            _TP.c.id,
            _TP.c.order_id,
            _TP.c.kind,
            _TP.c.due_at,
            _TP.c.held_until,
            _TP.c.decided_at,
            _TP.c.verdict,
        )
        .where(_due_condition(before, kinds))
        .order_by(next_at, _TP.c.id)
        .limit(limit)
    )
    rows = session.execute(query).all()
    if not rows:
        return []
    order_ids = sorted({row.order_id for row in rows})
    orders = {
        o.id: o
        for o in session.execute(
            sa.select(_ORDERS.c.id, _ORDERS.c.name, _ORDERS.c.customer_id).where(_ORDERS.c.id.in_(order_ids))
        )
    }
    return [
        DueTouchpoint(
            r.id,
            r.order_id,
            orders[r.order_id].name,
            orders[r.order_id].customer_id,
            r.kind,
            r.due_at,
            r.held_until,
            r.decided_at,
            r.verdict,
        )
        for r in rows
        if r.order_id in orders
    ]


# -- facts -----------------------------------------------------------------------------------------


@dataclass
class _Facts:
    """Everything the rules and the composers need about a batch of customers, read in a few queries."""

    orders: dict[int, Order]
    customers: dict[int, Customer]
    order_facts: Mapping[int, OrderFacts]
    history: dict[int, list[SentMessage]]
    consent: dict[int, Consent | None]
    suppressions: dict[int, list[rules.Suppression]]


def _load_facts(
    session: Session,
    touchpoints: Sequence[Touchpoint],
    policy: ContactPolicy,
    order_facts: OrderFactsFn,
) -> _Facts:
    order_ids = sorted({t.order_id for t in touchpoints})
    orders = {o.id: o for o in session.exec(select(Order).where(Order.id.in_(order_ids)))}  # type: ignore[union-attr]
    customer_ids = sorted({o.customer_id for o in orders.values() if o.customer_id is not None})
    customers = {
        c.id: c
        for c in session.exec(select(Customer).where(Customer.id.in_(customer_ids)))  # type: ignore[union-attr]
    }
    history: dict[int, list[SentMessage]] = defaultdict(list)
    counted_kinds = timed_kinds(policy)
    if customer_ids and counted_kinds:
        rows = session.execute(
            sa.select(_ORDERS.c.customer_id, _OUTBOX.c.kind, _OUTBOX.c.created_at)
            .select_from(_OUTBOX.join(_ORDERS, _ORDERS.c.id == _OUTBOX.c.order_id))
            .where(
                _ORDERS.c.customer_id.in_(customer_ids),
                _OUTBOX.c.kind.in_(counted_kinds),
                _OUTBOX.c.status.in_([s.value for s in COUNTED]),
            )
        )
        for customer_id, kind, at in rows:
            history[customer_id].append(SentMessage(kind=kind, sent_at=at))
        # Sent for us by another sender (a composer's NotMailed "done", e.g. a review platform's
        # invitation): no outbox row, the touchpoint done at the moment it was decided.
        elsewhere = session.execute(
            sa.select(_ORDERS.c.customer_id, _TP.c.kind, _TP.c.decided_at)
            .select_from(_TP.join(_ORDERS, _ORDERS.c.id == _TP.c.order_id))
            .where(
                _ORDERS.c.customer_id.in_(customer_ids),
                _TP.c.kind.in_(counted_kinds),
                _TP.c.status == TouchpointStatus.DONE,
                _TP.c.decided_at.is_not(None),
                ~sa.exists().where(_OUTBOX.c.touchpoint_id == _TP.c.id),
            )
        )
        for customer_id, kind, at in elsewhere:
            history[customer_id].append(SentMessage(kind=kind, sent_at=at))
    consent: dict[int, Consent | None] = {}
    suppressions: dict[int, list[rules.Suppression]] = defaultdict(list)
    if customers:
        keys = {(c.shop_domain, c.email_key): cid for cid, c in customers.items()}
        held = session.exec(
            select(CustomerConsent).where(
                CustomerConsent.email_key.in_(sorted({k for _, k in keys}))  # type: ignore[attr-defined]
            )
        )
        for row in held:
            cid = keys.get((row.shop_domain, row.email_key))
            if cid is not None:
                consent[cid] = Consent(
                    state=row.state,
                    updated_at=row.consent_updated_at,
                    source=row.source,
                    opt_in_level=row.opt_in_level,
                    weak=row.weak,
                )
        hashes = {(c.shop_domain, email_hash(c.email_key)): cid for cid, c in customers.items()}
        found = session.exec(
            select(Suppression)
            .where(Suppression.email_hash.in_(sorted({h for _, h in hashes})))  # type: ignore[attr-defined]
            .order_by(Suppression.created_at)  # type: ignore[arg-type]
        )
        for s in found:
            cid = hashes.get((s.shop_domain, s.email_hash))
            if cid is not None:
                suppressions[cid].append(
                    rules.Suppression(list_name=s.list_name, at=s.created_at, source=s.source)
                )
    return _Facts(
        orders=orders,  # type: ignore[arg-type]
        customers=customers,  # type: ignore[arg-type]
        order_facts=order_facts(session, list(orders.values())),
        history=history,
        consent=consent,
        suppressions=suppressions,
    )


def billing_address(order: Order) -> Mapping[str, Any] | None:
    """The billing address from the order's raw Shopify payload (we keep only shipping as a column)."""
    address = (order.raw or {}).get("billing_address")
    return address if isinstance(address, Mapping) else None


def _customer_facts(facts: _Facts, order: Order) -> CustomerFacts:
    cid = order.customer_id
    return CustomerFacts(
        shipping_address=order.shipping_address,
        billing_address=billing_address(order),
        consent=facts.consent.get(cid) if cid is not None else None,
        suppressions=tuple(facts.suppressions.get(cid, ())) if cid is not None else (),
    )


def _touchpoint_facts(tp: Touchpoint, facts: _Facts) -> TouchpointFacts:
    return TouchpointFacts(
        kind=tp.kind,
        due_at=tp.due_at,
        order=facts.order_facts.get(tp.order_id, OrderFacts()),
        held_until=tp.held_until,
    )


def why_not_addressable(order: Order, customer: Customer | None) -> str | None:
    """Why no mail can be attempted to this order's customer (the skip reason), or None."""
    if not order.email or customer is None:
        return "no customer email on the order"
    verdict = addresses.judge(order.email)
    if not verdict.sendable:
        return f"the customer's email is not an address ({verdict.reason}): nothing sent"
    return None


# -- dispatch --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decided:
    touchpoint_id: int
    order_name: str
    kind: str
    outcome: str  # send, hold, skip, failed
    line: str  # the verdict's line (or why it failed)
    send_at: datetime | None = None
    zone: str | None = None
    outbox_id: int | None = None


@dataclass
class DispatchResult:
    sent: list[Decided] = field(default_factory=list)  # enqueued in the outbox
    held: list[Decided] = field(default_factory=list)
    skipped: list[Decided] = field(default_factory=list)
    failed: list[Decided] = field(default_factory=list)  # a composer raised: left planned, retried

    @property
    def outbox_ids(self) -> list[int]:
        return [d.outbox_id for d in self.sent if d.outbox_id is not None]

    def counts(self) -> dict[str, int]:
        return {
            "sent": len(self.sent),
            "held": len(self.held),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
        }

    def summary(self) -> str:
        """'delivery_survey sent 3 (09:00 JST), held 1, skipped 2'."""
        by_kind: dict[str, list[Decided]] = defaultdict(list)
        for d in self.sent:
            by_kind[d.kind].append(d)
        parts = [f"{kind} sent: {len(ds)}" for kind, ds in sorted(by_kind.items())] or ["nothing sent"]
        parts += [f"{name}: {n}" for name, n in self.counts().items() if name != "sent" and n]
        return ", ".join(parts)


def locale_of(order: Order) -> str:
    """A language we have templates for: the order's, else English."""
    return order.locale if order.locale in BABEL_LOCALES else "en"


def _lock(session: Session, customer_ids: Sequence[int]) -> None:
    """Serialize deciding these customers with any other dispatcher (see the module docstring)."""
    if not customer_ids:
        return
    ids = sorted(customer_ids)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            sa.select(_CUSTOMERS.c.id)
            .where(_CUSTOMERS.c.id.in_(ids))
            .order_by(_CUSTOMERS.c.id)
            .with_for_update()
        )
    else:
        session.execute(sa.update(_CUSTOMERS).where(_CUSTOMERS.c.id.in_(ids)).values(id=_CUSTOMERS.c.id))


def _due_of_customers(
    session: Session,
    customer_ids: Sequence[int],
    order_ids: Sequence[int],
    now: datetime,
    kinds: Sequence[str],
) -> list[Touchpoint]:
    """Read again, under the lock: what is still due for these customers (and these orders without
    a customer)."""
    owners = []
    if customer_ids:
        owners.append(_ORDERS.c.customer_id.in_(sorted(customer_ids)))
    if order_ids:
        owners.append(_ORDERS.c.id.in_(sorted(order_ids)))
    if not owners:
        return []
    ids = list(
        session.execute(
            sa.select(_TP.c.id)
            .select_from(_TP.join(_ORDERS, _ORDERS.c.id == _TP.c.order_id))
            .where(_due_condition(now, kinds), sa.or_(*owners))
        ).scalars()
    )
    if not ids:
        return []
    return list(session.exec(select(Touchpoint).where(Touchpoint.id.in_(ids))))  # type: ignore[union-attr]


def dispatch(
    engine: Engine,
    settings: Settings,
    contact_policy: ContactPolicy,
    composers: Composers,
    now: datetime,
    limit: int = 1000,
    *,
    order_facts: OrderFactsFn,
    renderer: Renderer,
    shop: ShopPolicy,
    customers_per_batch: int = CUSTOMERS_PER_BATCH,
) -> DispatchResult:
    """Decide (and send, hold or skip) up to about `limit` due touchpoints whose kind has a composer.

    Sending here means enqueueing in the outbox, committed with the verdict; the outbox sends it
    (`outbox.send_now` with `DispatchResult.outbox_ids`, or the drain loop)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    kinds = [k for k in composers if k in contact_policy.kinds and k in timed_kinds(contact_policy)]
    result = DispatchResult()
    if not kinds:
        return result
    with Session(engine) as session:
        found = due(session, now, limit=limit, kinds=kinds)
    customer_ids = sorted({d.customer_id for d in found if d.customer_id is not None})
    orphan_orders = sorted({d.order_id for d in found if d.customer_id is None})
    batches: list[tuple[list[int], list[int]]] = [
        (customer_ids[i : i + customers_per_batch], [])
        for i in range(0, len(customer_ids), customers_per_batch)
    ]
    if orphan_orders:
        batches.append(([], orphan_orders))
    for batch_customers, batch_orders in batches:
        with Session(engine, expire_on_commit=False) as session:
            _lock(session, batch_customers)
            touchpoints = _due_of_customers(session, batch_customers, batch_orders, now, kinds)
            if touchpoints:
                facts = _load_facts(session, touchpoints, contact_policy, order_facts)
                _decide_batch(
                    session,
                    touchpoints,
                    facts,
                    contact_policy,
                    composers,
                    now,
                    settings,
                    renderer,
                    shop,
                    result,
                )
            session.commit()
    return result


# Written once per batch (executemany: one compiled statement), not per touchpoint through the ORM.
# Only a touchpoint still planned takes a verdict: one cancelled meanwhile (an unsubscribe) stays so.
_DECIDED = (
    sa.update(_TP)
    .where(_TP.c.id == sa.bindparam("tp_id"), _TP.c.status == TouchpointStatus.PLANNED)
    .values(
        status=sa.bindparam("new_status"),
        reason=sa.bindparam("new_reason"),
        verdict=sa.bindparam("new_verdict"),
        decided_at=sa.bindparam("new_decided_at"),
        held_until=sa.bindparam("new_held_until"),
    )
)


@dataclass
class _Message:
    """One touchpoint's decision as its batch writes it: the verdict (`_DECIDED`'s parameters), the
    mail of a send, and the rows its composer needs written with it."""

    decided: Decided
    verdict: dict[str, Any]
    mail: outbox.TouchpointMail | None = None
    writes: tuple[Write, ...] = ()


@dataclass
class _Writes:
    """What a batch writes at its end, in its transaction: the composers' rows (one executemany per
    statement), the mails decided to go (one `outbox.enqueue_many`) and the verdicts (one
    executemany). In a savepoint: when that fails, each message is written again alone, so a message
    whose rows are refused fails alone and the others' work is kept. (The caps of the customer's
    later touchpoints in the batch counted it as sent: at worst one of them was held a day.)"""

    messages: list[_Message] = field(default_factory=list)

    def add(
        self,
        tp: Touchpoint,
        decided: Decided,
        now: datetime,
        *,
        status: str = TouchpointStatus.PLANNED,
        reason: str | None = None,
        verdict: Verdict | None = None,
        held_until: datetime | None = None,
        mail: outbox.TouchpointMail | None = None,
        writes: tuple[Write, ...] = (),
    ) -> Decided:
        row = {
            "tp_id": tp.id,
            "new_status": status,
            "new_reason": reason,
            "new_verdict": verdict.as_dict() if verdict else None,
            "new_decided_at": now,
            "new_held_until": held_until,
        }
        self.messages.append(_Message(decided, row, mail, writes))
        return decided

    def flush(self, session: Session, now: datetime) -> tuple[list[Decided], list[Decided]]:
        """Write it all; returns the decisions written (a send's with its outbox row's id) and those
        that could not be (left planned, retried by the next run). created_at of the outbox rows is
        `now`, the moment we decided to send (the caps count from it), on the dispatcher's clock."""
        if not self.messages:
            return [], []
        try:
            with session.begin_nested():
                return _write(session, self.messages, now), []
        except sa.exc.StatementError as exc:
            if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
                raise
            log.exception("a batch of %d touchpoints could not be written: one at a time", len(self.messages))
        written: list[Decided] = []
        failed: list[Decided] = []
        for message in self.messages:
            try:
                with session.begin_nested():
                    written += _write(session, [message], now)
            except sa.exc.StatementError as exc:
                if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
                    raise
                d = message.decided
                log.exception(
                    "touchpoint %s (%s %s) could not be written", d.touchpoint_id, d.kind, d.order_name
                )
                line = f"could not be written: {type(exc).__name__}: {exc}"[:500]
                failed.append(replace(d, outcome="failed", line=line, send_at=None))
        return written, failed


def _write(session: Session, messages: Sequence[_Message], now: datetime) -> list[Decided]:
    groups: dict[int, tuple[sa.Executable, list[dict[str, Any]]]] = {}
    for message in messages:
        for write in message.writes:
            groups.setdefault(id(write.statement), (write.statement, []))[1].append(dict(write.row))
    for statement, rows in groups.values():
        session.execute(statement, rows)
    mailed = [m.mail for m in messages if m.mail is not None]
    outbox_ids = {
        mail.touchpoint_id: row.id
        for mail, row in zip(mailed, outbox.enqueue_many(session, mailed, now=now), strict=True)
    }
    session.execute(_DECIDED, [m.verdict for m in messages])
    return [
        replace(m.decided, outbox_id=outbox_ids[m.mail.touchpoint_id]) if m.mail is not None else m.decided
        for m in messages
    ]


def _prepare(
    session: Session, touchpoints: Sequence[Touchpoint], facts: _Facts, composers: Composers, now: datetime
) -> dict[str, Any]:
    """What each BatchComposer reads for its touchpoints of the batch, by kind. One whose `prepare`
    raises (a bug) is left out: its messages are then composed one at a time, each in a savepoint
    (a plain composer's way), so the failure stays with them."""
    by_kind: dict[str, list[Touchpoint]] = defaultdict(list)
    for tp in touchpoints:
        by_kind[tp.kind].append(tp)
    prepared: dict[str, Any] = {}
    for kind, own in sorted(by_kind.items()):
        composer = composers.get(kind)
        if not isinstance(composer, BatchComposer):
            continue
        try:
            with session.begin_nested():
                prepared[kind] = composer.prepare(session, own, facts.orders, now)
        except Exception:  # a composer's bug: its touchpoints are composed alone, and fail alone
            log.exception(
                "%s: reading for %d touchpoints at once failed; composing them one at a time", kind, len(own)
            )
    return prepared


def _decide_batch(
    session: Session,
    touchpoints: Sequence[Touchpoint],
    facts: _Facts,
    policy: ContactPolicy,
    composers: Composers,
    now: datetime,
    settings: Settings,
    renderer: Renderer,
    shop: ShopPolicy,
    result: DispatchResult,
) -> None:
    by_owner: dict[tuple[str, int], list[Touchpoint]] = defaultdict(list)
    for tp in touchpoints:
        order = facts.orders[tp.order_id]
        owner = ("customer", order.customer_id) if order.customer_id is not None else ("order", tp.order_id)
        by_owner[owner].append(tp)
    prepared = _prepare(session, touchpoints, facts, composers, now)
    writes = _Writes()
    for owner, own in sorted(by_owner.items()):
        history = list(facts.history.get(owner[1], [])) if owner[0] == "customer" else []
        own.sort(key=lambda t: (next_moment(t.due_at, t.held_until), t.id))
        for tp in own:
            order = facts.orders[tp.order_id]
            customer = facts.customers.get(order.customer_id) if order.customer_id else None
            decided = _decide_one(
                session,
                tp,
                order,
                customer,
                facts,
                history,
                policy,
                composers,
                prepared,
                now,
                settings,
                renderer,
                shop,
                writes,
            )
            if decided.outcome == "send":
                # A composer's NotMailed("done") (say, handed to Trustpilot) counts like a mail.
                history.append(SentMessage(kind=tp.kind, sent_at=now))
            elif decided.outcome == "failed":
                result.failed.append(decided)
    written, failed = writes.flush(session, now)
    outcomes = {"send": result.sent, "hold": result.held, "skip": result.skipped}
    for decided in written:
        outcomes[decided.outcome].append(decided)
    result.failed.extend(failed)


def _decide_one(
    session: Session,
    tp: Touchpoint,
    order: Order,
    customer: Customer | None,
    facts: _Facts,
    history: Sequence[SentMessage],
    policy: ContactPolicy,
    composers: Composers,
    prepared: Mapping[str, Any],
    now: datetime,
    settings: Settings,
    renderer: Renderer,
    shop: ShopPolicy,
    writes: _Writes,
) -> Decided:
    """Decide one touchpoint: its verdict and mail are added to `writes`; a failed one adds nothing."""
    assert tp.id is not None
    base = {"touchpoint_id": tp.id, "order_name": order.name, "kind": tp.kind}
    unaddressable = why_not_addressable(order, customer)
    if unaddressable is not None:
        decided = Decided(**base, outcome="skip", line=f"not sent: {unaddressable}")
        return writes.add(tp, decided, now, status=TouchpointStatus.SKIPPED, reason=unaddressable)
    assert customer is not None and order.email is not None
    verdict = rules.decide(_touchpoint_facts(tp, facts), _customer_facts(facts, order), history, policy, now)
    line, zone = verdict.line(), verdict.zone.name
    if verdict.outcome is Outcome.SKIP:
        decided = Decided(**base, outcome="skip", line=line, zone=zone)
        return writes.add(tp, decided, now, status=TouchpointStatus.SKIPPED, reason=line, verdict=verdict)
    if verdict.outcome is Outcome.HOLD:
        decided = Decided(**base, outcome="hold", line=line, send_at=verdict.send_at, zone=zone)
        return writes.add(tp, decided, now, verdict=verdict, held_until=verdict.send_at)
    args = (session, tp, order, customer, policy, composers, now, settings, renderer, shop)
    try:
        if tp.kind in prepared:  # a BatchComposer writes nothing until the batch's end
            answer, mail = _compose(*args, prepared=prepared[tp.kind])
        else:
            # A plain composer may write through the session: what it wrote goes with its message,
            # or not at all.
            with session.begin_nested():
                answer, mail = _compose(*args)
        if answer.kept is not None:
            answer.kept()
    except Exception as exc:  # a composer's bug, or a header refused: this touchpoint stays planned
        log.exception("touchpoint %s (%s %s) could not be written", tp.id, tp.kind, order.name)
        return Decided(
            **base, outcome="failed", line=f"could not be written: {type(exc).__name__}: {exc}"[:500]
        )
    if isinstance(answer, NotMailed):
        if answer.status == "skipped":
            why = f"not sent: {answer.reason}"
            decided = Decided(**base, outcome="skip", line=why, zone=zone)
            status = TouchpointStatus.SKIPPED
            return writes.add(
                tp, decided, now, status=status, reason=why, verdict=verdict, writes=answer.writes
            )
        decided = Decided(**base, outcome="send", line=answer.reason, send_at=now, zone=zone)
        status = TouchpointStatus.DONE
        return writes.add(
            tp, decided, now, status=status, reason=answer.reason, verdict=verdict, writes=answer.writes
        )
    decided = Decided(**base, outcome="send", line=line, send_at=now, zone=zone)
    return writes.add(tp, decided, now, verdict=verdict, mail=mail, writes=answer.writes)


def _compose(
    session: Session,
    tp: Touchpoint,
    order: Order,
    customer: Customer,
    policy: ContactPolicy,
    composers: Composers,
    now: datetime,
    settings: Settings,
    renderer: Renderer,
    shop: ShopPolicy,
    *,
    prepared: Any = None,
) -> tuple[Composed | NotMailed, outbox.TouchpointMail | None]:
    """The composer's answer, and the mail of a Composed one with the RFC 8058 headers (checked:
    InvalidHeader) for the batch's `outbox.enqueue_many` (None for NotMailed: nothing to enqueue)."""
    assert tp.id is not None and order.email is not None
    list_name = policy.list_of(tp.kind)
    assert list_name is not None
    locale = locale_of(order)
    secret = settings.link_secret.get_secret_value()
    token = links.unsubscribe_token(
        secret,
        shop_domain=order.shop_domain,
        email_key=customer.email_key,
        list_name=list_name,
        touchpoint_id=tp.id,
        now=now,
        locale=locale,
    )
    url = links.unsubscribe_url(settings.customer_base_url, token)
    shop_vars = shop.for_locale(locale)
    ctx = ComposeContext(
        session=session,
        touchpoint=tp,
        order=order,
        recipient=Recipient(
            email=order.email,
            name=display_name(customer, order, locale),
            email_key=customer.email_key,
            shop_domain=order.shop_domain,
            locale=locale,
        ),
        renderer=renderer,
        now=now,
        list_name=list_name,
        unsubscribe_url=url,
        shop=shop_vars,
        base_url=settings.customer_base_url.rstrip("/"),
        link_secret=secret,
        prepared=prepared,
    )
    composed: Composed | NotMailed = composers[tp.kind](ctx)
    if isinstance(composed, NotMailed):
        return composed, None
    headers = {**composed.headers, **links.list_unsubscribe_headers(url, shop.contact_email)}
    mail = outbox.TouchpointMail.of(
        tp,
        to_email=order.email,
        to_name=ctx.recipient.name,
        rendered=RenderedEmail(composed.subject, composed.text_body, composed.html_body),
        locale=locale,
        order_name=order.name,
        is_test=order.is_test,
        headers=headers,
    )
    return composed, mail


def display_name(customer: Customer, order: Order, locale: str) -> str | None:
    """How the mail addresses the customer: family name first in Japanese; control characters dropped."""
    first = customer.first_name or (order.shipping_address or {}).get("first_name")
    last = customer.last_name or (order.shipping_address or {}).get("last_name")
    parts = (last, first) if locale == "ja" else (first, last)
    name = " ".join(p for p in map(addresses.clean_name, parts) if p)
    return name or None


# -- preview (ops) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One planned timed touchpoint as `aftercare touchpoints due` shows it."""

    touchpoint_id: int
    order_name: str
    kind: str
    next_at: datetime  # when the dispatcher next looks at it
    send_at: datetime | None  # when the rules would let it go (None: they would not)
    outcome: str  # send, hold, skip, or "no composer"
    line: str
    zone: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "touchpoint_id": self.touchpoint_id,
            "order": self.order_name,
            "kind": self.kind,
            "next_at": self.next_at.astimezone(UTC).isoformat(),
            "send_at": self.send_at.astimezone(UTC).isoformat() if self.send_at else None,
            "outcome": self.outcome,
            "reason": self.line,
            "zone": self.zone,
        }


def preview(
    session: Session,
    policy: ContactPolicy,
    composers: Composers,
    now: datetime,
    before: datetime,
    *,
    order_facts: OrderFactsFn,
    limit: int = 1000,
) -> list[Planned]:
    """What is due by `before` and what the rules would say at its next moment (no writes). A
    customer's touchpoints are judged in order, each one expected to go counted in the caps of the
    next; kinds without a composer are listed as staying planned."""
    now = now.astimezone(UTC)
    found = due(session, now, before=before, limit=limit, policy=policy)
    if not found:
        return []
    touchpoints = list(session.exec(select(Touchpoint).where(Touchpoint.id.in_([d.id for d in found]))))  # type: ignore[union-attr]
    facts = _load_facts(session, touchpoints, policy, order_facts)
    by_id = {t.id: t for t in touchpoints}
    history: dict[Any, list[SentMessage]] = {}
    out: list[Planned] = []
    for d in found:
        tp = by_id[d.id]
        order = facts.orders[tp.order_id]
        at = max(now, d.next_at)
        if tp.kind not in composers:
            out.append(
                Planned(
                    d.id,
                    d.order_name,
                    d.kind,
                    d.next_at,
                    None,
                    "no composer",
                    f"no composer for {d.kind}: stays planned",
                    None,
                )
            )
            continue
        customer = facts.customers.get(order.customer_id) if order.customer_id else None
        unaddressable = why_not_addressable(order, customer)
        if unaddressable is not None:
            out.append(
                Planned(
                    d.id, d.order_name, d.kind, d.next_at, None, "skip", f"not sent: {unaddressable}", None
                )
            )
            continue
        owner = order.customer_id
        own = history.setdefault(owner, list(facts.history.get(owner, [])) if owner is not None else [])
        verdict = rules.decide(_touchpoint_facts(tp, facts), _customer_facts(facts, order), own, policy, at)
        if verdict.outcome is Outcome.SEND:
            own.append(SentMessage(kind=tp.kind, sent_at=at))
            line = f"goes at {local_label(at, verdict.zone.tz, with_date=True)}"
        else:
            line = verdict.line()
        out.append(
            Planned(
                d.id,
                d.order_name,
                d.kind,
                d.next_at,
                verdict.send_at,
                verdict.outcome.value,
                line,
                verdict.zone.name,
            )
        )
    return out


# -- the schedule (what the Prefect side shows and wakes for) ---------------------------------------


def needs_dispatch_now(session: Session, now: datetime, kinds: Iterable[str]) -> bool:
    """Whether a touchpoint of these kinds is due and was never decided (planned late, say by a
    delivered event): one indexed probe, cheap enough for a patrol loop."""
    kinds = sorted(kinds)
    if not kinds:
        return False
    probe = sa.select(_TP.c.id).where(_due_condition(now, kinds), _TP.c.decided_at.is_(None)).limit(1)
    return session.execute(probe).first() is not None


@dataclass(frozen=True)
class NextSend:
    at: datetime  # the minute the next timed messages go out (UTC, whole minute)
    count: int  # touchpoints due by the end of that minute
    by_kind: dict[str, int]


def next_send(session: Session, now: datetime, kinds: Iterable[str]) -> NextSend | None:
    """The next moment after `now` at which planned touchpoints of these kinds come due (their due
    time, or the time a hold moved them to), rounded up to the minute, and how many come due by then.
    None when nothing is planned."""
    kinds = sorted(kinds)
    if not kinds:
        return None
    now = now.astimezone(UTC)
    next_at = sa.case((_TP.c.held_until > _TP.c.due_at, _TP.c.held_until), else_=_TP.c.due_at)
    planned = sa.and_(
        _TP.c.status == TouchpointStatus.PLANNED,
        _TP.c.kind.in_(kinds),
        ~sa.exists().where(_OUTBOX.c.touchpoint_id == _TP.c.id),
    )
    first = session.execute(sa.select(sa.func.min(next_at)).where(planned, next_at > now)).scalar()
    if first is None:
        return None
    if first.tzinfo is None:
        first = first.replace(tzinfo=UTC)
    minute = first.replace(second=0, microsecond=0)
    if minute < first:
        minute += _ONE_MINUTE
    rows = session.execute(
        sa.select(_TP.c.kind, sa.func.count()).where(planned, next_at <= minute).group_by(_TP.c.kind)
    )
    by_kind = {str(kind): int(n) for kind, n in rows}
    return NextSend(at=minute, count=sum(by_kind.values()), by_kind=by_kind)
