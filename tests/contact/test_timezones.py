"""The customer's own time zone from their address: shipping, else billing, else the shop's."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import pytest

from aftercare.contact.timezones import (
    COUNTRY_ALIASES,
    MAIN_ZONES,
    SUBDIVISION_ZONES,
    _zones,
    country_zones,
    customer_zone,
    zone_for_address,
)
from aftercare.settings import PROJECT_ROOT
from tests.conftest import shared_path

SHOP = "Asia/Tokyo"
SAMPLES = PROJECT_ROOT / "aftercare" / "samples"


def addr(country, province_code=None, province=None):
    return {"country_code": country, "province_code": province_code, "province": province}


@pytest.mark.parametrize(
    ("address", "zone"),
    [
        (addr("JP", "JP-13", "Tokyo"), "Asia/Tokyo"),
        (addr("jp"), "Asia/Tokyo"),
        (addr("GB"), "Europe/London"),
        (addr("DE", None, "Berlin"), "Europe/Berlin"),
        (addr("US", "OR"), "America/Los_Angeles"),
        (addr("US", "US-OR"), "America/Los_Angeles"),
        (addr("US", None, "Oregon"), "America/Los_Angeles"),  # aftercare/samples/en-first.json writes it so
        (addr("US", "ny", "New York"), "America/New_York"),
        (addr("US", "AZ"), "America/Phoenix"),
        (addr("US", "HI"), "Pacific/Honolulu"),
        (addr("US", "KY", "Kentucky"), "America/New_York"),
        (addr("US", "TN"), "America/Chicago"),
        (addr("CA", "BC"), "America/Vancouver"),
        (addr("CA", "NL"), "America/St_Johns"),
        (addr("CA", None, "Québec"), "America/Toronto"),
        (addr("AU", "WA"), "Australia/Perth"),
        (addr("AU", "NSW"), "Australia/Sydney"),
        (addr("AU", "SA"), "Australia/Adelaide"),
        (addr("BR", "AM"), "America/Manaus"),
        (addr("BR", "SP"), "America/Sao_Paulo"),  # not listed: the country's main zone
        (addr("BR", None, "Pará"), "America/Belem"),
        (addr("MX", "Q ROO"), "America/Cancun"),
        (addr("MX", "ROO"), "America/Cancun"),
        (addr("MX", None, "Yucatán"), "America/Merida"),
        (addr("MX", "BC"), "America/Tijuana"),
        (addr("MX", "JAL"), "America/Mexico_City"),
        (addr("RU", "KGD"), "Europe/Kaliningrad"),
        (addr("RU", "NVS"), "Asia/Novosibirsk"),
        (addr("RU", "MOW"), "Europe/Moscow"),
        (addr("ID", "BA"), "Asia/Makassar"),
        (addr("ID", "ID-PA"), "Asia/Jayapura"),
        (addr("ID", "JK"), "Asia/Jakarta"),
        (addr("ES", "TF"), "Atlantic/Canary"),
        (addr("ES", "M"), "Europe/Madrid"),
        (addr("PT", "PT-20"), "Atlantic/Azores"),
        (addr("XK"), "Europe/Belgrade"),  # Kosovo: Shopify's code, not ISO's
    ],
)
def test_zone_from_country_and_state(address, zone):
    got = customer_zone(address, None, SHOP)
    assert (got.name, got.source) == (zone, "shipping")
    assert got.tz == ZoneInfo(zone)


def test_a_multi_zone_country_without_a_state_takes_its_main_zone_and_says_so():
    got = customer_zone(addr("US"), None, SHOP)
    assert got.name == "America/New_York"
    assert "no state given" in got.reason
    unknown = customer_zone(addr("AU", "XX"), None, SHOP)
    assert unknown.name == "Australia/Sydney"  # never zone.tab's first row, Lord Howe Island
    assert "'XX' not known" in unknown.reason


def test_shipping_decides_over_billing():
    got = customer_zone(addr("US", "CA"), addr("JP"), SHOP)
    assert (got.name, got.source, got.country) == ("America/Los_Angeles", "shipping", "US")


def test_billing_when_there_is_no_shipping_address():
    got = customer_zone(None, addr("DE"), SHOP)
    assert (got.name, got.source, got.country) == ("Europe/Berlin", "billing", "DE")
    assert got.reason == "shipping: no address; billing address: DE"


def test_no_address_at_all_is_the_shops_zone_with_the_reason():
    got = customer_zone(None, None, SHOP)
    assert (got.name, got.source, got.country) == (SHOP, "shop", None)
    assert got.reason == "shipping: no address; billing: no address: the shop's time zone"
    assert customer_zone({}, {}, SHOP).name == SHOP


@pytest.mark.parametrize(
    ("country", "why"),
    [
        ("ZZ", "country code 'ZZ' is unknown"),
        ("USA", "is malformed"),
        ("J", "is malformed"),
        ("1A", "is malformed"),
        ("ÜS", "is malformed"),
        ("  ", "names no country code"),
        (None, "names no country code"),
        (42, "names no country code"),
        ("US\x00", "is malformed"),
        ("x" * 10_000, "is malformed"),
    ],
)
def test_an_unknown_or_malformed_country_falls_back_to_the_shop_with_a_reason(country, why):
    got = customer_zone({"country_code": country}, {"country_code": country}, SHOP)
    assert (got.name, got.source) == (SHOP, "shop")
    assert why in got.reason
    assert len(got.reason) < 300  # a hostile value is not copied into the timeline whole


def test_an_unknown_shipping_country_still_uses_a_good_billing_address():
    got = customer_zone(addr("ZZ"), addr("GB"), SHOP)
    assert (got.name, got.source) == ("Europe/London", "billing")
    assert got.reason.startswith("shipping: country code 'ZZ' is unknown; billing address: GB")


def test_every_single_zone_country_takes_its_zone_from_the_installed_tzdata():
    single = {c: zones[0] for c, zones in country_zones().items() if len(zones) == 1}
    assert len(single) > 200
    for country, zone in single.items():
        assert zone_for_address(addr(country))[0] == zone, country


def test_every_multi_zone_country_has_a_chosen_main_zone_of_its_own():
    multi = {c: zones for c, zones in country_zones().items() if len(zones) > 1}
    assert {"US", "CA", "AU", "BR", "MX", "RU", "ID"} <= set(multi)
    missing = sorted(set(multi) - set(MAIN_ZONES))
    assert not missing, f"choose a main zone for {missing} in aftercare/contact/timezones.py"
    for country, zones in multi.items():
        assert MAIN_ZONES[country] in zones, country


def test_every_zone_in_the_tables_is_a_canonical_zone_this_system_can_load():
    listed = {z for zones in country_zones().values() for z in zones}
    named = {*MAIN_ZONES.values(), *COUNTRY_ALIASES.values()}
    named |= {z for table in SUBDIVISION_ZONES.values() for z in table.values()}
    assert named - listed == set()
    for zone in named:
        ZoneInfo(zone)


def test_a_subdivision_given_two_zones_is_refused_when_the_table_is_built():
    with pytest.raises(ValueError, match="'X' is given two zones"):
        _zones("Europe/Berlin: X\nEurope/Paris: X")


@pytest.mark.parametrize(
    ("sample", "zone"),
    [
        ("en-first.json", "America/Los_Angeles"),  # Portland, Oregon (a province name, no code)
        ("en-repeat-gift.json", "Europe/London"),
        ("ja-first-gift.json", "Asia/Tokyo"),
        ("ja-repeat.json", "Asia/Tokyo"),
        ("ja-pending-konbini.json", "Asia/Tokyo"),
    ],
)
def test_the_demo_orders(sample, zone):
    order = json.loads((SAMPLES / sample).read_text(encoding="utf-8"))
    assert customer_zone(order.get("shipping_address"), order.get("billing_address"), SHOP).name == zone


@pytest.mark.contract
def test_shopifys_own_order_payload():
    order = json.loads(shared_path("fixtures", "shopify", "order.json").read_text(encoding="utf-8"))["order"]
    got = customer_zone(order["shipping_address"], order["billing_address"], SHOP)
    assert (got.name, got.source, got.country) == ("America/New_York", "shipping", "US")  # Louisville, KY
    assert got.reason == "shipping address: US/KY"


@pytest.mark.parametrize(
    "address",
    [
        "1-2-3 Ginza, Tokyo",
        ["JP"],
        42,
        {"country_code": "US", "province_code": 12345, "province": ["Oregon"]},
        {"country_code": "US", "province_code": "x" * 100_000, "province": None},
    ],
)
def test_hostile_addresses_never_crash_and_never_leave_the_zone_unset(address):
    got = customer_zone(address, None, SHOP)
    assert got.name in {SHOP, "America/New_York"}
    assert len(got.reason) < 300
