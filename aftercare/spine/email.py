"""Email adapters: a file outbox (default) and SendGrid (the official SDK). Both take an
OutgoingEmail and return the provider's message id, or raise a Transient/PermanentSendError."""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Protocol

from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, Content, CustomArg, From, Header, Mail, Personalization, To

from aftercare.errors import AmbiguousSendError, PermanentSendError, TransientSendError
from aftercare.settings import Settings
from aftercare.spine.addresses import clean_name


@dataclass(frozen=True)
class OutgoingEmail:
    outbox_id: int
    kind: str
    to_email: str
    to_name: str | None
    from_email: str
    from_name: str | None
    subject: str
    text: str
    html: str
    is_test: bool = False
    categories: tuple[str, ...] = field(default=())
    staff: bool = False  # a staff mail from the outbox (no touchpoint): kept apart from customer mail
    # Extra headers (outbox.headers, checked by `check_headers` when enqueued): List-Unsubscribe and
    # List-Unsubscribe-Post (RFC 8058) on every non-transactional mail.
    headers: Mapping[str, str] | None = None


class InvalidHeader(ValueError):
    """An extra mail header we refuse to carry: its name, and what is wrong with it."""


# What neither backend lets a caller set: the envelope and structure we write ourselves, and what
# SendGrid's Mail Send document says may not be overridden (x-sg-id, x-sg-eid, received,
# dkim-signature, Content-Type, Content-Transfer-Encoding, To, From, Subject, Reply-To, CC, BCC).
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
        "date",
        "message-id",
        "mime-version",
        "x-aftercare-outbox-id",
        "x-aftercare-kind",
        "x-aftercare-test",
    }
)
# RFC 5322 field name: printable ASCII but the colon. A value: printable ASCII and spaces, short
# enough that "Name: value" fits the 998-character line limit without folding.
_FIELD_NAME = re.compile(r"[!-9;-~]{1,76}")
_FIELD_VALUE = re.compile(r"[ -~]{1,900}")
MAX_EXTRA_HEADERS = 20


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """The extra headers of a message as they will be stored and sent, or InvalidHeader: names are
    RFC 5322 field names, not one we set ourselves or SendGrid forbids, each once (case-insensitive);
    values are ASCII without CR, LF or other control characters (a header injection is refused here,
    at enqueue, not found later in a provider's log). None or {} is no extra header (None)."""
    if not headers:
        return None
    if len(headers) > MAX_EXTRA_HEADERS:
        raise InvalidHeader(f"{len(headers)} extra headers, at most {MAX_EXTRA_HEADERS}")
    seen: set[str] = set()
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise InvalidHeader(f"header name {name!r} is not an RFC 5322 field name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidHeader(f"header {name} is set by aftercare or the provider, not by a caller")
        if name.lower() in seen:
            raise InvalidHeader(f"header {name} is given twice")
        seen.add(name.lower())
        if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
            raise InvalidHeader(
                f"header {name}: the value must be 1-900 printable ASCII characters, "
                "without CR, LF or other control characters"
            )
        checked[name] = value
    return checked


class EmailBackend(Protocol):
    name: str

    def send(self, email: OutgoingEmail) -> str:
        """Hand the message to the provider; return its message id."""
        ...

    def was_delivered(self, outbox_id: int) -> bool | None:
        """After a crash mid-send: True/False when the backend can tell, None when it cannot."""
        ...


def to_mime(email: OutgoingEmail) -> EmailMessage:
    """The message as RFC 5322 (multipart/alternative: text and HTML). Names are cleaned of control
    characters; an address or subject the email library refuses raises ValueError (the outbox fails
    that message with it)."""
    msg = EmailMessage()
    msg["From"] = formataddr((clean_name(email.from_name) or "", email.from_email))
    msg["To"] = formataddr((clean_name(email.to_name) or "", email.to_email))
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(idstring=f"aftercare-{email.outbox_id}")
    msg["X-Aftercare-Outbox-Id"] = str(email.outbox_id)
    msg["X-Aftercare-Kind"] = email.kind
    if email.is_test:
        msg["X-Aftercare-Test"] = "true"
    for name, value in (check_headers(email.headers) or {}).items():
        msg[name] = value
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    return msg


def mime_bytes(email: OutgoingEmail) -> bytes:
    """The message as stored. With extra headers, lines are folded only past RFC 5322's hard limit
    (998): folding at 78 would turn a List-Unsubscribe URL longer than a line (a signed token is)
    into RFC 2047 encoded-words, which no mailbox provider reads as a URL."""
    msg = to_mime(email)
    if email.headers:
        return msg.as_bytes(policy=msg.policy.clone(max_line_length=998))
    return bytes(msg)


class FileOutboxBackend:
    """Writes each message to `<dir>/<outbox id>.eml` (atomically): the embedded default."""

    name = "outbox"

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, outbox_id: int, staff: bool = False) -> Path:
        """Customer mail at `<dir>/<id>.eml`, staff mail at `<dir>/staff/<id>.eml`: one outbox id
        sequence, so two messages never share a file."""
        return (self.directory / "staff" if staff else self.directory) / f"{outbox_id:08d}.eml"

    def send(self, email: OutgoingEmail) -> str:
        final = self.path_for(email.outbox_id, staff=email.staff)
        data = mime_bytes(email)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, final)
        except OSError as err:
            # Disk full, a permission being fixed: nothing was written in its place, so worth a retry.
            raise TransientSendError(f"could not write {final.name}: {err}") from err
        return f"file:{final.relative_to(self.directory).as_posix()}"

    def was_delivered(self, outbox_id: int) -> bool | None:
        return self.path_for(outbox_id).exists() or self.path_for(outbox_id, staff=True).exists()


