"""Every Prometheus series the gateway exports (SPEC §5), in one place.

Labels are fixed and low-cardinality: never a device id, token, object key or
URL. Tests pass their own ``CollectorRegistry``. Children for the label values
known in advance are created at start, so every series appears from the first
scrape.

The four series every request touches (requests, request duration, region
decisions, URL cache results) are counted in plain Python by
:class:`HotPathCollector` and rendered at scrape time: the gateway serves
from one event loop per process, so no lock is needed, and a request pays a
dictionary update instead of prometheus_client's locked increments (about a
fifth of the cost). The scrape output is the same as with
``Counter``/``Histogram``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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
    "bad_certificate",
)
DECISION_REASONS = ("nearest", "residency", "failover", "default", "header")

# Redirects and URL issuance take tens of microseconds; streams take minutes.
_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)  # fmt: skip
_SIGNING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)


class HotPathCollector(Collector):
    """Per-request counters and the request-duration histogram, lock-free."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # route -> per-bucket counts (not cumulative; +Inf last), then the sum.
        self.durations: dict[str, list[float]] = {}
        self.decisions: dict[tuple[str, str], int] = {}
        self.url_cache = {"hit": 0, "miss": 0}
        self.decision_cache_hits = 0
        self._bounds = _DURATION_BUCKETS

    def observe(self, route: str, method: str, code: int, seconds: float) -> None:
        key = (route, method, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        counts = self.durations.get(route)
        if counts is None:
            counts = self.durations[route] = [0.0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> list[Metric]:
        requests = CounterMetricFamily(
            "gateway_requests",
            "HTTP requests answered, by route, method and status code.",
            labels=["route", "method", "code"],
        )
        for (route, method, code), value in sorted(self.requests.items()):
            requests.add_metric([route, method, str(code)], value)
        durations = HistogramMetricFamily(
            "gateway_request_duration_seconds",
            "Time from request start to the end of the response, by route.",
            labels=["route"],
        )
        for route, counts in sorted(self.durations.items()):
            buckets, running = [], 0.0
            for bound, count in zip((*self._bounds, float("inf")), counts[:-1], strict=True):
                running += count
                buckets.append((_le(bound), running))
            durations.add_metric([route], buckets, counts[-1])
        decisions = CounterMetricFamily(
            "gateway_region_decisions",
            "Regions chosen for downloads, by region and why.",
            labels=["region", "reason"],
        )
        for (region, reason), value in sorted(self.decisions.items()):
            decisions.add_metric([region, reason], value)
        cache = CounterMetricFamily(
            "gateway_signed_url_cache",
            "Signed-URL cache lookups, by result (hit, miss).",
            labels=["result"],
        )
        for result, value in self.url_cache.items():
            cache.add_metric([result], value)
        decided = CounterMetricFamily(
            "gateway_decision_cache_hits",
            "Requests answered from the cache of decisions (repeated identical requests).",
        )
        decided.add_metric([], self.decision_cache_hits)
        return [requests, durations, decisions, cache, decided]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Metrics:
    """The gateway's metric families, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.auth_failures = Counter(
            "gateway_auth_failures",
            "Device tokens refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.signing_duration = Histogram(
            "gateway_signing_duration_seconds",
            "Time to sign one URL, by backend type.",
            ["backend"],
            buckets=_SIGNING_BUCKETS,
            registry=registry,
        )
        self.signing_errors = Counter(
            "gateway_signing_errors",
            "URLs a backend could not sign (no credentials, a refused expiry), by backend type.",
            ["backend"],
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
        self.hot = HotPathCollector()
        registry.register(self.hot)
        self._auth_failure = {r: self.auth_failures.labels(r) for r in AUTH_FAILURE_REASONS}
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
            self.signing_errors.labels(kind)

    def track_inflight(self, count: Callable[[], float]) -> None:
        """Read the in-flight gauge from ``count`` at scrape time (no per-request cost)."""
        self.inflight.set_function(count)

    def request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.hot.observe(route, method, code, seconds)

    def url_cache_result(self, hit: bool) -> None:
        self.hot.url_cache["hit" if hit else "miss"] += 1

    def auth_failure(self, reason: str) -> None:
        child = self._auth_failure.get(reason)
        if child is None:
            child = self._auth_failure[reason] = self.auth_failures.labels(reason)
        child.inc()

    def decision(self, region: str, reason: str, amount: int = 1) -> None:
        decisions = self.hot.decisions
        key = (region, reason)
        decisions[key] = decisions.get(key, 0) + amount

    def upstream(self, region: str, code: str, seconds: float) -> None:
        self.upstream_requests.labels(region, code).inc()
        self.upstream_duration.labels(region).observe(seconds)

    def streamed(self, region: str, amount: int) -> None:
        self.streamed_bytes.labels(region).inc(amount)

    def failover(self, region: str, reason: str) -> None:
        self.stream_failovers.labels(reason).inc()

    def signing_error(self, kind: str) -> None:
        self.signing_errors.labels(kind).inc()

    def signing_time(self, kind: str) -> Histogram:
        hist = self._signing.get(kind)
        if hist is None:
            hist = self._signing[kind] = self.signing_duration.labels(kind)
        return hist
