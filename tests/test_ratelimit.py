"""Per-device token bucket: burst, refill, exact Retry-After, bounded memory."""

from __future__ import annotations

import math

import pytest

from gateway.ratelimit import RateLimiter


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=4.0, burst=3, clock=clock)
    assert [limiter.take("dev-1") for _ in range(3)] == [0.0, 0.0, 0.0]
    # Empty: the next token comes after 1/rate.
    assert limiter.take("dev-1") == 0.25
    clock.now += 0.125
    assert limiter.take("dev-1") == 0.125
    clock.now += 0.125
    assert limiter.take("dev-1") == 0.0
    assert limiter.take("dev-1") == 0.25
    # A long pause refills to the burst, never beyond it.
    clock.now += 60
    assert [limiter.take("dev-1") for _ in range(4)] == [0.0, 0.0, 0.0, 0.25]


def test_sustained_rate_allows_exactly_rate_per_second() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=4.0, burst=1, clock=clock)
    allowed = 0
    for _ in range(1000):  # 10 s in steps of 10 ms, one request per step
        if limiter.take("dev") == 0.0:
            allowed += 1
        clock.now += 0.01
    assert allowed == 40


def test_retry_after_is_exact_and_a_denied_request_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=2, clock=clock)
    assert limiter.take("d") == 0.0
    assert limiter.take("d") == 0.0
    # Denials do not push the next token further away.
    assert [limiter.take("d") for _ in range(5)] == [0.5] * 5
    clock.now += 0.5
    assert limiter.take("d") == 0.0
    assert limiter.take("d") == 0.5
    assert math.ceil(limiter.take("d")) == 1  # what the caller sends as Retry-After


def test_fractional_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=0.5, burst=1, clock=clock)
    assert limiter.take("d") == 0.0
    assert limiter.take("d") == 2.0
    clock.now += 1.5
    assert limiter.take("d") == 0.5
    clock.now += 0.5
    assert limiter.take("d") == 0.0


def test_devices_are_independent() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 1.0]
    assert [limiter.take("b") for _ in range(3)] == [0.0, 0.0, 1.0]
    clock.now += 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == 1.0
    assert limiter.take("b") == 0.0


def test_limits_hold_across_generation_turns() -> None:
    # burst / rate = 2 s per generation: a device seen in the previous
    # generation keeps its (partly empty) bucket when the generations turn.
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=4, clock=clock)
    assert [limiter.take("d") for _ in range(4)] == [0.0] * 4
    clock.now += 1.9  # before the turn: 3.8 tokens back
    assert [limiter.take("d") for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.1)]
    clock.now += 0.2  # the generations turn here; "d" moves forward, 1.2 tokens
    assert limiter.take("d") == 0.0
    assert limiter.take("d") == pytest.approx(0.4)
    assert len(limiter) == 1


def test_idle_entries_are_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=5, clock=clock)  # full after 0.5 s
    for i in range(1000):
        assert limiter.take(f"dev-{i}") == 0.0
    assert len(limiter) == 1000
    clock.now += 0.6
    limiter.take("other")
    assert len(limiter) == 1001  # the old ones are one generation back
    clock.now += 0.6
    limiter.take("other")
    assert len(limiter) == 1  # and gone a generation later
    clock.now += 10
    limiter.take("late")
    assert len(limiter) == 1  # a long gap drops both generations at once
    # A dropped device starts with a full bucket, as it would have anyway.
    assert [limiter.take("dev-1") for _ in range(6)] == [0.0] * 5 + [pytest.approx(0.1)]


def test_memory_is_bounded_under_two_million_devices() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=20, max_entries=10_000, clock=clock)
    largest = 0
    for i in range(2_000_000):
        limiter.take(str(i))
        if i % 997 == 0:
            largest = max(largest, len(limiter))
            clock.now += 0.001
    largest = max(largest, len(limiter))
    assert 9_000 < largest <= 10_000
    # Recent devices are still limited after the flood.
    recent = str(1_999_999)
    assert [limiter.take(recent) for _ in range(19)] == [0.0] * 19
    assert limiter.take(recent) > 0


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0.0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(rate=1.0, burst=0)
    with pytest.raises(ValueError, match="max_entries"):
        RateLimiter(rate=1.0, burst=1, max_entries=0)


def test_inexact_rates_still_allow_whole_bursts() -> None:
    # 1/10 s is not a binary fraction: summed steps must not cost a token.
    clock = Clock(now=3_000_000.0)
    limiter = RateLimiter(rate=10.0, burst=20, clock=clock)
    for _ in range(50):
        results = [limiter.take("d") for _ in range(21)]
        assert results[:20] == [0.0] * 20
        assert results[20] == pytest.approx(0.1)
        clock.now += 2.0
