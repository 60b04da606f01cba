"""Stream mode end to end: a real gateway under uvicorn, real origins, a real client.

The origins are :class:`tests.faulty_origin.FaultyOrigin` (raw HTTP/1.1 that
fails on purpose: a status, a hang, a cut or a stall mid-body, another ETag,
Range ignored) and the built-in origin (:mod:`gateway.origin`). The device
is httpx; every body is compared by sha256 with the file on disk.

Region order: no GeoIP database is configured, so the policy order is the
file order of ``regions`` (the first is the default region), which is the
order failover walks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.origin import create_origin_app
from gateway.stream import MAX_ERROR_BODY
from tests.faulty_origin import Fault, FaultyOrigin, copy_tree_with_mtime
from tests.stack import Gateway, running_gateway
from tests.support import free_port, serve

KEY = "firmware/acme-x1/1.0.0/app.bin"
CHANGED = "firmware/acme-x1/1.0.2/app.bin"  # rewritten in one region by one test
BIG = "firmware/acme-x1/2.0.0/big.bin"  # only in origin "a": the backpressure test
MANUAL = "manuals/acme-x1/guide.pdf"
MTIME = 1_767_225_600
DATA = os.urandom(3 * 1024 * 1024 + 12_345)  # odd size: no chunk boundary lines up
SIZE = len(DATA)
SHA = hashlib.sha256(DATA).hexdigest()
ETAG = f'"{SIZE:x}-{MTIME * 10**9:x}"'  # the built-in origin's size-mtime tag
BIG_SIZE = 48 * 1024 * 1024
FILES = {KEY: DATA, CHANGED: DATA, MANUAL: b"%PDF-1.7 a manual\n" * 100}
LOCATION = [50.11, 8.68]


@dataclass
class Origins:
    a: FaultyOrigin
    b: FaultyOrigin
    c: FaultyOrigin
    real: str  # the built-in origin's base URL
    real_secret: bytes
    keys: Path  # shared signing-key directory for every gateway

    def faulty(self) -> list[FaultyOrigin]:
        return [self.a, self.b, self.c]


@pytest.fixture(scope="module")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origins]:
    base = tmp_path_factory.mktemp("stream")
    with contextlib.ExitStack() as stack:
        faulty = {}
        for name in ("a", "b", "c"):
            root = copy_tree_with_mtime(FILES, base / name, MTIME)
            faulty[name] = stack.enter_context(FaultyOrigin(root, f"secret-{name}".encode()))
        big = base / "a" / BIG
        big.parent.mkdir(parents=True, exist_ok=True)
        with big.open("wb") as f:
            block = os.urandom(1024 * 1024)
            for _ in range(BIG_SIZE // len(block)):
                f.write(block)
        real_root = copy_tree_with_mtime(FILES, base / "real", MTIME)
        real = stack.enter_context(serve(create_origin_app(real_root, b"secret-real")))
        yield Origins(faulty["a"], faulty["b"], faulty["c"], real, b"secret-real", base / "gateway")


@pytest.fixture(autouse=True)
def _reset(origins: Origins) -> None:
    for origin in origins.faulty():
        origin.reset()


def local(url: str, secret: bytes) -> dict[str, Any]:
    return {
        "location": LOCATION,
        "backend": {"type": "local", "url": url, "secret": secret.decode()},
    }


def regions_of(origins: Origins, *names: str) -> dict[str, dict[str, Any]]:
    """Regions in this order; "a"/"b"/"c" are faulty origins, "real" the built-in
    origin, "dead" a port nothing listens on."""
    out = {}
    for name in names:
        if name == "real":
            out[name] = local(origins.real, origins.real_secret)
        elif name == "dead":
            out[name] = local(f"http://127.0.0.1:{free_port()}", b"secret-dead")
        else:
            origin: FaultyOrigin = getattr(origins, name)
            out[name] = local(origin.url, origin.secret)
    return out


@contextlib.contextmanager
def gateway(
    origins: Origins,
    *names: str,
    mode: str = "stream",
    access: list[dict[str, str]] | None = None,
    limits: dict[str, Any] | None = None,
    **upstream: Any,
) -> Iterator[Gateway]:
    upstream = {"connect_timeout": 1.0, "read_timeout": 2.0, **upstream}
    sections: dict[str, Any] = {
        "delivery": {"mode": mode, "upstream": upstream},
        # No active probes: every request an origin records is the download's own.
        "health": {"active": False},
    }
    if access is not None:
        sections["access"] = access
    if limits is not None:
        sections["limits"] = limits
    with running_gateway(origins.keys, regions_of(origins, *names), **sections) as gw:
        yield gw


def download(
    gw: Gateway, key: str = KEY, method: str = "GET", token: str | None = None, **headers: str
) -> tuple[httpx.Response, float]:
    """One device request with a valid token; the response and its duration."""
    began = time.perf_counter()
    response = httpx.request(
        method,
        f"{gw.base}/v1/binaries/{key}",
        headers={"Authorization": f"Bearer {token or gw.token()}", **headers},
        timeout=15,
    )
    return response, time.perf_counter() - began


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def log_record(gw: Gateway, request_id: str, timeout: float = 3.0) -> dict[str, Any]:
    """The access-log line of one request (the log flushes every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gw.log.lines():
            record = json.loads(line)
            if record["request_id"] == request_id:
                return dict(record)
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for request {request_id}")


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def read_cut(gw: Gateway, key: str = KEY, **headers: str) -> tuple[int, int | None, bytes]:
    """Read a response that may end early: (status, Content-Length, bytes received)."""
    received = bytearray()
    with httpx.stream(
        "GET",
        f"{gw.base}/v1/binaries/{key}",
        headers={"Authorization": f"Bearer {gw.token()}", **headers},
        timeout=15,
    ) as response:
        length = response.headers.get("content-length")
        with contextlib.suppress(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
        return response.status_code, int(length) if length else None, bytes(received)


# --------------------------------------------------------------------------- the download


def test_stream_passes_bytes_and_validators_and_never_the_token(origins: Origins) -> None:
    origins.a.fault = Fault(
        extra_headers={
            "x-amz-meta-sha256": SHA,
            "Repr-Digest": "sha-256=:AAAA:",
            "Set-Cookie": "storage=internal",
            "x-amz-request-id": "internal-id",
        }
    )
    with gateway(origins, "a", "b") as gw:
        before = gw.metric("gateway_streamed_bytes_total", region="a")
        token = gw.token()
        response, _ = download(
            gw, token=token, **{"X-Request-Id": "plain-get", "Accept-Encoding": "gzip"}
        )
        assert response.status_code == 200
        assert sha(response.content) == SHA
        headers = response.headers
        assert headers["content-length"] == str(SIZE)
        assert headers["etag"] == ETAG
        assert headers["last-modified"] == formatdate(MTIME, usegmt=True)
        assert headers["accept-ranges"] == "bytes"
        assert headers["content-type"] == "application/octet-stream"
        assert headers["x-gateway-region"] == "a"
        assert headers["cache-control"] == "private"
        # Integrity headers pass; the storage's own cookies and ids do not.
        assert headers["x-amz-meta-sha256"] == SHA
        assert headers["repr-digest"] == "sha-256=:AAAA:"
        assert "set-cookie" not in headers
        assert "x-amz-request-id" not in headers

        (upstream,) = origins.a.requests
        assert upstream.method == "GET"
        assert upstream.target.startswith(f"/{KEY}?expires=")
        assert "authorization" not in upstream.headers
        assert all(token not in v for v in upstream.headers.values())
        assert upstream.headers["user-agent"].startswith("gateway/")
        # Bytes exactly as stored: a compressed answer would break Content-Length and Range.
        assert upstream.headers["accept-encoding"] == "identity"
        assert upstream.finished and upstream.body_sent == SIZE

        assert gw.metric("gateway_streamed_bytes_total", region="a") - before == SIZE
        assert gw.metric("gateway_upstream_requests_total", backend="a", code="200") == 1
        record = log_record(gw, "plain-get")
        assert (record["status"], record["bytes"], record["regions"]) == (200, SIZE, ["a"])

        head, _ = download(gw, method="HEAD")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str(SIZE)
        assert head.headers["etag"] == ETAG
        assert origins.a.requests[-1].method == "HEAD"
        assert "authorization" not in origins.a.requests[-1].headers


def test_completed_streams_reuse_the_upstream_connection(origins: Origins) -> None:
    total_before = origins.a.connections_total
    with gateway(origins, "a") as gw:
        for _ in range(3):
            response, _ = download(gw)
            assert sha(response.content) == SHA
        assert [r.finished for r in origins.a.requests] == [True, True, True]
        # One pooled keep-alive connection served all three downloads.
        assert origins.a.wait_connections(1)
        assert origins.a.connections_total - total_before == 1


def test_head_and_304_do_not_leak_upstream_connections(origins: Origins) -> None:
    with gateway(origins, "a", pool_size=2, connect_timeout=0.5) as gw:
        for _ in range(2):
            head, _ = download(gw, method="HEAD")
            assert head.status_code == 200
            not_modified, _ = download(gw, **{"If-None-Match": ETAG})
            assert not_modified.status_code == 304
        # Four bodiless answers later the pool of two still has room.
        response, _ = download(gw)
        assert response.status_code == 200
        assert sha(response.content) == SHA
        assert origins.a.wait_connections(1, timeout=2)


# --------------------------------------------------------------------------- Range


@pytest.fixture(scope="module")
def real_gw(origins: Origins) -> Iterator[Gateway]:
    """Stream mode in front of the built-in origin, with a header limit big
    enough to let 10,000 ranges through to the Range logic."""
    with gateway(origins, "real", "a", limits={"max_header_bytes": 128 * 1024}) as gw:
        yield gw


def many(count: int, overlap: int = 0) -> str:
    return "bytes=" + ",".join(f"{i}-{i + overlap}" for i in range(count))


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "body"),
    [
        ("bytes=0-99", 206, f"bytes 0-99/{SIZE}", DATA[:100]),
        ("bytes=-100", 206, f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}", DATA[-100:]),
        ("bytes=100-", 206, f"bytes 100-{SIZE - 1}/{SIZE}", DATA[100:]),
        (f"bytes=1000-{SIZE + 50}", 206, f"bytes 1000-{SIZE - 1}/{SIZE}", DATA[1000:]),
        (f"bytes={SIZE}-", 416, f"bytes */{SIZE}", None),
        ("bytes=-0", 416, f"bytes */{SIZE}", None),
        ("bytes=5-1", 200, None, DATA),  # invalid: ignored (RFC 9110 §14.1.1)
        ("bytes=0-0,5-9", 200, None, DATA),  # a list: the whole entity
        (many(200, overlap=100), 200, None, DATA),  # 200 overlapping ranges
        (many(10_000), 200, None, DATA),  # 10,000 one-byte ranges
    ],
    ids=[
        "first-100", "suffix-100", "from-100", "past-end-clipped", "start-past-end",
        "suffix-0", "5-1", "two-ranges", "200-overlapping", "10000-one-byte",
    ],
)  # fmt: skip
def test_range_answers(
    real_gw: Gateway, range_header: str, status: int, content_range: str | None, body: bytes | None
) -> None:
    response, elapsed = download(real_gw, Range=range_header)
    assert response.status_code == status
    assert response.headers.get("content-range") == content_range
    assert response.headers["x-gateway-region"] == "real"
    if body is None:
        assert response.headers["content-type"] == "application/problem+json"
    else:
        assert response.headers["content-length"] == str(len(body))
        assert sha(response.content) == sha(body)
    # Never quadratic: a list of any length costs one pass over the header.
    assert elapsed < 2.0


