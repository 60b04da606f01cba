"""The built-in origin, end to end: a real uvicorn server on loopback, real httpx."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import random
import shutil
import time
from collections.abc import Iterator, MutableMapping
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway.origin import CHUNK_SIZE, create_origin_app
from gateway.signers.local import LocalSigner, local_signature
from tests.support import serve

SECRET = b"origin-test-secret"
SMALL = b"hello, firmware\n"
NESTED_KEY = "firmware/acme-x1/1.0.0/app.bin"
NESTED = bytes(range(256)) * 40  # 10240 bytes
BIG = random.Random(20240601).randbytes(3 * 1024 * 1024 + 12345)  # not a multiple of a chunk
OUTSIDE = b"outside the root: must never be served\n"
MTIME_NS = 1_700_000_000_123_456_789


def _sign(base: str, key: str, ttl: int = 300) -> str:
    now = int(time.time())
    return asyncio.run(LocalSigner(base, SECRET).sign(key, now, now + ttl)).url


def _sign_raw_path(base: str, raw_path: str, ttl: int = 300) -> str:
    """A valid URL for a path the gateway itself would never sign (hostile keys)."""
    expires = int(time.time()) + ttl
    return f"{base}{raw_path}?expires={expires}&sig={local_signature(SECRET, raw_path, expires)}"


def _raw_get(url: str) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (httpx removes dot segments)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=5)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"] == f"urn:gateway:problem:{slug}"
    assert problem["title"] and problem["detail"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("origin")
    root = base / "root"
    (root / "firmware/acme-x1/1.0.0").mkdir(parents=True)
    (root / "small.txt").write_bytes(SMALL)
    (root / NESTED_KEY).write_bytes(NESTED)
    (root / "big.bin").write_bytes(BIG)
    (root / "empty.bin").write_bytes(b"")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(OUTSIDE)
    # Symlinks: one escaping the root (file and directory), one staying inside.
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside, target_is_directory=True)
    (root / "alias.txt").symlink_to(root / "small.txt")
    # A literal file named like a double-encoded traversal: decoding happens once.
    (root / "%2e%2e").write_bytes(b"literal name\n")
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return root


@pytest.fixture(scope="module")
def base(tree: Path) -> Iterator[str]:
    with serve(create_origin_app(tree, SECRET)) as url:
        yield url


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


# --- the happy path -----------------------------------------------------------


def test_get_returns_exact_bytes_and_headers(base: str, client: httpx.Client) -> None:
    response = client.get(_sign(base, NESTED_KEY))
    assert response.status_code == 200
    assert response.content == NESTED
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == str(len(NESTED))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == f'"{len(NESTED):x}-{MTIME_NS:x}"'
    assert response.headers["last-modified"] == formatdate(MTIME_NS / 1e9, usegmt=True)
    assert response.headers["last-modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert "private" in response.headers["cache-control"]


def test_head_has_get_headers_and_no_body(base: str, client: httpx.Client) -> None:
    url = _sign(base, "small.txt")
    get = client.get(url)
    head = client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "accept-ranges", "etag", "last-modified"):
        assert head.headers[name] == get.headers[name]
    assert head.headers["content-length"] == str(len(SMALL))


def test_symlink_inside_root_is_served(base: str, client: httpx.Client) -> None:
    response = client.get(_sign(base, "alias.txt"))
    assert response.status_code == 200
    assert response.content == SMALL


def test_empty_file(base: str, client: httpx.Client) -> None:
    response = client.get(_sign(base, "empty.bin"))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


def test_large_file_streams_intact(base: str, client: httpx.Client) -> None:
    digest = hashlib.sha256()
    with client.stream("GET", _sign(base, "big.bin")) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(BIG))
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(BIG).hexdigest()


def test_resumed_download_in_ranges_reassembles(base: str, client: httpx.Client) -> None:
    url = _sign(base, "big.bin")
    parts, start, step = [], 0, 1_000_000
    while start < len(BIG):
        response = client.get(url, headers={"Range": f"bytes={start}-{start + step - 1}"})
        assert response.status_code == 206
        parts.append(response.content)
        start += step
    assert b"".join(parts) == BIG


def test_client_disconnect_mid_body_leaves_server_healthy(base: str) -> None:
    # Many independent connections, each abandoned after its first chunk: the
    # server must stop each copy (not block or leak) and keep answering.
    url = _sign(base, "big.bin")
    for _ in range(5):
        with httpx.Client(timeout=5) as c, c.stream("GET", url) as response:
            first = next(response.iter_raw(CHUNK_SIZE))
            assert BIG.startswith(first)
    with httpx.Client(timeout=5) as c:
        assert c.get(_sign(base, "small.txt")).content == SMALL


# --- signatures ---------------------------------------------------------------


def _with_query(url: str, query: str) -> str:
    return url.split("?", 1)[0] + "?" + query


@pytest.mark.parametrize(
    "query",
    [
        "",
        "expires={expires}",
        "sig={sig}",
        "expires=soon&sig={sig}",
        "expires=+{expires}&sig={sig}",
        "expires={expires}&sig={sig}&sig={sig}",
        "expires={expires}&sig=%C3%A9t%C3%A9",
    ],
    ids=["none", "no-sig", "no-expires", "expires-word", "expires-plus", "sig-twice", "non-ascii"],
)
def test_missing_or_malformed_signature_is_403(base: str, client: httpx.Client, query: str) -> None:
    valid = parse_qs(urlsplit(_sign(base, "small.txt")).query)
    filled = query.format(expires=valid["expires"][0], sig=valid["sig"][0])
    _assert_problem(
        client.get(_with_query(_sign(base, "small.txt"), filled)), 403, "signature-rejected"
    )


def test_tampered_signature_is_403(base: str, client: httpx.Client) -> None:
    url = _sign(base, "small.txt")
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    tampered = ("A" if sig[0] != "A" else "B") + sig[1:]
    _assert_problem(client.get(url.replace(sig, tampered)), 403, "signature-rejected")


def test_tampered_expiry_is_403(base: str, client: httpx.Client) -> None:
    url = _sign(base, "small.txt")
    expires = parse_qs(urlsplit(url).query)["expires"][0]
    longer = url.replace(f"expires={expires}", f"expires={int(expires) + 86400}")
    _assert_problem(client.get(longer), 403, "signature-rejected")


def test_signature_for_another_path_is_403(base: str, client: httpx.Client) -> None:
    query = urlsplit(_sign(base, "small.txt")).query
    _assert_problem(client.get(f"{base}/{NESTED_KEY}?{query}"), 403, "signature-rejected")


def test_expired_url_is_403(base: str, client: httpx.Client) -> None:
    now = int(time.time())
    url = asyncio.run(LocalSigner(base, SECRET).sign("small.txt", now - 600, now - 10)).url
    _assert_problem(client.get(url), 403, "signature-rejected")


def test_unsigned_requests_cannot_probe_for_files(base: str, client: httpx.Client) -> None:
    existing = client.get(f"{base}/small.txt")
    missing = client.get(f"{base}/no-such-file.bin")
    _assert_problem(existing, 403, "signature-rejected")
    _assert_problem(missing, 403, "signature-rejected")
    assert existing.content == missing.content


# --- mapping paths to files ---------------------------------------------------


def test_missing_file_with_valid_signature_is_404(base: str, client: httpx.Client) -> None:
    _assert_problem(client.get(_sign(base, "firmware/nope.bin")), 404, "not-found")


def test_directory_is_404(base: str, client: httpx.Client) -> None:
    _assert_problem(client.get(_sign(base, "firmware/acme-x1")), 404, "not-found")


@pytest.mark.parametrize("key", ["escape.txt", "escape-dir/secret.txt"])
def test_symlink_escaping_root_is_404(base: str, client: httpx.Client, key: str) -> None:
    response = client.get(_sign(base, key))
    _assert_problem(response, 404, "not-found")
    assert OUTSIDE not in response.content


@pytest.mark.parametrize(
    "raw_path",
    [
        "/../outside/secret.txt",
        "/firmware/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/firmware%2f..%2f..%2foutside/secret.txt",
        "/%2E%2E%2Foutside%2Fsecret.txt",
        "/..%5coutside%5csecret.txt",
        "/./small.txt",
        "//small.txt",
        "/small.txt%00.bin",
        "/small.txt%0d%0aX-Injected:%201",
        "/%ff.bin",
    ],
)
def test_unsafe_paths_are_refused_even_when_signed(base: str, raw_path: str) -> None:
    status, body = _raw_get(_sign_raw_path(base, raw_path))
    assert status == 400
    assert OUTSIDE not in body
    assert b"bad-request" in body


def test_percent_decoding_happens_exactly_once(base: str, client: httpx.Client) -> None:
    # "%252e%252e" decodes once to the literal file name "%2e%2e", never to "..".
    response = client.get(_sign_raw_path(base, "/%252e%252e"))
    assert response.status_code == 200
    assert response.content == b"literal name\n"


def test_percent_encoded_ordinary_path_is_served(base: str, client: httpx.Client) -> None:
    response = client.get(_sign_raw_path(base, "/firmware/acme-x1/1.0.0/app%2Ebin"))
    assert response.status_code == 200
    assert response.content == NESTED


# --- methods ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405(base: str, client: httpx.Client, method: str) -> None:
    response = client.request(method, _sign(base, "small.txt"))
    _assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET, HEAD"


# --- ranges -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-1999", 100, 1999),
        ("bytes=5000-", 5000, len(NESTED) - 1),
        ("bytes=-100", len(NESTED) - 100, len(NESTED) - 1),
        ("bytes=-99999999", 0, len(NESTED) - 1),
        ("bytes=10000-99999999999999999999999999", 10000, len(NESTED) - 1),  # last clamped
        ("BYTES=7-8", 7, 8),
    ],
)
def test_single_range_is_206(
    base: str, client: httpx.Client, spec: str, start: int, end: int
) -> None:
    response = client.get(_sign(base, NESTED_KEY), headers={"Range": spec})
    assert response.status_code == 206
    assert response.content == NESTED[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(NESTED)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["etag"] == f'"{len(NESTED):x}-{MTIME_NS:x}"'


def test_range_across_chunk_boundary_of_big_file(base: str, client: httpx.Client) -> None:
    start, end = CHUNK_SIZE - 10, 3 * CHUNK_SIZE + 10
    response = client.get(_sign(base, "big.bin"), headers={"Range": f"bytes={start}-{end}"})
    assert response.status_code == 206
    assert response.content == BIG[start : end + 1]


def test_head_with_range(base: str, client: httpx.Client) -> None:
    response = client.head(_sign(base, NESTED_KEY), headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.content == b""
    assert response.headers["content-range"] == f"bytes 10-19/{len(NESTED)}"
    assert response.headers["content-length"] == "10"


@pytest.mark.parametrize(
    "spec",
    [
        f"bytes={len(NESTED)}-",
        f"bytes={len(NESTED) + 5}-20000",
        "bytes=-0",
        "bytes=99999999999999999999999-",
    ],
)
def test_unsatisfiable_range_is_416(base: str, client: httpx.Client, spec: str) -> None:
    response = client.get(_sign(base, NESTED_KEY), headers={"Range": spec})
    _assert_problem(response, 416, "range-not-satisfiable")
    assert response.headers["content-range"] == f"bytes */{len(NESTED)}"


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=0-1,5-6",
        "bytes=0-1, 5-6",
        "bytes=abc",
        "bytes=5-1",
        "bytes=-",
        "items=0-5",
        "bytes=0-5,",
    ],
)
def test_multi_range_or_malformed_range_gives_full_200(
    base: str, client: httpx.Client, spec: str
) -> None:
    response = client.get(_sign(base, NESTED_KEY), headers={"Range": spec})
    assert response.status_code == 200
    assert response.content == NESTED
    assert "content-range" not in response.headers


def test_range_on_empty_file(base: str, client: httpx.Client) -> None:
    url = _sign(base, "empty.bin")
    unsatisfiable = client.get(url, headers={"Range": "bytes=0-"})
    _assert_problem(unsatisfiable, 416, "range-not-satisfiable")
    assert unsatisfiable.headers["content-range"] == "bytes */0"
    suffix = client.get(url, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 200
    assert suffix.content == b""


# --- conditional requests -----------------------------------------------------


@pytest.fixture
def small_url_and_etag(base: str, client: httpx.Client) -> tuple[str, str, str]:
    url = _sign(base, "small.txt")
    response = client.head(url)
    return url, response.headers["etag"], response.headers["last-modified"]


@pytest.mark.parametrize(
    "if_none_match", ["{etag}", "*", '"other", {etag}', "W/{etag}", '"a","b",W/{etag}']
)
def test_if_none_match_hit_is_304(
    client: httpx.Client, small_url_and_etag: tuple[str, str, str], if_none_match: str
) -> None:
    url, etag, _ = small_url_and_etag
    response = client.get(url, headers={"If-None-Match": if_none_match.format(etag=etag)})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag


def test_if_none_match_miss_is_200(
    client: httpx.Client, small_url_and_etag: tuple[str, str, str]
) -> None:
    url, _, last_modified = small_url_and_etag
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3).
    response = client.get(
        url, headers={"If-None-Match": '"not-it"', "If-Modified-Since": last_modified}
    )
    assert response.status_code == 200
    assert response.content == SMALL


def test_if_modified_since(client: httpx.Client, small_url_and_etag: tuple[str, str, str]) -> None:
    url, etag, last_modified = small_url_and_etag
    same = client.get(url, headers={"If-Modified-Since": last_modified})
    assert same.status_code == 304
    assert same.headers["etag"] == etag
    older = client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert older.status_code == 200
    assert older.content == SMALL
    garbage = client.get(url, headers={"If-Modified-Since": "yesterday"})
    assert garbage.status_code == 200


def test_if_range(base: str, client: httpx.Client) -> None:
    url = _sign(base, NESTED_KEY)
    etag = client.head(url).headers["etag"]
    last_modified = client.head(url).headers["last-modified"]
    cases = {
        etag: 206,
        last_modified: 206,
        '"another-version"': 200,
        f"W/{etag}": 200,  # If-Range needs the strong comparison
        "Mon, 01 Jan 2001 00:00:00 GMT": 200,
    }
    for if_range, status in cases.items():
        response = client.get(url, headers={"Range": "bytes=0-9", "If-Range": if_range})
        assert response.status_code == status, if_range
        assert response.content == (NESTED[:10] if status == 206 else NESTED)


# --- ETags across regions -----------------------------------------------------


def test_etag_is_the_same_for_copies_with_the_same_mtime(
    tree: Path, tmp_path: Path, client: httpx.Client
) -> None:
    region_a, region_b = tmp_path / "a", tmp_path / "b"
    for region in (region_a, region_b):
        (region / "firmware").mkdir(parents=True)
        shutil.copyfile(tree / NESTED_KEY, region / "firmware/app.bin")
        os.utime(region / "firmware/app.bin", ns=(MTIME_NS, MTIME_NS))
    with (
        serve(create_origin_app(region_a, SECRET)) as a,
        serve(create_origin_app(region_b, SECRET)) as b,
    ):
        etag_a = client.get(_sign(a, "firmware/app.bin")).headers["etag"]
        etag_b = client.get(_sign(b, "firmware/app.bin")).headers["etag"]
        assert etag_a == etag_b
        # A device resuming against the other region keeps its If-Range valid.
        resumed = client.get(
            _sign(b, "firmware/app.bin"), headers={"Range": "bytes=100-", "If-Range": etag_a}
        )
        assert resumed.status_code == 206
        assert resumed.content == NESTED[100:]
        # A different mtime is a different version.
        os.utime(region_b / "firmware/app.bin", ns=(MTIME_NS + 1, MTIME_NS + 1))
        assert client.get(_sign(b, "firmware/app.bin")).headers["etag"] != etag_a


# --- construction and other scope types (in process) ---------------------------


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        create_origin_app(tmp_path / "missing", SECRET)


def test_zerocopysend_extension_is_used_when_offered(base: str, tree: Path) -> None:
    # uvicorn does not offer http.response.zerocopysend, so drive the app
    # directly as a server that does would, and check what it asks to send.
    app = create_origin_app(tree, SECRET)
    url = urlsplit(_sign(base, NESTED_KEY))
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.zerocopysend":
            # What a server would sendfile(2): read it now, while it is open.
            message = {
                **message,
                "data": os.pread(message["file"].fileno(), message["count"], message["offset"]),
            }
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": url.path,
        "raw_path": url.path.encode(),
        "query_string": url.query.encode(),
        "headers": [(b"range", b"bytes=10-109")],
        "extensions": {"http.response.zerocopysend": {}},
    }

    async def request() -> None:
        await app(scope, receive, send)

    asyncio.run(request())
    assert sent[0]["status"] == 206
    assert (b"content-length", b"100") in sent[0]["headers"]
    assert sent[1]["type"] == "http.response.zerocopysend"
    assert (sent[1]["offset"], sent[1]["count"], sent[1]["more_body"]) == (10, 100, False)
    assert sent[1]["data"] == NESTED[10:110]
    assert sent[1]["file"].closed  # the app closes the file once the server has it


def test_websocket_is_refused(tree: Path) -> None:
    app = create_origin_app(tree, SECRET)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def connect() -> None:
        await app({"type": "websocket", "path": "/", "headers": []}, receive, send)

    asyncio.run(connect())
    assert [m["type"] for m in sent] == ["websocket.close"]
