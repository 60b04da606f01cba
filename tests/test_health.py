"""Region health: active thresholds, passive ejection with back-off, ejection cap,
panic, change callbacks, the active check loop, and the HTTP probe against a
real server that can be switched to 5xx, slow or gone."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from gateway.health import RegionHealth, http_probe
from tests.support import free_port, serve

REGIONS = ("eu", "us", "ap", "sa")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(
    clock: Clock,
    regions: tuple[str, ...] = REGIONS,
    changes: list[tuple[str, bool]] | None = None,
    **options: Any,
) -> RegionHealth:
    settings: dict[str, Any] = {
        "unhealthy_after": 2,
        "healthy_after": 3,
        "ejection_base": 30.0,
        "ejection_max": 300.0,
        "max_ejected_share": 0.5,
    }
    settings.update(options)
    on_change = None if changes is None else lambda r, up: changes.append((r, up))
    return RegionHealth(regions, on_change=on_change, clock=clock, **settings)


# --------------------------------------------------------------------------- active thresholds


def test_all_regions_start_healthy() -> None:
    health = make(Clock())
    assert health.healthy == frozenset(REGIONS)
    assert health.regions == REGIONS


def test_active_thresholds_both_ways() -> None:
    changes: list[tuple[str, bool]] = []
    health = make(Clock(), changes=changes)
    health.record_check("eu", False)
    assert "eu" in health.healthy  # one failure is not enough
    health.record_check("eu", True)  # a success breaks the streak
    health.record_check("eu", False)
    assert "eu" in health.healthy
    health.record_check("eu", False)
    assert health.healthy == {"us", "ap", "sa"}
    assert changes == [("eu", False)]
    # Back up only after healthy_after (3) successes in a row.
    health.record_check("eu", True)
    health.record_check("eu", True)
    health.record_check("eu", False)
    health.record_check("eu", True)
    health.record_check("eu", True)
    assert "eu" not in health.healthy
    health.record_check("eu", True)
    assert health.healthy == frozenset(REGIONS)
    assert changes == [("eu", False), ("eu", True)]


def test_healthy_is_the_same_object_until_something_changes() -> None:
    health = make(Clock())
    before = health.healthy
    health.record_check("eu", True)
    health.record_success("eu")
    health.record_failure("eu")  # one failure: below the threshold
    assert health.healthy is before
    health.record_check("us", False)
    health.record_check("us", False)
    assert health.healthy is not before


# --------------------------------------------------------------------------- passive ejection


def test_consecutive_failures_eject_for_the_base_time() -> None:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    health = make(clock, changes=changes)
    health.record_failure("eu")
    health.record_success("eu")  # the streak is broken
    health.record_failure("eu")
    assert "eu" in health.healthy
    health.record_failure("eu")
    assert health.healthy == {"us", "ap", "sa"}
    assert changes == [("eu", False)]
    clock.now += 29.9
    assert "eu" not in health.healthy
    clock.now += 0.1
    assert health.healthy == frozenset(REGIONS)
    assert changes == [("eu", False), ("eu", True)]


def test_failures_during_an_ejection_do_not_extend_it() -> None:
    clock = Clock()
    health = make(clock)
    health.record_failure("eu")
    health.record_failure("eu")
    clock.now += 20
    for _ in range(10):  # downloads that started before the ejection
        health.record_failure("eu")
    clock.now += 10
    assert "eu" in health.healthy
    # The streak starts from zero after the ejection.
    health.record_failure("eu")
    assert "eu" in health.healthy


def test_repeat_ejections_double_up_to_the_cap_and_reset_after_a_quiet_time() -> None:
    clock = Clock()
    health = make(clock, ejection_base=30.0, ejection_max=200.0)

    def eject_and_measure() -> float:
        health.record_failure("eu")
        health.record_failure("eu")
        assert "eu" not in health.healthy
        started = clock.now
        while "eu" not in health.healthy:
            clock.now += 1
        return clock.now - started

    assert eject_and_measure() == 30
    assert eject_and_measure() == 60
    assert eject_and_measure() == 120
    assert eject_and_measure() == 200  # capped
    assert eject_and_measure() == 200
    clock.now += 199  # in for less than ejection_max: the streak goes on
    assert eject_and_measure() == 200
    clock.now += 200  # in for ejection_max: it starts over
    assert eject_and_measure() == 30


def test_an_active_down_region_stays_out_when_its_ejection_ends() -> None:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    health = make(clock, changes=changes)
    health.record_failure("eu")
    health.record_failure("eu")
    health.record_check("eu", False)
    health.record_check("eu", False)
    assert changes == [("eu", False)]  # one change: it was already out
    clock.now += 30
    assert "eu" not in health.healthy
    assert changes == [("eu", False)]
    for _ in range(3):
        health.record_check("eu", True)
    assert "eu" in health.healthy
    assert changes == [("eu", False), ("eu", True)]


def test_ejection_ends_are_seen_by_healthy_for_and_record_failure_too() -> None:
    clock = Clock()
    health = make(clock, regions=("eu", "us"))
    health.record_failure("eu")
    health.record_failure("eu")
    assert health.healthy_for(("eu", "us")) == {"us"}
    clock.now += 30
    assert health.healthy_for(("eu", "us")) == {"eu", "us"}
    # Ejected again, then the cap (1 of 2) is free again once it ends.
    health.record_failure("eu")
    health.record_failure("eu")
    health.record_failure("us")
    health.record_failure("us")  # refused: eu is out
    assert health.healthy == {"us"}
    clock.now += 60
    health.record_failure("us")  # eu's ejection ended: now us may go
    assert health.healthy == {"eu"}


# --------------------------------------------------------------------------- cap and panic


@pytest.fixture
def health_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog attached to gateway.health itself: the CLI may have stopped
    the "gateway" logger from propagating to the root logger in this process."""
    logger = logging.getLogger("gateway.health")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # each record once, whatever the root logger does
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_never_more_than_the_share_of_all_regions_is_ejected(
    health_log: pytest.LogCaptureFixture,
) -> None:
    health = make(Clock(), max_ejected_share=0.5)
    for region in REGIONS:
        for _ in range(5):
            health.record_failure(region)
    # 2 of 4 out; the last ones stay in.
    assert health.healthy == {"ap", "sa"}
    assert health_log.text.count("region ap: not ejected after 2 upstream failures") == 1


