"""Everything that happened to an order, and what is still planned for it, from our own tables: the
webhooks received, the checks and their flags, the warehouse hand-offs and acknowledgements (and a
cancellation sent to the warehouse), shipments and their carrier events, delivery (real or
estimated), messages, touchpoints planned or cancelled (with the policy
version that set them), refunds and cancellation. For ops, the CLI (`timeline_text`, `timeline_json`)
and Prefect artifacts (`render_markdown`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import AftercareError
from aftercare.models import (
    ConsentRecord,
    InboxEvent,
    InboxWait,
    Order,
    OrderLine,
    OutboxMessage,
    RecoveryCase,
    Refund,
    ReviewDecision,
    Shipment,
    Touchpoint,
    TouchpointStatus,
    WarehouseHandoff,
    utcnow,
)
from aftercare.orders.shipping import (
    VOID_STATUSES,
    OrderDelivery,
    events_of,
    order_delivery,
    shipments_of,
    shippable_quantities,
)
from aftercare.orders.warehouse import call_back, is_cancellation
from aftercare.policies import DeliveryPolicy


class OrderNotFound(AftercareError):
    """No order matches the reference given (an order name like #1001, or a Shopify order id)."""


@dataclass(frozen=True)
class Entry:
    at: datetime | None
    kind: str  # webhook, check, handoff, shipment, carrier, delivery, message, touchpoint, refund,
    # cancellation
    summary: str
    status: str | None = None
    policy_version: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() if self.at else None,
            "kind": self.kind,
            "summary": self.summary,
            "status": self.status,
            "policy_version": self.policy_version,
            "detail": self.detail,
        }


@dataclass
class Timeline:
    order_id: int
    order_name: str
    shop_domain: str
    delivery: OrderDelivery | None
    history: list[Entry]  # what happened, oldest first
    planned: list[Entry]  # what is still to come, soonest first


def find_order(session: Session, ref: str, shop_domain: str | None = None) -> Order:
    """The order named `ref` ('#1001' or '1001') or with that Shopify id; OrderNotFound otherwise."""
    ref = ref.strip()
    names = {ref, ref if ref.startswith("#") else f"#{ref}"}
    condition = Order.name.in_(names)  # type: ignore[attr-defined]
    digits = ref.lstrip("#")
    # Only an id a BIGINT can hold: a longer number (or '²', which isdigit() accepts) is just a name.
    if digits.isascii() and digits.isdigit() and len(digits) <= 19 and 0 < int(digits) < 2**63:
        condition = sa.or_(condition, Order.shopify_id == int(digits))
    query = select(Order).where(condition)
    if shop_domain:
        query = query.where(Order.shop_domain == shop_domain.strip().lower())
    found = list(session.exec(query.order_by(Order.id)))
    if not found:
        raise OrderNotFound(
            f"no order {ref!r}"
            + (f" in {shop_domain}" if shop_domain else "")
            + ": give the order name (#1001) or its Shopify id"
        )
    if len({o.shop_domain for o in found}) > 1:
        shops = ", ".join(sorted({o.shop_domain for o in found}))
        raise OrderNotFound(f"order {ref!r} exists in several shops ({shops}): name the shop")
    return found[0]


