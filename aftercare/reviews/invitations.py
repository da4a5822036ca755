"""Review invitations a platform mails for us: Trustpilot's Invitation API, exactly once per order.

When the shop's review requests go to Trustpilot (`destination: trustpilot` in
policies/review_requests.yaml) we send no mail: the request's composer (aftercare/reviews/requests.py)
writes one `review_invitations` row for the order (unique per order, in the same transaction as the
contact rules' verdict), and `send_due` sends it:

    POST {invitations base}/v1/private/business-units/{businessUnitId}/email-invitations
    Authorization: Bearer <token>
    {"consumerEmail", "consumerName", "referenceNumber" (the order's name), "locale", "senderEmail",
     "senderName", "replyTo", "type": "email",
     "serviceReviewInvitation": {"templateId", "preferredSendTime" (MM/dd/yyyy HH:mm:ss, UTC),
                                 "redirectUri"}}

The token is OAuth client credentials: `POST {api base}/v1/oauth/oauth-business-users-for-applications/
accesstoken` with HTTP Basic (API key, secret) and `grant_type=client_credentials`; it is kept until
a minute before its `expires_in` and fetched again on a 401.

Exactly once, as the outbox does it: a row is claimed pending -> sending (compare-and-set; SKIP
LOCKED on PostgreSQL) before Trustpilot is called, so two workers never send the same row. The API
takes no idempotency key, so only an answer that proves Trustpilot did nothing lets a row be tried
again later (with backoff): 429, 503, a connection never made, a token we could not get. A timeout,
a dropped connection or any other 5xx may come after Trustpilot made the invitation: the row becomes
`uncertain` and is never sent again automatically (ops look in Trustpilot Business first). A worker
that stopped mid-send leaves `sending`; once its claim is older than the lease, `recover_stale` makes
it uncertain too. Other 4xx: failed with Trustpilot's reason.

Nothing personal is stored on the row: the address and name are read from the order when it is
sent (a redacted order has none: the row fails with that reason); Trustpilot's error text is kept
with the address masked."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.contact import store as contact_store
from aftercare.contact.dispatch import display_name, locale_of
from aftercare.contact.rules import EVERY_LIST
from aftercare.errors import AftercareError
from aftercare.models import (
    Customer,
    InvitationStatus,
    Order,
    OrderLine,
    ReviewInvitation,
    UTCDateTime,
)
from aftercare.orders import shipping
from aftercare.reviews.publishing import reason_of, retry_after_of
from aftercare.reviews.request_policy import ReviewRequestPolicy
from aftercare.settings import Settings
from aftercare.spine.db import claim_rows

log = logging.getLogger(__name__)

PLATFORM = "trustpilot"
LIST_NAME = "review_requests"
TOKEN_PATH = "/v1/oauth/oauth-business-users-for-applications/accesstoken"
_TABLE: sa.Table = ReviewInvitation.__table__  # type: ignore[attr-defined]


class InvitationError(AftercareError):
    """Trustpilot did not take the invitation; the subclass says whether it may have."""

    def __init__(self, reason: str, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.retry_after = retry_after


class InvitationNotSent(InvitationError):
    """Trustpilot certainly made no invitation (429, 503, never connected, no token): try later."""


class InvitationRefused(InvitationError):
    """Trustpilot refused it (4xx): sending again would get the same answer."""


class InvitationUncertain(InvitationError):
    """The request went out and no clear answer came back: Trustpilot may have made the invitation."""


class TrustpilotNotConfigured(AftercareError):
    """The Trustpilot settings an invitation needs are missing."""


# -- the API ------------------------------------------------------------------------------------------


class TrustpilotInvitations:
    """Trustpilot's Invitation API with a client-credentials token; `client` is an httpx.Client."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        api_base_url: str,
        invitations_base_url: str,
        api_key: str,
        api_secret: str,
        business_unit_id: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        missing = [
            name
            for name, value in (
                ("AFTERCARE_TRUSTPILOT_API_KEY", api_key),
                ("AFTERCARE_TRUSTPILOT_API_SECRET", api_secret),
                ("AFTERCARE_TRUSTPILOT_BUSINESS_UNIT_ID", business_unit_id),
            )
            if not value
        ]
        if missing:
            raise TrustpilotNotConfigured(f"Trustpilot invitations need {', '.join(missing)}")
        self.client = client
        self.api_base_url = api_base_url.rstrip("/")
        self.invitations_base_url = invitations_base_url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self.business_unit_id = business_unit_id
        self.clock = clock
        self._token: str | None = None
        self._token_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.Client | None = None) -> TrustpilotInvitations:
        return cls(
            client or httpx.Client(timeout=settings.trustpilot_invitation_timeout_s),
            api_base_url=settings.trustpilot_base_url,
            invitations_base_url=settings.trustpilot_invitations_base_url,
            api_key=settings.trustpilot_api_key.get_secret_value(),
            api_secret=settings.trustpilot_api_secret.get_secret_value(),
            business_unit_id=settings.trustpilot_business_unit_id,
        )

    def access_token(self) -> str:
        """A bearer token (cached until a minute before it expires). Any failure is InvitationNotSent:
        without a token no invitation was made."""
        if self._token and self.clock() < self._token_until:
            return self._token
        try:
            response = self.client.post(
                self.api_base_url + TOKEN_PATH,
                auth=(self.api_key, self.api_secret),
                data={"grant_type": "client_credentials"},
            )
        except httpx.TransportError as exc:
            raise InvitationNotSent(f"could not get a Trustpilot token: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise InvitationNotSent(
                f"Trustpilot refused a token ({response.status_code}): {reason_of(response)}",
                response.status_code,
                retry_after_of(response),
            )
        try:
            data = response.json()
            token = str(data["access_token"])
            lifetime = float(data.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvitationNotSent("Trustpilot's token answer is not the JSON we expect") from exc
        if not token:
            raise InvitationNotSent("Trustpilot's token answer has no access_token")
        self._token, self._token_until = token, self.clock() + max(0.0, lifetime - 60)
        return token

    def invite(self, body: dict[str, Any]) -> None:
        """POST one email invitation; returns when Trustpilot accepted it (2xx), else raises the
        InvitationError subclass that says whether it may have been made."""
        url = (
            f"{self.invitations_base_url}/v1/private/business-units/"
            f"{quote(self.business_unit_id, safe='')}/email-invitations"
        )
        for fresh_token in (False, True):
            if fresh_token:
                self._token = None
            headers = {"Authorization": f"Bearer {self.access_token()}"}
            try:
                response = self.client.post(url, json=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise InvitationNotSent(f"could not reach Trustpilot: {type(exc).__name__}: {exc}") from exc
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                raise InvitationUncertain(
                    f"Trustpilot did not answer after the invitation was sent ({type(exc).__name__}); "
                    "it may have been made"
                ) from exc
            status = response.status_code
            if 200 <= status < 300:
                return
            if status == 401 and not fresh_token:
                continue  # the token expired early: unauthenticated requests make nothing; once more
            if status in (429, 503):
                raise InvitationNotSent(
                    f"Trustpilot answered {status}: {reason_of(response)}", status, retry_after_of(response)
                )
            if status >= 500 or status == 408:
                raise InvitationUncertain(
                    f"Trustpilot answered {status} ({reason_of(response)}); it may have made the invitation",
                    status,
                )
            raise InvitationRefused(
                f"Trustpilot refused the invitation ({status}): {reason_of(response)}", status
            )
        raise InvitationRefused("Trustpilot refused our token twice (401): check the API key's access", 401)


# -- the rows -----------------------------------------------------------------------------------------


# The order's invitation, written once: a second one for the order (or its touchpoint) changes
# nothing. SQL text, so that a batch of them is one cached executemany (a composer's write, made by
# the dispatcher with the request's verdict). Parameters: `pending_row`.
INSERT_PENDING = sa.text(
    "INSERT INTO review_invitations (order_id, touchpoint_id, platform, locale, send_at, "
    "policy_version, status, attempts, next_attempt_at, created_at) VALUES (:order_id, "
    ":touchpoint_id, :platform, :locale, :send_at, :policy_version, :status, 0, :send_at, :send_at) "
    "ON CONFLICT DO NOTHING"
).bindparams(sa.bindparam("send_at", type_=UTCDateTime()))


def pending_row(
    *, order_id: int, touchpoint_id: int, locale: str, send_at: datetime, policy_version: str
) -> dict[str, Any]:
    """The parameters of `INSERT_PENDING`: the order's invitation, pending from `send_at`."""
    return {
        "order_id": order_id,
        "touchpoint_id": touchpoint_id,
        "platform": PLATFORM,
        "locale": locale,
        "send_at": send_at,
        "policy_version": policy_version,
        "status": InvitationStatus.PENDING.value,
    }


def invited(session: Session, order_ids: Iterable[int]) -> set[int]:
    """Those of these orders that have their invitation already (one query)."""
    ids = sorted(set(order_ids))
    if not ids:
        return set()
    return set(session.execute(sa.select(_TABLE.c.order_id).where(_TABLE.c.order_id.in_(ids))).scalars())


def preferred_send_time(at: datetime) -> str:
    """Trustpilot's preferredSendTime: UTC, MM/dd/yyyy HH:mm:ss."""
    return at.astimezone(UTC).strftime("%m/%d/%Y %H:%M:%S")


@dataclass(frozen=True)
class Sent:
    invitation_id: int
    order_name: str
    status: str  # sent, pending (tried again later), failed, uncertain, cancelled
    reason: str | None = None


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(_TABLE.c.status == InvitationStatus.PENDING, _TABLE.c.next_attempt_at <= now)


def claim_due(engine: Engine, now: datetime, limit: int = 50) -> list[int]:
    """Claim up to `limit` due invitations (pending -> sending); the ids this caller won."""
    rows = claim_rows(
        engine,
        ReviewInvitation,
        [],
        _claimable(now),
        {"status": InvitationStatus.SENDING, "claimed_at": now, "attempts": _TABLE.c.attempts + 1},
        limit,
    )
    return [int(r[0]) for r in rows]


def _settle(engine: Engine, invitation_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(_TABLE)
            .where(_TABLE.c.id == invitation_id, _TABLE.c.status == InvitationStatus.SENDING)
            .values(**values)
        )


def _mask(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<consumer>")
    return text[:2000]


def build_body(
    session: Session, invitation: ReviewInvitation, order: Order, policy: ReviewRequestPolicy
) -> dict[str, Any]:
    """The request body for one invitation, from the order as it is now."""
    customer = session.get(Customer, order.customer_id) if order.customer_id else None
    lang = invitation.locale if invitation.locale in ("ja", "en") else locale_of(order)
    name = (display_name(customer, order, lang) if customer is not None else None) or (
        (order.email or "").split("@")[0]
    )
    tp = policy.trustpilot
    service: dict[str, Any] = {
        "templateId": tp.template_id,
        "preferredSendTime": preferred_send_time(invitation.send_at),
    }
    if tp.redirect_uri:
        service["redirectUri"] = tp.redirect_uri
    body: dict[str, Any] = {
        "consumerEmail": order.email,
        "consumerName": name,
        "referenceNumber": order.name,
        "locale": tp.locale(lang),
        "senderEmail": tp.sender_email,
        "replyTo": tp.reply_to,
        "type": "email",
        "serviceReviewInvitation": service,
    }
    if tp.sender_name:
        body["senderName"] = tp.sender_name
    return body


def _why_not_now(session: Session, order: Order, customer: Customer | None) -> str | None:
    """Why this invitation must not go any more (the order or the customer changed since the
    contact rules let it go), or None."""
    if order.cancelled_at is not None:
        return "the order was cancelled"
    lines = list(session.exec(select(OrderLine).where(OrderLine.order_id == order.id)))
    if shipping.is_fully_refunded(session, order, lines):
        return "the order was refunded in full"
    if customer is not None:
        left = {
            s.list_name
            for s in contact_store.suppressions_for(session, order.shop_domain, customer.email_key)
        }
        hit = left & {LIST_NAME, "feedback", EVERY_LIST}
        if hit:
            return f"the customer left the {sorted(hit)[0]} list"
    return None


def send_one(
    engine: Engine,
    invitation_id: int,
    api: TrustpilotInvitations,
    policy: ReviewRequestPolicy,
    settings: Settings,
    now: datetime,
) -> Sent:
    """Send one claimed (sending) invitation and record how it ended."""
    with Session(engine) as session:
        invitation = session.get(ReviewInvitation, invitation_id)
        if invitation is None or invitation.status != InvitationStatus.SENDING:
            raise AftercareError(f"invitation {invitation_id} is not claimed")
        order = session.get(Order, invitation.order_id)
        assert order is not None
        customer = session.get(Customer, order.customer_id) if order.customer_id else None
        stop = _why_not_now(session, order, customer)
        body = build_body(session, invitation, order, policy) if stop is None and order.email else None
        attempts = invitation.attempts
    if stop is not None:
        _settle(engine, invitation_id, status=InvitationStatus.CANCELLED, last_error=f"not sent: {stop}")
        return Sent(invitation_id, order.name, InvitationStatus.CANCELLED, stop)
    if body is None:
        why = "the order has no customer email (erased?)"
        _settle(engine, invitation_id, status=InvitationStatus.FAILED, last_error=why)
        return Sent(invitation_id, order.name, InvitationStatus.FAILED, why)
    try:
        api.invite(body)
    except InvitationNotSent as exc:
        reason = _mask(exc.reason, order.email, body.get("consumerName"))
        if attempts >= settings.trustpilot_invitation_max_attempts:
            why = f"gave up after {attempts} attempts: {reason}"
            _settle(engine, invitation_id, status=InvitationStatus.FAILED, last_error=why)
            return Sent(invitation_id, order.name, InvitationStatus.FAILED, why)
        delay = min(
            settings.trustpilot_invitation_backoff_cap_s,
            settings.trustpilot_invitation_backoff_base_s * 2 ** max(0, attempts - 1),
        )
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, settings.trustpilot_invitation_backoff_cap_s))
        _settle(
            engine,
            invitation_id,
            status=InvitationStatus.PENDING,
            claimed_at=None,
            next_attempt_at=now + timedelta(seconds=delay),
            last_error=reason,
        )
        return Sent(invitation_id, order.name, InvitationStatus.PENDING, reason)
    except InvitationRefused as exc:
        reason = _mask(exc.reason, order.email, body.get("consumerName"))
        _settle(engine, invitation_id, status=InvitationStatus.FAILED, last_error=reason)
        return Sent(invitation_id, order.name, InvitationStatus.FAILED, reason)
    except InvitationUncertain as exc:
        reason = _mask(exc.reason, order.email, body.get("consumerName"))
        _settle(engine, invitation_id, status=InvitationStatus.UNCERTAIN, last_error=reason)
        return Sent(invitation_id, order.name, InvitationStatus.UNCERTAIN, reason)
    except BaseException as exc:
        # Our own bug or an interrupt after the claim: whether Trustpilot has it is unknown.
        _settle(
            engine,
            invitation_id,
            status=InvitationStatus.UNCERTAIN,
            last_error=f"sending stopped by {type(exc).__name__}: {exc}"[:2000],
        )
        raise
    _settle(engine, invitation_id, status=InvitationStatus.SENT, sent_at=now, last_error=None)
    return Sent(invitation_id, order.name, InvitationStatus.SENT)


def send_due(
    engine: Engine,
    api: TrustpilotInvitations | None,
    policy: ReviewRequestPolicy,
    settings: Settings,
    now: datetime,
    limit: int = 50,
) -> list[Sent]:
    """Recover stale claims, then claim and send every due invitation (at most `limit`). Without an
    API (Trustpilot not configured) nothing is claimed: the rows wait, and `pending_count` says so."""
    recover_stale(engine, timedelta(seconds=settings.trustpilot_invitation_lease_s), now)
    if api is None:
        waiting = pending_count(engine)
        if waiting:
            log.warning(
                "%d review invitation(s) wait: Trustpilot is not configured (AFTERCARE_TRUSTPILOT_API_KEY, "
                "_API_SECRET, _BUSINESS_UNIT_ID)",
                waiting,
            )
        return []
    return [send_one(engine, i, api, policy, settings, now) for i in claim_due(engine, now, limit)]


def recover_stale(engine: Engine, lease: timedelta, now: datetime) -> list[int]:
    """Invitations left `sending` longer than `lease` (a worker that stopped mid-send) become
    uncertain: Trustpilot cannot be asked whether it made one, so none is ever sent again blindly."""
    with engine.begin() as conn:
        stale = list(
            conn.execute(
                sa.update(_TABLE)
                .where(
                    _TABLE.c.status == InvitationStatus.SENDING,
                    sa.or_(_TABLE.c.claimed_at.is_(None), _TABLE.c.claimed_at < now - lease),
                )
                .values(
                    status=InvitationStatus.UNCERTAIN,
                    last_error=(
                        "sending stopped mid-way (the worker's claim ran out): Trustpilot may have the "
                        "invitation; look in Trustpilot Business before sending it again"
                    ),
                )
                .returning(_TABLE.c.id)
            ).scalars()
        )
    for invitation_id in stale:
        log.warning("review invitation %s left sending by a stopped worker: uncertain", invitation_id)
    return stale


def pending_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(_TABLE.c.status == InvitationStatus.PENDING)
            ).scalar_one()
        )
