"""Mailing an approved apology: the `ReviewPlatform` of private replies (see apology.py for the
whole path). Light on purpose: the review sweep settles replies with it, and loads no drafting."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.models import (
    COMPLAINT_REPLY,
    PRIVATE_REPLY_PLATFORM,
    Customer,
    Order,
    RecoveryStatus,
    ReviewReply,
    Touchpoint,
    TouchpointStatus,
    utcnow,
)
from aftercare.models import Review as ReviewRow
from aftercare.orders.receipt import customer_display_name, why_not_mailed
from aftercare.recovery.store import CaseNotFound, case_of_reply
from aftercare.rendering import Renderer
from aftercare.reviews.publishing import PermanentPublishError
from aftercare.reviews.text import normalise_lang
from aftercare.settings import Settings
from aftercare.spine import outbox

KIND = COMPLAINT_REPLY  # policies/contact.yaml: transactional


class PrivateApologyMail:
    """The `ReviewPlatform` of private replies: "publishing" the approved apology is owing the
    customer one transactional mail. In one transaction: the `complaint_reply` touchpoint (unique per
    order and survey), its outbox row (unique per touchpoint) and the case marked answered. The
    drain loop sends it. `find_reply` answers from our own tables, so a worker killed mid-way is
    settled exactly (the mail is owed, or it is not and is owed now)."""

    name = PRIVATE_REPLY_PLATFORM

    def __init__(self, engine: Engine, settings: Settings, renderer: Renderer):
        self.engine = engine
        self.settings = settings
        self.renderer = renderer

    def publish(self, review: ReviewRow, reply: ReviewReply) -> str:
        assert review.id is not None
        now = utcnow()
        with Session(self.engine, expire_on_commit=False) as session:
            case = case_of_reply(session, review.id)
            if case is None:
                raise CaseNotFound(f"review {review.id} is a private reply without a recovery case")
            order = session.get(Order, case.order_id)
            survey = session.get(Touchpoint, case.touchpoint_id)
            assert order is not None and order.id is not None and survey is not None
            why_not = why_not_mailed(order)
            if why_not is not None:
                raise PermanentPublishError(f"the apology cannot be mailed: {why_not}")
            assert order.email is not None
            customer = session.get(Customer, order.customer_id) if order.customer_id else None
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            table = Touchpoint.__table__  # type: ignore[attr-defined]
            session.execute(
                insert(table)
                .values(
                    order_id=order.id,
                    kind=KIND,
                    seq=survey.seq,
                    due_at=now,
                    status=TouchpointStatus.PLANNED,
                    reason=f"recovery case {case.id}: apology approved by {reply.approved_by}",
                    policy_version=case.policy_version,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["order_id", "kind", "seq"])
            )
            touchpoint = session.exec(
                select(Touchpoint).where(
                    Touchpoint.order_id == order.id, Touchpoint.kind == KIND, Touchpoint.seq == survey.seq
                )
            ).one()
            locale = "ja" if normalise_lang(order.locale) == "ja" else "en"
            name = customer_display_name(customer, order)
            rendered = self.renderer.render_email(
                KIND,
                locale,
                {
                    "shop_name": self.settings.shop_name,
                    "order_name": order.name,
                    "customer_name": name,
                    "body": reply.text,
                    "is_test": order.is_test,
                },
            )
            row = outbox.enqueue(
                session,
                touchpoint=touchpoint,
                to_email=order.email,
                to_name=name,
                rendered=rendered,
                locale=locale,
                order_name=order.name,
                is_test=order.is_test,
            )
            case.status = RecoveryStatus.ANSWERED
            case.answered_at = case.answered_at or now
            case.apology_outbox_id = row.id
            session.add(case)
            session.commit()
        return f"outbox:{row.id}"

    def find_reply(self, review: ReviewRow, reply: ReviewReply) -> str | None:
        assert review.id is not None
        with Session(self.engine) as session:
            case = case_of_reply(session, review.id)
        if case is None or case.apology_outbox_id is None:
            return None
        return f"outbox:{case.apology_outbox_id}"
