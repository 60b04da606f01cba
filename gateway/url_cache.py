"""Signed-URL issuance and its cache.

Keyed by (region, object key) only: never by anything else a client sends, so
one device cannot poison another's URL. Deterministic: time is cut into
windows of ``window`` seconds and a URL signed in window *k* is signed *at*
the window's start with expiry ``start + ttl``, so every worker and replica
issues byte-identical URLs within a window (SPEC §4), and because
``window <= ttl - min_remaining`` no URL is handed out with less than
``min_remaining`` of life left.

Each key's windows are shifted by a stable hash of the key, so a fleet's
cache entries do not all expire at the same instant and re-signing is spread
over the window instead of arriving as one burst.

Concurrent misses for one key sign once (single-flight); the cache is bounded
(oldest entry evicted first).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.signers import SignedURL, Signer


@dataclass(frozen=True, slots=True)
class _Entry:
    window: int
    url: SignedURL


class SignedURLCache:
    """Issues signed URLs, reusing one per (region, key) within its window."""

    def __init__(
        self,
        *,
        ttl: int,
        window: int,
        min_remaining: int,
        maxsize: int,
        clock: Callable[[], float] = time.time,
        observe: Callable[[str, float], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if not 1 <= window <= ttl - min_remaining:
            raise ValueError("window must be between 1 and ttl - min_remaining")
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._ttl = ttl
        self._window = window
        self._min_remaining = min_remaining
        self._maxsize = maxsize
        self._clock = clock
        self._observe = observe
        self._on_error = on_error
        # FIFO eviction. Not a dict: deleting a dict's first key leaves a dead
        # slot that every later next(iter()) walks past (7.8 us per eviction at
        # 16k entries, and a cache-polluting scan); OrderedDict pops in O(1).
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._inflight: dict[tuple[str, str, int], asyncio.Future[SignedURL]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def window_of(self, key: str, now: float) -> tuple[int, int]:
        """(window index, window start in Unix seconds) of ``key`` at ``now``."""
        offset = zlib.crc32(key.encode()) % self._window
        index = (int(now) - offset) // self._window
        return index, index * self._window + offset

    def fresh_until(self, key: str, url: SignedURL, now: float) -> float:
        """Until when ``url`` (issued for ``key`` at ``now``) may be handed out again:
        the end of its window, and never with less than ``min_remaining`` left."""
        _, start = self.window_of(key, now)
        return min(float(start + self._window), float(url.expires_at - self._min_remaining))

    async def get(self, region: str, signer: Signer, key: str) -> tuple[SignedURL, bool]:
        """The URL for ``key`` in ``region`` and whether it came from the cache."""
        now = self._clock()
        index, start = self.window_of(key, now)
        cache_key = (region, key)
        entry = self._entries.get(cache_key)
        if (
            entry is not None
            and entry.window == index
            and entry.url.expires_at - now >= self._min_remaining
        ):
            return entry.url, True
        flight_key = (region, key, index)
        pending = self._inflight.get(flight_key)
        if pending is not None:
            try:
                return await asyncio.shield(pending), False
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request itself was cancelled
                # The leader's request went away mid-signing: sign ourselves.
                return await self.get(region, signer, key)
        future: asyncio.Future[SignedURL] = asyncio.get_running_loop().create_future()
        self._inflight[flight_key] = future
        try:
            began = time.perf_counter()
            url = await signer.sign(key, start, start + self._ttl)
            if self._observe is not None:
                self._observe(signer.kind, time.perf_counter() - began)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            if self._on_error is not None:
                self._on_error(signer.kind)
            future.set_exception(exc)
            # Retrieve it so a flight nobody else joined does not log "never retrieved".
            future.exception()
            raise
        finally:
            del self._inflight[flight_key]
        future.set_result(url)
        if cache_key not in self._entries and len(self._entries) >= self._maxsize:
            self._entries.popitem(last=False)
        self._entries[cache_key] = _Entry(index, url)
        return url, False
