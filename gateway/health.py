"""Region health: active checks plus passive outlier ejection (SPEC §4, issue 5).

A region is *available* (in :attr:`RegionHealth.healthy`) while it is **up**
by active checks and **not ejected** by passive detection:

- **Active checks** (:meth:`RegionHealth.run_active_checks`, one task owned by
  the lifespan): every ``interval`` each region's probe runs concurrently,
  bounded by ``timeout``. A region is up while its backend answers with any
  status below 500 in time (:func:`http_probe`); ``unhealthy_after``
  consecutive failures take it down, ``healthy_after`` consecutive successes
  bring it back (HAProxy's ``fall``/``rise``). Regions start up, so a fresh
  process serves at once; a dead region is down after ``unhealthy_after``
  rounds.
- **Passive ejection** (:meth:`RegionHealth.record_failure` /
  :meth:`RegionHealth.record_success`, called by the code that talks to a
  backend: connection error, timeout, 5xx, a body cut short): after
  ``unhealthy_after`` consecutive failures the region is ejected for
  ``ejection_base`` seconds, doubling on each repeat ejection up to
  ``ejection_max`` (Envoy's outlier detection, with a doubling instead of a
  linear multiplier). The streak restarts once the region has stayed in for
  ``ejection_max`` seconds since its last ejection ended.
- **Ejection cap**: passive detection never ejects more than
  ``floor(max_ejected_share * n)`` of the ``n`` regions of any group at once
  (all regions, and each residency rule's regions given as ``groups``);
  the last ones stay in (Envoy's ``max_ejection_percent``). Unlike Envoy there
  is no "at least one": with a single region there is nowhere to fail over to,
  so ejecting it would only turn upstream failures into 503s. Regions down
  by active checks do not count against the cap: those checks are the
  reliable signal; the cap guards against the outlier detector itself.
- **Panic** (:meth:`RegionHealth.healthy_for`): when no region of a group is
  available the whole group is returned, "try them anyway rather than refuse
  everything" (Envoy's panic threshold at 0%). :attr:`RegionHealth.healthy`
  itself stays honest (``/readyz`` and ``gateway_backend_up`` report it).

Hot path: :attr:`RegionHealth.healthy` is a precomputed ``frozenset`` rebuilt
only when a state changes. Ejections end without a background task: reading
``healthy`` compares the clock with the cached time of the next ejection end
(one clock call and one float comparison) and rebuilds only when that time has
passed; while no ejection is pending it does not even read the clock.
Everything runs on one event loop: no locks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import httpx

__all__ = ["RegionHealth", "http_probe"]

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]


class _State:
    """One region's counters; mutable, private to RegionHealth."""

    __slots__ = (
        "check_failures",
        "check_successes",
        "ejected_until",
        "ejections",
        "passive_failures",
        "returned_at",
        "up",
    )

    def __init__(self) -> None:
        self.up = True  # by active checks
        self.check_failures = 0  # consecutive failed active checks
        self.check_successes = 0  # consecutive good active checks (while down)
        self.passive_failures = 0  # consecutive upstream failures
        self.ejected_until: float | None = None  # clock time the ejection ends
        self.ejections = 0  # ejections in the current streak (back-off exponent)
        self.returned_at = -math.inf  # clock time the last ejection ended

    def copy_from(self, other: _State) -> None:
        for name in _State.__slots__:
            setattr(self, name, getattr(other, name))


