"""`aftercare` command line: migrate, up, demo, and what ops need to look at the inbox and outbox."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from aftercare import samples
from aftercare.errors import AftercareError
from aftercare.models import InboxEvent, InboxStatus, OutboxMessage, OutboxStatus, utcnow
from aftercare.orders import shopify
from aftercare.settings import Settings
from aftercare.spine import inbox
from aftercare.spine.db import make_engine, migrate


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _newest(settings: Settings, model: Any, status: str | None, limit: int) -> list[Any]:
    """The newest `limit` rows of an inbox/outbox table (optionally of one status), oldest first."""
    engine = make_engine(settings)
    with Session(engine) as session:
        query = select(model).order_by(model.id.desc()).limit(limit)
        if status:
            query = query.where(model.status == status)
        rows = list(session.exec(query).all())
    engine.dispose()
    return rows[::-1]


def outbox_rows(settings: Settings, status: str | None, limit: int) -> list[dict[str, Any]]:
    rows = _newest(settings, OutboxMessage, status, limit)
    return [
        {
            "id": r.id,
            "to": r.to_email,
            "subject": r.subject,
            "kind": r.kind,
            "order_name": r.order_name,
            "status": r.status,
            "provider_id": r.provider_message_id,
            "created_at": _iso(r.created_at),
            "sent_at": _iso(r.sent_at),
            "attempts": r.attempts,
            "last_error": r.last_error,
            "test": r.is_test,
        }
        for r in rows
    ]


def inbox_rows(settings: Settings, status: str | None, limit: int) -> list[dict[str, Any]]:
    rows = _newest(settings, InboxEvent, status, limit)
    return [
        {
            "id": r.id,
            "source": r.source,
            "topic": r.topic,
            "delivery_id": r.delivery_id,
            "event_id": r.event_id,
            "shop": r.shop_domain,
            "ref": r.subject_ref,
            "status": r.status,
            "reason": r.reason,
            "attempts": r.attempts,
            "next_attempt_at": _iso(r.next_attempt_at) if r.status == InboxStatus.FAILED else None,
            "alerted_at": _iso(r.alerted_at),
            "received_at": _iso(r.received_at),
            "processed_at": _iso(r.processed_at),
            "bytes": len(r.body),
        }
        for r in rows
    ]


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: min(48, max(len(c), *(len(str(r.get(c) or "")) for r in rows))) for c in columns}
    head = "  ".join(c.ljust(widths[c]) for c in columns)
    body = ["  ".join(str(r.get(c) or "")[: widths[c]].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([head, *body])


def cmd_outbox_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = outbox_rows(settings, args.status, args.limit)
    if args.json:
        _print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        _print(
            _table(rows, ["id", "status", "kind", "order_name", "to", "subject", "provider_id", "last_error"])
        )
    return 0


def cmd_outbox_resend(args: argparse.Namespace, settings: Settings) -> int:
    """A person decided: put a failed or uncertain message back in the queue."""
    engine = make_engine(settings)
    with Session(engine) as session:
        row = session.get(OutboxMessage, args.id)
        if row is None:
            raise AftercareError(f"no outbox message {args.id}")
        if row.status not in (OutboxStatus.FAILED, OutboxStatus.UNCERTAIN):
            raise AftercareError(
                f"outbox message {args.id} is {row.status}; only failed or uncertain ones are resent"
            )
        row.status, row.next_attempt_at, row.claimed_by, row.claimed_at = (
            OutboxStatus.PENDING,
            utcnow(),
            None,
            None,
        )
        row.last_error = f"requeued by hand at {utcnow().isoformat()} (was: {row.last_error})"
        session.add(row)
        session.commit()
    _print(f"outbox message {args.id} requeued; the next sweep sends it")
    return 0


def cmd_inbox_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = inbox_rows(settings, args.status, args.limit)
    if args.json:
        _print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        _print(
            _table(
                rows, ["id", "status", "attempts", "next_attempt_at", "topic", "ref", "delivery_id", "reason"]
            )
        )
    return 0


def cmd_inbox_retry(args: argparse.Namespace, settings: Settings) -> int:
    """A person fixed the cause: process a failed delivery again, with every attempt back."""
    engine = make_engine(settings)
    try:
        inbox.retry_by_hand(engine, args.id)
    finally:
        engine.dispose()
    _print(f"inbox row {args.id} requeued; the next sweep processes it")
    return 0


def post_json(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST to the user's own web app; (status, body text) for any HTTP answer."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def post_webhook(url: str, secret: str, topic: str, payload: dict[str, Any], shop: str) -> tuple[int, str]:
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Hmac-Sha256": shopify.sign(secret, body),
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Event-Id": str(uuid.uuid4()),
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
        "X-Shopify-API-Version": "2025-10",
    }
    return post_json(url, body, headers)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Post the sample orders, then for each a shipment (fulfillments/create) and, for some, the
    carrier's delivered update; the others show the estimated delivery. All signed like Shopify."""
    url = (args.url or settings.web_base_url).rstrip("/") + "/webhooks/shopify"
    secret = settings.shopify_webhook_secret.get_secret_value()
    now = datetime.now(UTC)
    orders = [samples.load(name) for name in samples.names()]
    deliveries: list[tuple[str, str, dict[str, Any]]] = [("order", "orders/create", o) for o in orders]
    if not args.orders_only:
        shipped = (now - timedelta(minutes=1)).isoformat()
        for i, order in enumerate(orders):
            if order.get("financial_status") != "paid":
                continue  # a shop ships once the payment clears (the konbini sample has not)
            deliveries.append(("shipment", "fulfillments/create", samples.fulfillment(order, at=shipped)))
            if i % 2 == 0:
                delivered = samples.fulfillment(
                    order, at=shipped, shipment_status="delivered", updated_at=now.isoformat()
                )
                deliveries.append(("delivered", "fulfillments/update", delivered))
    _print(f"posting {len(deliveries)} webhooks for {len(orders)} sample orders to {url}")
    failures = 0
    for what, topic, payload in deliveries:
        try:
            status, text = post_webhook(url, secret, topic, payload, args.shop or settings.shopify_shops[0])
        except OSError as exc:
            raise AftercareError(f"cannot reach {url} ({exc}); is `make up` running?") from exc
        failures += status != 200
        ref = payload.get("name", "")
        _print(f"  {topic:<20} {what:<9} {ref:<10} -> HTTP {status} {text}")
    if not args.orders_only:
        # A disappointed customer's review of the gift order: drafted, checked, then it waits for an
        # approver: each gets a mail with their own link to the approval page (/approvals/<token>).
        review_url = url.rsplit("/webhooks/", 1)[0] + "/webhooks/reviews"
        body = json.dumps(samples.review("ja-late-gift"), ensure_ascii=False).encode()
        signature = shopify.sign(settings.reviews_webhook_secret.get_secret_value(), body)
        headers = {"Content-Type": "application/json", "X-Aftercare-Hmac-Sha256": signature}
        try:
            status, text = post_json(review_url, body, headers)
        except OSError as exc:
            raise AftercareError(f"cannot reach {review_url} ({exc})") from exc
        failures += status != 200
        _print(f"  {'reviews/create':<20} {'review':<9} {'#1101':<10} -> HTTP {status} {text}")
    surveys: list[Any] = []
    if not args.orders_only and args.survey_wait > 0:
        surveys, failed = _demo_surveys(args, settings, url, secret, now)
        failures += failed
    asked: Any = None
    if not args.orders_only and args.reviews_wait > 0:
        asked, failed = _demo_review_request(args, settings, url, secret, now)
        failures += failed
    _print(
        f"\nruns: {settings.prefect_ui_url}/runs   mails: {settings.outbox_dir}   list: aftercare outbox list"
    )
    if surveys:
        failures += _await_surveys(settings, surveys, args.survey_wait)
    if asked is not None:
        failures += _demo_reviews_and_recovery(settings, asked, surveys, args.reviews_wait)
    if not args.orders_only:
        _print(
            f"the review's approvers: their mails in {settings.outbox_dir / 'staff'} link to "
            f"{settings.web_base_url.rstrip('/')}/approvals/..., a page to decide on (a phone will do)"
        )
    if args.wait:
        deadline = time.monotonic() + args.wait
        names = {o["name"] for o in orders}
        while time.monotonic() < deadline:
            sent = {
                r["order_name"]
                for r in outbox_rows(settings, "sent", 1000)
                if r["kind"] == "order_confirmation"
            }
            if names <= sent:
                _print(f"all {len(names)} confirmations sent")
                return 1 if failures else 0
            time.sleep(1)
        _print("not every confirmation was sent yet; see `aftercare outbox list` and the Prefect UI")
        return 1
    return 1 if failures else 0


