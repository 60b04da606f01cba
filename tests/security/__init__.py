"""The adversarial suite: attacks on a real gateway, each asserting the exact safe answer.

This module holds what the test modules share (``tests/security/test_*.py``
each run their own module-scoped :func:`tests.stack.running_stack`):

* :func:`http` / :func:`send_raw`: requests over a plain socket, so the request
  target and header bytes reach the server exactly as written (no client-side
  normalisation of ``..``, ``%2e`` or duplicate headers);
* :func:`forge` / :func:`sign_jws`: hand-built JWS compact tokens (RFC 7515
  section 7.1), with any header and payload, signed with any key or none;
* :func:`assert_problem` / :func:`assert_refused_token`: the exact RFC 9457
  problem answer, and for 401 the RFC 6750 challenge;
* :func:`assert_log_is_clean` / :func:`assert_metrics_are_clean`: the leak scans
  (SPEC §5, §6: no token, signature or signed URL in the access log or /metrics).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PROBLEM = "urn:gateway:problem:"
CHALLENGE = 'Bearer realm="gateway", error="invalid_token", error_description="'
LOG_KEYS = {
    "time",
    "request_id",
    "sub",
    "key",
    "region",
    "backend",
    "reason",
    "method",
    "status",
    "bytes",
    "range",
    "duration_s",
    "client",
    "user_agent",
}

# What a leak looks like: a JWT (base64url of '{"'), a signed-URL query
# parameter of any backend this gateway signs for, or a signed URL itself.
LEAK_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}"),
    re.compile(r"[?&]sig=", re.IGNORECASE),
    re.compile(r"\bsig=", re.IGNORECASE),
    re.compile(r"Signature=", re.IGNORECASE),
    re.compile(r"X-Amz-Signature", re.IGNORECASE),
    re.compile(r"X-Goog-Signature", re.IGNORECASE),
    re.compile(r"\bmd5=", re.IGNORECASE),
    re.compile(r"[?&]expires=", re.IGNORECASE),
    re.compile(r"https?://127\.0\.0\.1:\d+/firmware/"),
]


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class RawResponse:
    """One HTTP/1.1 response as it came off the socket."""

    status: int
    headers: list[tuple[str, str]]  # names lower-cased, in wire order
    body: bytes
    head: bytes  # the status line and header block, verbatim

    def header(self, name: str) -> str | None:
        """The value of the only ``name`` field (AssertionError when repeated)."""
        values = self.all(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times"
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def send_raw(base: str, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Send ``data`` as is to the server at ``base`` and read the answer until it closes."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head: {raw[:200]!r}"
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return RawResponse(status, headers, body, head)


def http(
    base: str,
    target: str | bytes,
    headers: Sequence[tuple[str, str | bytes]] = (),
    *,
    method: str = "GET",
    host: str | None = "gateway.test",
) -> RawResponse:
    """One request with ``target`` and ``headers`` exactly as given (repeats allowed).

    Values may be ``bytes`` to put bytes on the wire that no HTTP client library
    would send (CR, LF, NUL). ``Connection: close`` is added so the answer ends
    with the connection.
    """
    target_bytes = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + host.encode())
    for name, value in headers:
        value_bytes = value if isinstance(value, bytes) else value.encode("latin-1")
        lines.append(name.encode("latin-1") + b": " + value_bytes)
    lines.append(b"Connection: close")
    return send_raw(base, b"\r\n".join(lines) + b"\r\n\r\n")


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


# --------------------------------------------------------------------------- tokens


def b64url(data: bytes) -> str:
    # RFC 7515 section 2: base64url without padding.
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def forge(header: Mapping[str, Any] | bytes, payload: Mapping[str, Any] | bytes, sig: bytes) -> str:
    """A compact JWS with this header, payload and signature bytes (no signing)."""
    h = b64url(header) if isinstance(header, bytes) else b64json(header)
    p = b64url(payload) if isinstance(payload, bytes) else b64json(payload)
    return f"{h}.{p}.{b64url(sig)}"


def signing_input(header: Mapping[str, Any], payload: Mapping[str, Any] | bytes) -> bytes:
    p = b64url(payload) if isinstance(payload, bytes) else b64json(payload)
    return f"{b64json(header)}.{p}".encode()


def sign_jws(private: Any, header: Mapping[str, Any], payload: Mapping[str, Any] | bytes) -> str:
    """A compact JWS signed with ``private`` (Ed25519 -> EdDSA, P-256 -> ES256 raw R||S),
    whatever ``header["alg"]`` says: attacks need tokens that lie about it."""
    data = signing_input(header, payload)
    if isinstance(private, Ed25519PrivateKey):
        sig = private.sign(data)
    else:
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        # RFC 7518 section 3.4: the JWS signature is R || S, 32 bytes each.
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{data.decode()}.{b64url(sig)}"


def sign_hmac(secret: bytes, header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """A JWS "signed" with HS256/384/512 (per ``header["alg"]``) using ``secret`` as the key."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    data = signing_input(header, payload)
    sig = hmac.new(secret, data, digest[header["alg"]]).digest()
    return f"{data.decode()}.{b64url(sig)}"


