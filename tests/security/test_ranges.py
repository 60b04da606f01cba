"""Range abuse in stream mode: many, overlapping, huge, negative and garbage ranges.

In stream mode the gateway forwards at most one syntactically valid byte range
(``gateway.stream.single_range``) and ignores anything else (RFC 9110 section
14.2 lets a server ignore Range), so no request can make it do quadratic work
(Apache CVE-2011-3192). Each case asserts the exact answer and bytes, that it
is never a 5xx, and that it is fast.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.security import (
    RawResponse,
    assert_log_is_clean,
    assert_metrics_are_clean,
    assert_problem,
    bearer,
    http,
)
from tests.stack import FILES, KEY, Stack, running_stack

BINARY = f"/v1/binaries/{KEY}"
DATA = FILES[KEY]
SIZE = len(DATA)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def edit(config: dict[str, Any]) -> None:
        config["delivery"] = {"mode": "stream"}

    with running_stack(tmp_path_factory.mktemp("sec-ranges"), edit) as s:
        yield s


def fetch(stack: Stack, *headers: tuple[str, str], method: str = "GET") -> RawResponse:
    started = time.perf_counter()
    response = http(stack.base, BINARY, [bearer(stack.token()), *headers], method=method)
    assert time.perf_counter() - started < 2, "a Range header made the gateway slow"
    assert response.status < 500
    return response


def assert_whole(response: RawResponse) -> None:
    assert response.status == 200
    assert response.header("content-range") is None
    assert response.header("content-length") == str(SIZE)
    assert response.body == DATA


def assert_part(response: RawResponse, first: int, last: int) -> None:
    assert response.status == 206
    assert response.header("content-range") == f"bytes {first}-{last}/{SIZE}"
    assert response.body == DATA[first : last + 1]


def assert_unsatisfiable(response: RawResponse) -> None:
    # The origin's own problem document, passed through (stream responses are private).
    assert_problem(response, 416, "range-not-satisfiable", cache_control="private")
    assert response.header("content-range") == f"bytes */{SIZE}"


IGNORED = {
    "1000 ranges": "bytes=" + ",".join(f"{i}-{i}" for i in range(1000))[:7000],
    "overlapping": "bytes=0-99,50-149,0-" + str(SIZE - 1),
    "same range twice": "bytes=0-0,0-0",
    "23-digit last": "bytes=0-99999999999999999999999",
    "23-digit first": "bytes=99999999999999999999999-",
    "20-digit suffix": "bytes=-99999999999999999999",
    "double minus": "bytes=--5",
    "negative first": "bytes=-1-2",
    "last before first": "bytes=5-1",
    "garbage": "garbage",
    "empty spec": "bytes=",
    "lone minus": "bytes=-",
    "letters": "bytes=a-b",
    "hex": "bytes=0x10-20",
    "exponent": "bytes=1e3-2e3",
    "trailing comma": "bytes=0-1,",
    "comma only": ",",
    "other unit": "items=0-5",
    "latin-1 half": "bytes=\u00bd-1",
    "superscript digits": "bytes=\u00b9-\u00b2",
    "over 64 characters": "bytes=" + "0" * 56 + "1-2",
    "float": "bytes=1.5-2",
    "plus sign": "bytes=+1-2",
    "20-digit spelling of 1": "bytes=00000000000000000001-2",
}


@pytest.mark.parametrize("name", list(IGNORED))
def test_abusive_ranges_are_ignored(stack: Stack, name: str) -> None:
    assert_whole(fetch(stack, ("Range", IGNORED[name])))


def test_ten_thousand_ranges_are_refused_by_the_header_limit(stack: Stack) -> None:
    value = "bytes=" + ",".join(["0-0"] * 10_000)
    response = fetch(stack, ("Range", value))
    assert_problem(response, 431, "header-too-large")


@pytest.mark.parametrize(
    ("value", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=-5", SIZE - 5, SIZE - 1),
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE - 1),
        ("bytes=0-9999999999999999999", 0, SIZE - 1),  # 19 digits: valid, clamped
        ("bytes=-9999999999999999999", 0, SIZE - 1),  # a suffix longer than the file
        ("bytes = 0 - 5", 0, 5),
        ("bytes=0000000000000000001-2", 1, 2),  # 19-digit spelling of 1
    ],
)
def test_valid_single_ranges_are_served(stack: Stack, value: str, first: int, last: int) -> None:
    assert_part(fetch(stack, ("Range", value)), first, last)


@pytest.mark.parametrize(
    "value", [f"bytes={SIZE}-", "bytes=9999999999999999999-", "bytes=-0", f"bytes={SIZE}-{SIZE}"]
)
def test_unsatisfiable_ranges_are_416(stack: Stack, value: str) -> None:
    assert_unsatisfiable(fetch(stack, ("Range", value)))


def test_head_with_an_abusive_range(stack: Stack) -> None:
    response = fetch(stack, ("Range", IGNORED["overlapping"]), method="HEAD")
    assert response.status == 200
    assert response.header("content-length") == str(SIZE)
    assert response.body == b""


def test_if_range_junk_gives_the_whole_entity(stack: Stack) -> None:
    assert_whole(fetch(stack, ("Range", "bytes=0-0"), ("If-Range", '"not-the-etag"')))
    assert_whole(fetch(stack, ("Range", "bytes=0-0"), ("If-Range", "x" * 200)))


def test_an_if_range_too_long_to_forward_gives_the_whole_entity(stack: Stack) -> None:
    # RFC 9110 section 13.1.5: the range is only for the version If-Range names;
    # a condition the gateway will not forward must not be dropped alone.
    assert_whole(fetch(stack, ("Range", "bytes=0-0"), ("If-Range", '"' + "x" * 300 + '"')))


def test_two_range_lines_are_ignored(stack: Stack) -> None:
    assert_whole(fetch(stack, ("Range", "bytes=0-0"), ("Range", "bytes=5-9")))


@pytest.mark.parametrize("header", ["If-None-Match", "If-Range", "If-Modified-Since"])
def test_obs_text_in_a_conditional_header_is_ignored(stack: Stack, header: str) -> None:
    # RFC 9110 section 5.5 allows obs-text (0x80-0xFF) in a field value; none is
    # a valid entity tag or date, so the condition is ignored -- and with it the
    # Range when the condition was If-Range (section 13.1.5).
    response = fetch(stack, ("Range", "bytes=0-0"), (header, '"\x80abc"'))
    if header == "If-Range":
        assert_whole(response)
    else:
        assert_part(response, 0, 0)


def test_many_abusive_requests_stay_fast(stack: Stack) -> None:
    started = time.perf_counter()
    for value in list(IGNORED.values()) * 2:
        assert fetch(stack, ("Range", value)).status == 200
    assert time.perf_counter() - started < 5


def test_nothing_leaked(stack: Stack) -> None:
    time.sleep(0.3)
    lines = stack.log.lines()
    assert_log_is_clean(lines, secrets=[stack.token()])
    assert_metrics_are_clean(http(stack.base, "/metrics").body.decode())
