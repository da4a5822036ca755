"""The customer's own time zone, from the address they gave us.

The shipping address decides (that is where the parcel, and most likely the person, is), else the
billing address, else the shop's zone. A country with one zone in tzdata's `zone.tab` (read from the
`tzdata` package, so it follows the installed time zone database) needs nothing more. A country with
several takes the zone of its state or province from `SUBDIVISION_ZONES` (Shopify's `province_code`,
with or without the "US-" prefix, or else the `province` name), else its main zone from
`MAIN_ZONES`: the zone most of its people live in, never simply the first row of `zone.tab` (that is
Lord Howe Island for Australia and St John's for Canada).

A state that itself spans two zones (Tennessee, Kentucky, Indiana, Florida's panhandle, west Texas,
Oregon's Malheur county, the Dakotas, Nebraska, Kansas, Idaho, Michigan's Upper Peninsula; the
Mexican and Russian border regions) is given the zone most of its people live in. A wrong guess
there costs at most an hour, inside a send window that is hours wide.

Every answer says where it came from, so the timeline can tell ops why a mail went out when it did.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ZoneSource = Literal["shipping", "billing", "shop"]

# Shopify codes that are not ISO 3166-1 countries, and so are not in zone.tab.
COUNTRY_ALIASES: dict[str, str] = {
    "XK": "Europe/Belgrade",  # Kosovo
    "AC": "Atlantic/St_Helena",  # Ascension Island
    "TA": "Atlantic/St_Helena",  # Tristan da Cunha
}

# The zone most of the country's people live in, for every country with several rows in zone.tab.
MAIN_ZONES: dict[str, str] = {
    "AQ": "Antarctica/McMurdo",
    "AR": "America/Argentina/Buenos_Aires",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "CD": "Africa/Kinshasa",
    "CL": "America/Santiago",
    "CN": "Asia/Shanghai",
    "CY": "Asia/Nicosia",
    "DE": "Europe/Berlin",
    "EC": "America/Guayaquil",
    "ES": "Europe/Madrid",
    "FM": "Pacific/Pohnpei",
    "GL": "America/Nuuk",
    "ID": "Asia/Jakarta",
    "KI": "Pacific/Tarawa",
    "KZ": "Asia/Almaty",
    "MH": "Pacific/Majuro",
    "MN": "Asia/Ulaanbaatar",
    "MX": "America/Mexico_City",
    "MY": "Asia/Kuala_Lumpur",
    "NZ": "Pacific/Auckland",
    "PF": "Pacific/Tahiti",
    "PG": "Pacific/Port_Moresby",
    "PS": "Asia/Hebron",
    "PT": "Europe/Lisbon",
    "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv",
    "UM": "Pacific/Wake",
    "US": "America/New_York",
    "UZ": "Asia/Tashkent",
}


def _zones(spec: str) -> dict[str, str]:
    """'America/Chicago: AL, Alabama, ...' lines (indented lines continue the zone above) ->
    {folded code or name: zone}. A key given two zones is a mistake in the table, refused."""
    table: dict[str, str] = {}
    zone = ""
    for line in spec.strip().splitlines():
        head, colon, rest = line.partition(":")
        if colon:
            zone, keys = head.strip(), rest
        else:
            keys = line
        for key in keys.split(","):
            key = key.strip()
            if not key:
                continue
            if table.get(_fold(key), zone) != zone:
                raise ValueError(f"{key!r} is given two zones")
            table[_fold(key)] = zone
    return table


def _fold(text: str) -> str:
    """How codes and names are matched: case, accents, spaces and punctuation ignored."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if ch.isalnum()).casefold()


