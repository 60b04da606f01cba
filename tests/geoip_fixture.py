"""Small, real MaxMind DB files for tests, written with ``mmdb-writer``.

The gateway reads production GeoLite2/GeoIP2 files; these are the same format,
built on the fly so tests control exactly which address is where::

    from tests.geoip_fixture import FIXTURE_PLACES, build_city_db

    def test_something(tmp_path):
        db = tmp_path / "city.mmdb"
        build_city_db(db)                       # then geo.database: <db> in a config
        ip, country = FIXTURE_PLACES["london"]  # "81.2.69.142", "GB"

``build_city_db`` writes a ``GeoLite2-City`` database (country, continent and
``location`` with latitude/longitude); ``build_country_db`` writes a
``GeoLite2-Country`` database with the same networks but no ``location``, so a
gateway using it places devices at their country's centroid.

The first six networks are the ones MaxMind's own test databases use
(``../shared/geoip/GeoLite2-City-Test.json``), so a test passes against
either. ``us_east`` and ``australia`` are ours. Exact coordinates for
assertions are in :data:`FIXTURE_NETWORKS`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from mmdb_writer import MmdbF64, MmdbU16, MmdbU32, MMDBWriter
from netaddr import IPSet

__all__ = [
    "CITY_ONLY_COUNTRY_IP",
    "CITY_REGISTERED_ONLY_IP",
    "FIXTURE_NETWORKS",
    "FIXTURE_PLACES",
    "FixtureNetwork",
    "build_city_db",
    "build_country_db",
]


class FixtureNetwork(NamedTuple):
    """One network of the fixture databases and what the City database says about it."""

    network: str
    ip: str  # an address inside ``network``, for requests
    country: str
    continent: str
    latitude: float
    longitude: float


#: name -> the fixture network; the City database returns exactly these values.
FIXTURE_NETWORKS: dict[str, FixtureNetwork] = {
    "london": FixtureNetwork("81.2.69.142/31", "81.2.69.142", "GB", "EU", 51.5142, -0.0931),
    "sweden": FixtureNetwork("89.160.20.112/28", "89.160.20.112", "SE", "EU", 58.4167, 15.6167),
    # Milton, Washington: the west coast of the US.
    "us_west": FixtureNetwork("216.160.83.56/29", "216.160.83.56", "US", "NA", 47.2513, -122.3149),
    "japan": FixtureNetwork("2001:218::/32", "2001:218::1", "JP", "AS", 35.68536, 139.75309),
    "china": FixtureNetwork("175.16.199.0/24", "175.16.199.1", "CN", "AS", 43.88, 125.3228),
    "germany": FixtureNetwork("2a02:d180::/29", "2a02:d180::1", "DE", "EU", 51.5, 10.5),
    # Ashburn, Virginia (AWS us-east-1's neighbourhood); a real AWS range, but
    # only this fixture says where it is.
    "us_east": FixtureNetwork("3.208.0.0/16", "3.208.0.10", "US", "NA", 39.0438, -77.4874),
    # Sydney; a real Telstra range.
    "australia": FixtureNetwork("1.128.0.0/16", "1.128.0.10", "AU", "OC", -33.8688, 151.2093),
}

#: name -> (an IP address inside the network, its ISO country code).
FIXTURE_PLACES: dict[str, tuple[str, str]] = {
    name: (place.ip, place.country) for name, place in FIXTURE_NETWORKS.items()
}

#: In the City database only: a record with a country (Brazil) but no
#: ``location``, as MaxMind publishes for some networks.
CITY_ONLY_COUNTRY_IP = "200.160.0.10"
_ONLY_COUNTRY_NETWORK = "200.160.0.0/20"

#: In the City database only: a record with only ``registered_country`` (Canada).
CITY_REGISTERED_ONLY_IP = "192.206.151.10"
_REGISTERED_ONLY_NETWORK = "192.206.151.0/24"

_GEONAME_IDS = {"GB": 2635167, "SE": 2661886, "US": 6252001, "JP": 1861060, "CN": 1814991,
                "DE": 2921044, "AU": 2077456, "BR": 3469034, "CA": 6251999}  # fmt: skip
_CONTINENT_IDS = {"AF": 6255146, "AS": 6255147, "EU": 6255148, "NA": 6255149,
                  "OC": 6255151, "SA": 6255150, "AN": 6255152}  # fmt: skip


def _country(code: str) -> dict[str, Any]:
    return {"geoname_id": MmdbU32(_GEONAME_IDS[code]), "iso_code": code}


def _continent(code: str) -> dict[str, Any]:
    return {"code": code, "geoname_id": MmdbU32(_CONTINENT_IDS[code])}


def _record(place: FixtureNetwork, *, with_location: bool) -> dict[str, Any]:
    # The MaxMind GeoIP2 layout (dev.maxmind.com, "GeoIP2 and GeoLite2 database
    # record structure"): doubles for coordinates (MmdbF64, type 3 in the MaxMind
    # DB spec), uint16 for accuracy_radius, uint32 for geoname ids.
    record: dict[str, Any] = {
        "continent": _continent(place.continent),
        "country": _country(place.country),
        "registered_country": _country(place.country),
    }
    if with_location:
        record["location"] = {
            "accuracy_radius": MmdbU16(20),
            "latitude": MmdbF64(place.latitude),
            "longitude": MmdbF64(place.longitude),
        }
    return record


def _writer(database_type: str) -> MMDBWriter:
    # IPv6 tree with IPv4 under ::/96 (ipv4_compatible), like MaxMind's files.
    return MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": f"gateway test fixture ({database_type})"},
    )


def build_city_db(path: str | os.PathLike[str]) -> None:
    """Write a ``GeoLite2-City`` database to ``path`` (overwriting it) holding
    every :data:`FIXTURE_NETWORKS` entry with its coordinates, plus the two
    partial records :data:`CITY_ONLY_COUNTRY_IP` and :data:`CITY_REGISTERED_ONLY_IP`."""
    writer = _writer("GeoLite2-City")
    for place in FIXTURE_NETWORKS.values():
        writer.insert_network(IPSet([place.network]), _record(place, with_location=True))
    writer.insert_network(
        IPSet([_ONLY_COUNTRY_NETWORK]),
        {"continent": _continent("SA"), "country": _country("BR")},
    )
    writer.insert_network(IPSet([_REGISTERED_ONLY_NETWORK]), {"registered_country": _country("CA")})
    writer.to_db_file(os.fspath(path))


def build_country_db(path: str | os.PathLike[str]) -> None:
    """Write a ``GeoLite2-Country`` database to ``path`` (overwriting it): the
    :data:`FIXTURE_NETWORKS` with country and continent only, no coordinates."""
    writer = _writer("GeoLite2-Country")
    for place in FIXTURE_NETWORKS.values():
        writer.insert_network(IPSet([place.network]), _record(place, with_location=False))
    writer.to_db_file(os.fspath(path))
