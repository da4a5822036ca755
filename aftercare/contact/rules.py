"""One rule set, checked when a touchpoint is about to be sent: send now, hold until a time, or skip.

`decide` is a pure function of the facts it is given and `now`: no database, no clock, no network,
so every verdict can be recomputed and tested. Every rule's result is kept in the verdict (passed,
held or skipped, with its reason and, when held, until when), so the timeline can say why a message
went out when it did, or why it did not.

Hold, never drop: quiet hours and frequency caps move a message to the next moment it is allowed.
Only the order (cancelled, refunded in full, a test), the customer (unsubscribed from the list, no
consent for the class in their region) and the stale limit end it. Transactional mail passes the
consent, cap and window rules: it is what the customer is owed about their contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from aftercare.contact.consent import Consent
from aftercare.contact.policy import ContactPolicy, FrequencyCap, MessageClass, SendWindow
from aftercare.contact.timezones import CustomerZone, address_country, customer_zone

# A suppression on this list stops every feedback and promotional mail (a redacted customer's
# hashed entry, a complaint to the shop); transactional mail still goes.
EVERY_LIST = "all"


class Outcome(StrEnum):
    SEND = "send"
    HOLD = "hold"
    SKIP = "skip"


class RuleStatus(StrEnum):
    PASSED = "passed"
    HELD = "held"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class OrderFacts:
    """What the rules need to know about the touchpoint's order."""

    cancelled_at: datetime | None = None
    financial_status: str | None = None
    # The customer keeps none of the units (the caller's measure, e.g. every line refunded).
    refunded_in_full: bool = False
    test: bool = False


@dataclass(frozen=True)
class TouchpointFacts:
    kind: str
    due_at: datetime
    order: OrderFacts = field(default_factory=OrderFacts)
    # The time an earlier verdict postponed it to: the stale limit counts from the later of the two,
    # so a message we held ourselves is never dropped as stale for having waited.
    held_until: datetime | None = None


@dataclass(frozen=True)
class Suppression:
    """The customer left a list: a kind's list ("surveys"), or a whole class's ("feedback")."""

    list_name: str
    at: datetime
    source: str = "unsubscribe link"


@dataclass(frozen=True)
class CustomerFacts:
    shipping_address: Mapping[str, Any] | None = None
    billing_address: Mapping[str, Any] | None = None
    consent: Consent | None = None
    suppressions: Sequence[Suppression] = ()


@dataclass(frozen=True)
class SentMessage:
    """A message to this customer that went out, or is going out (claimed), for the caps."""

    kind: str
    sent_at: datetime


@dataclass(frozen=True)
class RuleResult:
    name: str
    status: RuleStatus
    reason: str
    until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "status": self.status.value,
            "reason": self.reason,
            "until": self.until.astimezone(UTC).isoformat() if self.until else None,
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome, when, and every rule's result."""

    outcome: Outcome
    send_at: datetime | None  # now when sending, the hold's end when held, None when skipped
    rules: tuple[RuleResult, ...]
    kind: str
    message_class: MessageClass
    zone: CustomerZone
    decided_at: datetime
    policy_version: str

    def rule(self, name: str) -> RuleResult:
        return next(r for r in self.rules if r.name == name)

    @property
    def deciding(self) -> RuleResult | None:
        """The rule that decided: the first that skipped, else the one the hold is told by."""
        skipped = [r for r in self.rules if r.status is RuleStatus.SKIPPED]
        if skipped:
            return skipped[0]
        held = {r.name: r for r in self.rules if r.status is RuleStatus.HELD}
        for name in (FREQUENCY_CAP, DUE, SEND_WINDOW):
            if name in held:
                return held[name]
        return None

    def line(self) -> str:
        """One line for the timeline: 'held until 09:00 JST (quiet hours)'."""
        tz = self.zone.tz
        deciding = self.deciding
        if self.outcome is Outcome.SKIP:
            assert deciding is not None
            return f"not sent: {deciding.reason}"
        assert self.send_at is not None
        if self.outcome is Outcome.SEND:
            return f"sending at {local_label(self.send_at, tz)}"
        same_day = self.send_at.astimezone(tz).date() == self.decided_at.astimezone(tz).date()
        when = local_label(self.send_at, tz, with_date=not same_day)
        assert deciding is not None
        if deciding.name == FREQUENCY_CAP:
            return f"postponed until {local_label(self.send_at, tz, with_date=True)} ({deciding.reason})"
        if deciding.name == DUE:
            return f"planned for {when}"
        return f"held until {when} (quiet hours)"

    def as_dict(self) -> dict[str, Any]:
        """The record kept on the touchpoint (JSON-ready)."""
        return {
            "outcome": self.outcome.value,
            "send_at": self.send_at.astimezone(UTC).isoformat() if self.send_at else None,
            "line": self.line(),
            "kind": self.kind,
            "class": self.message_class.value,
            "zone": self.zone.name,
            "zone_reason": self.zone.reason,
            "decided_at": self.decided_at.astimezone(UTC).isoformat(),
            "policy_version": self.policy_version,
            "rules": [r.as_dict() for r in self.rules],
        }


