"""The fleet a load test plays, and what the gateway must answer each device.

Pure Python, no Locust: ``loadtests/locustfile.py`` drives it, and tests can
import it without Locust's gevent monkey-patching. One :class:`Fleet` is built
per load-generating process from :class:`FleetOptions`::

    fleet = Fleet.build(FleetOptions(demo_dir=Path(".demo")))
    device = fleet.pick_device(rng)             # token, addresses, expected region
    obj = fleet.catalog.pick(device.product, rng)  # Zipf over versions and binaries
    problem = fleet.check_redirect(device, obj, status, headers, time.time())
    # None, or one line saying what was wrong ("region us-east, expected ap-northeast")

What the fleet is made of, and where each part comes from:

* **The gateway's configuration** (``--gateway-config``, default
  ``DEMO_DIR/gateway.yaml``), read with the project's own
  :func:`gateway.settings.load_settings`. From it: the regions and residency
  rules, fed to the project's own :class:`gateway.policy.GeoPolicy` exactly as
  the gateway builds it, so each device's expected region is the one the
  gateway's policy must choose (all regions healthy); each ``local`` region's
  origin URL, for the exact ``Location`` format; ``signing.min_remaining`` and
  ``ttl``; the issuer and audience tokens need; which access rules stream
  instead of redirect; and ``geo.database`` when there is one.
* **Device tokens**, minted with the project's own signer
  (:func:`gateway.keys.issue_token`) from a private key whose public half the
  gateway trusts (default ``DEMO_DIR/keys/demo.pem``, kid ``demo``), one per
  device with ``sub`` and a ``product`` claim; plus a pool of bad tokens the
  gateway must refuse with 401: expired (beyond the gateway's leeway), for
  another audience, signed by an impostor key under the trusted kid, and
  garbage.
* **Where devices are.** Every request carries the device's address in
  ``X-Forwarded-For``, as a load balancer the gateway trusts writes it (the
  demo trusts 127.0.0.1). Two ways to place devices on the globe
  (``--geo-source``; ``auto`` picks ``geoip`` when the configuration has a
  ``geo.database``, else ``header``):

  - ``header``: each device gets a country from a weighted world list
    (:data:`WORLD`) and sends ``CloudFront-Viewer-Country``, which the gateway
    believes from a trusted peer when ``server.geo_headers`` has
    ``cloudfront``; its address is from the documentation ranges (RFC 5737,
    RFC 3849), which no GeoIP database places anywhere.
  - ``geoip``: each device's address lies in one of the networks of
    ``tests/geoip_fixture.py``'s ``FIXTURE_NETWORKS`` (weighted by
    :data:`FIXTURE_WEIGHTS`), for a gateway whose ``geo.database`` is built by
    ``build_city_db``/``build_country_db``; the expected location is looked up
    in that same file with the project's own :class:`gateway.geo.GeoIPLocator`.

* **What they download**: the files under ``--objects-dir`` (default the
  demo's first origin root), laid out ``<top>/<product>/<version>/<file>`` as
  an access prefix like ``firmware/{product}/`` expects. A device asks only
  for its own product's files, by a Zipf law (exponent ``--zipf-s``) over
  newest version first, then file name: the newest release takes most of the
  traffic, older ones a long tail. The bytes are kept, so ranges are checked
  byte for byte.

Everything raises :class:`FleetError` with one line fit to print when an
input is missing or does not fit (no key file, a gateway that does not trust
CloudFront headers in header mode, ...).
"""

from __future__ import annotations

import base64
import bisect
import datetime
import ipaddress
import itertools
import json
import random
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from gateway.access import AccessPolicy
from gateway.errors import ConfigError, GatewayError
from gateway.geo import GeoIPLocator, Location
from gateway.keys import generate_key, issue_token
from gateway.policy import GeoPolicy, Region, Rule
from gateway.settings import LocalBackend, Settings, load_settings

__all__ = [
    "BAD_TOKEN_KINDS",
    "FIXTURE_WEIGHTS",
    "WORLD",
    "Catalog",
    "Device",
    "Fleet",
    "FleetError",
    "FleetObject",
    "FleetOptions",
    "Headers",
]

ROOT = Path(__file__).resolve().parents[1]

#: ``gateway demo`` signs its device tokens with this kid (gateway/demo.py).
DEMO_KID = "demo"

