"""CRLF injection, duplicate and oversized headers.

A header value can reach a response header (X-Request-ID is echoed) or the
access log (Range, User-Agent, the client address from X-Forwarded-For). The
bytes go over a plain socket, so every trick an attacker can put on the wire
is tried: bare CR or LF, obs-fold continuation lines, NUL and other controls
(the HTTP parser must refuse these with 400 before the gateway runs), and the
ones that do reach the gateway (percent-encoded CRLF, U+560D U+560A whose
low bytes are CR LF, U+2028). The answer never carries an injected header, an
X-Request-ID is echoed only when it is sane, and the access log stays one
JSON object per request.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.cli import uvicorn_options
from gateway.server import server_config
from tests.security import (
    RawResponse,
    assert_log_is_clean,
    assert_metrics_are_clean,
    assert_problem,
    assert_refused_token,
    bearer,
    http,
)
from tests.stack import KEY, Stack, running_stack
from tests.support import free_port, run_server

BINARY = f"/v1/binaries/{KEY}"
GENERATED_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]+")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("sec-headers")) as s:
        yield s


def assert_not_injected(response: RawResponse) -> None:
    names = {name for name, _ in response.headers}
    assert "x-injected" not in names and "set-cookie" not in names
    assert b"injected" not in response.head.lower()


def log_line(stack: Stack, request_id: str, timeout: float = 3.0) -> dict[str, Any]:
    """The one access-log record of ``request_id`` (asserting there is exactly one)."""
    deadline = time.monotonic() + timeout
    while True:
        # The record is written just after the response is sent; flushing here
        # (instead of waiting for the app's 0.2 s flusher) keeps the suite fast.
        stack.app.access_log.flush()
        lines = [line for line in stack.log.lines() if f'"request_id":"{request_id}"' in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(lines) == 1, f"{len(lines)} access-log lines for {request_id}"
    record = json.loads(lines[0])
    assert record["request_id"] == request_id
    return dict(record)


# --------------------------------------------------------------------------- refused by the parser

HEADERS = [
    "X-Request-ID",
    "Range",
    "User-Agent",
    "X-Forwarded-For",
    "Authorization",
    "If-None-Match",
]
WIRE_TRICKS = {
    "bare CR": b"v\rX-Injected: 1",
    "bare LF": b"v\nX-Injected: 1",
    "obs-fold SP": b"v\r\n X-Injected: 1",
    "obs-fold HTAB": b"v\r\n\tX-Injected: 1",
    "NUL": b"v\x00X-Injected: 1",
    "VT": b"v\x0bX-Injected: 1",
    "FF": b"v\x0cX-Injected: 1",
    "DEL": b"v\x7fX-Injected: 1",
}


@pytest.mark.parametrize("trick", list(WIRE_TRICKS))
@pytest.mark.parametrize("header", HEADERS)
def test_control_bytes_in_a_header_are_refused_by_the_parser(
    stack: Stack, header: str, trick: str
) -> None:
    response = http(stack.base, BINARY, [bearer(stack.token()), (header, WIRE_TRICKS[trick])])
    assert response.status == 400
    assert response.header("location") is None
    assert response.header("x-request-id") is None  # the gateway never ran
    assert_not_injected(response)


def test_control_bytes_on_operational_routes_are_refused_too(stack: Stack) -> None:
    for trick in WIRE_TRICKS.values():
        response = http(stack.base, "/healthz", [("X-Request-ID", trick)])
        assert response.status == 400
        assert_not_injected(response)


# --------------------------------------------------------------------------- reaching the gateway

REACHING = {
    "percent-encoded CRLF": "v%0d%0aX-Injected:%201",
    "escaped CRLF": "v\\r\\nX-Injected: 1",
    "U+560D U+560A": "\u560d\u560aX-Injected: 1",
    "U+2028 U+2029": "v\u2028X-Injected\u2029: 1",
    "U+0085 NEL": "v\u0085X-Injected: 1",
    "html": "<script>alert(1)</script>",
    "json breaker": '"}{"status":200,"injected":"1',
}


def wire(value: str) -> bytes:
    # Non-Latin-1 characters go as their UTF-8 bytes, which is what such an
    # attack sends; the gateway reads header bytes as Latin-1.
    return value.encode("utf-8") if any(ord(c) > 255 for c in value) else value.encode("latin-1")


@pytest.mark.parametrize("trick", list(REACHING))
@pytest.mark.parametrize("header", ["X-Request-ID", "Range", "User-Agent", "X-Forwarded-For"])
def test_hostile_values_never_reach_a_response_header(
    stack: Stack, header: str, trick: str
) -> None:
    value = wire(REACHING[trick])
    response = http(stack.base, BINARY, [bearer(stack.token()), (header, value)])
    assert response.status == 307
    assert_not_injected(response)
    request_id = response.header("x-request-id")
    assert request_id is not None and GENERATED_ID.fullmatch(request_id)
    record = log_line(stack, request_id)
    # Logged as asked (Range, User-Agent), JSON-escaped on one line.
    if header == "User-Agent":
        assert record["user_agent"] == value.decode("latin-1")
    if header == "Range":
        assert record["range"] == value.decode("latin-1")
    if header == "X-Forwarded-For":
        assert record["client"] == "127.0.0.1"  # garbage is no address


@pytest.mark.parametrize("trick", list(REACHING))
def test_hostile_values_in_the_key_are_invalid(stack: Stack, trick: str) -> None:
    key = "firmware/acme-x1/" + "".join(
        chr(b) if chr(b).isascii() and chr(b).isalnum() else f"%{b:02X}"
        for b in wire(REACHING[trick])
    )
    response = http(stack.base, "/v1/binaries/" + key)
    assert_problem(response, 400, "invalid-key")
    assert_not_injected(response)


def test_a_new_header_line_is_just_another_request_header(stack: Stack) -> None:
    # "value\r\nX-Injected: 1" on the wire is two request headers; nothing of the
    # second one comes back.
    response = http(
        stack.base, BINARY, [bearer(stack.token()), ("X-Request-ID", b"abc\r\nX-Injected: 1")]
    )
    assert response.status == 307
    assert response.header("x-request-id") == "abc"
    assert_not_injected(response)


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("req-0001", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("abc def", False),
        ("abc;def", False),
        ("abc,def", False),
        ('abc"def', False),
        ("", False),
    ],
)
@pytest.mark.parametrize("route", [BINARY, "/healthz", "/v1/binaries/firmware/..", "/nope"])
def test_x_request_id_is_echoed_only_when_sane(
    stack: Stack, route: str, sent: str, echoed: bool
) -> None:
    response = http(stack.base, route, [bearer(stack.token()), ("X-Request-ID", sent)])
    request_id = response.header("x-request-id")
    assert request_id is not None
    if echoed:
        assert request_id == sent
    else:
        assert GENERATED_ID.fullmatch(request_id)


# --------------------------------------------------------------------------- duplicates


def test_two_x_forwarded_for_lines_mean_the_joined_list(stack: Stack) -> None:
    sweden = "89.160.20.112"  # fixture GeoIP: SE, pinned to the EU regions
    joined = http(
        stack.base, BINARY, [bearer(stack.token()), ("X-Forwarded-For", f"{sweden}, 127.0.0.1")]
    )
    assert joined.header("x-gateway-region") == "eu-central"
    lines = http(
        stack.base,
        BINARY,
        [
            bearer(stack.token()),
            ("X-Forwarded-For", sweden),
            ("X-Forwarded-For", "127.0.0.1"),
        ],
    )
    assert lines.header("x-gateway-region") == joined.header("x-gateway-region")


def test_a_spoofed_x_forwarded_for_is_not_believed_past_a_trusted_hop(stack: Stack) -> None:
    # The right-most untrusted hop is the client: a device cannot pick its region
    # by prepending an address.
    sweden, us_west = "89.160.20.112", "216.160.83.56"
    response = http(
        stack.base, BINARY, [bearer(stack.token()), ("X-Forwarded-For", f"{sweden}, {us_west}")]
    )
    assert response.header("x-gateway-region") == "us-west"


# --------------------------------------------------------------------------- size limits


def test_one_header_field_over_the_limit_is_431(stack: Stack) -> None:
    assert_problem(http(stack.base, BINARY, [("X-Pad", "a" * 8193)]), 431, "header-too-large")
    # Exactly at the limit passes the check (and then needs a token).
    assert_refused_token(http(stack.base, BINARY, [("X-Pad", "a" * 8192)]), missing=True)


def test_too_many_header_fields_is_431(stack: Stack) -> None:
    # 100 fields in all (Host, Connection and 98 more) pass; 101 do not.
    fields = [(f"X-H{i}", "1") for i in range(98)]
    assert_refused_token(http(stack.base, BINARY, fields), missing=True)
    assert_problem(http(stack.base, BINARY, [*fields, ("X-H98", "1")]), 431, "header-too-large")


def test_a_request_head_over_four_fields_worth_is_431(stack: Stack) -> None:
    fields = [(f"X-Pad{i}", "a" * 8000) for i in range(5)]
    assert_problem(http(stack.base, BINARY, fields), 431, "header-too-large")


def test_a_megabyte_header_is_fast_and_431(stack: Stack) -> None:
    started = time.perf_counter()
    response = http(stack.base, BINARY, [bearer("eyJ" + "A" * 1_000_000)])
    assert_problem(response, 431, "header-too-large")
    assert time.perf_counter() - started < 2


@pytest.fixture(scope="module")
def production_server(stack: Stack) -> Iterator[str]:
    """The same app behind the server `gateway serve` builds (gateway.server.server_config
    with gateway.cli.uvicorn_options); lifespan off: the stack's server owns it."""
    options = {**uvicorn_options(stack.app.settings), "lifespan": "off", "log_level": "warning"}
    config = server_config(stack.app, host="127.0.0.1", port=free_port(), **options)
    with run_server(config) as base:
        yield base


