"""The built-in origin (``gateway origin``): serves files under one directory to
requests that carry a valid ``local`` signed URL.

Usage::

    from pathlib import Path
    import uvicorn
    from gateway.origin import create_origin_app

    app = create_origin_app(Path("/srv/firmware"), secret=b"shared-with-the-gateway")
    uvicorn.run(app, host="0.0.0.0", port=9000)

A request ``GET /firmware/acme-x1/1.0.0/app.bin?expires=N&sig=S`` is served
from ``/srv/firmware/firmware/acme-x1/1.0.0/app.bin`` when ``S`` is the
signature :func:`gateway.signers.local.local_signature` computes for the raw
request path and ``N``, and ``N`` is not in the past. The whole URL path maps
under the root, so a ``local`` backend URL with a path prefix
(``http://origin:9000/eu``) is served from the matching subdirectory.

What the origin does, in order:

1. ``GET`` and ``HEAD`` only (``405`` with ``Allow: GET, HEAD`` otherwise).
2. The signature is checked before the filesystem is touched, so an unsigned
   request learns nothing about which files exist (``403``).
3. The path is percent-decoded once and must be a plain relative path (no
   empty, ``.`` or ``..`` segment, no backslash or control character: ``400``);
   its real path must stay under the root (symlinks out of it are ``404``).
4. Conditional requests (``If-None-Match``, ``If-Modified-Since``,
   ``If-Range``) and a single byte ``Range`` are honoured (RFC 9110 §13, §14).

The ETag is ``"<size hex>-<mtime_ns hex>"``: it depends on nothing but the
file's size and modification time, so copies of a file in several regions have
the same ETag as long as the copy preserves the mtime (``rsync -t``, ``cp -p``)
on filesystems with the same timestamp precision. A device that resumes a
download against another region then keeps its ``If-Range`` valid.

Errors are ``application/problem+json`` rendered by :mod:`gateway.errors`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl, quote, unquote_to_bytes

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    RangeNotSatisfiable,
)
from gateway.signers.local import verify_local_signature

__all__ = ["CHUNK_SIZE", "SignatureRejected", "create_origin_app"]

logger = logging.getLogger(__name__)

#: Bytes read and sent per body message: large enough to keep thread hops and
#: ASGI messages few, small enough that many concurrent downloads stay cheap.
CHUNK_SIZE = 256 * 1024

_ALLOW = "GET, HEAD"

# The sig is base64url without padding (RFC 4648 §5); anything else cannot
# match, and hmac.compare_digest refuses non-ASCII str, so filter first.
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Unix seconds as plain ASCII digits: int() would also take "+5", " 5", "5_0"
# and non-ASCII digits, which would make one signed URL spellable many ways.
_EXPIRES_RE = re.compile(r"[0-9]{1,15}")
# RFC 9110 §14.1.2: one byte range, "first-last", "first-" or "-suffix". The
# unit is case-insensitive; a list of several ranges does not match and is
# ignored (RFC 9110 §14.2 lets a server ignore Range).
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE.
_ETAG_RE = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')
# Segment characters that can never name a file we serve: backslashes (a
# separator elsewhere) and C0 controls / DEL (log and header injection).
_BAD_SEGMENT_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")
# Digits beyond this are "larger than any file"; keeps int() away from
# arbitrarily long header values.
_MAX_DIGITS = 18


class SignatureRejected(GatewayError):
    """The signed URL is missing, malformed, forged or expired (``403``)."""

    status = 403
    slug = "signature-rejected"
    title = "Signature rejected"


@dataclass(frozen=True, slots=True)
class _Representation:
    """Validators and size of the file being served."""

    size: int
    mtime: float
    etag: str  # with its quotes, as sent in the ETag header

    @classmethod
    def of(cls, st: os.stat_result) -> _Representation:
        # Size and mtime only (no inode, no path): the same file copied to
        # another region with its mtime preserved gets the same strong ETag.
        return cls(st.st_size, st.st_mtime, f'"{st.st_size:x}-{st.st_mtime_ns:x}"')

    @property
    def last_modified(self) -> str:
        # RFC 9110 §5.6.7 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
        return formatdate(self.mtime, usegmt=True)


def create_origin_app(root: Path, secret: bytes | Sequence[bytes]) -> ASGIApp:
    """The origin as a pure ASGI application serving files under ``root``.

    ``secret`` is the same bytes the gateway's ``local`` backend signs with
    (:class:`gateway.signers.local.LocalSigner`); during a rotation, give every
    secret still in use and a URL signed by any of them is accepted. ``root`` must be an existing
    directory; it is resolved once, here, so later symlink checks compare
    against its real path. Raises :class:`ValueError` when it is not a
    directory.
    """
    secrets = (secret,) if isinstance(secret, bytes) else tuple(secret)
    if not secrets:
        raise ValueError("the origin needs at least one secret")
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise ValueError(f"origin root {str(root)!r} is not a directory")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await _handle_http(scope, receive, send, real_root, secrets)
        elif kind == "lifespan":
            await _handle_lifespan(receive, send)
        elif kind == "websocket":
            # Nothing to talk about: closing before accepting makes the server
            # refuse the handshake (ASGI spec, websocket.close).
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    return app


async def _handle_lifespan(receive: Receive, send: Send) -> None:
    # The origin owns no clients or pools; lifespan is acknowledged only so it
    # can run under servers (and tests) started with lifespan="on".
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _handle_http(
    scope: Scope, receive: Receive, send: Send, root: str, secrets: tuple[bytes, ...]
) -> None:
    head_only = scope["method"] == "HEAD"
    try:
        if scope["method"] not in ("GET", "HEAD"):
            raise MethodNotAllowed(_ALLOW)
        path = _request_path(scope)
        _check_signature(secrets, path, scope.get("query_string", b""))
        segments = _file_segments(path)
        file, st = await anyio.to_thread.run_sync(_open_under_root, root, segments)
    except GatewayError as exc:
        await _send_problem(send, exc, head_only)
        return
    except Exception:
        # A bug, not bad input: log it, answer a bare problem, never a trace.
        logger.exception("origin: unexpected error before the response")
        await _send_problem(send, GatewayError(), head_only)
        return
    try:
        await _serve_file(scope, receive, send, file, _Representation.of(st))
    finally:
        file.close()


def _request_path(scope: Scope) -> str:
    """The path as sent on the wire (the string the gateway signed)."""
    raw = scope.get("raw_path")
    if raw is None:
        # Without raw_path only the decoded path is known; object keys use
        # URL-safe characters only (SPEC §3), so re-encoding restores them.
        return quote(scope["path"], safe="/+=,@")
    try:
        # A request target is ASCII (RFC 9112 §3.2); anything else is not a
        # URL our signer produced.
        return bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise SignatureRejected("the request path is not ASCII") from None


def _check_signature(secrets: tuple[bytes, ...], path: str, query_string: bytes) -> None:
    """Raise :class:`SignatureRejected` unless ``expires``/``sig`` sign ``path``."""
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        params.setdefault(name, []).append(value)
    expires_values = params.get("expires", [])
    sig_values = params.get("sig", [])
    if not expires_values or not sig_values:
        raise SignatureRejected("the expires and sig query parameters are required")
    # A repeated parameter is ambiguous (which one did the signer mean?).
    if len(expires_values) > 1 or len(sig_values) > 1:
        raise SignatureRejected("expires and sig must appear once each")
    expires_text, sig = expires_values[0], sig_values[0]
    if not _EXPIRES_RE.fullmatch(expires_text) or not _SIG_RE.fullmatch(sig):
        raise SignatureRejected("malformed expires or sig")
    expires = int(expires_text)
    # The MAC first, then the clock: both answers are the same 403, but a
    # forged URL should never be told it is merely stale.
    # Every secret is tried (no early exit), so timing does not tell which matched.
    matches = [verify_local_signature(secret, path, expires, sig) for secret in secrets]
    if not any(matches):
        raise SignatureRejected("the signature does not match this path")
    if expires < int(time.time()):
        raise SignatureRejected("the signed URL has expired")


def _file_segments(path: str) -> list[str]:
    """Percent-decode ``path`` once and split it into safe path segments."""
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the path is not UTF-8 after percent-decoding") from None
    if not decoded.startswith("/"):
        raise BadRequest("the path must be absolute")
    segments = decoded[1:].split("/")
    for segment in segments:
        # Decoding exactly once means "%252e%252e" stays the literal name
        # "%2e%2e"; only what decodes to a real dot segment is refused here.
        if segment in ("", ".", "..") or _BAD_SEGMENT_CHARS.search(segment):
            raise BadRequest("the path is not a plain relative file path")
    return segments


def _open_under_root(root: str, segments: list[str]) -> tuple[BinaryIO, os.stat_result]:
    """Open the regular file ``root/segments`` if its real path stays under root.

    Blocking (realpath, open, fstat): run it in a worker thread.
    """
    real = os.path.realpath(os.path.join(root, *segments))
    # A symlink may point anywhere; what counts is where it lands.
    if os.path.commonpath([root, real]) != root or real == root:
        raise NotFound("no such file")
    try:
        # O_NOFOLLOW: the path is already resolved, so a symlink here means it
        # was swapped in since realpath; refuse rather than follow it.
        # O_NONBLOCK: opening a FIFO must not hang the worker thread (it is
        # then refused as not regular); it changes nothing for regular files.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        raise NotFound("no such file") from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise NotFound("no such file") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotFound("no such file")  # a directory, FIFO, device, ...
    return os.fdopen(fd, "rb", buffering=0), st


async def _serve_file(
    scope: Scope, receive: Receive, send: Send, file: BinaryIO, rep: _Representation
) -> None:
    headers = _RequestHeaders(scope)
    validators: list[tuple[bytes, bytes]] = [
        (b"etag", rep.etag.encode()),
        (b"last-modified", rep.last_modified.encode()),
        (b"cache-control", b"private, max-age=0"),
    ]
    head_only = scope["method"] == "HEAD"

    if _not_modified(headers, rep):
        # RFC 9110 §15.4.5: a 304 repeats the validators and caching headers.
        await send({"type": "http.response.start", "status": 304, "headers": validators})
        await send({"type": "http.response.body", "body": b""})
        return

    try:
        byte_range = _requested_range(headers, rep)
    except RangeNotSatisfiable as exc:
        await _send_problem(send, exc, head_only)
        return

    common = [
        (b"content-type", b"application/octet-stream"),
        (b"accept-ranges", b"bytes"),
        (b"x-content-type-options", b"nosniff"),
        *validators,
    ]
    if byte_range is None:
        status, start, length = 200, 0, rep.size
    else:
        start, end = byte_range
        status, length = 206, end - start + 1
        common.append((b"content-range", f"bytes {start}-{end}/{rep.size}".encode()))
    common.append((b"content-length", str(length).encode()))

    if head_only or length == 0:
        await send({"type": "http.response.start", "status": status, "headers": common})
        await send({"type": "http.response.body", "body": b""})
        return

    if "http.response.zerocopysend" in scope.get("extensions", {}):
        # The server can sendfile(2) straight from our descriptor.
        await send({"type": "http.response.start", "status": status, "headers": common})
        await send(
            {
                "type": "http.response.zerocopysend",
                "file": file,
                "offset": start,
                "count": length,
                "more_body": False,
            }
        )
        return

    await send({"type": "http.response.start", "status": status, "headers": common})
    await _stream_with_disconnect_watch(receive, send, file.fileno(), start, length)


async def _stream_with_disconnect_watch(
    receive: Receive, send: Send, fd: int, start: int, length: int
) -> None:
    """Send ``length`` bytes of ``fd`` from ``start``, stopping if the client leaves.

    ASGI servers before spec 2.4 (uvicorn among them) make ``send`` a silent
    no-op after a disconnect, so the only signal is ``http.disconnect`` from
    ``receive``: a watcher task cancels the copy when it arrives. Newer
    servers raise ``OSError`` from ``send`` instead; that also ends the copy.
    """
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    group.cancel_scope.cancel()
                    return

        group.start_soon(watch)
        # Client gone (ASGI 2.4 send) or a read error: the headers are out,
        # there is nothing left to tell the client, so just stop.
        with contextlib.suppress(OSError):
            await _copy(send, fd, start, length)
        group.cancel_scope.cancel()


async def _copy(send: Send, fd: int, start: int, length: int) -> None:
    offset, remaining = start, length
    while remaining > 0:
        # pread: positional, so no shared file offset and nothing to seek;
        # in a thread, so a slow disk never blocks the event loop.
        chunk = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK_SIZE, remaining), offset)
        if not chunk:
            # The file shrank under us. Returning without the final message
            # makes the server drop the connection, so the client sees a short
            # body instead of silently wrong bytes.
            logger.warning("origin: file shorter than its Content-Length")
            return
        offset += len(chunk)
        remaining -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})


class _RequestHeaders:
    """Case-insensitive access to the request headers we look at."""

    def __init__(self, scope: Scope) -> None:
        self._values: dict[bytes, list[str]] = {}
        for name, value in scope.get("headers", []):
            # latin-1 maps every byte to one character, so nothing raises and
            # non-ASCII simply never matches our ASCII grammars.
            self._values.setdefault(bytes(name).lower(), []).append(bytes(value).decode("latin-1"))

    def get(self, name: bytes) -> str | None:
        """All field lines of ``name`` joined with ", " (RFC 9110 §5.3), or None."""
        values = self._values.get(name)
        return ", ".join(values) if values is not None else None


def _not_modified(headers: _RequestHeaders, rep: _Representation) -> bool:
    """True when the request's validators make a ``304`` the answer (RFC 9110 §13.2.2)."""
    if_none_match = headers.get(b"if-none-match")
    if if_none_match is not None:
        # §13.1.2: If-None-Match uses the weak comparison; "*" matches any
        # current representation. When present, If-Modified-Since is ignored.
        if if_none_match.strip() == "*":
            return True
        return any(opaque == rep.etag for _, opaque in _ETAG_RE.findall(if_none_match))
    if_modified_since = headers.get(b"if-modified-since")
    if if_modified_since is not None:
        since = _parse_http_date(if_modified_since)
        # Last-Modified has one-second resolution; compare at that resolution.
        return since is not None and int(rep.mtime) <= since
    return False