def _post_demo_case(
    settings: Settings, url: str, secret: str, shop: str, case: Any, now: datetime, *, unsubscribe: bool
) -> int:
    """Post one demo customer as Shopify and a mailbox provider would: first, when `unsubscribe`, a
    one-click unsubscribe from surveys (RFC 8058); then their order, its shipment and its delivery.
    Returns how many posts failed."""
    from aftercare import demo

    failures = 0
    if unsubscribe:
        target, body, headers = demo.unsubscribe_request(
            case,
            secret=settings.link_secret.get_secret_value(),
            shop_domain=shop,
            base_url=url.rsplit("/webhooks/", 1)[0],
            now=now,
        )
        try:
            status, _text = post_json(target, body, headers)
        except OSError as exc:
            raise AftercareError(f"cannot reach {target} ({exc})") from exc
        failures += status != 200
        _print(f"  {'one-click unsubscribe':<20} {'surveys':<9} {case.order['email']} -> HTTP {status}")
    for topic, payload in (
        ("orders/create", case.order),
        ("fulfillments/create", case.fulfillment),
        ("fulfillments/update", case.delivered),
    ):
        status, text = post_webhook(url, secret, topic, payload, shop)
        failures += status != 200
        ref = f"{case.order['name']} ({case.place})"
        _print(f"  {topic:<20} {case.label:<14} {ref:<20} -> HTTP {status} {text}")
    return failures


