"""The warehouse hand-off: for each paid, shippable order a shipping instruction (JSON, every special
request named through policies/requests.yaml), a picking list and a packing slip (納品書), versioned
per order and sent through a port: files under `<var_dir>/warehouse/<shop domain>/<Shopify order id>/`
by default, or a 3PL's HTTP API (HMAC-signed, one idempotency key per order version, retried with
backoff on 5xx/timeouts).
Every instruction names its action: "ship", or "cancel" for an order cancelled after the warehouse
had (or may have had) it and before it shipped: a version of its own, sent the same way.

Planning runs in the order's transaction (`plan_handoff`); sending runs later, one claimed hand-off at
a time (`claim_due`, `hand_off`), like the outbox."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import PermanentWarehouseError, TransientWarehouseError
from aftercare.models import HandoffStatus, Order, OrderLine, Refund, Shipment, WarehouseHandoff, utcnow
from aftercare.orders.receipt import FLAG_MISSING_ADDRESS, payment_state
from aftercare.orders.shipping import shippable_quantities
from aftercare.policies import Policies, RequestsPolicy
from aftercare.rendering import Renderer
from aftercare.settings import Settings
from aftercare.spine.db import claim_rows

log = logging.getLogger(__name__)

SCHEMA = "aftercare.shipping-instruction/1"
ACTION_SHIP = "ship"
ACTION_CANCEL = "cancel"
# How long a cancellation waits before trying again while an earlier version of its order is still
# being sent: it must not reach the warehouse before the instruction it cancels (the sweep's period).
CANCEL_WAIT = timedelta(seconds=30)
SIGNATURE_HEADER = "X-Aftercare-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ACTION_HEADER = "X-Aftercare-Action"  # "ship" or "cancel", also in the body: for the 3PL's routing

FLAG_DATE_PAST = "requested_delivery_date_past"
FLAG_DATE_UNPARSEABLE = "requested_delivery_date_unparseable"

# 2026-11-28, 2026/11/28, 2026.11.28, 2026年11月28日, each optionally followed by a weekday: (土), (Sat).
_DATE = re.compile(
    r"^\s*(\d{4})\s*(?:[-/.]|年)\s*(\d{1,2})\s*(?:[-/.]|月)\s*(\d{1,2})\s*日?\s*"
    r"(?:[(（]\s*[^)）]{1,9}\s*[)）])?\s*$"
)


# --- The instruction -------------------------------------------------------------------------------


def parse_requested_date(raw: str, today: date) -> tuple[date | None, str | None]:
    """(date, None) for a date we can read that is not in the past; else (None, flag). Nothing is
    guessed: anything else is passed on verbatim with the flag saying why."""
    match = _DATE.match(raw.translate(_FULLWIDTH_DIGITS))
    if not match:
        return None, FLAG_DATE_UNPARSEABLE
    try:
        wanted = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None, FLAG_DATE_UNPARSEABLE
    if wanted < today:
        return None, FLAG_DATE_PAST
    return wanted, None


_FULLWIDTH_DIGITS = str.maketrans("０１２３４５６７８９／－．（）", "0123456789/-.()")


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _amount(value: Decimal) -> str:
    """A money amount written the same however the order was read (12100 from the webhook, 12100.0000
    back from the database), like `placed_at` in UTC: planning from a reloaded order (a refund) must
    not see a new version where nothing changed."""
    return format(Decimal(value).normalize(), "f")


def build_instruction(
    order: Order,
    lines: list[OrderLine],
    policy: RequestsPolicy,
    today: date,
    shippable: dict[int, int] | None = None,
) -> dict[str, Any]:
    """The shipping instruction for the warehouse, from the order as we hold it. Special requests are
    named by the shop's policy; every note attribute and line property is also passed verbatim.
    `shippable` (line id -> units, `shipping.shippable_quantities`) leaves refunded units out: the
    warehouse is never asked to ship one."""
    attributes = [
        {"name": _text(a.get("name")), "value": a.get("value")}
        for a in (order.raw or {}).get("note_attributes") or []
        if isinstance(a, dict)
    ]
    requests: dict[str, str] = {}
    for attr in attributes:
        kind = policy.attribute_kind(attr["name"])
        if kind and _text(attr["value"]):
            requests[kind] = _text(attr["value"])
    flags: list[str] = []
    requested_raw = requests.get("delivery_date")
    requested: date | None = None
    if requested_raw:
        requested, flag = parse_requested_date(requested_raw, today)
        if flag:
            flags.append(flag)
    box_raw = requests.get("delivery_box")
    wrap_raw = requests.get("gift_wrap")
    ship_lines = []
    for line in lines:
        quantity = line.quantity if shippable is None else shippable.get(line.shopify_id, line.quantity)
        if not line.requires_shipping or quantity <= 0:
            continue
        props = [{"name": _text(p.get("name")), "value": p.get("value")} for p in line.properties]
        named: dict[str, list[str]] = {}
        for prop in props:
            kind = policy.property_kind(prop["name"])
            if kind and _text(prop["value"]):
                named.setdefault(kind, []).append(_text(prop["value"]))
        ship_lines.append(
            {
                "line_id": line.shopify_id,
                "sku": line.sku,
                "title": line.title,
                "variant": line.variant_title,
                "quantity": quantity,
                "unit_price": _amount(line.price),
                "engraving": named.get("engraving", []),
                "gift_wrap": None if "gift_wrap" not in named else not policy.says_no(named["gift_wrap"][0]),
                "requests": named,
                "properties": props,
            }
        )
    address = order.shipping_address or {}
    gift_message = order.gift_message or requests.get("gift_message")
    return {
        "schema": SCHEMA,
        "action": ACTION_SHIP,
        "shop_domain": order.shop_domain,
        "order": {
            "id": order.shopify_id,
            "name": order.name,
            "number": order.number,
            "placed_at": order.placed_at.astimezone(UTC).isoformat(),
            "locale": order.locale,
            "currency": order.currency,
            "total": _amount(order.total),
        },
        "ship_to": {
            k: address.get(k)
            for k in (
                "name",
                "last_name",
                "first_name",
                "company",
                "zip",
                "province",
                "city",
                "address1",
                "address2",
                "country",
                "country_code",
                "phone",
            )
        },
        "shipping_method": order.shipping_method,
        "lines": ship_lines,
        "gift": {
            "is_gift": order.is_gift,
            "message": gift_message,
            "wrap": None if wrap_raw is None else not policy.says_no(wrap_raw),
            "wrap_request": wrap_raw,
            "noshi": requests.get("noshi"),
            "hide_prices": order.is_gift,  # a gift's packing slip never shows what it cost
        },
        "delivery": {
            "requested_date": requested.isoformat() if requested else None,
            "requested_date_raw": requested_raw,
            "time_window": requests.get("delivery_time"),
            "leave_at_door": None if box_raw is None else not policy.says_no(box_raw),
            "leave_at_door_request": box_raw,
        },
        "note": order.note,
        "note_attributes": attributes,
        "flags": flags,
        "policy_version": policy.version,
    }


def action_of(instruction: dict[str, Any]) -> str:
    """ "ship" or "cancel"; versions written before instructions named their action are "ship"."""
    return str(instruction.get("action") or ACTION_SHIP)


def is_cancellation(handoff: Any) -> bool:
    return action_of(handoff.instruction) == ACTION_CANCEL


def digest(instruction: dict[str, Any]) -> str:
    """What identifies a version: the instruction's content, canonically serialised. The default
    action ("ship") is left out, so versions written before the field existed keep their identity
    and an unchanged order does not become a new version."""
    if action_of(instruction) == ACTION_SHIP:
        instruction = {k: v for k, v in instruction.items() if k != "action"}
    return hashlib.sha256(json.dumps(instruction, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class CallBack:
    """Why the warehouse must not ship an order any more: its unsent versions are withdrawn and one it
    has (or may have) is cancelled. `code` and `at` go into the cancellation instruction."""

    why: str  # for people: "order cancelled", "order refunded in full", "order voided"
    code: str  # for the 3PL: Shopify's cancel_reason, or "refunded" / "voided"
    at: datetime


def call_back(
    session: Session, order: Order, lines: list[OrderLine], shippable: dict[int, int]
) -> CallBack | None:
    """The order was cancelled, or none of the units it would ship is still the customer's (refunds
    for every one, or Shopify's financial status `refunded` / `voided`, with or without a refund
    delivery): a refund in full is treated like a cancellation. None when the order still ships."""
    if order.cancelled_at is not None:
        code = (order.raw or {}).get("cancel_reason") or "cancelled"
        return CallBack("order cancelled", code, order.cancelled_at)
    ordered = [line for line in lines if line.requires_shipping and line.quantity > 0]
    if not ordered or any(shippable.get(line.shopify_id, 0) > 0 for line in ordered):
        return None
    if order.financial_status == "voided":
        return CallBack("order voided", "voided", order.source_updated_at)
    last_refund = session.exec(
        select(Refund.refunded_at).where(Refund.order_id == order.id).order_by(Refund.refunded_at.desc())  # type: ignore[attr-defined]
    ).first()
    return CallBack("order refunded in full", "refunded", last_refund or order.source_updated_at)


def why_not_ready(
    order: Order, lines: list[OrderLine], shipped: bool, shippable: dict[int, int] | None = None
) -> str | None:
    """Why this order is not handed to the warehouse (now), or None when it should be. `shippable`
    (line id -> units not refunded) defaults to the lines as ordered."""
    units = {line.shopify_id: line.quantity for line in lines} if shippable is None else shippable
    if order.cancelled_at is not None:
        return "order cancelled"
    if order.is_test:
        return "test order: nothing ships"
    if payment_state(order) != "paid":
        return f"not paid ({order.financial_status})"
    if not any(line.requires_shipping and units.get(line.shopify_id, 0) > 0 for line in lines):
        return "nothing to ship"
    if FLAG_MISSING_ADDRESS in (order.flags or []):
        return "no usable shipping address"
    if shipped or order.fulfillment_status in ("fulfilled", "partial"):
        return "already shipping"
    return None


def plan_handoff(
    session: Session, order: Order, lines: list[OrderLine], policies: Policies, *, today: date | None = None
) -> WarehouseHandoff | None:
    """The hand-off for the order as it is now: a new version when its instruction changed (before it
    ships), else the one we have. The instruction carries the units not refunded, so a partial
    refund before shipping is a new version. An order called back (cancelled, refunded in full,
    voided: `call_back`) has its unsent versions withdrawn, and when the warehouse has one already, a
    cancellation version tells it (see `_plan_cancellation`). Once called back, nothing re-opens it."""
    assert order.id is not None
    shipped = session.exec(select(Shipment.id).where(Shipment.order_id == order.id)).first() is not None
    # Locked (PostgreSQL) while we decide: the sender's claim skips locked rows, so a pending version
    # cannot go out between our reading it as unsent and withdrawing it (the warehouse would then
    # hold an order we believe superseded, and get no cancellation). On SQLite the caller's
    # transaction already holds the write lock (receipt.lock_order).
    versions = list(
        session.exec(
            select(WarehouseHandoff)
            .where(WarehouseHandoff.order_id == order.id)
            .order_by(WarehouseHandoff.version)
            .with_for_update()
        )
    )
    cancellation = next((v for v in versions if is_cancellation(v)), None)
    if cancellation is not None:
        return cancellation
    shippable = shippable_quantities(session, order, lines)
    called_back = call_back(session, order, lines, shippable)
    if called_back is not None:
        shipping = shipped or order.fulfillment_status in ("fulfilled", "partial")
        return _plan_cancellation(session, order, versions, shipping, policies.requests.version, called_back)
    if why_not_ready(order, lines, shipped, shippable) is not None:
        return None
    today = today or utcnow().astimezone(policies.shipping.tz).date()
    instruction = build_instruction(order, lines, policies.requests, today, shippable)
    content = digest(instruction)
    latest = versions[-1] if versions else None
    if latest is not None and latest.digest == content:
        return latest
    version = (latest.version + 1) if latest else 1
    _withdraw(session, versions, f"superseded by version {version}")
    handoff = WarehouseHandoff(
        order_id=order.id,
        order_name=order.name,
        version=version,
        digest=content,
        instruction=instruction,
        policy_version=policies.requests.version,
        flags=instruction["flags"],
    )
    session.add(handoff)
    session.flush()
    return handoff


# A hand-off that failed this way may have reached the warehouse: its attempts ran out on timeouts
# or 5xx, or its worker died while sending it. (A refusal, the 3PL's 4xx, keeps the 3PL's reason.)
GAVE_UP = "gave up"


def may_be_held(handoff: Any) -> bool:
    """Whether the warehouse has, or may have, this ship instruction: it acknowledged it, it is being
    sent, an attempt failed in a way that may have reached it (a timeout, a 5xx; it is retried
    later), or we gave up on it after such attempts. A refused one it does not have."""
    return action_of(handoff.instruction) == ACTION_SHIP and (
        handoff.status in (HandoffStatus.SENT, HandoffStatus.SENDING)
        or (handoff.status == HandoffStatus.PENDING and handoff.attempts > 0)
        or (handoff.status == HandoffStatus.FAILED and (handoff.last_error or "").startswith(GAVE_UP))
    )


def build_cancellation(
    order: Order, cancels: WarehouseHandoff, policy_version: str, called_back: CallBack | None = None
) -> dict[str, Any]:
    """The instruction that calls a hand-off back: the order's reference, the version (and the
    warehouse's own reference for it) it cancels, and why (Shopify's cancel reason, or "refunded" /
    "voided"). No lines: nothing is to be picked. Without `called_back`, the order's cancellation."""
    if called_back is None:
        assert order.cancelled_at is not None
        called_back = CallBack(
            "order cancelled", (order.raw or {}).get("cancel_reason") or "cancelled", order.cancelled_at
        )
    return {
        "schema": SCHEMA,
        "action": ACTION_CANCEL,
        "shop_domain": order.shop_domain,
        "order": {"id": order.shopify_id, "name": order.name, "number": order.number},
        "cancels_version": cancels.version,
        "cancels_reference": cancels.reference,
        "reason": called_back.code,
        "cancelled_at": called_back.at.astimezone(UTC).isoformat(),
        "flags": [],
        "policy_version": policy_version,
    }