#: Countries devices send in ``CloudFront-Viewer-Country`` (header mode), with
#: relative weights (about per cent of the fleet): roughly where connected
#: devices are, every continent present so every region and rule is used.
WORLD: tuple[tuple[str, int], ...] = (
    ("US", 20), ("CN", 12), ("IN", 6), ("JP", 6), ("DE", 6), ("GB", 4),
    ("FR", 4), ("BR", 4), ("KR", 3), ("CA", 3), ("IT", 2), ("ES", 2),
    ("MX", 2), ("AU", 2), ("NL", 2), ("SE", 1), ("PL", 1), ("TR", 1),
    ("ID", 2), ("VN", 1), ("SG", 1), ("ZA", 1), ("NG", 1), ("EG", 1),
    ("AR", 1), ("CL", 1), ("CO", 1), ("SA", 1), ("AE", 1), ("NZ", 1),
    ("CH", 1), ("NO", 1), ("FI", 1), ("TW", 1),
)  # fmt: skip

#: Weights of ``FIXTURE_NETWORKS`` entries (geoip mode); names not listed weigh 1.
FIXTURE_WEIGHTS: Mapping[str, int] = {
    "us_east": 10, "london": 8, "germany": 8, "japan": 8, "us_west": 8,
    "china": 6, "sweden": 3, "australia": 3,
}  # fmt: skip

#: The kinds of bad token, each its own request group in Locust's statistics.
BAD_TOKEN_KINDS: tuple[str, ...] = ("expired", "wrong audience", "impostor key", "garbage")

# Documentation address ranges (RFC 5737, RFC 3849): never routed and never in
# a GeoIP database, so in header mode only the CloudFront header says where a
# device is.
_DOC_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)

# RFC 6750 section 3: the challenge a resource server sends with a 401.
_BEARER_CHALLENGE = re.compile(r"^Bearer\b", re.IGNORECASE)
_INVALID_TOKEN = re.compile(r'\berror="invalid_token"')
# base64url (RFC 4648 section 5) without padding of a 32-byte HMAC-SHA256: the
# ``local`` backend's sig (gateway/signers/local.py).
_LOCAL_SIG = re.compile(r"[A-Za-z0-9_-]{43}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

# Slack for the time between the gateway stamping a URL and this process
# reading the response: a URL is checked to live at least min_remaining minus
# this. Same machine or NTP-synchronised machines only.
_CLOCK_SLACK_S = 1.0


class FleetError(Exception):
    """An input the fleet cannot be built from; ``str()`` is one line to print."""


#: Response headers by lower-case name (repeated fields joined with ", ").
Headers = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """Where the fleet's inputs are; every ``None`` means "the demo's".

    ``demo_dir`` is the folder ``gateway demo --dir`` wrote; the defaults of
    the other paths are inside it. ``issuer`` and ``audience`` default to the
    gateway configuration's ``auth`` section. ``products`` maps product claim
    -> weight (default: every product in the catalogue, equally).
    """

    demo_dir: Path = Path(".demo")
    gateway_config: Path | None = None
    signing_key: Path | None = None
    kid: str = DEMO_KID
    issuer: str | None = None
    audience: str | None = None
    objects_dir: Path | None = None
    products: Mapping[str, float] | None = None
    devices: int = 1000
    zipf_s: float = 1.2
    geo_source: str = "auto"
    chunk_bytes: int = 65536
    token_ttl: float = 86400.0


@dataclass(frozen=True, slots=True)
class FleetObject:
    """One downloadable file: its object key, product, size and bytes."""

    key: str
    product: str
    size: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Device:
    """One device: who it is, where it is, and where the gateway must send it.

    ``headers`` are the request headers it sends on every request
    (``Authorization``, ``X-Forwarded-For``, and ``CloudFront-Viewer-Country``
    in header mode). ``where`` names its place for failure messages (a
    country code or a fixture network name): few distinct values, so Locust's
    failure table stays short.
    """

    sub: str
    product: str
    where: str
    region: str
    headers: Mapping[str, str]


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    # "1.10.0" after "1.9.2": numbers compare as numbers, anything else as text
    # (and after numbers, so "2.0.0-rc1" sorts after "2.0.0" -- close enough for a load shape).
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+]", version))


