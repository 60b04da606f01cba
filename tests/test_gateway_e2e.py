"""End to end: a real gateway under uvicorn, real origins, a real HTTP client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.geoip_fixture import FIXTURE_NETWORKS
from tests.stack import FILES, KEY, Stack, running_stack

BINARY = f"/v1/binaries/{KEY}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("e2e")) as s:
        yield s


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def raw_get(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A request with the path sent exactly as given (no client-side normalisation)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- the download


def test_device_downloads_firmware_through_redirect(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(BINARY, headers=auth(stack.token()))
        assert response.status_code == 307
        assert response.headers["cache-control"] == "no-store"
        assert response.content == b""
        assert response.headers["content-length"] == "0"
        assert response.headers["x-gateway-region"] == "us-east"  # no location: default
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", response.headers["x-request-id"])
        location = response.headers["location"]
        assert location.startswith(stack.origins["us-east"] + "/" + KEY + "?expires=")
        download = httpx.get(location, timeout=10)
    assert download.status_code == 200
    assert download.content == FILES[KEY]


def test_follow_redirects_gets_the_bytes_like_curl_L(stack: Stack) -> None:
    response = httpx.get(
        stack.base + BINARY, headers=auth(stack.token()), follow_redirects=True, timeout=10
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(FILES[KEY]).digest()
    assert [r.status_code for r in response.history] == [307]


def test_head_is_a_bodyless_redirect(stack: Stack) -> None:
    with stack.client() as client:
        response = client.head(BINARY, headers=auth(stack.token()))
    assert response.status_code == 307
    assert response.content == b""
    assert "location" in response.headers


def test_urls_endpoint_returns_json(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(f"/v1/urls/{KEY}", headers=auth(stack.token()))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"url", "expires_at", "region", "backend"}
    assert body["region"] == "us-east" == response.headers["x-gateway-region"]
    assert body["backend"] == "local"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    expires = int(re.search(r"expires=(\d+)", body["url"]).group(1))  # type: ignore[union-attr]
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)) == body["expires_at"]
    assert expires - time.time() >= 60  # never less than min_remaining
    assert httpx.get(body["url"], timeout=10).content == FILES[KEY]


def test_same_object_same_window_same_url_and_a_cache_hit(stack: Stack) -> None:
    token = stack.token("device-cache")
    key = "firmware/acme-x1/1.0.1/app.bin"
    hits_before = stack.metric("gateway_signed_url_cache_total", result="hit")
    misses_before = stack.metric("gateway_signed_url_cache_total", result="miss")
    with stack.client() as client:
        first = client.get(f"/v1/binaries/{key}", headers=auth(token))
        # Another device, another token: the URL depends only on (region, key).
        second = client.get(f"/v1/binaries/{key}", headers=auth(stack.token("other-device")))
    assert first.status_code == second.status_code == 307
    assert first.headers["location"] == second.headers["location"]
    assert stack.metric("gateway_signed_url_cache_total", result="miss") == misses_before + 1
    assert stack.metric("gateway_signed_url_cache_total", result="hit") == hits_before + 1


def test_signed_url_is_the_origins_format(stack: Stack) -> None:
    with stack.client() as client:
        location = client.get(BINARY, headers=auth(stack.token())).headers["location"]
    parts = urlsplit(location)
    query = dict(p.split("=", 1) for p in parts.query.split("&"))
    mac = hmac.new(
        stack.secrets["us-east"], f"{query['expires']}\n{parts.path}".encode(), hashlib.sha256
    ).digest()
    assert query["sig"] == base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    # Tampering with the key is refused by the real origin.
    forged = location.replace("1.0.0", "1.0.1")
    assert httpx.get(forged, timeout=10).status_code == 403


# --------------------------------------------------------------------------- locating the device


@pytest.mark.parametrize(
    ("place", "region", "reason"),
    [
        ("london", "eu-west", "nearest"),  # GB is in no rule: nearest is Dublin
        ("sweden", "eu-central", "residency"),  # SE is in the eu rule; Frankfurt is nearer
        ("us_west", "us-west", "nearest"),
        ("japan", "ap-northeast", "nearest"),
        ("china", "ap-northeast", "nearest"),
    ],
)
def test_devices_get_the_region_spec_predicts(
    stack: Stack, place: str, region: str, reason: str
) -> None:
    ip = FIXTURE_NETWORKS[place].ip
    with stack.client() as client:
        response = client.get(BINARY, headers={**auth(stack.token()), "X-Forwarded-For": ip})
    assert response.status_code == 307
    assert response.headers["x-gateway-region"] == region
    record = stack.log_records(response.headers["x-request-id"])
    assert (record["region"], record["reason"], record["client"]) == (region, reason, ip)


def test_residency_claim_pins_a_us_device_to_the_eu(stack: Stack) -> None:
    token = stack.token(claims={"product": "acme-x1", "residency": "eu"})
    before = stack.metric("gateway_region_decisions_total", region="eu-west", reason="residency")
    with stack.client() as client:
        response = client.get(
            BINARY, headers={**auth(token), "X-Forwarded-For": FIXTURE_NETWORKS["us_west"].ip}
        )
    assert response.status_code == 307
    # Both eu regions are allowed; from the US west coast Dublin is nearer.
    assert response.headers["x-gateway-region"] == "eu-west"
    after = stack.metric("gateway_region_decisions_total", region="eu-west", reason="residency")
    assert after == before + 1


def test_unknown_residency_rule_is_refused(stack: Stack) -> None:
    token = stack.token(claims={"product": "acme-x1", "residency": "mars"})
    with stack.client() as client:
        response = client.get(BINARY, headers=auth(token))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


def test_a_spoofed_first_forwarded_hop_changes_nothing(stack: Stack) -> None:
    # The device prepends a London address; the trusted proxy (127.0.0.1) appended
    # the real client address, US west coast, as the right-most hop.
    spoofed = f"{FIXTURE_NETWORKS['london'].ip}, {FIXTURE_NETWORKS['us_west'].ip}"
    with stack.client() as client:
        response = client.get(BINARY, headers={**auth(stack.token()), "X-Forwarded-For": spoofed})
        honest = client.get(
            BINARY,
            headers={**auth(stack.token()), "X-Forwarded-For": FIXTURE_NETWORKS["us_west"].ip},
        )
    assert response.headers["x-gateway-region"] == honest.headers["x-gateway-region"] == "us-west"


def test_only_the_configured_forwarding_header_is_read(stack: Stack, tmp_path: Path) -> None:
    forwarded = f'for="[{FIXTURE_NETWORKS["japan"].ip}]:4711";proto=https'
    xff = FIXTURE_NETWORKS["us_west"].ip
    with stack.client() as client:
        # Default: X-Forwarded-For; a Forwarded header sent by the device is ignored.
        response = client.get(
            BINARY, headers={**auth(stack.token()), "Forwarded": forwarded, "X-Forwarded-For": xff}
        )
    assert response.headers["x-gateway-region"] == "us-west"

    def edit(config: dict[str, Any]) -> None:
        config["server"]["forwarded_header"] = "forwarded"

    with running_stack(tmp_path, edit) as s, s.client() as client:
        response = client.get(
            BINARY, headers={**auth(s.token()), "Forwarded": forwarded, "X-Forwarded-For": xff}
        )
    assert response.headers["x-gateway-region"] == "ap-northeast"


def test_cloudfront_geo_headers_from_a_trusted_peer(stack: Stack) -> None:
    headers = {
        **auth(stack.token()),
        "CloudFront-Viewer-Latitude": "35.0",
        "CloudFront-Viewer-Longitude": "135.0",
        "CloudFront-Viewer-Country": "JP",
        # The edge header wins over the address.
        "X-Forwarded-For": FIXTURE_NETWORKS["london"].ip,
    }
    with stack.client() as client:
        response = client.get(BINARY, headers=headers)
    assert response.headers["x-gateway-region"] == "ap-northeast"
    record = stack.log_records(response.headers["x-request-id"])
    assert record["reason"] == "header"


def test_edge_locations_are_remembered_per_header_value_within_a_bound(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each distinct set of geo headers is parsed once (Runtime.header_locations);
    # the memo must give every request its own place and stay bounded.
    runtime = stack.app.runtime
    assert runtime is not None
    monkeypatch.setattr(runtime.header_locations, "limit", 3)
    places = [
        ((35.0, 135.0), "ap-northeast"),
        ((47.0, -122.0), "us-west"),
        ((39.0, -77.0), "us-east"),
        ((50.0, 9.0), "eu-central"),
        ((53.0, -7.0), "eu-west"),
    ]
    with stack.client() as client:
        for (lat, lon), region in places * 2:
            headers = {
                **auth(stack.token()),
                "CloudFront-Viewer-Latitude": str(lat),
                "CloudFront-Viewer-Longitude": str(lon),
            }
            response = client.get(BINARY, headers=headers)
            assert response.headers["x-gateway-region"] == region
            assert len(runtime.header_locations) <= 3
        # A header that says nothing usable is remembered as no location.
        for _ in range(2):
            response = client.get(
                BINARY, headers={**auth(stack.token()), "CloudFront-Viewer-Country": "ZZ"}
            )
            assert response.headers["x-gateway-region"] == "us-east"


def test_disabled_edge_provider_is_ignored(stack: Stack) -> None:
    # Only cloudfront is enabled in this stack: CF-IPCountry must not move the device.
    with stack.client() as client:
        response = client.get(BINARY, headers={**auth(stack.token()), "CF-IPCountry": "JP"})
    assert response.headers["x-gateway-region"] == "us-east"


def test_untrusted_peer_headers_are_ignored(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["server"] = {"trusted_proxies": [], "geo_headers": ["cloudfront", "cloudflare"]}

    with running_stack(tmp_path, edit) as s, s.client() as client:
        response = client.get(
            BINARY,
            headers={
                **auth(s.token()),
                "X-Forwarded-For": FIXTURE_NETWORKS["japan"].ip,
                "CF-IPCountry": "JP",
                "CloudFront-Viewer-Country": "JP",
            },
        )
        assert response.status_code == 307
        assert response.headers["x-gateway-region"] == "us-east"  # 127.0.0.1: no location
        record = s.log_records(response.headers["x-request-id"])
        assert record["client"] == "127.0.0.1"
        assert record["reason"] == "default"


def test_no_allowed_healthy_region_is_503_never_outside_the_rule(stack: Stack) -> None:
    runtime = stack.app.runtime
    assert runtime is not None
    health = runtime.health
    # Active checks report both eu regions down (as two failed rounds would).
    for _ in range(2):
        for region in ("eu-central", "eu-west"):
            health.record_check(region, False)
    try:
        assert stack.metric("gateway_backend_up", backend="eu-west") == 0
        token = stack.token(claims={"product": "acme-x1", "residency": "eu"})
        with stack.client() as client:
            refused = client.get(BINARY, headers=auth(token))
            # Sweden is under the eu rule too: refused rather than sent outside the EU.
            sweden = client.get(
                BINARY,
                headers={**auth(stack.token()), "X-Forwarded-For": FIXTURE_NETWORKS["sweden"].ip},
            )
            # A device under no rule fails over: London's nearest, Dublin, is down.
            london = client.get(
                BINARY,
                headers={**auth(stack.token()), "X-Forwarded-For": FIXTURE_NETWORKS["london"].ip},
            )
    finally:
        for _ in range(2):
            for region in ("eu-central", "eu-west"):
                health.record_check(region, True)
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 503
    assert "location" not in refused.headers
    assert sweden.status_code == 503
    assert london.status_code == 307
    assert london.headers["x-gateway-region"] not in ("eu-central", "eu-west")
    record = stack.log_records(london.headers["x-request-id"])
    assert record["reason"] == "failover"
    assert stack.metric("gateway_backend_up", backend="eu-west") == 1


# --------------------------------------------------------------------------- hostile tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)]
    )


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "device-evil",
        "iss": "https://devices.test.invalid",
        "aud": "firmware-gateway",
        "iat": now,
        "exp": now + 600,
        "product": "acme-x1",
    }
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def hostile_tokens(stack: Stack) -> dict[str, tuple[str, str]]:
    """name -> (token, expected failure reason)."""
    good = stack.token()
    head, payload, sig = good.split(".")
    jwks = json.loads((stack.workdir / "keys" / "jwks.json").read_text())
    public = json.dumps(jwks["keys"][0]).encode()
    hs_header = _b64(json.dumps({"alg": "HS256", "kid": "ed1", "typ": "JWT"}).encode())
    hs_payload = _b64(json.dumps(_claims()).encode())
    hs_sig = hmac.new(public, f"{hs_header}.{hs_payload}".encode(), hashlib.sha256).digest()
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["product"] = "acme-x2"
    return {
        "alg none": (_unsigned({"alg": "none", "kid": "ed1"}, _claims()), "bad_algorithm"),
        "hs256 with public key": (f"{hs_header}.{hs_payload}.{_b64(hs_sig)}", "bad_algorithm"),
        "unknown kid": (
            _unsigned({"alg": "EdDSA", "kid": "nope"}, _claims(), b"x" * 64),
            "unknown_kid",
        ),
        "crit": (
            _unsigned({"alg": "EdDSA", "kid": "ed1", "crit": ["exp"]}, _claims(), b"x" * 64),
            "crit",
        ),
        "tampered payload": (
            f"{head}.{_b64(json.dumps(tampered).encode())}.{sig}",
            "bad_signature",
        ),
        "expired": (stack.token(ttl=600, now=time.time() - 1200), "expired"),
        "wrong issuer": (stack.token(issuer="https://evil.invalid"), "bad_issuer"),
        "wrong audience": (stack.token(audience="someone-else"), "bad_audience"),
        "too long lived": (stack.token(ttl=31 * 86400), "lifetime"),
        "garbage": ("not-a-jwt", "malformed"),
    }


def test_every_hostile_token_is_401(stack: Stack) -> None:
    with stack.client() as client:
        for name, (token, reason) in hostile_tokens(stack).items():
            before = stack.metric("gateway_auth_failures_total", reason=reason)
            response = client.get(BINARY, headers=auth(token))
            assert response.status_code == 401, name
            assert response.headers["content-type"] == "application/problem+json", name
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith("Bearer "), name
            assert 'error="invalid_token"' in challenge, name
            assert "error_description=" in challenge, name
            problem = response.json()
            assert problem["status"] == 401 and problem["title"], name
            assert token not in response.text, name
            assert stack.metric("gateway_auth_failures_total", reason=reason) == before + 1, name


def test_missing_token_gets_a_bare_bearer_challenge(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(BINARY)
        basic = client.get(BINARY, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert basic.status_code == 401


def test_an_es256_token_from_the_jwks_is_accepted(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(BINARY, headers=auth(stack.token(kid="es1")))
    assert response.status_code == 307


def test_oversized_authorization_header_is_4xx(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(BINARY, headers={"Authorization": "Bearer " + "a" * 65536})
    assert 400 <= response.status_code < 500
    assert response.status_code == 431
    assert response.headers["content-type"] == "application/problem+json"


def test_oversized_header_with_h11_is_4xx(tmp_path: Path) -> None:
    options = {"http": "h11", "h11_max_incomplete_event_size": 4 * 8192 + 1024}
    with running_stack(tmp_path, **options) as s, s.client() as client:
        response = client.get(BINARY, headers={"Authorization": "Bearer " + "a" * 65536})
        ok = client.get(BINARY, headers=auth(s.token()))
    assert 400 <= response.status_code < 500
    assert ok.status_code == 307


# --------------------------------------------------------------------------- entitlement and keys


def test_outside_every_allowed_prefix_is_403(stack: Stack) -> None:
    with stack.client() as client:
        other_product = client.get(
            "/v1/binaries/firmware/acme-x2/2.0.0/app.bin", headers=auth(stack.token())
        )
        no_claim = client.get(BINARY, headers=auth(stack.token(claims={})))
        sneaky = client.get(BINARY, headers=auth(stack.token(claims={"product": ""})))
    for response in (other_product, no_claim, sneaky):
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 403


@pytest.mark.parametrize(
    "path",
    [
        "/v1/binaries/firmware/acme-x1/../acme-x2/2.0.0/app.bin",
        "/v1/binaries/firmware/acme-x1/%2e%2e/acme-x2/2.0.0/app.bin",
        "/v1/binaries/firmware/acme-x1/..%2facme-x2/2.0.0/app.bin",
        "/v1/binaries/firmware/acme-x1/%252e%252e/acme-x2/app.bin",
        "/v1/binaries/firmware\\acme-x1\\app.bin",
        "/v1/binaries/firmware/acme-x1%5c..%5capp.bin",
        "/v1/binaries/firmware//acme-x1/app.bin",
        "/v1/binaries/firmware/acme-x1/1.0.0/",
        "/v1/binaries/firmware/acme-x1/%00app.bin",
        "/v1/binaries/firmware/acme-x1/%01app.bin",
        "/v1/binaries/firmware/acme-x1/%0d%0aSet-Cookie:x",
        "/v1/binaries/firmware/acme-x1/%EF%BC%8E%EF%BC%8E/app.bin",
        "/v1/binaries/firmware/acme-x1/a%20b",
        "/v1/binaries/",
        "/v1/binaries/" + "a" * 1025,
    ],
)
def test_hostile_keys_are_400_before_anything_else(stack: Stack, path: str) -> None:
    # No token at all: the key is judged first, so this is 400, not 401.
    status, headers, body = raw_get(stack.base, path)
    assert status == 400, path
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 400


def test_method_not_allowed(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post(BINARY, headers=auth(stack.token()))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_unknown_route_is_a_404_problem(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/v2/nothing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


# --------------------------------------------------------------------------- observability


SPEC_SERIES = [
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "gateway_auth_failures_total",
    "gateway_region_decisions_total",
    "gateway_signed_url_cache_total",
    "gateway_signing_duration_seconds",
    "gateway_upstream_requests_total",
    "gateway_streamed_bytes_total",
    "gateway_backend_up",
    "gateway_inflight_requests",
    "gateway_config_reloads_total",
    "gateway_build_info",
]


def test_metrics_expose_every_spec_series(stack: Stack) -> None:
    text = httpx.get(stack.base + "/metrics", timeout=10).text
    for name in SPEC_SERIES:
        base = name.removesuffix("_total")
        assert re.search(rf"^# TYPE {base}(_total)? ", text, re.M), name
    assert 'gateway_backend_up{backend="eu-central"} 1.0' in text
    assert 'gateway_build_info{version="' in text


def test_request_metrics_count_by_route_and_code(stack: Stack) -> None:
    before = stack.metric("gateway_requests_total", route="binaries", method="GET", code="307")
    count_before = stack.metric("gateway_request_duration_seconds_count", route="binaries")
    with stack.client() as client:
        for _ in range(3):
            assert client.get(BINARY, headers=auth(stack.token())).status_code == 307
    assert (
        stack.metric("gateway_requests_total", route="binaries", method="GET", code="307")
        == before + 3
    )
    assert (
        stack.metric("gateway_request_duration_seconds_count", route="binaries") == count_before + 3
    )
    assert stack.metric("gateway_signing_duration_seconds_count", backend="local") >= 1


def test_access_log_line_has_the_spec_keys_and_no_secrets(stack: Stack) -> None:
    token = stack.token("device-log")
    with stack.client() as client:
        response = client.get(
            BINARY,
            headers={**auth(token), "Range": "bytes=0-99", "User-Agent": "swupdate/2024.05"},
        )
    record = stack.log_records(response.headers["x-request-id"])
    assert set(record) == {
        "time", "request_id", "sub", "key", "region", "backend", "reason", "method",
        "status", "bytes", "range", "duration_s", "client", "user_agent", "regions",
    }  # fmt: skip
    assert record["sub"] == "device-log"
    assert record["key"] == KEY
    assert record["status"] == 307
    assert record["range"] == "bytes=0-99"
    assert record["user_agent"] == "swupdate/2024.05"
    assert record["backend"] == "local"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    everything = "\n".join(stack.log.lines())
    assert token not in everything
    assert "sig=" not in everything
    assert response.headers["location"] not in everything


def test_request_id_is_echoed_when_sane_and_replaced_when_not(stack: Stack) -> None:
    with stack.client() as client:
        sane = client.get(BINARY, headers={**auth(stack.token()), "X-Request-ID": "abc-123"})
        insane = client.get(BINARY, headers={**auth(stack.token()), "X-Request-ID": 'a b"<script>'})
        failed = client.get(BINARY, headers={"X-Request-ID": "err-1"})
    assert sane.headers["x-request-id"] == "abc-123"
    assert insane.headers["x-request-id"] != 'a b"<script>'
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", insane.headers["x-request-id"])
    assert failed.status_code == 401 and failed.headers["x-request-id"] == "err-1"


def test_health_readiness_and_openapi(stack: Stack) -> None:
    with stack.client() as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        openapi = client.get("/openapi.json")
    assert ready.status_code == 200
    assert openapi.status_code == 200
    document = openapi.json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/binaries/{key}", "/v1/urls/{key}", "/metrics", "/healthz", "/readyz"} <= set(
        document["paths"]
    )


def test_readyz_is_503_while_draining(stack: Stack) -> None:
    stack.app.draining = True
    try:
        with stack.client() as client:
            ready = client.get("/readyz")
            download = client.get(BINARY, headers=auth(stack.token()))
            alive = client.get("/healthz")
    finally:
        stack.app.draining = False
    assert ready.status_code == 503
    # Work that still arrives while load balancers notice is served, not refused.
    assert download.status_code == 307
    assert alive.status_code == 200


SHARED_GEOIP = Path(__file__).resolve().parents[2] / "shared" / "geoip"


@pytest.mark.shared
@pytest.mark.parametrize("database", ["GeoLite2-City-Test.mmdb", "GeoLite2-Country-Test.mmdb"])
def test_region_choice_with_maxminds_own_databases(tmp_path: Path, database: str) -> None:
    path = SHARED_GEOIP / database
    if not path.is_file():
        pytest.skip(f"{path} is not available")

    def edit(config: dict[str, Any]) -> None:
        config["geo"]["database"] = str(path)

    # City: the record's coordinates; Country: the country's centroid, which for
    # the US lies in Kansas, nearer Virginia than Oregon. MaxMind's Country test
    # database has no record for the Chinese network: no location, default region.
    city = "City" in database
    expected = {
        "london": "eu-west",
        "sweden": "eu-central",
        "us_west": "us-west" if city else "us-east",
        "japan": "ap-northeast",
        "china": "ap-northeast" if city else "us-east",
    }
    with running_stack(tmp_path, edit) as s, s.client() as client:
        for place, region in expected.items():
            response = client.get(
                BINARY, headers={**auth(s.token()), "X-Forwarded-For": FIXTURE_NETWORKS[place].ip}
            )
            assert response.status_code == 307, place
            assert response.headers["x-gateway-region"] == region, place


def test_max_header_bytes_is_configurable(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["limits"] = {"max_header_bytes": "1KiB"}

    with running_stack(tmp_path, edit) as s, s.client() as client:
        big = client.get(BINARY, headers={**auth(s.token()), "X-Padding": "p" * 1500})
        many = client.get(
            BINARY, headers={**auth(s.token()), **{f"X-Pad-{i}": "p" * 900 for i in range(5)}}
        )
        fine = client.get(BINARY, headers={**auth(s.token()), "X-Padding": "p" * 900})
    assert big.status_code == 431
    assert many.status_code == 431  # each field fits, the head (> 4 KiB) does not
    assert fine.status_code == 307


def test_request_target_and_header_count_limits(stack: Stack) -> None:
    status, headers, body = raw_get(stack.base, "/v1/binaries/firmware/" + "a" * 5000)
    assert status == 414
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 414
    many = {f"X-H-{i}": "1" for i in range(101)}
    with stack.client() as client:
        response = client.get(BINARY, headers={**auth(stack.token()), **many})
        fine = client.get(BINARY, headers={**auth(stack.token()), **dict(list(many.items())[:90])})
    assert response.status_code == 431
    assert fine.status_code == 307


def test_repeated_requests_are_answered_from_the_decision_cache(stack: Stack) -> None:
    token = stack.token("device-poller")
    london = {**auth(token), "X-Forwarded-For": FIXTURE_NETWORKS["london"].ip}
    japan = {**auth(token), "X-Forwarded-For": FIXTURE_NETWORKS["japan"].ip}
    before = stack.metric("gateway_decision_cache_hits_total")
    with stack.client() as client:
        # A token's first request is not admitted (a token seen once would only
        # push out entries that repeat); from its second on, decisions are kept.
        first = client.get(BINARY, headers=london)
        assert stack.metric("gateway_decision_cache_hits_total") == before
        second = client.get(BINARY, headers=london)
        again = client.get(BINARY, headers=london)
        # Same token and key, another location input: its own decision.
        elsewhere = client.get(BINARY, headers=japan)
        urls = client.get(f"/v1/urls/{KEY}", headers=london)
        urls_again = client.get(f"/v1/urls/{KEY}", headers=london)
    assert first.headers["location"] == second.headers["location"] == again.headers["location"]
    assert first.headers["x-gateway-region"] == again.headers["x-gateway-region"] == "eu-west"
    assert second.headers["x-request-id"] != again.headers["x-request-id"]
    assert elsewhere.headers["x-gateway-region"] == "ap-northeast"
    assert urls.json() == urls_again.json()
    assert stack.metric("gateway_decision_cache_hits_total") == before + 2
    # The cached answer is logged like any other.
    record = stack.log_records(again.headers["x-request-id"])
    assert (record["sub"], record["region"], record["client"], record["status"]) == (
        "device-poller", "eu-west", FIXTURE_NETWORKS["london"].ip, 307,
    )  # fmt: skip


def test_decision_cache_holds_its_bound(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["server"]["decision_cache_size"] = 3

    with running_stack(tmp_path, edit) as s, s.client() as client:
        tokens = [s.token(f"device-{i}") for i in range(10)]
        runtime = s.app.runtime
        assert runtime is not None and runtime.decisions is not None
        for token in tokens:
            assert client.get(BINARY, headers=auth(token)).status_code == 307
        assert len(runtime.decisions) == 0  # each token seen once: nothing admitted
        for token in tokens:
            assert client.get(BINARY, headers=auth(token)).status_code == 307
        assert len(runtime.decisions) == 3
        # The newest are kept: the last device is answered from the cache.
        before = s.metric("gateway_decision_cache_hits_total")
        assert client.get(BINARY, headers=auth(tokens[-1])).status_code == 307
        assert s.metric("gateway_decision_cache_hits_total") == before + 1
