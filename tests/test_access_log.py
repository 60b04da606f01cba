"""The access log: one valid JSON object per line, whatever the request carried."""

from __future__ import annotations

import io
import json
from typing import Any

from gateway.access_log import AccessLog

FIELDS = {
    "time", "request_id", "sub", "key", "region", "backend", "reason", "method",
    "status", "bytes", "range", "duration_s", "client", "user_agent", "regions",
}  # fmt: skip


def record(log: AccessLog, **overrides: object) -> None:
    values: dict[str, object] = {
        "now": 1_764_600_000.25,
        "request_id": "r-1",
        "sub": "device-1",
        "key": "firmware/a/b.bin",
        "region": "eu-central",
        "backend": "local",
        "reason": "nearest",
        "method": "GET",
        "status": 307,
        "bytes_sent": 0,
        "range_header": None,
        "duration_s": 0.000123456789,
        "client": "203.0.113.9",
        "user_agent": "curl/8.5",
    }
    values.update(overrides)
    v: dict[str, Any] = values
    log.line(
        v["now"],
        v["request_id"],
        AccessLog.decided(v["sub"], v["key"], v["region"], v["backend"], v["reason"], v["client"]),
        v["method"],
        v["status"],
        v["bytes_sent"],
        v["range_header"],
        v["duration_s"],
        v["user_agent"],
        v.get("regions"),
    )


def test_one_json_object_per_line_with_the_spec_fields() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    record(log)
    record(log, sub=None, key=None, region=None, range_header="bytes=10-")
    log.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == FIELDS
    assert first["time"] == "2025-12-01T14:40:00.250Z"
    assert first["duration_s"] == 0.000123
    assert first["status"] == 307
    assert (second["sub"], second["key"], second["region"]) == (None, None, None)
    assert second["range"] == "bytes=10-"


def test_hostile_values_cannot_break_or_forge_lines() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    nasty = 'x"\n{"forged":true}\r\\\x00\u2028é'
    record(log, user_agent=nasty, range_header=nasty, request_id=nasty)
    log.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert parsed["user_agent"] == nasty
    assert lines[0].isascii()


def test_nothing_is_written_until_flush_unless_the_buffer_fills() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    record(log)
    assert stream.getvalue() == ""
    log.flush()
    assert stream.getvalue().count("\n") == 1
    for _ in range(400):  # ~100 KiB: crosses the 64 KiB threshold by itself
        record(log, user_agent="u" * 200)
    assert stream.getvalue().count("\n") > 1


def test_a_broken_stream_does_not_raise() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    record(log)
    stream.close()
    log.flush()  # ValueError from a closed stream is swallowed


def test_streamed_downloads_list_every_region_used() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    record(log, regions=["eu-central", "eu-west"])
    record(log)
    log.flush()
    streamed, redirected = (json.loads(line) for line in stream.getvalue().splitlines())
    assert streamed["regions"] == ["eu-central", "eu-west"]
    assert redirected["regions"] is None
