"""The ``gateway`` command line, run as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from gateway.auth import Authenticator, KeySet
from gateway.demo import DEMO_KEY, sample_binaries
from tests.support import free_port, stop_process

GATEWAY = [sys.executable, "-m", "gateway"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, *args], capture_output=True, text=True, timeout=60, env=env)


@contextlib.contextmanager
def background(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*GATEWAY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        stop_process(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def wait_for(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_keys_generate_and_token_issue_round_trip(tmp_path: Path) -> None:
    generated = run("keys", "generate", "--alg", "ES256", "--out", str(tmp_path), "--kid", "fleet1")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip() == "fleet1"
    assert (tmp_path / "fleet1.pem").stat().st_mode & 0o777 == 0o600
    jwks = json.loads((tmp_path / "jwks.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == ["fleet1"]

    issued = run(
        "token", "issue", "--key", str(tmp_path / "fleet1.pem"), "--kid", "fleet1",
        "--sub", "dev-42", "--ttl", "2h", "--aud", "fw", "--iss", "https://iss",
        "--claim", "product=acme-x1", "--claim", "tier=3",
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    device = Authenticator(
        KeySet.from_file(tmp_path / "jwks.json"),
        issuer="https://iss",
        audience="fw",
        algorithms=["ES256"],
        leeway=60,
        max_token_lifetime=86400,
    ).authenticate(token)
    assert device.sub == "dev-42"
    assert device.claims["product"] == "acme-x1"
    assert device.claims["tier"] == 3
    assert 7100 <= device.exp - time.time() <= 7201


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    assert (
        run("keys", "generate", "--alg", "EdDSA", "--out", str(tmp_path), "--kid", "a").returncode
        == 0
    )
    again = run("keys", "generate", "--alg", "EdDSA", "--out", str(tmp_path), "--kid", "a")
    assert again.returncode == 2
    assert "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_token_issue_with_a_missing_key_is_one_line(tmp_path: Path) -> None:
    result = run("token", "issue", "--key", str(tmp_path / "none.pem"), "--kid", "k", "--sub", "d")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def _origin_config(tmp_path: Path, port: int) -> Path:
    keys = tmp_path / "keys"
    assert (
        run("keys", "generate", "--alg", "EdDSA", "--out", str(keys), "--kid", "k").returncode == 0
    )
    config = {
        "auth": {"jwks": str(keys / "jwks.json"), "issuer": "i", "audience": "a"},
        "access": [{"prefix": "firmware/"}],
        "regions": {
            "here": {
                "location": [0, 0],
                "backend": {
                    "type": "local",
                    "url": f"http://127.0.0.1:{port}",
                    "secret": "env:ORIGIN_SECRET",
                },
            }
        },
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_origin_serves_what_sign_prints(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "firmware" / "x").mkdir(parents=True)
    (root / "firmware" / "x" / "fw.bin").write_bytes(b"firmware bytes" * 100)
    port = free_port()
    env = {**os.environ, "ORIGIN_SECRET": "a-long-shared-secret"}
    config = _origin_config(tmp_path, port)
    signed = run("sign", "--config", str(config), "firmware/x/fw.bin", env=env)
    assert signed.returncode == 0, signed.stderr
    url = signed.stdout.strip()
    assert url.startswith(f"http://127.0.0.1:{port}/firmware/x/fw.bin?expires=")
    assert "\n" not in url
    with background(
        "origin", "--root", str(root), "--secret", "env:ORIGIN_SECRET", "--port", str(port), env=env
    ):
        wait_for(f"http://127.0.0.1:{port}/")
        assert httpx.get(url, timeout=5).content == b"firmware bytes" * 100
        unsigned = httpx.get(f"http://127.0.0.1:{port}/firmware/x/fw.bin", timeout=5)
        assert unsigned.status_code == 403
        ranged = httpx.get(url, headers={"Range": "bytes=0-7"}, timeout=5)
        assert (ranged.status_code, ranged.content) == (206, b"firmware")


def test_sign_refuses_a_bad_key_and_region(tmp_path: Path) -> None:
    env = {**os.environ, "ORIGIN_SECRET": "s3cret"}
    config = _origin_config(tmp_path, 9)
    bad_key = run("sign", "--config", str(config), "firmware/../etc/passwd", env=env)
    bad_region = run("sign", "--config", str(config), "--region", "mars", "firmware/a", env=env)
    for result in (bad_key, bad_region):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_origin_refuses_a_missing_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_SECRET"}
    result = run("origin", "--root", str(tmp_path), "--secret", "env:NO_SUCH_SECRET", env=env)
    assert result.returncode == 2
    assert "NO_SUCH_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_prints_a_curl_command_that_downloads_the_binary(tmp_path: Path) -> None:
    port = free_port()
    with background("demo", "--port", str(port), "--dir", str(tmp_path / "demo")) as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("curl "):
                break
        commands = [line for line in lines if line.startswith("curl ")]
        assert len(commands) == 1, lines
        command = commands[0]
        assert " -L" in command or "L " in command.split("http")[0]
        assert " -o " not in command and " -O" not in command
        assert f"http://127.0.0.1:{port}/v1/binaries/{DEMO_KEY}" in command
        # The token is printed on its own line too, and is inline in the command.
        token_lines = [line for line in lines if line.count(".") == 2 and " " not in line]
        assert token_lines and token_lines[0] in command
        assert any("served from region" in line for line in lines)
        # Exactly as printed, through a shell.
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == sample_binaries()[DEMO_KEY]
    # Stopped with SIGTERM (background() does), the demo takes its origins along.
    demo_dir = str(tmp_path / "demo")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _processes_mentioning(demo_dir):
        time.sleep(0.1)
    assert _processes_mentioning(demo_dir) == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_check_config_accepts_the_example_config() -> None:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [*GATEWAY, "check-config", "config/example.yaml"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        env={**os.environ, "EU_ORIGIN_SECRET": "x" * 32, "US_ORIGIN_SECRET": "y" * 32},
    )
    assert result.returncode == 0, result.stderr


def test_serve_with_workers_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*GATEWAY, "serve", "--config", "config/example.yaml", "--port", str(port),
             "--workers", "2"],
            capture_output=True, text=True, cwd=root, timeout=60,
            env={**os.environ, "EU_ORIGIN_SECRET": "x" * 32, "US_ORIGIN_SECRET": "y" * 32},
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"cannot listen on 127.0.0.1:{port}: Address already in use"