def order_timeline(
    engine: Engine, ref: str, policy: DeliveryPolicy, *, shop_domain: str | None = None
) -> Timeline:
    """Build the timeline of one order."""
    with Session(engine) as session:
        order = find_order(session, ref, shop_domain)
        assert order.id is not None
        history: list[Entry] = []
        planned: list[Entry] = []
        history += _webhooks(session, order)
        history += _consent(session, order)
        history.append(
            Entry(
                order.updated_at,
                "check",
                "checked: " + (", ".join(order.flags) if order.flags else "no flags"),
                detail={"flags": list(order.flags)},
            )
        )
        handoffs = list(
            session.exec(
                select(WarehouseHandoff)
                .where(WarehouseHandoff.order_id == order.id)
                .order_by(WarehouseHandoff.version)
            )
        )
        shipments = shipments_of(session, order)
        if order.cancelled_at is not None:
            history.append(Entry(order.cancelled_at, "cancellation", "order cancelled in Shopify"))
            history += _cancelled_after_shipping(order, shipments, handoffs)
        else:
            history += _refunded_in_full(session, order, shipments, handoffs)
        history += _handoffs(handoffs)
        now = utcnow()
        history += _carrier_events(session, shipments)
        for shipment in shipments:
            tracking = ", ".join(shipment.tracking_numbers) or "no tracking number"
            items = ", ".join(
                f"{li.get('sku') or li.get('title')} x{li['quantity']}" for li in shipment.lines
            )
            history.append(
                Entry(
                    shipment.shipped_at,
                    "shipment",
                    f"fulfillment {shipment.name or shipment.shopify_id} ({shipment.status}): "
                    f"{shipment.carrier or 'carrier unknown'}, {tracking}; {items}",
                    status=shipment.status,
                    detail={
                        "tracking_numbers": shipment.tracking_numbers,
                        "tracking_urls": shipment.tracking_urls,
                        "lines": shipment.lines,
                    },
                )
            )
            if shipment.delivered_at is not None:
                history.append(
                    Entry(
                        shipment.delivered_at,
                        "delivery",
                        f"delivered (carrier event) {shipment.name or shipment.shopify_id}",
                        status="delivered",
                    )
                )
            elif shipment.estimated_delivery_at is not None:
                entry = Entry(
                    shipment.estimated_delivery_at,
                    "delivery",
                    f"delivery estimated for {shipment.name or shipment.shopify_id} "
                    f"({shipment.carrier or 'default'} transit days)",
                    status="estimated",
                    policy_version=shipment.estimate_policy_version,
                )
                (planned if shipment.estimated_delivery_at > now else history).append(entry)
        for refund in session.exec(
            select(Refund).where(Refund.order_id == order.id).order_by(Refund.refunded_at)
        ):
            items = ", ".join(f"line {li['line_id']} x{li['quantity']}" for li in refund.lines) or "no lines"
            history.append(
                Entry(
                    refund.refunded_at,
                    "refund",
                    f"refund {refund.shopify_id}: {items}" + (f" ({refund.note})" if refund.note else ""),
                )
            )
        messages = {
            m.touchpoint_id: m
            for m in session.exec(select(OutboxMessage).where(OutboxMessage.order_id == order.id))
        }
        for tp in session.exec(
            select(Touchpoint).where(Touchpoint.order_id == order.id).order_by(Touchpoint.id)
        ):
            label = tp.kind if tp.kind != "shipment_notice" else f"shipment_notice #{tp.seq}"
            # The contact rules' verdict (timed contact): its line says when and why, or why not.
            said = tp.verdict.get("line") if isinstance(tp.verdict, dict) else None
            detail = {"verdict": tp.verdict} if tp.verdict else {}
            if tp.status == TouchpointStatus.PLANNED:
                planned.append(
                    Entry(
                        max(tp.due_at, tp.held_until) if tp.held_until else tp.due_at,
                        "touchpoint",
                        f"{label} {said}" if said else f"{label} planned",
                        status=tp.status,
                        policy_version=tp.policy_version,
                        detail=detail,
                    )
                )
            else:
                history.append(
                    Entry(
                        tp.decided_at if said and tp.decided_at else tp.created_at,
                        "touchpoint",
                        f"{label} {tp.reason}"
                        if said and tp.reason == said
                        else f"{label} {tp.status}" + (f": {tp.reason}" if tp.reason else ""),
                        status=tp.status,
                        policy_version=tp.policy_version,
                        detail=detail,
                    )
                )
            message = messages.get(tp.id)
            if message is not None:
                history.append(_message_entry(message))
        recovery_history, recovery_planned = _recovery(session, order)
        history += recovery_history
        planned += recovery_planned
        delivery = order_delivery(session, order, policy)
    history.sort(key=lambda e: e.at or datetime.min.replace(tzinfo=UTC))
    planned.sort(key=lambda e: e.at or datetime.max.replace(tzinfo=UTC))
    return Timeline(order.id, order.name, order.shop_domain, delivery, history, planned)


def _webhooks(session: Session, order: Order) -> list[Entry]:
    # Names are per shop; Shopify ids are global (whatever configured shop's header a row came with).
    waiting = select(InboxWait.inbox_id).where(InboxWait.order_shopify_id == order.shopify_id)
    rows = session.exec(
        select(InboxEvent)
        .where(
            sa.or_(
                sa.and_(
                    InboxEvent.shop_domain == order.shop_domain,
                    sa.or_(
                        InboxEvent.subject_ref == order.name,
                        InboxEvent.subject_ref.like(_like_prefix(order.name) + ".%", escape="\\"),  # type: ignore[union-attr]
                    ),
                ),
                InboxEvent.subject_ref == f"order-id:{order.shopify_id}",
                InboxEvent.id.in_(waiting),  # type: ignore[union-attr]
            ),
        )
        .order_by(InboxEvent.received_at, InboxEvent.id)
    )
    return [
        Entry(
            row.received_at,
            "webhook",
            f"{row.topic or '(no topic)'} received: {row.status}"
            + (f" ({row.reason})" if row.reason else ""),
            status=row.status,
            detail={"inbox_id": row.id, "delivery_id": row.delivery_id},
        )
        for row in rows
    ]


