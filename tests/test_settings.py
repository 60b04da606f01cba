"""The configuration file (SPEC §4): typed, frozen settings, and one clear line per problem."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.keys import generate_key
from gateway.settings import Settings, load_settings, parse_settings
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-literal-value"


def minimal() -> dict[str, Any]:
    """The smallest valid configuration (a fresh copy each time)."""
    return {
        "auth": {
            "jwks": "config/keys/jwks.json",
            "issuer": "https://devices.example.com",
            "audience": "firmware-gateway",
        },
        "access": [{"prefix": "firmware/{product}/"}],
        "regions": {
            "eu-central": {
                "location": [50.11, 8.68],
                "backend": {"type": "local", "url": "http://127.0.0.1:9000", "secret": SECRET},
            },
            "us-east": {
                "location": [39.04, -77.49],
                "backend": {"type": "local", "url": "http://127.0.0.1:9001", "secret": SECRET},
            },
        },
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def with_section(section: str, value: Any) -> dict[str, Any]:
    data = minimal()
    data[section] = value
    return data


def backend(data: dict[str, Any], region: str = "eu-central") -> dict[str, Any]:
    result: dict[str, Any] = data["regions"][region]["backend"]
    return result


# --------------------------------------------------------------------------- valid config


def test_minimal_config_loads_with_the_documented_defaults() -> None:
    settings = parse_settings(minimal())

    assert settings.auth.jwks == "config/keys/jwks.json"
    assert settings.auth.issuer == "https://devices.example.com"
    assert settings.auth.audience == "firmware-gateway"
    assert settings.auth.leeway == 60
    assert settings.auth.max_token_lifetime == 30 * 86400
    assert settings.auth.revoked is None
    assert [rule.prefix for rule in settings.access] == ["firmware/{product}/"]
    assert settings.regions["eu-central"].location == (50.11, 8.68)
    assert settings.regions["eu-central"].backend.type == "local"
    assert settings.regions["eu-central"].backend.url == "http://127.0.0.1:9000"
    assert settings.regions["eu-central"].backend.secret.get_secret_value() == SECRET

    assert settings.signing.ttl == 900
    assert settings.signing.min_remaining == 60
    assert settings.signing.window is None
    assert settings.signing.window_seconds == 300  # ttl / 3
    assert settings.delivery.mode == "redirect"
    assert settings.health.interval == 5
    assert settings.health.timeout == 2
    assert settings.health.unhealthy_after == 2
    assert settings.health.healthy_after == 2
    assert settings.limits.rate_per_device is None  # no rate limit unless configured
    assert settings.limits.burst_per_device == 20
    assert settings.limits.max_concurrent_requests == 2000
    assert settings.limits.header_timeout == 10
    assert settings.limits.max_header_bytes == 8192
    assert settings.limits.drain_timeout == 30
    assert settings.server.trusted_proxies == ()
    assert settings.server.geo_headers == ()
    assert settings.geo.database is None
    assert settings.geo.residency == {}


def test_full_spec_example_loads() -> None:
    data = minimal()
    data["server"] = {
        "trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"],
        "geo_headers": ["cloudfront", "cloudflare"],
    }
    data["auth"].update(
        algorithms=["EdDSA", "ES256"], leeway="60s", max_token_lifetime="30d", revoked="r.txt"
    )
    data["geo"] = {
        "residency": {"eu": {"countries": ["DE", "FR", "NL", "SE"], "regions": ["eu-central"]}},
        "default_region": "us-east",
    }
    data["signing"] = {"ttl": "15m", "min_remaining": "60s"}
    data["delivery"] = {"mode": "redirect"}
    data["health"] = {"interval": "5s", "timeout": "2s", "unhealthy_after": 2, "healthy_after": 2}
    data["limits"] = {
        "rate_per_device": "5/s",
        "burst_per_device": 20,
        "max_concurrent_requests": 2000,
        "header_timeout": "10s",
        "max_header_bytes": "8KiB",
        "drain_timeout": "30s",
    }

    settings = parse_settings(data)

    assert settings.server.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8")
    assert settings.server.geo_headers == ("cloudfront", "cloudflare")
    assert settings.geo.residency["eu"].countries == ("DE", "FR", "NL", "SE")
    assert settings.geo.residency["eu"].regions == ("eu-central",)
    assert settings.default_region == "us-east"
    assert settings.limits.rate_per_device == 5.0
    assert settings.limits.max_header_bytes == 8192


def test_settings_are_frozen() -> None:
    settings = parse_settings(minimal())

    with pytest.raises(ValidationError):
        settings.signing = settings.signing  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.signing.ttl = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.regions["eu-central"].location = (0.0, 0.0)  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.limits.max_header_bytes = 1  # type: ignore[misc]
    assert settings.signing.ttl == 900


def test_default_region_falls_back_to_the_first_region_in_file_order() -> None:
    data = minimal()
    data["regions"] = {
        "us-east": data["regions"]["us-east"],
        "eu-central": data["regions"]["eu-central"],
    }
    assert parse_settings(data).default_region == "us-east"
    assert list(parse_settings(data).regions) == ["us-east", "eu-central"]
    assert parse_settings(minimal()).default_region == "eu-central"


def test_configured_default_region_wins() -> None:
    settings = parse_settings(with_section("geo", {"default_region": "us-east"}))
    assert settings.default_region == "us-east"


# --------------------------------------------------------------------------- value syntaxes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("7d", 7 * 86400.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    settings = parse_settings(with_section("auth", {**minimal()["auth"], "leeway": text}))
    assert settings.auth.leeway == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-1s", True, "1w", "", "s", None, -5, "1e3s"])
def test_bad_durations_name_the_field(text: object) -> None:
    problems = problems_of(with_section("auth", {**minimal()["auth"], "leeway": text}))
    assert len(problems) == 1
    assert problems[0].startswith("auth.leeway: ")
    assert "duration" in problems[0]


def test_durations_in_every_section_are_parsed() -> None:
    data = minimal()
    data["signing"] = {"ttl": "1h", "min_remaining": "2m"}
    data["health"] = {"interval": "500ms", "timeout": "250ms"}
    data["limits"] = {"header_timeout": "1m", "drain_timeout": "1h"}
    settings = parse_settings(data)
    assert settings.signing.ttl == 3600
    assert settings.signing.min_remaining == 120
    assert settings.signing.window_seconds == 1200  # ttl / 3
    assert settings.health.interval == 0.5
    assert settings.health.timeout == 0.25
    assert settings.limits.header_timeout == 60
    assert settings.limits.drain_timeout == 3600


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8KiB", 8192),
        ("16KiB", 16384),
        ("1MiB", 1024**2),
        ("512B", 512),
        (4096, 4096),
        ("8KB", 8000),
    ],
)
def test_sizes(text: object, size: int) -> None:
    settings = parse_settings(with_section("limits", {"max_header_bytes": text}))
    assert settings.limits.max_header_bytes == size


@pytest.mark.parametrize("text", ["8 kilobytes", "8kib", 0, -1, True, "1.5KiB"])
def test_bad_sizes_name_the_field(text: object) -> None:
    problems = problems_of(with_section("limits", {"max_header_bytes": text}))
    assert len(problems) == 1
    assert problems[0].startswith("limits.max_header_bytes: ")
    assert "size" in problems[0]


@pytest.mark.parametrize(("text", "rate"), [("5/s", 5.0), ("300/m", 5.0), ("3600/h", 1.0)])
def test_rates(text: str, rate: float) -> None:
    settings = parse_settings(with_section("limits", {"rate_per_device": text}))
    assert settings.limits.rate_per_device == pytest.approx(rate)


@pytest.mark.parametrize("text", ["5 per second", "5", 5, "0/s", "5/d", True])
def test_bad_rates_name_the_field(text: object) -> None:
    problems = problems_of(with_section("limits", {"rate_per_device": text}))
    assert problems == ["limits.rate_per_device: expected a rate such as 5/s, 300/m or 1000/h"]


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key() -> None:
    assert problems_of({**minimal(), "sigining": {}}) == ["sigining: unknown key"]


@pytest.mark.parametrize(
    ("section", "value", "line"),
    [
        ("signing", {"tll": "15m"}, "signing.tll: unknown key"),
        ("limits", {"max_header_byte": 1}, "limits.max_header_byte: unknown key"),
        ("server", {"trusted_proxy": []}, "server.trusted_proxy: unknown key"),
        ("geo", {"default": "us-east"}, "geo.default: unknown key"),
    ],
)
def test_unknown_nested_keys(section: str, value: Any, line: str) -> None:
    assert problems_of(with_section(section, value)) == [line]


def test_unknown_keys_deep_in_regions_and_backends() -> None:
    data = minimal()
    data["regions"]["eu-central"]["lcation"] = [1, 2]
    backend(data)["secert"] = "x"
    data["access"][0]["prefx"] = "y"
    assert sorted(problems_of(data)) == [
        "access.0.prefx: unknown key",
        "regions.eu-central.backend.secert: unknown key",
        "regions.eu-central.lcation: unknown key",
    ]


def test_unknown_key_in_residency_rule() -> None:
    data = with_section(
        "geo",
        {"residency": {"eu": {"countries": ["DE"], "region": ["eu-central"], "regions": ["x"]}}},
    )
    assert "geo.residency.eu.region: unknown key" in problems_of(data)


def test_missing_required_sections_and_keys() -> None:
    data = minimal()
    del data["auth"]["issuer"]
    del data["access"]
    assert sorted(problems_of(data)) == ["access: required", "auth.issuer: required"]


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize(
    "location",
    [
        [50.11],
        ["a", "b"],
        [91, 0],
        [-91, 0],
        [0, 181],
        [0, -181],
        [1, 2, 3],
        "50.11,8.68",
        [True, 0],
    ],
)
def test_bad_region_location(location: object) -> None:
    data = minimal()
    data["regions"]["eu-central"]["location"] = location
    assert problems_of(data) == ["regions.eu-central.location: expected [latitude, longitude]"]


def test_extreme_but_valid_locations() -> None:
    data = minimal()
    data["regions"]["eu-central"]["location"] = [90, -180]
    data["regions"]["us-east"]["location"] = [-90, 180]
    settings = parse_settings(data)
    assert settings.regions["eu-central"].location == (90.0, -180.0)
    assert settings.regions["us-east"].location == (-90.0, 180.0)


def test_unknown_backend_type() -> None:
    data = minimal()
    backend(data)["type"] = "ftp"
    (line,) = problems_of(data)
    assert line.startswith("regions.eu-central.backend: unknown backend type")
    assert "'local'" in line


def test_backend_without_type() -> None:
    data = minimal()
    del backend(data)["type"]
    assert problems_of(data) == ["regions.eu-central.backend: missing 'type' (the backend type)"]


def test_backend_missing_url_names_the_field_without_the_union_tag() -> None:
    data = minimal()
    del backend(data)["url"]
    assert problems_of(data) == ["regions.eu-central.backend.url: required"]


def test_no_regions() -> None:
    assert problems_of(with_section("regions", {})) == ["regions: configure at least one region"]


def test_no_access_rules() -> None:
    assert problems_of(with_section("access", [])) == ["access: configure at least one prefix"]


# --------------------------------------------------------------------------- secrets


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_ORIGIN_SECRET", "from-the-environment")
    data = minimal()
    backend(data)["secret"] = "env:GATEWAY_TEST_ORIGIN_SECRET"
    settings = parse_settings(data)
    secret = settings.regions["eu-central"].backend.secret
    assert secret.get_secret_value() == "from-the-environment"


def test_secret_from_file_drops_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "origin.secret"
    path.write_text("from-a-file\n")
    data = minimal()
    backend(data)["secret"] = f"file:{path}"
    settings = parse_settings(data)
    assert settings.regions["eu-central"].backend.secret.get_secret_value() == "from-a-file"


def test_missing_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_TEST_UNSET_SECRET", raising=False)
    data = minimal()
    backend(data)["secret"] = "env:GATEWAY_TEST_UNSET_SECRET"
    assert problems_of(data) == [
        "regions.eu-central.backend.secret: "
        "environment variable GATEWAY_TEST_UNSET_SECRET is not set"
    ]


def test_unreadable_secret_file(tmp_path: Path) -> None:
    data = minimal()
    backend(data)["secret"] = f"file:{tmp_path / 'absent'}"
    backend(data, "us-east")["secret"] = f"file:{tmp_path}"  # a directory
    problems = problems_of(data)
    assert problems == [
        f"regions.eu-central.backend.secret: cannot read secret file {tmp_path / 'absent'}: "
        "No such file or directory",
        f"regions.us-east.backend.secret: cannot read secret file {tmp_path}: Is a directory",
    ]


def test_empty_secrets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("GATEWAY_TEST_EMPTY_SECRET", "")
    data = minimal()
    backend(data)["secret"] = f"file:{tmp_path / 'empty'}"
    backend(data, "us-east")["secret"] = "env:GATEWAY_TEST_EMPTY_SECRET"
    assert problems_of(data) == [
        "regions.eu-central.backend.secret: the secret is empty",
        "regions.us-east.backend.secret: the secret is empty",
    ]


def test_secrets_never_appear_in_repr_or_str(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_TEST_ENV_SECRET", "env-secret-value-1234")
    (tmp_path / "s").write_text("file-secret-value-5678\n")
    data = minimal()
    backend(data)["secret"] = "env:GATEWAY_TEST_ENV_SECRET"
    backend(data, "us-east")["secret"] = f"file:{tmp_path / 's'}"
    data["regions"]["ap"] = copy.deepcopy(data["regions"]["eu-central"])
    backend(data, "ap")["secret"] = SECRET
    settings = parse_settings(data)

    for text in (repr(settings), str(settings), repr(settings.regions), settings.model_dump_json()):
        assert "env-secret-value-1234" not in text
        assert "file-secret-value-5678" not in text
        assert SECRET not in text
    assert "**********" in repr(settings)


def test_secret_is_not_echoed_in_problems() -> None:
    data = minimal()
    backend(data)["url"] = "not a url"
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith("regions.eu-central.backend.url: ")
    assert SECRET not in "\n".join(problems)


# --------------------------------------------------------------------------- geo and residency


def test_residency_rule_needs_countries_or_continents() -> None:
    data = with_section("geo", {"residency": {"eu": {"regions": ["eu-central"]}}})
    assert problems_of(data) == ["geo.residency.eu: give countries, continents or both"]


def test_residency_rule_with_continents_only() -> None:
    data = with_section(
        "geo", {"residency": {"eu": {"continents": ["EU"], "regions": ["eu-central"]}}}
    )
    assert parse_settings(data).geo.residency["eu"].continents == ("EU",)


def test_residency_rule_naming_an_unknown_region() -> None:
    data = with_section(
        "geo",
        {"residency": {"eu": {"countries": ["DE"], "regions": ["eu-central", "eu-west"]}}},
    )
    assert problems_of(data) == ["geo.residency.eu.regions: 'eu-west' is not a configured region"]


def test_residency_rule_with_bad_country_and_continent_codes() -> None:
    data = with_section(
        "geo",
        {"residency": {"eu": {"countries": ["de"], "continents": ["XX"], "regions": ["x"]}}},
    )
    problems = problems_of(data)
    assert len(problems) == 3
    assert problems[0].startswith("geo.residency.eu.countries.0: ")
    assert problems[1].startswith("geo.residency.eu.continents.0: ")
    # Reported in the same run, not after the field problems are fixed.
    assert problems[2] == "geo.residency.eu.regions: 'x' is not a configured region"


def test_unknown_default_region() -> None:
    data = with_section("geo", {"default_region": "mars-1"})
    assert problems_of(data) == ["geo.default_region: 'mars-1' is not a configured region"]


# --------------------------------------------------------------------------- signing


def test_min_remaining_must_be_shorter_than_ttl() -> None:
    for min_remaining in ("15m", "16m"):
        data = with_section("signing", {"ttl": "15m", "min_remaining": min_remaining})
        assert problems_of(data) == ["signing: min_remaining must be at least 1s shorter than ttl"]


def test_window_larger_than_ttl_minus_min_remaining() -> None:
    data = with_section("signing", {"ttl": "15m", "min_remaining": "60s", "window": "841s"})
    assert problems_of(data) == [
        "signing: window must be between 1s and ttl - min_remaining (840s)"
    ]


def test_window_at_the_limit_is_used() -> None:
    data = with_section("signing", {"ttl": "15m", "min_remaining": "60s", "window": "840s"})
    assert parse_settings(data).signing.window_seconds == 840


def test_default_window_respects_min_remaining() -> None:
    # ttl/3 would leave less than min_remaining: the window shrinks to ttl - min_remaining.
    data = with_section("signing", {"ttl": "15m", "min_remaining": "12m"})
    signing = parse_settings(data).signing
    assert signing.window_seconds == 180
    assert signing.window_seconds <= signing.ttl - signing.min_remaining


def test_default_window_never_exceeds_ttl_minus_min_remaining() -> None:
    data = with_section("signing", {"ttl": "60s", "min_remaining": "59500ms"})
    try:
        signing = parse_settings(data).signing
    except ConfigError as exc:
        assert exc.problems[0].startswith("signing: ")
        return
    assert signing.window_seconds <= signing.ttl - signing.min_remaining


def test_unknown_delivery_mode_names_the_field() -> None:
    (line,) = problems_of(with_section("delivery", {"mode": "teleport"}))
    assert line.startswith("delivery.mode: ")


# --------------------------------------------------------------------------- several problems


def test_several_problems_give_one_line_each() -> None:
    data = minimal()
    data["bogus"] = True
    data["signing"] = {"ttl": "5 minutes"}
    data["limits"] = {"max_header_bytes": "huge", "rate_per_device": "fast"}
    data["regions"]["eu-central"]["location"] = [91, 0]
    backend(data, "us-east")["type"] = "ftp"
    data["server"] = {"trusted_proxies": ["10.0.0.0/33"]}

    problems = problems_of(data)

    assert len(problems) == 7, problems
    assert len(set(problems)) == 7
    fields = sorted(line.split(": ", 1)[0] for line in problems)
    assert fields == [
        "bogus",
        "limits.max_header_bytes",
        "limits.rate_per_device",
        "regions.eu-central.location",
        "regions.us-east.backend",
        "server.trusted_proxies.0",
        "signing.ttl",
    ]
    assert all("\n" not in line for line in problems)


def test_several_reference_problems_give_one_line_each() -> None:
    data = with_section(
        "geo",
        {
            "default_region": "nowhere",
            "residency": {
                "eu": {"countries": ["DE"], "regions": ["eu-west"]},
                "ch": {"countries": ["CH"], "regions": ["eu-central", "ch-1"]},
            },
        },
    )
    assert problems_of(data) == [
        "geo.default_region: 'nowhere' is not a configured region",
        "geo.residency.eu.regions: 'eu-west' is not a configured region",
        "geo.residency.ch.regions: 'ch-1' is not a configured region",
    ]


def test_field_and_reference_problems_are_reported_together() -> None:
    data = with_section("geo", {"default_region": "nowhere"})
    data["signing"] = {"ttl": "5 minutes"}
    assert sorted(problems_of(data)) == [
        "geo.default_region: 'nowhere' is not a configured region",
        "signing.ttl: expected a duration such as 30s, 15m, 1h or 7d",
    ]


def test_region_named_backend_gets_a_clean_path() -> None:
    data = minimal()
    data["regions"]["backend"] = data["regions"].pop("eu-central")
    backend(data, "backend")["secret"] = ""
    assert problems_of(data) == [
        "regions.backend.backend.secret: expected a secret: env:NAME, file:/path or a literal"
    ]


# --------------------------------------------------------------------------- files


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_load_settings_from_a_file(tmp_path: Path) -> None:
    data = minimal()
    data["signing"] = {"ttl": "1h"}
    settings = load_settings(write_yaml(tmp_path / "gateway.yaml", data))
    assert isinstance(settings, Settings)
    assert settings.signing.ttl == 3600
    assert list(settings.regions) == ["eu-central", "us-east"]


def test_load_settings_reports_the_same_problems_as_parse(tmp_path: Path) -> None:
    data = minimal()
    data["bogus"] = 1
    with pytest.raises(ConfigError) as info:
        load_settings(write_yaml(tmp_path / "gateway.yaml", data))
    assert info.value.problems == ["bogus: unknown key"]


def test_invalid_yaml_gives_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("auth:\n  issuer: x\n   audience: y\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: invalid YAML at line 3, column ")
    assert "mapping values are not allowed here" in line


def test_invalid_yaml_flow_mapping(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("auth: {jwks: x\nregions: [\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: invalid YAML at line 2, column ")


def test_missing_file_gives_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [f"{path}: cannot read: No such file or directory"]


@pytest.mark.parametrize("text", ["- auth\n- regions\n", "just a string\n", "", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [f"{path}: expected a mapping of sections at the top level"]


# --------------------------------------------------------------------------- command line


def run_gateway(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def valid_config(tmp_path: Path) -> Path:
    generate_key("EdDSA", tmp_path / "keys", "k1")
    data = minimal()
    data["auth"]["jwks"] = str(tmp_path / "keys" / "jwks.json")
    return write_yaml(tmp_path / "gateway.yaml", data)


@pytest.fixture
def invalid_config(tmp_path: Path) -> Path:
    data = minimal()
    data["bogus"] = 1
    data["signing"] = {"ttl": "5 minutes"}
    data["regions"]["eu-central"]["location"] = [50.11]
    return write_yaml(tmp_path / "bad.yaml", data)


INVALID_LINES = {
    "bogus: unknown key",
    "signing.ttl: expected a duration such as 30s, 15m, 1h or 7d",
    "regions.eu-central.location: expected [latitude, longitude]",
}


def test_check_config_accepts_a_valid_file(valid_config: Path) -> None:
    result = run_gateway("check-config", str(valid_config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.strip() == f"{valid_config}: ok"


def test_check_config_prints_each_problem_and_exits_2(invalid_config: Path) -> None:
    result = run_gateway("check-config", str(invalid_config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == len(INVALID_LINES)
    assert set(lines) == INVALID_LINES
    assert result.stdout == ""


def test_check_config_missing_jwks_file(tmp_path: Path) -> None:
    data = minimal()
    data["auth"]["jwks"] = str(tmp_path / "absent-jwks.json")
    path = write_yaml(tmp_path / "gateway.yaml", data)
    result = run_gateway("check-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "absent-jwks.json" in result.stderr


def test_check_config_fractional_signing_times_do_not_crash(tmp_path: Path) -> None:
    generate_key("EdDSA", tmp_path / "keys", "k1")
    data = minimal()
    data["auth"]["jwks"] = str(tmp_path / "keys" / "jwks.json")
    data["signing"] = {"ttl": "2500ms", "min_remaining": "2s"}
    result = run_gateway("check-config", str(write_yaml(tmp_path / "gateway.yaml", data)))
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 2)


def test_serve_with_an_invalid_config_exits_2_without_starting(invalid_config: Path) -> None:
    port = free_port()
    result = run_gateway("serve", "--config", str(invalid_config), "--port", str(port))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert set(result.stderr.splitlines()) == INVALID_LINES
    assert len(result.stderr.splitlines()) == len(INVALID_LINES)
    assert "Uvicorn running" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- backends


def _with_backend(backend: dict[str, Any], **signing: Any) -> dict[str, Any]:
    data = minimal()
    data["regions"] = {"eu": {"location": [50.1, 8.7], "backend": backend}}
    if signing:
        data["signing"] = signing
    return data


S3 = {"type": "s3", "bucket": "fw-eu", "region": "eu-central-1"}


def test_presigned_urls_are_capped_at_seven_days() -> None:
    assert parse_settings(_with_backend(S3, ttl="7d", min_remaining="60s"))
    assert problems_of(_with_backend(S3, ttl="8d")) == [
        "signing.ttl: at most 7d for s3 and gcs backends (regions eu)"
    ]


@pytest.mark.parametrize(
    ("backend", "problem"),
    [
        ({**S3, "bucket": "Not_A_Bucket"}, "regions.eu.backend.bucket: "),
        ({**S3, "credentials": {"access_key_id": "AKIA"}}, "regions.eu.backend.credentials: "),
        (
            {**S3, "credentials": {"external_id": "org-1"}},
            "regions.eu.backend.credentials: external_id needs role_arn",
        ),
        ({**S3, "addressing": "sideways"}, "regions.eu.backend.addressing: "),
        (
            {"type": "cloudfront", "domain": "d1.cloudfront.net", "key_pair_id": "K2JCJMDEHXQW5F"},
            "regions.eu.backend: give both key_pair_id and private_key",
        ),
        (
            {
                "type": "cloudfront",
                "domain": "d1.cloudfront.net",
                "key_pair_id": "K2JCJMDEHXQW5F",
                "private_key": "/k.pem",
                "source_ip": "10.0.0.0/8",
            },
            "regions.eu.backend: start_skew, source_ip and resource need policy: custom",
        ),
        (
            {"type": "nginx", "url": "http://127.0.0.1:1", "secret": "a", "secrets": []},
            None,
        ),
        (
            {"type": "nginx", "url": "http://127.0.0.1:1"},
            "regions.eu.backend: give secret or secrets",
        ),
        (
            {"type": "azure", "account": "devstoreaccount1", "container": "fw"},
            "regions.eu.backend.account_key: required",
        ),
        ({"type": "gcs", "bucket": "fw"}, "regions.eu.backend.service_account: required"),
        ({"type": "ftp"}, "regions.eu.backend: unknown backend type"),
    ],
)
def test_backend_settings_problems_name_the_field(
    backend: dict[str, Any], problem: str | None
) -> None:
    data = _with_backend(backend)
    if problem is None:
        assert parse_settings(data).regions["eu"].backend.type == backend["type"]
        return
    problems = problems_of(data)
    assert any(p.startswith(problem) for p in problems), problems


def test_rotation_not_before_takes_rfc3339() -> None:
    backend = {
        "type": "local",
        "url": "http://127.0.0.1:1",
        "secrets": [
            {"secret": "old"},
            {"secret": "new", "not_before": "2026-12-01T00:00:00Z"},
        ],
    }
    settings = parse_settings(_with_backend(backend))
    versions = settings.regions["eu"].backend.secret_versions()  # type: ignore[union-attr]
    assert [v.not_before for v in versions] == [None, 1_796_083_200]
    bad = {**backend, "secrets": [{"secret": "x", "not_before": "next tuesday"}]}
    assert problems_of(_with_backend(bad)) == [
        "regions.eu.backend.secrets.0.not_before: expected an RFC 3339 time such as "
        "2026-12-01T00:00:00Z"
    ]