def test_ten_thousand_ranges_under_the_default_header_limit_get_431(origins: Origins) -> None:
    # "bytes=0-0,1-1,...,9999-9999" is 88,896 bytes: past the default
    # limits.max_header_bytes (8 KiB), so the gateway refuses it before any
    # Range logic and before any upstream request.
    with gateway(origins, "a") as gw:
        response, elapsed = download(gw, Range=many(10_000))
    assert response.status_code == 431
    assert response.headers["content-type"] == "application/problem+json"
    assert origins.a.requests == []
    assert elapsed < 2.0


def test_conditional_requests(real_gw: Gateway) -> None:
    response, _ = download(real_gw, **{"If-None-Match": ETAG})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == ETAG

    response, _ = download(real_gw, **{"If-None-Match": '"other"'})
    assert response.status_code == 200
    assert sha(response.content) == SHA

    # If-Range names another version: the whole (current) entity.
    response, _ = download(real_gw, Range="bytes=0-99", **{"If-Range": '"stale-etag"'})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(SIZE)
    assert sha(response.content) == SHA

    response, _ = download(real_gw, Range="bytes=0-99", **{"If-Range": ETAG})
    assert response.status_code == 206
    assert response.content == DATA[:100]

    head, _ = download(real_gw, method="HEAD", Range="bytes=10-19")
    assert head.status_code == 206
    assert head.headers["content-range"] == f"bytes 10-19/{SIZE}"
    assert head.content == b""


