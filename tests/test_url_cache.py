"""Signed-URL cache: deterministic windows, enough life left, single-flight, bounded."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.signers import SignedURL
from gateway.signers.local import LocalSigner, verify_local_signature
from gateway.url_cache import SignedURLCache

SECRET = b"secret"
BASE = "http://127.0.0.1:9000"
KEY = "firmware/acme-x1/1.4.2/rootfs.img"
TTL, WINDOW, MIN_REMAINING = 900, 300, 60
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SignerError(RuntimeError):
    pass


class CountingSigner:
    """Delegates to a real LocalSigner; records calls, optionally slow or failing."""

    kind = "local"

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.inner = LocalSigner(BASE, SECRET)
        self.delay = delay
        self.fail = fail
        self.calls: list[tuple[str, int, int]] = []
        self.closed = False

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        self.calls.append((key, signed_at, expires_at))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise SignerError("backend credentials expired")
        return await self.inner.sign(key, signed_at, expires_at)

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


def make_cache(
    clock: Clock,
    *,
    ttl: int = TTL,
    window: int = WINDOW,
    min_remaining: int = MIN_REMAINING,
    maxsize: int = 1000,
    observe: list[tuple[str, float]] | None = None,
) -> SignedURLCache:
    return SignedURLCache(
        ttl=ttl,
        window=window,
        min_remaining=min_remaining,
        maxsize=maxsize,
        clock=clock,
        observe=None if observe is None else (lambda kind, s: observe.append((kind, s))),
    )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def assert_valid_local_url(signed: SignedURL, key: str) -> None:
    """The URL is one the built-in origin accepts, expiring when the cache says."""
    parts = urlsplit(signed.url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE
    assert parts.path == f"/{key}"
    q = query(signed.url)
    assert int(q["expires"]) == signed.expires_at
    assert verify_local_signature(SECRET, parts.path, signed.expires_at, q["sig"])


# --------------------------------------------------------------------------- reuse


def test_same_key_within_a_window_is_one_signature() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner()

    async def scenario() -> list[tuple[SignedURL, bool]]:
        first = await cache.get("eu-central", signer, KEY)
        clock.now += 1.5
        second = await cache.get("eu-central", signer, KEY)
        clock.now += 30
        third = await cache.get("eu-central", signer, KEY)
        return [first, second, third]

    (url1, hit1), (url2, hit2), (url3, hit3) = asyncio.run(scenario())

    assert (hit1, hit2, hit3) == (False, True, True)
    assert url1.url == url2.url == url3.url
    assert url1.expires_at == url2.expires_at
    assert len(signer.calls) == 1
    assert len(cache) == 1
    assert_valid_local_url(url1, KEY)


def test_two_workers_issue_byte_identical_urls() -> None:
    clock = Clock(T0 + 123.456)
    keys = [KEY, "firmware/acme-x2/2.0/app.bin", "a", "shared/acme/boot.img"]

    async def issue() -> list[str]:
        cache = make_cache(clock)
        signer = CountingSigner()
        return [(await cache.get("eu-central", signer, k))[0].url for k in keys]

    worker_a = asyncio.run(issue())
    clock.now += 2  # the second worker asks a little later, same window
    worker_b = asyncio.run(issue())
    assert worker_a == worker_b
    assert len(set(worker_a)) == len(keys)


def test_identical_urls_for_every_instant_of_a_window() -> None:
    clock = Clock()
    cache_a, cache_b = make_cache(clock), make_cache(clock)
    signer = CountingSigner()

    async def scenario() -> None:
        for step in range(0, 2 * WINDOW * 10, 37):
            clock.now = T0 + step / 10
            a, _ = await cache_a.get("r", signer, KEY)
            b, _ = await make_cache(clock).get("r", signer, KEY)
            c, _ = await cache_b.get("r", signer, KEY)
            assert a == b == c

    asyncio.run(scenario())


def test_new_url_after_the_window_boundary() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner()

    async def scenario() -> None:
        url1, _ = await cache.get("eu-central", signer, KEY)
        start = url1.expires_at - TTL
        clock.now = start + WINDOW - 0.001  # last instant of the window
        url2, hit2 = await cache.get("eu-central", signer, KEY)
        assert hit2
        assert url2 == url1
        clock.now = start + WINDOW  # first instant of the next one
        url3, hit3 = await cache.get("eu-central", signer, KEY)
        assert not hit3
        assert url3.url != url1.url
        assert url3.expires_at == url1.expires_at + WINDOW
        assert_valid_local_url(url3, KEY)
        url4, hit4 = await cache.get("eu-central", signer, KEY)
        assert hit4
        assert url4 == url3

    asyncio.run(scenario())
    assert len(signer.calls) == 2


def test_expiry_is_window_start_plus_ttl() -> None:
    clock = Clock(T0 + 1000.7)
    cache = make_cache(clock)
    signer = CountingSigner()
    url, _ = asyncio.run(cache.get("eu-central", signer, KEY))

    (key, signed_at, expires_at) = signer.calls[0]
    assert key == KEY
    assert expires_at == signed_at + TTL == url.expires_at
    # The window start is a whole second at or before now, less than a window ago.
    assert isinstance(signed_at, int)
    assert signed_at <= clock.now < signed_at + WINDOW
    index, start = cache.window_of(KEY, clock.now)
    assert start == signed_at
    assert cache.window_of(KEY, start) == (index, start)
    assert cache.window_of(KEY, start + WINDOW - 1) == (index, start)
    assert cache.window_of(KEY, start + WINDOW) == (index + 1, start + WINDOW)


def test_every_url_has_at_least_min_remaining_over_many_windows() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner()
    keys = [KEY, "b", "firmware/x/y.bin", "zz/top"]
    seen: dict[str, set[str]] = {k: set() for k in keys}

    async def sweep() -> None:
        # 5 windows in steps of 0.7 s: every offset within a window, including the ends.
        for step in range(0, 5 * WINDOW * 10, 7):
            clock.now = T0 + step / 10
            for key in keys:
                url, _ = await cache.get("eu-central", signer, key)
                life = url.expires_at - clock.now
                assert life >= MIN_REMAINING, (key, clock.now, url.expires_at)
                assert life <= TTL
                start = url.expires_at - TTL
                assert start <= clock.now < start + WINDOW
                seen[key].add(url.url)

    asyncio.run(sweep())
    for key in keys:
        assert 5 <= len(seen[key]) <= 6  # one URL per window touched
    assert len(signer.calls) == sum(len(urls) for urls in seen.values())


def test_tight_window_still_leaves_min_remaining() -> None:
    clock = Clock()
    cache = make_cache(clock, ttl=120, window=60, min_remaining=60)
    signer = CountingSigner()

    async def sweep() -> None:
        for step in range(0, 3000):
            clock.now = T0 + step * 0.13
            url, _ = await cache.get("r", signer, KEY)
            assert url.expires_at - clock.now >= 60

    asyncio.run(sweep())


def test_windows_of_different_keys_are_spread() -> None:
    clock = Clock()
    cache = make_cache(clock)
    starts = {cache.window_of(f"firmware/p{i}/fw.bin", clock.now)[1] for i in range(200)}
    # Not one synchronised expiry for the fleet: the starts spread over the window.
    assert len(starts) > 100
    assert max(starts) - min(starts) < WINDOW


# --------------------------------------------------------------------------- entries


def test_different_regions_and_keys_are_different_entries() -> None:
    clock = Clock()
    cache = make_cache(clock)
    eu, us = CountingSigner(), CountingSigner()
    eu.inner = LocalSigner("http://127.0.0.1:9000", SECRET)
    us.inner = LocalSigner("http://127.0.0.1:9001/us", SECRET)

    async def scenario() -> None:
        a, hit_a = await cache.get("eu-central", eu, KEY)
        b, hit_b = await cache.get("us-east", us, KEY)
        c, hit_c = await cache.get("eu-central", eu, "firmware/acme-x1/other.img")
        assert not (hit_a or hit_b or hit_c)
        assert len({a.url, b.url, c.url}) == 3
        assert b.url.startswith("http://127.0.0.1:9001/us/" + KEY + "?")
        assert len(cache) == 3
        # Each is then served from its own entry.
        assert await cache.get("eu-central", eu, KEY) == (a, True)
        assert await cache.get("us-east", us, KEY) == (b, True)
        assert await cache.get("eu-central", eu, "firmware/acme-x1/other.img") == (c, True)

    asyncio.run(scenario())
    assert len(eu.calls) == 2
    assert len(us.calls) == 1


def test_same_signer_two_regions_are_signed_separately() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner()

    async def scenario() -> None:
        await cache.get("a", signer, KEY)
        await cache.get("b", signer, KEY)
        assert (await cache.get("a", signer, KEY))[1]
        assert (await cache.get("b", signer, KEY))[1]

    asyncio.run(scenario())
    assert len(signer.calls) == 2
    assert len(cache) == 2


def test_cache_is_bounded() -> None:
    clock = Clock()
    cache = make_cache(clock, maxsize=10)
    signer = CountingSigner()
    keys = [f"firmware/p{i}/fw.bin" for i in range(25)]

    async def scenario() -> None:
        for key in keys:
            await cache.get("r", signer, key)
            assert len(cache) <= 10
        assert len(cache) == 10
        # The newest are still there; the oldest went first.
        assert (await cache.get("r", signer, keys[-1]))[1]
        assert (await cache.get("r", signer, keys[15]))[1]
        assert not (await cache.get("r", signer, keys[0]))[1]
        assert len(cache) == 10

    asyncio.run(scenario())
    assert len(signer.calls) == 26


def test_replacing_an_entry_does_not_evict_another() -> None:
    clock = Clock()
    cache = make_cache(clock, maxsize=2)
    signer = CountingSigner()

    async def scenario() -> None:
        await cache.get("r", signer, "a")
        await cache.get("r", signer, "b")
        clock.now += WINDOW  # next window: both are re-signed in place
        await cache.get("r", signer, "a")
        assert len(cache) == 2
        assert (await cache.get("r", signer, "a"))[1]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- single-flight


def test_concurrent_misses_sign_once() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner(delay=0.05)

    async def scenario() -> list[tuple[SignedURL, bool]]:
        return await asyncio.gather(*(cache.get("eu-central", signer, KEY) for _ in range(50)))

    results = asyncio.run(scenario())

    assert len(signer.calls) == 1
    assert len(results) == 50
    assert len({url.url for url, _ in results}) == 1
    assert_valid_local_url(results[0][0], KEY)
    assert len(cache) == 1


def test_concurrent_misses_for_different_keys_sign_each_once() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner(delay=0.02)
    keys = ["a", "b", "c"]

    async def scenario() -> list[tuple[SignedURL, bool]]:
        return await asyncio.gather(*(cache.get("r", signer, keys[i % 3]) for i in range(30)))

    results = asyncio.run(scenario())
    assert sorted(call[0] for call in signer.calls) == keys
    for i, (url, _) in enumerate(results):
        assert urlsplit(url.url).path == "/" + keys[i % 3]


def test_signer_error_reaches_every_waiter_and_is_not_cached() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner(delay=0.05, fail=True)

    async def scenario() -> None:
        results = await asyncio.gather(
            *(cache.get("eu-central", signer, KEY) for _ in range(50)), return_exceptions=True
        )
        assert len(signer.calls) == 1
        assert all(isinstance(r, SignerError) for r in results), results
        assert len(cache) == 0

        # Not cached: the next request signs again, and fails again.
        with pytest.raises(SignerError, match="credentials expired"):
            await cache.get("eu-central", signer, KEY)
        assert len(signer.calls) == 2

        # Once the backend recovers, the same window signs normally.
        signer.fail = False
        url, hit = await cache.get("eu-central", signer, KEY)
        assert not hit
        assert_valid_local_url(url, KEY)
        assert len(signer.calls) == 3
        assert await cache.get("eu-central", signer, KEY) == (url, True)

    asyncio.run(scenario())


def test_a_cancelled_leader_does_not_strand_the_followers() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner(delay=0.05)

    async def scenario() -> None:
        leader = asyncio.create_task(cache.get("r", signer, KEY))
        await asyncio.sleep(0)  # the leader starts signing
        followers = [asyncio.create_task(cache.get("r", signer, KEY)) for _ in range(5)]
        await asyncio.sleep(0.01)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        urls = await asyncio.wait_for(asyncio.gather(*followers), timeout=2)
        assert len({url.url for url, _ in urls}) == 1
        assert_valid_local_url(urls[0][0], KEY)
        assert len(signer.calls) == 2  # the cancelled flight, then one follower's

    asyncio.run(scenario())


def test_a_cancelled_follower_does_not_cancel_the_flight() -> None:
    clock = Clock()
    cache = make_cache(clock)
    signer = CountingSigner(delay=0.05)

    async def scenario() -> None:
        leader = asyncio.create_task(cache.get("r", signer, KEY))
        await asyncio.sleep(0)
        follower = asyncio.create_task(cache.get("r", signer, KEY))
        await asyncio.sleep(0.01)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        url, hit = await leader
        assert not hit
        assert_valid_local_url(url, KEY)
        assert len(signer.calls) == 1
        assert await cache.get("r", signer, KEY) == (url, True)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- construction, metrics


@pytest.mark.parametrize(
    ("ttl", "window", "min_remaining"),
    [(900, 841, 60), (900, 900, 60), (900, 0, 60), (120, 61, 60), (60, 1, 60), (900, -5, 60)],
)
def test_constructor_rejects_a_window_that_could_hand_out_short_urls(
    ttl: int, window: int, min_remaining: int
) -> None:
    with pytest.raises(ValueError, match="window"):
        make_cache(Clock(), ttl=ttl, window=window, min_remaining=min_remaining)


def test_constructor_accepts_the_largest_safe_window() -> None:
    cache = make_cache(Clock(), ttl=900, window=840, min_remaining=60)
    url, _ = asyncio.run(cache.get("r", CountingSigner(), KEY))
    assert url.expires_at - T0 >= 60


def test_observe_receives_kind_and_seconds_per_signature() -> None:
    clock = Clock()
    observed: list[tuple[str, float]] = []
    cache = make_cache(clock, observe=observed)
    signer = CountingSigner(delay=0.02)

    async def scenario() -> None:
        await cache.get("r", signer, KEY)
        await cache.get("r", signer, KEY)  # a hit: nothing to time
        await cache.get("r", signer, "other")

    asyncio.run(scenario())
    assert [kind for kind, _ in observed] == ["local", "local"]
    for _, seconds in observed:
        assert 0.015 <= seconds < 2


def test_observe_is_optional() -> None:
    cache = make_cache(Clock(), observe=None)
    url, hit = asyncio.run(cache.get("r", CountingSigner(), KEY))
    assert not hit
    assert_valid_local_url(url, KEY)


def test_maxsize_zero_is_refused_or_works() -> None:
    try:
        cache = make_cache(Clock(), maxsize=0)
    except ValueError:
        return
    url, hit = asyncio.run(cache.get("r", CountingSigner(), KEY))
    assert not hit
    assert_valid_local_url(url, KEY)