def test_the_share_applies_to_each_residency_group() -> None:
    # All regions: cap 2 of 4; the group (eu, us): cap 1 of 2.
    health = make(Clock(), groups=[("eu", "us")], max_ejected_share=0.5)
    for region in ("eu", "us", "ap"):
        health.record_failure(region)
        health.record_failure(region)
    assert health.healthy == {"us", "sa"}


def test_a_single_region_is_never_ejected_passively() -> None:
    health = make(Clock(), regions=("eu",), max_ejected_share=0.99)
    for _ in range(10):
        health.record_failure("eu")
    assert health.healthy == {"eu"}
    everything = make(Clock(), regions=("eu",), max_ejected_share=1.0)
    everything.record_failure("eu")
    everything.record_failure("eu")
    assert everything.healthy == frozenset()


def test_active_down_regions_do_not_count_against_the_cap() -> None:
    health = make(Clock(), max_ejected_share=0.25)
    for region in ("eu", "us"):
        health.record_check(region, False)
        health.record_check(region, False)
    health.record_failure("ap")
    health.record_failure("ap")
    assert health.healthy == {"sa"}


def test_panic_returns_the_whole_group_when_none_of_it_is_healthy() -> None:
    health = make(Clock())
    eu_rule = ("eu", "us")
    for region in eu_rule:
        health.record_check(region, False)
        health.record_check(region, False)
    assert health.healthy == {"ap", "sa"}  # honest: /readyz and the gauge
    assert health.healthy_for(eu_rule) == {"eu", "us"}  # panic: try them anyway
    assert health.healthy_for(("eu", "ap")) == {"ap"}
    assert health.healthy_for(REGIONS) == {"ap", "sa"}
    for region in ("ap", "sa"):
        health.record_check(region, False)
        health.record_check(region, False)
    assert health.healthy == frozenset()
    assert health.healthy_for(REGIONS) == frozenset(REGIONS)
    assert health.healthy_for(["eu", "us"]) == {"eu", "us"}  # any sequence


