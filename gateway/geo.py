"""Where a device is: GeoIP lookups and trusted edge geo headers.

Two sources, in the order the request pipeline asks them (SPEC section 4,
"Locating a device"):

1. Edge headers, only from a trusted peer and only for enabled providers::

       location = location_from_headers(lower_case_headers, frozenset({"cloudfront"}))

2. GeoIP of the client address (see ``gateway.proxy_headers.client_address``)::

       locator = GeoIPLocator("/var/lib/GeoIP/GeoLite2-City.mmdb")   # ConfigError if unusable
       location = locator.lookup("81.2.69.142")                     # Location or None
       locator.close()

Both return a :class:`Location` or ``None``; ``None`` means "nothing at all is
known" and the policy falls back to ``default_region``. A location known only
by its country sits at that country's centroid and in its continent, one known
only by its continent at the continent's centroid (``gateway.countries``), so a
``Location`` always has coordinates.

Nothing here raises on bad input from the network: an invalid address, a
private address, a corrupt database record or a garbage header value all give
``None``. Only opening the database can fail, with ``ConfigError``, because
that happens while a configuration is loaded and must refuse it.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, cast

import maxminddb
from cachetools import LRUCache

from gateway.countries import CONTINENT_CENTROIDS, COUNTRIES
from gateway.errors import ConfigError

__all__ = ["GEO_HEADER_PROVIDERS", "GeoIPLocator", "Location", "location_from_headers"]

logger = logging.getLogger(__name__)

#: The edge providers whose geo headers ``location_from_headers`` understands
#: (config: ``server.geo_headers``).
GEO_HEADER_PROVIDERS: Final[frozenset[str]] = frozenset({"cloudfront", "cloudflare"})


@dataclass(frozen=True, slots=True)
class Location:
    """A device's position, as precise as the source allows.

    ``latitude``/``longitude`` are degrees (WGS 84), always present: when only a
    country is known they are its centroid. ``country`` is an upper-case ISO
    3166-1 alpha-2 code and ``continent`` a MaxMind continent code (``EU``,
    ``NA``, ...); either may be ``None`` when the source did not say (a City
    record with coordinates but no country, for example). Residency rules
    match on ``country``/``continent``; the nearest-region choice uses the
    coordinates.
    """

    latitude: float
    longitude: float
    country: str | None
    continent: str | None

    @classmethod
    def from_continent(cls, code: str) -> Location | None:
        """The centroid of continent ``code`` (``EU``, ``NA``, ...; any case), with no
        country; ``None`` for an unknown code."""
        code = code.strip().upper()
        centroid = CONTINENT_CENTROIDS.get(code)
        if centroid is None:
            return None
        return cls(centroid[0], centroid[1], None, code)

    @classmethod
    def from_country(cls, code: str) -> Location | None:
        """The centroid of country ``code`` (any case) in its continent;
        ``None`` for a code that is not a country (``XX``, ``EU``, ``T1``, ...)."""
        code = code.strip().upper()
        known = COUNTRIES.get(code)
        if known is None:
            return None
        latitude, longitude, continent = known
        return cls(latitude, longitude, code, continent)


def _valid_coordinates(latitude: object, longitude: object) -> tuple[float, float] | None:
    """``(lat, lon)`` as floats when both are real numbers inside the globe, else None."""
    # bool is an int subclass; a database or header that says True is not a latitude.
    if isinstance(latitude, bool) or isinstance(longitude, bool):
        return None
    if not isinstance(latitude, int | float) or not isinstance(longitude, int | float):
        return None
    lat, lon = float(latitude), float(longitude)
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return lat, lon


def _known_country(code: object) -> str | None:
    """An upper-case country code present in ``COUNTRIES``, else None."""
    if not isinstance(code, str):
        return None
    code = code.strip().upper()
    return code if code in COUNTRIES else None


# --------------------------------------------------------------------------- GeoIP


def _sub(record: Mapping[str, Any], name: str, key: str) -> object:
    """``record[name][key]`` or None, tolerating any shape (the file is untrusted input)."""
    section = record.get(name)
    if isinstance(section, Mapping):
        return section.get(key)
    return None


def location_from_record(record: object) -> Location | None:
    """Turn one MaxMind City or Country record into a ``Location``.

    The layout is MaxMind's GeoIP2/GeoLite2 one (``country.iso_code``,
    ``continent.code``, ``location.latitude``/``longitude``,
    ``registered_country.iso_code``). Rules:

    * coordinates from ``location`` when present and valid, else the country's
      centroid (a Country database has no ``location``);
    * the country is ``country``; only when a record has none (some networks
      are known only by who registered them) ``registered_country`` stands in;
    * the continent is the record's own ``continent.code``, else the country's;
    * a record with a continent but neither coordinates nor country (MaxMind
      has such records for networks used across Europe) sits at the
      continent's centroid, so that ``continents:`` residency rules still apply;
    * nothing usable -> ``None``.

    Public so that other sources of MaxMind-shaped records (tests, tools) can
    share the rules.
    """
    if not isinstance(record, Mapping):
        return None
    country = _known_country(_sub(record, "country", "iso_code"))
    if country is None:
        country = _known_country(_sub(record, "registered_country", "iso_code"))
    continent_code = _sub(record, "continent", "code")
    continent: str | None = None
    # Only MaxMind's seven codes: residency rules are written in them, and a
    # corrupt file may hold anything (even an unhashable list) here.
    if isinstance(continent_code, str) and continent_code in CONTINENT_CENTROIDS:
        continent = continent_code
    if continent is None and country is not None:
        continent = COUNTRIES[country][2]

    coordinates = _valid_coordinates(
        _sub(record, "location", "latitude"), _sub(record, "location", "longitude")
    )
    if coordinates is not None:
        return Location(coordinates[0], coordinates[1], country, continent)
    if country is None:
        # Data residency comes first (SPEC section 4): a device known to be in
        # Europe must still match a "continents: [EU]" rule, so a continent alone
        # is worth a Location.
        return Location.from_continent(continent) if continent is not None else None
    latitude, longitude, _ = COUNTRIES[country]
    return Location(latitude, longitude, country, continent)


def _why(exc: Exception) -> str:
    """One human line for an exception: "No such file or directory", not a repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# Distinguishes "not cached" from a cached None.
