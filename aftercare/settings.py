"""One settings object, built once from AFTERCARE_* env vars (and .env), passed in everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aftercare.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The embedded default secret exists so `make up` works on a fresh clone. It is public (it is in this
# file), so it is refused in production and whenever a real backend is configured (`real_backends`).
LOCAL_DEV_SECRET = "aftercare-local-dev-secret"
_PLACEHOLDERS = {"", "changethis", "changeme", "secret", LOCAL_DEV_SECRET}
# The shop `aftercare demo` posts as; the one shop an installation serves until told otherwise.
DEMO_SHOP_DOMAIN = "aftercare-demo.myshopify.com"


class Settings(BaseSettings):
    """Everything aftercare reads from the environment."""

    model_config = SettingsConfigDict(env_prefix="AFTERCARE_", env_file=".env", extra="ignore")

    environment: Literal["local", "test", "production"] = "local"
    var_dir: Path = PROJECT_ROOT / "var"
    database_url: str = ""

    shopify_webhook_secret: SecretStr = SecretStr(LOCAL_DEV_SECRET)
    # The shops this installation serves (comma-separated *.myshopify.com domains). The shop header
    # is not covered by the HMAC: a delivery naming any other shop is refused.
    shopify_shops: Annotated[list[str], NoDecode] = [DEMO_SHOP_DOMAIN]
    # Signs POST /webhooks/reviews (X-Aftercare-Hmac-Sha256: base64 HMAC-SHA256 of the raw body).
    reviews_webhook_secret: SecretStr = SecretStr(LOCAL_DEV_SECRET)
    # Signs the approval links mailed to approvers (/approvals/<token>) and the page's form tokens.
    approval_secret: SecretStr = SecretStr(LOCAL_DEV_SECRET)
    # Signs the links in customers' mails (unsubscribe, survey answers): opaque, per purpose, expiring.
    link_secret: SecretStr = SecretStr(LOCAL_DEV_SECRET)
    # The hard cap on a webhook body. Shopify's orders can exceed 1 MiB (hundreds of lines, long
    # notes); an authentic body up to the cap is stored and processed like any other, above it 413,
    # nothing stored, and a warning with topic, shop and webhook id so ops can ask for it again.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024)

    shop_name: str = "aftercare demo shop"
    email_from: str = "shop@example.com"
    email_from_name: str = "aftercare demo shop"
    email_backend: Literal["outbox", "sendgrid"] = "outbox"
    outbox_dir: Path | None = None
    sendgrid_api_key: SecretStr = SecretStr("")
    sendgrid_base_url: str = "https://api.sendgrid.com"
    sendgrid_timeout_s: float = 10.0
    # A provider outage lasts minutes, not seconds: transient failures back off (2 s doubling, capped
    # at 5 min) for 12 attempts, about 23 minutes, before a message is failed for ops.
    send_max_attempts: int = Field(default=12, ge=1, le=50)
    send_backoff_base_s: float = 2.0
    send_backoff_cap_s: float = Field(default=300.0, gt=0)
    send_lease_s: float = 120.0
    # How long a claimed warehouse hand-off belongs to its worker before another may take it over (a
    # worker that died); the fault suite makes leases short so takeovers happen within its run.
    handoff_lease_s: float = Field(default=300.0, gt=0)
    # Messages of one batch sent at once: the provider's latency overlaps instead of adding up.
    send_concurrency: int = Field(default=4, ge=1, le=32)

    policies_dir: Path = PROJECT_ROOT / "policies"
    templates_dir: Path = PROJECT_ROOT / "templates"

    web_base_url: str = "http://127.0.0.1:8000"
    # Where customers reach our pages (unsubscribe, survey): AFTERCARE_PUBLIC_URL, else web_base_url.
    public_url: str | None = None
    # FastAPI's /docs, /redoc and /openapi.json: off unless asked for (they map every route for
    # whoever reaches the web app).
    api_docs: bool = False
    prefect_ui_url: str = "http://127.0.0.1:4200"
    # Where `aftercare up` binds the Prefect server (API and UI). Loopback needs no login; anything
    # else (0.0.0.0, a LAN address, a hostname) needs the auth string below (docs/production.md).
    prefect_host: str = "127.0.0.1"
    # Prefect's own variables, read under Prefect's names: the basic-auth "user:password" the server
    # checks, and the one its clients send. `aftercare up` gives the server's to its clients too.
    prefect_server_api_auth_string: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("prefect_server_api_auth_string", "PREFECT_SERVER_API_AUTH_STRING"),
    )
    prefect_api_auth_string: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("prefect_api_auth_string", "PREFECT_API_AUTH_STRING")
    )
    wake_prefect: bool = True
    wake_deployment: str = "process-inbox/process-inbox"
    # When work has stayed due this long and no process-inbox run drained it (Prefect's own server
    # locked or down: no run can start), the web app drains it itself under a free drain slot, with
    # no Prefect call (tasks/drain_here.py). 0 turns that off.
    fallback_drain_after_s: float = Field(default=60.0, ge=0, le=86400)

    batch_size: int = Field(default=50, ge=1, le=1000)
    # How many process-inbox runs may drain at once (AFTERCARE_WORKERS): slots a dead process cannot
    # keep (aftercare/drainers.py), not Prefect's deployment concurrency limit, which a killed run holds.
    workers: int = Field(default=1, ge=1, le=16)
    # A delivery whose processing failed is tried again after base * 2^(attempts-1) seconds, capped
    # (30 s, 1 min, 2 min, ... up to 4 h: ten attempts span about four hours), then ops are told. A claim
    # older than the lease with no outcome is a worker that died on it: that counts as an attempt.
    inbox_max_attempts: int = Field(default=10, ge=1, le=50)
    inbox_retry_base_s: float = Field(default=30.0, gt=0)
    inbox_retry_cap_s: float = Field(default=4 * 3600.0, gt=0)
    inbox_lease_s: float = Field(default=300.0, gt=0)

    # Where shipping instructions go: files under <var_dir>/warehouse/ (default) or a 3PL's HTTP API.
    warehouse_backend: Literal["files", "http"] = "files"
    warehouse_dir: Path | None = None
    warehouse_url: str = ""
    warehouse_secret: SecretStr = SecretStr("")
    warehouse_timeout_s: float = 10.0
    # The same schedule as mail: a 3PL down for minutes is waited out, not failed.
    warehouse_max_attempts: int = Field(default=12, ge=1, le=50)
    warehouse_backoff_base_s: float = 2.0
    warehouse_backoff_cap_s: float = Field(default=300.0, gt=0)
    # Hand-offs of one batch sent at once: a 3PL answering in 50 ms would otherwise cap a batch
    # task at 20 orders/s.
    warehouse_concurrency: int = Field(default=8, ge=1, le=32)

    # Where approved review replies are published. Reviews from "google" and "trustpilot" go to their
    # reply APIs when a token is set; every other platform (and those without one) to our own store,
    # shown on the public page /reviews/<public id> once published.
    google_business_base_url: str = "https://mybusiness.googleapis.com"
    google_business_token: SecretStr = SecretStr("")
    google_business_location: str = ""  # accounts/{a}/locations/{l}, when reviews carry a bare reviewId
    trustpilot_base_url: str = "https://api.trustpilot.com"
    trustpilot_token: SecretStr = SecretStr("")
    trustpilot_business_user_id: str = ""
    # Review invitations Trustpilot mails for us (policies/review_requests.yaml `destination:
    # trustpilot`; aftercare/reviews/invitations.py): its Invitation API with an OAuth token from the
    # API key and secret (client credentials, at trustpilot_base_url), for this business unit.
    trustpilot_invitations_base_url: str = "https://invitations-api.trustpilot.com"
    trustpilot_api_key: SecretStr = SecretStr("")
    trustpilot_api_secret: SecretStr = SecretStr("")
    trustpilot_business_unit_id: str = ""
    trustpilot_invitation_timeout_s: float = Field(default=10.0, gt=0)
    # An invitation Trustpilot certainly did not take (429, 503, could not connect, no token) waits
    # base * 2^(attempts-1) seconds, capped, then is tried by a later run; after the last attempt it
    # fails for ops. A timeout or another 5xx is never tried again: Trustpilot may have it.
    trustpilot_invitation_max_attempts: int = Field(default=8, ge=1, le=50)
    trustpilot_invitation_backoff_base_s: float = Field(default=60.0, gt=0)
    trustpilot_invitation_backoff_cap_s: float = Field(default=3600.0, gt=0)
    # A claim older than this with no outcome is a worker that stopped mid-send: uncertain, for ops.
    trustpilot_invitation_lease_s: float = Field(default=300.0, gt=0)
    review_publish_timeout_s: float = 10.0
    review_publish_max_attempts: int = Field(default=5, ge=1, le=50)
    review_publish_backoff_base_s: float = 2.0
    # A reply left `publishing` longer than this was dropped by a worker that stopped; the review sweep
    # settles it. It must outlast one publish (attempts x (timeout + up to 60 s of backoff)).
    review_publish_lease_s: float = Field(default=900.0, gt=0)

    @field_validator("shopify_shops", mode="before")
    @classmethod
    def _shop_list(cls, value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else list(value)
        shops = list(dict.fromkeys(normalise_shop(str(item)) for item in items))
        shops = [shop for shop in shops if shop]
        if not shops:
            raise ConfigError(
                "AFTERCARE_SHOPIFY_SHOPS is empty: name the shop domains this installation serves "
                "(comma-separated, e.g. my-shop.myshopify.com)"
            )
        return shops

    @model_validator(mode="after")
    def _fill_and_refuse(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.var_dir / 'aftercare.db'}"
        if self.outbox_dir is None:
            self.outbox_dir = self.var_dir / "outbox"
        if self.warehouse_dir is None:
            self.warehouse_dir = self.var_dir / "warehouse"
        if self.warehouse_backend == "http" and not self.warehouse_url.startswith(("http://", "https://")):
            raise ValueError("AFTERCARE_WAREHOUSE_BACKEND=http needs AFTERCARE_WAREHOUSE_URL (http or https)")
        if self.warehouse_backend == "http" and self.warehouse_secret.get_secret_value() in _PLACEHOLDERS:
            raise ConfigError(
                "AFTERCARE_WAREHOUSE_BACKEND=http needs AFTERCARE_WAREHOUSE_SECRET to sign with "
                "(a real secret, not empty or a placeholder)"
            )
        self._refuse_public_secrets()
        if self.email_backend == "sendgrid" and not self.sendgrid_api_key.get_secret_value():
            raise ValueError("AFTERCARE_EMAIL_BACKEND=sendgrid needs AFTERCARE_SENDGRID_API_KEY")
        return self

    def real_backends(self) -> list[str]:
        """The configured backends that reach real customers, a real warehouse or a public review
        platform, each as the setting that chose it. With any of them, aftercare is not a demo on a
        laptop, whatever AFTERCARE_ENVIRONMENT says. The LLM is not one: it drafts, a person approves
        and it receives nothing, and a local model (Ollama) is the usual development setup."""
        real = []
        if self.email_backend == "sendgrid":
            real.append("AFTERCARE_EMAIL_BACKEND=sendgrid")
        if self.warehouse_backend == "http":
            real.append("AFTERCARE_WAREHOUSE_BACKEND=http")
        if self.google_business_token.get_secret_value():
            real.append("AFTERCARE_GOOGLE_BUSINESS_TOKEN")
        if self.trustpilot_token.get_secret_value():
            real.append("AFTERCARE_TRUSTPILOT_TOKEN")
        if self.trustpilot_api_key.get_secret_value():
            real.append("AFTERCARE_TRUSTPILOT_API_KEY")
        return real

    def _refuse_public_secrets(self) -> None:
        """Anyone can sign with a public default secret: a forged order would mail a customer, ship a
        parcel or answer a review in the shop's name. Refused in production and with a real backend."""
        why = ["AFTERCARE_ENVIRONMENT=production"] if self.environment == "production" else []
        why += self.real_backends()
        if not why:
            return
        for variable, secret in (
            ("AFTERCARE_SHOPIFY_WEBHOOK_SECRET", self.shopify_webhook_secret),
            ("AFTERCARE_REVIEWS_WEBHOOK_SECRET", self.reviews_webhook_secret),
            ("AFTERCARE_APPROVAL_SECRET", self.approval_secret),
            ("AFTERCARE_LINK_SECRET", self.link_secret),
        ):
            if secret.get_secret_value() in _PLACEHOLDERS:
                raise ConfigError(
                    f"{variable} is empty or a public placeholder; set a real secret "
                    f"(required with {', '.join(why)})"
                )

    @property
    def customer_base_url(self) -> str:
        """The base of every link a customer gets (no trailing slash)."""
        return (self.public_url or self.web_base_url).rstrip("/")

    def serves_shop(self, shop_domain: str | None) -> bool:
        """Whether a delivery naming this shop is one of ours (the header is not signed)."""
        return bool(shop_domain) and normalise_shop(shop_domain or "") in self.shopify_shops

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def normalise_shop(domain: str) -> str:
    """A shop domain as we compare and store it: trimmed, lower-case (DNS names are not case-sensitive)."""
    return domain.strip().lower()