def _consent(session: Session, order: Order) -> list[Entry]:
    """The customer's consent events (aftercare.contact.store.record_consent): what each said, and
    whether it changed the state held, and why."""
    if not order.email:
        return []
    rows = session.exec(
        select(ConsentRecord)
        .where(
            ConsentRecord.shop_domain == order.shop_domain,
            ConsentRecord.email_key == order.email.strip().lower(),
        )
        .order_by(ConsentRecord.id)  # type: ignore[arg-type]
    )
    return [
        Entry(
            r.recorded_at,
            "consent",
            f"consent {r.state} as of {r.consent_updated_at:%Y-%m-%d %H:%M} UTC ({r.source}): "
            + ("applied" if r.applied else "not applied")
            + (f", {r.reason}" if r.reason else ""),
            status=r.state,
            detail={"wording_version": r.wording_version, "applied": r.applied},
        )
        for r in rows
    ]


def _recovery(session: Session, order: Order) -> tuple[list[Entry], list[Entry]]:
    """The order's recovery cases (aftercare/recovery): opened by which answer and why, each later
    answer noted on it, the ops mails, every decision on the private apology, the escalation and
    the answer. The apology mail itself is the `complaint_reply` touchpoint's message. What is still
    to come: the first-answer deadline of an open case."""
    history: list[Entry] = []
    planned: list[Entry] = []
    cases = session.exec(
        select(RecoveryCase).where(RecoveryCase.order_id == order.id).order_by(RecoveryCase.id)  # type: ignore[arg-type]
    )
    for case in cases:
        label = f"recovery case {case.id}"
        history.append(
            Entry(
                case.opened_at,
                "recovery",
                f"{label} opened: survey score {case.score} ({case.scale}); " + "; ".join(case.reasons or []),
                status="opened",
                policy_version=case.policy_version,
                detail={"case_id": case.id, "response_id": case.response_id},
            )
        )
        for later in case.answers or []:
            above = (
                "at or below the threshold" if later.get("at_or_below_threshold") else "above the threshold"
            )
            history.append(
                Entry(
                    datetime.fromisoformat(later["at"]),
                    "recovery",
                    f"{label}: survey answered again, score {later.get('score')} ({above}); "
                    "noted on the case, which stays as it was",
                    status="answer_noted",
                    detail={"case_id": case.id, **later},
                )
            )
        for mail in session.exec(
            select(OutboxMessage).where(
                OutboxMessage.order_id == order.id,
                OutboxMessage.message_key.like(f"recovery_case_%:case-{case.id}:%"),  # type: ignore[union-attr]
            )
        ):
            what = "ops told" if mail.kind == "recovery_case_opened" else "escalation to"
            history.append(
                Entry(
                    mail.sent_at or mail.created_at,
                    "recovery",
                    f"{label}: {what} {mail.to_email} ({mail.status})",
                    status=mail.status,
                    detail={"case_id": case.id, "outbox_id": mail.id, "kind": mail.kind},
                )
            )
        if case.review_id is not None:
            for decision in session.exec(
                select(ReviewDecision)
                .where(ReviewDecision.review_id == case.review_id)
                .order_by(ReviewDecision.decided_at, ReviewDecision.id)  # type: ignore[arg-type]
            ):
                said = decision.reason or decision.instructions
                history.append(
                    Entry(
                        decision.decided_at,
                        "recovery",
                        f"{label}: apology {decision.action} by {decision.approver} (via {decision.via})"
                        + (f": {said}" if said else ""),
                        status=decision.action,
                        detail={"case_id": case.id, "decision_id": decision.id},
                    )
                )
        if case.escalated_at is not None:
            history.append(
                Entry(
                    case.escalated_at,
                    "recovery",
                    f"{label} escalated: no answer by the deadline",
                    "escalated",
                )
            )
        if case.answered_at is not None:
            history.append(
                Entry(
                    case.answered_at,
                    "recovery",
                    f"{label} answered: the approved apology is mail {case.apology_outbox_id}",
                    status="answered",
                    detail={"case_id": case.id, "outbox_id": case.apology_outbox_id},
                )
            )
        else:
            planned.append(
                Entry(
                    case.first_answer_due_at,
                    "recovery",
                    f"{label}: first answer to the customer due (business hours)",
                    status=case.status,
                    policy_version=case.policy_version,
                    detail={"case_id": case.id},
                )
            )
    return history, planned


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _cancelled_after_shipping(
    order: Order, shipments: list[Shipment], handoffs: list[WarehouseHandoff]
) -> list[Entry]:
    """Why the warehouse was not told of a cancellation: the parcel had left already."""
    assert order.cancelled_at is not None
    left = [s for s in shipments if s.status not in VOID_STATUSES]
    if not left or any(is_cancellation(h) for h in handoffs):
        return []
    names = ", ".join(s.name or str(s.shopify_id) for s in left)
    if all(s.shipped_at > order.cancelled_at for s in left):
        summary = (
            f"shipped after the order was cancelled ({names}): the warehouse had not been told to cancel"
        )
    else:
        summary = f"cancelled after it shipped ({names}): no cancellation sent to the warehouse"
    return [Entry(order.cancelled_at, "cancellation", summary, status="after_shipping")]