class Catalog:
    """The files devices download, per product, with a Zipf choice among them."""

    def __init__(self, objects: Sequence[FleetObject], zipf_s: float) -> None:
        if not objects:
            raise FleetError("the catalogue is empty: no files to download")
        self.objects = tuple(objects)
        by_product: dict[str, list[FleetObject]] = {}
        for obj in objects:
            by_product.setdefault(obj.product, []).append(obj)
        self._ranked: dict[str, tuple[FleetObject, ...]] = {}
        self._cum: dict[str, list[float]] = {}
        for product, items in by_product.items():
            # Rank 1 is the newest version (then file name): what a rollout pushes.
            items.sort(key=lambda o: o.key.split("/")[-1])
            items.sort(key=lambda o: _version_key(o.key.split("/")[-2]), reverse=True)
            self._ranked[product] = tuple(items)
            weights = [1.0 / (rank**zipf_s) for rank in range(1, len(items) + 1)]
            self._cum[product] = list(itertools.accumulate(weights))

    @classmethod
    def from_directory(cls, root: Path, zipf_s: float) -> Catalog:
        """Every file under ``root`` laid out ``<top>/<product>/<version>/<file>``."""
        if not root.is_dir():
            raise FleetError(f"objects directory {root} does not exist (run gateway demo --dir)")
        objects = []
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            key = path.relative_to(root).as_posix()
            parts = key.split("/")
            if len(parts) != 4:
                continue  # not <top>/<product>/<version>/<file>
            data = path.read_bytes()
            objects.append(FleetObject(key, parts[1], len(data), data))
        return cls(objects, zipf_s)

    @property
    def products(self) -> tuple[str, ...]:
        """The products with files, sorted."""
        return tuple(sorted(self._ranked))

    def ranked(self, product: str) -> tuple[FleetObject, ...]:
        """``product``'s files in Zipf rank order (most requested first)."""
        return self._ranked[product]

    def pick(self, product: str, rng: random.Random) -> FleetObject:
        """A file of ``product``, rank r chosen with probability proportional to 1/r**s."""
        cum = self._cum[product]
        index = bisect.bisect_left(cum, rng.random() * cum[-1])
        return self._ranked[product][min(index, len(cum) - 1)]

    def other_product(self, product: str, rng: random.Random) -> str:
        """A key of another product (a device must get 403 for it)."""
        others = [p for p in self._ranked if p != product]
        if others:
            return self.pick(rng.choice(others), rng).key
        # One product only: a key under another product's prefix is refused
        # before anything looks for the object.
        top = self.objects[0].key.split("/")[0]
        return f"{top}/not-{product}/1.0.0/app.bin"


def _parse_iso(text: str) -> int | None:
    try:
        moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return int(moment.replace(tzinfo=datetime.UTC).timestamp())


def _random_address(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, rng: random.Random
) -> str:
    # Any host of the network; a /31 or /32 has no "network address" to avoid.
    size = network.num_addresses
    offset = rng.randrange(1, size - 1) if size > 2 else rng.randrange(size)
    return str(network.network_address + offset)


