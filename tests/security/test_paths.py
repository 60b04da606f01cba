"""Object-key traversal, encoding tricks, Host header games and open redirects.

Requests go over a plain socket (:func:`tests.security.http`), so the request
target arrives byte for byte: no client normalises ``..``, ``%2e`` or ``//``.
SPEC §3: after exactly one percent-decoding a key may hold only
``A-Z a-z 0-9 / . _ - ~ + = , @``, no empty, ``.`` or ``..`` segment, at most
1024 bytes; anything else is 400 ``invalid-key``, decided before the token is
looked at (these requests carry none, and still get 400, not 401).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.security import (
    assert_log_is_clean,
    assert_metrics_are_clean,
    assert_problem,
    bearer,
    http,
    metric,
)
from tests.stack import KEY, Stack, running_stack

P = "firmware/acme-x1/"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def edit(config: dict[str, Any]) -> None:
        # Keys starting with "@" are open to every device, so an "@host" key can
        # reach the signer and the test can look at the Location it produces.
        config["access"].append({"prefix": "@"})

    with running_stack(tmp_path_factory.mktemp("sec-paths"), edit) as s:
        yield s


def origin_netloc(stack: Stack) -> str:
    return urlsplit(stack.origins["us-east"]).netloc


# --------------------------------------------------------------------------- traversal

# Each reaches the gateway (the HTTP parser accepts the bytes) and must be a
# 400 invalid-key without a token being asked for.
TRAVERSALS = {
    "dotdot": P + "../acme-x2/2.0.0/app.bin",
    "leading-dotdot": "../../etc/passwd",
    "bare-dotdot": "..",
    "bare-dot": ".",
    "%2e%2e": P + "%2e%2e/acme-x2/2.0.0/app.bin",
    "%2E%2E": P + "%2E%2E/acme-x2/2.0.0/app.bin",
    ".%2e": P + ".%2e/acme-x2/2.0.0/app.bin",
    "%2e.": P + "%2e./acme-x2/2.0.0/app.bin",
    "..%2f": P + "..%2facme-x2/2.0.0/app.bin",
    "..%2F": P + "..%2Facme-x2/2.0.0/app.bin",
    "%2f..": "firmware/acme-x1%2f..%2facme-x2/2.0.0/app.bin",
    "%252e (double encoding)": P + "%252e%252e/acme-x2/2.0.0/app.bin",
    "%252f (double encoding)": P + "..%252facme-x2/2.0.0/app.bin",
    "%c0%ae (overlong UTF-8 dot)": P + "%c0%ae%c0%ae/acme-x2/2.0.0/app.bin",
    "%e0%80%ae (3-byte overlong dot)": P + "%e0%80%ae%e0%80%ae/acme-x2/2.0.0/app.bin",
    "%ef%bc%8e (fullwidth dot)": P + "%ef%bc%8e%ef%bc%8e/acme-x2/2.0.0/app.bin",
    "%c0%af (overlong slash)": P + "..%c0%afacme-x2/2.0.0/app.bin",
    "backslash": P + "..\\acme-x2\\2.0.0\\app.bin",
    "%5c": P + "..%5cacme-x2%5c2.0.0%5capp.bin",
    "%5C": P + "..%5Cacme-x2/2.0.0/app.bin",
    "//": "firmware//acme-x1/1.0.0/app.bin",
    "leading slash": "/etc/passwd",
    "%2f%2f": P + "1.0.0%2f%2fapp.bin",
    "/./": P + "./1.0.0/app.bin",
    "/%2e/": P + "%2e/1.0.0/app.bin",
    "trailing slash": P + "1.0.0/",
    "empty": "",
    "%00": P + "1.0.0/app.bin%00.txt",
    "%0a": P + "1.0.0/app.bin%0a",
    "%0d": P + "1.0.0/app.bin%0d",
    "%0d%0a header": P + "a%0d%0aSet-Cookie:%20injected=1",
    "%09 (tab)": P + "1.0.0%09/app.bin",
    "%20 (space)": P + "1.0.0/app%20.bin",
    "%7f (DEL)": P + "1.0.0/app.bin%7f",
    "%C3%A9 (unicode)": P + "caf%C3%A9/app.bin",
    "%E2%80%AE (RTL override)": P + "%E2%80%AEnib.ppa",
    "%ff (invalid UTF-8)": P + "%ff",
    "lone %": P + "100%",
    "truncated %2": P + "a%2",
    "%%32%65": P + "%%32%65%%32%65/acme-x2",
    "semicolon": P + "1.0.0/app.bin;jsessionid=1",
    "colon": P + "C:/windows",
    "pipe": P + "a|b",
    "quote": P + 'a"b',
    "angle": P + "a<script>",
    "1025 bytes": P + "a" * (1025 - len(P)),
}

# Bytes the HTTP parser itself refuses: uvicorn answers 400 before the
# gateway runs (no problem document, nothing logged, nothing signed).
PARSER_REJECTS = {
    "raw tab": b"a\tb",
    "raw space": b"a b",
    "raw NUL": b"a\x00b",
    "raw CR": b"a\rb",
    "raw LF": b"a\nb",
    "raw DEL": b"a\x7fb",
    "raw UTF-8": "café".encode(),
    "raw byte 0xff": b"a\xffb",
}


@pytest.mark.parametrize("route", ["/v1/binaries/", "/v1/urls/"])
@pytest.mark.parametrize("name", list(TRAVERSALS))
def test_traversal_and_encoding_variants_are_invalid_keys(
    stack: Stack, route: str, name: str
) -> None:
    missing = metric(stack.base, "gateway_auth_failures_total", reason="missing")
    response = http(stack.base, route + TRAVERSALS[name])
    assert_problem(response, 400, "invalid-key")
    assert response.header("www-authenticate") is None
    assert response.header("x-gateway-region") is None
    # Decided before authentication: the missing token was never looked at.
    assert metric(stack.base, "gateway_auth_failures_total", reason="missing") == missing


@pytest.mark.parametrize("name", list(PARSER_REJECTS))
def test_bytes_the_http_parser_refuses(stack: Stack, name: str) -> None:
    response = http(stack.base, b"/v1/binaries/" + P.encode() + PARSER_REJECTS[name])
    assert response.status == 400
    assert response.header("location") is None
    assert response.header("x-request-id") is None  # the gateway never ran


def test_a_valid_key_with_a_valid_token_still_works(stack: Stack) -> None:
    # The control for the cases above: the same route, a clean key.
    response = http(stack.base, f"/v1/binaries/{KEY}", [bearer(stack.token())])
    assert response.status == 307


def test_one_percent_decoding_is_applied(stack: Stack) -> None:
    # %2F and %41 decode once to "/" and "A"; the key is the decoded one.
    encoded = "firmware%2Facme-x1%2F1.0.0%2F%61pp.bin"
    response = http(stack.base, f"/v1/urls/{encoded}", [bearer(stack.token())])
    assert response.status == 200
    assert urlsplit(response.json()["url"]).path == f"/{KEY}"


def test_a_raw_fragment_marker_ends_the_key(stack: Stack) -> None:
    # A "#" cannot be in a request target (RFC 9112 section 3.2); uvicorn drops
    # what follows it, so the key is the part before it, under the same checks.
    response = http(stack.base, f"/v1/urls/{KEY}#../../acme-x2", [bearer(stack.token())])
    assert response.status == 200
    assert urlsplit(response.json()["url"]).path == f"/{KEY}"
    response = http(stack.base, f"/v1/urls/{P}..#x", [bearer(stack.token())])
    assert_problem(response, 400, "invalid-key")


@pytest.mark.parametrize(
    ("target", "status", "slug"),
    [
        ("/V1/BINARIES/" + KEY, 404, "not-found"),
        ("/v1/binaries", 404, "not-found"),
        ("/v1//binaries/" + KEY, 404, "not-found"),
        ("/v1/binaries/../" + KEY, 400, "invalid-key"),
        ("/v1/binaries/./" + KEY, 400, "invalid-key"),
    ],
)
def test_near_miss_routes(stack: Stack, target: str, status: int, slug: str) -> None:
    assert_problem(http(stack.base, target, [bearer(stack.token())]), status, slug)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/%62inaries/" + KEY,
        "/v1/binaries%2F" + KEY,
        "/v1/binaries%2f" + KEY,
        "/%761/binaries/" + KEY,
        "/v1/%75rls/" + KEY,
    ],
)
def test_a_percent_encoded_route_prefix_is_no_route(stack: Stack, target: str) -> None:
    response = http(stack.base, target, [bearer(stack.token())])
    assert_problem(response, 404, "not-found")


# --------------------------------------------------------------------------- Host games


def same_place(url: str | None, expected: str) -> bool:
    """Same scheme, host, port and path (the signature may roll over to the next
    signing window between two requests; the place it points to may not change)."""
    return url is not None and urlsplit(url)[:3] == urlsplit(expected)[:3]


def baseline(stack: Stack) -> tuple[str, str]:
    """The Location and the /v1/urls URL for KEY without any games."""
    token = stack.token()
    location = http(stack.base, f"/v1/binaries/{KEY}", [bearer(token)]).header("location")
    url = http(stack.base, f"/v1/urls/{KEY}", [bearer(token)]).json()["url"]
    assert location is not None and same_place(url, location)
    assert urlsplit(location).netloc == origin_netloc(stack)
    return location, url


HOST_GAMES: dict[str, list[tuple[str, str]]] = {
    "X-Forwarded-Host": [("X-Forwarded-Host", "evil.example")],
    "X-Forwarded-Host+Proto+Port": [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "//evil.example"),
    ],
    "Forwarded host": [("Forwarded", 'for=1.2.3.4;host="evil.example";proto=https')],
    "X-Host": [("X-Host", "evil.example"), ("X-Original-Host", "evil.example")],
    "X-Original-URL": [("X-Original-URL", "//evil.example/x"), ("X-Rewrite-URL", "/evil")],
}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:443", "127.0.0.1@evil.example"])
def test_the_host_header_is_never_reflected(stack: Stack, host: str) -> None:
    location, url = baseline(stack)
    token = stack.token()
    response = http(stack.base, f"/v1/binaries/{KEY}", [bearer(token)], host=host)
    assert response.status == 307
    assert same_place(response.header("location"), location)
    response = http(stack.base, f"/v1/urls/{KEY}", [bearer(token)], host=host)
    assert same_place(response.json()["url"], url)
    assert b"evil" not in response.head + response.body


@pytest.mark.parametrize("name", list(HOST_GAMES))
def test_forwarded_host_headers_are_never_reflected(stack: Stack, name: str) -> None:
    location, url = baseline(stack)
    headers = [bearer(stack.token()), *HOST_GAMES[name]]
    response = http(stack.base, f"/v1/binaries/{KEY}", headers, host="evil.example")
    assert response.status == 307
    assert same_place(response.header("location"), location)
    response = http(stack.base, f"/v1/urls/{KEY}", headers, host="evil.example")
    assert same_place(response.json()["url"], url)
    assert b"evil" not in response.head + response.body


def test_absolute_form_request_target_is_not_reflected(stack: Stack) -> None:
    location, _ = baseline(stack)
    target = f"http://evil.example/v1/binaries/{KEY}"
    response = http(stack.base, target, [bearer(stack.token())], host="evil.example")
    assert response.status == 307
    assert same_place(response.header("location"), location)


def test_no_host_and_two_hosts_change_nothing(stack: Stack) -> None:
    location, _ = baseline(stack)
    token = stack.token()
    response = http(stack.base, f"/v1/binaries/{KEY}", [bearer(token)], host=None)
    assert same_place(response.header("location"), location)
    two = [("Host", "evil.example"), bearer(token)]
    response = http(stack.base, f"/v1/binaries/{KEY}", two, host="gateway.test")
    assert response.status == 307
    assert same_place(response.header("location"), location)


# --------------------------------------------------------------------------- open redirect

OPEN_REDIRECT_400 = [
    "//evil.example/x",
    "%2f%2fevil.example/x",
    "/%2fevil.example",
    "http:%2f%2fevil.example",
    "http://evil.example",
    "https:evil.example",
    "\\\\evil.example\\x",
    "%5c%5cevil.example",
    "%09//evil.example",
    "evil.example%23",
    "evil.example%3F",
    P + "..%2f..%2f..%2f%2fevil.example",
    "javascript:alert(1)",
    "@evil.example:80/x",
]


@pytest.mark.parametrize("key", OPEN_REDIRECT_400)
def test_redirect_looking_keys_are_invalid(stack: Stack, key: str) -> None:
    response = http(stack.base, "/v1/binaries/" + key, [bearer(stack.token())])
    assert_problem(response, 400, "invalid-key")


@pytest.mark.parametrize(
    "key", ["@evil.example", "@evil.example/x", "@@evil.example", P + "@evil.example"]
)
def test_at_sign_keys_stay_on_the_configured_origin(stack: Stack, key: str) -> None:
    response = http(stack.base, "/v1/binaries/" + key, [bearer(stack.token())])
    assert response.status == 307
    location = response.header("location")
    assert location is not None
    parts = urlsplit(location)
    assert parts.scheme == "http" and parts.netloc == origin_netloc(stack)
    assert parts.hostname == "127.0.0.1" and parts.username is None
    assert parts.path == "/" + key


def test_an_at_sign_key_outside_the_rules_is_not_entitled(stack: Stack) -> None:
    response = http(
        stack.base, "/v1/binaries/firmware/acme-x2@evil.example", [bearer(stack.token())]
    )
    assert_problem(response, 403, "not-entitled")


# --------------------------------------------------------------------------- the scan


def test_nothing_leaked(stack: Stack) -> None:
    stack.app.access_log.flush()
    time.sleep(0.3)
    lines = stack.log.lines()
    assert len(lines) > 100
    assert_log_is_clean(lines, secrets=[stack.token()])
    for line in lines:
        record = json.loads(line)
        if record["status"] == 400:
            assert record["key"] is None and record["sub"] is None  # refused before auth
    assert_metrics_are_clean(http(stack.base, "/metrics").body.decode())