def _demo_surveys(
    args: argparse.Namespace, settings: Settings, url: str, secret: str, now: datetime
) -> tuple[list[Any], int]:
    """Three customers whose survey is due now (aftercare/demo.py): one in their daytime, one at
    night, one who unsubscribed (one-click, as a mailbox provider sends it). Returns the cases and
    how many posts failed."""
    from aftercare import demo
    from aftercare.contact.policy import load_contact_policy
    from aftercare.policies import load_policies

    policy = load_contact_policy(settings.policies_dir / "contact.yaml")
    days = load_policies(settings.policies_dir).delivery.survey_days_after_delivery
    shop = args.shop or settings.shopify_shops[0]
    cases = demo.survey_cases(now, policy, days)
    failures = 0
    _print(f"\nsurveys: three customers whose parcels arrived {days} days ago")
    for case in cases:
        failures += _post_demo_case(
            settings, url, secret, shop, case, now, unsubscribe=case.label == "unsubscribed"
        )
    return cases, failures


def _await_surveys(settings: Settings, cases: list[Any], wait_s: float) -> int:
    """Wait until the contact rules have judged each demo survey; print what the timeline says.
    Returns 1 when one is not judged in time or says something else than expected."""
    from aftercare.models import Order, Touchpoint

    engine = make_engine(settings)
    shown: dict[str, str] = {}
    deadline = time.monotonic() + wait_s
    _print(f"waiting up to {wait_s:.0f} s for send-timed-messages (the web app starts it within 15 s):")
    try:
        while len(shown) < len(cases) and time.monotonic() < deadline:
            with Session(engine) as session:
                for case in cases:
                    if case.label in shown:
                        continue
                    row = session.exec(
                        select(Touchpoint)
                        .join(Order, Order.id == Touchpoint.order_id)  # type: ignore[arg-type]
                        .where(Order.name == case.order["name"], Touchpoint.kind == "delivery_survey")
                    ).first()
                    if row is None or row.verdict is None:
                        continue
                    line = str(row.verdict.get("line", ""))
                    shown[case.label] = line
                    ok = line.startswith(case.expect)
                    _print(
                        f"  {case.order['name']} {case.label:<12} ({case.place}, {case.zone}): {line}"
                        + ("" if ok else f"   (expected: {case.expect} ...)")
                    )
            time.sleep(1)
    finally:
        engine.dispose()
    missing = [c.label for c in cases if c.label not in shown]
    if missing:
        _print(f"  not judged yet: {', '.join(missing)}; see `aftercare touchpoints due` and the Prefect UI")
    bad = [c.label for c in cases if c.label in shown and not shown[c.label].startswith(c.expect)]
    _print("  see each one with: aftercare timeline '#2101' (and #2102, #2103)")
    return 1 if missing or bad else 0


