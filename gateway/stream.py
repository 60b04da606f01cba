"""Stream delivery: the gateway fetches the signed URL itself and passes the bytes on.

For devices that cannot follow a redirect or may only reach the gateway's
hostname (``delivery.mode: stream``). What a firmware client relies on:

- ``HEAD``, a single ``Range`` (206 with ``Content-Range``; unsatisfiable 416
  from the origin with ``bytes */size``), ``If-Range``, ``If-None-Match`` /
  ``If-Modified-Since`` (304), exact ``Content-Length``; ``ETag``,
  ``Last-Modified`` and integrity headers (``x-amz-meta-sha256``,
  ``Content-MD5``, ``Repr-Digest``) passed through. A multi-range or
  malformed ``Range`` is dropped and the whole entity sent (RFC 9110
  §14.2 allows ignoring it), so no request can make the gateway do
  quadratic work (Apache CVE-2011-3192, Starlette CVE-2025-62727).
- Bounded memory: at most ``gateway.upstream.HIGH_WATER`` (512 KiB) is read
  ahead per upstream connection and one chunk (up to 256 KiB) is in flight
  per download; ``send`` waits while the device's socket is full, so a
  slow device is read from at its own pace.
- A device that goes away cancels the download: the upstream response is
  closed and its connection returns to (or leaves) the pool.
- Failover: a region that fails before the first byte (connection error,
  timeout, 5xx, 403, 404 for an object not replicated yet) is replaced by the
  next allowed region in policy order. A region that fails after bytes were
  sent is replaced by the next one with ``Range`` from the exact offset and
  ``If-Range`` with the strong ``ETag``: a 206 for the same entity continues
  the same response; anything else (another version, no strong ETag) aborts
  the connection, never a silently short or spliced body, so the device
  resumes with ``Range``. ``retry_budget`` caps the extra upstream requests.

The device's token is never sent upstream: only the signed URL and the
conditional/range headers above.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway import __version__
from gateway.errors import BackendError, BackendTimeout, NotFound
from gateway.signers import SignedURL
from gateway.upstream import LeanTransport

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
SignFor = Callable[[str], Awaitable[SignedURL]]

# Response headers passed from the storage to the device; everything else
# (Set-Cookie, x-amz-request-id, Server, ...) is the storage's business.
PASSED = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-range",
        b"accept-ranges",
        b"etag",
        b"last-modified",
        b"x-amz-meta-sha256",
        b"content-md5",
        b"repr-digest",
        b"content-digest",
        b"x-goog-hash",
        b"content-disposition",
    }
)
_SINGLE_RANGE = re.compile(r"bytes=(?:(\d{1,19})-(\d{0,19})|-(\d{1,19}))")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_USER_AGENT = f"gateway/{__version__}"
# An error document from the storage (S3's XML, the origin's problem JSON) is
# passed on up to this size.
MAX_ERROR_BODY = 64 * 1024


def single_range(value: str | None) -> str | None:
    """The ``Range`` header to forward: one syntactically valid byte range, else None.

    ``bytes=5-1`` (last < first) is invalid and ignored (RFC 9110 §14.1.1); a
    list of ranges is ignored as a whole, so the whole entity is sent.
    ``bytes=-0`` and a start past the end are valid syntax: the origin answers
    416 with the size.
    """
    if value is None or len(value) > 64:
        return None
    m = _SINGLE_RANGE.fullmatch(value.strip().replace(" ", ""))
    if m is None:
        return None
    first, last, suffix = m.groups()
    if suffix is not None:
        return f"bytes=-{int(suffix)}"
    if last and int(last) < int(first):
        return None
    return f"bytes={int(first)}-{int(last) if last else ''}"


@dataclass(slots=True)
class StreamResult:
    """What a streamed download did, for the access log and metrics."""

    status: int = 0
    sent: int = 0
    regions: list[str] = field(default_factory=list)  # every region asked, in order
    served_by: str | None = None  # the region whose response head the device got
    aborted: bool = False
    finished: bool = False  # the last body message is (being) sent


class StreamAborted(Exception):
    """The body could not be completed; the connection must be closed, not ended."""


@dataclass(frozen=True, slots=True)
class _Span:
    """The absolute byte span an upstream response carries, and its entity tag."""

    first: int
    last: int  # inclusive
    size: int | None
    etag: str | None


def _span(response: httpx.Response) -> _Span | None:
    etag = response.headers.get("etag")
    length = response.headers.get("content-length")
    if response.status_code == 206:
        m = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
        if m is None:
            return None
        size = None if m.group(3) == "*" else int(m.group(3))
        return _Span(int(m.group(1)), int(m.group(2)), size, etag)
    if response.status_code == 200 and length is not None and length.isdigit():
        return _Span(0, int(length) - 1, int(length), etag)
    return None


def _strong(etag: str | None) -> bool:
    return etag is not None and not etag.startswith("W/") and etag.startswith('"')


async def _error_document(response: httpx.Response) -> bytes:
    """The storage's error document, up to one byte past MAX_ERROR_BODY."""
    body = b""
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_ERROR_BODY:
                break
    except httpx.TimeoutException:
        raise BackendTimeout("the storage's error response did not arrive in time") from None
    except httpx.HTTPError:
        raise BackendError("the storage's error response was cut short") from None
    return body


