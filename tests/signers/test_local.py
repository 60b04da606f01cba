"""The ``local`` backend's secret rotation, against the built-in origin.

The signer picks the newest secret whose ``not_before`` has come at the URL's
``signed_at``; the origin (in-process under uvicorn, and as the real
``gateway origin`` command) accepts a URL signed by any secret it was started
with, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.errors import ConfigError
from gateway.origin import create_origin_app
from gateway.settings import LocalBackend, load_settings, parse_settings
from gateway.signers import SignedURL
from gateway.signers.local import LocalSigner, create, local_signature
from tests.stack import running_gateway
from tests.support import free_port, serve, stop_process, wait_for_port

KEY = "firmware/acme-x1/1.0.0/app.bin"
DATA = b"local rotation firmware\n" * 512
OLD = "local-old-secret-5b1c9e"
NEW = "local-new-secret-a7f302"
SWITCH = 1_800_000_000  # 2027-01-15T08:00:00Z: the new secret's not_before


def config(backend: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth": {"jwks": "unused.json", "issuer": "i", "audience": "a"},
        "access": [{"prefix": "firmware/"}],
        "regions": {"eu": {"location": [50.1, 8.7], "backend": {"type": "local", **backend}}},
    }


def local_settings(url: str, **backend: Any) -> LocalBackend:
    settings = parse_settings(config({"url": url, **backend})).regions["eu"].backend
    assert isinstance(settings, LocalBackend)
    return settings


def rotating(url: str, not_before: object = SWITCH) -> LocalSigner:
    """A signer with OLD active from the start and NEW from ``not_before``."""
    backend = local_settings(
        url, secrets=[{"secret": OLD}, {"secret": NEW, "not_before": not_before}]
    )
    return create(backend, "regions.eu.backend")


def sign(signer: LocalSigner, signed_at: int, expires_at: int, key: str = KEY) -> SignedURL:
    return asyncio.run(signer.sign(key, signed_at, expires_at))


def sig_of(url: str) -> str:
    return httpx.URL(url).params["sig"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    (path / KEY).parent.mkdir(parents=True)
    (path / KEY).write_bytes(DATA)
    return path


# --------------------------------------------------------------------------- the signer


def test_rotation_switches_at_not_before() -> None:
    signer = rotating("http://origin.example:9000")
    expires = SWITCH + 900
    path = f"/{KEY}"
    assert sig_of(sign(signer, SWITCH - 1, expires).url) == local_signature(
        OLD.encode(), path, expires
    )
    assert sig_of(sign(signer, SWITCH, expires).url) == local_signature(NEW.encode(), path, expires)
    assert sig_of(sign(signer, SWITCH + 86400, expires).url) == local_signature(
        NEW.encode(), path, expires
    )
    # Nothing else in the URL names the secret: the origin tries each it has.
    assert sign(signer, SWITCH, expires).url == (
        f"http://origin.example:9000/{KEY}?expires={expires}"
        f"&sig={local_signature(NEW.encode(), path, expires)}"
    )


def test_signing_is_deterministic_across_signers() -> None:
    one, two = rotating("http://o:9000"), rotating("http://o:9000")
    for signed_at in (SWITCH - 1, SWITCH):
        assert sign(one, signed_at, SWITCH + 900) == sign(two, signed_at, SWITCH + 900)


# --------------------------------------------------------------------------- the origin


def test_origin_with_both_secrets_accepts_urls_of_both(root: Path) -> None:
    now = int(time.time())
    with serve(create_origin_app(root, [OLD.encode(), NEW.encode()])) as base:
        signer = rotating(base, not_before=now - 60)
        old_url = sign(signer, now - 120, now + 300).url  # before the switch
        new_url = sign(signer, now, now + 300).url
        assert sig_of(old_url) != sig_of(new_url)
        for url in (old_url, new_url):
            response = httpx.get(url, timeout=10)
            assert (response.status_code, response.content) == (200, DATA)


def test_origin_without_the_old_secret_refuses_its_urls(root: Path) -> None:
    now = int(time.time())
    # The origin checks the path and the query only, so one signer serves for
    # both origins below (they listen on different ports).
    signer = rotating("http://origin.invalid", not_before=now - 60)
    old = httpx.URL(sign(signer, now - 120, now + 300).url)
    new = httpx.URL(sign(signer, now, now + 300).url)

    def fetch(base: str, url: httpx.URL) -> httpx.Response:
        return httpx.get(f"{base}{url.raw_path.decode()}", timeout=10)

    with serve(create_origin_app(root, [OLD.encode(), NEW.encode()])) as during:
        assert fetch(during, old).status_code == 200
    # The rotation is over: the origin restarts with the new secret alone.
    with serve(create_origin_app(root, NEW.encode())) as after:
        refused = fetch(after, old)
        assert refused.status_code == 403
        assert refused.json()["type"] == "urn:gateway:problem:signature-rejected"
        served = fetch(after, new)
        assert (served.status_code, served.content) == (200, DATA)


def test_gateway_redirects_with_the_active_secret_to_a_rotating_origin(
    tmp_path: Path, root: Path
) -> None:
    now = int(time.time())
    with serve(create_origin_app(root, [OLD.encode(), NEW.encode()])) as origin:
        for not_before, secret in ((now - 3600, NEW), (now + 86400, OLD)):
            backend = {
                "type": "local",
                "url": origin,
                "secrets": [{"secret": OLD}, {"secret": NEW, "not_before": not_before}],
            }
            regions = {"eu": {"location": [50.1, 8.7], "backend": backend}}
            with running_gateway(tmp_path / f"gw-{not_before}", regions) as gateway:
                redirect = gateway.get(KEY)
                assert redirect.status_code == 307
                location = redirect.headers["location"]
                expires = int(httpx.URL(location).params["expires"])
                assert sig_of(location) == local_signature(secret.encode(), f"/{KEY}", expires)
                download = httpx.get(location, timeout=10)
                assert (download.status_code, download.content) == (200, DATA)


@contextlib.contextmanager
def origin_command(tmp_path: Path, *args: str, env: dict[str, str]) -> Iterator[str]:
    """``gateway origin ARGS`` as a real process; yields its base URL."""
    port = free_port()
    log = (tmp_path / "origin.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "origin", *args, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        try:
            wait_for_port(port, timeout=20, proc=proc)
        except RuntimeError:
            raise AssertionError((tmp_path / "origin.log").read_text()) from None
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        log.close()


def test_origin_command_with_repeated_secret_serves_both(tmp_path: Path, root: Path) -> None:
    now = int(time.time())
    env = {**os.environ, "GATEWAY_TEST_NEW_SECRET": NEW}
    args = ["--root", str(root), "--secret", OLD, "--secret", "env:GATEWAY_TEST_NEW_SECRET"]
    with origin_command(tmp_path, *args, env=env) as base:
        signer = rotating(base, not_before=now - 60)
        for signed_at in (now - 120, now):
            response = httpx.get(sign(signer, signed_at, now + 300).url, timeout=10)
            assert (response.status_code, response.content) == (200, DATA)
        stranger = create(local_settings(base, secret="a-third-secret"), "regions.eu.backend")
        assert httpx.get(sign(stranger, now, now + 300).url, timeout=10).status_code == 403


# --------------------------------------------------------------------------- the config


def test_secret_and_secrets_are_exclusive() -> None:
    both = {"url": "http://o:9000", "secret": OLD, "secrets": [{"secret": NEW}]}
    neither = {"url": "http://o:9000"}
    for backend in (both, neither):
        with pytest.raises(ConfigError) as caught:
            parse_settings(config(backend))
        assert caught.value.problems == [
            "regions.eu.backend: give secret or secrets (a list for rotation), exactly one of them"
        ]


def test_not_before_is_an_rfc3339_time() -> None:
    utc = local_settings(
        "http://o:9000",
        secrets=[{"secret": OLD}, {"secret": NEW, "not_before": "2027-01-15T08:00:00Z"}],
    )
    offset = local_settings(
        "http://o:9000",
        secrets=[{"secret": OLD}, {"secret": NEW, "not_before": "2027-01-15T09:30:00+01:30"}],
    )
    assert [v.not_before for v in utc.secret_versions()] == [None, SWITCH]
    assert offset.secret_versions()[1].not_before == utc.secret_versions()[1].not_before
    with pytest.raises(ConfigError) as caught:
        local_settings(
            "http://o:9000", secrets=[{"secret": NEW, "not_before": "2027-01-15T08:00:00"}]
        )
    assert caught.value.problems == [
        "regions.eu.backend.secrets.0.not_before: give the time zone, e.g. 2026-12-01T00:00:00Z"
    ]


def test_not_before_from_a_yaml_file_drives_the_switch(tmp_path: Path) -> None:
    # Unquoted, YAML itself parses the timestamp (a datetime, not a string).
    path = tmp_path / "gateway.yaml"
    text = yaml.safe_dump(config({"url": "http://o:9000"}))
    text = text.replace(
        "      url: http://o:9000\n",
        "      url: http://o:9000\n"
        "      secrets:\n"
        f"        - secret: {OLD}\n"
        f"        - secret: {NEW}\n"
        "          not_before: 2027-01-15T08:00:00Z\n",
    )
    path.write_text(text)
    backend = load_settings(path).regions["eu"].backend
    assert isinstance(backend, LocalBackend)
    assert backend.secret_versions()[1].not_before == SWITCH
    signer = create(backend, "regions.eu.backend")
    expires = SWITCH + 900
    old_sig = local_signature(OLD.encode(), f"/{KEY}", expires)
    new_sig = local_signature(NEW.encode(), f"/{KEY}", expires)
    assert sig_of(sign(signer, SWITCH - 1, expires).url) == old_sig
    assert sig_of(sign(signer, SWITCH, expires).url) == new_sig
