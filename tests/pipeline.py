"""Driving the real pipeline in a test without Prefect: store a delivery and process it, drain the
inbox, send what the warehouse is owed; and reading rows back."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlmodel import Session, select

from aftercare.orders import warehouse
from aftercare.processing import Outcome, process_row
from aftercare.spine.inbox import claim_batch
from tests.factories import deliver
from tests.fakes.warehouse import FakeThreePL


def process(rt: Any, inbox_id: int | None) -> Outcome:
    """Claim the inbox (the row must be among what is claimed) and process that row."""
    assert inbox_id in [c.inbox_id for c in claim_batch(rt.engine, 10)]
    assert inbox_id is not None
    return process_row(rt, inbox_id)


def receive(rt: Any, payload: dict[str, Any], topic: str = "orders/create", **kwargs: Any) -> Outcome:
    """Store a delivery as the web app would, then process it."""
    return process(rt, deliver(rt.engine, payload, topic=topic, **kwargs))


def drain(rt: Any) -> list[Outcome]:
    """Process whatever the inbox holds (rows released by an order, say); returns the outcomes."""
    return [process_row(rt, c.inbox_id) for c in claim_batch(rt.engine, 50)]


def rows(rt: Any, model: Any, *where: Any) -> list[Any]:
    with Session(rt.engine) as s:
        return list(s.exec(select(model).where(*where).order_by(model.id)))


def jst(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def send_all(rt: Any, port: warehouse.WarehousePort, **kwargs: Any) -> list[warehouse.HandoffResult]:
    """Claim every due hand-off and send it through `port` (kwargs go to warehouse.hand_off)."""
    return [
        warehouse.hand_off(rt.engine, c.handoff_id, port, rt.renderer, rt.policies, rt.settings, **kwargs)
        for c in warehouse.claim_due(rt.engine, 10)
    ]


def http_port(fake: FakeThreePL, timeout: float = 2.0) -> warehouse.HttpWarehouse:
    return warehouse.HttpWarehouse(httpx.Client(timeout=timeout), fake.url, fake.secret)


def send_outbox(rt: Any, now: datetime | None = None) -> list[Any]:
    """What the drain loop does with the outbox: claim every due row (customer or staff), send it."""
    from aftercare.spine import outbox

    claimed = outbox.claim_due(rt.engine, 100, "test-drain", now=now)
    return [outbox.deliver(rt.engine, c.outbox_id, rt.backend, rt.settings) for c in claimed]


def staff_mails(rt: Any, kind: str, key: str | None = None) -> list[Any]:
    """The staff mails of `kind` (and message key, say `draft-3`) the file backend wrote, as parsed
    messages in outbox order: each is an outbox row without a touchpoint, at staff/<outbox id>.eml."""
    import email
    import email.policy

    from aftercare.models import OutboxMessage

    prefix = f"{kind}:{key}:" if key else f"{kind}:"
    with Session(rt.engine) as s:
        found = s.exec(
            select(OutboxMessage)
            .where(OutboxMessage.message_key.startswith(prefix))  # type: ignore[union-attr]
            .order_by(OutboxMessage.id)  # type: ignore[arg-type]
        ).all()
    paths = [rt.settings.outbox_dir / "staff" / f"{m.id:08d}.eml" for m in found if m.status == "sent"]
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in paths]


def wait_for(check: Callable[[], bool], seconds: float) -> bool:
    """Poll `check` every 50 ms until it holds or `seconds` have passed; its last answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
