"""gateway.geo and gateway.countries: GeoIP lookups against real MaxMind DB files
(built by tests.geoip_fixture, and MaxMind's own test files in ../shared/geoip),
and the CloudFront / Cloudflare edge headers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.countries import CONTINENT_CENTROIDS, CONTINENTS, COUNTRIES
from gateway.errors import ConfigError
from gateway.geo import GeoIPLocator, Location, location_from_headers, location_from_record
from tests.geoip_fixture import (
    CITY_ONLY_COUNTRY_IP,
    CITY_REGISTERED_ONLY_IP,
    FIXTURE_NETWORKS,
    FIXTURE_PLACES,
    build_city_db,
    build_country_db,
)

SHARED_GEOIP = Path(__file__).resolve().parents[2] / "shared" / "geoip"

BOTH = frozenset({"cloudfront", "cloudflare"})


def shared_file(name: str) -> Path:
    path = SHARED_GEOIP / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("geoip") / "city.mmdb"
    build_city_db(path)
    return path


@pytest.fixture(scope="module")
def country_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("geoip") / "country.mmdb"
    build_country_db(path)
    return path


@pytest.fixture
def city(city_db: Path) -> Iterator[GeoIPLocator]:
    with GeoIPLocator(city_db) as locator:
        yield locator


@pytest.fixture
def country(country_db: Path) -> Iterator[GeoIPLocator]:
    with GeoIPLocator(country_db) as locator:
        yield locator


# --------------------------------------------------------------------------- countries


def test_countries_cover_iso_3166_and_only_real_continents() -> None:
    assert len(COUNTRIES) == 250  # the 249 ISO 3166-1 codes + XK (Kosovo)
    assert {"AF", "AN", "AS", "EU", "NA", "OC", "SA"} == CONTINENTS
    assert set(CONTINENT_CENTROIDS) == CONTINENTS
    for code, (lat, lon, continent) in COUNTRIES.items():
        assert len(code) == 2 and code.isupper() and code.isalpha(), code
        assert -90 <= lat <= 90 and -180 <= lon <= 180, code
        assert continent in CONTINENTS, code
    for territory in ("HK", "TW", "PR", "GI", "XK", "AX", "CW", "SS"):
        assert territory in COUNTRIES
    for not_a_country in ("EU", "AP", "XX", "T1", "UK", "AN", "CS"):
        assert not_a_country not in COUNTRIES


@pytest.mark.parametrize(
    ("code", "continent"),
    [
        ("RU", "EU"), ("UA", "EU"), ("CY", "EU"), ("GB", "EU"), ("TR", "AS"), ("GE", "AS"),
        ("KZ", "AS"), ("IL", "AS"), ("EG", "AF"), ("MX", "NA"), ("PA", "NA"), ("PR", "NA"),
        ("GL", "NA"), ("AU", "OC"), ("TL", "OC"), ("BR", "SA"), ("AQ", "AN"), ("JP", "AS"),
    ],
)  # fmt: skip
def test_continents_are_maxminds(code: str, continent: str) -> None:
    assert COUNTRIES[code][2] == continent


def test_centroids_are_roughly_right() -> None:
    # Spot checks against well-known centres (within a couple of degrees).
    expected = {"DE": (51.2, 10.5), "US": (37.1, -95.7), "AU": (-25.3, 133.8), "JP": (36.2, 138.3)}
    for code, (lat, lon) in expected.items():
        assert COUNTRIES[code][0] == pytest.approx(lat, abs=2)
        assert COUNTRIES[code][1] == pytest.approx(lon, abs=2)


def test_location_from_country_and_continent() -> None:
    de = Location.from_country("de")
    assert de == Location(COUNTRIES["DE"][0], COUNTRIES["DE"][1], "DE", "EU")
    assert Location.from_country("XX") is None
    assert Location.from_country("EU") is None
    assert Location.from_country("") is None
    eu = Location.from_continent("EU")
    assert eu is not None and eu.country is None and eu.continent == "EU"
    assert Location.from_continent("ZZ") is None


# --------------------------------------------------------------------------- fixture City DB


@pytest.mark.parametrize("name", sorted(FIXTURE_NETWORKS))
def test_city_db_gives_coordinates_country_and_continent(city: GeoIPLocator, name: str) -> None:
    place = FIXTURE_NETWORKS[name]
    assert city.lookup(place.ip) == Location(
        place.latitude, place.longitude, place.country, place.continent
    )


def test_fixture_places_match_networks() -> None:
    assert FIXTURE_PLACES["london"] == ("81.2.69.142", "GB")
    assert FIXTURE_PLACES["japan"] == ("2001:218::1", "JP")
    assert {country for _, country in FIXTURE_PLACES.values()} >= {"US", "AU", "DE", "SE", "CN"}


def test_city_db_metadata(city: GeoIPLocator) -> None:
    assert city.database_type == "GeoLite2-City"


def test_city_record_without_location_uses_country_centroid(city: GeoIPLocator) -> None:
    lat, lon, _ = COUNTRIES["BR"]
    assert city.lookup(CITY_ONLY_COUNTRY_IP) == Location(lat, lon, "BR", "SA")


def test_city_record_with_only_registered_country_uses_it(city: GeoIPLocator) -> None:
    lat, lon, continent = COUNTRIES["CA"]
    assert city.lookup(CITY_REGISTERED_ONLY_IP) == Location(lat, lon, "CA", continent)


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(city: GeoIPLocator) -> None:
    mapped = city.lookup("::ffff:81.2.69.142")
    assert mapped is not None and mapped.country == "GB"
    assert mapped.latitude == pytest.approx(51.5142)


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1", "192.168.1.1", "127.0.0.1", "::1", "fe80::1", "8.8.8.8", "2001:db8::1",
        "not-an-ip", "", "81.2.69.142:80", "[2001:218::1]", "999.1.1.1", "81.2.69",
    ],
)  # fmt: skip
def test_private_unknown_and_invalid_addresses_give_none(city: GeoIPLocator, ip: str) -> None:
    assert city.lookup(ip) is None


# --------------------------------------------------------------------------- fixture Country DB


@pytest.mark.parametrize("name", sorted(FIXTURE_NETWORKS))
def test_country_db_places_device_at_country_centroid(country: GeoIPLocator, name: str) -> None:
    place = FIXTURE_NETWORKS[name]
    lat, lon, _ = COUNTRIES[place.country]
    assert country.lookup(place.ip) == Location(lat, lon, place.country, place.continent)


def test_country_db_metadata_and_misses(country: GeoIPLocator) -> None:
    assert country.database_type == "GeoLite2-Country"
    assert country.lookup("10.1.2.3") is None
    assert country.lookup(CITY_ONLY_COUNTRY_IP) is None  # that network is only in the City DB


# --------------------------------------------------------------------------- cache


def test_results_are_cached_per_address(city_db: Path) -> None:
    with GeoIPLocator(city_db) as locator:
        first = locator.lookup("81.2.69.142")
        second = locator.lookup("81.2.69.142")
        assert first is not None and second is first
        assert (locator.cache_misses, locator.cache_hits) == (1, 1)
        # None is cached too: a private address costs one tree walk, not one per request.
        assert locator.lookup("10.0.0.1") is None
        assert locator.lookup("10.0.0.1") is None
        assert (locator.cache_misses, locator.cache_hits) == (2, 2)


def test_cache_is_bounded(city_db: Path) -> None:
    with GeoIPLocator(city_db, cache_size=2) as locator:
        for ip in ("81.2.69.142", "89.160.20.112", "216.160.83.56"):
            locator.lookup(ip)
        assert locator.cache_misses == 3
        locator.lookup("81.2.69.142")  # evicted as least recently used
        assert (locator.cache_misses, locator.cache_hits) == (4, 0)
        locator.lookup("216.160.83.56")
        assert locator.cache_hits == 1


def test_cached_answer_survives_close_and_uncached_lookups_give_none(city_db: Path) -> None:
    locator = GeoIPLocator(city_db)
    london = locator.lookup("81.2.69.142")
    locator.close()
    assert locator.lookup("81.2.69.142") == london
    assert locator.lookup("89.160.20.112") is None


# --------------------------------------------------------------------------- unusable files


def test_missing_file_is_one_config_error_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.mmdb"
    with pytest.raises(ConfigError) as info:
        GeoIPLocator(path)
    assert info.value.problems == [f"geo.database: cannot open {path}: No such file or directory"]


def test_directory_and_garbage_files_are_config_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"this is not a MaxMind DB\n" * 100)
    empty = tmp_path / "empty.mmdb"
    empty.write_bytes(b"")
    for path in (tmp_path, garbage, empty):
        with pytest.raises(ConfigError) as info:
            GeoIPLocator(path)
        (line,) = info.value.problems
        assert line.startswith(f"geo.database: cannot open {path}: ")
        assert "\n" not in line


def test_truncated_database_is_a_config_error(city_db: Path, tmp_path: Path) -> None:
    data = city_db.read_bytes()
    truncated = tmp_path / "truncated.mmdb"
    truncated.write_bytes(data[: len(data) // 2])  # the metadata lives at the end
    with pytest.raises(ConfigError):
        GeoIPLocator(truncated)


def test_database_damaged_in_the_middle_never_raises_on_lookup(
    city_db: Path, tmp_path: Path
) -> None:
    data = bytearray(city_db.read_bytes())
    damaged = tmp_path / "damaged.mmdb"
    marker = data.rfind(b"\xab\xcd\xefMaxMind.com")
    # Overwrite the search tree and data section, keep the metadata readable.
    for i in range(0, marker, 7):
        data[i] = 0xFF
    damaged.write_bytes(bytes(data))
    with GeoIPLocator(damaged) as locator:
        for ip, _ in FIXTURE_PLACES.values():
            result = locator.lookup(ip)
            assert result is None or isinstance(result, Location)


@pytest.mark.shared
def test_maxmind_invalid_node_count_file_is_a_config_error() -> None:
    path = shared_file("GeoIP2-City-Test-Invalid-Node-Count.mmdb")
    with pytest.raises(ConfigError) as info:
        GeoIPLocator(path)
    (line,) = info.value.problems
    assert line.startswith(f"geo.database: cannot open {path}: ")


@pytest.mark.shared
def test_maxmind_broken_double_format_file_fails_lookups_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = shared_file("GeoIP2-City-Test-Broken-Double-Format.mmdb")
    try:
        locator = GeoIPLocator(path)
    except ConfigError:
        return  # refusing the file is a clean failure too
    with locator, caplog.at_level("WARNING", logger="gateway.geo"):
        # These records are damaged: the reader raises, the locator must not.
        for ip in ("81.2.69.142", "2001:218::1", "216.160.83.56", "202.196.224.1"):
            assert locator.lookup(ip) is None
        assert locator.lookup("10.0.0.1") is None
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # logged once, not once per request
    assert "InvalidDatabaseError" in warnings[0].getMessage()


# --------------------------------------------------------------------------- MaxMind's own test DBs


@pytest.mark.shared
@pytest.mark.parametrize("name", ["GeoLite2-City-Test.mmdb", "GeoIP2-City-Test.mmdb"])
def test_maxmind_city_databases(name: str) -> None:
    with GeoIPLocator(shared_file(name)) as locator:
        assert locator.database_type in {"GeoLite2-City", "GeoIP2-City"}
        for place_name in ("london", "sweden", "us_west", "japan", "china", "germany"):
            place = FIXTURE_NETWORKS[place_name]
            location = locator.lookup(place.ip)
            assert location is not None, place_name
            assert (location.country, location.continent) == (place.country, place.continent)
            assert location.latitude == pytest.approx(place.latitude)
            assert location.longitude == pytest.approx(place.longitude)
        assert locator.lookup("202.196.224.1") == Location(13.0, 122.0, "PH", "AS")
        # A record with a location and continent but no country keeps what it has.
        assert locator.lookup("2a02:d500::1") == Location(48.69096, 9.14062, None, "EU")
        # MaxMind's files alias ::ffff:0:0/96 themselves; the answer is the same.
        assert locator.lookup("::ffff:81.2.69.142") == locator.lookup("81.2.69.142")
        for ip in ("10.0.0.1", "127.0.0.1", "::1", "not-an-ip"):
            assert locator.lookup(ip) is None


@pytest.mark.shared
def test_maxmind_country_database_uses_centroids() -> None:
    with GeoIPLocator(shared_file("GeoLite2-Country-Test.mmdb")) as locator:
        assert locator.database_type == "GeoLite2-Country"
        # (MaxMind's Country test file has no record for the "china" network.)
        for place_name in ("london", "sweden", "us_west", "japan", "germany"):
            place = FIXTURE_NETWORKS[place_name]
            assert locator.lookup(place.ip) == Location.from_country(place.country)
        # A continent-only record: placed at Europe's centroid so EU residency applies.
        assert locator.lookup("2a02:d500::1") == Location.from_continent("EU")
        assert locator.lookup("10.0.0.1") is None


@pytest.mark.shared
def test_a_copy_of_a_maxmind_file_opens_from_any_path(tmp_path: Path) -> None:
    copy = tmp_path / "GeoLite2-City.mmdb"
    shutil.copy(shared_file("GeoLite2-City-Test.mmdb"), copy)
    with GeoIPLocator(str(copy)) as locator:
        location = locator.lookup("81.2.69.142")
        assert location is not None and location.country == "GB"


# --------------------------------------------------------------------------- records


def test_location_from_record_tolerates_odd_shapes() -> None:
    assert location_from_record(None) is None
    assert location_from_record([1, 2]) is None
    assert location_from_record({}) is None
    assert location_from_record({"country": "GB"}) is None
    assert location_from_record({"continent": {"code": ["EU"]}}) is None
    assert location_from_record({"continent": {"code": "EU"}}) == Location.from_continent("EU")
    # Out-of-range or non-numeric coordinates fall back to the country.
    for latitude, longitude in ((91.0, 0.0), (0.0, 181.0), ("1", "2"), (True, 1.0)):
        record = {"country": {"iso_code": "SE"}, "location": {"latitude": latitude,
                                                              "longitude": longitude}}  # fmt: skip
        assert location_from_record(record) == Location.from_country("SE")
    # A legacy pseudo-country is not a country; the coordinates still count.
    record = {"country": {"iso_code": "EU"}, "continent": {"code": "EU"},
              "location": {"latitude": 47.0, "longitude": 8.0}}  # fmt: skip
    assert location_from_record(record) == Location(47.0, 8.0, None, "EU")
    # The record's continent wins over the table's.
    record = {"country": {"iso_code": "CY"}, "continent": {"code": "AS"}}
    assert location_from_record(record) == Location(
        COUNTRIES["CY"][0], COUNTRIES["CY"][1], "CY", "AS"
    )


# --------------------------------------------------------------------------- edge headers


def test_cloudfront_coordinates_and_country() -> None:
    headers = {
        "cloudfront-viewer-latitude": "47.60620",
        "cloudfront-viewer-longitude": "-122.33210",
        "cloudfront-viewer-country": "US",
    }
    assert location_from_headers(headers, frozenset({"cloudfront"})) == Location(
        47.6062, -122.3321, "US", "NA"
    )


def test_cloudfront_coordinates_without_country() -> None:
    headers = {"cloudfront-viewer-latitude": "-33.8688", "cloudfront-viewer-longitude": "151.2"}
    assert location_from_headers(headers, frozenset({"cloudfront"})) == Location(
        -33.8688, 151.2, None, None
    )


def test_cloudfront_country_only_is_its_centroid() -> None:
    headers = {"cloudfront-viewer-country": "de"}
    assert location_from_headers(headers, frozenset({"cloudfront"})) == Location.from_country("DE")


@pytest.mark.parametrize(
    ("latitude", "longitude"),
    [
        ("91.0", "10.0"), ("-90.5", "10.0"), ("45.0", "180.5"), ("45.0", "-181"),
        ("nan", "1.0"), ("inf", "1.0"), ("1e1", "2"), ("forty", "2"), ("", "2"),
        ("45.0", None), (None, "10.0"), ("1_0", "2"), ("45.0.1", "2"),
    ],
)  # fmt: skip
def test_cloudfront_bad_coordinates_fall_back_to_country(
    latitude: str | None, longitude: str | None
) -> None:
    headers = {"cloudfront-viewer-country": "FR"}
    if latitude is not None:
        headers["cloudfront-viewer-latitude"] = latitude
    if longitude is not None:
        headers["cloudfront-viewer-longitude"] = longitude
    assert location_from_headers(headers, frozenset({"cloudfront"})) == Location.from_country("FR")
    del headers["cloudfront-viewer-country"]
    assert location_from_headers(headers, frozenset({"cloudfront"})) is None


def test_cloudfront_boundary_coordinates_are_valid() -> None:
    headers = {"cloudfront-viewer-latitude": "-90", "cloudfront-viewer-longitude": "180.0"}
    assert location_from_headers(headers, frozenset({"cloudfront"})) == Location(
        -90.0, 180.0, None, None
    )


@pytest.mark.parametrize("value", ["XX", "T1", "t1", "ZZ", "EU", "", "GBR", "1"])
def test_cloudflare_non_countries_are_ignored(value: str) -> None:
    assert location_from_headers({"cf-ipcountry": value}, frozenset({"cloudflare"})) is None


def test_cloudflare_country() -> None:
    location = location_from_headers({"cf-ipcountry": "JP"}, frozenset({"cloudflare"}))
    assert location == Location.from_country("JP")
    assert location is not None and location.continent == "AS"


def test_cloudfront_wins_over_cloudflare() -> None:
    headers = {"cloudfront-viewer-country": "SE", "cf-ipcountry": "US"}
    assert location_from_headers(headers, BOTH) == Location.from_country("SE")


def test_cloudflare_used_when_cloudfront_headers_are_unusable() -> None:
    headers = {"cloudfront-viewer-country": "XX", "cloudfront-viewer-latitude": "junk",
               "cf-ipcountry": "BR"}  # fmt: skip
    assert location_from_headers(headers, BOTH) == Location.from_country("BR")


def test_disabled_providers_are_ignored() -> None:
    headers = {
        "cloudfront-viewer-latitude": "47.6",
        "cloudfront-viewer-longitude": "-122.3",
        "cloudfront-viewer-country": "US",
        "cf-ipcountry": "DE",
    }
    assert location_from_headers(headers, frozenset()) is None
    assert location_from_headers(headers, frozenset({"cloudflare"})) == Location.from_country("DE")
    assert location_from_headers(headers, frozenset({"akamai"})) is None
    assert location_from_headers({}, BOTH) is None


def test_repr_names_file_and_type(city: GeoIPLocator, city_db: Path) -> None:
    assert repr(city) == f"GeoIPLocator({str(city_db)!r}, database_type='GeoLite2-City')"
