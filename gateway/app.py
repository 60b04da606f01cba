"""The ASGI application: the request pipeline, its routes, and its lifespan.

Pipeline of a download (``GET /v1/binaries/{key}``), each step one module::

    access.object_key -> auth -> access.check -> proxy_headers + geo (locate)
      -> policy (region) -> url_cache + signers (signed URL) -> redirect
      -> metrics + access_log

The app is pure ASGI, with no framework objects on the hot path: a cache-hit
redirect is a handful of dictionary lookups, one HMAC-free cache read and two
``send`` calls. Everything built from one configuration lives in a
:class:`Runtime`; a request takes the runtime once at its start, so a later
reload (swapping ``app.runtime``, see :mod:`gateway.runtime`) never changes a
request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.access import object_key
from gateway.access_log import AccessLog
from gateway.auth import Device, bearer_token
from gateway.errors import (
    ConfigError,
    GatewayError,
    HeaderTooLarge,
    InvalidToken,
    MethodNotAllowed,
    NotEntitled,
    NotFound,
    RateLimited,
    Unavailable,
    UriTooLong,
)
from gateway.geo import Location, location_from_headers
from gateway.metrics import Metrics
from gateway.metrics_share import SharedMetrics
from gateway.openapi import OPENAPI_JSON
from gateway.proxy_headers import client_address
from gateway.runtime import Decided, Runtime
from gateway.settings import Settings, load_settings
from gateway.signers import SignedURL
from gateway.stream import StreamAborted, Streamer, StreamResult, single_range, upstream_client

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("gateway")

# uvicorn logs this at error level when an app returns before its response is
# complete, which is how an ASGI app ends a connection mid-body. For a stream
# the gateway aborts on purpose (and logs why) it is noise: the filter drops
# it for those requests only, so a real bug still shows.
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."
_ABORTED_STREAM: ContextVar[bool] = ContextVar("gateway_aborted_stream", default=False)


class _AbortedStreamFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_ABORTED_STREAM.get() and record.getMessage() == _UVICORN_INCOMPLETE)


_ABORTED_STREAM_FILTER = _AbortedStreamFilter()

BINARIES = "/v1/binaries/"
URLS = "/v1/urls/"
# A key is at most 1024 bytes, 3072 percent-encoded; anything far longer is abuse.
MAX_TARGET_BYTES = 4096
MAX_HEADER_FIELDS = 100
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")

# The request headers the pipeline reads, collected in one pass (slot numbers).
_AUTHORIZATION, _XFF, _FORWARDED, _REQUEST_ID_H, _USER_AGENT, _RANGE = range(6)
_CF_LAT, _CF_LON, _CF_COUNTRY, _CFL_COUNTRY = range(6, 10)
_IF_RANGE, _IF_NONE_MATCH, _IF_MODIFIED_SINCE = range(10, 13)
_WANTED = {
    b"authorization": _AUTHORIZATION,
    b"x-forwarded-for": _XFF,
    b"forwarded": _FORWARDED,
    b"x-request-id": _REQUEST_ID_H,
    b"user-agent": _USER_AGENT,
    b"range": _RANGE,
    b"cloudfront-viewer-latitude": _CF_LAT,
    b"cloudfront-viewer-longitude": _CF_LON,
    b"cloudfront-viewer-country": _CF_COUNTRY,
    b"cf-ipcountry": _CFL_COUNTRY,
    b"if-range": _IF_RANGE,
    b"if-none-match": _IF_NONE_MATCH,
    b"if-modified-since": _IF_MODIFIED_SINCE,
}
# A memo miss (None is a remembered answer: no usable header).
_UNSEEN: Any = object()

_GEO_SLOTS = (
    ("cloudfront-viewer-latitude", _CF_LAT),
    ("cloudfront-viewer-longitude", _CF_LON),
    ("cloudfront-viewer-country", _CF_COUNTRY),
    ("cf-ipcountry", _CFL_COUNTRY),
)


@dataclass(slots=True)
class _Outcome:
    """What the access log and metrics record about one request."""

    status: int = 500
    sub: str | None = None
    key: str | None = None
    region: str | None = None
    backend: str | None = None
    reason: str | None = None
    sent: int = 0
    started: bool = False  # a streamed response has sent its head
    logged: str | None = None  # the decision's access-log fields, once encoded
    regions: list[str] | None = None  # every region a streamed download used


class GatewayApp:
    """The gateway as an ASGI application. Build it with :func:`create_app`."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        access_log: AccessLog | None = None,
        clock: Callable[[], float] = time.time,
        metrics_dir: str | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.access_log = access_log if access_log is not None else AccessLog()
        self.clock = clock
        self.runtime: Runtime | None = None
        self.draining = False
        self.inflight = 0
        self.metrics.track_inflight(lambda: self.inflight)
        self.shared = SharedMetrics(self.registry, metrics_dir) if metrics_dir else None
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = itertools.count(1)
        self._flusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._client: httpx.AsyncClient | None = None
        self._probe_client: httpx.AsyncClient | None = None
        self.streamer: Streamer | None = None

    # ------------------------------------------------------------------ lifespan

    async def startup(self) -> None:
        """Build the runtime and start background work (idempotent)."""
        logging.getLogger("uvicorn.error").addFilter(_ABORTED_STREAM_FILTER)  # once per object
        if self.runtime is None:
            self.runtime = Runtime(self.settings, self.metrics, self.clock)
        if self.streamer is None:
            upstream = self.settings.delivery.upstream
            self._client = upstream_client(
                connect_timeout=upstream.connect_timeout,
                read_timeout=upstream.read_timeout,
                pool_size=upstream.pool_size,
            )
            self.streamer = Streamer(
                self._client,
                retry_budget=upstream.retry_budget,
                on_upstream=self._upstream_answered,
                on_bytes=self.metrics.streamed,
                on_failure=self._upstream_failed,
            )
        if self._probe_client is None:
            self._probe_client = httpx.AsyncClient(
                timeout=self.settings.health.timeout, follow_redirects=False, trust_env=False
            )
        self.runtime.start_checks(self._probe_client)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())

    async def shutdown(self) -> None:
        self.draining = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self.runtime is not None:
            await self.runtime.aclose()
        for client in (self._client, self._probe_client):
            if client is not None:
                await client.aclose()
        self._client = self._probe_client = None
        self.streamer = None
        self.access_log.flush()
        if self.shared is not None:
            with contextlib.suppress(OSError):
                self.shared.publish()  # the last word of this worker's counters

    async def reload_file(self, path: str | os.PathLike[str]) -> bool:
        """Reload the configuration file, its keys, GeoIP database and revocation list.

        All or nothing: an invalid file is refused with its problems logged and
        the running configuration keeps serving. Requests in flight finish on
        the runtime they started with; the old one is closed after the drain
        timeout.
        """
        try:
            settings = load_settings(path)
            runtime = Runtime(settings, self.metrics, self.clock)
        except ConfigError as exc:
            for line in exc.problems:
                log.error("reload refused: %s", line)
            self.metrics.config_reloads.labels("failure").inc()
            return False
        old = self.runtime
        if old is not None:
            runtime.health.inherit(old.health)
            if runtime.jwks is not None and old.jwks is not None:
                runtime.jwks.inherit(old.jwks)
            if old.checks is not None:
                old.checks.cancel()
        if self._probe_client is not None:
            runtime.start_checks(self._probe_client)
        self.runtime, self.settings = runtime, settings
        for region in set(old.settings.regions if old else ()) - set(settings.regions):
            with contextlib.suppress(KeyError):
                self.metrics.backend_up.remove(region)
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.last_reload.set(self.clock())
        log.info("configuration reloaded from %s", path)
        if old is not None:
            asyncio.get_running_loop().call_later(
                settings.limits.drain_timeout, lambda: self.spawn(old.aclose())
            )
        return True

    # Passive health: what stream mode learns about each region's backend.
    _PASSIVE_FAILURES = frozenset(
        {"timeout", "connect", "status_5xx", "mid_stream_timeout", "mid_stream_cut"}
    )

    def _upstream_answered(self, region: str, code: str, seconds: float) -> None:
        self.metrics.upstream(region, code, seconds)
        if code.isdigit() and int(code) < 500 and self.runtime is not None:
            self.runtime.health.record_success(region)

    def _upstream_failed(self, region: str, reason: str) -> None:
        self.metrics.failover(region, reason)
        if reason in self._PASSIVE_FAILURES and self.runtime is not None:
            self.runtime.health.record_failure(region)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush_forever(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(0.2)
            self.access_log.flush()
            ticks += 1
            if self.shared is not None and ticks % 5 == 0:
                with contextlib.suppress(OSError):
                    self.shared.publish()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except ConfigError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        # Route on the raw bytes the key is cut from: "/v1/%62inaries/..." is no route.
        raw: bytes = scope.get("raw_path") or path_bytes(path)
        if raw.startswith(b"/v1/binaries/"):
            await self._decide(scope, receive, send, "binaries", raw, len(BINARIES))
        elif raw.startswith(b"/v1/urls/"):
            await self._decide(scope, receive, send, "urls", raw, len(URLS))
        else:
            await self._operational(scope, send, path)

    async def _decide(
        self, scope: Scope, receive: Receive, send: Send, route: str, raw_path: bytes, skip: int
    ) -> None:
        """A download or URL request: the whole pipeline."""
        start = time.perf_counter()
        runtime = self.runtime
        method: str = scope["method"]
        values: list[bytes | None] = [None] * 13
        head_bytes = 0
        largest = 0
        wanted = _WANTED
        repeated: set[int] = set()
        for name, value in scope["headers"]:
            slot = wanted.get(name)
            if slot is not None:
                previous = values[slot]
                if previous is not None:
                    repeated.add(slot)
                    if slot in (_XFF, _FORWARDED):
                        # RFC 9110 section 5.3: list fields combine in order.
                        value = previous + b", " + value
                values[slot] = value
            size = len(value)
            head_bytes += size + len(name)
            if size > largest:
                largest = size
        raw_id = values[_REQUEST_ID_H]
        request_id = self._request_id(raw_id)
        outcome = _Outcome()
        client = scope.get("client")
        peer: str | None = client[0] if client else None
        address = peer
        self.inflight += 1
        try:
            if runtime is None:
                raise Unavailable("the gateway is not ready")
            if (
                largest > runtime.max_header_bytes
                or head_bytes > runtime.max_head_bytes
                or len(scope["headers"]) > MAX_HEADER_FIELDS
            ):
                raise HeaderTooLarge(
                    f"a header field is larger than {runtime.max_header_bytes} bytes, the "
                    f"request head larger than {runtime.max_head_bytes}, or there are more "
                    f"than {MAX_HEADER_FIELDS} header fields"
                )
            if self.inflight > runtime.max_concurrent:
                raise Unavailable("too many concurrent requests")
            if _AUTHORIZATION in repeated:
                # A singleton field (RFC 9110 section 5.3): neither line may be used.
                raise InvalidToken("malformed", "more than one Authorization header")
            if _RANGE in repeated:
                values[_RANGE] = None  # an invalid Range is ignored (RFC 9110 section 14.2)
            if method != "GET" and (method != "HEAD" or route != "binaries"):
                raise MethodNotAllowed("GET, HEAD" if route == "binaries" else "GET")
            if len(raw_path) + len(scope.get("query_string", b"")) > MAX_TARGET_BYTES:
                raise UriTooLong(f"the request target is longer than {MAX_TARGET_BYTES} bytes")
            certificate: bytes | None = None
            if runtime.mtls is not None and peer is not None and peer in runtime.trusted:
                # Only a trusted balancer's word counts: a device could send it too.
                for name, value in scope["headers"]:
                    if name == runtime.mtls_header:
                        certificate = value
                        break
            decisions = runtime.decisions
            if decisions is not None:
                # Everything the decision depends on; anything else a client sends
                # cannot change it, so it cannot be used to poison the entry.
                forwarding = values[_XFF if runtime.uses_xff else _FORWARDED]
                dkey = (
                    raw_path, values[_AUTHORIZATION], forwarding,
                    values[_CF_LAT], values[_CF_LON], values[_CF_COUNTRY], values[_CFL_COUNTRY],
                    peer, certificate,
                )  # fmt: skip
                known = decisions.get(dkey)
                if (
                    known is not None
                    and known.healthy is runtime.health.healthy
                    and known.auth_generation == runtime.authenticator.generation  # type: ignore[union-attr]
                    and known.valid_until > self.clock()
                ):
                    outcome.sub, outcome.logged = known.sub, known.logged
                    if runtime.limiters:
                        wait = runtime.limiters[route].take(known.sub)
                        if wait:
                            self.metrics.rate_limited.labels(route).inc()
                            raise RateLimited(math.ceil(wait))
                    hot = self.metrics.hot
                    hot.decisions[(known.region, known.reason)] += 1
                    hot.url_cache["hit"] += 1
                    hot.decision_cache_hits += 1
                    outcome.status = known.status
                    outcome.sent = len(known.body)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": known.status,
                            "headers": [*known.headers, (b"x-request-id", request_id.encode())],
                        }
                    )
                    await send({"type": "http.response.body", "body": known.body})
                    return
            key = outcome.key = object_key(raw_path[skip:])
            auth = values[_AUTHORIZATION]
            authenticator = runtime.authenticator
            assert authenticator is not None
            if runtime.mtls is not None and (auth is None or runtime.mtls_required):
                device = self._certificate_device(runtime, certificate, auth)
                repeated_device = True
            else:
                token = bearer_token(auth.decode("latin-1") if auth is not None else None)
                repeated_device = authenticator.seen(token)
                try:
                    device = authenticator.authenticate(token)
                except InvalidToken as exc:
                    # A kid we do not know may be a key the issuer just rotated in.
                    if exc.reason != "unknown_kid" or runtime.jwks is None:
                        raise
                    if not await runtime.jwks.refetch_for_unknown_kid():
                        raise
                    device = authenticator.authenticate(token)
            outcome.sub = device.sub
            if runtime.limiters:
                wait = runtime.limiters[route].take(device.sub)
                if wait:
                    self.metrics.rate_limited.labels(route).inc()
                    raise RateLimited(math.ceil(wait))
            rule = runtime.access.check(device.claims, key)
            address = self._locate_address(runtime, peer, values)
            location, from_header = self._locate(runtime, peer, address, values)
            residency = device.claims.get("residency")
            if residency is not None and not isinstance(residency, str):
                # Fail closed: a malformed pin must not free the device from its rule.
                raise NotEntitled("the token's residency claim must be a rule name")
            decision = runtime.policy.decide(
                residency=residency,
                location=location,
                healthy=runtime.health.healthy,
                from_header=from_header,
            )
            region = outcome.region = decision.region
            outcome.reason = decision.reason
            outcome.backend = runtime.backend_kind[region]
            self.metrics.decision(region, decision.reason)
            if route == "binaries" and runtime.stream_rules[rule]:
                await self._stream(
                    runtime, [region, *decision.fallbacks], key, method, values,
                    request_id, receive, send, outcome,
                )  # fmt: skip
                return
            signed, hit = await runtime.urls.get(region, runtime.signers[region], key)
            self.metrics.url_cache_result(hit)
            common = [
                (b"cache-control", b"no-store"),
                (b"x-gateway-region", region.encode()),
            ]
            if route == "binaries":
                headers = [(b"location", signed.url.encode()), (b"content-length", b"0"), *common]
                body = b""
                outcome.status = 307
            else:
                body = json.dumps(
                    {
                        "url": signed.url,
                        "expires_at": time.strftime(
                            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(signed.expires_at)
                        ),
                        "region": region,
                        "backend": outcome.backend,
                    }
                ).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *common,
                ]
                outcome.status = 200
            outcome.sent = len(body)
            await send(
                {
                    "type": "http.response.start",
                    "status": outcome.status,
                    "headers": [*headers, (b"x-request-id", request_id.encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            if decisions is not None and repeated_device:
                # Admitted on a token's second request: a token seen once (a new
                # device, a fleet re-keying) would only push out entries that
                # repeat; its first request already cached the verification.
                now = self.clock()
                if len(decisions) >= runtime.decisions_max:
                    decisions.popitem(last=False)
                # Encoded once: the access-log line below reuses it.
                logged = outcome.logged = AccessLog.decided(
                    device.sub, key, region, outcome.backend, decision.reason, address
                )
                decisions[dkey] = Decided(
                    healthy=runtime.health.healthy,
                    auth_generation=authenticator.generation,
                    valid_until=min(float(device.exp), runtime.urls.fresh_until(key, signed, now)),
                    sub=device.sub,
                    region=region,
                    reason=decision.reason,
                    logged=logged,
                    status=outcome.status,
                    headers=headers,
                    body=body,
                )
        except StreamAborted as exc:
            # The response had started: the connection is closed, not ended, so
            # the device sees a short transfer and resumes with Range.
            _ABORTED_STREAM.set(True)  # seen by uvicorn's log call after we return
            log.warning("stream %s cut after %d bytes: %s", request_id, outcome.sent, exc)
        except GatewayError as exc:
            if isinstance(exc, InvalidToken):
                self.metrics.auth_failure(exc.reason)
            if outcome.started:
                log.warning("stream %s failed after the response started: %s", request_id, exc)
            else:
                outcome.sent = await self._problem(send, exc, request_id, outcome.region, method)
                outcome.status = exc.status
        except Exception:
            # Never a stack trace to the client; the log gets the type, not the
            # message, which could carry request data.
            log.exception("unexpected error (request %s)", request_id)
            if not outcome.started:
                outcome.status = 500
                outcome.sent = await self._problem(
                    send, GatewayError("unexpected error"), request_id, None, method
                )
        finally:
            self.inflight -= 1
            elapsed = time.perf_counter() - start
            self.metrics.request(route, method, outcome.status, elapsed)
            rng = values[_RANGE]
            ua = values[_USER_AGENT]
            self.access_log.line(
                self.clock(),
                request_id,
                outcome.logged
                or AccessLog.decided(
                    outcome.sub, outcome.key, outcome.region, outcome.backend, outcome.reason,
                    address,
                ),
                method,
                outcome.status,
                outcome.sent,
                rng.decode("latin-1")[:200] if rng is not None else None,
                elapsed,
                ua.decode("latin-1")[:300] if ua is not None else None,
                outcome.regions,
            )  # fmt: skip

    async def _stream(
        self,
        runtime: Runtime,
        regions: list[str],
        key: str,
        method: str,
        values: list[bytes | None],
        request_id: str,
        receive: Receive,
        send: Send,
        outcome: _Outcome,
    ) -> None:
        """Stream mode: fetch from the storage and pass the bytes on (gateway.stream)."""
        streamer = self.streamer
        if streamer is None:
            raise Unavailable("the gateway is not ready")

        async def sign(region: str) -> SignedURL:
            signed, hit = await runtime.urls.get(region, runtime.signers[region], key)
            self.metrics.url_cache_result(hit)
            return signed

        headers: dict[str, str] = {}
        asked = values[_RANGE]
        forwarded = single_range(asked.decode("latin-1") if asked is not None else None)
        if forwarded is not None:
            if_range = values[_IF_RANGE]
            if if_range is None:
                headers["range"] = forwarded
            elif len(if_range) <= 256 and if_range.isascii():
                headers["range"] = forwarded
                headers["if-range"] = if_range.decode("ascii")
            # else: a condition we will not forward drops its range: the whole entity.
        for slot, name in (
            (_IF_NONE_MATCH, "if-none-match"),
            (_IF_MODIFIED_SINCE, "if-modified-since"),
        ):
            value = values[slot]
            # httpx sends header values as ASCII; obs-text is no valid tag or date.
            if value is not None and len(value) <= 1024 and value.isascii():
                headers[name] = value.decode("ascii")
        result = StreamResult()
        outcome.regions = result.regions
        self.metrics.active_streams.inc()
        try:
            await streamer.stream(
                method=method,
                regions=regions,
                sign=sign,
                request_headers=headers,
                extra_headers=[
                    (b"cache-control", b"private"),
                    (b"x-request-id", request_id.encode()),
                ],
                send=send,
                receive=receive,
                result=result,
            )
        finally:
            self.metrics.active_streams.dec()
            outcome.started = result.status != 0
            outcome.status = result.status or outcome.status
            outcome.sent = result.sent
            if result.served_by is not None:
                outcome.region = result.served_by

    @staticmethod
    def _certificate_device(
        runtime: Runtime, certificate: bytes | None, auth: bytes | None
    ) -> Device:
        """The device from a forwarded client certificate (gateway.mtls)."""
        assert runtime.mtls is not None and runtime.authenticator is not None
        if certificate is None:
            if auth is None:
                raise InvalidToken("missing", "a bearer token or a client certificate is required")
            raise InvalidToken("bad_certificate", "a client certificate is required")
        device = runtime.mtls.device(certificate)
        if device.sub in runtime.authenticator.revoked:
            raise InvalidToken("revoked", "this device is revoked")
        if auth is not None:
            # required mode with a token too: both must name the same device.
            token = runtime.authenticator.authenticate(bearer_token(auth.decode("latin-1")))
            if token.sub != device.sub:
                raise InvalidToken(
                    "bad_certificate", "the token and the client certificate name other devices"
                )
            return token
        return device

    def _request_id(self, raw: bytes | None) -> str:
        if raw is not None:
            text = raw.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
        # Unique per process without a system call: a random boot prefix and a counter.
        return f"{self._id_prefix}-{next(self._id_counter):x}"

    @staticmethod
    def _locate_address(
        runtime: Runtime, peer: str | None, values: list[bytes | None]
    ) -> str | None:
        header = values[_XFF if runtime.uses_xff else _FORWARDED]
        if peer is None or header is None:
            return peer
        text = header.decode("latin-1")
        if runtime.uses_xff:
            return client_address(peer, text, None, runtime.trusted)
        return client_address(peer, None, text, runtime.trusted)

    @staticmethod
    def _locate(
        runtime: Runtime, peer: str | None, address: str | None, values: list[bytes | None]
    ) -> tuple[Location | None, bool]:
        """The device's location and whether it came from a trusted edge header."""
        if runtime.geo_headers and peer is not None and peer in runtime.trusted:
            inputs = (values[_CF_LAT], values[_CF_LON], values[_CF_COUNTRY], values[_CFL_COUNTRY])
            memo = runtime.header_locations
            location = memo.get(inputs, _UNSEEN)
            if location is _UNSEEN:
                present = {
                    name: value.decode("latin-1")
                    for name, slot in _GEO_SLOTS
                    if (value := values[slot]) is not None
                }
                location = memo.remember(
                    inputs, location_from_headers(present, runtime.geo_headers) if present else None
                )
            if location is not None:
                return location, True
        if runtime.locator is not None and address is not None:
            return runtime.locator.lookup(address), False
        return None, False

    async def _problem(
        self, send: Send, exc: GatewayError, request_id: str, region: str | None, method: str
    ) -> int:
        status, headers, body = exc.render()
        headers.append((b"x-request-id", request_id.encode()))
        if region is not None:
            headers.append((b"x-gateway-region", region.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if method == "HEAD":
            body = b""
        await send({"type": "http.response.body", "body": body})
        return len(body)

    # ------------------------------------------------------------------ operational routes

    async def _operational(self, scope: Scope, send: Send, path: str) -> None:
        start = time.perf_counter()
        method: str = scope["method"]
        request_id = self._request_id(dict(scope["headers"]).get(b"x-request-id"))
        route = {
            "/metrics": "metrics",
            "/healthz": "healthz",
            "/readyz": "readyz",
            "/openapi.json": "openapi",
        }.get(path, "other")
        status = 500
        try:
            if route == "other":
                raise NotFound(f"no route for {path[:200]!r}")
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed("GET, HEAD")
            content_type = b"application/json"
            if route == "metrics":
                exposition = (
                    self.shared.render()
                    if self.shared is not None
                    else generate_latest(self.registry)
                )
                body, content_type = exposition, CONTENT_TYPE_LATEST.encode()
                status = 200
            elif route == "healthz":
                body, status = b'{"status":"ok"}', 200
            elif route == "readyz":
                ready = (
                    self.runtime is not None
                    and not self.draining
                    and bool(self.runtime.health.healthy)
                )
                status = 200 if ready else 503
                body = b'{"status":"ready"}' if ready else b'{"status":"not ready"}'
            else:
                body, status = OPENAPI_JSON, 200
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", content_type),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        except GatewayError as exc:
            status = exc.status
            await self._problem(send, exc, request_id, None, method)
        finally:
            self.metrics.request(route, method, status, time.perf_counter() - start)


def path_bytes(path: str) -> bytes:
    """A decoded ASGI ``path`` back to bytes, for servers that give no ``raw_path``."""
    from urllib.parse import quote

    return quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii")


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    access_log: AccessLog | None = None,
    clock: Callable[[], float] = time.time,
    metrics_dir: str | None = None,
) -> GatewayApp:
    """The gateway ASGI app for ``settings``. Keys, GeoIP and signers load at lifespan start.

    ``metrics_dir`` is set by ``gateway serve --workers N``: every worker's
    metrics are merged there (:mod:`gateway.metrics_share`).
    """
    return GatewayApp(
        settings, registry=registry, access_log=access_log, clock=clock, metrics_dir=metrics_dir
    )