ORDER = "order"
TEST_ORDER = "test_order"
SUPPRESSION = "suppression"
CONSENT = "consent"
STALE = "stale"
DUE = "due"
FREQUENCY_CAP = "frequency_cap"
SEND_WINDOW = "send_window"
RULES = (ORDER, TEST_ORDER, SUPPRESSION, CONSENT, STALE, DUE, FREQUENCY_CAP, SEND_WINDOW)


def decide(
    touchpoint: TouchpointFacts,
    customer: CustomerFacts,
    history: Sequence[SentMessage],
    policy: ContactPolicy,
    now: datetime,
) -> Verdict:
    """Whether and when this touchpoint may be sent, by every rule of `policy`, as of `now`.

    `history` is the customer's mail that went out or is going out (claimed), any kind; kinds the
    policy does not know (staff mail) are not counted. Raises UnknownMessageKind for a touchpoint
    whose kind has no class: a new kind is classed in the policy, never guessed.
    """
    _aware(now, "now")
    _aware(touchpoint.due_at, "due_at")
    if touchpoint.held_until is not None:
        _aware(touchpoint.held_until, "held_until")
    if touchpoint.order.cancelled_at is not None:
        _aware(touchpoint.order.cancelled_at, "cancelled_at")
    for suppression in customer.suppressions:
        _aware(suppression.at, "suppression.at")
    if customer.consent is not None:
        _aware(customer.consent.updated_at, "consent.updated_at")
    # Arithmetic on an aware datetime in a zone with DST is wall-clock arithmetic (10:00 EST + 24 h
    # is 10:00 EDT, 23 real hours later): every instant is taken to UTC first.
    now = now.astimezone(UTC)
    touchpoint = replace(
        touchpoint,
        due_at=touchpoint.due_at.astimezone(UTC),
        held_until=touchpoint.held_until.astimezone(UTC) if touchpoint.held_until else None,
    )
    message_class = policy.message_class(touchpoint.kind)
    zone = customer_zone(customer.shipping_address, customer.billing_address, policy.shop_timezone)
    tz = zone.tz
    transactional = message_class is MessageClass.TRANSACTIONAL

    results: list[RuleResult] = []
    if transactional:
        why = "transactional mail: not subject to this rule"
        results += [RuleResult(name, RuleStatus.PASSED, why) for name in (ORDER, TEST_ORDER, SUPPRESSION)]
        results.append(RuleResult(CONSENT, RuleStatus.PASSED, "transactional mail needs no consent"))
        results.append(RuleResult(STALE, RuleStatus.PASSED, why))
    else:
        results.append(_order_rule(touchpoint.order, tz))
        results.append(_test_rule(touchpoint.order))
        results.append(_suppression_rule(touchpoint.kind, message_class, customer.suppressions, policy, tz))
        country = address_country(customer.shipping_address, customer.billing_address)
        results.append(_consent_rule(message_class, country, customer.consent, policy, tz))
        results.append(_stale_rule(touchpoint, policy, now))

    due = _due_rule(touchpoint.due_at, now, tz)
    results.append(due)
    if transactional:
        results.append(RuleResult(FREQUENCY_CAP, RuleStatus.PASSED, "transactional mail is never capped"))
        earliest = max(now, touchpoint.due_at)
        results.append(RuleResult(SEND_WINDOW, RuleStatus.PASSED, "transactional mail goes at any hour"))
    else:
        cap = _cap_rule(message_class, history, policy, now)
        results.append(cap)
        earliest = max(now, touchpoint.due_at, cap.until or now)
        results.append(_window_rule(earliest, now, policy.send_window, tz))

    send_at = results[-1].until or earliest
    if any(r.status is RuleStatus.SKIPPED for r in results):
        outcome, when = Outcome.SKIP, None
    elif send_at > now:
        outcome, when = Outcome.HOLD, send_at
    else:
        outcome, when = Outcome.SEND, now
    return Verdict(
        outcome=outcome,
        send_at=when,
        rules=tuple(results),
        kind=touchpoint.kind,
        message_class=message_class,
        zone=zone,
        decided_at=now,
        policy_version=policy.version,
    )