class Fleet:
    """Devices with tokens, bad tokens, the catalogue and the expected answers.

    Build with :meth:`build`; then :meth:`pick_device`, :meth:`bad_token`
    and the ``check_*`` methods, each of which returns ``None`` when the
    response is what the gateway must send, else one line saying what is
    wrong. Nothing here does I/O after :meth:`build`.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        devices: Sequence[Device],
        bad_tokens: Mapping[str, Sequence[str]],
        geo_source: str,
        chunk_bytes: int,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.devices = tuple(devices)
        self.bad_tokens = {kind: tuple(tokens) for kind, tokens in bad_tokens.items()}
        self.geo_source = geo_source
        self.chunk_bytes = chunk_bytes
        self.min_remaining = settings.signing.min_remaining_seconds
        self.ttl = settings.signing.ttl_seconds
        # Exact URL prefix per region for the local backend (gateway/signers/local.py:
        # {origin}{path prefix}/{key}?expires=..&sig=..); other backends are only
        # checked to be absolute http(s) URLs.
        self.url_prefix: dict[str, str | None] = {
            name: (region.backend.url.rstrip("/") + "/")
            if isinstance(region.backend, LocalBackend)
            else None
            for name, region in settings.regions.items()
        }
        self.backend_kind = {name: r.backend.type for name, r in settings.regions.items()}
        self._access = AccessPolicy([rule.prefix for rule in settings.access])
        self._stream_rules = [
            (rule.delivery or settings.delivery.mode) == "stream" for rule in settings.access
        ]

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, options: FleetOptions, rng: random.Random | None = None) -> Fleet:
        """Read the configuration, key and files; mint every token. Raises FleetError."""
        rng = rng or random.Random()
        demo = options.demo_dir
        config_path = options.gateway_config or demo / "gateway.yaml"
        if not config_path.exists():
            raise FleetError(
                f"gateway config {config_path} does not exist "
                "(start `gateway demo --dir DIR` and pass --demo-dir DIR, or --gateway-config)"
            )
        try:
            settings = load_settings(config_path)
        except ConfigError as exc:
            raise FleetError(f"{config_path}: {'; '.join(exc.problems)}") from None
        key_path = options.signing_key or demo / "keys" / f"{options.kid}.pem"
        if not key_path.exists():
            raise FleetError(f"signing key {key_path} does not exist")
        if options.devices < 1:
            raise FleetError("the fleet needs at least one device")
        if options.chunk_bytes < 1:
            raise FleetError("chunk bytes must be at least 1")
        objects_dir = options.objects_dir or demo / "origins" / next(iter(settings.regions))
        catalog = Catalog.from_directory(objects_dir, options.zipf_s)

        products = dict(options.products or dict.fromkeys(catalog.products, 1.0))
        unknown = sorted(set(products) - set(catalog.products))
        if unknown:
            raise FleetError(f"no files for product(s) {', '.join(unknown)} in {objects_dir}")
        if not products or not all(w > 0 for w in products.values()):
            raise FleetError("product weights must be positive")

        geo_source = options.geo_source
        if geo_source == "auto":
            geo_source = "geoip" if settings.geo.database is not None else "header"
        if geo_source not in ("header", "geoip"):
            raise FleetError(f"geo source {geo_source!r}: expected auto, header or geoip")
        if geo_source == "header" and "cloudfront" not in settings.server.geo_headers:
            raise FleetError(
                "geo source 'header' needs server.geo_headers: [cloudfront] in the gateway "
                "config; give it a geo.database and use --geo-source geoip instead"
            )
        if geo_source == "geoip" and settings.geo.database is None:
            raise FleetError("geo source 'geoip' needs geo.database in the gateway config")

        issuer = options.issuer or settings.auth.issuer
        audience = options.audience or settings.auth.audience
        policy = _policy(settings)
        healthy = frozenset(settings.regions)
        places = _places(settings, geo_source, options.devices, rng)

        product_names = list(products)
        product_weights = list(itertools.accumulate(products.values()))
        now = time.time()
        devices = []
        for i, (where, address, location, from_header) in enumerate(places):
            product = rng.choices(product_names, cum_weights=product_weights)[0]
            sub = f"loadtest-{i:06d}"
            try:
                token = issue_token(
                    key_path, options.kid, sub, ttl=options.token_ttl, audience=audience,
                    issuer=issuer, claims={"product": product}, now=now,
                )  # fmt: skip
                decision = policy.decide(
                    residency=None, location=location, healthy=healthy, from_header=from_header
                )
            except (ValueError, GatewayError) as exc:
                raise FleetError(f"device {sub}: {exc}") from None
            headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
            if geo_source == "header":
                headers["CloudFront-Viewer-Country"] = where
            devices.append(Device(sub, product, where, decision.region, headers))

        bad = _bad_tokens(key_path, options.kid, issuer, audience, product_names[0], now)
        return cls(
            settings=settings,
            catalog=catalog,
            devices=devices,
            bad_tokens=bad,
            geo_source=geo_source,
            chunk_bytes=options.chunk_bytes,
        )

    # ------------------------------------------------------------------ choosing

    def pick_device(self, rng: random.Random) -> Device:
        """A device of the pool, uniformly."""
        return self.devices[rng.randrange(len(self.devices))]

    def bad_token(self, rng: random.Random) -> tuple[str, str]:
        """``(kind, token)``: a bad token of a kind from :data:`BAD_TOKEN_KINDS`."""
        kind = rng.choice(BAD_TOKEN_KINDS)
        return kind, rng.choice(self.bad_tokens[kind])

    def streams(self, device: Device, key: str) -> bool:
        """True when the gateway streams ``key`` to ``device`` instead of redirecting."""
        return self._stream_rules[self._access.check({"product": device.product}, key)]

    def byte_range(self, obj: FleetObject, rng: random.Random) -> tuple[int, int]:
        """``(first, last)``, inclusive: a resumed download's next chunk of ``obj``."""
        first = rng.randrange(obj.size) if obj.size else 0
        return first, min(obj.size - 1, first + self.chunk_bytes - 1)

    # ------------------------------------------------------------------ checking

    def check_region(self, device: Device, headers: Headers) -> str | None:
        """``X-Gateway-Region`` is the region the policy chooses for the device."""
        got = headers.get("x-gateway-region")
        if got != device.region:
            return f"X-Gateway-Region {got} for {device.where}, expected {device.region}"
        return None

    def check_signed_url(self, url: str, region: str, key: str, now: float) -> str | None:
        """A signed URL of ``region`` for ``key``, with at least min_remaining of life.

        ``local`` backend: exactly ``{origin url}/{key}?expires=N&sig=S`` with
        ``now + min_remaining <= N <= now + ttl``. Other backends: an absolute
        http(s) URL (their formats have tests of their own).
        """
        prefix = self.url_prefix.get(region)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return "signed URL is not an absolute http(s) URL"
        if prefix is None:
            return None
        base, _, query = url.partition("?")
        if base != prefix + key:
            return f"signed URL is not under {region}'s origin {prefix}"
        params = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
        if [name for name, _ in params] != ["expires", "sig"]:
            return "signed URL query is not expires=N&sig=S"
        expires_text, sig = params[0][1], params[1][1]
        if not expires_text.isdigit() or not _LOCAL_SIG.fullmatch(sig):
            return "signed URL has a malformed expires or sig"
        remaining = int(expires_text) - now
        if remaining < self.min_remaining - _CLOCK_SLACK_S:
            return f"signed URL lives less than min_remaining ({self.min_remaining}s)"
        if remaining > self.ttl + _CLOCK_SLACK_S:
            return f"signed URL lives longer than ttl ({self.ttl}s)"
        return None

    def check_redirect(
        self, device: Device, obj: FleetObject, status: int, headers: Headers, now: float
    ) -> str | None:
        """GET /v1/binaries/{key} in redirect mode: 307 to a good signed URL of the region."""
        if status != 307:
            return f"status {status}, expected 307"
        problem = self.check_region(device, headers)
        if problem:
            return problem
        location = headers.get("location")
        if location is None:
            return "307 without Location"
        return self.check_signed_url(location, device.region, obj.key, now)

    def check_urls(
        self, device: Device, obj: FleetObject, status: int, headers: Headers, body: bytes,
        now: float,
    ) -> tuple[str | None, str | None]:  # fmt: skip
        """GET /v1/urls/{key}: ``(problem, url)``; the JSON agrees with the headers."""
        if status != 200:
            return f"status {status}, expected 200", None
        problem = self.check_region(device, headers)
        if problem:
            return problem, None
        try:
            document = json.loads(body)
        except ValueError:
            return "body is not JSON", None
        if not isinstance(document, dict):
            return "body is not a JSON object", None
        url, expires_at = document.get("url"), document.get("expires_at")
        if not isinstance(url, str) or not isinstance(expires_at, str):
            return "JSON lacks url or expires_at", None
        if document.get("region") != device.region:
            return f"JSON region {document.get('region')}, expected {device.region}", None
        kind = self.backend_kind[device.region]
        if document.get("backend") != kind:
            return f"JSON backend {document.get('backend')}, expected {kind}", None
        problem = self.check_signed_url(url, device.region, obj.key, now)
        if problem:
            return problem, None
        if self.url_prefix.get(device.region) is not None:
            expires = dict(parse_qsl(urlsplit(url).query))["expires"]
            if _parse_iso(expires_at) != int(expires):
                return "JSON expires_at is not the URL's expires", None
        return None, url

    def check_range(
        self, obj: FleetObject, first: int, last: int, status: int, headers: Headers,
        body: bytes,
    ) -> str | None:  # fmt: skip
        """A ``Range: bytes=first-last`` answer: 206, exact Content-Range, exact bytes."""
        if status != 206:
            return f"status {status}, expected 206"
        content_range = headers.get("content-range") or ""
        m = _CONTENT_RANGE.fullmatch(content_range.strip())
        if m is None or tuple(map(int, m.groups())) != (first, last, obj.size):
            return "Content-Range is not the range asked for"
        if body != obj.data[first : last + 1]:
            return "range body differs from the file"
        return None

    def check_whole(
        self, device: Device, obj: FleetObject, status: int, headers: Headers, body: bytes
    ) -> str | None:
        """Stream mode: a whole download from the gateway, 200 and the file's bytes."""
        if status != 200:
            return f"status {status}, expected 200"
        problem = self.check_region(device, headers)
        if problem:
            return problem
        if body != obj.data:
            return "body differs from the file"
        return None

    @staticmethod
    def check_unauthorized(status: int, headers: Headers) -> str | None:
        """A bad token: 401 with an RFC 6750 ``Bearer`` challenge saying ``invalid_token``."""
        if status != 401:
            return f"status {status}, expected 401"
        challenge = headers.get("www-authenticate") or ""
        if not _BEARER_CHALLENGE.match(challenge) or not _INVALID_TOKEN.search(challenge):
            return 'no WWW-Authenticate: Bearer ... error="invalid_token"'
        return None

    @staticmethod
    def check_forbidden(status: int, headers: Headers, body: bytes) -> str | None:
        """Another product's key: 403, problem type ``not-entitled``."""
        if status != 403:
            return f"status {status}, expected 403"
        try:
            problem_type = json.loads(body).get("type")
        except (ValueError, AttributeError):
            return "403 body is not a problem+json object"
        if problem_type != "urn:gateway:problem:not-entitled":
            return f"403 problem type {problem_type}, expected not-entitled"
        return None


