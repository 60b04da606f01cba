"""Benchmark: a 1 GiB download streamed through the gateway against nginx serving it directly.

One invocation, on loopback:

- a 1 GiB file of random bytes (``os.urandom`` in 1 MiB blocks) in a temporary
  directory, served by nginx with the shipped ``deploy/nginx/gateway-origin.conf``
  (``sendfile on``, ``secure_link``) and by the built-in origin (``gateway origin``);
- the gateway in stream mode (``loadtests/serve_app.py gateway``, the same uvicorn
  flags as production) with one region on the ``nginx`` backend, and a second
  gateway with one region on the built-in origin;
- ``curl -o /dev/null`` as the device.

Printed: the throughput directly from nginx (the baseline) and through the
gateway (MiB/s, median of the rounds, alternating), their ratio, the gateway
process's CPU-seconds per GiB streamed (``/proc/<pid>/stat`` utime+stime
around the timed downloads), and its peak RSS growth while 8 downloads stream
at once (``VmHWM`` after, minus ``VmRSS`` when idle and warmed up). The same
figures for the gateway in front of the built-in origin follow as a second
line. Goals (issue 4): ratio >= 0.35, <= 1.0 CPU-s/GiB, RSS growth <= 32 MiB.

    python loadtests/bench_stream.py [--size-mib 1024] [--rounds 3] [--streams 8] [--dir DIR]

Pinning (when ``taskset`` exists and there are two CPUs or more): the gateway
runs alone on CPU 0; nginx, the built-in origin and curl share CPU 1, in the
baseline as well as through the gateway, so the ratio measures what the extra
hop costs. These machines are shared and noisy: only figures within one run
compare. Without nginx (``/usr/sbin/nginx``) the baseline is the built-in origin.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.keys import generate_key, issue_token
from gateway.signers.local import local_signature
from gateway.signers.nginx import secure_link_md5

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONF = ROOT / "deploy" / "nginx" / "gateway-origin.conf"
KEY = "firmware/acme-x1/1.0.0/big.bin"
WARM_KEY = "firmware/acme-x1/1.0.0/warm.bin"
MIB = 1024 * 1024
GIB = 1024 * MIB
NGINX_SECRET = "bench-nginx-secret-0123456789abcdef"
ORIGIN_SECRET = "bench-origin-secret-0123456789abcdef"
ISSUER = "https://devices.bench.invalid"
AUDIENCE = "firmware-gateway"
NGINX_MAIN = """\
daemon off;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def process(argv: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in its own process group until the block ends."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True
    )
    try:
        wait_for_port(port, proc, what)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def write_files(root: Path, size: int) -> None:
    path = root / KEY
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB))
    (root / WARM_KEY).write_bytes(os.urandom(MIB))


