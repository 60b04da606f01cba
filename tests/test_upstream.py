"""The lean network backend under stream mode's client: plain, TLS, errors, timeouts."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.stream import upstream_client
from gateway.upstream import LeanBackend
from tests.support import free_port, serve

BODY = os.urandom(3 * 1024 * 1024 + 17)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            reply = "startup" if message["type"] == "lifespan.startup" else "shutdown"
            await send({"type": f"lifespan.{reply}.complete"})
            if reply == "shutdown":
                return
    if scope["path"] == "/stall":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        await asyncio.sleep(5)
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(BODY)).encode())],
        }
    )
    for i in range(0, len(BODY), 100_000):  # many small writes, read back in large chunks
        await send({"type": "http.response.body", "body": BODY[i : i + 100_000], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it."""
    base = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture(scope="module")
def tls_server(tls_files: dict[str, Path]) -> Iterator[str]:
    with serve(app, ssl_certfile=str(tls_files["cert"]), ssl_keyfile=str(tls_files["key"])) as base:
        yield base.replace("http://", "https://")


def test_plain_body_arrives_exactly_and_the_connection_is_reused() -> None:
    async def run(base: str) -> tuple[bytes, bytes]:
        async with upstream_client(connect_timeout=2, read_timeout=5, pool_size=4) as client:
            first = await client.get(base + "/")
            second = await client.get(base + "/")
            return first.content, second.content

    with serve(app) as base:
        first, second = asyncio.run(run(base))
    assert hashlib.sha256(first).digest() == hashlib.sha256(BODY).digest()
    assert second == first


def test_tls_with_a_trusted_ca(tls_server: str, tls_files: dict[str, Path]) -> None:
    async def run() -> bytes:
        context = ssl.create_default_context(cafile=str(tls_files["ca"]))
        async with httpcore.AsyncConnectionPool(
            ssl_context=context, network_backend=LeanBackend()
        ) as pool:
            response = await pool.request("GET", tls_server + "/")
            return response.content

    assert asyncio.run(run()) == BODY


def test_tls_with_an_untrusted_certificate_is_a_connect_error(tls_server: str) -> None:
    async def run() -> None:
        async with upstream_client(connect_timeout=2, read_timeout=5, pool_size=4) as client:
            await client.get(tls_server + "/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(run())


def test_refused_and_stalled_upstreams_raise_httpx_errors() -> None:
    async def refused() -> None:
        async with upstream_client(connect_timeout=1, read_timeout=1, pool_size=4) as client:
            await client.get(f"http://127.0.0.1:{free_port()}/")

    async def stalled(base: str) -> None:
        async with upstream_client(connect_timeout=1, read_timeout=0.5, pool_size=4) as client:
            await client.get(base + "/stall")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(refused())
    with serve(app) as base, pytest.raises(httpx.ReadTimeout):
        asyncio.run(stalled(base))