def _retry_after(headers: object) -> float | None:
    """Seconds to wait from Retry-After or X-RateLimit-Reset (epoch seconds), if the provider said."""
    import time

    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name in ("Retry-After", "retry-after"):
        value = get(name)
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                pass
    reset = get("X-RateLimit-Reset") or get("x-ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return None


def _provider_reason(err: http_errors.HTTPError) -> str:
    try:
        errors = json.loads(err.body or b"{}").get("errors") or []
        messages = [e.get("message", "") + (f" ({e['field']})" if e.get("field") else "") for e in errors]
        detail = "; ".join(m for m in messages if m)
    except (ValueError, AttributeError, TypeError):
        detail = (err.body or b"")[:300].decode("utf-8", "replace") if isinstance(err.body, bytes) else ""
    return f"SendGrid {err.status_code} {err.reason}: {detail}".strip().rstrip(":")


class SendGridBackend:
    """SendGrid v3 Mail Send through the official SDK. SendGrid has no idempotency key, so the
    outbox row is the guard; the outbox id travels in the personalization's custom_args."""

    name = "sendgrid"

    def __init__(self, client: SendGridAPIClient, timeout_s: float = 10.0):
        self.client = client
        self.client.client.timeout = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> SendGridBackend:
        client = SendGridAPIClient(
            api_key=settings.sendgrid_api_key.get_secret_value(), host=settings.sendgrid_base_url
        )
        return cls(client, settings.sendgrid_timeout_s)

    def build(self, email: OutgoingEmail) -> Mail:
        mail = Mail()
        mail.from_email = From(email.from_email, clean_name(email.from_name))
        mail.subject = email.subject
        personalization = Personalization()
        personalization.add_to(To(email.to_email, clean_name(email.to_name)))
        personalization.add_custom_arg(CustomArg("outbox_id", str(email.outbox_id)))
        personalization.add_custom_arg(CustomArg("kind", email.kind))
        if email.is_test:
            personalization.add_custom_arg(CustomArg("test", "true"))
        mail.add_personalization(personalization)
        mail.add_content(Content("text/plain", email.text))
        mail.add_content(Content("text/html", email.html))
        # SendGrid requires unique categories (at most 10).
        categories = ("aftercare", email.kind, *(("test",) if email.is_test else ()), *email.categories)
        for category in list(dict.fromkeys(categories))[:10]:
            mail.add_category(Category(category))
        # Message-level `headers` (the same for every recipient: there is one).
        for name, value in (check_headers(email.headers) or {}).items():
            mail.add_header(Header(name, value))
        return mail

    def send(self, email: OutgoingEmail) -> str:
        try:
            response = self.client.send(self.build(email))
        except http_errors.TooManyRequestsError as err:
            raise TransientSendError(_provider_reason(err), _retry_after(err.headers)) from err
        except http_errors.HTTPError as err:
            if err.status_code >= 500:
                raise TransientSendError(_provider_reason(err), _retry_after(err.headers)) from err
            raise PermanentSendError(_provider_reason(err), err.status_code) from err
        except urllib.error.URLError as err:
            # urllib wraps failures while connecting and writing the request: nothing was accepted.
            raise TransientSendError(f"SendGrid unreachable: {err.reason}") from err
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            # Raised while waiting for or reading the answer: SendGrid may have accepted the message.
            raise AmbiguousSendError(
                f"SendGrid did not answer after receiving the request ({err!r})"
            ) from err
        message_id = response.headers.get("X-Message-Id") if response.headers else None
        return message_id or f"sendgrid:{response.status_code}"

    def was_delivered(self, outbox_id: int) -> bool | None:
        return None  # would need the Email Activity API; an uncertain row goes to ops instead


def make_backend(settings: Settings) -> EmailBackend:
    if settings.email_backend == "sendgrid":
        return SendGridBackend.from_settings(settings)
    assert settings.outbox_dir is not None
    return FileOutboxBackend(settings.outbox_dir)
