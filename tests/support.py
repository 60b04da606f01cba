"""Helpers for tests that run real servers on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, port: int | None = None, **uvicorn_options: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1 in a thread; yield its base URL.

    ``port`` fixes the port (to stop a server and start it again on the same one).
    """
    options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on"}
    options.update(uvicorn_options)
    config = uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), **options)
    with run_server(config) as base:
        yield base


@contextlib.contextmanager
def run_server(config: uvicorn.Config) -> Iterator[str]:
    """Run a uvicorn server built from ``config`` in a thread; yield its base URL."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


SERVERS_BIN = Path(__file__).resolve().parent / "servers" / "node_modules" / ".bin"


def require_program(name: str) -> str:
    """The path of a server program the test needs: ``nginx``, or an npm one
    (``s3rver``, ``azurite-blob``) from ``tests/servers/node_modules``.

    Missing: the test is skipped, unless ``GATEWAY_REQUIRE_SERVERS=1`` (CI), where
    it fails, so CI can never pass by skipping the real checks.
    """
    local = SERVERS_BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        for directory in ("/usr/sbin", "/usr/local/sbin"):
            candidate = Path(directory) / name
            if candidate.exists():
                found = str(candidate)
                break
    if found is None:
        where = {
            "nginx": "apt-get install nginx",
            "promtool": "apt-get install prometheus",
        }.get(name, "make test-servers")
        message = f"{name} is not installed ({where})"
        if os.environ.get("GATEWAY_REQUIRE_SERVERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop a server process the test started: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
