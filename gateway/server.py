"""Running the gateway: uvicorn with a request-head deadline, reload on SIGHUP,
and an ordered drain on SIGTERM.

uvicorn alone waits forever for a request head that arrives one byte at a
time (slowloris); :func:`protocol_with_head_deadline` closes a connection
whose head is not complete ``limits.header_timeout`` after the connection was
accepted (or, on a kept-alive connection, after the next request began).

Shutdown on SIGTERM, in order (uvicorn ``server.py`` does steps 3 to 5):

1. ``/readyz`` answers 503 at once, so load balancers stop sending new work;
   downloads that still arrive are served.
2. After ``limits.drain_delay`` the listening sockets close (no new connections).
3. Idle kept-alive connections are closed; requests in flight run on.
4. Whatever is still running after ``limits.drain_timeout`` is cancelled.
5. The lifespan shuts down: background tasks stop, clients and caches close,
   the access log is flushed.

With ``server.watch_config: true`` a change of the file reloads it too.

A second SIGTERM or SIGINT skips the waiting: requests in flight are cancelled
and the shutdown goes on in order from step 3. SIGHUP reloads the configuration
file (see :meth:`gateway.app.GatewayApp.reload`): an invalid file is refused
with its problems logged, and the running configuration keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import GatewayApp

log = logging.getLogger("gateway")

WATCH_INTERVAL = 2.0


class _HeadDeadline:
    """Mixin: close a connection whose request head does not arrive in time."""

    head_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self) -> None:
        if self._head_timer is None:
            loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[attr-defined]
            self._head_timer = loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        if not transport.is_closing():
            log.info("closing a connection whose request head took over %ss", self.head_timeout)
            transport.close()


_HEAD_TOO_LARGE_BODY = (
    b'{"type":"urn:gateway:problem:header-too-large","title":"Request header fields too '
    b'large","status":431,"detail":"the request head is too large"}'
)
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: " + str(len(_HEAD_TOO_LARGE_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _HEAD_TOO_LARGE_BODY
)


class HeadDeadlineHttpTools(_HeadDeadline, HttpToolsProtocol):
    # httptools has no limit of its own (h11_max_incomplete_event_size is h11's):
    # count the bytes of each request head and refuse one over the limit before
    # it is buffered whole.
    max_head_bytes: int = 4 * 8192 + 1024
    _head_bytes = 0
    _in_head = True

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._in_head = False
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)


class HeadDeadlineH11(_HeadDeadline, H11Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._arm_head_deadline()  # bytes of a new request head
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:
            self._disarm_head_deadline()  # a request head was parsed

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)


def protocol_with_head_deadline(
    http: str, head_timeout: float, max_head_bytes: int = 4 * 8192 + 1024
) -> type[Any]:
    """The uvicorn HTTP protocol class for ``http`` ("httptools", "h11" or "auto")."""
    if http == "auto":
        try:
            import httptools  # noqa: F401

            http = "httptools"
        except ImportError:  # pragma: no cover - httptools ships with uvicorn[standard]
            http = "h11"
    base: type[Any] = HeadDeadlineHttpTools if http == "httptools" else HeadDeadlineH11
    return type(
        base.__name__, (base,), {"head_timeout": head_timeout, "max_head_bytes": max_head_bytes}
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the gateway's signal handling (module docstring)."""

    def __init__(self, config: uvicorn.Config, app: GatewayApp, config_path: Path | None) -> None:
        super().__init__(config)
        self.gateway = app
        self.config_path = config_path
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.config_path is not None:
            self.gateway.spawn(self._watch_config(self.config_path))

    async def _watch_config(self, path: Path) -> None:
        """``server.watch_config``: reload when the file changes (opt-in, polled).

        Polling the (mtime, size, inode) every 2 s works on every filesystem,
        including a Kubernetes ConfigMap volume, whose files are swapped by a
        symlink rename that inotify on the file itself would miss.
        """

        def stamp() -> tuple[int, int, int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size, st.st_ino)

        seen = stamp()
        while not self.should_exit:
            await asyncio.sleep(WATCH_INTERVAL)
            if not self.gateway.settings.server.watch_config:
                continue
            now = stamp()
            if now is not None and now != seen:
                seen = now
                await self.gateway.reload_file(path)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if sig == signal.SIGHUP:
            if loop is not None and self.config_path is not None:
                loop.call_soon_threadsafe(self._schedule_reload)
            return
        if loop is None:
            self.should_exit = True  # before startup: nothing to drain
            return
        if self.gateway.draining:
            loop.call_soon_threadsafe(self._hurry)
            return
        loop.call_soon_threadsafe(self._begin_drain)

    def _hurry(self) -> None:
        """A second signal: stop waiting for requests in flight, but still shut
        down in order (lifespan shutdown flushes the access log)."""
        log.info("second signal: cancelling %d request(s) in flight", len(self.server_state.tasks))
        self.should_exit = True
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            connection.shutdown()

    def _begin_drain(self) -> None:
        self.gateway.draining = True
        delay = self.gateway.settings.limits.drain_delay
        log.info("draining: readiness is 503; closing listeners in %ss", delay)
        assert self._loop is not None
        self._loop.call_later(delay, self._stop_accepting)

    def _stop_accepting(self) -> None:
        self.should_exit = True

    def _schedule_reload(self) -> None:
        assert self.config_path is not None
        self.gateway.spawn(self.gateway.reload_file(self.config_path))


def server_config(app: GatewayApp, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn config for the gateway with its limits applied."""
    limits = app.settings.limits
    http = options.pop("http", "auto")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_with_head_deadline(
            http, limits.header_timeout, 4 * limits.max_header_bytes + 1024
        ),
        timeout_graceful_shutdown=max(1, round(limits.drain_timeout)),
        **options,
    )