def test_the_production_server_serves_the_same_answers(
    production_server: str, stack: Stack
) -> None:
    assert http(production_server, BINARY, [bearer(stack.token())]).status == 307
    assert_problem(
        http(production_server, BINARY, [("X-Pad", "a" * 8193)]), 431, "header-too-large"
    )


def test_the_production_server_refuses_a_huge_head_on_every_route(production_server: str) -> None:
    # A server may answer 431 and close while the client is still sending; then
    # the answer can be lost to the reset. Either way the head was not served.
    started = time.perf_counter()
    status = send_huge_head(production_server, "/healthz", 1_000_000)
    assert status in (431, None), status
    assert time.perf_counter() - started < 2
    assert http(production_server, "/healthz").status == 200  # and the server is fine


def send_huge_head(base: str, target: str, size: int) -> int | None:
    """Send a request head with a ``size``-byte field in 64 KiB pieces; the status
    of the answer, or None when the server closed the connection before one came."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    head = f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\nX-Pad: ".encode()
    data = head + b"a" * size + b"\r\nConnection: close\r\n\r\n"
    received = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        try:
            for offset in range(0, len(data), 65536):
                sock.sendall(data[offset : offset + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    if not received.startswith(b"HTTP/1.1 "):
        return None
    return int(received.split(b" ", 2)[1])


# --------------------------------------------------------------------------- the scan


def test_the_access_log_stays_one_json_object_per_line(stack: Stack) -> None:
    time.sleep(0.3)
    lines = stack.log.lines()
    assert len(lines) > 50
    assert_log_is_clean(lines, secrets=[stack.token()])
    ids = [json.loads(line)["request_id"] for line in lines]
    generated = [i for i in ids if GENERATED_ID.fullmatch(i)]
    assert len(generated) == len(set(generated))  # one line per request
    assert_metrics_are_clean(http(stack.base, "/metrics").body.decode())
