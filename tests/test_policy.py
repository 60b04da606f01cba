"""Choosing the region (SPEC §4): residency first, then nearest healthy, then failover."""

from __future__ import annotations

import math
import random

import pytest

from gateway.errors import NoRegionAvailable, NotEntitled
from gateway.geo import Location
from gateway.policy import Decision, GeoPolicy, Region, Rule, distance_km

REGIONS = [
    Region("eu-central", 50.11, 8.68),  # Frankfurt
    Region("eu-west", 53.35, -6.26),  # Dublin
    Region("us-east", 39.04, -77.49),  # Ashburn
    Region("us-west", 45.52, -122.68),  # Portland
    Region("ap-northeast", 35.68, 139.69),  # Tokyo
]
ALL = {r.name for r in REGIONS}
EU_RULE = Rule(
    countries=frozenset({"DE", "FR", "NL", "SE"}),
    continents=frozenset({"EU"}),
    regions=("eu-central", "eu-west"),
)
EU = set(EU_RULE.regions)

LONDON = Location(51.51, -0.13, "GB", "EU")
STOCKHOLM = Location(59.33, 18.07, "SE", "EU")
SEATTLE = Location(47.25, -122.31, "US", "NA")
NEW_YORK = Location(40.71, -74.0, "US", "NA")
TOKYO = Location(35.6, 139.8, "JP", "AS")
CHANGCHUN = Location(43.88, 125.32, "CN", "AS")
CAYENNE = Location(4.94, -52.33, "FR", "SA")  # French Guiana: an EU country in South America


def policy(rules: dict[str, Rule] | None = None, default: str = "us-east") -> GeoPolicy:
    return GeoPolicy(
        regions=REGIONS, rules={"eu": EU_RULE} if rules is None else rules, default_region=default
    )


def decide(
    location: Location | None,
    *,
    residency: str | None = None,
    healthy: set[str] | frozenset[str] = frozenset(ALL),
    from_header: bool = False,
    geo: GeoPolicy | None = None,
) -> Decision:
    return (geo or policy()).decide(
        residency=residency, location=location, healthy=healthy, from_header=from_header
    )


# --------------------------------------------------------------------------- residency


def test_london_is_pinned_by_continent_to_the_nearest_eu_region() -> None:
    # GB is not in the rule's countries, but its continent EU is.
    assert decide(LONDON) == Decision("eu-west", "residency")


def test_sweden_is_pinned_by_country() -> None:
    assert decide(STOCKHOLM) == Decision("eu-central", "residency")


def test_country_in_rule_on_another_continent_still_pinned() -> None:
    # French Guiana is nearest to us-east, but FR data stays in the EU regions.
    assert decide(CAYENNE) == Decision("eu-west", "residency")
    without_rules = decide(CAYENNE, geo=policy(rules={}))
    assert without_rules == Decision("us-east", "nearest")


def test_residency_claim_pins_a_device_located_elsewhere() -> None:
    decision = decide(NEW_YORK, residency="eu")
    assert decision.region in EU
    assert decision.reason == "residency"
    assert decision == Decision("eu-west", "residency")  # Dublin is nearer to New York


def test_residency_claim_wins_over_the_location_rule() -> None:
    us_rule = Rule(frozenset({"US"}), frozenset(), ("us-east", "us-west"))
    geo = policy(rules={"eu": EU_RULE, "us": us_rule})
    assert decide(SEATTLE, geo=geo) == Decision("us-west", "residency")
    assert decide(SEATTLE, residency="eu", geo=geo) == Decision("eu-west", "residency")
    assert decide(STOCKHOLM, residency="us", geo=geo) == Decision("us-east", "residency")


def test_unknown_residency_claim_is_not_entitled() -> None:
    with pytest.raises(NotEntitled) as info:
        decide(NEW_YORK, residency="mars")
    assert info.value.status == 403
    with pytest.raises(NotEntitled):
        decide(None, residency="mars")


def test_country_rule_beats_an_earlier_continent_rule() -> None:
    ch_rule = Rule(frozenset({"CH"}), frozenset(), ("eu-central",))
    zurich = Location(47.37, 8.54, "CH", "EU")
    geo = policy(rules={"eu": EU_RULE, "ch": ch_rule})
    assert geo.rule_for(None, zurich) == "ch"
    assert decide(zurich, geo=geo) == Decision("eu-central", "residency")
    # Under the eu rule eu-west would serve; the ch rule allows only eu-central.
    with pytest.raises(NoRegionAvailable):
        decide(zurich, geo=geo, healthy=ALL - {"eu-central"})


