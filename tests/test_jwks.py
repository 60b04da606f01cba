"""A JWKS from a URL, through the real gateway, against a JWKS server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.keys import generate_key, issue_token
from tests.stack import AUDIENCE, ISSUER, KEY, Gateway, running_gateway
from tests.support import serve


class JWKSServer:
    """Serves whichever keys a test chooses; counts fetches; can fail or be slow."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.kids: list[str] = []
        self.fetches = 0
        self.status = 200
        self.delay = 0.0
        self.lock = threading.Lock()

    def publish(self, *kids: str) -> None:
        self.kids = list(kids)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        with self.lock:
            self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        keys = []
        for kid in self.kids:
            document = json.loads((self.keys_dir / kid / "jwks.json").read_text())
            keys.extend(document["keys"])
        body = json.dumps({"keys": keys}).encode() if self.status == 200 else b"down"
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def jwks(tmp_path: Path) -> Iterator[tuple[JWKSServer, str]]:
    for kid in ("k1", "k2"):
        generate_key("EdDSA", tmp_path / "issuer" / kid, kid)
    server = JWKSServer(tmp_path / "issuer")
    server.publish("k1")
    with serve(server) as base:
        yield server, base + "/.well-known/jwks.json"


def token(tmp_path: Path, kid: str, sub: str = "dev-1") -> str:
    return issue_token(
        tmp_path / "issuer" / kid / f"{kid}.pem", kid, sub, audience=AUDIENCE, issuer=ISSUER,
        claims={"product": "acme-x1"},
    )  # fmt: skip


def gateway_with(tmp_path: Path, url: str, **auth: Any) -> Any:
    regions = {
        "eu": {
            "location": [50.1, 8.7],
            "backend": {"type": "local", "url": "http://127.0.0.1:9", "secret": "s"},
        }
    }
    return running_gateway(
        tmp_path / "gw",
        regions,
        auth={"jwks": url, "issuer": ISSUER, "audience": AUDIENCE, **auth},
    )


def get(gw: Gateway, bearer: str) -> int:
    return httpx.get(
        f"{gw.base}/v1/binaries/{KEY}", headers={"Authorization": f"Bearer {bearer}"}, timeout=10
    ).status_code


def test_cold_burst_causes_one_fetch_and_rotation_is_picked_up(
    tmp_path: Path, jwks: tuple[JWKSServer, str]
) -> None:
    server, url = jwks
    server.delay = 0.5  # the first fetch is still under way when devices arrive
    with gateway_with(tmp_path, url) as gw:
        good = token(tmp_path, "k1")
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(get(gw, good))) for _ in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert results == [307] * 20
        assert server.fetches == 1
        server.delay = 0
        # The issuer rotates in k2: its first token triggers one refetch.
        server.publish("k1", "k2")
        assert get(gw, token(tmp_path, "k2")) == 307
        assert server.fetches == 2


def test_unknown_kids_cannot_hammer_the_issuer(
    tmp_path: Path, jwks: tuple[JWKSServer, str]
) -> None:
    server, url = jwks
    with gateway_with(tmp_path, url) as gw:
        assert get(gw, token(tmp_path, "k1")) == 307
        before = server.fetches
        forged = token(tmp_path, "k2")  # k2 is not published
        statuses = [get(gw, forged) for _ in range(50)]
        assert statuses == [401] * 50
        assert server.fetches - before <= 1  # at most one refetch per 30 s


def test_a_failing_jwks_keeps_the_last_good_keys_until_max_stale(
    tmp_path: Path, jwks: tuple[JWKSServer, str]
) -> None:
    server, url = jwks
    with gateway_with(tmp_path, url, jwks_refresh="500ms", jwks_max_stale="2s") as gw:
        good = token(tmp_path, "k1")
        assert get(gw, good) == 307
        server.status = 500
        fetches = server.fetches
        deadline = time.monotonic() + 5
        while server.fetches < fetches + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.fetches > fetches  # refreshes keep trying ...
        assert get(gw, good) == 307  # ... and the last good keys still serve
        deadline = time.monotonic() + 6
        status = 307
        while status == 307 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = get(gw, good)
        assert status == 401  # stale beyond jwks_max_stale: fail closed
        server.status = 200
        deadline = time.monotonic() + 5
        while status != 307 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = get(gw, good)
        assert status == 307  # and back once the issuer answers


def test_no_keys_ever_loaded_means_every_token_is_401(
    tmp_path: Path, jwks: tuple[JWKSServer, str]
) -> None:
    server, url = jwks
    server.status = 503
    with gateway_with(tmp_path, url) as gw:
        response = httpx.get(
            f"{gw.base}/v1/binaries/{KEY}",
            headers={"Authorization": f"Bearer {token(tmp_path, 'k1')}"},
            timeout=10,
        )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_plain_http_jwks_only_on_loopback() -> None:
    from gateway.errors import ConfigError
    from gateway.settings import parse_settings

    base = {
        "access": [{"prefix": "f/"}],
        "regions": {
            "eu": {
                "location": [1, 2],
                "backend": {"type": "local", "url": "http://127.0.0.1:9", "secret": "s"},
            }
        },
    }
    for url in (
        "http://127.0.0.1:8000/jwks.json",
        "http://localhost/jwks",
        "https://idp.example/jwks",
    ):
        settings = parse_settings({**base, "auth": {"jwks": url, "issuer": "i", "audience": "a"}})
        assert settings.auth.jwks_is_url
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {**base, "auth": {"jwks": "http://idp.example/jwks", "issuer": "i", "audience": "a"}}
        )
    assert info.value.problems == [
        "auth.jwks: a JWKS URL must be https (plain http only for loopback)"
    ]