def _aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


def local_label(at: datetime, tz: ZoneInfo, *, with_date: bool = False) -> str:
    """'09:00 JST', '2026-12-01 09:00 JST'; a zone without a lettered abbreviation is named."""
    local = at.astimezone(tz)
    abbr = local.tzname() or ""
    label = abbr if abbr.isalpha() else f"UTC{abbr} ({tz.key})"
    return f"{local:%Y-%m-%d %H:%M} {label}" if with_date else f"{local:%H:%M} {label}"


def _day(at: datetime, tz: ZoneInfo) -> str:
    return f"{at.astimezone(tz):%Y-%m-%d}"


def _order_rule(order: OrderFacts, tz: ZoneInfo) -> RuleResult:
    if order.cancelled_at is not None:
        return RuleResult(ORDER, RuleStatus.SKIPPED, f"order cancelled on {_day(order.cancelled_at, tz)}")
    status = (order.financial_status or "").lower()
    if order.refunded_in_full or status == "refunded":
        return RuleResult(ORDER, RuleStatus.SKIPPED, "order refunded in full")
    if status == "voided":
        return RuleResult(ORDER, RuleStatus.SKIPPED, "order voided")
    return RuleResult(ORDER, RuleStatus.PASSED, "order stands (not cancelled, not refunded in full)")


def _test_rule(order: OrderFacts) -> RuleResult:
    if order.test:
        return RuleResult(TEST_ORDER, RuleStatus.SKIPPED, "test order")
    return RuleResult(TEST_ORDER, RuleStatus.PASSED, "not a test order")


def _suppression_rule(
    kind: str,
    message_class: MessageClass,
    suppressions: Sequence[Suppression],
    policy: ContactPolicy,
    tz: ZoneInfo,
) -> RuleResult:
    own_list = policy.list_of(kind)
    lists = {own_list, message_class.value, EVERY_LIST}
    hits = sorted((s for s in suppressions if s.list_name in lists), key=lambda s: s.at)
    if not hits:
        return RuleResult(
            SUPPRESSION, RuleStatus.PASSED, f"not unsubscribed from {own_list} or all {message_class} mails"
        )
    first = hits[0]
    if first.list_name == own_list:
        what = first.list_name
    elif first.list_name == EVERY_LIST:
        what = "every mail but those about an order"
    else:
        what = f"all {message_class} mails"
    return RuleResult(SUPPRESSION, RuleStatus.SKIPPED, f"unsubscribed from {what} on {_day(first.at, tz)}")


_REFUSALS = {
    "unsubscribed": "unsubscribed from the shop's emails",
    "redacted": "customer data redacted",
    "invalid": "email address marked invalid",
}


def _consent_rule(
    message_class: MessageClass,
    country: str | None,
    consent: Consent | None,
    policy: ContactPolicy,
    tz: ZoneInfo,
) -> RuleResult:
    model = policy.consent_model(message_class, country)
    region = country or "an unknown country"
    held = (
        "no consent on record" if consent is None else f"{consent.state} since {_day(consent.updated_at, tz)}"
    )
    if model == "opt_in":
        if consent is not None and consent.state in policy.consent.consent_states:
            return RuleResult(CONSENT, RuleStatus.PASSED, f"{message_class} in {region} is opt-in: {held}")
        return RuleResult(
            CONSENT, RuleStatus.SKIPPED, f"no consent for {message_class} mail in {region} (opt-in; {held})"
        )
    if consent is not None and consent.state in policy.consent.refusal_states:
        what = _REFUSALS.get(consent.state, f"email marketing {consent.state}")
        return RuleResult(
            CONSENT,
            RuleStatus.SKIPPED,
            f"{what} on {_day(consent.updated_at, tz)} (Shopify: {consent.source})",
        )
    return RuleResult(CONSENT, RuleStatus.PASSED, f"{message_class} in {region} is opt-out: {held}")


def _stale_rule(touchpoint: TouchpointFacts, policy: ContactPolicy, now: datetime) -> RuleResult:
    due = max(touchpoint.due_at, touchpoint.held_until or touchpoint.due_at)
    late = now - due
    limit = f"limit {policy.stale_after_days} days"
    if late > policy.stale_after:
        hours = late.seconds // 3600
        ago = f"{late.days} days" + (f" {hours} h" if hours else "")
        return RuleResult(STALE, RuleStatus.SKIPPED, f"stale: {ago} past due ({limit})")
    return RuleResult(STALE, RuleStatus.PASSED, f"within the stale limit ({limit})")