# ----------------------------------------------------------- failover before the first byte


@pytest.mark.parametrize(
    ("fault", "reason", "code"),
    [
        (Fault(status=503), "status_5xx", "503"),
        (Fault(status=404), "404", "404"),
        (Fault(stall_head=True), "timeout", "timeout"),
    ],
    ids=["503", "404", "hung"],
)
def test_failover_before_the_first_byte(
    origins: Origins, fault: Fault, reason: str, code: str
) -> None:
    origins.a.fault = fault
    with gateway(origins, "a", "b", "c", read_timeout=1.0) as gw:
        response, _ = download(gw, **{"X-Request-Id": f"before-{code}"})
        assert response.status_code == 200
        assert sha(response.content) == SHA
        assert response.headers["x-gateway-region"] == "b"
        assert [r.method for r in origins.a.requests] == ["GET"]
        assert "range" not in origins.b.requests[0].headers
        assert origins.c.requests == []
        assert gw.metric("gateway_stream_failovers_total", reason=reason) == 1
        assert gw.metric("gateway_upstream_requests_total", backend="a", code=code) == 1
        assert gw.metric("gateway_upstream_requests_total", backend="b", code="200") == 1
        assert gw.metric("gateway_streamed_bytes_total", region="b") == SIZE
        record = log_record(gw, f"before-{code}")
        assert record["status"] == 200
        assert record["bytes"] == SIZE
        assert "b" in record["regions"]