def test_first_rule_listing_a_country_applies() -> None:
    a = Rule(frozenset({"DE"}), frozenset(), ("eu-west",))
    b = Rule(frozenset({"DE"}), frozenset(), ("eu-central",))
    berlin = Location(52.52, 13.40, "DE", "EU")
    assert decide(berlin, geo=policy(rules={"a": a, "b": b})) == Decision("eu-west", "residency")
    assert decide(berlin, geo=policy(rules={"b": b, "a": a})) == Decision("eu-central", "residency")


def test_device_outside_every_rule_may_use_any_region() -> None:
    assert decide(SEATTLE) == Decision("us-west", "nearest")
    assert decide(NEW_YORK) == Decision("us-east", "nearest")
    assert decide(TOKYO) == Decision("ap-northeast", "nearest")
    assert decide(CHANGCHUN) == Decision("ap-northeast", "nearest")


def test_location_without_country_or_continent_is_unconstrained() -> None:
    somewhere_in_germany = Location(50.0, 8.0, None, None)
    assert decide(somewhere_in_germany) == Decision("eu-central", "nearest")


# --------------------------------------------------------------------------- no location


def test_no_location_uses_the_default_region() -> None:
    assert decide(None) == Decision("us-east", "default")


def test_no_location_with_residency_uses_the_first_allowed_region_in_file_order() -> None:
    # us-east (the default) is not allowed by the eu rule.
    assert decide(None, residency="eu") == Decision("eu-central", "residency")


def test_no_location_with_residency_that_allows_the_default() -> None:
    assert decide(None, residency="eu", geo=policy(default="eu-west")) == Decision(
        "eu-west", "residency"
    )


def test_no_location_default_unhealthy_fails_over_in_file_order() -> None:
    assert decide(None, healthy=ALL - {"us-east"}) == Decision("eu-central", "failover")
    assert decide(None, healthy={"ap-northeast"}) == Decision("ap-northeast", "failover")


def test_no_location_from_header_flag_is_still_default() -> None:
    assert decide(None, from_header=True) == Decision("us-east", "default")


# --------------------------------------------------------------------------- health


def test_nearest_unhealthy_fails_over_to_the_next_nearest() -> None:
    assert decide(SEATTLE, healthy=ALL - {"us-west"}) == Decision("us-east", "failover")
    assert decide(TOKYO, healthy=ALL - {"ap-northeast"}) == Decision("us-west", "failover")


def test_residency_failover_stays_inside_the_rule() -> None:
    assert decide(LONDON, healthy=ALL - {"eu-west"}) == Decision("eu-central", "failover")
    assert decide(NEW_YORK, residency="eu", healthy={"eu-central"}) == Decision(
        "eu-central", "failover"
    )


def test_all_rule_regions_down_is_503_never_a_region_outside_the_rule() -> None:
    healthy = ALL - EU  # us-east, us-west, ap-northeast are fine
    for location, residency in [(LONDON, None), (STOCKHOLM, None), (NEW_YORK, "eu"), (None, "eu")]:
        with pytest.raises(NoRegionAvailable) as info:
            decide(location, residency=residency, healthy=healthy)
        assert info.value.status == 503
        assert info.value.render()[0] == 503


def test_nothing_healthy_is_503() -> None:
    for location in (SEATTLE, None):
        with pytest.raises(NoRegionAvailable):
            decide(location, healthy=set())


def test_unknown_names_in_healthy_are_ignored() -> None:
    with pytest.raises(NoRegionAvailable):
        decide(SEATTLE, healthy={"mars-1"})


# --------------------------------------------------------------------------- ties and reasons