# Per country: state or province (Shopify's province_code, ISO 3166-2's where Shopify's differs,
# and the English or local name) -> zone. Only the subdivisions whose zone is not the country's
# main zone need listing; they are all listed for the big three so that a reader can check them.
SUBDIVISION_ZONES: dict[str, dict[str, str]] = {
    "US": _zones(
        """
        America/New_York: CT, Connecticut, DE, Delaware, DC, District of Columbia, FL, Florida, GA, Georgia,
          KY, Kentucky, ME, Maine, MD, Maryland, MA, Massachusetts, NH, New Hampshire, NJ, New Jersey,
          NY, New York, NC, North Carolina, OH, Ohio, PA, Pennsylvania, RI, Rhode Island,
          SC, South Carolina, VT, Vermont, VA, Virginia, WV, West Virginia
        America/Detroit: MI, Michigan
        America/Indiana/Indianapolis: IN, Indiana
        America/Chicago: AL, Alabama, AR, Arkansas, IL, Illinois, IA, Iowa, KS, Kansas, LA, Louisiana,
          MN, Minnesota, MS, Mississippi, MO, Missouri, NE, Nebraska, ND, North Dakota, OK, Oklahoma,
          SD, South Dakota, TN, Tennessee, TX, Texas, WI, Wisconsin
        America/Denver: CO, Colorado, MT, Montana, NM, New Mexico, UT, Utah, WY, Wyoming
        America/Boise: ID, Idaho
        America/Phoenix: AZ, Arizona
        America/Los_Angeles: CA, California, NV, Nevada, OR, Oregon, WA, Washington
        America/Anchorage: AK, Alaska
        Pacific/Honolulu: HI, Hawaii
        America/Puerto_Rico: PR, Puerto Rico
        America/St_Thomas: VI, Virgin Islands
        Pacific/Guam: GU, Guam
        Pacific/Pago_Pago: AS, American Samoa
        Pacific/Saipan: MP, Northern Mariana Islands
        """
    ),
    "CA": _zones(
        """
        America/St_Johns: NL, Newfoundland and Labrador, Newfoundland
        America/Halifax: NS, Nova Scotia, PE, Prince Edward Island
        America/Moncton: NB, New Brunswick
        America/Toronto: ON, Ontario, QC, Quebec
        America/Iqaluit: NU, Nunavut
        America/Winnipeg: MB, Manitoba
        America/Regina: SK, Saskatchewan
        America/Edmonton: AB, Alberta, NT, Northwest Territories
        America/Vancouver: BC, British Columbia
        America/Whitehorse: YT, Yukon
        """
    ),
    "AU": _zones(
        """
        Australia/Sydney: NSW, New South Wales, ACT, Australian Capital Territory
        Australia/Melbourne: VIC, Victoria
        Australia/Brisbane: QLD, Queensland
        Australia/Adelaide: SA, South Australia
        Australia/Darwin: NT, Northern Territory
        Australia/Perth: WA, Western Australia
        Australia/Hobart: TAS, Tasmania
        """
    ),
    "BR": _zones(
        """
        America/Noronha: FN, Fernando de Noronha
        America/Fortaleza: CE, Ceara, MA, Maranhao, PB, Paraiba, PI, Piaui, RN, Rio Grande do Norte
        America/Recife: PE, Pernambuco
        America/Maceio: AL, Alagoas, SE, Sergipe
        America/Bahia: BA, Bahia
        America/Belem: PA, Para, AP, Amapa
        America/Araguaina: TO, Tocantins
        America/Campo_Grande: MS, Mato Grosso do Sul
        America/Cuiaba: MT, Mato Grosso
        America/Porto_Velho: RO, Rondonia
        America/Boa_Vista: RR, Roraima
        America/Manaus: AM, Amazonas
        America/Rio_Branco: AC, Acre
        """
    ),
    "MX": _zones(
        """
        America/Tijuana: BC, BCN, Baja California
        America/Mazatlan: BCS, Baja California Sur, SIN, Sinaloa, NAY, Nayarit
        America/Hermosillo: SON, Sonora
        America/Chihuahua: CHIH, CHH, Chihuahua
        America/Monterrey: COAH, COA, Coahuila, NL, NLE, Nuevo Leon, TAMPS, TAM, Tamaulipas, DGO, DUR, Durango
        America/Merida: YUC, Yucatan, CAMP, CAM, Campeche
        America/Cancun: Q ROO, QROO, ROO, QR, Quintana Roo
        """
    ),
    "RU": _zones(
        """
        Europe/Kaliningrad: KGD, Kaliningrad
        Europe/Samara: SAM, Samara, UD, Udmurtia
        Europe/Ulyanovsk: ULY, Ulyanovsk
        Europe/Astrakhan: AST, Astrakhan
        Europe/Saratov: SAR, Saratov
        Asia/Yekaterinburg: SVE, Sverdlovsk, CHE, Chelyabinsk, BA, Bashkortostan, KGN, Kurgan, ORE, Orenburg,
          PER, Perm, TYU, Tyumen, KHM, Khanty-Mansi, YAN, Yamalo-Nenets
        Asia/Omsk: OMS, Omsk
        Asia/Novosibirsk: NVS, Novosibirsk
        Asia/Barnaul: ALT, Altai Krai, AL, Altai Republic
        Asia/Tomsk: TOM, Tomsk
        Asia/Novokuznetsk: KEM, Kemerovo
        Asia/Krasnoyarsk: KYA, Krasnoyarsk, TY, Tuva, KK, Khakassia
        Asia/Irkutsk: IRK, Irkutsk, BU, Buryatia
        Asia/Chita: ZAB, Zabaykalsky
        Asia/Yakutsk: SA, Sakha, AMU, Amur
        Asia/Vladivostok: PRI, Primorsky, KHA, Khabarovsk, YEV, Jewish Autonomous Oblast
        Asia/Sakhalin: SAK, Sakhalin
        Asia/Magadan: MAG, Magadan
        Asia/Kamchatka: KAM, Kamchatka
        Asia/Anadyr: CHU, Chukotka
        """
    ),
    "ID": _zones(
        """
        Asia/Pontianak: KB, Kalimantan Barat, West Kalimantan, KT, Kalimantan Tengah, Central Kalimantan
        Asia/Makassar: BA, Bali, NB, Nusa Tenggara Barat, West Nusa Tenggara, NT, Nusa Tenggara Timur,
          East Nusa Tenggara, KS, Kalimantan Selatan, South Kalimantan, KI, Kalimantan Timur, East Kalimantan,
          KU, Kalimantan Utara, North Kalimantan, SA, Sulawesi Utara, North Sulawesi, ST, Sulawesi Tengah,
          Central Sulawesi, SN, Sulawesi Selatan, South Sulawesi, SG, Sulawesi Tenggara, Southeast Sulawesi,
          SR, Sulawesi Barat, West Sulawesi, GO, Gorontalo
        Asia/Jayapura: MA, Maluku, MU, Maluku Utara, North Maluku, PA, Papua, PB, Papua Barat, West Papua,
          PE, Papua Pegunungan, PS, Papua Selatan, PT, Papua Tengah, PD, Papua Barat Daya
        """
    ),
    "ES": _zones(
        """
        Atlantic/Canary: GC, Las Palmas, TF, Santa Cruz de Tenerife, CN, Canarias, Canary Islands
        Africa/Ceuta: CE, Ceuta, ML, Melilla
        """
    ),
    "PT": _zones(
        """
        Atlantic/Azores: 20, Acores, Azores
        Atlantic/Madeira: 30, Madeira
        """
    ),
    "EC": _zones("Pacific/Galapagos: W, Galapagos"),
    "CL": _zones("America/Punta_Arenas: MA, Magallanes"),
    "NZ": _zones("Pacific/Chatham: CIT, Chatham Islands"),
}


