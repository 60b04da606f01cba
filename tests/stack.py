"""A whole gateway deployment on loopback, for end-to-end tests.

:func:`running_stack` starts one built-in origin per region (real uvicorn
servers on 127.0.0.1, each with its own root holding the same files with the
same modification time), builds a fixture GeoIP City database, writes signing
keys, and runs the gateway itself under uvicorn. Tests talk to it with a real
HTTP client.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.access_log import AccessLog
from gateway.app import GatewayApp, create_app
from gateway.keys import generate_key, issue_token
from gateway.origin import create_origin_app
from gateway.settings import parse_settings
from tests.geoip_fixture import build_city_db
from tests.support import serve

ISSUER = "https://devices.test.invalid"
AUDIENCE = "firmware-gateway"
REGIONS: dict[str, tuple[float, float]] = {
    "eu-central": (50.11, 8.68),  # Frankfurt
    "eu-west": (53.35, -6.26),  # Dublin
    "us-east": (39.04, -77.49),  # Virginia
    "us-west": (45.52, -122.68),  # Oregon
    "ap-northeast": (35.68, 139.69),  # Tokyo
}
KEY = "firmware/acme-x1/1.0.0/app.bin"
FILES: dict[str, bytes] = {
    KEY: b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(40_000)),
    "firmware/acme-x1/1.0.1/app.bin": b"second build\n" * 1000,
    "firmware/acme-x2/2.0.0/app.bin": b"another product\n",
}
MTIME = 1_767_225_600


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a gateway's /metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class ListStream:
    """A thread-safe text stream the access log writes to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._text.append(text)
        return len(text)

    def flush(self) -> None:
        return None

    def lines(self) -> list[str]:
        with self._lock:
            return "".join(self._text).splitlines()


@dataclass
class Stack:
    base: str
    app: GatewayApp
    workdir: Path
    log: ListStream
    origins: dict[str, str]
    secrets: dict[str, bytes]
    private_keys: dict[str, Path] = field(default_factory=dict)

    def token(
        self,
        sub: str = "device-0001",
        *,
        kid: str = "ed1",
        ttl: float = 3600,
        claims: dict[str, Any] | None = None,
        audience: str | None = AUDIENCE,
        issuer: str | None = ISSUER,
        now: float | None = None,
    ) -> str:
        return issue_token(
            self.private_keys[kid],
            kid,
            sub,
            ttl=ttl,
            audience=audience,
            issuer=issuer,
            claims={"product": "acme-x1"} if claims is None else claims,
            now=now,
        )

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=10)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) -> value."""
        return scrape(self.base)

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.base).get((name, tuple(sorted(labels.items()))), 0.0)

    def log_records(self, request_id: str, timeout: float = 3.0) -> dict[str, Any]:
        """The access-log record of one request (waits for the periodic flush)."""
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.lines():
                record = json.loads(line)
                if record["request_id"] == request_id:
                    return dict(record)
            time.sleep(0.05)
        raise AssertionError(f"no access-log line for request {request_id}")


def write_origin_roots(workdir: Path, regions: list[str]) -> dict[str, Path]:
    roots = {}
    for region in regions:
        root = workdir / "origins" / region
        for key, data in FILES.items():
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (MTIME, MTIME))
        roots[region] = root
    return roots


def base_config(
    workdir: Path, origins: dict[str, str], secrets: dict[str, bytes]
) -> dict[str, Any]:
    return {
        "server": {"trusted_proxies": ["127.0.0.1/32"], "geo_headers": ["cloudfront"]},
        "auth": {
            "jwks": str(workdir / "keys" / "jwks.json"),
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["EdDSA", "ES256"],
            "max_token_lifetime": "30d",
        },
        "access": [{"prefix": "firmware/{product}/"}],
        "geo": {
            "database": str(workdir / "city.mmdb"),
            "residency": {
                "eu": {"countries": ["DE", "FR", "NL", "SE"], "regions": ["eu-central", "eu-west"]}
            },
            "default_region": "us-east",
        },
        "regions": {
            name: {
                "location": list(REGIONS[name]),
                "backend": {"type": "local", "url": url, "secret": secrets[name].decode()},
            }
            for name, url in origins.items()
        },
        "signing": {"ttl": "15m", "min_remaining": "60s"},
    }


@contextlib.contextmanager
def running_stack(workdir: Path, edit: Any = None, **uvicorn_options: Any) -> Iterator[Stack]:
    """Origins + gateway on loopback; ``edit(config_dict)`` may change the config first."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys"
    if not (keys / "ed1.pem").exists():
        generate_key("EdDSA", keys, "ed1")
        generate_key("ES256", keys, "es1")
    build_city_db(workdir / "city.mmdb")
    roots = write_origin_roots(workdir, list(REGIONS))
    secrets = {name: f"secret-{name}-0123456789".encode() for name in REGIONS}
    with contextlib.ExitStack() as stack:
        origins = {
            name: stack.enter_context(serve(create_origin_app(root, secrets[name])))
            for name, root in roots.items()
        }
        config = base_config(workdir, origins, secrets)
        if edit is not None:
            edit(config)
        settings = parse_settings(config)
        log = ListStream()
        app = create_app(settings, registry=CollectorRegistry(), access_log=AccessLog(log))  # type: ignore[arg-type]
        options = {"proxy_headers": False, **uvicorn_options}
        base = stack.enter_context(serve(app, **options))
        yield Stack(
            base=base,
            app=app,
            workdir=workdir,
            log=log,
            origins=origins,
            secrets=secrets,
            private_keys={"ed1": keys / "ed1.pem", "es1": keys / "es1.pem"},
        )