def _refunded_in_full(
    session: Session, order: Order, shipments: list[Shipment], handoffs: list[WarehouseHandoff]
) -> list[Entry]:
    """An order refunded in full (or voided) is called back from the warehouse like a cancellation:
    say what the warehouse was told, or why it was not."""
    lines = list(session.exec(select(OrderLine).where(OrderLine.order_id == order.id)))
    called = call_back(session, order, lines, shippable_quantities(session, order, lines))
    if called is None:
        return []
    what = "voided" if called.code == "voided" else "refunded in full"
    cancel = next((h for h in handoffs if is_cancellation(h)), None)
    left = [s.name or str(s.shopify_id) for s in shipments if s.status not in VOID_STATUSES]
    if cancel is not None:
        summary = f"{what}: cancel sent to the warehouse (cancellation v{cancel.version}, {cancel.status})"
    elif left:
        summary = f"{what} after it shipped ({', '.join(left)}): no cancellation sent to the warehouse"
    elif any(h.status == "superseded" for h in handoffs):
        summary = f"{what}: withdrawn from the warehouse before it had the order"
    else:
        summary = f"{what}: the warehouse never accepted the order, nothing to cancel"
    return [Entry(called.at, "refund", summary, status="called_back")]


def _handoffs(handoffs: list[WarehouseHandoff]) -> list[Entry]:
    entries = []
    for h in handoffs:
        if is_cancellation(h):
            entries += _cancellation_entries(h)
            continue
        flags = f" flags: {', '.join(h.flags)}" if h.flags else ""
        entries.append(
            Entry(
                h.created_at,
                "handoff",
                f"hand-off v{h.version} prepared{flags}",
                status="prepared",
                policy_version=h.policy_version,
                detail={"flags": list(h.flags)},
            )
        )
        if h.sent_at is not None:
            entries.append(
                Entry(
                    h.sent_at,
                    "handoff",
                    f"hand-off v{h.version} acknowledged by the warehouse"
                    + (f" ({h.reference})" if h.reference else ""),
                    status=h.status,
                )
            )
        elif h.status != "pending":
            entries.append(
                Entry(
                    h.claimed_at or h.created_at,
                    "handoff",
                    f"hand-off v{h.version} {h.status}" + (f": {h.last_error}" if h.last_error else ""),
                    status=h.status,
                )
            )
        if h.alerted_at is not None:
            entries.append(
                Entry(h.alerted_at, "handoff", f"ops alerted about hand-off v{h.version}", status="alerted")
            )
    return entries


def _cancellation_entries(h: WarehouseHandoff) -> list[Entry]:
    """A cancellation sent to the warehouse: planned, then acknowledged or failed with its reason."""
    i = h.instruction
    cancels = f"v{i['cancels_version']}" + (
        f" ({i['cancels_reference']})" if i.get("cancels_reference") else ""
    )
    entries = [
        Entry(
            h.created_at,
            "handoff",
            f"warehouse cancellation v{h.version} prepared: cancels {cancels}, reason {i['reason']}",
            status="prepared",
            policy_version=h.policy_version,
            detail={"action": "cancel", "cancels_version": i["cancels_version"], "reason": i["reason"]},
        )
    ]
    if h.sent_at is not None:
        entries.append(
            Entry(
                h.sent_at,
                "handoff",
                f"warehouse acknowledged the cancellation v{h.version}"
                + (f" ({h.reference})" if h.reference else ""),
                status=h.status,
                detail={"action": "cancel", "reference": h.reference},
            )
        )
    elif h.status != "pending":
        entries.append(
            Entry(
                h.claimed_at or h.created_at,
                "handoff",
                f"warehouse cancellation v{h.version} {h.status}"
                + (f": {h.last_error}" if h.last_error else ""),
                status=h.status,
                detail={"action": "cancel"},
            )
        )
    return entries


