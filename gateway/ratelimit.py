"""Per-device rate limiting: a token bucket per device (``sub``), issue 5 item 7.

Use one :class:`RateLimiter` per limited route; per request::

    wait = limiter.take(device.sub)
    if wait:
        raise RateLimited(retry_after=math.ceil(wait))   # 429 + Retry-After

**The bucket** holds up to ``burst`` tokens and refills at ``rate`` tokens per
second; a request takes one. It is stored as one float per device, the time
its bucket will be full again (the "theoretical arrival time" of the generic
cell rate algorithm, ITU-T I.371, which is exactly a token bucket): with
``T = 1 / rate`` the bucket holds ``burst - (full_at - now) / T`` tokens. A
request is allowed when ``max(full_at, now) + T - now <= burst * T``; when it
is not, a token comes after ``full_at - now - (burst - 1) * T`` seconds.

**Memory** is bounded for millions of devices without scanning: a full bucket
is the same as no entry, and a bucket is full ``burst / rate`` seconds (one
*period*) after its last write at the latest. Entries live in two generations,
``current`` and ``previous``; once per period ``previous`` is dropped whole
(all its buckets are full by then) and ``current`` becomes ``previous``. So
the table holds the devices seen in the last two periods, every call is O(1)
(the drop is one ``dict`` release, amortised over the inserts that filled
it), and no background task is needed. ``max_entries`` caps the table: a new
device that would exceed it turns the generations early, and the devices in
the dropped generation whose buckets were not yet full get a full one back (a
bounded leniency, only under a flood of distinct devices: ``max_entries``
within two periods, i.e. a million within 8 s at 5/s and burst 20). Plain
floats and dicts, no locks: one event loop owns the limiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

_SLACK = 1e-6  # seconds


class RateLimiter:
    """A token bucket per device: ``rate`` tokens per second, at most ``burst``.

    :meth:`take` is the only hot-path call. ``clock`` is monotonic seconds.
    """

    __slots__ = (
        "_clock",
        "_current",
        "_interval",
        "_limit",
        "_period",
        "_previous",
        "_slack_limit",
        "_turn_at",
        "burst",
        "max_entries",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        burst: int,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._clock = clock
        self._interval = 1.0 / rate  # T: seconds per token
        self._limit = burst * self._interval  # the most full_at may lead now by
        # `full_at` sums many inexact 1/rate steps (0.1 is not a binary
        # fraction): a microsecond of slack keeps a whole burst allowed.
        self._slack_limit = self._limit + _SLACK
        self._period = self._slack_limit  # an entry written now is full after this
        self._current: dict[str, float] = {}
        self._previous: dict[str, float] = {}
        self._turn_at = clock() + self._period

    def take(self, device: str) -> float:
        """Take a token for ``device``: 0.0 when allowed, else the seconds until
        one is available (nothing is taken; round up for ``Retry-After``)."""
        now = self._clock()
        if now >= self._turn_at:
            self._turn(now)
        current = self._current
        full_at = current.get(device)
        if full_at is None:
            full_at = self._previous.pop(device, None)
            if full_at is None:
                # A new or expired device: its bucket is full, so the first
                # request is always allowed (burst >= 1).
                if len(current) + len(self._previous) >= self.max_entries:
                    self._turn(now)
                    current = self._current
                current[device] = now + self._interval
                return 0.0
            current[device] = full_at  # moved forward a generation, unchanged yet
        if full_at < now:
            full_at = now
        after = full_at + self._interval
        if after - now > self._slack_limit:
            return after - now - self._limit
        current[device] = after
        return 0.0

    def __len__(self) -> int:
        """Devices with an entry (some may already be full again)."""
        return len(self._current) + len(self._previous)

    def _turn(self, now: float) -> None:
        # Writes into `current` happened before `_turn_at`, so its buckets are
        # full by `_turn_at + period`: when that has passed too, drop both. A
        # `current` that fills the table alone goes too (early turn, flood).
        if now >= self._turn_at + self._period or len(self._current) >= self.max_entries:
            self._previous = {}
        else:
            self._previous = self._current
        self._current = {}
        self._turn_at = now + self._period