def _policy(settings: Settings) -> GeoPolicy:
    # Built exactly as gateway/app.py's Runtime builds it.
    return GeoPolicy(
        [Region(name, *r.location) for name, r in settings.regions.items()],
        {
            name: Rule(frozenset(rule.countries), frozenset(rule.continents), rule.regions)
            for name, rule in settings.geo.residency.items()
        },
        settings.default_region,
    )


def _places(
    settings: Settings, geo_source: str, count: int, rng: random.Random
) -> list[tuple[str, str, Location | None, bool]]:
    """Per device: (where, address, expected location, whether from a header)."""
    out: list[tuple[str, str, Location | None, bool]] = []
    if geo_source == "header":
        countries = [c for c, _ in WORLD]
        cum = list(itertools.accumulate(w for _, w in WORLD))
        for _ in range(count):
            country = rng.choices(countries, cum_weights=cum)[0]
            location = Location.from_country(country)
            if location is None:
                raise FleetError(f"{country} is not in gateway.countries")
            out.append((country, _random_address(rng.choice(_DOC_NETWORKS), rng), location, True))
        return out
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from tests.geoip_fixture import FIXTURE_NETWORKS
    except ImportError as exc:
        raise FleetError(
            f"geoip mode needs tests/geoip_fixture.py and the test extras: {exc}"
        ) from None
    names = sorted(FIXTURE_NETWORKS)
    cum = list(itertools.accumulate(FIXTURE_WEIGHTS.get(n, 1) for n in names))
    assert settings.geo.database is not None
    try:
        locator = GeoIPLocator(settings.geo.database)
    except ConfigError as exc:
        raise FleetError("; ".join(exc.problems)) from None
    with locator:
        for _ in range(count):
            name = rng.choices(names, cum_weights=cum)[0]
            address = _random_address(ipaddress.ip_network(FIXTURE_NETWORKS[name].network), rng)
            out.append((name, address, locator.lookup(address), False))
    return out


