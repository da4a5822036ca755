"""The RFC 8058 headers of a feedback mail, from `contact.links` through `outbox.enqueue` (checked
there) to what the file outbox stores: exactly one List-Unsubscribe with exactly one https URL (and a
mailto), exactly one List-Unsubscribe-Post, unfolded so the URL stays a URL. Header injection and
headers we or the provider set are refused at enqueue, with nothing stored."""

from __future__ import annotations

import email
import re
from email import policy as email_policy

import pytest
from sqlmodel import Session, select

from aftercare.contact import links
from aftercare.models import OutboxMessage, Touchpoint, utcnow
from aftercare.rendering import RenderedEmail
from aftercare.runtime import Runtime
from aftercare.settings import Settings
from aftercare.spine import outbox
from aftercare.spine.email import (
    FileOutboxBackend,
    InvalidHeader,
    OutgoingEmail,
    check_headers,
    mime_bytes,
)
from aftercare.spine.outbox import claim_due, deliver
from tests.contact.unsub_helpers import plan_customer, token_for


def rfc8058_headers(settings: Settings, token: str) -> dict[str, str]:
    url = links.unsubscribe_url("https://shop.example", token)
    return links.list_unsubscribe_headers(url, "support@shop.example")


def mail(headers: dict[str, str] | None) -> OutgoingEmail:
    return OutgoingEmail(
        1,
        "delivery_survey",
        "a@example.jp",
        "山田 花子",
        "s@shop.example",
        None,
        "件名",
        "本文",
        "<p>本文</p>",
        headers=headers,
    )


def test_the_links_headers_say_exactly_what_rfc_8058_asks(settings: Settings, rt: Runtime) -> None:
    planned = plan_customer(rt.engine, "hanako@example.jp")
    headers = rfc8058_headers(settings, token_for(settings, planned))
    assert set(headers) == {"List-Unsubscribe", "List-Unsubscribe-Post"}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    targets = re.findall(r"<([^>]*)>", headers["List-Unsubscribe"])
    assert [t.split(":")[0] for t in targets] == ["https", "mailto"]
    assert targets[0].startswith("https://shop.example/unsubscribe/")
    assert "hanako" not in headers["List-Unsubscribe"].lower()  # no address in the URL
    assert check_headers(headers) == headers


def test_file_outbox_stores_the_headers_once_each_and_unfolded(
    rt: Runtime, settings: Settings, tmp_path
) -> None:
    planned = plan_customer(rt.engine, "hanako@example.jp")
    headers = rfc8058_headers(settings, token_for(settings, planned))
    assert len(headers["List-Unsubscribe"]) > 78  # a real token's URL is longer than a folded line
    with Session(rt.engine) as session:
        tp = session.get(Touchpoint, planned.touchpoints["delivery_survey"])
        assert tp is not None
        # The dispatcher's call: the row planned earlier (still pending) gets its headers.
        outbox.enqueue(
            session,
            touchpoint=tp,
            to_email=planned.email,
            to_name="山田 花子",
            rendered=RenderedEmail("ご注文はいかがでしたか", "本文", "<p>本文</p>"),
            locale="ja",
            order_name="#1001",
            is_test=False,
            headers=headers,
        )
        session.commit()
    outbox_id = planned.outbox["delivery_survey"]
    assert outbox_id in [c.outbox_id for c in claim_due(rt.engine, 10, "t")]
    backend = FileOutboxBackend(tmp_path / "outbox")
    assert deliver(rt.engine, outbox_id, backend, settings).status == "sent"

    raw = backend.path_for(outbox_id).read_bytes()
    message = email.message_from_bytes(raw, policy=email_policy.default)
    assert message.get_all("List-Unsubscribe") == [headers["List-Unsubscribe"]]
    assert message.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert f"List-Unsubscribe: {headers['List-Unsubscribe']}".encode() in raw  # one line, as written
    assert b"=?utf-8?" not in raw.split(b"List-Unsubscribe:", 1)[1].split(b"\n", 1)[0]
    assert str(message["Subject"]) == "ご注文はいかがでしたか"


