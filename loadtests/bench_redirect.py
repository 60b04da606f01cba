"""Benchmark: the gateway's cache-hit redirect against a bare Starlette redirect.

Runs, in one invocation and with the same uvicorn flags, a bare Starlette app
that only returns a 307 (the baseline) and the full gateway (JWT check from
the verified-token cache, access check, locate, geo policy, signed-URL cache
hit, metrics, access log), each under wrk, alternating, and prints each
throughput and the gateway/baseline ratio. These machines are shared and
noisy, so only the ratio within one run means anything; the median of the
rounds is reported.

    python loadtests/bench_redirect.py [--seconds 5] [--rounds 3] [--connections 50]

The server is pinned to CPU 0 and wrk to CPU 1 when ``taskset`` exists.
Needs ``wrk`` (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from gateway.keys import generate_key, issue_token

ROOT = Path(__file__).resolve().parents[1]
KEY = "firmware/acme-x1/1.0.0/app.bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(workdir: Path, decision_cache_size: int = 16_384) -> tuple[Path, str]:
    keys = workdir / "keys"
    generate_key("EdDSA", keys, "bench")
    config = {
        "auth": {
            "jwks": str(keys / "jwks.json"),
            "issuer": "https://devices.bench.invalid",
            "audience": "firmware-gateway",
            "algorithms": ["EdDSA"],
        },
        "access": [{"prefix": "firmware/{product}/"}],
        "server": {"decision_cache_size": decision_cache_size},
        "geo": {"default_region": "eu-central"},
        # The origins are never contacted in redirect mode; no probes either.
        "health": {"active": False},
        "regions": {
            # The origins are never contacted in redirect mode.
            "eu-central": {
                "location": [50.11, 8.68],
                "backend": {"type": "local", "url": "http://127.0.0.1:9", "secret": "s" * 32},
            },
            "us-east": {
                "location": [39.04, -77.49],
                "backend": {"type": "local", "url": "http://127.0.0.1:10", "secret": "t" * 32},
            },
        },
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    token = issue_token(
        keys / "bench.pem",
        "bench",
        "bench-device",
        ttl=3600,
        audience="firmware-gateway",
        issuer="https://devices.bench.invalid",
        claims={"product": "acme-x1"},
    )
    return path, token


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


@contextlib.contextmanager
def server(kind: str, config: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, str(ROOT / "loadtests" / "serve_app.py"), kind, str(port), str(config)]
    proc = subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(url: str, token: str, seconds: int, connections: int) -> float:
    return run_wrk(
        ["-H", f"Authorization: Bearer {token}", url], seconds=seconds, connections=connections
    )


def run_wrk(args: list[str], *, seconds: int, connections: int) -> float:
    """Requests per second of one wrk run on CPU 1; any non-2xx/3xx answer is an error."""
    argv = pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *args])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out:
        raise RuntimeError(f"unexpected statuses during the run:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--decision-cache-size",
        type=int,
        default=16_384,
        help="0 measures the pipeline itself: token cache and URL cache hits, no decision cache",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench_redirect: wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        config, token = write_config(Path(tmp), args.decision_cache_size)
        url_path = f"/v1/binaries/{KEY}"
        ratios, base_rates, gw_rates = [], [], []
        for _ in range(args.rounds):
            with server("baseline", config) as base:
                wrk(base + url_path, token, 1, args.connections)  # warm-up
                base_rate = wrk(base + url_path, token, args.seconds, args.connections)
            with server("gateway", config) as gw:
                wrk(gw + url_path, token, 1, args.connections)  # warm-up: fills the caches
                gw_rate = wrk(gw + url_path, token, args.seconds, args.connections)
            base_rates.append(base_rate)
            gw_rates.append(gw_rate)
            ratios.append(gw_rate / base_rate)
            print(
                f"round: baseline {base_rate:9.0f} req/s   gateway {gw_rate:9.0f} req/s   "
                f"ratio {gw_rate / base_rate:.2f}",
                flush=True,
            )
        print(
            f"P1 ratio={statistics.median(ratios):.2f} "
            f"gateway={statistics.median(gw_rates):.0f}/s "
            f"baseline={statistics.median(base_rates):.0f}/s (median of {args.rounds} rounds, "
            f"decision cache {'on' if args.decision_cache_size else 'off'})"
        )


if __name__ == "__main__":
    main()
