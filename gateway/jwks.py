"""A JWKS fetched from a URL (``auth.jwks: https://...``), kept fresh in the background.

Rules (SPEC §4, issue 5):

- fetched at start and every ``auth.jwks_refresh`` (default 10 min); a failed
  fetch is retried sooner (every 30 s) and the last good keys are kept;
- keys older than ``auth.jwks_max_stale`` without a successful refresh are
  dropped, so a JWKS that stays unreachable cannot keep a revoked key alive
  forever (fail closed);
- a token with an unknown ``kid`` (a key the issuer just rotated in) triggers
  a refetch, at most one per ``min_refetch`` (30 s), so a flood of forged kids
  cannot turn the gateway into a load generator against the issuer;
- concurrent callers share one fetch (single flight): a burst of cold
  requests at start causes exactly one fetch;
- with no keys ever loaded every token is 401.

Plain ``http`` is accepted only for loopback (validated in settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from gateway.auth import Authenticator, KeySet
from gateway.errors import ConfigError

log = logging.getLogger("gateway")

MAX_JWKS_BYTES = 1024 * 1024


class RemoteJWKS:
    """Keeps ``authenticator``'s keys in step with the JWKS at ``url``."""

    def __init__(
        self,
        url: str,
        authenticator: Authenticator,
        *,
        refresh: float,
        max_stale: float,
        timeout: float,
        min_refetch: float = 30.0,
        retry: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._authenticator = authenticator
        self._refresh = refresh
        self._max_stale = max_stale
        self._timeout = timeout
        self._min_refetch = min_refetch
        self._retry = min(retry, refresh)
        self._clock = clock
        self._inflight: asyncio.Future[bool] | None = None
        self._last_refetch = -float("inf")
        self.loaded_at: float | None = None
        self.fetches = 0
        self._task: asyncio.Task[None] | None = None

    def inherit(self, previous: RemoteJWKS) -> None:
        """Keep the keys a reload's predecessor fetched from the same URL."""
        if previous.url == self.url and previous.loaded_at is not None:
            self._authenticator.set_keys(previous._authenticator.keys)
            self.loaded_at = previous.loaded_at
            self._last_refetch = previous._last_refetch

    def start(self, client: httpx.AsyncClient) -> None:
        """Start the background refresh (the lifespan owns the task)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(client))
            self._client = client

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, client: httpx.AsyncClient) -> None:
        if self.loaded_at is None or self._clock() - self.loaded_at >= self._refresh:
            await self.fetch(client)
        while True:
            ok = self.loaded_at is not None and self._clock() - self.loaded_at < self._refresh
            await asyncio.sleep(self._refresh if ok else self._retry)
            await self.fetch(client)

    async def refetch_for_unknown_kid(self) -> bool:
        """A token named a kid we do not have: refetch (rate-limited, shared).

        True when keys were (re)loaded and the caller should try the token again.
        """
        if self._task is None:
            return False
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        now = self._clock()
        if now - self._last_refetch < self._min_refetch:
            return False
        self._last_refetch = now
        return await self.fetch(self._client)

    async def fetch(self, client: httpx.AsyncClient) -> bool:
        """Fetch once (joining a fetch already under way); True on success."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight = future
        try:
            ok = await self._fetch(client)
        except BaseException:
            future.set_result(False)
            raise
        finally:
            self._inflight = None
        future.set_result(ok)
        return ok

    async def _fetch(self, client: httpx.AsyncClient) -> bool:
        self.fetches += 1
        try:
            response = await client.get(self.url, timeout=self._timeout, follow_redirects=False)
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError("larger than 1 MiB")
            keys = KeySet.from_json(response.content, source=self.url)
        except (httpx.HTTPError, ValueError, ConfigError) as exc:
            why = (
                "; ".join(exc.problems)
                if isinstance(exc, ConfigError)
                else str(exc) or type(exc).__name__
            )
            log.warning("JWKS fetch from %s failed: %s", self.url, why)
            self._expire_if_stale()
            return False
        self._authenticator.set_keys(keys)
        self.loaded_at = self._clock()
        return True

    def _expire_if_stale(self) -> None:
        if self.loaded_at is not None and self._clock() - self.loaded_at > self._max_stale:
            log.error(
                "JWKS from %s is older than auth.jwks_max_stale: refusing all tokens", self.url
            )
            self._authenticator.set_keys(KeySet.empty())
            self.loaded_at = None
