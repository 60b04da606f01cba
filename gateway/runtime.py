"""Everything built from one configuration, swapped whole on reload.

A :class:`Runtime` holds the configuration's keys and authenticator, the
access rules, the GeoIP reader, the geo policy, one signer per region, the
URL and decision caches, region health and the rate limiters. A request takes
the app's runtime once at its start, so a reload never changes a request in
flight; the old runtime is closed after the drain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.access import AccessPolicy
from gateway.auth import Authenticator, KeySet
from gateway.errors import ConfigError
from gateway.geo import GeoIPLocator, Location
from gateway.health import RegionHealth, http_probe
from gateway.jwks import RemoteJWKS
from gateway.memo import Memo
from gateway.metrics import Metrics
from gateway.mtls import ClientCertificates
from gateway.policy import GeoPolicy, Region, Rule
from gateway.proxy_headers import TrustedProxies
from gateway.ratelimit import RateLimiter
from gateway.settings import Settings
from gateway.signers import Signer, build_signer
from gateway.url_cache import SignedURLCache


@dataclass(frozen=True, slots=True)
class Decided:
    """A redirect or URL answer that may be given again to the same request.

    Valid while the runtime (config, keys, revocation list), the set of healthy
    regions and the URL's window are the same, and the token has not expired.
    """

    healthy: frozenset[str]
    auth_generation: int  # keys and revocations it was verified against
    valid_until: float
    sub: str
    region: str
    reason: str
    logged: str  # the access-log fields it fixes, encoded (AccessLog.decided)
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Runtime:
    """Everything built from one configuration: keys, rules, GeoIP, signers, caches."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Callable[[], float]) -> None:
        problems: list[str] = []
        self.settings = settings
        self.authenticator: Authenticator | None = None
        self.jwks: RemoteJWKS | None = None
        self.mtls: ClientCertificates | None = None
        self.mtls_header = b""
        self.mtls_required = False
        try:
            remote = settings.auth.jwks_is_url
            # A JWKS URL is fetched by the lifespan; until then no token passes.
            keys = KeySet.empty() if remote else KeySet.from_file(settings.auth.jwks)
            revoked = _read_revoked(settings.auth.revoked)
            self.authenticator = Authenticator(
                keys,
                issuer=settings.auth.issuer,
                audience=settings.auth.audience,
                algorithms=settings.auth.algorithms,
                leeway=settings.auth.leeway,
                max_token_lifetime=settings.auth.max_token_lifetime,
                revoked=revoked,
                cache_size=settings.auth.cache_size,
                clock=clock,
            )
            certificates = settings.auth.client_certificates
            if certificates is not None:
                self.mtls = ClientCertificates(
                    certificates.ca,
                    subject=certificates.subject,
                    claims=certificates.claims,
                    cache_size=settings.auth.cache_size,
                    clock=clock,
                )
                self.mtls_header = certificates.header.encode()
                self.mtls_required = certificates.mode == "required"
            if remote:
                self.jwks = RemoteJWKS(
                    settings.auth.jwks,
                    self.authenticator,
                    refresh=settings.auth.jwks_refresh,
                    max_stale=settings.auth.jwks_max_stale,
                    timeout=settings.auth.jwks_timeout,
                )
        except ConfigError as exc:
            problems.extend(exc.problems)
        self.locator: GeoIPLocator | None = None
        if settings.geo.database is not None:
            try:
                self.locator = GeoIPLocator(settings.geo.database, settings.geo.cache_size)
            except ConfigError as exc:
                problems.extend(exc.problems)
        self.access = AccessPolicy([rule.prefix for rule in settings.access])
        # Per access rule: stream (True) or redirect (False) for keys it allows.
        self.stream_rules = [
            (rule.delivery or settings.delivery.mode) == "stream" for rule in settings.access
        ]
        self.trusted = TrustedProxies(list(settings.server.trusted_proxies))
        self.geo_headers = frozenset(settings.server.geo_headers)
        # The edge's geo headers of a request -> its Location. A fleet's devices
        # share a few hundred distinct values (a country, a city's coordinates),
        # so each is parsed once; bounded, as a device behind the edge can
        # still vary them.
        self.header_locations: Memo[tuple[bytes | None, ...], Location | None] = Memo(4096)
        # Which forwarding header the trusted proxies maintain (the other is ignored).
        self.uses_xff = settings.server.forwarded_header == "x-forwarded-for"
        self.policy = GeoPolicy(
            [Region(name, *r.location) for name, r in settings.regions.items()],
            {
                name: Rule(frozenset(rule.countries), frozenset(rule.continents), rule.regions)
                for name, rule in settings.geo.residency.items()
            },
            settings.default_region,
        )
        self.signers: dict[str, Signer] = {}
        for name, region in settings.regions.items():
            try:
                self.signers[name] = build_signer(region.backend, f"regions.{name}.backend")
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        self.backend_kind = {name: signer.kind for name, signer in self.signers.items()}
        signing = settings.signing
        self.urls = SignedURLCache(
            ttl=signing.ttl_seconds,
            window=signing.window_seconds,
            min_remaining=signing.min_remaining_seconds,
            maxsize=signing.cache_size,
            clock=clock,
            observe=lambda kind, seconds: metrics.signing_time(kind).observe(seconds),
            on_error=metrics.signing_error,
        )
        health = settings.health
        self.health = RegionHealth(
            tuple(settings.regions),
            unhealthy_after=health.unhealthy_after,
            healthy_after=health.healthy_after,
            ejection_base=health.ejection_base,
            ejection_max=health.ejection_max,
            max_ejected_share=health.max_ejected_share,
            groups=[rule.regions for rule in settings.geo.residency.values()],
            on_change=lambda region, up: metrics.backend_up.labels(region).set(1 if up else 0),
        )
        limits = settings.limits
        # One bucket per device and route: a device fetching URLs does not use up
        # its downloads.
        self.limiters: dict[str, RateLimiter] = (
            {
                route: RateLimiter(
                    limits.rate_per_device, limits.burst_per_device, limits.rate_limit_entries
                )
                for route in ("binaries", "urls")
            }
            if limits.rate_per_device is not None
            else {}
        )
        self.checks: asyncio.Task[None] | None = None
        self.max_header_bytes = settings.limits.max_header_bytes
        self.max_head_bytes = 4 * settings.limits.max_header_bytes
        self.max_concurrent = settings.limits.max_concurrent_requests
        # Answers to repeated identical requests (a device polling or retrying):
        # the same token, key and location inputs give the same decision while
        # nothing it depends on changed. Dropped with the runtime on reload.
        self.decisions_max = settings.server.decision_cache_size
        # OrderedDict: FIFO eviction in O(1) (see url_cache.SignedURLCache).
        self.decisions: OrderedDict[tuple[Any, ...], Decided] | None = (
            OrderedDict() if self.decisions_max > 0 else None
        )
        metrics.prepare(settings.regions, set(self.backend_kind.values()))

    def start_checks(self, client: httpx.AsyncClient) -> None:
        """Start background work: the JWKS refresh and active health checks."""
        if self.jwks is not None:
            self.jwks.start(client)
        health = self.settings.health
        if not health.active or self.checks is not None:
            return
        path = health.path

        def url_for(region: str) -> Callable[[], Awaitable[str]]:
            signer = self.signers[region]

            async def url() -> str:
                # Signed directly, not through the URL cache: probes must not
                # skew the cache metrics.
                now = int(time.time())
                return (await signer.sign(path, now, now + 300)).url

            return url

        probes = {region: http_probe(client, url_for(region)) for region in self.signers}
        self.checks = asyncio.create_task(
            self.health.run_active_checks(probes, health.interval, health.timeout)
        )

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()
        if self.checks is not None:
            self.checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.checks
            self.checks = None
        for signer in self.signers.values():
            with contextlib.suppress(Exception):
                await signer.aclose()
        if self.locator is not None:
            self.locator.close()


def _read_revoked(path: str | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    try:
        with open(path) as f:
            lines = (line.split("#", 1)[0].strip() for line in f)
            return frozenset(line for line in lines if line)
    except OSError as exc:
        raise ConfigError([f"auth.revoked: cannot read {path}: {exc.strerror}"]) from None