def test_failover_when_the_first_region_refuses_connections(origins: Origins) -> None:
    with gateway(origins, "dead", "b") as gw:
        response, _ = download(gw)
        assert response.status_code == 200
        assert sha(response.content) == SHA
        assert response.headers["x-gateway-region"] == "b"
        assert gw.metric("gateway_stream_failovers_total", reason="connect") == 1
        assert gw.metric("gateway_upstream_requests_total", backend="dead", code="error") == 1


@pytest.mark.parametrize("size", [100, MAX_ERROR_BODY, MAX_ERROR_BODY + 1, 300_000])
def test_a_storage_error_document_is_passed_on_with_a_true_length(
    origins: Origins, size: int
) -> None:
    # 416 is passed to the device (not failed over); its document is passed on
    # up to MAX_ERROR_BODY, and the head always says how long the body is.
    origins.a.fault = Fault(
        status=416, problem_size=size, extra_headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="}
    )
    with gateway(origins, "a") as gw:
        response, _ = download(gw, **{"X-Request-Id": f"error-{size}"})
        assert response.status_code == 416
        passed = min(size, MAX_ERROR_BODY)
        assert len(response.content) == passed
        assert response.headers["content-length"] == str(passed)
        assert response.headers["content-type"] == "application/problem+json"
        # A cut document loses the storage's digests: they describe another body.
        assert ("content-md5" in response.headers) == (size <= MAX_ERROR_BODY)
        assert log_record(gw, f"error-{size}")["bytes"] == passed
        # The connection is still good for the next download.
        origins.a.fault = Fault()
        again, _ = download(gw)
        assert again.status_code == 200


def test_a_storage_error_document_cut_short_is_a_502_not_a_broken_answer(
    origins: Origins,
) -> None:
    origins.a.fault = Fault(status=416, problem_size=10_000, close_after=1000)
    with gateway(origins, "a") as gw:
        response, _ = download(gw)
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 502