@dataclass(frozen=True)
class CustomerZone:
    """The zone a customer's messages are timed in, and why that one."""

    name: str
    source: ZoneSource
    country: str | None  # ISO 3166-1 alpha-2 of the address used; None for the shop's fallback
    reason: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.name)


@cache
def country_zones() -> dict[str, tuple[str, ...]]:
    """Country code -> its zones, in zone.tab's order, from the installed `tzdata` package."""
    text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="ascii")
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        code, _coords, zone, *_ = line.split("\t")
        table.setdefault(code, []).append(zone)
    return {code: tuple(zones) for code, zones in table.items()}


def _loads(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _strip_prefix(code: str, country: str) -> str:
    """'US-OR' and 'OR' name the same state; 'PT-20' and '20' the same region."""
    return code[len(country) + 1 :] if code.upper().startswith(f"{country}-") else code


def zone_for_address(address: Mapping[str, Any] | None) -> tuple[str | None, str | None, str]:
    """(zone, country, how) for one Shopify address; zone None when it cannot tell (how says why)."""
    if not address:
        return None, None, "no address"
    if not isinstance(address, Mapping):
        return None, None, "the address is not an object"
    raw = _text(address.get("country_code"))
    if raw is None:
        return None, None, "the address names no country code"
    country = raw.upper()
    if len(country) != 2 or not country.isascii() or not country.isalpha():
        return None, None, f"country code {raw[:16]!r} is malformed"
    if country in COUNTRY_ALIASES:
        return COUNTRY_ALIASES[country], country, country
    zones = country_zones().get(country)
    if not zones:
        return None, None, f"country code {country!r} is unknown"
    if len(zones) == 1:
        return zones[0], country, country
    subdivisions = SUBDIVISION_ZONES.get(country, {})
    code = _text(address.get("province_code"))
    name = _text(address.get("province"))
    for key, label in ((code and _strip_prefix(code, country), code), (name, name)):
        if key and _fold(key) in subdivisions:
            return subdivisions[_fold(key)], country, f"{country}/{label}"
    main = MAIN_ZONES.get(country, zones[0])
    if not subdivisions:
        return main, country, country  # its other zones are islands and exclaves: the main one
    named = code or name
    if named is not None:
        return main, country, f"{country} (state {named[:40]!r} not known: the country's main zone)"
    return main, country, f"{country} (no state given: the country's main zone)"


def customer_zone(
    shipping_address: Mapping[str, Any] | None,
    billing_address: Mapping[str, Any] | None,
    shop_zone: str,
) -> CustomerZone:
    """The customer's zone: from the shipping address, else billing, else the shop's.

    An address whose country is missing, malformed or unknown is passed over with its reason, and
    the reasons are kept, so "shop's zone" always says why.
    """
    passed_over: list[str] = []
    for source, address in (("shipping", shipping_address), ("billing", billing_address)):
        zone, country, how = zone_for_address(address)
        if zone is not None and _loads(zone):
            reason = f"{source} address: {how}"
            if passed_over:
                reason = f"{'; '.join(passed_over)}; {reason}"
            return CustomerZone(name=zone, source=source, country=country, reason=reason)  # type: ignore[arg-type]
        if zone is not None:
            how = f"zone {zone} is not in this system's time zone database"
        passed_over.append(f"{source}: {how}")
    return CustomerZone(
        name=shop_zone,
        source="shop",
        country=None,
        reason=f"{'; '.join(passed_over)}: the shop's time zone",
    )


def address_country(
    shipping_address: Mapping[str, Any] | None, billing_address: Mapping[str, Any] | None
) -> str | None:
    """The customer's country for consent rules: shipping, else billing; None if neither names one."""
    for address in (shipping_address, billing_address):
        _zone, country, _how = zone_for_address(address)
        if country is not None:
            return country
    return None
