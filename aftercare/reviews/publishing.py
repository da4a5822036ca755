"""Publishing the one approved reply to a review: a `ReviewPlatform` port, its adapters, and
`publish_reply`, which is the only code that calls them.

One reply per review, ever. The `review_replies` row (unique per review) is claimed pending ->
publishing with a compare-and-set before the platform is called, so a second call, a retry or a
re-run finds it claimed and posts nothing. A failure the platform reports before doing anything
(429, 5xx, connection refused) is retried here with backoff; a refusal (other 4xx) fails with the
platform's reason; a timeout or dropped connection after the request was sent leaves the reply
`uncertain`: the platform may have it, so it is never re-posted automatically (ops check and decide).
A worker killed mid-publish leaves the row `publishing`; once its claim is older than the lease,
`recover_stale` (called by the review sweep) asks the platform whether it has our reply: published
if it does, pending again (and published by the sweep) if it certainly does not, `uncertain` when
the platform cannot tell (Trustpilot).

Adapters:
- `OwnStorePlatform` (default): the reply lives in our own `review_replies` table and is shown on
  the web app's public page `/reviews/<public id>` (`public_page_url`); publishing it is recording
  it. The page shows a review only once its reply is published: nothing unapproved is public.
- `GoogleBusinessProfile`: `accounts.locations.reviews.updateReply`,
  `PUT {base}/v4/{accounts/*/locations/*/reviews/*}/reply` with `{"comment": text}`, bearer token;
  read back with `accounts.locations.reviews.get` (`GET {base}/v4/{name}`, its `reviewReply`).
- `Trustpilot`: the business reply, `POST {base}/v1/private/reviews/{reviewId}/reply` with
  `{"authorBusinessUserId": ..., "message": text}`, bearer token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from aftercare.errors import AftercareError
from aftercare.models import ReplyStatus, Review, ReviewReply, ReviewStatus, utcnow
from aftercare.settings import Settings

log = logging.getLogger(__name__)


class PublishError(AftercareError):
    """The platform did not take the reply."""

    def __init__(self, reason: str, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.retry_after = retry_after


class TransientPublishError(PublishError):
    """Nothing was done (429, 5xx, could not connect): safe to try again."""


class PermanentPublishError(PublishError):
    """The platform refused the reply (4xx): trying again would get the same answer."""


class AmbiguousPublishError(PublishError):
    """The request was sent and no answer came: the platform may have published it."""


class CannotTell(PublishError):
    """The platform cannot say whether it has our reply (no read-back API, or a different reply is
    there): a person must look before anything is posted."""


class ReviewPlatform(Protocol):
    """Where a review's reply is published. `publish` returns the platform's id for the reply, or
    raises a `PublishError` subclass saying whether it is safe to try again. `find_reply` returns
    that id when the platform has our reply, None when it certainly has not, raises `CannotTell`
    when it cannot say (or `TransientPublishError`: ask again later)."""

    name: str

    def publish(self, review: Review, reply: ReviewReply) -> str: ...

    def find_reply(self, review: Review, reply: ReviewReply) -> str | None: ...


class OwnStorePlatform:
    """Our own store of replies: the row in `review_replies` is the reply, and the public page
    `/reviews/<public id>` shows it once published. Nothing leaves this process."""

    name = "own"

    def publish(self, review: Review, reply: ReviewReply) -> str:
        return f"own:{reply.id}"

    def find_reply(self, review: Review, reply: ReviewReply) -> str | None:
        """Publishing here is recording: the approved row is the reply, whatever stopped the worker."""
        return self.publish(review, reply)


def public_page_url(settings: Settings, review: Review) -> str:
    """The review's page on our web app, `<web_base_url>/reviews/<public id>`: the link to give
    anyone once its reply is published (before that, and for any other id, the page is a 404). The
    public id is random; the sequential database id never appears in a public link."""
    return f"{settings.web_base_url.rstrip('/')}/reviews/{quote(review.public_id, safe='')}"


# --- HTTP adapters ------------------------------------------------------------------------------------


def reason_of(response: httpx.Response) -> str:
    """The platform's own words: Google's `error.message`, Trustpilot's `message`/`details`, or the
    start of the body."""
    try:
        data: Any = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        for key in ("message", "details", "error_description", "error", "reason"):
            value = data.get(key)
            if value:
                return (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))[:500]
    return response.text.strip()[:500] or response.reason_phrase


def retry_after_of(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _send(
    client: httpx.Client, platform: str, method: str, url: str, token: str, body: dict[str, Any]
) -> Any:
    """Send one request; 2xx -> the decoded JSON body (or None), else the matching PublishError."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
    content = json.dumps(body, ensure_ascii=False).encode()
    try:
        response = client.request(method, url, content=content, headers=headers)
    except (httpx.ConnectTimeout, httpx.ConnectError, httpx.PoolTimeout) as exc:
        # Never connected: the platform cannot have the reply.
        raise TransientPublishError(f"could not reach {platform}: {type(exc).__name__}: {exc}") from exc
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise AmbiguousPublishError(
            f"{platform} did not answer after the reply was sent ({type(exc).__name__}); it may be published"
        ) from exc
    status = response.status_code
    if 200 <= status < 300:
        try:
            return response.json() if response.content else None
        except ValueError:
            return None
    if status >= 500 or status in (408, 429):
        raise TransientPublishError(
            f"{platform} answered {status}: {reason_of(response)}", status, retry_after_of(response)
        )
    raise PermanentPublishError(f"{platform} refused the reply ({status}): {reason_of(response)}", status)


