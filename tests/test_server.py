"""``gateway serve`` as a real process: head deadline, reload on SIGHUP, drain on SIGTERM."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.keys import generate_key, issue_token
from gateway.origin import create_origin_app
from tests.stack import AUDIENCE, FILES, ISSUER, KEY, REGIONS, write_origin_roots
from tests.support import free_port, serve, wait_for_port

BINARY = f"/v1/binaries/{KEY}"


class Deployment:
    """Origins in this process, the gateway as a child process."""

    def __init__(self, workdir: Path, origins: dict[str, str]) -> None:
        self.workdir = workdir
        self.origins = origins
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "gateway.yaml"
        keys = workdir / "keys"
        generate_key("EdDSA", keys, "k1")
        self.token = issue_token(
            keys / "k1.pem", "k1", "dev-1", audience=AUDIENCE, issuer=ISSUER,
            claims={"product": "acme-x1"},
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.workers = 1

    def config(self, regions: list[str], default: str, **extra: Any) -> dict[str, Any]:
        return {
            "auth": {
                "jwks": str(self.workdir / "keys" / "jwks.json"),
                "issuer": ISSUER,
                "audience": AUDIENCE,
            },
            "access": [{"prefix": "firmware/{product}/"}],
            "geo": {"default_region": default},
            "regions": {
                name: {
                    "location": list(REGIONS[name]),
                    "backend": {"type": "local", "url": self.origins[name], "secret": SECRET},
                }
                for name in regions
            },
            **extra,
        }

    def write(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, workers: int = 1) -> None:
        self.workers = workers
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path),
             "--port", str(self.port), "--workers", str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(self.workdir)},  # its metrics directory goes here
        )  # fmt: skip
        wait_for_port(self.port, 30, self.proc)
        if workers > 1:
            self.wait_for_workers()

    def wait_for_workers(self) -> None:
        """Until every worker answers (request ids carry each worker's prefix)."""
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while len(seen) < self.workers and time.monotonic() < deadline:
            with httpx.Client(timeout=10) as client:  # a new connection each time
                seen.add(client.get(self.base + "/healthz").headers["x-request-id"].split("-")[0])
        assert len(seen) == self.workers, seen

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")

    def get(self, path: str = BINARY, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(self.base + path, headers=headers, timeout=10, **kwargs)

    def metric(self, line_start: str) -> float:
        for line in httpx.get(self.base + "/metrics", timeout=10).text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


SECRET = "server-test-secret-0123456789"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    roots = write_origin_roots(tmp_path, list(REGIONS))
    with contextlib.ExitStack() as stack:
        origins = {
            name: stack.enter_context(serve(create_origin_app(root, SECRET.encode())))
            for name, root in roots.items()
        }
        d = Deployment(tmp_path, origins)
        yield d
        if d.proc is not None:
            d.stop()  # also closes the stderr pipe of an exited process


@pytest.mark.parametrize("workers", [1, 2])
def test_a_slow_request_head_is_cut_off_while_others_are_served(
    deployment: Deployment, workers: int
) -> None:
    deployment.write(
        deployment.config(["eu-central", "us-east"], "us-east", limits={"header_timeout": "2s"})
    )
    deployment.start(workers)
    slow = socket.create_connection(("127.0.0.1", deployment.port))
    began = time.monotonic()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed_after = None
    served_meanwhile = 0
    try:
        while time.monotonic() - began < 8:
            try:
                slow.sendall(b"X")  # one header byte at a time (slowloris)
            except OSError:
                closed_after = time.monotonic() - began
                break
            slow.settimeout(0.3)
            try:
                if slow.recv(1024) == b"":
                    closed_after = time.monotonic() - began
                    break
            except TimeoutError:
                pass
            if deployment.get().status_code == 307:
                served_meanwhile += 1
    finally:
        slow.close()
    assert closed_after is not None and closed_after < 4.5
    assert served_meanwhile >= 2
    assert "request head took over 2.0s" in deployment.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_under_steady_load_without_a_failure(
    deployment: Deployment, workers: int
) -> None:
    deployment.write(deployment.config(["eu-central", "us-east"], "us-east"))
    deployment.start(workers)
    statuses: list[int] = []
    regions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set() and len(statuses) < 5000:
                r = client.get(
                    deployment.base + BINARY,
                    headers={"Authorization": f"Bearer {deployment.token}"},
                )
                statuses.append(r.status_code)
                regions.append(r.headers.get("x-gateway-region", ""))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        # A region list with a new region, now the default.
        deployment.write(
            deployment.config(["eu-central", "us-east", "ap-northeast"], "ap-northeast")
        )
        deployment.signal(signal.SIGHUP)
        # Every worker reloads in place and counts its own reload (summed).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            deployment.metric('gateway_config_reloads_total{result="success"}') < workers
        ):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(timeout=20)
    assert statuses and set(statuses) == {307}, set(statuses)
    assert regions[0] == "us-east" and regions[-1] == "ap-northeast"
    assert deployment.metric('gateway_config_reloads_total{result="success"}') == workers
    for _ in range(4 * workers):  # new connections: whichever worker answers
        assert deployment.get().headers["x-gateway-region"] == "ap-northeast"
    download = deployment.get(follow_redirects=True)
    assert download.content == FILES[KEY]


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_with_a_broken_config_keeps_the_old_one(
    deployment: Deployment, workers: int
) -> None:
    deployment.write(deployment.config(["eu-central", "us-east"], "us-east"))
    deployment.start(workers)
    broken = deployment.config(["eu-central"], "us-east")  # default names a missing region
    broken["signing"] = {"ttl": "forever"}
    deployment.write(broken)
    deployment.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if deployment.metric('gateway_config_reloads_total{result="failure"}') == workers:
            break
        time.sleep(0.05)
    assert deployment.metric('gateway_config_reloads_total{result="failure"}') == workers
    assert deployment.metric('gateway_config_reloads_total{result="success"}') == 0
    for _ in range(4 * workers):  # every worker still serves the old config
        response = deployment.get()
        assert response.status_code == 307
        assert response.headers["x-gateway-region"] == "us-east"
    err = deployment.stop()
    assert "reload refused: signing.ttl: expected a duration" in err
    assert "reload refused: geo.default_region: 'us-east' is not a configured region" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_twenty_streamed_downloads(deployment: Deployment, workers: int) -> None:
    deployment.write(
        deployment.config(
            ["eu-central", "us-east"],
            "us-east",
            delivery={"mode": "stream"},
            limits={"drain_timeout": "20s", "drain_delay": "1s"},
        )
    )
    deployment.start(workers)
    expected = hashlib.sha256(FILES[KEY]).hexdigest()
    results: list[str] = []
    started = threading.Barrier(21)

    def slow_download() -> None:
        digest = hashlib.sha256()
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "GET", deployment.base + BINARY,
                headers={"Authorization": f"Bearer {deployment.token}"},
            ) as response,
        ):  # fmt: skip
            started.wait(timeout=20)
            for chunk in response.iter_bytes(16 * 1024):
                digest.update(chunk)
                time.sleep(0.02)  # a slow device: ~2 s for the whole file
            results.append(f"{response.status_code}:{digest.hexdigest()}")

    threads = [threading.Thread(target=slow_download) for _ in range(20)]
    for t in threads:
        t.start()
    started.wait(timeout=20)
    deployment.signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(deployment.base + "/readyz", timeout=5)
    for t in threads:
        t.join(timeout=40)
    assert ready.status_code == 503
    assert results == [f"200:{expected}"] * 20
    assert deployment.proc is not None
    assert deployment.proc.wait(timeout=20) == 0
    # New connections are refused once the listeners closed.
    with pytest.raises(httpx.ConnectError):
        httpx.get(deployment.base + "/healthz", timeout=2)


