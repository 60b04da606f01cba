"""Choosing the region that serves a download (SPEC §4), as a pure function.

No I/O: the decision depends only on the device's residency claim, its
location, which regions are healthy and the configured rules, so it is
trivially tested and explained. Steps:

1. The rule: a ``residency`` claim pins the device to that named rule;
   otherwise the first rule listing the device's country applies, else the
   first listing its continent; otherwise every region is allowed.
2. With a location, the allowed healthy region nearest by great-circle
   distance wins; ties go to the earlier region in the file.
3. Without a location, ``default_region`` when the rule allows it, else the
   first allowed region in file order.
4. When the preferred region is unhealthy, the next one in that order serves
   (reason ``failover``). No allowed healthy region: 503, never a region
   outside the rule.

The reason reported (metric label, access log): ``failover`` when the preferred
region was down; else ``residency`` when a rule constrained the choice;
``default`` without a location; ``header`` when the location came from a
trusted edge header; ``nearest`` when it came from GeoIP.
"""

from __future__ import annotations

import math
from collections.abc import Container, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.errors import NoRegionAvailable, NotEntitled
from gateway.geo import Location
from gateway.memo import Memo

_EARTH_RADIUS_KM = 6371.0088

# How many decisions GeoPolicy remembers (see GeoPolicy.decide).
_MEMO_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Rule:
    countries: frozenset[str]
    continents: frozenset[str]
    regions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen region and why; ``fallbacks`` are the other allowed healthy
    regions in policy order, for stream mode's failover (not part of equality)."""

    region: str
    reason: str
    fallbacks: tuple[str, ...] = field(default=(), compare=False)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class GeoPolicy:
    """The configured regions and residency rules; :meth:`decide` picks a region."""

    def __init__(
        self,
        regions: Sequence[Region],
        rules: Mapping[str, Rule],
        default_region: str,
    ) -> None:
        self._regions = {r.name: r for r in regions}
        self._all = tuple(r.name for r in regions)
        self._rules = dict(rules)
        self._default = default_region
        order = {name: i for i, name in enumerate(self._all)}
        # Rule regions kept in file order, so ties and fallbacks follow the file.
        self._rule_regions = {
            name: tuple(sorted(rule.regions, key=order.__getitem__)) for name, rule in rules.items()
        }
        # Without a location the order never changes: compute it once per rule.
        self._unlocated: dict[str | None, tuple[str, ...]] = {
            rule: self._default_first(allowed)
            for rule, allowed in [(None, self._all), *self._rule_regions.items()]
        }
        self._memo: Memo[Hashable, Decision] = Memo(_MEMO_SIZE)
        self._memo_healthy: frozenset[str] | None = None
        self._by_country: dict[str, str] = {}
        self._by_continent: dict[str, str] = {}
        for name, rule in rules.items():
            for country in rule.countries:
                self._by_country.setdefault(country, name)
            for continent in rule.continents:
                self._by_continent.setdefault(continent, name)

    def _default_first(self, allowed: tuple[str, ...]) -> tuple[str, ...]:
        if self._default in allowed:
            return (self._default, *(r for r in allowed if r != self._default))
        return allowed

    def rule_for(self, residency: str | None, location: Location | None) -> str | None:
        """The name of the rule that applies, or None when every region is allowed."""
        if residency is not None:
            if residency not in self._rules:
                raise NotEntitled(f"the token's residency rule {residency!r} is not configured")
            return residency
        if location is None:
            return None
        if location.country is not None and location.country in self._by_country:
            return self._by_country[location.country]
        if location.continent is not None:
            return self._by_continent.get(location.continent)
        return None

    def decide(
        self,
        *,
        residency: str | None,
        location: Location | None,
        healthy: Container[str],
        from_header: bool = False,
    ) -> Decision:
        """The region for one download. Raises NoRegionAvailable or NotEntitled."""
        rule = self.rule_for(residency, location)
        # A fleet sits at a few hundred places (country centroids, GeoIP cities),
        # so decisions repeat: for one frozenset of healthy regions (the health
        # tracker builds a new one on every change) a rule and a place always
        # give the same Decision. Any other container is not remembered: it
        # could change in place.
        if type(healthy) is not frozenset:
            return self._decide(rule, location, healthy, from_header)
        if healthy is not self._memo_healthy:
            self._memo.clear()
            self._memo_healthy = healthy
        key = (rule, None, None, False) if location is None else (
            rule, location.latitude, location.longitude, from_header
        )  # fmt: skip
        decision = self._memo.get(key)
        if decision is None:
            decision = self._memo.remember(key, self._decide(rule, location, healthy, from_header))
        return decision

    def _decide(
        self,
        rule: str | None,
        location: Location | None,
        healthy: Container[str],
        from_header: bool,
    ) -> Decision:
        if location is None:
            ranked = self._unlocated[rule]
            preferred = "default" if rule is None else "residency"
        else:
            lat, lon = location.latitude, location.longitude
            regions = self._regions
            # sorted() is stable, so equal distances keep file order.
            allowed = self._all if rule is None else self._rule_regions[rule]
            ranked = tuple(
                sorted(
                    allowed,
                    key=lambda n: distance_km(lat, lon, regions[n].latitude, regions[n].longitude),
                )
            )
            preferred = "residency" if rule is not None else "header" if from_header else "nearest"
        for i, name in enumerate(ranked):
            if name in healthy:
                rest = tuple(r for r in ranked[i + 1 :] if r in healthy)
                return Decision(name, preferred if i == 0 else "failover", rest)
        raise NoRegionAvailable(
            "no healthy region is allowed for this device"
            + (f" (rule {rule!r})" if rule is not None else "")
        )