_MISSING: Final = object()


class GeoIPLocator:
    """Looks up client addresses in a MaxMind DB file (City or Country).

    Build one per loaded configuration; the lifespan owns it and calls
    :meth:`close` when the configuration is replaced or the server stops::

        with GeoIPLocator(settings.geo.database) as locator:
            locator.lookup("2001:218::1")   # Location(35.68536, 139.75309, "JP", "AS")

    Opening a missing, unreadable or corrupt file raises ``ConfigError`` with one
    line, ``geo.database: cannot open PATH: WHY``. Some corruption only shows on
    lookup; such lookups return ``None`` (and are logged), they never raise.

    Results, ``None`` included, are kept in an LRU cache of ``cache_size``
    entries keyed by the address string, because a fleet's devices come back
    from the same addresses again and again. ``cache_hits`` and
    ``cache_misses`` count how it is doing. Safe to share between threads.
    """

    def __init__(self, path: str | os.PathLike[str], cache_size: int = 65536) -> None:
        self.path = os.fspath(path)
        try:
            self._reader = maxminddb.open_database(self.path, maxminddb.MODE_AUTO)
        except Exception as exc:
            # maxminddb raises OSError subclasses for file problems,
            # InvalidDatabaseError for a bad format, and its pure-Python reader can
            # surface ValueError/struct.error/IndexError from a damaged header:
            # all of them mean "this file cannot be used", said in one line.
            raise ConfigError([f"geo.database: cannot open {self.path}: {_why(exc)}"]) from exc
        try:
            database_type = self._reader.metadata().database_type
        except Exception as exc:
            self._reader.close()
            raise ConfigError([f"geo.database: cannot open {self.path}: {_why(exc)}"]) from exc
        self._database_type = str(database_type)
        self._cache: LRUCache[str, Location | None] = LRUCache(maxsize=max(1, cache_size))
        # LRUCache reorders itself on every read, so even lookups need the lock.
        self._lock = threading.Lock()
        self._failures_logged = False
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def database_type(self) -> str:
        """The file's ``database_type`` metadata, e.g. ``GeoLite2-City``, ``GeoIP2-Country``."""
        return self._database_type

    def lookup(self, ip: str) -> Location | None:
        """The location of address ``ip`` (IPv4 or IPv6 text), or ``None`` when the
        string is not an address, the address is private/unknown to the database,
        or its record is unreadable."""
        with self._lock:
            cached = self._cache.get(ip, _MISSING)
            if cached is not _MISSING:
                self.cache_hits += 1
                return cast("Location | None", cached)
            self.cache_misses += 1
        location = self._lookup_uncached(ip)
        with self._lock:
            self._cache[ip] = location
        return location

    def _lookup_uncached(self, ip: str) -> Location | None:
        try:
            address = ipaddress.ip_address(ip.strip())
        except ValueError:
            return None
        # Databases built by other tools (mmdb-writer with ipv4_compatible) store
        # IPv4 only under ::/96, not MaxMind's ::ffff:0:0/96 alias, so a
        # dual-stack socket's "::ffff:81.2.69.142" must be looked up as IPv4.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        try:
            record = self._reader.get(address)
        except Exception as exc:
            # A corrupt data section (InvalidDatabaseError), an IPv6 address in an
            # IPv4-only file (ValueError), a closed reader: all are "no location".
            # Never let a bad file turn a download into a 500.
            self._log_failure(str(address), exc)
            return None
        return location_from_record(record)

    def _log_failure(self, address: str, exc: Exception) -> None:
        # The first failure is worth an operator's attention; thousands of
        # identical lines after it are not.
        level = logging.DEBUG if self._failures_logged else logging.WARNING
        self._failures_logged = True
        logger.log(
            level,
            "geoip lookup failed in %s for %s: %s: %s",
            self.path,
            address,
            type(exc).__name__,
            exc,
        )

    def close(self) -> None:
        """Release the file (and its memory map). Later lookups return ``None``
        unless cached."""
        self._reader.close()

    def __enter__(self) -> GeoIPLocator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GeoIPLocator({self.path!r}, database_type={self._database_type!r})"