def test_revocation_reloads_with_sighup_and_beats_the_token_cache(deployment: Deployment) -> None:
    revoked = deployment.workdir / "revoked.txt"
    revoked.write_text("# nobody yet\n")
    config = deployment.config(["eu-central"], "eu-central")
    config["auth"]["revoked"] = str(revoked)
    deployment.write(config)
    deployment.start()
    assert deployment.get().status_code == 307  # verified and cached
    revoked.write_text("dev-1\n")
    deployment.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if deployment.metric('gateway_config_reloads_total{result="success"}') == 1:
            break
        time.sleep(0.05)
    refused = deployment.get()
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert deployment.metric('gateway_auth_failures_total{reason="revoked"}') == 1


def test_watch_config_reloads_on_a_file_change(deployment: Deployment) -> None:
    config = deployment.config(["eu-central", "us-east"], "us-east")
    config["server"] = {"watch_config": True}
    deployment.write(config)
    deployment.start()
    assert deployment.get().headers["x-gateway-region"] == "us-east"
    changed = deployment.config(["eu-central", "us-east"], "eu-central")
    changed["server"] = {"watch_config": True}
    deployment.write(changed)  # no signal: the file change alone
    deadline = time.monotonic() + 10
    region = "us-east"
    while region != "eu-central" and time.monotonic() < deadline:
        time.sleep(0.2)
        region = deployment.get().headers["x-gateway-region"]
    assert region == "eu-central"
    assert deployment.metric('gateway_config_reloads_total{result="success"}') == 1


