"""A lean network backend for httpcore: asyncio protocols instead of anyio streams.

Stream mode reads large bodies, and per read httpcore's default backend
(anyio) pays a cancel scope, a pause/resume of the transport and a wake-up of
an event; measured on 1 GiB that is most of the client's CPU. This backend
keeps httpcore and h11 (HTTP parsing, pooling, keep-alive) and replaces only
the byte stream underneath: one ``asyncio.Protocol`` per connection queues
what the event loop reads (bounded: reading pauses above ``HIGH_WATER``) and
``read`` hands those chunks over as they came.

    transport = lean_transport(httpx.Limits(...))
    client = httpx.AsyncClient(transport=transport, timeout=...)

Timeouts (connect, read, write) and TLS behave as with httpcore's own
backends; errors are httpcore's exception types, which httpx maps to its own.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

# A read asks for at least this much: the event loop reads up to 256 KiB per
# system call, and httpcore's 64 KiB would split (and copy) each of them.
READ_SIZE = 256 * 1024
# Bytes queued per connection before the socket stops being read: bounded
# memory, and the origin is read at the pace of the consumer.
HIGH_WATER = 512 * 1024


class _Stream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    """One connection: the protocol the loop feeds and the stream httpcore reads."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol (called by the event loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued >= HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- httpcore.AsyncNetworkStream (called by httpcore)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._chunks:
            if self._error is not None:
                raise httpcore.ReadError(str(self._error) or type(self._error).__name__)
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                raise httpcore.ReadTimeout("no data from the upstream in time") from None
            finally:
                self._waiter = None
            if not self._chunks:
                if self._error is not None:
                    raise httpcore.ReadError(str(self._error) or type(self._error).__name__)
                return b""
        data = self._chunks.popleft()
        limit = max(max_bytes, READ_SIZE)
        if len(data) > limit:
            self._chunks.appendleft(data[limit:])
            data = data[:limit]
        self._queued -= len(data)
        if self._paused and self._queued < HIGH_WATER // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self._transport is None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        if self._drained is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._drained)
            except TimeoutError:
                raise httpcore.WriteTimeout("the upstream did not take the request") from None
            if self._error is not None:
                raise httpcore.WriteError(str(self._error))

    async def aclose(self) -> None:
        if self._transport is not None:
            # abort: pooled connections are closed only when unusable or
            # expired; nothing is left to flush.
            self._transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(str(exc)) from None
        self._transport = cast(asyncio.Transport, transport)
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks this of an idle pooled connection: data or EOF
            # there means the server closed (or broke) it.
            return bool(self._chunks) or self._eof
        if self._transport is None:
            return None
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        return self._transport.get_extra_info(info)


class LeanBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend over asyncio protocols (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = _Stream()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: stream,
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        sock = stream.get_extra_info("socket")
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not supported for upstreams")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class LeanTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool with :class:`LeanBackend`."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        # httpx takes no network backend; the pool it built is replaced by
        # the same pool (httpx's arguments) with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=LeanBackend(),
        )
