"""The Locust fleet model (``loadtests/locustfile.py``) against a real ``gateway demo``.

Three short Locust runs, each a subprocess with a deadline, each of which must
end with exit status 0, no failed request, no exception in a task, and every
request group answered:

* headless with the rollout wave against the demo (redirect mode, devices
  placed by ``CloudFront-Viewer-Country``), cross-checked with the demo's
  access log: every region served, and at least as many 401s as bad-token
  requests, which Locust counted as successes;
* distributed: one master, one worker (``--expect-workers 1``);
* headless against a second gateway on the demo's origins with a GeoIP
  database and stream delivery (devices placed by GeoIP fixture addresses).

And the judge itself, on hand-made answers: the checks a run relies on do
fail a wrong region, a short-lived URL, a 401 without its challenge.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from loadtests.fleet import BAD_TOKEN_KINDS, Fleet, FleetOptions
from tests.geoip_fixture import build_city_db
from tests.support import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
REGIONS = {"eu-central", "us-east", "ap-northeast"}
BAD_TOKEN_GROUPS = {f"bad token: {kind}" for kind in BAD_TOKEN_KINDS}
REDIRECT_GROUPS = {
    "download", "resume", "resume: range", "urls", "urls: range", "other product",
} | BAD_TOKEN_GROUPS  # fmt: skip
# Stream mode: a resume is one ranged request to the gateway, no second hop.
STREAM_GROUPS = REDIRECT_GROUPS - {"resume: range"}


@dataclass(frozen=True)
class Server:
    base: str
    log: Path  # stdout: the access log, one JSON line per request


@dataclass(frozen=True)
class Demo(Server):
    dir: Path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server and whatever it started (its own session, so its process group).

    SIGINT, as Ctrl-C: ``gateway demo`` stops its origins then, but not on
    SIGTERM (uvicorn re-raises a captured SIGTERM once it has shut down, which
    ends the process before the demo's cleanup runs). The whole group gets
    SIGKILL when the server has not stopped within 15 s, and whatever is left
    in it afterwards SIGTERM.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{base} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{base} did not become ready")


@contextlib.contextmanager
def _server(command: list[str], port: int, log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc)
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``gateway demo`` on a free port: three regions, each with its own origin."""
    workdir = tmp_path_factory.mktemp("demo")
    port = free_port()
    command = [sys.executable, "-m", "gateway", "demo", "--port", str(port), "--dir", str(workdir)]
    log = tmp_path_factory.mktemp("demo-log") / "demo.log"
    with _server(command, port, log) as base:
        yield Demo(base, log, workdir)


def _environment() -> dict[str, str]:
    # The fleet's and Locust's own variables would change what is run.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOCUST_", "FLEET_")) and k != "GATEWAY_DEMO_DIR"
    }