def test_two_workers_sum_their_metrics(deployment: Deployment) -> None:
    deployment.write(deployment.config(["eu-central", "us-east"], "us-east"))
    assert deployment.proc is None
    deployment.proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(deployment.config_path),
         "--port", str(deployment.port), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for_port(deployment.port, 30, deployment.proc)
    time.sleep(1.0)  # both workers up
    served_by: set[str] = set()
    for _ in range(60):
        # A new connection each time, so the kernel spreads them over the workers.
        with httpx.Client(timeout=10) as client:
            r = client.get(
                deployment.base + BINARY, headers={"Authorization": f"Bearer {deployment.token}"}
            )
        assert r.status_code == 307
        served_by.add(r.headers["x-request-id"].split("-")[0])
    assert len(served_by) == 2  # request ids carry each worker's prefix
    time.sleep(1.5)  # every worker has published a snapshot since
    for _ in range(6):  # whichever worker answers the scrape, the sum is the same
        with httpx.Client(timeout=10) as client:
            text = client.get(deployment.base + "/metrics").text
        line = 'gateway_requests_total{code="307",method="GET",route="binaries"} '
        assert f"{line}60.0" in text
        assert 'gateway_backend_up{backend="us-east"} 1.0' in text
        assert "gateway_build_info{" in text


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's gateway workers (its children running gateway.workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        ours = b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline
        if int(fields[1]) == supervisor and ours:
            found.add(int(stat.parent.name))
    return found


def test_a_worker_that_dies_is_replaced(deployment: Deployment) -> None:
    deployment.write(deployment.config(["eu-central", "us-east"], "us-east"))
    deployment.start(2)
    assert deployment.proc is not None
    first = worker_pids(deployment.proc.pid)
    assert len(first) == 2
    victim = min(first)
    for _ in range(20):  # new connections: both workers serve some
        with httpx.Client(timeout=10) as client:
            assert client.get(deployment.base + "/healthz").status_code == 200
    time.sleep(1.5)  # every worker has published a snapshot since
    served = deployment.metric('gateway_requests_total{code="200",method="GET",route="healthz"}')
    assert served >= 20
    (shared,) = deployment.workdir.glob("gateway-metrics-*")  # the supervisor's (TMPDIR)
    assert (shared / f"{victim}.prom").exists()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    now = first
    while time.monotonic() < deadline:
        now = worker_pids(deployment.proc.pid)
        if len(now) == 2 and victim not in now:
            break
        assert deployment.get().status_code == 307  # the other worker serves meanwhile
        time.sleep(0.2)
    assert len(now) == 2 and victim not in now and (first - {victim}) <= now
    deployment.wait_for_workers()
    # The victim's counts were folded into retired.prom, its own file removed.
    assert f"{victim}.prom" not in {p.name for p in shared.iterdir()}
    assert (shared / "retired.prom").exists()
    assert (
        deployment.metric('gateway_requests_total{code="200",method="GET",route="healthz"}')
        >= served
    )
    assert "starting another" in deployment.stop()


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(
    deployment: Deployment,
) -> None:
    deployment.write(deployment.config(["eu-central", "us-east"], "us-east"))
    deployment.start(2)
    assert deployment.proc is not None
    workers = worker_pids(deployment.proc.pid)
    assert len(workers) == 2
    deployment.proc.kill()  # SIGKILL: no chance to pass anything on
    deployment.proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    with pytest.raises(httpx.ConnectError):
        httpx.get(deployment.base + "/healthz", timeout=2)


def test_a_worker_that_cannot_load_the_file_is_retried_without_spinning(
    deployment: Deployment,
) -> None:
    good = deployment.config(["eu-central", "us-east"], "us-east")
    deployment.write(good)
    deployment.start(2)
    assert deployment.proc is not None
    first = worker_pids(deployment.proc.pid)
    broken = deployment.config(["eu-central"], "us-east")  # default names a missing region
    deployment.write(broken)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    time.sleep(8)  # the slot's replacement tries, fails, and waits
    for _ in range(4):
        assert deployment.get().status_code == 307  # the other worker serves on
    deployment.write(good)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(worker_pids(deployment.proc.pid)) < 2:
        time.sleep(0.2)
    deployment.wait_for_workers()
    err = deployment.stop()
    assert "geo.default_region: 'us-east' is not a configured region" in err
    assert "Traceback" not in err