def _plan_cancellation(
    session: Session,
    order: Order,
    versions: list[WarehouseHandoff],
    shipped: bool,
    policy_version: str,
    called_back: CallBack,
) -> WarehouseHandoff | None:
    """A called-back order without a cancellation yet. Versions not sent yet are withdrawn. When the
    warehouse has (or may have) one and nothing has shipped, one cancellation version is planned
    (planning again finds it, in `plan_handoff`). Once a shipment exists no cancellation is sent: the
    parcel has left (the timeline says so)."""
    held = [v for v in versions if may_be_held(v)]
    _withdraw(session, versions, f"{called_back.why} before the warehouse had it")
    if not held or shipped:
        return None
    instruction = build_cancellation(order, held[-1], policy_version, called_back)
    assert order.id is not None
    cancellation = WarehouseHandoff(
        order_id=order.id,
        order_name=order.name,
        version=versions[-1].version + 1,
        digest=digest(instruction),
        instruction=instruction,
        policy_version=policy_version,
        flags=[],
    )
    session.add(cancellation)
    session.flush()
    return cancellation


def _withdraw(session: Session, versions: list[WarehouseHandoff], reason: str) -> None:
    for old in versions:
        if old.status == HandoffStatus.PENDING:
            old.status, old.last_error = HandoffStatus.SUPERSEDED, reason
            session.add(old)