# --------------------------------------------------------------------------- edge headers

# A decimal number as CloudFront writes it ("47.60620", "-122.33210"). Stricter
# than float(): no "nan", "inf", exponents or "1_0" from a misbehaving hop.
_DECIMAL = re.compile(r"[+-]?\d{1,3}(?:\.\d{1,15})?")

# Cloudflare's CF-IPCountry values that are not countries: XX = unknown,
# T1 = Tor exit node (developers.cloudflare.com, "Cloudflare HTTP headers").
_CLOUDFLARE_NOT_COUNTRIES: Final[frozenset[str]] = frozenset({"XX", "T1"})


def _header_coordinate(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    if _DECIMAL.fullmatch(text) is None:
        return None
    return float(text)


def _cloudfront(headers: Mapping[str, str]) -> Location | None:
    # CloudFront geolocation headers (CloudFront Developer Guide, "Add CloudFront
    # request headers"): CloudFront-Viewer-Latitude/-Longitude/-Country.
    country = _known_country(headers.get("cloudfront-viewer-country"))
    coordinates = _valid_coordinates(
        _header_coordinate(headers.get("cloudfront-viewer-latitude")),
        _header_coordinate(headers.get("cloudfront-viewer-longitude")),
    )
    if coordinates is not None:
        continent = COUNTRIES[country][2] if country is not None else None
        return Location(coordinates[0], coordinates[1], country, continent)
    if country is not None:
        return Location.from_country(country)
    return None


def _cloudflare(headers: Mapping[str, str]) -> Location | None:
    value = headers.get("cf-ipcountry")
    if value is None:
        return None
    code = value.strip().upper()
    if code in _CLOUDFLARE_NOT_COUNTRIES:
        return None
    return Location.from_country(code)


def location_from_headers(headers: Mapping[str, str], enabled: frozenset[str]) -> Location | None:
    """The location an edge network (CDN) put into the request headers, or ``None``.

    ``headers`` maps lower-case header names to values; ``enabled`` is a subset
    of :data:`GEO_HEADER_PROVIDERS` (config ``server.geo_headers``); other
    names are ignored.

    * ``cloudfront``: ``cloudfront-viewer-latitude`` and
      ``cloudfront-viewer-longitude`` (decimal degrees, range-checked; garbage
      in either means no coordinates) with country and continent from
      ``cloudfront-viewer-country`` when that is a known code; without usable
      coordinates, the country's centroid.
    * ``cloudflare``: ``cf-ipcountry``, placed at the country's centroid;
      ``XX`` (unknown), ``T1`` (Tor) and unknown codes are ignored.

    CloudFront wins when both are enabled and usable.

    The CALLER must only call this for requests whose TCP peer is a trusted
    proxy: anyone can send these headers, and they are believed as they are.
    """
    if "cloudfront" in enabled:
        location = _cloudfront(headers)
        if location is not None:
            return location
    if "cloudflare" in enabled:
        return _cloudflare(headers)
    return None