def test_healthy_for_is_cached_until_a_change() -> None:
    health = make(Clock())
    group = ("eu", "us")
    first = health.healthy_for(group)
    assert health.healthy_for(group) is first
    health.record_check("eu", False)
    health.record_check("eu", False)
    assert health.healthy_for(group) == {"us"}


# --------------------------------------------------------------------------- reload, validation


def test_inherit_keeps_the_state_of_regions_that_stay() -> None:
    clock = Clock()
    old = make(clock)
    old.record_check("eu", False)
    old.record_check("eu", False)
    old.record_failure("us")
    old.record_failure("us")
    changes: list[tuple[str, bool]] = []
    new = make(clock, regions=("eu", "us", "af"), changes=changes)
    new.inherit(old)
    assert new.healthy == {"af"}
    assert sorted(changes) == [("eu", False), ("us", False)]
    clock.now += 30
    assert new.healthy == {"us", "af"}
    assert changes[-1] == ("us", True)
    # The counters came along too: eu needs its 3 good checks, not a fresh start.
    new.record_check("eu", True)
    assert "eu" not in new.healthy


def test_invalid_parameters() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="at least one region"):
        make(clock, regions=())
    with pytest.raises(ValueError, match="unique"):
        make(clock, regions=("eu", "eu"))
    with pytest.raises(ValueError, match="unhealthy_after"):
        make(clock, unhealthy_after=0)
    with pytest.raises(ValueError, match="ejection_base"):
        make(clock, ejection_base=600.0)
    with pytest.raises(ValueError, match="max_ejected_share"):
        make(clock, max_ejected_share=1.5)
    with pytest.raises(ValueError, match="unknown regions in a group: xx"):
        make(clock, groups=[("eu", "xx")])

    async def probe() -> bool:
        return True

    with pytest.raises(ValueError, match="probes for unknown regions: xx"):
        asyncio.run(make(clock).run_active_checks({"xx": probe}, 1.0, 1.0))


# --------------------------------------------------------------------------- the active loop


def test_active_loop_keeps_its_interval_with_a_stalled_probe() -> None:
    interval, timeout = 0.1, 0.04
    starts: dict[str, list[float]] = {"eu": [], "us": [], "ap": []}
    stalled_cancelled: list[bool] = []

    async def scenario() -> RegionHealth:
        loop = asyncio.get_running_loop()
        health = RegionHealth(
            ("eu", "us", "ap", "sa"), unhealthy_after=2, healthy_after=2, ejection_base=30
        )

        async def good() -> bool:
            starts["eu"].append(loop.time())
            return True

        async def stalled() -> bool:
            starts["us"].append(loop.time())
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                stalled_cancelled.append(True)
                raise
            return True

        async def broken() -> bool:
            starts["ap"].append(loop.time())
            raise OSError("connection refused")

        # "sa" has no probe: it is never checked and stays up.
        task = asyncio.create_task(
            health.run_active_checks({"eu": good, "us": stalled, "ap": broken}, interval, timeout)
        )
        await asyncio.sleep(0.55)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return health

    health = asyncio.run(scenario())
    assert health.healthy == {"eu", "sa"}
    for region, times in starts.items():
        assert 5 <= len(times) <= 7, region
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Every round starts one interval after the previous, stalled probe or not.
        assert all(abs(gap - interval) < 0.03 for gap in gaps), (region, gaps)
    # Every stalled probe was cancelled at its timeout (the last one by the cancel).
    assert len(stalled_cancelled) == len(starts["us"])


def test_active_loop_brings_a_region_back_and_reports_changes() -> None:
    changes: list[tuple[str, bool]] = []
    state = {"ok": False}

    async def scenario() -> None:
        health = RegionHealth(
            ("eu",),
            unhealthy_after=2,
            healthy_after=2,
            on_change=lambda r, up: changes.append((r, up)),
        )

        async def probe() -> bool:
            return state["ok"]

        task = asyncio.create_task(health.run_active_checks({"eu": probe}, 0.02, 0.5))
        try:
            await _until(lambda: health.healthy == frozenset(), 2.0)
            state["ok"] = True
            await _until(lambda: health.healthy == {"eu"}, 2.0)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert changes == [("eu", False), ("eu", True)]


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- HTTP probe