# --- Documents -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HandoffDocuments:
    """One version of an order's hand-off, ready for a port. A cancellation has no picking list or
    packing slip, only a short note for people."""

    order_name: str
    version: int
    idempotency_key: str
    # Who the order is, for a port that files it: names are neither unique nor safe ("#1001",
    # "1001" and "注文1001" are three orders, and every shop has a #1001); these two are.
    shop_domain: str
    shopify_order_id: str
    instruction: dict[str, Any]
    picking_list: str
    packing_slip_text: str
    packing_slip_html: str
    action: str = ACTION_SHIP
    cancellation_note: str = ""

    def body(self) -> bytes:
        """The instruction as sent: the bytes the signature covers."""
        return json.dumps(
            {**self.instruction, "version": self.version}, ensure_ascii=False, sort_keys=True
        ).encode()


def idempotency_key(handoff: Any) -> str:
    """One key per order version: a resent version is the same request to the 3PL, a new one is not.
    An order is cancelled once, so its cancellation's key names the order and the action only."""
    order = f"{handoff.instruction['shop_domain']}:{handoff.instruction['order']['id']}"
    return f"{order}:cancel" if is_cancellation(handoff) else f"{order}:v{handoff.version}"


def documents(handoff: Any, renderer: Renderer, policy: RequestsPolicy, shop_name: str) -> HandoffDocuments:
    """Render the picking list (warehouse's language) and packing slip (the customer's) for a version;
    for a cancellation, the note that tells the warehouse not to ship."""
    data = handoff.instruction
    context = {"shop_name": shop_name, "i": data, "version": handoff.version, "flags": data.get("flags", [])}
    if is_cancellation(handoff):
        return HandoffDocuments(
            order_name=handoff.order_name,
            version=handoff.version,
            idempotency_key=idempotency_key(handoff),
            shop_domain=str(data.get("shop_domain") or ""),
            shopify_order_id=str(data["order"].get("id") or ""),
            instruction=data,
            picking_list="",
            packing_slip_text="",
            packing_slip_html="",
            action=ACTION_CANCEL,
            cancellation_note=renderer.render("cancellation_note.txt", policy.warehouse_locale, context),
        )
    slip_locale = data["order"]["locale"] if data["order"]["locale"] in ("ja", "en") else "en"
    return HandoffDocuments(
        order_name=handoff.order_name,
        version=handoff.version,
        idempotency_key=idempotency_key(handoff),
        shop_domain=str(data.get("shop_domain") or ""),
        shopify_order_id=str(data["order"].get("id") or ""),
        instruction=data,
        picking_list=renderer.render("picking_list.txt", policy.warehouse_locale, context),
        packing_slip_text=renderer.render("packing_slip.txt", slip_locale, context),
        packing_slip_html=renderer.render("packing_slip.html", slip_locale, context),
    )