def test_tie_in_distance_goes_to_the_earlier_region_in_the_file() -> None:
    twins = [Region("b-first", 10.0, 10.0), Region("a-second", 10.0, 10.0)]
    geo = GeoPolicy(regions=twins, rules={}, default_region="a-second")
    here = Location(20.0, 20.0, None, None)
    names = {"b-first", "a-second"}
    assert geo.decide(residency=None, location=here, healthy=names) == Decision(
        "b-first", "nearest"
    )
    reversed_geo = GeoPolicy(regions=twins[::-1], rules={}, default_region="b-first")
    assert reversed_geo.decide(residency=None, location=here, healthy=names) == Decision(
        "a-second", "nearest"
    )
    # The earlier twin down: the later one serves as failover.
    assert geo.decide(residency=None, location=here, healthy={"a-second"}) == Decision(
        "a-second", "failover"
    )


def test_tie_inside_a_rule_follows_the_file_not_the_rule_listing() -> None:
    twins = [Region("one", 0.0, 0.0), Region("two", 0.0, 0.0), Region("far", 60.0, 60.0)]
    rule = Rule(frozenset({"XX"}), frozenset(), ("two", "one"))
    geo = GeoPolicy(regions=twins, rules={"r": rule}, default_region="far")
    here = Location(1.0, 1.0, "XX", None)
    decision = geo.decide(residency=None, location=here, healthy={"one", "two", "far"})
    assert decision == Decision("one", "residency")
    # Without a location, "first allowed region in file order" too.
    decision = geo.decide(residency="r", location=None, healthy={"one", "two", "far"})
    assert decision == Decision("one", "residency")


def test_header_location_is_reported_as_header() -> None:
    assert decide(SEATTLE, from_header=True) == Decision("us-west", "header")
    assert decide(SEATTLE, from_header=False) == Decision("us-west", "nearest")


def test_residency_outranks_header_and_failover_outranks_both() -> None:
    assert decide(LONDON, from_header=True) == Decision("eu-west", "residency")
    assert decide(LONDON, from_header=True, healthy=ALL - {"eu-west"}) == Decision(
        "eu-central", "failover"
    )
    assert decide(SEATTLE, from_header=True, healthy=ALL - {"us-west"}) == Decision(
        "us-east", "failover"
    )


def test_decision_is_the_same_for_any_healthy_container() -> None:
    for healthy in (ALL, frozenset(ALL), sorted(ALL), tuple(ALL), dict.fromkeys(ALL)):
        assert decide(LONDON, healthy=healthy) == Decision("eu-west", "residency")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- distance


def test_distance_london_paris() -> None:
    assert distance_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(344, abs=5)


def test_distance_properties() -> None:
    assert distance_km(10.0, 20.0, 10.0, 20.0) == 0.0
    assert distance_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371, rel=0.001)
    assert distance_km(90, 0, -90, 0) == pytest.approx(math.pi * 6371, rel=0.001)
    # Across the antimeridian: 2 degrees of longitude at the equator, not 358.
    assert distance_km(0, 179, 0, -179) == pytest.approx(222.4, abs=1)
    assert distance_km(50.11, 8.68, 39.04, -77.49) == pytest.approx(
        distance_km(39.04, -77.49, 50.11, 8.68)
    )
    # Frankfurt - New York, roughly 6200 km.
    assert distance_km(50.11, 8.68, 40.71, -74.0) == pytest.approx(6200, rel=0.02)


# --------------------------------------------------------------------------- property


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """An independent great-circle distance to check the policy against."""
    x1, y1, z1 = _unit(lat1, lon1)
    x2, y2, z2 = _unit(lat2, lon2)
    chord = math.sqrt((x1 - x2) ** 2 + (y1 - y2) ** 2 + (z1 - z2) ** 2)
    return 2 * 6371.0 * math.asin(min(1.0, chord / 2))


def _unit(lat: float, lon: float) -> tuple[float, float, float]:
    p, l = math.radians(lat), math.radians(lon)  # noqa: E741
    return math.cos(p) * math.cos(l), math.cos(p) * math.sin(l), math.sin(p)


PLACES = [
    ("DE", "EU"),
    ("FR", "EU"),
    ("GB", "EU"),
    ("SE", "EU"),
    ("CH", "EU"),
    ("FR", "SA"),
    ("US", "NA"),
    ("CA", "NA"),
    ("JP", "AS"),
    ("CN", "AS"),
    ("BR", "SA"),
    ("AU", "OC"),
    (None, "EU"),
    (None, None),
    ("ZA", "AF"),
]


