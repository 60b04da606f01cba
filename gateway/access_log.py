"""The access log (SPEC §6): one JSON object per request, one line each, on stdout.

Lines are buffered and written by :meth:`AccessLog.flush`, which the app's
lifespan calls a few times a second and at shutdown, so the hot path does not
pay a write system call per request and nothing is lost at a clean stop.
Callers never pass a token, a signature or a signed URL: the record has no
field for them.
"""

from __future__ import annotations

import sys
import time
from json.encoder import encode_basestring_ascii
from typing import TextIO

_FLUSH_AT = 64 * 1024


def _str(value: str | None) -> str:
    return "null" if value is None else str(encode_basestring_ascii(value))


def _regions(regions: list[str] | None) -> str:
    if regions is None:
        return "null"
    return "[" + ",".join(_str(r) for r in regions) + "]"


class AccessLog:
    """Collects access-log lines and writes them to ``stream``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._size = 0
        self._second = -1
        self._stamp = ""

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    @staticmethod
    def decided(
        sub: str | None,
        key: str | None,
        region: str | None,
        backend: str | None,
        reason: str | None,
        client: str | None,
    ) -> str:
        """The encoded fields a decision fixes; a repeated decision reuses them."""
        return (
            f'"sub":{_str(sub)},"key":{_str(key)},"region":{_str(region)},'
            f'"backend":{_str(backend)},"reason":{_str(reason)},"client":{_str(client)}'
        )

    def line(
        self,
        now: float,
        request_id: str,
        decided: str,
        method: str,
        status: int,
        bytes_sent: int,
        range_header: str | None,
        duration_s: float,
        user_agent: str | None,
        regions: list[str] | None,
    ) -> None:
        """One request's line (SPEC §6); ``decided`` is the decision's fields,
        encoded by :meth:`decided` (a repeated decision reuses them)."""
        # Built by hand with the json module's own C string encoder: the same
        # bytes json.dumps would give for these types, at a third of the cost.
        line = (
            f'{{"time":"{self._time(now)}","request_id":{_str(request_id)},{decided},'
            f'"method":"{method}","status":{status},"bytes":{bytes_sent},'
            f'"range":{_str(range_header)},"duration_s":{round(duration_s, 6)!r},'
            f'"user_agent":{_str(user_agent)},"regions":{_regions(regions)}}}'
        )
        self._pending.append(line)
        self._size += len(line) + 1
        if self._size >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines."""
        if not self._pending:
            return
        lines, self._pending, self._size = self._pending, [], 0
        stream = self._stream or sys.stdout
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):
            # A closed or broken stdout must not take the gateway down.
            pass