# --- Ports -----------------------------------------------------------------------------------------


class WarehousePort(Protocol):
    name: str

    def submit(self, docs: HandoffDocuments) -> str:
        """Hand over one version; return the warehouse's reference. Raise TransientWarehouseError when a
        retry may help, PermanentWarehouseError (with the warehouse's reason) when it cannot."""
        ...


class UnsafeFolder(PermanentWarehouseError):
    """An order's folder would not be inside the warehouse directory (never expected: names are
    sanitised first; this is the last check before writing)."""


def path_segment(value: str, fallback: str) -> str:
    """One directory name from text a stranger controls: only [0-9A-Za-z._-], never starting with a
    dot (so never `.`, `..` or hidden), at most 80 characters. Text that had to change gets a short
    hash of the original, so two different values never share a folder ("a/b" and "a-b")."""
    cleaned = re.sub(r"[^0-9A-Za-z._-]+", "-", value).strip("-.")[:80]
    if cleaned and cleaned == value:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned or fallback}-{digest}"


def order_folder(directory: Path, shop_domain: str, shopify_order_id: str, order_name: str = "") -> Path:
    """`<directory>/<shop domain>/<Shopify order id>/`: one folder per order of one shop, whatever its
    name. Domains are compared without case, as DNS does. An order without a Shopify id (never one
    from Shopify itself) is filed under `name-<its name>`."""
    shop = path_segment(shop_domain.strip().lower(), "shop")
    if shopify_order_id:
        order = path_segment(shopify_order_id, "order")
    else:
        order = "name-" + path_segment(order_name, "order")
    target = directory / shop / order
    if not target.resolve().is_relative_to(directory.resolve()):
        raise UnsafeFolder(f"refusing to write outside {directory}: {shop_domain!r} / {shopify_order_id!r}")
    return target