@contextlib.contextmanager
def nginx(workdir: Path, root: Path, program: str) -> Iterator[str]:
    """nginx with the shipped site config (listen address, root and secret filled in)."""
    prefix = workdir / "nginx"
    prefix.mkdir()
    port = free_port()
    site = DEPLOY_CONF.read_text()
    site = site.replace("    listen 80;\n", f"    listen 127.0.0.1:{port};\n")
    site = site.replace("    root /srv/firmware;\n", f"    root {root};\n")
    site = re.sub(
        r"^map \$arg_key \$gateway_secret \{\n.*?^\}\n",
        f'map $arg_key $gateway_secret {{\n    default "{NGINX_SECRET}";\n}}\n',
        site,
        flags=re.MULTILINE | re.DOTALL,
    )
    (prefix / "site.conf").write_text(site)
    user = ""
    if os.geteuid() == 0:
        # As root nginx's worker would become "nobody", which cannot read the
        # temporary directory: keep it as the user running the benchmark.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    (prefix / "nginx.conf").write_text(NGINX_MAIN.format(prefix=prefix, user=user))
    argv = [program, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    argv += ["-e", str(prefix / "error.log")]
    with process(pinned(1, argv), port, "nginx"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def builtin_origin(workdir: Path, root: Path) -> Iterator[str]:
    secret = workdir / "origin.secret"
    secret.write_text(ORIGIN_SECRET)
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "origin", "--root", str(root)]
    argv += ["--secret", f"file:{secret}", "--host", "127.0.0.1", "--port", str(port)]
    with process(pinned(1, argv), port, "built-in origin"):
        yield f"http://127.0.0.1:{port}"


def gateway_config(workdir: Path, name: str, backend: dict[str, str]) -> Path:
    keys = workdir / "keys"
    config = {
        "auth": {
            "jwks": str(keys / "jwks.json"),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["EdDSA"],
        },
        "access": [{"prefix": "firmware/{product}/"}],
        "delivery": {"mode": "stream"},
        "regions": {"eu-central": {"location": [50.11, 8.68], "backend": backend}},
    }
    path = workdir / f"gateway-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Gateway:
    url: str
    pid: int


@contextlib.contextmanager
def gateway(config: Path) -> Iterator[Gateway]:
    port = free_port()
    argv = [sys.executable, str(ROOT / "loadtests" / "serve_app.py"), "gateway", str(port)]
    # taskset execs the program, so the pid is the gateway's own.
    with process(pinned(0, [*argv, str(config)]), port, "gateway") as proc:
        yield Gateway(f"http://127.0.0.1:{port}", proc.pid)


def curl(url: str, size: int, token: str | None = None) -> float:
    """Download ``url`` to /dev/null; bytes per second."""
    argv = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download}",
    ]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(pinned(1, [*argv, url]), capture_output=True, text=True, check=True)
    code, got, speed = out.stdout.split()
    if code != "200" or int(got) != size:
        raise RuntimeError(f"{url}: HTTP {code}, {got} of {size} bytes")
    return float(speed)