def get_page(url: str) -> tuple[int, str]:
    """GET a page of the user's own web app, as a customer's browser does; (status, body text)."""
    request = urllib.request.Request(url, headers={"Accept": "text/html"}, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _demo_review_request(
    args: argparse.Namespace, settings: Settings, url: str, secret: str, now: datetime
) -> tuple[Any, int]:
    """The customer whose review request is due now (aftercare/demo.py): first their one-click
    unsubscribe from surveys, then their order, shipment and delivery a week ago. Returns the case
    and how many posts failed."""
    from aftercare import demo
    from aftercare.contact.policy import load_contact_policy
    from aftercare.policies import load_policies

    policy = load_contact_policy(settings.policies_dir / "contact.yaml")
    delivery = load_policies(settings.policies_dir).delivery
    days, survey_days = delivery.review_request_days_after_delivery, delivery.survey_days_after_delivery
    shop = args.shop or settings.shopify_shops[0]
    case = demo.review_request_case(now, policy, days)
    _print(
        f"\nreviews: a customer whose parcel arrived {days} days ago: the review request is due now "
        f"({case.place}, daytime there).\n"
        f"  They left the surveys list (one-click): their survey, due {days - survey_days} days ago, is "
        "not sent, so the request is their one feedback mail today.\n"
        "  (Policy: one feedback mail per 24 h. With both due, one would wait a day; a fresh database "
        "has no survey sent days ago.)"
    )
    failures = _post_demo_case(settings, url, secret, shop, case, now, unsubscribe=True)
    return case, failures


def _sent_mail(engine: Any, order_name: str, kind: str) -> tuple[Any, Any]:
    """(the touchpoint, its outbox row) of an order's timed mail of `kind`; either may be None."""
    from aftercare.models import Order, Touchpoint

    with Session(engine) as session:
        tp = session.exec(
            select(Touchpoint)
            .join(Order, Order.id == Touchpoint.order_id)  # type: ignore[arg-type]
            .where(Order.name == order_name, Touchpoint.kind == kind)
        ).first()
        mail = (
            session.exec(select(OutboxMessage).where(OutboxMessage.touchpoint_id == tp.id)).first()
            if tp is not None
            else None
        )
        return tp, mail


def _wait_for(check: Any, deadline: float) -> Any:
    """Call `check()` each second until it answers something, or the deadline passes (None)."""
    while True:
        found = check()
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(1)


def _demo_reviews_and_recovery(settings: Settings, asked: Any, surveys: list[Any], wait_s: float) -> int:
    """Act as two customers, through the pages a customer sees: the review-request customer opens
    the form link of their mail and sends a 2-star review, which is triaged and drafted a reply
    that waits for an approver; the "due now" survey customer answers 1 from their survey mail,
    which opens a recovery case. Returns 1 when a step did not happen in time."""
    from urllib.parse import urljoin

    from aftercare import demo
    from aftercare.models import Order, RecoveryCase, Review, ReviewStatus
    from aftercare.policies import load_policies
    from aftercare.recovery.cli import case_line
    from aftercare.recovery.store import list_cases

    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    engine = make_engine(settings)
    deadline = time.monotonic() + wait_s
    name = asked.order["name"]
    outbox_dir = settings.outbox_dir
    _print(f"\nwaiting up to {wait_s:.0f} s for the review request, the review and the recovery case:")
    try:

        def mailed(order_name: str, kind: str) -> Any:
            tp, mail = _sent_mail(engine, order_name, kind)
            if (
                tp is not None
                and tp.verdict is not None
                and tp.verdict.get("line", "").startswith("not sent")
            ):
                return tp, None  # judged and not sent: nothing will come
            return (tp, mail) if mail is not None and mail.status == OutboxStatus.SENT else None

        found = _wait_for(lambda: mailed(name, "review_request"), deadline)
        if found is None or found[1] is None:
            why = found[0].verdict.get("line") if found else "not sent yet"
            _print(f"  {name} review request: {why}; see `aftercare timeline '{name}'`")
            return 1
        tp, mail = found
        link = demo.mail_link(mail.text_body, "r")
        eml = outbox_dir / f"{mail.id:08d}.eml" if outbox_dir else None
        _print(f"  {name} review request ({asked.place}): {tp.verdict.get('line')}")
        _print(f"    mail: {eml if eml and eml.exists() else f'outbox message {mail.id}'} to {mail.to_email}")
        _print(f"    link to our review form: {link}")
        if link is None:
            return 1
        status, html = get_page(link)
        forms = demo.page_forms(html) if status == 200 else []
        if not forms:
            _print(f"  the form page answered HTTP {status} with no form")
            return 1
        form = forms[0]
        product = form.value("product")
        lang = demo.language_of(asked.order)
        status, _html = post_json(urljoin(link, form.action), demo.review_submission(form, lang), form_type)
        _print(
            f"  the customer opens it and sends {demo.REVIEW_RATING} stars for {product} "
            f'("{demo.REVIEW_TEXT[lang][0]}") -> HTTP {status}'
        )
        if status != 200:
            return 1

        def review_row() -> Any:
            with Session(engine) as session:
                return session.exec(
                    select(Review)
                    .join(Order, Order.id == Review.order_id)  # type: ignore[arg-type]
                    .where(Order.name == name, Review.platform == "own", Review.product_ref == product)
                ).first()

        triaged = _wait_for(review_row, deadline)
        if triaged is None:
            _print("  the review is not stored yet; see `aftercare inbox list`")
            return 1
        _print(
            f"  {name} {triaged.rating}-star review on our form -> stored, triaged "
            f"{'negative' if triaged.triage_negative else 'not negative'} "
            f"({'; '.join(triaged.triage_reasons[:3])})"
        )

        def decided_on() -> Any:
            row = review_row()
            return (
                row
                if row is not None and row.status not in (ReviewStatus.NEW, ReviewStatus.DRAFTING)
                else None
            )

        waiting = _wait_for(decided_on, deadline)
        staff = outbox_dir / "staff" if outbox_dir else "the outbox"
        if waiting is None or waiting.status != ReviewStatus.AWAITING_APPROVAL:
            now_status = waiting.status if waiting is not None else review_row().status
            _print(
                f"  {name} review is {now_status}, not yet waiting for an approver; the approval "
                f"run is the web app's patrol's to start (Prefect UI: {settings.prefect_ui_url}/runs)"
            )
            failures = 1
        else:
            _print(
                f"  {name} {waiting.rating}-star review on our form -> drafted, waiting for an approver "
                f"(mails in {staff})"
            )
            failures = 0

        if not surveys:
            return failures
        due_now = surveys[0]
        found = _wait_for(lambda: mailed(due_now.order["name"], "delivery_survey"), deadline)
        if found is None or found[1] is None:
            _print(f"  {due_now.order['name']} survey: not sent, so no answer to give")
            return 1
        tp, mail = found
        score_link = demo.mail_link(mail.text_body, "survey", f"score={demo.SURVEY_SCORE}")
        if score_link is None:
            _print(f"  the survey mail of {due_now.order['name']} has no link for score {demo.SURVEY_SCORE}")
            return 1
        status, html = get_page(score_link)
        forms = demo.page_forms(html) if status == 200 else []
        if not forms:
            _print(f"  the survey page answered HTTP {status} with no form")
            return 1
        lang = demo.language_of(due_now.order)
        status, _html = post_json(
            urljoin(score_link, forms[0].action), demo.survey_submission(forms[0], lang), form_type
        )
        _print(
            f"  {due_now.order['name']} answers {demo.SURVEY_SCORE} from the survey mail "
            f'({", ".join(demo.SURVEY_REASONS)}; "{demo.SURVEY_COMMENT[lang]}") -> HTTP {status}'
        )

        def opened() -> Any:
            with Session(engine) as session:
                found = session.exec(
                    select(RecoveryCase.id).where(RecoveryCase.touchpoint_id == tp.id)
                ).first()
            if found is None:
                return None
            return next((v for v in list_cases(engine, limit=1000) if v.case.id == found), None)

        view = _wait_for(opened, deadline)
        if view is None:
            _print("  no recovery case opened; see `aftercare cases list`")
            return 1
        tz = load_policies(settings.policies_dir).shipping.tz
        _print("  recovery case opened (aftercare cases list):")
        _print("    " + case_line(view, utcnow(), tz).strip())
        _print(
            f"    ops are told by mail ({staff}); the private apology is drafted and waits for a person "
            f"on the same approval page"
        )
        return failures
    finally:
        engine.dispose()


def cmd_migrate(_args: argparse.Namespace, settings: Settings) -> int:
    migrate(settings)
    _print(f"database at {settings.database_url.split('@')[-1]} is migrated")
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from aftercare.stack import Stack, StackConfig, UnsafePrefectExposure, prefect_auth

    prefect_host = settings.prefect_host if args.prefect_host is None else args.prefect_host
    try:
        # Before anything starts: a Prefect UI reachable by others without a login lets anyone
        # resume a review run and publish a reply.
        auth = prefect_auth(settings, prefect_host)
    except UnsafePrefectExposure as exc:
        sys.stderr.write(f"aftercare: {exc}\n")
        return 2
    migrate(settings)
    cfg = StackConfig(
        var_dir=settings.var_dir,
        prefect_port=args.prefect_port,
        web_port=args.web_port,
        prefect_host=prefect_host,
        prefect_auth_string=auth,
        prefect_ui_url=settings.prefect_ui_url if "prefect_ui_url" in settings.model_fields_set else None,
    )
    stack = Stack(cfg)
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        stack.start()
        _print(
            "\naftercare is up.\n"
            f"  Prefect UI (runs, artifacts, approvals): {cfg.prefect_ui}"
            + (" (log in with PREFECT_SERVER_API_AUTH_STRING)" if auth else "")
            + "\n"
            f"  webhooks:  POST {cfg.web_url}/webhooks/shopify   health: {cfg.web_url}/healthz\n"
            f"  mails:     {settings.outbox_dir} (file outbox; AFTERCARE_EMAIL_BACKEND=sendgrid to send)\n"
            "  try:       .venv/bin/aftercare demo     then   .venv/bin/aftercare outbox list\n"
            "Ctrl-C stops everything.\n"
        )
        while not stopping and stack.running():
            time.sleep(0.5)
        if not stopping:
            _print("a component exited; stopping the rest")
            return 1
        return 0
    finally:
        _print("stopping...")
        stack.stop()


def cmd_timeline(args: argparse.Namespace, settings: Settings) -> int:
    """Everything that happened to an order and what is still planned."""
    from aftercare.orders import timeline
    from aftercare.policies import load_policies

    policies = load_policies(settings.policies_dir)
    engine = make_engine(settings)
    try:
        tl = timeline.order_timeline(engine, args.order, policies.delivery, shop_domain=args.shop)
    finally:
        engine.dispose()
    if args.json:
        _print(json.dumps(timeline.timeline_json(tl), ensure_ascii=False, indent=2, default=str))
    else:
        _print(timeline.timeline_text(tl, policies.shipping.tz))
    return 0


def cmd_process(args: argparse.Namespace, _settings: Settings) -> int:
    """Run the process-inbox flow once in this process (no server needed: Prefect runs it locally)."""
    from flows.receipt import process_inbox  # the CLI is an entry point, not the core

    state = process_inbox(batch_size=args.batch_size, linger_seconds=0, return_state=True)
    _print(str(state.message or state.type))
    return 0 if state.is_completed() else 1


def cmd_prefect_setup(_args: argparse.Namespace, _settings: Settings) -> int:
    """Install the automations that mark a flow run Crashed when its process died (heartbeats stopped,
    or never started) on the Prefect server at PREFECT_API_URL. `aftercare up` does this itself."""
    from prefect.settings import get_current_settings

    from aftercare.stack import install_zombie_automations

    prefect = get_current_settings()
    api_url = prefect.api.url
    if not api_url:
        _print("PREFECT_API_URL is not set: which Prefect server?")
        return 2
    # The same basic auth Prefect's own clients send (PREFECT_API_AUTH_STRING), when there is one.
    auth = prefect.api.auth_string.get_secret_value() if prefect.api.auth_string else None
    try:
        install_zombie_automations(api_url, auth)
    except urllib.error.HTTPError as exc:
        hint = (
            ": set PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING"
            if exc.code == 401
            else ""
        )
        raise AftercareError(
            f"the Prefect server at {api_url} answered {exc.code} {exc.reason}{hint}"
        ) from exc
    _print(f"zombie-run automations installed on {api_url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aftercare", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(func=cmd_migrate)

    up = sub.add_parser("up", help="run Prefect server + UI, the deployments and the web app (foreground)")
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--web-port", type=int, default=8000)
    up.add_argument(
        "--prefect-host",
        help="where the Prefect server listens (default: AFTERCARE_PREFECT_HOST, 127.0.0.1); beyond "
        "loopback it needs PREFECT_SERVER_API_AUTH_STRING",
    )
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="sign and post the sample orders to the running web app")
    demo.add_argument("--url", help="web app base URL (default: AFTERCARE_WEB_BASE_URL)")
    demo.add_argument("--shop", help="shop domain to post as (default: the first of AFTERCARE_SHOPIFY_SHOPS)")
    demo.add_argument(
        "--wait", type=float, default=0, help="seconds to wait until every confirmation is sent"
    )
    demo.add_argument("--orders-only", action="store_true", help="post the orders, not their shipments")
    demo.add_argument(
        "--survey-wait",
        type=float,
        default=120,
        help="seconds to wait for the three survey cases to be judged (0: do not post them)",
    )
    demo.add_argument(
        "--reviews-wait",
        type=float,
        default=180,
        help="seconds to wait for the review request, the 2-star review on our form reaching an "
        "approver and the survey answer's recovery case (0: do not post them)",
    )
    demo.set_defaults(func=cmd_demo)

    sub.add_parser(
        "prefect-setup", help="install the automations that crash flow runs whose process died"
    ).set_defaults(func=cmd_prefect_setup)

    process = sub.add_parser("process", help="drain the inbox once, in this process")
    process.add_argument("--batch-size", type=int, default=50)
    process.set_defaults(func=cmd_process)

    tl = sub.add_parser("timeline", help="what happened to an order, and what is planned")
    tl.add_argument("order", help="order name (#1001 or 1001) or Shopify order id")
    tl.add_argument("--shop", help="shop domain, when several shops share an order name")
    tl.add_argument("--json", action="store_true", help="machine-readable output")
    tl.set_defaults(func=cmd_timeline)

    from aftercare.reviews.cli import add_review_commands

    add_review_commands(sub)
    from aftercare.contact.cli import add_contact_commands

    add_contact_commands(sub)

    from aftercare.surveys.cli import add_survey_commands

    add_survey_commands(sub)

    from aftercare.recovery.cli import add_case_commands

    add_case_commands(sub)

    for noun, func, statuses in (
        ("outbox", cmd_outbox_list, [s.value for s in OutboxStatus]),
        ("inbox", cmd_inbox_list, [s.value for s in InboxStatus]),
    ):
        group = sub.add_parser(noun, help=f"look at the {noun}").add_subparsers(dest="action", required=True)
        lst = group.add_parser("list", help=f"list {noun} rows, oldest first")
        lst.add_argument("--json", action="store_true", help="machine-readable output")
        lst.add_argument("--status", choices=statuses)
        lst.add_argument("--limit", type=int, default=100)
        lst.set_defaults(func=func)
        if noun == "outbox":
            resend = group.add_parser("resend", help="requeue a failed or uncertain message")
            resend.add_argument("id", type=int)
            resend.set_defaults(func=cmd_outbox_resend)
        else:
            retry = group.add_parser("retry", help="process a failed delivery again, attempts reset")
            retry.add_argument("id", type=int)
            retry.set_defaults(func=cmd_inbox_retry)
    return parser


MAX_LIMIT = 1_000_000
MAX_ID = 2**63 - 1  # ids are BIGINT: a larger one is not a row we could have, and the driver refuses it


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= getattr(args, "limit", 1) <= MAX_LIMIT:
        sys.stderr.write(f"aftercare: --limit must be at least 1 and at most {MAX_LIMIT}\n")
        return 2
    if not 1 <= getattr(args, "id", 1) <= MAX_ID:
        sys.stderr.write(f"aftercare: {args.id} is not an outbox message id (1 to {MAX_ID})\n")
        return 2
    try:
        settings = Settings()
        return int(args.func(args, settings))
    except AftercareError as exc:
        sys.stderr.write(f"aftercare: {exc}\n")
        return 1
    except (sa.exc.OperationalError, ValueError) as exc:
        sys.stderr.write(f"aftercare: {exc}\n")
        return 1


def app() -> None:
    sys.exit(main())


if __name__ == "__main__":
    app()