class FileWarehouse:
    """Writes `<dir>/<shop domain>/<Shopify order id>/` instruction.json, picking_list.txt,
    packing_slip.{txt,html} (the order's name is inside them): the default, for a shop that prints
    and packs itself. Rewriting a version writes the same files. A cancellation adds CANCELLED.json
    and CANCELLED.txt beside them (upper case: listed first, hard to miss) and leaves the
    instruction it cancels in place, so the folder tells the whole story."""

    name = "files"

    def __init__(self, directory: Path):
        self.directory = directory

    def submit(self, docs: HandoffDocuments) -> str:
        target = order_folder(self.directory, docs.shop_domain, docs.shopify_order_id, docs.order_name)
        target.mkdir(parents=True, exist_ok=True)
        instruction = (
            json.dumps(
                {**docs.instruction, "version": docs.version}, ensure_ascii=False, indent=2, sort_keys=True
            )
            + "\n"
        )
        if docs.action == ACTION_CANCEL:
            _write_atomically(
                target, {"CANCELLED.json": instruction, "CANCELLED.txt": docs.cancellation_note}
            )
            return str(target / "CANCELLED.json")
        _write_atomically(
            target,
            {
                "instruction.json": instruction,
                "picking_list.txt": docs.picking_list,
                "packing_slip.txt": docs.packing_slip_text,
                "packing_slip.html": docs.packing_slip_html,
            },
        )
        return str(target)


def _write_atomically(target: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        tmp = target / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target / name)  # atomic: a reader never sees half a file


