"""``gateway serve --workers N``: N worker processes, each a full gateway.

uvicorn's own multi-process mode runs plain uvicorn servers in its workers
and answers SIGHUP by replacing them. A gateway worker must be what a single
process is (:mod:`gateway.server`): the request-head deadline and size cap,
the ordered drain on SIGTERM, and SIGHUP as a checked reload in place (an
invalid file refused with its problems logged and counted, the token and URL
caches and region health kept). So the supervisor here:

- binds the listening socket once and hands it to every worker (the kernel
  spreads connections over them);
- starts each worker with the ``spawn`` method in a process group of its own,
  so a terminal's Ctrl-C reaches the supervisor alone and each worker gets
  exactly one signal per signal the supervisor gets;
- passes SIGHUP, SIGTERM and SIGINT on to every worker (a second SIGTERM
  hurries them, as it does a single process) and waits for them to drain;
- starts a new worker when one dies, at most one per slot every
  ``RESTART_DELAY`` seconds, so a worker that cannot start does not spin;
- folds a dead worker's counters into the shared metrics directory's
  ``retired.prom`` (:func:`gateway.metrics_share.retire`), so totals keep
  what it counted and the directory holds one file per live worker plus one.

A worker whose supervisor is gone (killed outright) drains and stops by
itself rather than serving on, unsupervised.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.metrics_share import retire

log = logging.getLogger("gateway")

RESTART_DELAY = 5.0
_FORWARDED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

# Sockets travel to spawned children through multiprocessing's reduction.
multiprocessing.allow_connection_pickling()
_spawn = multiprocessing.get_context("spawn")


def _worker(
    config_path: str, sock: socket.socket, options: dict[str, Any], metrics_dir: str
) -> None:
    """One worker process: the gateway on the shared socket (runs in the child)."""
    os.setpgrp()  # signals come from the supervisor, not from the terminal
    from gateway.app import create_app
    from gateway.cli import log_to_stderr
    from gateway.errors import ConfigError
    from gateway.server import GatewayServer, server_config
    from gateway.settings import load_settings

    log_to_stderr()
    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("worker %d: the supervisor is gone; draining", os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, daemon=True).start()
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        # The file changed since the supervisor checked it: one line per
        # problem, and the supervisor tries this slot again later.
        for problem in exc.problems:
            log.error("worker %d: %s", os.getpid(), problem)
        raise SystemExit(2) from None
    app = create_app(settings, metrics_dir=metrics_dir)
    config = server_config(app, host="", port=0, **options)
    GatewayServer(config, app, Path(config_path)).run(sockets=[sock])


class Supervisor:
    """Runs ``workers`` gateway processes on ``host:port`` until told to stop."""

    def __init__(
        self,
        config_path: Path,
        *,
        host: str,
        port: int,
        workers: int,
        options: dict[str, Any],
        metrics_dir: str,
    ) -> None:
        self.config_path = str(config_path)
        self.metrics_dir = metrics_dir
        self.options = options
        self.workers = workers
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=2048)
        self._slots: list[tuple[SpawnProcess, float]] = []
        self._signals: list[int] = []
        self._stopping = False

    def _start(self) -> tuple[SpawnProcess, float]:
        process = _spawn.Process(
            target=_worker,
            args=(self.config_path, self.sock, self.options, self.metrics_dir),
            daemon=False,
        )
        process.start()
        return process, time.monotonic()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)  # handled in the loop, never inside the handler

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
        try:
            self._slots = [self._start() for _ in range(self.workers)]
            host, port = self.sock.getsockname()[:2]
            log.info("supervisor %d: %d workers on %s:%d", os.getpid(), self.workers, host, port)
            while self._slots:
                time.sleep(0.2)
                while self._signals:
                    self._forward(self._signals.pop(0))
                self._tend()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()

    def _forward(self, sig: int) -> None:
        if sig != signal.SIGHUP:
            self._stopping = True
        name = signal.Signals(sig).name
        log.info("supervisor: passing %s on to %d workers", name, len(self._slots))
        for process, _ in self._slots:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, sig)

    def _tend(self) -> None:
        """Collect workers that exited; replace them unless stopping."""
        now = time.monotonic()
        kept: list[tuple[SpawnProcess, float]] = []
        for process, started in self._slots:
            if process.exitcode is None:
                kept.append((process, started))
                continue
            if self._stopping:
                process.join()
                self._retire(process)
                continue
            if now - started < RESTART_DELAY:
                # Died young (a config that no longer loads, a crash at start):
                # the slot waits, so a worker that cannot start does not spin.
                kept.append((process, started))
                continue
            process.join()
            self._retire(process)
            log.warning(
                "supervisor: worker %d exited with %s; starting another",
                process.pid,
                process.exitcode,
            )
            kept.append(self._start())
        self._slots = kept

    def _retire(self, process: SpawnProcess) -> None:
        """Fold a reaped worker's metrics (until then its own file counts)."""
        pid = process.pid
        if pid is None:
            return
        try:
            retire(self.metrics_dir, pid)
        except (OSError, ValueError) as exc:
            # Its file stays and is still summed; only the tidying is lost.
            log.warning("supervisor: could not fold worker %d's metrics: %s", pid, exc)