def test_access_log_lists_a_region_that_failed_before_the_first_byte(origins: Origins) -> None:
    origins.a.fault = Fault(status=503)
    with gateway(origins, "a", "b") as gw:
        response, _ = download(gw, **{"X-Request-Id": "log-both"})
        assert response.status_code == 200
        assert log_record(gw, "log-both")["regions"] == ["a", "b"]


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        ((Fault(status=503), Fault(status=503), Fault(status=500)), 502),
        ((Fault(status=404), Fault(status=404), Fault(status=404)), 404),
        ((Fault(status=404), Fault(status=503), Fault(status=404)), 502),
    ],
    ids=["all-5xx", "all-404", "mixed"],
)
def test_every_region_failing_is_a_problem(
    origins: Origins, faults: tuple[Fault, Fault, Fault], status: int
) -> None:
    for origin, fault in zip(origins.faulty(), faults, strict=True):
        origin.fault = fault
    with gateway(origins, "a", "b", "c") as gw:
        response, _ = download(gw)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    # Policy order, one request each: the default retry budget (2) allows all three.
    assert [len(o.requests) for o in origins.faulty()] == [1, 1, 1]


def test_every_region_hanging_is_a_504(origins: Origins) -> None:
    origins.a.fault = Fault(stall_head=True)
    origins.b.fault = Fault(stall_head=True)
    with gateway(origins, "a", "b", read_timeout=0.5) as gw:
        response, elapsed = download(gw)
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert elapsed < 3.0


def test_retry_budget_limits_the_regions_tried(origins: Origins) -> None:
    for origin in origins.faulty():
        origin.fault = Fault(status=503)
    with gateway(origins, "a", "b", "c", retry_budget=1) as gw:
        response, _ = download(gw)
    assert response.status_code == 502
    assert [len(o.requests) for o in origins.faulty()] == [1, 1, 0]


def test_retry_budget_zero_never_fails_over(origins: Origins) -> None:
    origins.a.fault = Fault(status=503)
    with gateway(origins, "a", "b", retry_budget=0) as gw:
        response, _ = download(gw)
        assert response.status_code == 502
        assert origins.b.requests == []

        origins.a.fault = Fault(close_after=100_000)
        status, length, received = read_cut(gw)
        assert (status, length) == (200, SIZE)
        assert len(received) == 100_000
        assert received == DATA[:100_000]
        assert origins.b.requests == []


# ----------------------------------------------------------------------- failover mid-body


def test_a_cut_mid_body_resumes_from_the_next_region_in_one_response(origins: Origins) -> None:
    cut = 1024 * 1024 + 7
    origins.a.fault = Fault(close_after=cut)
    with gateway(origins, "a", "b", "c") as gw:
        response, _ = download(gw, **{"X-Request-Id": "cut"})
        assert response.status_code == 200
        assert response.headers["content-length"] == str(SIZE)
        assert response.headers["x-gateway-region"] == "a"
        assert sha(response.content) == SHA
        (resume,) = origins.b.requests
        assert resume.headers["range"] == f"bytes={cut}-{SIZE - 1}"
        assert resume.headers["if-range"] == ETAG
        assert resume.status == 206
        assert "authorization" not in resume.headers
        assert origins.c.requests == []
        assert gw.metric("gateway_stream_failovers_total", reason="mid_stream_cut") == 1
        assert gw.metric("gateway_streamed_bytes_total", region="a") == cut
        assert gw.metric("gateway_streamed_bytes_total", region="b") == SIZE - cut
        record = log_record(gw, "cut")
        assert (record["status"], record["bytes"], record["regions"]) == (200, SIZE, ["a", "b"])


def test_a_cut_range_request_resumes_within_the_range(origins: Origins) -> None:
    origins.a.fault = Fault(close_after=500_000)
    with gateway(origins, "a", "b") as gw:
        response, _ = download(gw, Range="bytes=1000-2000000")
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 1000-2000000/{SIZE}"
    assert response.content == DATA[1000:2_000_001]
    assert origins.b.requests[0].headers["range"] == "bytes=501000-2000000"


def test_two_cuts_resume_twice(origins: Origins) -> None:
    origins.a.fault = Fault(close_after=300_000)
    origins.b.fault = Fault(close_after=400_000)
    with gateway(origins, "a", "b", "c") as gw:
        response, _ = download(gw)
    assert response.status_code == 200
    assert sha(response.content) == SHA
    assert origins.b.requests[0].headers["range"] == f"bytes=300000-{SIZE - 1}"
    assert origins.c.requests[0].headers["range"] == f"bytes=700000-{SIZE - 1}"