class GoogleBusinessProfile:
    """Google Business Profile `accounts.locations.reviews.updateReply`. The review id is the review's
    resource name (`accounts/{a}/locations/{l}/reviews/{r}`), or a bare reviewId under `location`."""

    name = "google"

    def __init__(self, client: httpx.Client, *, base_url: str, token: str, location: str = ""):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.location = location.strip("/")

    def review_name(self, review: Review) -> str:
        ref = review.platform_review_id.strip("/")
        if ref.startswith("accounts/"):
            parts = ref.split("/")
            if len(parts) != 6 or parts[2] != "locations" or parts[4] != "reviews" or not all(parts):
                raise PermanentPublishError(f"not a Google review name: {ref!r}")
            return "/".join(quote(p, safe="") for p in parts)
        if not self.location:
            raise PermanentPublishError(
                f"review {ref!r} is a bare reviewId: set AFTERCARE_GOOGLE_BUSINESS_LOCATION "
                "(accounts/{a}/locations/{l}) or send the review's resource name"
            )
        return f"{self.location}/reviews/{quote(ref, safe='')}"

    def publish(self, review: Review, reply: ReviewReply) -> str:
        name = self.review_name(review)
        _send(
            self.client,
            self.name,
            "PUT",
            f"{self.base_url}/v4/{name}/reply",
            self.token,
            {"comment": reply.text},
        )
        return f"{name}/reply"  # a review has one reply; its name is the id

    def find_reply(self, review: Review, reply: ReviewReply) -> str | None:
        """`accounts.locations.reviews.get`: the review's `reviewReply`. Ours if its comment is our
        text; no reply at all: certainly not published; another text: someone answered meanwhile."""
        name = self.review_name(review)
        try:
            response = self.client.get(
                f"{self.base_url}/v4/{name}", headers={"Authorization": f"Bearer {self.token}"}
            )
        except httpx.TransportError as exc:
            raise TransientPublishError(f"could not read the review back from google: {exc!r}") from exc
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise TransientPublishError(f"google answered {response.status_code}: {reason_of(response)}")
        if response.status_code != 200:
            raise CannotTell(
                f"google would not show the review ({response.status_code}): {reason_of(response)}"
            )
        try:
            found = response.json().get("reviewReply")
        except (ValueError, AttributeError) as exc:
            raise CannotTell("google's answer about the review is not the JSON we expect") from exc
        if not found:
            return None
        if isinstance(found, dict) and found.get("comment") == reply.text:
            return f"{name}/reply"
        raise CannotTell("google shows a different reply on this review than the one approved")


class Trustpilot:
    """Trustpilot's business reply to a service review, posted as `business_user_id`."""

    name = "trustpilot"

    def __init__(self, client: httpx.Client, *, base_url: str, token: str, business_user_id: str):
        if not business_user_id:
            raise ValueError("Trustpilot replies need the business user id to post as")
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.business_user_id = business_user_id

    def publish(self, review: Review, reply: ReviewReply) -> str:
        review_id = quote(review.platform_review_id, safe="")
        data = _send(
            self.client,
            self.name,
            "POST",
            f"{self.base_url}/v1/private/reviews/{review_id}/reply",
            self.token,
            {"authorBusinessUserId": self.business_user_id, "message": reply.text},
        )
        ref = data.get("id") if isinstance(data, dict) else None
        return str(ref or f"trustpilot:{review.platform_review_id}/reply")[:255]

    def find_reply(self, review: Review, reply: ReviewReply) -> str | None:
        """Not asked: the reply endpoint we use has no read-back with this token."""
        raise CannotTell(
            f"Trustpilot cannot be asked whether review {review.platform_review_id} has our reply; "
            "check the review on Trustpilot"
        )