def sha256_of(url: str, token: str) -> str:
    """sha256 of the body as the device receives it (curl | sha256sum)."""
    with subprocess.Popen(
        ["curl", "-sf", "-H", f"Authorization: Bearer {token}", url], stdout=subprocess.PIPE
    ) as download:
        out = subprocess.run(
            ["sha256sum"], stdin=download.stdout, capture_output=True, text=True, check=True
        )
    return out.stdout.split()[0]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15 of /proc/pid/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/pid/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def concurrent(url: str, token: str, streams: int, size: int) -> None:
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    argv += ["-H", f"Authorization: Bearer {token}", url]
    procs = [
        subprocess.Popen(pinned(1, argv), stdout=subprocess.PIPE, text=True) for _ in range(streams)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if out.split() != ["200", str(size)]:
            raise RuntimeError(f"a concurrent stream ended with {out!r}")


@dataclass
class Figures:
    rates: list[float]
    cpu_per_gib: float
    idle_kib: int
    single_peak_kib: int  # VmHWM after the one-at-a-time downloads
    peak_kib: int  # VmHWM after the concurrent ones


def measure_gateway(
    gw: Gateway,
    token: str,
    size: int,
    rounds: int,
    streams: int,
    baseline: list[float],
    direct: str,
) -> Figures:
    """Timed rounds (alternating with the direct download), CPU and peak RSS."""
    url = f"{gw.url}/v1/binaries/{KEY}"
    curl(f"{gw.url}/v1/binaries/{WARM_KEY}", MIB, token)  # warm-up: imports, pools, caches
    idle = status_kib(gw.pid, "VmRSS")
    rates: list[float] = []
    cpu = 0.0
    for _ in range(rounds):
        baseline.append(curl(direct, size))
        before = cpu_seconds(gw.pid)
        rates.append(curl(url, size, token))
        cpu += cpu_seconds(gw.pid) - before
    single_peak = status_kib(gw.pid, "VmHWM")
    concurrent(url, token, streams, size)
    peak = status_kib(gw.pid, "VmHWM")
    return Figures(rates, cpu / (rounds * size / GIB), idle, single_peak, peak)


def report(label: str, figures: Figures, baseline: float) -> None:
    rate = statistics.median(figures.rates)
    growth = (figures.peak_kib - figures.idle_kib) / 1024
    print(
        f"{label}: {rate / MIB:8.0f} MiB/s   ratio {rate / baseline:.2f}   "
        f"{figures.cpu_per_gib:.2f} CPU-s/GiB   peak RSS growth {growth:.1f} MiB "
        f"(idle {figures.idle_kib / 1024:.0f} MiB; peak {figures.single_peak_kib / 1024:.0f} "
        f"MiB one stream at a time, {figures.peak_kib / 1024:.0f} MiB with the concurrent ones)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--dir", help="where the temporary directory goes (default: $TMPDIR)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("bench_stream: curl is not installed")
    nginx_program = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else shutil.which("nginx")
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        root = workdir / "root"
        began = time.monotonic()
        write_files(root, size)
        print(f"wrote {args.size_mib} MiB of random bytes in {time.monotonic() - began:.1f} s")
        generate_key("EdDSA", workdir / "keys", "bench")
        token = issue_token(
            workdir / "keys" / "bench.pem",
            "bench",
            "bench-device",
            ttl=3600,
            audience=AUDIENCE,
            issuer=ISSUER,
            claims={"product": "acme-x1"},
        )
        expires = int(time.time()) + 3600
        origin = stack.enter_context(builtin_origin(workdir, root))
        origin_direct = (
            f"{origin}/{KEY}?expires={expires}"
            f"&sig={local_signature(ORIGIN_SECRET.encode(), f'/{KEY}', expires)}"
        )
        origin_config = gateway_config(
            workdir, "origin", {"type": "local", "url": origin, "secret": ORIGIN_SECRET}
        )
        if nginx_program is not None:
            upstream = stack.enter_context(nginx(workdir, root, nginx_program))
            direct = (
                f"{upstream}/{KEY}?md5={secure_link_md5(NGINX_SECRET, f'/{KEY}', expires)}"
                f"&expires={expires}"
            )
            config = gateway_config(
                workdir, "nginx", {"type": "nginx", "url": upstream, "secret": NGINX_SECRET}
            )
            label = "nginx"
        else:
            print("nginx not found: the baseline is the built-in origin")
            direct, config, label = origin_direct, origin_config, "built-in origin"

        curl(direct, size)  # warm-up: the file into the page cache
        baseline: list[float] = []
        with gateway(config) as gw:
            digest = sha256_of(f"{gw.url}/v1/binaries/{KEY}", token)
            expected = subprocess.run(
                ["sha256sum", str(root / KEY)], capture_output=True, text=True, check=True
            ).stdout.split()[0]
            if digest != expected:
                raise SystemExit("bench_stream: the gateway delivered other bytes")
            main_figures = measure_gateway(
                gw, token, size, args.rounds, args.streams, baseline, direct
            )
        base_rate = statistics.median(baseline)
        print(
            f"direct from {label} (baseline): {base_rate / MIB:8.0f} MiB/s "
            f"(rounds: {', '.join(f'{r / MIB:.0f}' for r in baseline)})"
        )
        report(f"gateway -> {label}", main_figures, base_rate)
        if nginx_program is not None:
            origin_baseline: list[float] = []
            with gateway(origin_config) as gw:
                origin_figures = measure_gateway(
                    gw, token, size, args.rounds, args.streams, origin_baseline, origin_direct
                )
            origin_rate = statistics.median(origin_baseline)
            print(f"direct from the built-in origin: {origin_rate / MIB:8.0f} MiB/s")
            report("gateway -> built-in origin (ratio vs nginx)", origin_figures, base_rate)
        print(
            f"goals: ratio >= 0.35, <= 1.0 CPU-s/GiB, peak RSS growth <= 32 MiB "
            f"with {args.streams} concurrent streams"
        )


if __name__ == "__main__":
    main()
