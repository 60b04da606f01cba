"""A test origin that misbehaves on purpose, for stream mode's failover tests.

Usage::

    with FaultyOrigin(root, secret=b"...") as origin:
        origin.fault = Fault(close_after=100_000)  # cut the next bodies after 100 kB
        ...  # point a ``local`` backend at origin.url with the same secret
        assert origin.requests[0].headers["range"] == "bytes=0-99"
        assert origin.open_connections == 0

It speaks raw HTTP/1.1 over an asyncio TCP server (its own event loop in a
thread) so that it can fail exactly where a test wants: after N body bytes,
before the response head, with a status, with another ETag, or by ignoring
``Range``. Without a fault it behaves like the built-in origin
(:mod:`gateway.origin`) for what the gateway relies on:

- URLs must carry a valid ``local`` signature (``expires`` and ``sig`` checked
  with :func:`gateway.signers.local.verify_local_signature`, ``403``
  otherwise); the whole URL path maps under ``root``.
- The ETag is the built-in origin's ``"<size hex>-<mtime_ns hex>"``, so a
  download cut here can resume from a real origin holding the same file with
  the same mtime, and the other way round.
- ``If-None-Match`` (weak comparison, ``304``), a single ``Range`` (``206``
  with ``Content-Range``; ``416`` with ``bytes */size``; lists and invalid
  ranges ignored, RFC 9110 §14.2) and ``If-Range`` (strong comparison, or an
  HTTP date equal to ``Last-Modified``; RFC 9110 §13.1.5).
- Persistent connections (RFC 9112 §9.3), so a test can tell a connection the
  gateway pooled from one it closed.

Every request is recorded (method, target, headers) with the body bytes the
origin managed to write; :attr:`FaultyOrigin.open_connections` counts
connections the origin has not yet seen closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, unquote

from gateway.signers.local import verify_local_signature

__all__ = ["Fault", "FaultyOrigin", "Recorded", "copy_tree_with_mtime"]

CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)
_ETAGS = re.compile(r'(?:W/)?("[^"]*")')
_REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class Fault:
    """How the origin misbehaves; the default is not at all.

    Replace :attr:`FaultyOrigin.fault` between requests (the origin reads it
    once per request). Counts are body bytes of one response, not file offsets.
    """

    #: Answer every request with this status and a small problem body
    #: (``503``: a failing region; ``404``: an object not replicated yet).
    status: int | None = None
    #: Send nothing at all after reading the request (a hung origin).
    stall_head: bool = False
    #: Close the connection after this many body bytes (a crash mid-transfer).
    close_after: int | None = None
    #: Send this many body bytes, then nothing more until the peer goes away.
    stall_after: int | None = None
    #: Serve this ETag instead of the real one (a changed object).
    etag: str | None = None
    #: Answer every ``Range`` request with the whole file (``200``).
    ignore_range: bool = False
    #: Apply the fault to this many requests only, then behave (None: always).
    times: int | None = None
    #: Extra response headers (integrity headers, and ones that must not pass).
    extra_headers: dict[str, str] = field(default_factory=dict)
    #: With ``status``: a problem body of this many bytes instead of the small one.
    problem_size: int | None = None


@dataclass
class Recorded:
    """One request the origin received."""

    method: str
    target: str
    headers: dict[str, str]
    status: int = 0
    body_sent: int = 0  # body bytes written to the socket (after drain)
    finished: bool = False  # the whole body was written


class FaultyOrigin:
    """A raw HTTP/1.1 origin serving ``root`` for ``local``-signed URLs; see the module."""

    def __init__(self, root: Path, secret: bytes, *, verify: bool = True) -> None:
        self.root = Path(root)
        self.secret = secret
        self.verify = verify
        self.fault = Fault()
        self.requests: list[Recorded] = []
        self.connections_total = 0
        self._open = 0
        self._faulted = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet seen closed by either side."""
        with self._lock:
            return self._open

    def reset(self) -> None:
        """Back to no fault and no recorded requests (open connections stay)."""
        self.fault = Fault()
        self._faulted = 0
        self.requests = []

    def wait_connections(self, expected: int, timeout: float = 5.0) -> bool:
        """Poll until :attr:`open_connections` is ``expected``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_connections == expected:
                return True
            time.sleep(0.02)
        return self.open_connections == expected

    def __enter__(self) -> FaultyOrigin:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._connection, "127.0.0.1", 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="faulty-origin", daemon=True)
        self._thread.start()
        if not started.wait(10) or failure:
            raise RuntimeError(f"the faulty origin did not start: {failure}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    # ------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._open += 1
            self.connections_total += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return  # the peer closed (or sent garbage): done with it
                keep_open = await self._respond(head, reader, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            with self._lock:
                self._open -= 1
            self._tasks.discard(task)

    def _take_fault(self) -> Fault:
        fault = self.fault
        if fault.times is not None:
            if self._faulted >= fault.times:
                return Fault()
            self._faulted += 1
        return fault

    async def _respond(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                # Repeated fields join with ", " (RFC 9110 §5.3).
                headers[name] = (
                    f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
                )
        record = Recorded(method, target, headers)
        self.requests.append(record)
        fault = self._take_fault()

        if fault.stall_head:
            await _until_closed(reader)
            return False
        if method not in ("GET", "HEAD"):
            await self._problem(writer, record, 405, method)
            return True
        if fault.status is not None:
            return await self._problem(
                writer, record, fault.status, method, fault.extra_headers, fault.problem_size,
                fault.close_after,
            )  # fmt: skip

        path, _, query = target.partition("?")
        if self.verify and not self._signed(path, query):
            await self._problem(writer, record, 403, method)
            return True
        file = self.root / unquote(path).lstrip("/")
        segments = unquote(path).lstrip("/").split("/")
        if any(s in ("", ".", "..") for s in segments) or not file.is_file():
            await self._problem(writer, record, 404, method, fault.extra_headers)
            return True

        st = file.stat()
        size = st.st_size
        etag = fault.etag or f'"{size:x}-{st.st_mtime_ns:x}"'
        last_modified = formatdate(st.st_mtime, usegmt=True)
        common = {
            "ETag": etag,
            "Last-Modified": last_modified,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            **fault.extra_headers,
        }
        if _none_match(headers.get("if-none-match"), etag):
            await _write_head(writer, 304, {"ETag": etag, "Last-Modified": last_modified})
            record.status = 304
            record.finished = True
            return True

        span: tuple[int, int] | None = None
        if not fault.ignore_range:
            try:
                span = _range(headers, size, etag, int(st.st_mtime))
            except _Unsatisfiable:
                await self._problem(
                    writer, record, 416, method, {"Content-Range": f"bytes */{size}"}
                )
                return True
        status, first, last = (200, 0, size - 1) if span is None else (206, *span)
        if span is not None:
            common["Content-Range"] = f"bytes {first}-{last}/{size}"
        length = last - first + 1
        common["Content-Length"] = str(length)
        await _write_head(writer, status, common)
        record.status = status
        if method == "HEAD" or length == 0:
            record.finished = True
            return True

        limit = length
        if fault.close_after is not None:
            limit = min(limit, fault.close_after)
        if fault.stall_after is not None:
            limit = min(limit, fault.stall_after)
        with file.open("rb") as f:
            f.seek(first)
            while record.body_sent < limit:
                chunk = f.read(min(CHUNK, limit - record.body_sent))
                if not chunk:
                    return False  # the file shrank under us
                writer.write(chunk)
                await writer.drain()
                record.body_sent += len(chunk)
        if record.body_sent == length:
            record.finished = True
            return True
        if fault.stall_after is not None and (
            fault.close_after is None or fault.stall_after <= fault.close_after
        ):
            await _until_closed(reader)
        return False  # close_after: the connection ends mid-body

    def _signed(self, path: str, query: str) -> bool:
        params = dict(parse_qsl(query, keep_blank_values=True))
        expires, sig = params.get("expires", ""), params.get("sig", "")
        if not expires.isdigit() or not sig:
            return False
        return int(expires) >= time.time() and verify_local_signature(
            self.secret, path, int(expires), sig
        )

    async def _problem(
        self,
        writer: asyncio.StreamWriter,
        record: Recorded,
        status: int,
        method: str,
        extra: dict[str, str] | None = None,
        size: int | None = None,
        close_after: int | None = None,
    ) -> bool:
        """Answer with a problem body; False when the connection is to close
        (``close_after``: the body is cut after that many bytes)."""
        body = b'{"title":"%d from the faulty origin"}' % status
        if size is not None:
            body = (body * (size // len(body) + 1))[:size]
        headers = {
            "Content-Type": "application/problem+json",
            "Content-Length": str(len(body)),
            **(extra or {}),
        }
        await _write_head(writer, status, headers)
        record.status = status
        if method != "HEAD":
            sent = body if close_after is None else body[:close_after]
            writer.write(sent)
            await writer.drain()
            record.body_sent = len(sent)
            if len(sent) < len(body):
                return False
        record.finished = True
        return True


class _Unsatisfiable(Exception):
    pass


async def _write_head(writer: asyncio.StreamWriter, status: int, headers: dict[str, str]) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _until_closed(reader: asyncio.StreamReader, limit: float = 30.0) -> None:
    """Wait (bounded) until the peer closes its side: a stall, seen from the peer."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(limit):
            while await reader.read(CHUNK):
                pass


