"""Every Prometheus series the gateway exports (SPEC §5), in one place.

Labels are fixed and low-cardinality: never a device id, token, object key or
URL. Tests pass their own ``CollectorRegistry``. Children for the label values
known in advance are created at start, so every series appears from the first
scrape, and the hot path reuses bound children instead of calling
``.labels()`` per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__

AUTH_FAILURE_REASONS = (
    "missing",
    "malformed",
    "bad_algorithm",
    "unknown_kid",
    "crit",
    "bad_signature",
    "missing_claim",
    "expired",
    "not_yet_valid",
    "bad_issuer",
    "bad_audience",
    "lifetime",
    "revoked",
)
DECISION_REASONS = ("nearest", "residency", "failover", "default", "header")

# Redirects and URL issuance take tens of microseconds; streams take minutes.
_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)  # fmt: skip
_SIGNING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)


class Metrics:
    """The gateway's metric families, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request start to the end of the response, by route.",
            ["route"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures",
            "Device tokens refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.region_decisions = Counter(
            "gateway_region_decisions",
            "Regions chosen for downloads, by region and why.",
            ["region", "reason"],
            registry=registry,
        )
        self.url_cache = Counter(
            "gateway_signed_url_cache",
            "Signed-URL cache lookups, by result (hit, miss).",
            ["result"],
            registry=registry,
        )
        self.signing_duration = Histogram(
            "gateway_signing_duration_seconds",
            "Time to sign one URL, by backend type.",
            ["backend"],
            buckets=_SIGNING_BUCKETS,
            registry=registry,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Requests the gateway made to storage backends, by backend and status code.",
            ["backend", "code"],
            registry=registry,
        )
        self.streamed_bytes = Counter(
            "gateway_streamed_bytes",
            "Body bytes streamed to devices, by region.",
            ["region"],
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time to the response head of an upstream request, by backend (region name).",
            ["backend"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.stream_failovers = Counter(
            "gateway_stream_failovers",
            "Upstream failures that made a streamed download try another region, by reason.",
            ["reason"],
            registry=registry,
        )
        self.active_streams = Gauge(
            "gateway_active_streams",
            "Downloads being streamed through the gateway right now.",
            registry=registry,
        )
        self.backend_up = Gauge(
            "gateway_backend_up",
            "1 while the region's backend is healthy, else 0 (label: region name).",
            ["backend"],
            registry=registry,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Requests being served right now.",
            registry=registry,
        )
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Configuration reloads, by result (success, failure).",
            ["result"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused by the per-device rate limit, by route.",
            ["route"],
            registry=registry,
        )
        self.last_reload = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time).",
            registry=registry,
        )
        self.build_info = Gauge(
            "gateway_build_info",
            "Always 1; the version label says which build runs.",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(__version__).set(1)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        for route in ("binaries", "urls"):
            self.rate_limited.labels(route)
        self.decision_cache = Counter(
            "gateway_decision_cache_hits",
            "Requests answered from the cache of decisions (repeated identical requests).",
            registry=registry,
        )
        self.cache_hit = self.url_cache.labels("hit")
        self.cache_miss = self.url_cache.labels("miss")
        self._auth_failure = {r: self.auth_failures.labels(r) for r in AUTH_FAILURE_REASONS}
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self._decisions: dict[tuple[str, str], Counter] = {}
        self._signing: dict[str, Histogram] = {}

    def prepare(self, regions: Iterable[str], backend_kinds: Iterable[str]) -> None:
        """Create the children for a configuration's regions and backends."""
        for region in regions:
            self.streamed_bytes.labels(region)
            self.upstream_duration.labels(region)
            self.backend_up.labels(region).set(1)
            for reason in DECISION_REASONS:
                self.decision(region, reason, 0)
        for kind in backend_kinds:
            self.signing_time(kind)

    def track_inflight(self, count: Callable[[], float]) -> None:
        """Read the in-flight gauge from ``count`` at scrape time (no per-request cost)."""
        self.inflight.set_function(count)

    def request(self, route: str, method: str, code: int, seconds: float) -> None:
        key = (route, method, code)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, method, str(code))
        child.inc()
        hist = self._durations.get(route)
        if hist is None:
            hist = self._durations[route] = self.request_duration.labels(route)
        hist.observe(seconds)

    def auth_failure(self, reason: str) -> None:
        child = self._auth_failure.get(reason)
        if child is None:
            child = self._auth_failure[reason] = self.auth_failures.labels(reason)
        child.inc()

    def decision(self, region: str, reason: str, amount: int = 1) -> None:
        key = (region, reason)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.region_decisions.labels(region, reason)
        child.inc(amount)

    def upstream(self, region: str, code: str, seconds: float) -> None:
        self.upstream_requests.labels(region, code).inc()
        self.upstream_duration.labels(region).observe(seconds)

    def streamed(self, region: str, amount: int) -> None:
        self.streamed_bytes.labels(region).inc(amount)

    def failover(self, region: str, reason: str) -> None:
        self.stream_failovers.labels(reason).inc()

    def signing_time(self, kind: str) -> Histogram:
        hist = self._signing.get(kind)
        if hist is None:
            hist = self._signing[kind] = self.signing_duration.labels(kind)
        return hist