def load_private(path: Any) -> Any:
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


# --------------------------------------------------------------------------- answers


def assert_problem(
    response: RawResponse, status: int, slug: str, *, cache_control: str = "no-store"
) -> dict[str, Any]:
    """The response is exactly an RFC 9457 problem with this status and type."""
    assert response.status == status, (response.status, response.body[:300])
    assert response.header("content-type") == "application/problem+json"
    assert response.header("cache-control") == cache_control
    assert response.header("location") is None
    body = response.json()
    assert body["type"] == PROBLEM + slug
    assert body["status"] == status
    assert set(body) == {"type", "title", "status", "detail"}
    assert response.header("content-length") == str(len(response.body))
    return dict(body)


def assert_refused_token(response: RawResponse, *, missing: bool = False) -> str:
    """A 401 invalid-token with the RFC 6750 challenge; returns the error_description."""
    assert_problem(response, 401, "invalid-token")
    challenge = response.header("www-authenticate")
    assert challenge is not None
    if missing:
        # RFC 6750 section 3.1: no error code when the request had no credentials.
        assert challenge == 'Bearer realm="gateway"'
        return ""
    assert challenge.startswith(CHALLENGE) and challenge.endswith('"'), challenge
    description = challenge[len(CHALLENGE) : -1]
    assert '"' not in description and "\\" not in description
    assert not re.search(r"eyJ|[A-Za-z0-9_-]{40,}", description), description
    return description


def request_ids(lines: Iterable[str]) -> list[str]:
    return [json.loads(line)["request_id"] for line in lines]


def assert_log_is_clean(lines: Sequence[str], secrets: Iterable[str] = ()) -> None:
    """Every access-log line is one JSON object with the SPEC §6 keys, and none
    carries a token, a signature or a signed URL (nor any of ``secrets``)."""
    assert lines, "the access log is empty: the scan would prove nothing"
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict) and set(record) >= LOG_KEYS, line
        assert "\n" not in line and "\r" not in line
        for pattern in LEAK_PATTERNS:
            assert not pattern.search(line), f"{pattern.pattern} in access log: {line}"
    text = "\n".join(lines)
    for secret in secrets:
        assert secret not in text, "a secret value is in the access log"


def assert_metrics_are_clean(text: str, secrets: Iterable[str] = ()) -> None:
    """/metrics carries no token, signature, URL, key or device id (SPEC §5)."""
    assert "gateway_requests_total" in text
    for pattern in LEAK_PATTERNS:
        assert not pattern.search(text), f"{pattern.pattern} in /metrics"
    for forbidden in ("firmware/", "device-", "http://", "https://"):
        assert forbidden not in text, f"{forbidden!r} in /metrics"
    for secret in secrets:
        assert secret not in text, "a secret value is in /metrics"


# --------------------------------------------------------------------------- a server that counts


class CountingServer:
    """A loopback HTTP server that records every request path it is sent.

    ``routes`` maps a path to a callable giving the body to answer with (read
    at request time); anything else is a 404. Use as a context manager; it is
    how the JWT tests prove that ``jku``/``x5u`` caused no outbound fetch.
    """

    def __init__(self, routes: Mapping[str, Any]) -> None:
        import http.server
        import threading

        self.paths: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    outer.paths.append(self.path)
                source = routes.get(self.path)
                body = source() if source is not None else b"not here"
                self.send_response(200 if source is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# --------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(base: str, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent); a plain-socket read,
    ten times cheaper than a full parse, so a test can afford one per request."""
    text = http(base, "/metrics").body.decode()
    wanted = dict(labels)
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        if dict(_LABEL.findall(m.group(2) or "")) == wanted:
            return float(m.group(3))
    return 0.0