def _none_match(value: str | None, etag: str) -> bool:
    # RFC 9110 §13.1.2: weak comparison; "*" matches any current representation.
    if value is None:
        return False
    if value.strip() == "*":
        return True
    return etag.removeprefix("W/") in _ETAGS.findall(value)


def _range(headers: dict[str, str], size: int, etag: str, mtime: int) -> tuple[int, int] | None:
    """The single inclusive range to send, None for the whole file (RFC 9110 §14)."""
    value = headers.get("range")
    if value is None:
        return None
    if_range = headers.get("if-range")
    if if_range is not None and not _if_range_matches(if_range.strip(), etag, mtime):
        return None  # §13.1.5: the client's copy is of another version
    m = _RANGE.fullmatch(value.strip())
    if m is None:
        return None  # a list, or not bytes: ignored (§14.2)
    first_text, last_text = m.groups()
    if first_text:
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
        if last < first:
            return None  # §14.1.1: invalid, so the header is ignored
        if first >= size:
            raise _Unsatisfiable
        return first, min(last, size - 1)
    if not last_text:
        return None
    suffix = int(last_text)
    if suffix == 0:
        raise _Unsatisfiable
    return max(0, size - suffix), size - 1


def _if_range_matches(value: str, etag: str, mtime: int) -> bool:
    if value.startswith(('"', "W/")):
        return not etag.startswith("W/") and value == etag  # strong comparison
    try:
        return int(parsedate_to_datetime(value).timestamp()) == mtime
    except (TypeError, ValueError, IndexError, OverflowError):
        return False


def copy_tree_with_mtime(files: dict[str, bytes], root: Path, mtime: int) -> Path:
    """Write ``files`` under ``root`` with one mtime, as a replicated region holds them."""
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
    return root