def _bad_tokens(
    key_path: Path, kid: str, issuer: str, audience: str, product: str, now: float
) -> dict[str, list[str]]:
    """A few tokens of each :data:`BAD_TOKEN_KINDS`; each must get 401."""
    claims = {"product": product}
    out: dict[str, list[str]] = {kind: [] for kind in BAD_TOKEN_KINDS}
    with tempfile.TemporaryDirectory(prefix="fleet-impostor-") as tmp:
        # Same kid as the trusted key, another private key: the signature is bad.
        generate_key("EdDSA", tmp, kid)
        impostor = Path(tmp) / f"{kid}.pem"
        for i in range(8):
            sub = f"loadtest-bad-{i:02d}"
            out["expired"].append(
                # Expired two days ago: far beyond any clock-skew leeway.
                issue_token(key_path, kid, sub, ttl=3600, audience=audience, issuer=issuer,
                            claims=claims, now=now - 2 * 86400 - 3600)
            )  # fmt: skip
            out["wrong audience"].append(
                issue_token(key_path, kid, sub, ttl=3600, audience=f"not-{audience}",
                            issuer=issuer, claims=claims, now=now)
            )  # fmt: skip
            out["impostor key"].append(
                issue_token(impostor, kid, sub, ttl=3600, audience=audience, issuer=issuer,
                            claims=claims, now=now)
            )  # fmt: skip
    b64 = base64.urlsafe_b64encode
    out["garbage"] = [
        secrets.token_urlsafe(48),
        "not.a.jwt",
        "e30.e30.",  # {} . {} . no signature
        b64(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=") + "."
        + b64(json.dumps({"sub": "x", "product": product}).encode()).decode().rstrip("=") + ".",
        "a" * 600,
    ]  # fmt: skip
    return out