def test_random_locations_always_get_the_nearest_healthy_allowed_region() -> None:
    rng = random.Random(20241201)
    geo = policy()
    names = [r.name for r in REGIONS]
    coords = {r.name: (r.latitude, r.longitude) for r in REGIONS}
    checked = unavailable = 0
    for _ in range(3000):
        country, continent = rng.choice(PLACES)
        here = Location(rng.uniform(-90, 90), rng.uniform(-180, 180), country, continent)
        residency = rng.choice([None, None, None, "eu"])
        healthy = {n for n in names if rng.random() < 0.7}
        from_header = rng.random() < 0.5

        pinned = (
            residency == "eu"
            or country in EU_RULE.countries
            or (country not in EU_RULE.countries and continent in EU_RULE.continents)
        )
        allowed = [n for n in names if not pinned or n in EU]
        candidates = [n for n in allowed if n in healthy]

        if not candidates:
            with pytest.raises(NoRegionAvailable):
                geo.decide(
                    residency=residency, location=here, healthy=healthy, from_header=from_header
                )
            unavailable += 1
            continue
        decision = geo.decide(
            residency=residency, location=here, healthy=healthy, from_header=from_header
        )

        def dist(name: str, here: Location = here) -> float:
            return _haversine(here.latitude, here.longitude, *coords[name])

        assert decision.region in allowed
        assert decision.region in healthy
        best = min(dist(n) for n in candidates)
        assert dist(decision.region) == pytest.approx(best, abs=1e-6)
        preferred = min(allowed, key=dist)
        if decision.region != preferred:
            assert decision.reason == "failover"
        elif pinned:
            assert decision.reason == "residency"
        else:
            assert decision.reason == ("header" if from_header else "nearest")
        checked += 1
    assert checked > 2000
    assert unavailable > 0


# --------------------------------------------------------------------------- remembered decisions


def test_a_remembered_decision_follows_every_change_of_health() -> None:
    # GeoPolicy remembers decisions per frozenset of healthy regions; a new set
    # (the health tracker builds one on every change) must never see an old answer.
    geo = policy()
    up = frozenset(ALL)
    first = geo.decide(residency=None, location=SEATTLE, healthy=up)
    assert first == Decision(
        "us-west", "nearest", ("us-east", "eu-west", "eu-central", "ap-northeast")
    )
    assert geo.decide(residency=None, location=SEATTLE, healthy=up) is first
    down = frozenset(ALL - {"us-west"})
    assert geo.decide(residency=None, location=SEATTLE, healthy=down) == Decision(
        "us-east", "failover"
    )
    assert geo.decide(residency=None, location=SEATTLE, healthy=up) == first
    with pytest.raises(NoRegionAvailable):
        geo.decide(residency=None, location=LONDON, healthy=frozenset({"us-west"}))


def test_a_mutable_healthy_set_is_read_afresh_on_every_call() -> None:
    geo = policy()
    healthy = set(ALL)
    assert geo.decide(residency=None, location=TOKYO, healthy=healthy).region == "ap-northeast"
    healthy.discard("ap-northeast")
    assert geo.decide(residency=None, location=TOKYO, healthy=healthy) == Decision(
        "us-west", "failover"
    )


def test_remembered_decisions_keep_the_inputs_apart() -> None:
    # Same place, different residency, source or rule: different answers.
    geo = policy()
    up = frozenset(ALL)
    assert geo.decide(residency=None, location=SEATTLE, healthy=up, from_header=True) == Decision(
        "us-west", "header"
    )
    assert geo.decide(residency=None, location=SEATTLE, healthy=up).reason == "nearest"
    assert geo.decide(residency="eu", location=SEATTLE, healthy=up).region == "eu-west"
    assert geo.decide(residency=None, location=None, healthy=up) == Decision("us-east", "default")
    assert geo.decide(residency="eu", location=None, healthy=up).reason == "residency"


def test_remembered_decisions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.policy._MEMO_SIZE", 8)
    geo = policy()
    up = frozenset(ALL)
    rng = random.Random(7)
    for _ in range(100):
        here = Location(rng.uniform(-60, 60), rng.uniform(-180, 180), None, None)
        expected = min(
            sorted(ALL),
            key=lambda n: next(
                distance_km(here.latitude, here.longitude, r.latitude, r.longitude)
                for r in REGIONS
                if r.name == n
            ),
        )
        assert geo.decide(residency=None, location=here, healthy=up).region == expected
        assert len(geo._memo) <= 8
