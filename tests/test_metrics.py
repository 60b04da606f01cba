"""The lock-free hot-path series render exactly like prometheus_client's own."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import _DURATION_BUCKETS, HotPathCollector, Metrics


def test_hot_path_exposition_equals_prometheus_client() -> None:
    rng = random.Random(7)
    hot = HotPathCollector()
    ours = CollectorRegistry()
    ours.register(hot)
    reference = CollectorRegistry()
    requests = Counter(
        "gateway_requests",
        "HTTP requests answered, by route, method and status code.",
        ["route", "method", "code"],
        registry=reference,
    )
    durations = Histogram(
        "gateway_request_duration_seconds",
        "Time from request start to the end of the response, by route.",
        ["route"],
        buckets=_DURATION_BUCKETS,
        registry=reference,
    )
    # Values on bucket bounds, between them and beyond the last one.
    values = [*_DURATION_BUCKETS, 0.0, 1e-7, 400.0, *(rng.uniform(0, 2) for _ in range(500))]
    for seconds in values:
        route = rng.choice(["binaries", "urls"])
        code = rng.choice([307, 401, 403])
        hot.observe(route, "GET", code, seconds)
        requests.labels(route, "GET", str(code)).inc()
        durations.labels(route).observe(seconds)

    def series(registry: CollectorRegistry, prefix: str) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(
            line for line in text.splitlines() if line.startswith(prefix) and "_created" not in line
        )

    for prefix in ("gateway_requests_total", "gateway_request_duration_seconds_"):
        assert series(ours, prefix) == series(reference, prefix)


def test_every_label_value_known_in_advance_appears_from_the_start() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.prepare(["eu", "us"], ["local"])
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_region_decisions_total{reason="failover",region="us"} 0.0' in text
    assert 'gateway_signed_url_cache_total{result="miss"} 0.0' in text
    assert "gateway_decision_cache_hits_total 0.0" in text
    metrics.decision("eu", "nearest")
    metrics.url_cache_result(hit=True)
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_region_decisions_total{reason="nearest",region="eu"} 1.0' in text
    assert 'gateway_signed_url_cache_total{result="hit"} 1.0' in text