class Streamer:
    """Fetches signed URLs with one shared client and streams them to devices."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        retry_budget: int,
        on_upstream: Callable[[str, str, float], None],
        on_bytes: Callable[[str, int], None],
        on_failure: Callable[[str, str], None],
    ) -> None:
        self._client = client
        self._retry_budget = retry_budget
        self._on_upstream = on_upstream  # (region, code, seconds)
        self._on_bytes = on_bytes  # (region, bytes)
        self._on_failure = on_failure  # (region, reason)

    async def stream(
        self,
        *,
        method: str,
        regions: Sequence[str],
        sign: Callable[[str], Awaitable[SignedURL]],
        request_headers: dict[str, str],
        extra_headers: list[tuple[bytes, bytes]],
        send: Send,
        receive: Receive,
        result: StreamResult,
    ) -> None:
        """Serve one download from ``regions`` (policy order) onto ``send``.

        Raises :class:`NotFound`, :class:`BackendError` or :class:`BackendTimeout`
        when no region could start the response, and :class:`StreamAborted` when
        one started but the body could not be completed.
        """
        task = asyncio.current_task()
        assert task is not None

        async def watch_disconnect() -> None:
            # After the (empty) request body, receive() returns only when the
            # device disconnects -- or when the response is complete, and then
            # cancelling would interrupt the upstream connection's orderly close
            # and leak it from the pool.
            while (await receive())["type"] != "http.disconnect":
                pass
            if not result.finished:
                task.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await self._stream(method, regions, sign, request_headers, extra_headers, send, result)
        except asyncio.CancelledError:
            if watcher.done() and not watcher.cancelled():
                task.uncancel()
                result.aborted = True  # the device went away; nothing to answer
                return
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _open(
        self, region: str, url: str, method: str, headers: dict[str, str]
    ) -> httpx.Response | str:
        """The upstream response, or a failure reason (connect, timeout, status)."""
        began = time.perf_counter()
        try:
            request = self._client.build_request(method, url, headers=headers)
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            self._on_upstream(region, "timeout", time.perf_counter() - began)
            return "timeout"
        except httpx.HTTPError:
            self._on_upstream(region, "error", time.perf_counter() - began)
            return "connect"
        self._on_upstream(region, str(response.status_code), time.perf_counter() - began)
        return response

    async def _stream(
        self,
        method: str,
        regions: Sequence[str],
        sign: SignFor,
        request_headers: dict[str, str],
        extra_headers: list[tuple[bytes, bytes]],
        send: Send,
        result: StreamResult,
    ) -> None:
        budget = self._retry_budget
        headers = {"user-agent": _USER_AGENT, "accept-encoding": "identity", **request_headers}
        response: httpx.Response | None = None
        failures: list[str] = []
        remaining = list(regions)
        while remaining:
            region = remaining.pop(0)
            if failures:
                if budget <= 0:
                    break
                budget -= 1
            signed = await sign(region)
            result.regions.append(region)
            opened = await self._open(region, signed.url, method, headers)
            if isinstance(opened, str):
                failures.append(opened)
                self._on_failure(region, opened)
                continue
            code = opened.status_code
            if code >= 500 or code in (403, 404):
                # 404: not replicated to this region yet; 403: the storage refused
                # our signature (clock, rotated key): both worth another region.
                await opened.aclose()
                failures.append("not_found" if code == 404 else "status")
                self._on_failure(region, f"status_{code // 100}xx" if code >= 500 else str(code))
                continue
            response = opened
            result.served_by = region
            break
        if response is None:
            if failures and all(f == "not_found" for f in failures):
                raise NotFound("no such binary in any allowed region")
            if failures and all(f == "timeout" for f in failures):
                raise BackendTimeout("the storage did not answer in time")
            raise BackendError("no allowed region could serve this binary")

        try:
            out_headers = [
                (name, value) for name, value in response.headers.raw if name.lower() in PASSED
            ]
            error_body: bytes | None = None
            if method != "HEAD" and response.status_code >= 400:
                # An error document is read before the head is sent, so the head
                # can describe what is passed on: at most MAX_ERROR_BODY bytes,
                # never buffered beyond that (one byte more tells a cut).
                error_body = await _error_document(response)
                if len(error_body) > MAX_ERROR_BODY:
                    # Cut: the storage's length and digests describe another body.
                    error_body = error_body[:MAX_ERROR_BODY]
                    out_headers = [(n, v) for n, v in out_headers if n.lower() == b"content-type"]
                out_headers = [(n, v) for n, v in out_headers if n.lower() != b"content-length"]
                out_headers.append((b"content-length", str(len(error_body)).encode()))
            result.status = response.status_code  # the head is on its way
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        *out_headers,
                        *extra_headers,
                        (b"x-gateway-region", region.encode()),
                    ],
                }
            )
            if error_body is not None or method == "HEAD" or response.status_code in (204, 304):
                # Read what there is (nothing) so the upstream connection goes back
                # to the pool.
                if error_body is None:
                    await response.aread()
                body = error_body or b""
                result.finished = True
                await send({"type": "http.response.body", "body": body})
                result.sent = len(body)
                return
            span = _span(response)
            while True:
                # Bytes are counted per region once a region's part ends, not per
                # chunk: the metric needs no per-chunk work on this path.
                before = result.sent
                failure: httpx.HTTPError | None = None
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        result.sent += len(chunk)
                except httpx.HTTPError as exc:
                    failure = exc
                finally:
                    # Also when the device went away (cancellation) mid-body.
                    self._on_bytes(region, result.sent - before)
                if failure is None:
                    break
                reason = "timeout" if isinstance(failure, httpx.TimeoutException) else "cut"
                self._on_failure(region, f"mid_stream_{reason}")
                await response.aclose()
                resumed = await self._resume(span, result, remaining, sign, headers, budget, method)
                if resumed is None:
                    raise StreamAborted("the body could not be completed") from None
                response, region, budget = resumed
            result.finished = True
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def _resume(
        self,
        span: _Span | None,
        result: StreamResult,
        remaining: list[str],
        sign: SignFor,
        headers: dict[str, str],
        budget: int,
        method: str,
    ) -> tuple[httpx.Response, str, int] | None:
        """Continue the same entity from the next region, or None to abort."""
        if span is None or not _strong(span.etag):
            return None
        offset = span.first + result.sent
        while remaining and budget > 0:
            budget -= 1
            region = remaining.pop(0)
            resume_headers = {
                **{k: v for k, v in headers.items() if k not in ("range", "if-range")},
                "range": f"bytes={offset}-{span.last}",
                # If-Range with the strong ETag: a 206 only for the same entity,
                # a 200 (whole body) for any other version, which we refuse.
                "if-range": span.etag or "",
            }
            signed = await sign(region)
            result.regions.append(region)
            opened = await self._open(region, signed.url, method, resume_headers)
            if isinstance(opened, str):
                self._on_failure(region, opened)
                continue
            resumed = _span(opened) if opened.status_code == 206 else None
            if (
                resumed is None
                or resumed.first != offset
                or resumed.last != span.last
                or resumed.etag != span.etag
                or (span.size is not None and resumed.size != span.size)
            ):
                self._on_failure(region, "resume_mismatch")
                await opened.aclose()
                # Another version, or a storage that ignores ranges: splicing
                # would corrupt the image, so stop here.
                if opened.status_code < 500 and opened.status_code != 404:
                    return None
                continue
            return opened, region, budget
        return None


def upstream_client(
    *, connect_timeout: float, read_timeout: float, pool_size: int
) -> httpx.AsyncClient:
    """The shared client for stream mode: explicit pool limits and timeouts, no
    proxies from the environment, no redirects (a signed URL is final), over
    :class:`gateway.upstream.LeanTransport` (cheaper reads than anyio's)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        transport=LeanTransport(
            httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        ),
        follow_redirects=False,
        trust_env=False,
    )