class RegionHealth:
    """Which regions may serve right now; see the module docstring for the rules.

    ``regions`` in file order; ``groups`` the region lists of the residency
    rules (the ejection cap applies to each, and always to all regions);
    ``on_change(region, available)`` is called on every change of a region's
    availability (e.g. to set ``gateway_backend_up{backend}``); ``clock`` is
    monotonic seconds.

    Read :attr:`healthy` (or :meth:`healthy_for` a group) per request; call
    :meth:`record_failure` / :meth:`record_success` after talking to a
    backend; run :meth:`run_active_checks` as a lifespan task.
    """

    __slots__ = (
        "_clock",
        "_ejection_base",
        "_ejection_max",
        "_expiring",
        "_group_cache",
        "_groups",
        "_healthy",
        "_healthy_after",
        "_next_expiry",
        "_on_change",
        "_states",
        "_unhealthy_after",
        "regions",
    )

    def __init__(
        self,
        regions: Sequence[str],
        *,
        unhealthy_after: int,
        healthy_after: int,
        ejection_base: float = 30.0,
        ejection_max: float = 300.0,
        max_ejected_share: float = 0.5,
        groups: Iterable[Iterable[str]] = (),
        on_change: Callable[[str, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not regions:
            raise ValueError("at least one region is needed")
        if unhealthy_after < 1 or healthy_after < 1:
            raise ValueError("unhealthy_after and healthy_after must be at least 1")
        if not 0 < ejection_base <= ejection_max:
            raise ValueError("need 0 < ejection_base <= ejection_max")
        if not 0.0 <= max_ejected_share <= 1.0:
            raise ValueError("max_ejected_share must be between 0 and 1")
        self.regions: tuple[str, ...] = tuple(regions)
        self._states = {name: _State() for name in self.regions}
        if len(self._states) != len(self.regions):
            raise ValueError("region names must be unique")
        self._unhealthy_after = unhealthy_after
        self._healthy_after = healthy_after
        self._ejection_base = ejection_base
        self._ejection_max = ejection_max
        self._on_change = on_change
        self._clock = clock
        # Each region's groups with their caps, precomputed: the cap is checked
        # only when an ejection is due, but should not allocate then either.
        all_group = (self.regions, _cap(max_ejected_share, len(self.regions)))
        self._groups: dict[str, list[tuple[tuple[str, ...], int]]] = {
            name: [all_group] for name in self.regions
        }
        for group in groups:
            members = tuple(dict.fromkeys(group))
            unknown = [m for m in members if m not in self._states]
            if unknown:
                raise ValueError(f"unknown regions in a group: {', '.join(unknown)}")
            entry = (members, _cap(max_ejected_share, len(members)))
            for member in members:
                self._groups[member].append(entry)
        self._healthy: frozenset[str] = frozenset(self.regions)
        self._next_expiry = math.inf
        self._expiring = False
        self._group_cache: dict[tuple[str, ...], frozenset[str]] = {}

    # ------------------------------------------------------------------ hot path

    @property
    def healthy(self) -> frozenset[str]:
        """The available regions: up by active checks and not ejected. O(1)."""
        # No clock read at all unless an ejection is pending (the usual case).
        if self._expiring and self._clock() >= self._next_expiry:
            self._expire()
        return self._healthy

    def healthy_for(self, group: Sequence[str]) -> frozenset[str]:
        """The available regions of ``group``, or all of ``group`` when none is
        (panic: try them anyway rather than refuse everything). O(1) after the
        first call per group and state (pass the same tuple each time)."""
        if self._expiring and self._clock() >= self._next_expiry:
            self._expire()
        key = group if isinstance(group, tuple) else tuple(group)
        found = self._group_cache.get(key)
        if found is None:
            found = self._healthy.intersection(key) or frozenset(key)
            self._group_cache[key] = found
        return found

    def record_success(self, region: str) -> None:
        """An upstream request to ``region`` succeeded: its failure streak ends."""
        self._states[region].passive_failures = 0

    def record_failure(self, region: str) -> None:
        """An upstream request to ``region`` failed (connection error, timeout,
        5xx, body cut short). The ``unhealthy_after``-th failure in a row ejects
        the region, unless that would exceed the ejection cap."""
        now = self._clock()
        if now >= self._next_expiry:
            self._expire()
        state = self._states[region]
        if state.ejected_until is not None:
            return  # requests that started before the ejection; already out
        state.passive_failures += 1
        if state.passive_failures < self._unhealthy_after:
            return
        for members, cap in self._groups[region]:
            ejected = sum(1 for m in members if self._states[m].ejected_until is not None)
            if ejected >= cap:
                # The streak stays at the threshold, so the next failure tries
                # again (an ejection elsewhere may have ended by then).
                # Logged once per streak: in an outage this runs on every failure.
                if state.passive_failures == self._unhealthy_after:
                    logger.warning(
                        "region %s: not ejected after %d upstream failures: %d of %d regions "
                        "of its group are ejected already (max_ejected_share)",
                        region, state.passive_failures, ejected, len(members),
                    )  # fmt: skip
                return
        if now - state.returned_at >= self._ejection_max:
            state.ejections = 0  # stayed in long enough: the back-off starts over
        state.ejections += 1
        # min() on the exponent first: 2.0 ** 1100 overflows a float.
        duration = min(
            self._ejection_base * 2.0 ** min(state.ejections - 1, 60), self._ejection_max
        )
        state.ejected_until = now + duration
        state.passive_failures = 0
        logger.warning(
            "region %s: ejected for %gs after %d consecutive upstream failures",
            region, duration, self._unhealthy_after,
        )  # fmt: skip
        self._changed(region, was_available=state.up)

    # ------------------------------------------------------------------ active checks

    def record_check(self, region: str, ok: bool, why: str = "") -> None:
        """Feed one active health check result for ``region`` (``why`` it failed,
        for the log line when the region goes down)."""
        state = self._states[region]
        if ok:
            state.check_failures = 0
            if state.up:
                return
            state.check_successes += 1
            if state.check_successes >= self._healthy_after:
                state.up = True
                state.check_successes = 0
                logger.info("region %s: up (health checks pass)", region)
                self._changed(region, was_available=False)
        else:
            state.check_successes = 0
            if not state.up:
                return
            state.check_failures += 1
            if state.check_failures >= self._unhealthy_after:
                state.up = False
                state.check_failures = 0
                logger.warning(
                    "region %s: down after %d failed health checks (last: %s)",
                    region, self._unhealthy_after, why or "failed",
                )  # fmt: skip
                self._changed(region, was_available=state.ejected_until is None)

    async def run_active_checks(
        self, probes: Mapping[str, Probe], interval: float, timeout: float
    ) -> None:
        """Probe every region in ``probes`` each ``interval`` seconds, concurrently,
        each bounded by ``timeout``; an exception or a timeout is a failure.
        Runs until cancelled (the lifespan owns the task).

        Rounds start every ``interval`` by the event loop's clock, whatever the
        probes take (a round that outlasts the interval is followed at once).
        """
        unknown = sorted(set(probes) - set(self.regions))
        if unknown:
            raise ValueError(f"probes for unknown regions: {', '.join(unknown)}")
        loop = asyncio.get_running_loop()
        names = [name for name in self.regions if name in probes]
        next_round = loop.time()
        while True:
            results = await asyncio.gather(*(_checked(probes[name], timeout) for name in names))
            for name, failure in zip(names, results, strict=True):
                self.record_check(name, failure is None, failure or "")
            next_round = max(next_round + interval, loop.time())
            await asyncio.sleep(next_round - loop.time())

    # ------------------------------------------------------------------ hot reload

    def inherit(self, previous: RegionHealth) -> None:
        """Take over the state of the regions ``previous`` also has (a reload
        must not bring a dead region back), and report each region whose
        availability differs from the fresh default (up) through ``on_change``."""
        for name, state in self._states.items():
            old = previous._states.get(name)
            if old is not None:
                state.copy_from(old)
        self._expire()
        if self._on_change is not None:
            for name in self.regions:
                if name not in self._healthy:
                    self._on_change(name, False)

    # ------------------------------------------------------------------ internals

    def _changed(self, region: str, *, was_available: bool) -> None:
        self._rebuild()
        available = region in self._healthy
        if self._on_change is not None and available != was_available:
            self._on_change(region, available)

    def _expire(self) -> None:
        """End the ejections that are due and rebuild."""
        now = self._clock()
        ended: list[str] = []
        for name, state in self._states.items():
            until = state.ejected_until
            if until is not None and until <= now:
                state.ejected_until = None
                state.returned_at = until
                state.passive_failures = 0
                ended.append(name)
        self._rebuild()
        for name in ended:
            logger.info("region %s: ejection ended", name)
            if self._on_change is not None and self._states[name].up:
                self._on_change(name, True)

    def _rebuild(self) -> None:
        states = self._states
        self._healthy = frozenset(
            name for name in self.regions if states[name].up and states[name].ejected_until is None
        )
        ends = [s.ejected_until for s in states.values() if s.ejected_until is not None]
        self._next_expiry = min(ends, default=math.inf)
        self._expiring = bool(ends)
        self._group_cache = {}


def _cap(share: float, size: int) -> int:
    # The epsilon keeps 0.29 * 100 = 28.999999999999996 at 29.
    return math.floor(share * size + 1e-9)


async def _checked(probe: Probe, timeout: float) -> str | None:
    """Run one probe: None when up, else why not."""
    try:
        ok = await asyncio.wait_for(probe(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as exc:  # any probe error is a failed check, never a dead loop
        return f"probe error {type(exc).__name__}"  # not str(exc): it may hold a signed URL
    return None if ok else "unhealthy answer"


def http_probe(client: httpx.AsyncClient, url_factory: Callable[[], Awaitable[str]]) -> Probe:
    """A probe that sends ``HEAD`` to the URL ``url_factory`` gives (a fresh
    signed URL of the health object) and is up on any status below 500
    (SPEC §4: 404 or 403 still prove the backend answers). Redirects are not
    followed: a 3xx answer is up too. Transport errors are a failed check."""

    async def probe() -> bool:
        url = await url_factory()
        try:
            response = await client.head(url, follow_redirects=False)
        except httpx.HTTPError as exc:
            # The URL is signed: log the error's kind, never the URL.
            logger.debug("health probe: %s", type(exc).__name__)
            return False
        return response.status_code < 500

    return probe