def test_a_cut_resumes_from_the_built_in_origin(origins: Origins) -> None:
    # The faulty origin and the built-in origin derive the same strong ETag
    # from size and mtime, so the built-in origin accepts the If-Range.
    origins.a.fault = Fault(close_after=2_000_000)
    with gateway(origins, "a", "real") as gw:
        response, _ = download(gw, **{"X-Request-Id": "to-real"})
        assert response.status_code == 200
        assert sha(response.content) == SHA
        assert log_record(gw, "to-real")["regions"] == ["a", "real"]


def test_a_stalled_origin_is_resumed_after_the_read_timeout(origins: Origins) -> None:
    origins.a.fault = Fault(stall_after=1024 * 1024)
    with gateway(origins, "a", "b", read_timeout=1.0) as gw:
        response, elapsed = download(gw)
        assert response.status_code == 200
        assert sha(response.content) == SHA
        assert 1.0 <= elapsed < 5.0
        assert origins.b.requests[0].headers["range"] == f"bytes={1024 * 1024}-{SIZE - 1}"
        assert gw.metric("gateway_stream_failovers_total", reason="mid_stream_timeout") == 1
        # The stalled connection was given up, not left hanging at the origin.
        assert origins.a.wait_connections(0)


@pytest.mark.parametrize("change", ["etag", "rewritten", "range-ignored"])
def test_a_changed_object_aborts_instead_of_splicing(origins: Origins, change: str) -> None:
    key = KEY
    if change == "etag":
        origins.b.fault = Fault(etag='"a-newer-build"')
    elif change == "rewritten":
        key = CHANGED
        newer = os.urandom(SIZE)  # the same size, so only the ETag (mtime) can tell
        path = origins.b.root / CHANGED
        path.write_bytes(newer)
        os.utime(path, (MTIME + 60, MTIME + 60))
    else:
        origins.b.fault = Fault(ignore_range=True)
    origins.a.fault = Fault(close_after=1_000_000)
    try:
        with gateway(origins, "a", "b", "c") as gw:
            status, length, received = read_cut(gw, key)
            assert (status, length) == (200, SIZE)
            # The connection ended short of Content-Length: the device sees a
            # truncated transfer and resumes with Range, never a spliced image.
            assert len(received) == 1_000_000
            assert received == DATA[:1_000_000]
            assert origins.b.requests[0].headers["if-range"] == ETAG
            assert gw.metric("gateway_stream_failovers_total", reason="resume_mismatch") == 1
    finally:
        if change == "rewritten":
            copy_tree_with_mtime({CHANGED: DATA}, origins.b.root, MTIME)