def _requested_range(headers: _RequestHeaders, rep: _Representation) -> tuple[int, int] | None:
    """The single inclusive byte range to send, or None for the whole file.

    Raises :class:`RangeNotSatisfiable` for a well-formed range that starts at
    or past the end. Malformed headers and multi-range requests give None:
    RFC 9110 §14.2 allows ignoring Range, and a full 200 is always correct.
    """
    range_header = headers.get(b"range")
    if range_header is None:
        return None
    if_range = headers.get(b"if-range")
    if if_range is not None and not _if_range_matches(if_range.strip(), rep):
        # §13.1.5: the client's partial copy is of another version; send all.
        return None
    match = _RANGE_RE.fullmatch(range_header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    size = rep.size
    if first_text:
        first = _bounded_int(first_text)
        last = _bounded_int(last_text) if last_text else None
        if last is not None and last < first:
            return None  # §14.1.1: invalid range-spec, so the header is ignored
        if first >= size:
            raise RangeNotSatisfiable(size)
        return first, size - 1 if last is None else min(last, size - 1)
    if not last_text:
        return None  # "bytes=-": neither form
    suffix = _bounded_int(last_text)
    if suffix == 0:
        raise RangeNotSatisfiable(size)  # §14.1.1: only a non-zero suffix is satisfiable
    if size == 0:
        # A non-zero suffix of an empty file is satisfiable yet has no bytes
        # to name in Content-Range; the whole (empty) file is the answer.
        return None
    return max(0, size - suffix), size - 1


def _if_range_matches(value: str, rep: _Representation) -> bool:
    # §13.1.5: an entity-tag must match by strong comparison (a weak tag never
    # matches); otherwise the value is a date that must equal Last-Modified.
    if value.startswith(('"', "W/")):
        return value == rep.etag
    date = _parse_http_date(value)
    return date is not None and date == int(rep.mtime)


def _parse_http_date(value: str) -> int | None:
    """Unix seconds of an HTTP date (RFC 9110 §5.6.7), or None if unparseable."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # "-0000" parses as naive; HTTP dates are always UTC.
        return int(parsed.replace(tzinfo=UTC).timestamp())
    return int(parsed.timestamp())


def _bounded_int(digits: str) -> int:
    # Past 18 digits the number exceeds any file size; cap it instead of
    # converting an attacker-sized string.
    digits = digits.lstrip("0") or "0"
    return 10**_MAX_DIGITS if len(digits) > _MAX_DIGITS else int(digits)


async def _send_problem(send: Send, error: GatewayError, head_only: bool) -> None:
    status, headers, body = error.render()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    # HEAD gets the problem's headers (Content-Length included) and no body.
    await send({"type": "http.response.body", "body": b"" if head_only else body})