def make_platform(settings: Settings, platform: str, *, client: httpx.Client | None = None) -> ReviewPlatform:
    """The port a review from `platform` publishes through: Google's or Trustpilot's reply API when
    its token is configured, else our own store (the public page)."""
    google_token = settings.google_business_token.get_secret_value()
    trustpilot_token = settings.trustpilot_token.get_secret_value()
    if platform == "google" and google_token:
        return GoogleBusinessProfile(
            client or httpx.Client(timeout=settings.review_publish_timeout_s),
            base_url=settings.google_business_base_url,
            token=google_token,
            location=settings.google_business_location,
        )
    if platform == "trustpilot" and trustpilot_token:
        return Trustpilot(
            client or httpx.Client(timeout=settings.review_publish_timeout_s),
            base_url=settings.trustpilot_base_url,
            token=trustpilot_token,
            business_user_id=settings.trustpilot_business_user_id,
        )
    return OwnStorePlatform()


# --- publishing the one reply -------------------------------------------------------------------------


class ReplyNotFound(AftercareError):
    """The review has no reply queued (`store.enqueue_reply` first)."""


_replies = ReviewReply.__table__  # type: ignore[attr-defined]


def _claim(engine: Engine, review_id: int) -> bool:
    """pending -> publishing, as a compare-and-set: True for the one caller that wins it."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(_replies)
            .where(_replies.c.review_id == review_id, _replies.c.status == ReplyStatus.PENDING)
            .values(status=ReplyStatus.PUBLISHING, attempts=_replies.c.attempts + 1, claimed_at=utcnow())
        )
        return result.rowcount == 1


def _settle(engine: Engine, review_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(_replies)
            .where(_replies.c.review_id == review_id, _replies.c.status == ReplyStatus.PUBLISHING)
            .values(**values)
        )


def publish_reply(
    engine: Engine,
    review_id: int,
    platform: ReviewPlatform,
    *,
    max_attempts: int = 5,
    backoff_base_s: float = 2.0,
    max_backoff_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ReviewReply:
    """Publish the review's queued reply through `platform`, at most once ever, and return the reply
    row as it ends up: published (with the platform's id; the review becomes published too), failed
    (with the platform's reason), or uncertain. A reply that is not pending (published, publishing,
    failed, uncertain) is returned as it is, and nothing is sent. Transient failures are retried up
    to `max_attempts` calls with exponential backoff (or the platform's Retry-After)."""
    with Session(engine) as session:
        reply = session.exec(select(ReviewReply).where(ReviewReply.review_id == review_id)).first()
        review = session.get(Review, review_id)
    if reply is None or review is None:
        raise ReplyNotFound(f"review {review_id} has no reply queued")
    if not _claim(engine, review_id):
        log.info("reply to review %s is %s: not publishing again", review_id, reply.status)
        return _reload(engine, review_id)
    attempt = 1
    while True:
        try:
            platform_reply_id = platform.publish(review, reply)
        except TransientPublishError as exc:
            if attempt >= max_attempts:
                _settle(
                    engine,
                    review_id,
                    status=ReplyStatus.FAILED,
                    last_error=f"gave up after {attempt} attempts: {exc.reason}"[:2000],
                )
                break
            _settle(engine, review_id, last_error=exc.reason[:2000])
            delay = exc.retry_after if exc.retry_after is not None else backoff_base_s * 2 ** (attempt - 1)
            sleep(min(delay, max_backoff_s))
            attempt += 1
            with engine.begin() as conn:
                conn.execute(
                    sa.update(_replies)
                    .where(_replies.c.review_id == review_id)
                    .values(attempts=_replies.c.attempts + 1)
                )
            continue
        except PermanentPublishError as exc:
            _settle(engine, review_id, status=ReplyStatus.FAILED, last_error=exc.reason[:2000])
        except AmbiguousPublishError as exc:
            _settle(engine, review_id, status=ReplyStatus.UNCERTAIN, last_error=exc.reason[:2000])
        except BaseException as exc:
            # An adapter bug or an interrupt: whether the platform got the reply is unknown.
            _settle(
                engine,
                review_id,
                status=ReplyStatus.UNCERTAIN,
                last_error=f"publishing stopped by {type(exc).__name__}: {exc}"[:2000],
            )
            raise
        else:
            now = utcnow()
            _settle(
                engine,
                review_id,
                status=ReplyStatus.PUBLISHED,
                platform_reply_id=platform_reply_id[:255],
                published_at=now,
                last_error=None,
            )
            _mark_review_published(engine, review_id, now)
        break
    return _reload(engine, review_id)


def _reload(engine: Engine, review_id: int) -> ReviewReply:
    with Session(engine) as session:
        return session.exec(select(ReviewReply).where(ReviewReply.review_id == review_id)).one()


# --- a worker that stopped mid-publish --------------------------------------------------------------


def recover_stale(
    engine: Engine,
    platform_for: Callable[[str], ReviewPlatform],
    lease: timedelta,
    now: datetime,
) -> dict[int, str]:
    """Settle replies left `publishing` longer than `lease` (a worker killed mid-publish; rows
    claimed before claims were timed count as stale), like the outbox's `recover_stale`: published
    when the platform has our reply, pending when it certainly has not (the caller publishes it
    again), uncertain when it cannot tell: never re-posted blindly. A platform that cannot be
    reached now leaves the row for the next sweep. Returns {review id: status} for what changed.
    `lease` must outlast one `publish_reply` (attempts x (timeout + backoff))."""
    cutoff = now - lease
    stale_rows = sa.select(_replies.c.review_id, _replies.c.claimed_at).where(
        _replies.c.status == ReplyStatus.PUBLISHING,
        sa.or_(_replies.c.claimed_at.is_(None), _replies.c.claimed_at < cutoff),
    )
    with engine.connect() as conn:
        stale = conn.execute(stale_rows).all()
    outcome: dict[int, str] = {}
    for review_id, claimed_at in stale:
        with Session(engine) as session:
            reply = session.exec(select(ReviewReply).where(ReviewReply.review_id == review_id)).one()
            review = session.get(Review, review_id)
        assert review is not None
        platform = platform_for(review.platform)
        try:
            found = platform.find_reply(review, reply)
        except TransientPublishError as exc:
            log.warning(
                "reply to review %s: cannot ask %s yet (%s); next sweep", review_id, platform.name, exc
            )
            continue
        except PublishError as exc:  # CannotTell, or a refusal to show the review
            values: dict[str, Any] = {
                "status": ReplyStatus.UNCERTAIN,
                "last_error": (
                    f"publishing stopped mid-way and {platform.name} cannot say whether it has the reply "
                    f"({exc.reason}); check the review there before posting anything"
                )[:2000],
            }
        else:
            if found is not None:
                values = {
                    "status": ReplyStatus.PUBLISHED,
                    "platform_reply_id": found[:255],
                    "published_at": now,
                    "last_error": f"recovered after publishing stopped mid-way: {platform.name} has it",
                }
            else:
                values = {
                    "status": ReplyStatus.PENDING,
                    "claimed_at": None,
                    "last_error": f"publishing stopped before {platform.name} had the reply; requeued",
                }
        if _settle_stale(engine, review_id, claimed_at, values):
            if values["status"] == ReplyStatus.PUBLISHED:
                _mark_review_published(engine, review_id, now)
            outcome[review_id] = values["status"]
    return outcome


def _settle_stale(
    engine: Engine, review_id: int, claimed_at: datetime | None, values: dict[str, Any]
) -> bool:
    """Compare-and-set on the claim we saw: a concurrent sweep, or a worker that came back, wins."""
    same_claim = (
        _replies.c.claimed_at.is_(None) if claimed_at is None else _replies.c.claimed_at == claimed_at
    )
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(_replies)
            .where(_replies.c.review_id == review_id, _replies.c.status == ReplyStatus.PUBLISHING, same_claim)
            .values(**values)
        )
        return result.rowcount == 1


def _mark_review_published(engine: Engine, review_id: int, now: datetime) -> None:
    reviews = Review.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            sa.update(reviews)
            .where(reviews.c.id == review_id)
            .values(
                status=ReviewStatus.PUBLISHED,
                published_at=sa.func.coalesce(
                    reviews.c.published_at, sa.literal(now, reviews.c.published_at.type)
                ),
            )
        )