def _due_rule(due_at: datetime, now: datetime, tz: ZoneInfo) -> RuleResult:
    if due_at > now:
        return RuleResult(
            DUE, RuleStatus.HELD, f"due at {local_label(due_at, tz, with_date=True)}", until=due_at
        )
    return RuleResult(DUE, RuleStatus.PASSED, f"due since {local_label(due_at, tz, with_date=True)}")


def cap_allows_at(
    caps: Sequence[FrequencyCap], sent: Sequence[datetime], now: datetime
) -> tuple[datetime | None, FrequencyCap | None]:
    """The earliest moment (>= now) every cap allows one more message, and the cap that binds;
    (None, None) when they allow one now. A cap of N per W counts sends in the W before a moment."""
    now = now.astimezone(UTC)
    sent = [t.astimezone(UTC) for t in sent]
    until: datetime | None = None
    binding: FrequencyCap | None = None
    for cap in caps:
        recent = sorted((t for t in sent if t > now - cap.window), reverse=True)
        if len(recent) < cap.max_messages:
            continue
        # The send that has to leave the window before one more fits: the max_messages-th newest.
        allowed = recent[cap.max_messages - 1] + cap.window
        if until is None or allowed > until:
            until, binding = allowed, cap
    return until, binding


def _cap_rule(
    message_class: MessageClass, history: Sequence[SentMessage], policy: ContactPolicy, now: datetime
) -> RuleResult:
    caps = policy.caps(message_class)
    if not caps:
        return RuleResult(FREQUENCY_CAP, RuleStatus.PASSED, f"no cap on {message_class} mail")
    sent = [
        m.sent_at for m in history if m.kind in policy.kinds and policy.message_class(m.kind) is message_class
    ]
    for t in sent:
        _aware(t, "sent_at")
    sent = [t.astimezone(UTC) for t in sent]
    until, binding = cap_allows_at(caps, sent, now)
    if until is None or binding is None:
        counts = "; ".join(
            f"{sum(1 for t in sent if t > now - c.window)} sent of {c.describe(message_class.value)}"
            for c in caps
        )
        return RuleResult(FREQUENCY_CAP, RuleStatus.PASSED, counts)
    return RuleResult(FREQUENCY_CAP, RuleStatus.HELD, binding.describe(message_class.value), until=until)


def _window_rule(earliest: datetime, now: datetime, window: SendWindow, tz: ZoneInfo) -> RuleResult:
    at = next_in_window(earliest, tz, window)
    span = f"{window.describe()} in {tz.key}"
    if at <= now:
        return RuleResult(
            SEND_WINDOW, RuleStatus.PASSED, f"{local_label(now, tz)} is inside {span}", until=None
        )
    if at == earliest:
        return RuleResult(
            SEND_WINDOW,
            RuleStatus.PASSED,
            f"{local_label(at, tz, with_date=True)} is inside {span}",
            until=at,
        )
    return RuleResult(SEND_WINDOW, RuleStatus.HELD, f"quiet hours: outside {span}", until=at)


def wall_instant(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The first instant at which clocks in `tz` read `wall` (or later) on `day`, in UTC.

    A wall time inside a spring-forward gap does not exist: the answer is the jump itself (clocks
    read 03:00 the moment after 01:59:59 in New York). A time that occurs twice (fall back) gives
    the first occurrence."""
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first
    # In a gap: fold=1 maps with the offset before the jump, to an instant whose clock reads
    # earlier than `naive`; fold=0 to one that reads later. The jump lies between: bisect to the second
    # (transitions fall on whole seconds).
    lo = int(naive.replace(tzinfo=tz, fold=1).timestamp())
    hi = int(first.timestamp())
    lo, hi = min(lo, hi), max(lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def in_window(at: datetime, tz: ZoneInfo, window: SendWindow) -> bool:
    """Whether `at` falls inside the window of its own local day (opening included, closing not)."""
    day = at.astimezone(tz).date()
    return wall_instant(day, window.start, tz) <= at < wall_instant(day, window.end, tz)


def next_in_window(earliest: datetime, tz: ZoneInfo, window: SendWindow) -> datetime:
    """The first instant at or after `earliest` inside the send window in `tz`, DST-safe."""
    day = earliest.astimezone(tz).date()
    for offset in range(4):
        d = day + timedelta(days=offset)
        opens = wall_instant(d, window.start, tz)
        closes = wall_instant(d, window.end, tz)
        if closes <= earliest or closes <= opens:
            continue
        return max(earliest.astimezone(UTC), opens)
    raise AssertionError(f"no send window within 4 days of {earliest} in {tz.key}")  # pragma: no cover