@dataclass
class Gateway:
    """A gateway on loopback in front of whatever backends a test configured."""

    base: str
    app: GatewayApp
    workdir: Path
    log: ListStream
    private_key: Path

    def token(self, sub: str = "device-0001", claims: dict[str, Any] | None = None) -> str:
        return issue_token(
            self.private_key,
            "ed1",
            sub,
            ttl=3600,
            audience=AUDIENCE,
            issuer=ISSUER,
            claims={"product": "acme-x1"} if claims is None else claims,
        )

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.base).get((name, tuple(sorted(labels.items()))), 0.0)

    def get(self, key: str, **headers: str) -> httpx.Response:
        """GET /v1/binaries/{key} with a valid device token (product acme-x1)."""
        return httpx.get(
            f"{self.base}/v1/binaries/{key}",
            headers={"Authorization": f"Bearer {self.token()}", **headers},
            timeout=10,
        )


@contextlib.contextmanager
def running_gateway(
    workdir: Path, regions: dict[str, dict[str, Any]], **sections: Any
) -> Iterator[Gateway]:
    """The gateway alone, with ``regions`` as given (``{name: {location, backend}}``).

    ``sections`` replace or add top-level config sections (``signing={...}``).
    Devices get tokens with ``product: acme-x1``; access is ``firmware/{product}/``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys"
    if not (keys / "ed1.pem").exists():
        generate_key("EdDSA", keys, "ed1")
    config: dict[str, Any] = {
        "auth": {"jwks": str(keys / "jwks.json"), "issuer": ISSUER, "audience": AUDIENCE},
        "access": [{"prefix": "firmware/{product}/"}],
        "regions": regions,
        # Active health checks would probe the backends' hosts: off unless a
        # test asks for them, so nothing is ever sent to a non-loopback address.
        "health": {"active": False},
        **sections,
    }
    settings = parse_settings(config)
    log = ListStream()
    app = create_app(settings, registry=CollectorRegistry(), access_log=AccessLog(log))  # type: ignore[arg-type]
    with serve(app, proxy_headers=False) as base:
        yield Gateway(base=base, app=app, workdir=workdir, log=log, private_key=keys / "ed1.pem")