def sign(secret: str, body: bytes) -> str:
    """The signature header value for a body: 'sha256=' + hex HMAC-SHA256 under the shared secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _reason(response: httpx.Response) -> str:
    """The 3PL's own words: a JSON error/message field if there is one, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "errors", "reason"):
            if data.get(key):
                value = data[key]
                return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return response.text.strip()[:500] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class HttpWarehouse:
    """POSTs the instruction JSON to a 3PL, signed (HMAC-SHA256 of the raw body) with an idempotency
    key per order version. 2xx: accepted; 5xx, 429, timeouts, refused connections: transient; any
    other 4xx: refused, with the 3PL's reason. A cancellation goes to the same URL, signed the same
    way, with `"action": "cancel"` in the body (and the X-Aftercare-Action header) and its own key."""

    name = "http"

    def __init__(self, client: httpx.Client, url: str, secret: str):
        self.client = client
        self.url = url
        self.secret = secret

    def submit(self, docs: HandoffDocuments) -> str:
        body = docs.body()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            SIGNATURE_HEADER: sign(self.secret, body),
            IDEMPOTENCY_HEADER: docs.idempotency_key,
            "X-Aftercare-Order": docs.order_name.encode("ascii", "replace").decode(),
            ACTION_HEADER: docs.action,
        }
        try:
            response = self.client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientWarehouseError(
                f"timed out talking to the warehouse: {type(exc).__name__}"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientWarehouseError(f"could not reach the warehouse: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            try:
                data = response.json()
            except ValueError:
                data = None
            ref = data.get("id") or data.get("reference") if isinstance(data, dict) else None
            return str(ref or f"HTTP {status}")[:255]
        if status >= 500 or status in (408, 429):
            raise TransientWarehouseError(
                f"warehouse answered {status}: {_reason(response)}", status, _retry_after(response)
            )
        what = "cancellation" if docs.action == ACTION_CANCEL else "instruction"
        raise PermanentWarehouseError(f"warehouse refused the {what} ({status}): {_reason(response)}", status)


def make_warehouse(settings: Settings) -> WarehousePort:
    if settings.warehouse_backend == "http":
        client = httpx.Client(timeout=settings.warehouse_timeout_s)
        return HttpWarehouse(client, settings.warehouse_url, settings.warehouse_secret.get_secret_value())
    assert settings.warehouse_dir is not None
    return FileWarehouse(settings.warehouse_dir)


# --- Sending ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedHandoff:
    handoff_id: int
    order_name: str
    version: int


def _abandoned(now: datetime, lease: timedelta) -> sa.ColumnElement[bool]:
    """In `sending` longer than the lease: the worker died mid-send (its attempt was not recorded)."""
    return sa.and_(
        WarehouseHandoff.status == HandoffStatus.SENDING, WarehouseHandoff.claimed_at < now - lease
    )


def _claimable(now: datetime, lease: timedelta, max_attempts: int) -> sa.ColumnElement[bool]:
    return sa.or_(
        sa.and_(WarehouseHandoff.status == HandoffStatus.PENDING, WarehouseHandoff.next_attempt_at <= now),
        # A worker that died mid-send: safe to send again, the idempotency key makes it the same request.
        # Its death counts as an attempt (added by the claim), so at least one attempt must be left.
        sa.and_(_abandoned(now, lease), WarehouseHandoff.attempts + 1 < max_attempts),
    )


def claim_due(
    engine: Engine,
    limit: int,
    lease: timedelta = timedelta(minutes=5),
    *,
    max_attempts: int = 6,
    now: datetime | None = None,
) -> list[ClaimedHandoff]:
    """Move up to `limit` due hand-offs to `sending` (a compare-and-set; SKIP LOCKED on PostgreSQL).
    A takeover of a dead worker's hand-off counts its attempt; one that has none left is failed
    instead (the ops alert picks it up), so a hand-off that kills its worker is not sent forever."""
    now = now or utcnow()
    claim_rows(
        engine,
        WarehouseHandoff,
        [],
        sa.and_(_abandoned(now, lease), WarehouseHandoff.attempts + 1 >= max_attempts),
        {
            "status": HandoffStatus.FAILED,
            "attempts": WarehouseHandoff.attempts + 1,
            "last_error": f"{GAVE_UP}: the worker died while sending it (no answer recorded within the "
            f"{int(lease.total_seconds())} s lease) and no attempt was left of {max_attempts}",
        },
        1000,
    )
    taken_over = sa.case((WarehouseHandoff.status == HandoffStatus.SENDING, 1), else_=0)
    rows = claim_rows(
        engine,
        WarehouseHandoff,
        [WarehouseHandoff.order_name, WarehouseHandoff.version],
        _claimable(now, lease, max_attempts),
        {
            "status": HandoffStatus.SENDING,
            "claimed_at": now,
            "attempts": WarehouseHandoff.attempts + taken_over,
        },
        limit,
    )
    return [ClaimedHandoff(handoff_id, order_name, version) for handoff_id, order_name, version in rows]


_HANDOFFS: sa.Table = WarehouseHandoff.__table__  # type: ignore[attr-defined]
_LOAD = sa.select(_HANDOFFS).where(_HANDOFFS.c.id == sa.bindparam("id"))


@dataclass(frozen=True)
class HandoffResult:
    handoff_id: int
    status: str
    reference: str | None = None
    error: str | None = None
    attempts: int = 0


def hand_off(
    engine: Engine,
    handoff_id: int,
    port: WarehousePort,
    renderer: Renderer,
    policies: Policies,
    settings: Settings,
    *,
    inline_wait_cap_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> HandoffResult:
    """Send one claimed hand-off. Transient failures are retried here with exponential backoff while
    the wait is short, then rescheduled; after `warehouse_max_attempts` the hand-off fails for a
    person to look at. A refusal (4xx) fails it at once with the warehouse's reason: no retry storm."""
    with engine.connect() as conn:
        handoff = conn.execute(_LOAD, {"id": handoff_id}).first()
    if handoff is None or handoff.status != HandoffStatus.SENDING:
        return HandoffResult(handoff_id, handoff.status if handoff else "missing")
    held_back = _held_back(engine, handoff)
    if held_back is not None:
        return held_back
    attempts = handoff.attempts
    while True:
        attempts += 1
        try:
            docs = documents(handoff, renderer, policies.requests, settings.shop_name)
            reference = _submit(port, docs)
        except TransientWarehouseError as err:
            if attempts >= settings.warehouse_max_attempts:
                return _record(
                    engine,
                    handoff_id,
                    HandoffStatus.FAILED,
                    attempts,
                    error=f"{GAVE_UP} after {attempts} attempts: {err.reason}",
                )
            backoff = settings.warehouse_backoff_base_s * 2 ** min(attempts - 1, 40)
            wait = max(min(settings.warehouse_backoff_cap_s, backoff), err.retry_after or 0.0)
            if wait > inline_wait_cap_s:
                return _record(
                    engine,
                    handoff_id,
                    HandoffStatus.PENDING,
                    attempts,
                    error=err.reason,
                    next_attempt_at=utcnow() + timedelta(seconds=wait),
                )
            log.warning(
                "hand-off %s (%s v%s): %s; retrying in %.1fs",
                handoff_id,
                docs.order_name,
                docs.version,
                err.reason,
                wait,
            )
            sleep(wait)
            continue
        except PermanentWarehouseError as err:
            if is_cancellation(handoff) and err.status_code == 404:
                # The warehouse says it never had the order: the earlier attempts that may have
                # reached it did not (the 3PL was down, not slow). Nothing is left to call back.
                return _record(
                    engine,
                    handoff_id,
                    HandoffStatus.SUPERSEDED,
                    attempts,
                    error=f"not needed: the warehouse does not have the order ({err.reason})",
                )
            return _record(engine, handoff_id, HandoffStatus.FAILED, attempts, error=err.reason)
        except Exception as err:
            # A version that cannot be rendered or handed over (a template error, a port bug): it
            # would fail the same way every time. Left `sending`, the lease would hand it out again
            # for ever with no attempt counted; it fails now, with its reason, for a person (alerted).
            error = f"not sendable: {type(err).__name__}: {err}"[:2000]
            return _record(engine, handoff_id, HandoffStatus.FAILED, attempts, error=error)
        return _record(engine, handoff_id, HandoffStatus.SENT, attempts, reference=reference)


def _submit(port: WarehousePort, docs: HandoffDocuments) -> str:
    """`port.submit`, with an OSError (the file port: a full disk, a permission being fixed) taken as
    worth retrying: rewriting a version writes the same files."""
    try:
        return port.submit(docs)
    except OSError as err:
        raise TransientWarehouseError(f"could not write the hand-off: {type(err).__name__}: {err}") from err


def _held_back(engine: Engine, handoff: Any) -> HandoffResult | None:
    """Keep the warehouse's view in order; None when the claimed version may go now.
    A cancellation waits while an earlier version of its order is still being sent: it must not
    arrive before the instruction it cancels. A ship version that comes back for another attempt
    (after a transient failure) is not sent once a newer version of the order exists (an edit, or a
    cancellation planned while it was in flight): the newer one speaks for the order."""
    if handoff.attempts == 0 and not is_cancellation(handoff):
        return None  # the first try of a ship version: no query on the common path
    order_versions = sa.select(
        _HANDOFFS.c.version,
        _HANDOFFS.c.status,
        _HANDOFFS.c.attempts,
        _HANDOFFS.c.instruction,
        _HANDOFFS.c.last_error,
    ).where(_HANDOFFS.c.order_id == handoff.order_id, _HANDOFFS.c.id != handoff.id)
    with engine.connect() as conn:
        rows = conn.execute(order_versions).all()
    others = [(row.version, row.status) for row in rows]
    if is_cancellation(handoff):
        sending = sorted(v for v, status in others if v < handoff.version and status == HandoffStatus.SENDING)
        if not sending:
            if not any(row.version < handoff.version and _reached_warehouse(row) for row in rows):
                # What it was to cancel was refused meanwhile: the warehouse never had the order, and
                # a cancel would only earn an "unknown order" alert for ops.
                return _record(
                    engine,
                    handoff.id,
                    HandoffStatus.SUPERSEDED,
                    handoff.attempts,
                    error="not sent: the warehouse never acknowledged a version of this order",
                )
            return None
        return _record(
            engine,
            handoff.id,
            HandoffStatus.PENDING,
            handoff.attempts,
            error=f"waiting for v{sending[-1]}, still being sent, before cancelling it",
            next_attempt_at=utcnow() + CANCEL_WAIT,
        )
    newer = max((v for v, _status in others if v > handoff.version), default=None)
    if newer is None:
        return None
    return _record(
        engine,
        handoff.id,
        HandoffStatus.SUPERSEDED,
        handoff.attempts,
        error=f"superseded by version {newer} before this one could be sent again",
    )


def _reached_warehouse(row: Any) -> bool:
    """`may_be_held`, or attempted without a clear answer and superseded since: a ship version the
    warehouse may have taken. A refusal (failed with the 3PL's reason) means it was not."""
    return may_be_held(row) or (
        row.status == HandoffStatus.SUPERSEDED and row.attempts > 0 and not is_cancellation(row)
    )


def _record(
    engine: Engine,
    handoff_id: int,
    status: HandoffStatus,
    attempts: int,
    *,
    reference: str | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> HandoffResult:
    values: dict[str, Any] = {"status": status, "attempts": attempts, "last_error": error}
    if status == HandoffStatus.SENT:
        values.update(reference=reference, sent_at=utcnow())
    if next_attempt_at is not None:
        values.update(next_attempt_at=next_attempt_at, claimed_at=None)
    with engine.begin() as conn:
        conn.execute(
            _HANDOFFS.update()
            .where(_HANDOFFS.c.id == handoff_id, _HANDOFFS.c.status == HandoffStatus.SENDING)
            .values(**values)
        )
    return HandoffResult(handoff_id, status, reference, error, attempts)


# --- Ops alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unacknowledged:
    """A hand-off ops must look at: refused by the warehouse, or not acknowledged in time."""

    handoff_id: int
    order_name: str
    version: int
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime

    def reason(self, window: timedelta) -> str:
        if self.status == HandoffStatus.FAILED:
            why = f"refused or given up: {self.last_error or 'no reason given'}"
        else:
            minutes = int(window.total_seconds() // 60)
            why = f"not acknowledged within {minutes} min ({self.status} after {self.attempts} attempts"
            why += f"; last error: {self.last_error})" if self.last_error else ")"
        return f"hand-off {self.order_name} v{self.version}: {why}"


def alert_due(now: datetime, window: timedelta) -> sa.ColumnElement[bool]:
    """Hand-offs ops must be told about: refused, or not acknowledged within `window`, not yet told."""
    return sa.and_(
        WarehouseHandoff.alerted_at.is_(None),  # type: ignore[union-attr]
        sa.or_(
            WarehouseHandoff.status == HandoffStatus.FAILED,
            sa.and_(
                WarehouseHandoff.status.in_((HandoffStatus.PENDING, HandoffStatus.SENDING)),  # type: ignore[attr-defined]
                WarehouseHandoff.created_at < now - window,
            ),
        ),
    )


def claim_alerts(
    db: Engine | Session, window: timedelta, limit: int = 100, *, now: datetime | None = None
) -> list[Unacknowledged]:
    """Hand-offs ops have not been told about yet that the warehouse refused (failed), or has not
    acknowledged within `window` of their preparation; each is marked alerted in the same
    compare-and-set, so concurrent sweeps tell ops once. Given a Session, the claim is made in its
    transaction: insert the alert's mails in it before committing, so the claim never stands
    without them (there is no giving a claim back: the mail rows are the record)."""
    now = now or utcnow()
    due = alert_due(now, window)
    columns = [
        WarehouseHandoff.order_name,
        WarehouseHandoff.version,
        WarehouseHandoff.status,
        WarehouseHandoff.attempts,
        WarehouseHandoff.last_error,
        WarehouseHandoff.created_at,
    ]
    conn = db.connection() if isinstance(db, Session) else db
    rows = claim_rows(conn, WarehouseHandoff, columns, due, {"alerted_at": now}, limit)
    return [Unacknowledged(*row) for row in rows]