class Switchable:
    """An ASGI origin whose health answer the test switches: a status, or slow."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen.append((scope["method"], scope["query_string"].decode()))
        if self.delay:
            await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[Switchable, str]]:
    app = Switchable()
    with serve(app, timeout_graceful_shutdown=1) as base:
        yield app, base


def probe_once(url: str, expect_up: bool, timeout: float = 0.3) -> bool:
    """One round of the active loop with an HTTP probe of ``url``; the region
    starts in the opposite state, so the answer proves the probe's verdict."""

    async def run() -> bool:
        health = RegionHealth(("eu",), unhealthy_after=1, healthy_after=1)
        if expect_up:
            health.record_check("eu", False)
        assert (health.healthy == {"eu"}) is not expect_up
        counter = {"n": 0}

        async def url_factory() -> str:
            counter["n"] += 1
            return f"{url}/health/object?sig={counter['n']}"

        async with httpx.AsyncClient() as client:
            task = asyncio.create_task(
                health.run_active_checks({"eu": http_probe(client, url_factory)}, 0.05, timeout)
            )
            # One full round: the loop records, then sleeps until the next one.
            await asyncio.sleep(timeout + 0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return health.healthy == {"eu"}

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("status", "up"), [(200, True), (204, True), (302, True), (403, True), (404, True),
                       (499, True), (500, False), (503, False)],
)  # fmt: skip
def test_http_probe_is_up_below_500(origin: tuple[Switchable, str], status: int, up: bool) -> None:
    app, base = origin
    app.status, app.delay = status, 0.0
    app.seen.clear()
    assert probe_once(base, expect_up=up) is up
    # A HEAD of a freshly signed URL each time.
    assert app.seen[0] == ("HEAD", "sig=1")


def test_http_probe_slower_than_the_timeout_is_down(origin: tuple[Switchable, str]) -> None:
    app, base = origin
    app.status, app.delay = 200, 0.5
    try:
        assert probe_once(base, expect_up=False, timeout=0.15) is False
    finally:
        app.delay = 0.0
    # A timely answer is up again; the timeout leaves room for a busy test machine.
    assert probe_once(base, expect_up=True, timeout=1.0) is True


def test_http_probe_connection_refused_is_down() -> None:
    assert probe_once(f"http://127.0.0.1:{free_port()}", expect_up=False) is False


def test_http_probe_against_a_server_that_dies_and_returns(
    health_log: pytest.LogCaptureFixture,
) -> None:
    # The whole chain with a real server: up, 500 -> down, 200 -> up again.
    app = Switchable()
    changes: list[tuple[str, bool]] = []

    async def scenario(base: str) -> None:
        health = RegionHealth(
            ("eu", "us"),
            unhealthy_after=2,
            healthy_after=2,
            on_change=lambda r, up: changes.append((r, up)),
        )

        async def url_for(region: str) -> str:
            return f"{base}/{region}/health?sig=x"

        def factory(region: str) -> Callable[[], Awaitable[str]]:
            return lambda: url_for(region)

        async with httpx.AsyncClient() as client:
            probes = {r: http_probe(client, factory(r)) for r in ("eu", "us")}
            task = asyncio.create_task(health.run_active_checks(probes, 0.02, 0.5))
            try:
                await asyncio.sleep(0.1)
                assert health.healthy == {"eu", "us"}
                app.status = 500
                await _until(lambda: health.healthy == frozenset(), 2.0)
                app.status = 404
                await _until(lambda: health.healthy == {"eu", "us"}, 2.0)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    with serve(app) as base:
        asyncio.run(scenario(base))
    assert sorted(changes) == [("eu", False), ("eu", True), ("us", False), ("us", True)]
    log = health_log.text
    assert "region eu: down after 2 failed health checks (last: unhealthy answer)" in log
    assert "region eu: up (health checks pass)" in log
    assert "sig=" not in log  # signed URLs never reach the log