def test_a_mail_without_extra_headers_is_stored_as_before(rt: Runtime, settings: Settings, tmp_path) -> None:
    planned = plan_customer(rt.engine, "taro@example.jp")
    outbox_id = planned.outbox["order_confirmation"]
    claim_due(rt.engine, 10, "t")
    backend = FileOutboxBackend(tmp_path / "outbox")
    assert deliver(rt.engine, outbox_id, backend, settings).status == "sent"
    raw = backend.path_for(outbox_id).read_bytes()
    assert b"List-Unsubscribe" not in raw
    with Session(rt.engine) as session:
        assert session.get(OutboxMessage, outbox_id).headers is None  # type: ignore[union-attr]


HOSTILE = {
    "crlf injection": {"List-Unsubscribe": "<https://x.example/u>\r\nBcc: victim@example.com"},
    "bare lf": {"List-Unsubscribe": "<https://x.example/u>\nX-Evil: 1"},
    "bare cr": {"List-Unsubscribe": "<https://x.example/u>\rX-Evil: 1"},
    "nul": {"List-Unsubscribe": "<https://x.example/u>\x00"},
    "tab": {"X-Note": "a\tb"},
    "non-ascii value": {"List-Unsubscribe": "<https://例え.jp/u>"},
    "non-ascii name": {"Lïst-Unsubscribe": "<https://x.example/u>"},
    "colon in name": {"List-Unsubscribe: x": "y"},
    "space in name": {"List Unsubscribe": "y"},
    "empty name": {"": "y"},
    "empty value": {"X-Note": ""},
    "too long": {"X-Note": "a" * 901},
    "reserved from": {"From": "evil@example.com"},
    "reserved bcc": {"bcc": "evil@example.com"},
    "reserved sendgrid": {"X-SG-EID": "1"},
    "reserved dkim": {"DKIM-Signature": "v=1"},
    "our own": {"X-Aftercare-Outbox-Id": "9"},
    "twice": {"List-Unsubscribe": "<https://a.example>", "list-unsubscribe": "<https://b.example>"},
    "not a string": {"X-Count": 3},
    "too many": {f"X-H{i}": "v" for i in range(21)},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_bad_headers_are_refused_at_enqueue_and_nothing_is_stored(rt: Runtime, case: str) -> None:
    planned = plan_customer(rt.engine, "hanako@example.jp")
    with Session(rt.engine) as session:
        tp = session.get(Touchpoint, planned.touchpoints["delivery_survey"])
        assert tp is not None
        with pytest.raises(InvalidHeader):
            outbox.enqueue(
                session,
                touchpoint=tp,
                to_email=planned.email,
                to_name=None,
                rendered=RenderedEmail("s", "t", "<p>h</p>"),
                locale="ja",
                order_name=None,
                is_test=False,
                headers=HOSTILE[case],  # type: ignore[arg-type]
            )
        session.rollback()
        rows = session.exec(select(OutboxMessage.headers)).all()
    assert all(h is None for h in rows)
    # And a backend given such headers directly (not through the outbox) refuses them too.
    with pytest.raises(InvalidHeader):
        mime_bytes(mail(HOSTILE[case]))  # type: ignore[arg-type]


def test_empty_headers_are_none() -> None:
    assert check_headers(None) is None and check_headers({}) is None
    assert b"List-Unsubscribe" not in mime_bytes(mail({}))


def test_a_token_keeps_its_language_and_refuses_one_it_does_not_know(settings: Settings) -> None:
    secret = settings.link_secret.get_secret_value()
    now = utcnow()
    made = {
        loc: links.read_unsubscribe_token(
            secret,
            links.unsubscribe_token(
                secret,
                shop_domain="s",
                email_key="a@b.jp",
                list_name="surveys",
                touchpoint_id=1,
                now=now,
                locale=loc,
            ),
            now=now,
        )
        for loc in ("ja", "en", "fr", None)
    }
    assert {k: v.locale for k, v in made.items()} == {"ja": "ja", "en": "en", "fr": None, None: None}