def test_a_stream_cut_on_purpose_logs_why_and_no_uvicorn_error(
    origins: Origins, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn logs "returned without completing response" at error level when
    # an app ends a connection mid-body; for a cut the gateway chose (and logs
    # itself) that line is noise an SRE would chase.
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    collect = Collect()
    uvicorn_log = logging.getLogger("uvicorn.error")
    origins.a.fault = Fault(close_after=1_000_000)
    origins.b.fault = Fault(etag='"a-newer-build"')
    with caplog.at_level(logging.WARNING, logger="gateway"), gateway(origins, "a", "b") as gw:
        # Added once uvicorn configured its logging (dictConfig drops handlers).
        uvicorn_log.addHandler(collect)
        try:
            status, _, received = read_cut(gw, **{"X-Request-Id": "cut-on-purpose"})
            assert (status, len(received)) == (200, 1_000_000)
            time.sleep(0.3)  # uvicorn logs after the app returned
            # The filter is narrow: the same line for any other request still shows.
            uvicorn_log.error("ASGI callable returned without completing response.")
        finally:
            uvicorn_log.removeHandler(collect)
    assert seen == ["ASGI callable returned without completing response."]
    assert "stream cut-on-purpose cut after 1000000 bytes" in caplog.text


# --------------------------------------------------------------------------- devices that go away


def test_a_slow_device_holds_back_the_origin_and_its_disconnect_frees_it(
    origins: Origins,
) -> None:
    with gateway(origins, "a") as gw:
        with httpx.stream(
            "GET",
            f"{gw.base}/v1/binaries/{BIG}",
            headers={"Authorization": f"Bearer {gw.token()}"},
            timeout=15,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(BIG_SIZE)
            chunks = response.iter_raw(64 * 1024)
            for _ in range(4):
                next(chunks)
            assert gw.metric("gateway_active_streams") == 1
            # The device stops reading: socket buffers fill, the gateway stops
            # reading upstream, and the origin's writes stall well short of the file.
            last = -1
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.3)
                sent = origins.a.requests[-1].body_sent
                if sent == last:
                    break
                last = sent
            assert origins.a.requests[-1].body_sent < BIG_SIZE // 2
        # The device closed its connection mid-body.
        assert origins.a.wait_connections(0, timeout=5)
        assert not origins.a.requests[-1].finished
        assert wait_for(lambda: gw.metric("gateway_active_streams") == 0)


def test_a_device_leaving_before_the_head_frees_the_upstream_connection(
    origins: Origins,
) -> None:
    origins.a.fault = Fault(stall_head=True)
    with gateway(origins, "a", read_timeout=30.0) as gw:
        began = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(
                f"{gw.base}/v1/binaries/{KEY}",
                headers={"Authorization": f"Bearer {gw.token()}"},
                timeout=0.5,
            )
        assert origins.a.requests[0].method == "GET"
        # Long before the 30 s read timeout: the disconnect closed it.
        assert origins.a.wait_connections(0, timeout=5)
        assert time.monotonic() - began < 6
        assert wait_for(lambda: gw.metric("gateway_active_streams") == 0)


# --------------------------------------------------------------------------- per access rule


@pytest.mark.parametrize("global_mode", ["stream", "redirect"])
def test_delivery_per_access_rule(origins: Origins, global_mode: str) -> None:
    access = [
        {"prefix": "firmware/{product}/", "delivery": "stream"},
        {"prefix": "manuals/{product}/", "delivery": "redirect"},
    ]
    # The rule that matches the global mode inherits it instead of naming it.
    for rule in access:
        if rule["delivery"] == global_mode:
            del rule["delivery"]
    with gateway(origins, "a", mode=global_mode, access=access) as gw:
        streamed, _ = download(gw, KEY)
        assert streamed.status_code == 200
        assert sha(streamed.content) == SHA

        redirected, _ = download(gw, MANUAL)
        assert redirected.status_code == 307
        location = redirected.headers["location"]
        assert location.startswith(f"{origins.a.url}/{MANUAL}?expires=")
        assert httpx.get(location, timeout=5).content == FILES[MANUAL]
        # Only the streamed download and the device's own fetch reached the origin.
        assert [r.target.split("?")[0] for r in origins.a.requests] == [f"/{KEY}", f"/{MANUAL}"]


def test_concurrency_limit_answers_503_fast_while_health_answers(origins: Origins) -> None:
    import threading

    origins.a.fault = Fault(stall_after=1000)  # the first download hangs in flight
    with gateway(origins, "a", limits={"max_concurrent_requests": 1}, read_timeout=5.0) as gw:
        held: list[int] = []

        def hold() -> None:
            with (
                httpx.Client(timeout=10) as client,
                client.stream(
                    "GET", f"{gw.base}/v1/binaries/{KEY}",
                    headers={"Authorization": f"Bearer {gw.token()}"},
                ) as response,
            ):  # fmt: skip
                held.append(response.status_code)
                with contextlib.suppress(httpx.HTTPError):
                    for _ in response.iter_raw():
                        pass

        holder = threading.Thread(target=hold)
        holder.start()
        deadline = time.monotonic() + 5
        while not held and time.monotonic() < deadline:
            time.sleep(0.02)
        began = time.monotonic()
        refused = httpx.get(
            f"{gw.base}/v1/binaries/{KEY}",
            headers={"Authorization": f"Bearer {gw.token()}"},
            timeout=10,
        )
        refused_in = time.monotonic() - began
        alive = httpx.get(f"{gw.base}/healthz", timeout=5)
        metrics = httpx.get(f"{gw.base}/metrics", timeout=5)
        holder.join(timeout=15)
    assert held == [200]
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused_in < 2.0  # at once, not after the stalled download
    assert alive.status_code == 200 and metrics.status_code == 200
