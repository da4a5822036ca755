"""Settings refuse the public development secrets wherever a forged webhook could reach real people:
in production and whenever a real backend is configured, whatever AFTERCARE_ENVIRONMENT says."""

from __future__ import annotations

import pytest

from aftercare.errors import ConfigError
from aftercare.settings import LOCAL_DEV_SECRET, Settings

SHOP_SECRET = "a-real-shop-secret-123"
REVIEWS_SECRET = "a-real-reviews-secret-456"
APPROVAL_SECRET = "a-real-approval-secret-789"
LINK_SECRET = "a-real-link-secret-246"

REAL_BACKENDS = {
    "sendgrid": {"email_backend": "sendgrid", "sendgrid_api_key": "SG.real"},
    "http 3PL": {
        "warehouse_backend": "http",
        "warehouse_url": "https://3pl.example/api",
        "warehouse_secret": "3pl-signing-secret",
    },
    "google": {"google_business_token": "ya29.real"},
    "trustpilot": {"trustpilot_token": "tp-real", "trustpilot_business_user_id": "u1"},
}


def build(database_url: str, tmp_path, **values) -> Settings:
    return Settings(_env_file=None, database_url=database_url, var_dir=tmp_path, **values)


@pytest.mark.parametrize("backend", REAL_BACKENDS)
@pytest.mark.parametrize("environment", ["local", "test"])
@pytest.mark.parametrize("public", [LOCAL_DEV_SECRET, "", "changeme"])
def test_a_real_backend_refuses_a_public_shopify_secret(database_url, tmp_path, backend, environment, public):
    with pytest.raises(ConfigError, match="AFTERCARE_SHOPIFY_WEBHOOK_SECRET") as err:
        build(
            database_url,
            tmp_path,
            environment=environment,
            shopify_webhook_secret=public,
            reviews_webhook_secret=REVIEWS_SECRET,
            approval_secret=APPROVAL_SECRET,
            link_secret=LINK_SECRET,
            **REAL_BACKENDS[backend],
        )
    assert "public placeholder" in str(err.value)


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_a_real_backend_refuses_the_public_reviews_secret(database_url, tmp_path, backend):
    """The reviews secret defaults to the public one even when the Shopify secret is real."""
    with pytest.raises(ConfigError, match="AFTERCARE_REVIEWS_WEBHOOK_SECRET"):
        build(database_url, tmp_path, shopify_webhook_secret=SHOP_SECRET, **REAL_BACKENDS[backend])


@pytest.mark.parametrize("backend", REAL_BACKENDS)
@pytest.mark.parametrize("public", [LOCAL_DEV_SECRET, "", "changethis"])
def test_a_real_backend_refuses_a_public_approval_secret(database_url, tmp_path, backend, public):
    """Anyone holding the public secret could sign an approval link and publish a reply."""
    with pytest.raises(ConfigError, match="AFTERCARE_APPROVAL_SECRET"):
        build(
            database_url,
            tmp_path,
            shopify_webhook_secret=SHOP_SECRET,
            reviews_webhook_secret=REVIEWS_SECRET,
            approval_secret=public,
            **REAL_BACKENDS[backend],
        )


@pytest.mark.parametrize("backend", REAL_BACKENDS)
@pytest.mark.parametrize("public", [LOCAL_DEV_SECRET, "", "changethis"])
def test_a_real_backend_refuses_a_public_link_secret(database_url, tmp_path, backend, public):
    """Anyone holding the public secret could sign a customer's unsubscribe or survey link."""
    with pytest.raises(ConfigError, match="AFTERCARE_LINK_SECRET"):
        build(
            database_url,
            tmp_path,
            shopify_webhook_secret=SHOP_SECRET,
            reviews_webhook_secret=REVIEWS_SECRET,
            approval_secret=APPROVAL_SECRET,
            link_secret=public,
            **REAL_BACKENDS[backend],
        )


def test_customer_links_use_the_public_url_else_the_web_base_url(database_url, tmp_path):
    assert build(database_url, tmp_path, web_base_url="http://10.0.0.5:8000/").customer_base_url == (
        "http://10.0.0.5:8000"
    )
    public = build(database_url, tmp_path, public_url="https://care.shop.example/")
    assert public.customer_base_url == "https://care.shop.example"


@pytest.mark.parametrize("backend", REAL_BACKENDS)
def test_a_real_backend_with_real_secrets_is_accepted(database_url, tmp_path, backend):
    settings = build(
        database_url,
        tmp_path,
        shopify_webhook_secret=SHOP_SECRET,
        reviews_webhook_secret=REVIEWS_SECRET,
        approval_secret=APPROVAL_SECRET,
        link_secret=LINK_SECRET,
        **REAL_BACKENDS[backend],
    )
    assert settings.real_backends()


def test_production_refuses_public_secrets_with_no_backend(database_url, tmp_path):
    with pytest.raises(ConfigError, match="SHOPIFY_WEBHOOK_SECRET.*AFTERCARE_ENVIRONMENT=production"):
        build(database_url, tmp_path, environment="production")


def test_the_local_demo_still_runs_on_the_public_defaults(database_url, tmp_path):
    """Files outbox, files warehouse, our own review page: nothing leaves the machine, so `make up`
    works on a fresh clone. A local LLM does not make it a real deployment either."""
    settings = build(database_url, tmp_path)
    assert settings.real_backends() == []
    assert settings.shopify_webhook_secret.get_secret_value() == LOCAL_DEV_SECRET
