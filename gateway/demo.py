"""``gateway demo``: the gateway on an embedded default, ready for a device.

It writes into a working directory: an EdDSA signing key and its JWKS, one
origin root per region holding the same sample binaries (same bytes and
modification time, so the same ETag everywhere), a secret per region and a
config. It starts one built-in origin per region (``gateway origin``), then
the gateway, and prints a device token and a curl command that downloads a
binary through the gateway exactly as printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
import yaml

from gateway.keys import generate_key, issue_token
from gateway.settings import load_settings

ISSUER = "https://devices.demo.invalid"
AUDIENCE = "firmware-gateway"
# Three regions far apart, so the geo policy has something to decide.
REGIONS = {
    "eu-central": (50.11, 8.68),  # Frankfurt
    "us-east": (39.04, -77.49),  # Virginia
    "ap-northeast": (35.68, 139.69),  # Tokyo
}
DEMO_KEY = "firmware/acme-x1/1.0.0/app.bin"
MTIME = 1_767_225_600  # 2026-01-01T00:00:00Z: same in every region, so same ETag


def sample_binaries() -> dict[str, bytes]:
    """The demo's objects: a small printable image and a larger binary one."""
    banner = b"ACME X1 firmware 1.0.0 -- demo image served by gateway\n"
    text = banner + b"".join(f"{i:06d} ".encode() + banner for i in range(1, 400))
    blob = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(8 * 1024 * 32))
    return {
        DEMO_KEY: text,
        "firmware/acme-x1/1.1.0/rootfs.img": blob,
        "firmware/acme-x2/2.0.0/app.bin": text.replace(b"X1", b"X2"),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"origin on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"origin on port {port} did not start")


def prepare(workdir: Path, port: int) -> tuple[Path, dict[str, int], str]:
    """Write keys, binaries, secrets and config; return (config path, origin ports, token)."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys"
    if not (keys / "demo.pem").exists():
        generate_key("EdDSA", keys, "demo")
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    ports = {name: _free_port() for name in REGIONS}
    regions = {}
    for name, location in REGIONS.items():
        root = workdir / "origins" / name
        for key, data in sample_binaries().items():
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (MTIME, MTIME))
        secret_file = secrets_dir / f"{name}.secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
            secret_file.chmod(0o600)
        regions[name] = {
            "location": list(location),
            "backend": {
                "type": "local",
                "url": f"http://127.0.0.1:{ports[name]}",
                "secret": f"file:{secret_file}",
            },
        }
    config = {
        "server": {
            # The demo trusts loopback as its edge, so a curl can play a device
            # elsewhere with an edge geo header (CF-IPCountry: JP).
            "trusted_proxies": ["127.0.0.1/32", "::1/128"],
            "geo_headers": ["cloudfront", "cloudflare"],
        },
        "auth": {
            "jwks": str(keys / "jwks.json"),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["EdDSA", "ES256"],
        },
        "access": [{"prefix": "firmware/{product}/"}],
        "geo": {
            "residency": {"eu": {"continents": ["EU"], "regions": ["eu-central"]}},
            "default_region": "eu-central",
        },
        "regions": regions,
        "signing": {"ttl": "15m", "min_remaining": "60s"},
    }
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    token = issue_token(
        keys / "demo.pem",
        "demo",
        "demo-device-0001",
        ttl=7 * 86400,
        audience=AUDIENCE,
        issuer=ISSUER,
        claims={"product": "acme-x1"},
    )
    return config_path, ports, token


@contextlib.contextmanager
def origins(workdir: Path, ports: dict[str, int]) -> Iterator[None]:
    """One built-in origin process per region, stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, port in ports.items():
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "gateway", "origin",
                    "--root", str(workdir / "origins" / name),
                    "--secret", f"file:{workdir / 'secrets' / (name + '.secret')}",
                    "--host", "127.0.0.1", "--port", str(port),
                ]
            )  # fmt: skip
            procs.append(proc)
            _wait_for_port(port, proc)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def curl_command(base: str, token: str, key: str = DEMO_KEY) -> str:
    """The one-line download command a device would run."""
    header = shlex.quote(f"Authorization: Bearer {token}")
    return f"curl -fsSL -H {header} {base}/v1/binaries/{key}"


def run_demo(workdir: Path, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Prepare, start origins and gateway, print how to download; runs until Ctrl-C."""
    from gateway.app import create_app
    from gateway.cli import uvicorn_options

    config_path, ports, token = prepare(workdir, port)
    settings = load_settings(config_path)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=host, port=port, log_level="warning",
            **uvicorn_options(settings),
        )
    )  # fmt: skip

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient() as client:
            probe = await client.get(
                f"{base}/v1/urls/{DEMO_KEY}", headers={"Authorization": f"Bearer {token}"}
            )
        region = probe.json().get("region", "?") if probe.status_code == 200 else "?"
        lines = [
            "",
            f"gateway demo: listening on {base}  (config and keys in {workdir})",
            "regions: " + ", ".join(f"{n} -> 127.0.0.1:{p}" for n, p in ports.items()),
            "",
            "device token (product=acme-x1, valid 7 days):",
            token,
            "",
            f"download {DEMO_KEY} (served from region {region}; body to stdout):",
            curl_command(base, token),
            "",
            "to play a device elsewhere, add an edge geo header, e.g. -H 'CF-IPCountry: JP'",
            "(Tokyo) or -H 'CF-IPCountry: US'; add -D /dev/stderr to see X-Gateway-Region.",
            "",
            f"metrics: curl {base}/metrics     access log: below, one JSON line per request",
            "",
        ]
        print("\n".join(lines), flush=True)

    async def main() -> None:
        task = asyncio.create_task(announce())
        await server.serve()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not server.started:
            raise SystemExit(f"gateway demo: could not listen on {host}:{port}")

    # uvicorn re-raises the SIGTERM it caught once it has shut down; as an
    # interrupt it unwinds through origins() below, which stops the origin
    # processes, instead of ending this process with them left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with origins(workdir, ports):
        asyncio.run(main())