def _locust(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


@dataclass(frozen=True)
class Stats:
    groups: dict[str, dict[str, str]]
    exceptions: int

    def count(self, name: str, column: str = "Request Count") -> int:
        return int(self.groups[name][column])

    @property
    def names(self) -> set[str]:
        return set(self.groups) - {"Aggregated"}

    def summary(self) -> str:
        total = self.groups["Aggregated"]
        return (
            f"{total['Request Count']} requests, {total['Failure Count']} failures, "
            f"{float(total['Requests/s']):.0f} req/s"
        )


def _read_stats(prefix: Path) -> Stats:
    with open(f"{prefix}_stats.csv", newline="") as f:
        groups = {row["Name"]: row for row in csv.DictReader(f)}
    with open(f"{prefix}_exceptions.csv", newline="") as f:
        exceptions = sum(1 for _ in csv.DictReader(f))
    return Stats(groups, exceptions)


def _user_counts(prefix: Path) -> list[int]:
    with open(f"{prefix}_stats_history.csv", newline="") as f:
        return [int(row["User Count"]) for row in csv.DictReader(f) if row["Name"] == "Aggregated"]


def _run(command: list[str], cwd: Path, timeout: float) -> str:
    """Run Locust to its end; its output (for assertion messages)."""
    out = cwd / "locust.out"
    with out.open("wb") as f:
        result = subprocess.run(
            command, cwd=cwd, env=_environment(), stdout=f, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, timeout=timeout, check=False,
        )  # fmt: skip
    text = out.read_text(errors="replace")
    assert result.returncode == 0, text[-4000:]
    return text


def _assert_clean(stats: Stats, groups: set[str], output: str, minimum: int) -> None:
    assert stats.count("Aggregated", "Failure Count") == 0, output[-4000:]
    assert stats.exceptions == 0, output[-4000:]
    assert stats.count("Aggregated") > minimum, stats.summary()
    assert stats.names == groups
    for name in groups:
        assert stats.count(name) > 0, name
        assert stats.count(name, "Failure Count") == 0, name


def _access_log(log: Path, offset: int) -> list[dict[str, object]]:
    time.sleep(0.5)  # the access log is flushed every 0.2 s
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"time"')]


def test_headless_wave_against_the_demo(demo: Demo, tmp_path: Path) -> None:
    offset = demo.log.stat().st_size
    output = _run(
        _locust(
            "--headless", "-u", "20", "-r", "10", "-t", "20s", "--host", demo.base,
            "--demo-dir", str(demo.dir), "--only-summary", "--csv", str(tmp_path / "run"),
        ),
        tmp_path,
        timeout=45,
    )  # fmt: skip
    stats = _read_stats(tmp_path / "run")
    print(f"\nheadless wave: {stats.summary()}")
    _assert_clean(stats, REDIRECT_GROUPS, output, minimum=200)
    # The rollout wave, sampled each second: a first wave at half the peak,
    # the second up to -u 20, then down to a tenth.
    users = _user_counts(tmp_path / "run")
    peak = users.index(20)
    assert 10 in users[:peak]
    assert min(users[peak:]) <= 2

    records = _access_log(demo.log, offset)
    statuses = Counter(r["status"] for r in records)
    assert statuses[401] >= sum(stats.count(g) for g in BAD_TOKEN_GROUPS)
    assert statuses[403] >= stats.count("other product")
    assert statuses[307] >= stats.count("download") + stats.count("resume")
    assert {r["region"] for r in records if r["status"] == 307} == REGIONS
    # Europe by residency, the rest by the CloudFront header: both policy paths.
    assert {r["reason"] for r in records if r["status"] == 307} == {"residency", "header"}


def test_distributed_master_and_worker(demo: Demo, tmp_path: Path) -> None:
    port = free_port()
    master_cmd = _locust(
        "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--headless", "--expect-workers", "1", "--expect-workers-max-wait", "20",
        "-u", "10", "-r", "10", "-t", "10s", "--host", demo.base,
        "--demo-dir", str(demo.dir), "--only-summary", "--csv", str(tmp_path / "dist"),
    )  # fmt: skip
    worker_cmd = _locust("--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
    env = _environment()
    with (tmp_path / "master.out").open("wb") as m, (tmp_path / "worker.out").open("wb") as w:
        master = subprocess.Popen(master_cmd, cwd=tmp_path, env=env, stdout=m, stderr=m)
        worker = subprocess.Popen(worker_cmd, cwd=tmp_path, env=env, stdout=w, stderr=w)
    try:
        master_status = master.wait(timeout=40)
        worker_status = worker.wait(timeout=10)
    finally:
        for proc in (master, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    output = (tmp_path / "master.out").read_text(errors="replace")
    assert master_status == 0, output[-4000:]
    assert worker_status == 0, (tmp_path / "worker.out").read_text(errors="replace")[-4000:]
    assert "1 workers connected" in output
    stats = _read_stats(tmp_path / "dist")
    print(f"\ndistributed: {stats.summary()}")
    _assert_clean(stats, REDIRECT_GROUPS, output, minimum=50)


@pytest.fixture
def geoip_gateway(demo: Demo, tmp_path: Path) -> Iterator[Server]:
    """A second gateway on the demo's origins: GeoIP database, no geo headers, stream mode."""
    database = tmp_path / "city.mmdb"
    build_city_db(database)
    config = yaml.safe_load((demo.dir / "gateway.yaml").read_text())
    config["server"]["geo_headers"] = []
    config["geo"]["database"] = str(database)
    config["delivery"] = {"mode": "stream"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    log = tmp_path / "gateway.log"
    with _server(command, port, log) as base:
        yield Server(base, log)


def test_geoip_addresses_and_stream_mode(demo: Demo, geoip_gateway: Server, tmp_path: Path) -> None:
    output = _run(
        _locust(
            "--headless", "-u", "5", "-r", "5", "-t", "8s", "--wave-seconds", "0",
            "--host", geoip_gateway.base, "--demo-dir", str(demo.dir),
            "--gateway-config", str(tmp_path / "gateway.yaml"),
            "--only-summary", "--csv", str(tmp_path / "geo"),
        ),
        tmp_path,
        timeout=30,
    )  # fmt: skip
    assert "geo source geoip" in output
    stats = _read_stats(tmp_path / "geo")
    print(f"\ngeoip + stream: {stats.summary()}")
    _assert_clean(stats, STREAM_GROUPS, output, minimum=50)
    records = _access_log(geoip_gateway.log, 0)
    served = [r for r in records if r["status"] in (200, 206)]
    assert {r["region"] for r in served} == REGIONS
    assert {r["reason"] for r in served} == {"residency", "nearest"}


# --------------------------------------------------------------------------- the judge


@pytest.fixture(scope="module")
def fleet(demo: Demo) -> Fleet:
    return Fleet.build(FleetOptions(demo_dir=demo.dir, devices=1000), random.Random(7))


def test_fleet_expects_the_policy_regions(fleet: Fleet) -> None:
    expected = {d.where: d.region for d in fleet.devices}
    assert expected["JP"] == "ap-northeast"
    assert expected["US"] == "us-east"
    assert expected["DE"] == expected["GB"] == "eu-central"  # residency: Europe stays
    assert {d.product for d in fleet.devices} == {"acme-x1", "acme-x2"}
    first = fleet.devices[0]
    assert first.headers["Authorization"].startswith("Bearer ey")
    assert first.headers["CloudFront-Viewer-Country"] == first.where


def test_zipf_prefers_the_newest_version(fleet: Fleet) -> None:
    ranked = [o.key for o in fleet.catalog.ranked("acme-x1")]
    assert ranked == ["firmware/acme-x1/1.1.0/rootfs.img", "firmware/acme-x1/1.0.0/app.bin"]
    rng = random.Random(1)
    picks = Counter(fleet.catalog.pick("acme-x1", rng).key for _ in range(4000))
    # 1 : 2**-1.2, i.e. about 70 % newest.
    assert 0.65 < picks[ranked[0]] / 4000 < 0.75
    assert fleet.catalog.other_product("acme-x1", rng).startswith("firmware/acme-x2/")


def test_judge_fails_surprising_redirects(fleet: Fleet) -> None:
    device = next(d for d in fleet.devices if d.where == "JP")
    obj = fleet.catalog.ranked(device.product)[0]
    now = time.time()
    url = fleet.url_prefix["ap-northeast"]
    assert url is not None and url.startswith("http://127.0.0.1:")
    good = {
        "x-gateway-region": "ap-northeast",
        "location": f"{url}{obj.key}?expires={int(now) + 600}&sig={'A' * 43}",
    }
    assert fleet.check_redirect(device, obj, 307, good, now) is None
    assert fleet.check_redirect(device, obj, 302, good, now) == "status 302, expected 307"
    wrong_region = {**good, "x-gateway-region": "eu-central"}
    assert fleet.check_redirect(device, obj, 307, wrong_region, now) == (
        "X-Gateway-Region eu-central for JP, expected ap-northeast"
    )
    eu = fleet.url_prefix["eu-central"]
    elsewhere = {**good, "location": good["location"].replace(url, str(eu))}
    assert fleet.check_redirect(device, obj, 307, elsewhere, now) == (
        f"signed URL is not under ap-northeast's origin {url}"
    )
    short = {**good, "location": f"{url}{obj.key}?expires={int(now) + 30}&sig={'A' * 43}"}
    assert fleet.check_redirect(device, obj, 307, short, now) == (
        "signed URL lives less than min_remaining (60s)"
    )


def test_judge_wants_401_with_a_bearer_challenge(fleet: Fleet) -> None:
    challenge = {"www-authenticate": 'Bearer realm="gateway", error="invalid_token"'}
    assert fleet.check_unauthorized(401, challenge) is None
    assert fleet.check_unauthorized(200, challenge) == "status 200, expected 401"
    assert fleet.check_unauthorized(401, {}) is not None
    assert fleet.check_unauthorized(401, {"www-authenticate": 'Bearer realm="gateway"'}) is not None
    body = b'{"type":"urn:gateway:problem:not-entitled","status":403}'
    assert fleet.check_forbidden(403, {}, body) is None
    assert fleet.check_forbidden(404, {}, body) == "status 404, expected 403"


def test_judge_checks_range_bytes(fleet: Fleet) -> None:
    obj = fleet.catalog.ranked("acme-x1")[0]
    headers = {"content-range": f"bytes 10-19/{obj.size}"}
    assert fleet.check_range(obj, 10, 19, 206, headers, obj.data[10:20]) is None
    assert fleet.check_range(obj, 10, 19, 206, headers, obj.data[11:21]) == (
        "range body differs from the file"
    )
    assert fleet.check_range(obj, 10, 19, 200, headers, obj.data) == "status 200, expected 206"
    assert fleet.check_range(obj, 0, 9, 206, headers, obj.data[:10]) == (
        "Content-Range is not the range asked for"
    )