def _carrier_events(session: Session, shipments: list[Shipment]) -> list[Entry]:
    """What the carriers reported (fulfillment_events/create), each with what it did to the shipment."""
    names = {s.id: s.name or str(s.shopify_id) for s in shipments}
    return [
        Entry(
            e.happened_at,
            "carrier",
            f"{e.status} {names[e.shipment_id]}"
            + (f": {e.message}" if e.message else "")
            + (f" ({e.location})" if e.location else "")
            + (f" [{e.note}]" if e.note else ""),
            status=e.status,
            detail={
                "event_id": e.shopify_id,
                "shipment": names[e.shipment_id],
                "message": e.message,
                "location": e.location,
                "estimated_delivery_at": e.estimated_delivery_at.isoformat()
                if e.estimated_delivery_at
                else None,
                "note": e.note,
            },
        )
        for e in events_of(session, [s.id for s in shipments if s.id is not None])
    ]


def _message_entry(m: OutboxMessage) -> Entry:
    if m.sent_at is not None:
        return Entry(
            m.sent_at,
            "message",
            f"{m.kind} sent to {m.to_email}: {m.subject}",
            status=m.status,
            detail={"outbox_id": m.id, "provider_message_id": m.provider_message_id},
        )
    reason = f" ({m.last_error})" if m.last_error else ""
    return Entry(
        m.created_at,
        "message",
        f"{m.kind} to {m.to_email}: {m.status}{reason}",
        status=m.status,
        detail={"outbox_id": m.id},
    )


# --- Formats ---------------------------------------------------------------------------------------


def _when(at: datetime | None, tz: tzinfo) -> str:
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") if at else "?"


def _delivery_line(tl: Timeline, tz: tzinfo) -> str:
    if tl.delivery is None:
        return "delivery: nothing has shipped yet"
    kind = f"estimated (policy {tl.delivery.policy_version})" if tl.delivery.estimated else "delivered"
    return f"delivery: {_when(tl.delivery.at, tz)}, {kind}"


def timeline_json(tl: Timeline) -> dict[str, Any]:
    """The timeline as JSON-ready data (`aftercare timeline <order> --json`)."""
    return {
        "order": {"id": tl.order_id, "name": tl.order_name, "shop_domain": tl.shop_domain},
        "delivery": None
        if tl.delivery is None
        else {
            "at": tl.delivery.at.isoformat(),
            "estimated": tl.delivery.estimated,
            "policy_version": tl.delivery.policy_version,
        },
        "history": [e.as_json() for e in tl.history],
        "planned": [e.as_json() for e in tl.planned],
    }


def timeline_text(tl: Timeline, tz: tzinfo = UTC) -> str:
    """The timeline for a terminal: one line per event, then what is planned."""
    out = [f"{tl.order_name} ({tl.shop_domain})", _delivery_line(tl, tz), ""]
    out += [
        f"{_when(e.at, tz)}  {e.kind:<12} {e.summary}"
        + (f"  [{e.policy_version}]" if e.policy_version else "")
        for e in tl.history
    ]
    out += ["", "planned:" if tl.planned else "planned: nothing"]
    out += [
        f"{_when(e.at, tz)}  {e.kind:<12} {e.summary}"
        + (f"  [{e.policy_version}]" if e.policy_version else "")
        for e in tl.planned
    ]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(tl: Timeline, tz: tzinfo = UTC) -> str:
    """The timeline as a Markdown artifact: a table of what happened and one of what is planned."""
    out = [
        f"# {_cell(tl.order_name)}: timeline",
        "",
        f"- shop: {tl.shop_domain}",
        f"- {_delivery_line(tl, tz)}",
        "",
        "| when | what | detail | policy |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {_when(e.at, tz)} | {e.kind} | {_cell(e.summary)} | {e.policy_version or ''} |"
        for e in tl.history
    ]
    out += ["", "## Planned", ""]
    if tl.planned:
        out += ["| due | what | detail | policy |", "|---|---|---|---|"]
        out += [
            f"| {_when(e.at, tz)} | {e.kind} | {_cell(e.summary)} | {e.policy_version or ''} |"
            for e in tl.planned
        ]
    else:
        out.append("Nothing planned.")
    return "\n".join(out) + "\n"
