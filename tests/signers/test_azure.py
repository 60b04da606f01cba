"""The ``azure`` backend: byte-equal to azure-storage-blob's SAS, accepted by a real Azurite."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.storage.blob._shared_access_signature as sdk_sas
import httpx
import pytest
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from gateway.errors import ConfigError
from gateway.settings import AzureBackend
from gateway.signers.azure import SAS_VERSION, AzureSigner, create, sas_string_to_sign
from tests.stack import FILES, KEY, running_gateway
from tests.support import free_port, require_program, stop_process, wait_for_port

# Azurite's well-known development account (documented in Azurite's README).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
CONTAINER = "firmware"
ODD_KEY = "firmware/acme-x1/1.0.0/a+b=c,d@e~f_g.-h.bin"
FIELD = "regions.eu.backend"
SIGNED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z
TTL = 900


def backend(**overrides: Any) -> AzureBackend:
    values: dict[str, Any] = {
        "type": "azure",
        "account": "fwstore",
        "container": CONTAINER,
        "account_key": ACCOUNT_KEY,
    }
    values.update(overrides)
    return AzureBackend.model_validate(values)


def sign(signer: AzureSigner, key: str, signed_at: int, expires_at: int) -> str:
    return asyncio.run(signer.sign(key, signed_at, expires_at)).url


def utc(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


@pytest.fixture
def sdk_version(monkeypatch: pytest.MonkeyPatch) -> None:
    # generate_blob_sas always signs for the SDK's newest service version; pin
    # it to ours so that the two SAS tokens can be compared byte for byte.
    monkeypatch.setattr(sdk_sas, "X_MS_VERSION", SAS_VERSION)


# --------------------------------------------------------------------------- the format


@pytest.mark.parametrize(
    ("endpoint", "protocol"),
    [
        (None, "https"),
        ("https://fwstore.blob.core.usgovcloudapi.net", "https"),
        ("http://127.0.0.1:10000/fwstore", "https,http"),
    ],
)
@pytest.mark.parametrize("key", [KEY, ODD_KEY])
@pytest.mark.usefixtures("sdk_version")
def test_sas_is_byte_equal_to_azure_storage_blob(
    endpoint: str | None, protocol: str, key: str
) -> None:
    signer = create(backend(endpoint=endpoint), FIELD)
    url = sign(signer, key, SIGNED_AT, SIGNED_AT + TTL)

    reference = generate_blob_sas(
        "fwstore",
        CONTAINER,
        key,
        account_key=ACCOUNT_KEY,
        permission=BlobSasPermissions(read=True),
        start=utc(SIGNED_AT - 300),
        expiry=utc(SIGNED_AT + TTL),
        protocol=protocol,
    )
    base, query = url.split("?", 1)
    assert query == reference
    encoded_key = key.replace("+", "%2B").replace("=", "%3D").replace(",", "%2C")
    encoded_key = encoded_key.replace("@", "%40")
    assert (
        base == f"{endpoint or 'https://fwstore.blob.core.windows.net'}/{CONTAINER}/{encoded_key}"
    )
    assert dict(parse_qsl(query)) | {"sig": "-"} == {
        "st": "2025-12-31T23:55:00Z",
        "se": "2026-01-01T00:15:00Z",
        "sp": "r",
        "spr": protocol,
        "sv": SAS_VERSION,
        "sr": "b",
        "sig": "-",
    }


@pytest.mark.usefixtures("sdk_version")
def test_string_to_sign_is_the_sdks() -> None:
    seen: list[str] = []
    generate_blob_sas(
        "fwstore",
        CONTAINER,
        ODD_KEY,
        account_key=ACCOUNT_KEY,
        permission="r",
        start=utc(SIGNED_AT - 300),
        expiry=utc(SIGNED_AT + TTL),
        protocol="https",
        sts_hook=seen.append,
    )
    ours = sas_string_to_sign(
        account="fwstore",
        container=CONTAINER,
        blob=ODD_KEY,
        start="2025-12-31T23:55:00Z",
        expiry="2026-01-01T00:15:00Z",
        protocol="https",
    )
    assert seen == [ours]
    # Sixteen fields (the 2020-12-06+ layout), the blob name not encoded.
    assert ours.split("\n") == [
        "r",
        "2025-12-31T23:55:00Z",
        "2026-01-01T00:15:00Z",
        f"/blob/fwstore/{CONTAINER}/{ODD_KEY}",
        "",
        "",
        "https",
        SAS_VERSION,
        "b",
        *[""] * 7,
    ]


def test_sign_is_deterministic_and_start_is_backdated_by_start_skew() -> None:
    signer = create(backend(start_skew="90s"), FIELD)
    first = sign(signer, KEY, SIGNED_AT, SIGNED_AT + TTL)
    assert first == sign(signer, KEY, SIGNED_AT, SIGNED_AT + TTL)
    assert first != sign(signer, KEY, SIGNED_AT + 1, SIGNED_AT + 1 + TTL)
    query = dict(parse_qsl(urlsplit(first).query))
    assert query["st"] == "2025-12-31T23:58:30Z"
    assert query["se"] == "2026-01-01T00:15:00Z"
    result = asyncio.run(signer.sign(KEY, SIGNED_AT, SIGNED_AT + TTL))
    assert result.expires_at == SIGNED_AT + TTL


NOT_BASE64 = "not a base64 storage account key (copy key1 or key2 from the portal)"


@pytest.mark.parametrize(
    ("account_key", "reason"),
    [
        ("not base64!", NOT_BASE64),
        ("c2VjcmV0", None),  # valid base64: accepted
        ("abc", NOT_BASE64),  # bad padding
        ("c2Vj cmV0", NOT_BASE64),  # whitespace inside
        ("====", NOT_BASE64),
    ],
)
def test_a_bad_account_key_is_a_config_error_at_create(
    account_key: str, reason: str | None
) -> None:
    if reason is None:
        assert create(backend(account_key=account_key), FIELD).kind == "azure"
        return
    with pytest.raises(ConfigError) as caught:
        create(backend(account_key=account_key), FIELD)
    assert caught.value.problems == [f"{FIELD}.account_key: {reason}"]
    assert account_key not in str(caught.value)


# --------------------------------------------------------------------------- Azurite


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Azurite Blob service on loopback; yields its endpoint (account in the path)."""
    program = require_program("azurite-blob")
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    # In-memory persistence and --location exclude each other, so the working
    # directory (where Azurite would put anything) is a temporary one.
    proc = subprocess.Popen(
        [
            program,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=20, proc=proc)
        endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        service = BlobServiceClient(
            endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}
        )
        with service:
            container = service.get_container_client(CONTAINER)
            container.create_container()
            for name, data in {**FILES, ODD_KEY: b"odd name\n"}.items():
                container.upload_blob(name, data)
        yield endpoint
    finally:
        stop_process(proc, timeout=5)


def azurite_signer(endpoint: str) -> AzureSigner:
    return create(backend(account=ACCOUNT, endpoint=endpoint), FIELD)


def azure_region(endpoint: str) -> dict[str, Any]:
    return {
        "eu": {
            "location": [50.11, 8.68],
            "backend": {
                "type": "azure",
                "account": ACCOUNT,
                "container": CONTAINER,
                "account_key": ACCOUNT_KEY,
                "endpoint": endpoint,
            },
        }
    }


def test_gateway_redirect_downloads_the_blob_from_azurite(azurite: str, tmp_path: Path) -> None:
    with running_gateway(tmp_path, azure_region(azurite)) as gw:
        response = gw.get(KEY)
        assert response.status_code == 307
        assert response.headers["x-gateway-region"] == "eu"
        location = response.headers["location"]
        assert location.startswith(f"{azurite}/{CONTAINER}/{KEY}?st=")
        download = httpx.get(location, timeout=10)
        assert download.status_code == 200
        assert download.content == FILES[KEY]

        # The JSON view of the same decision: se is the URL's expiry, st is
        # backdated by the default start_skew (5 min) from the window start.
        info = httpx.get(
            f"{gw.base}/v1/urls/{KEY}",
            headers={"Authorization": f"Bearer {gw.token()}"},
            timeout=10,
        ).json()
        assert info["url"] == location
        query = dict(parse_qsl(urlsplit(location).query))
        expires_at = datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00"))
        assert query["se"] == info["expires_at"]
        start = datetime.fromisoformat(query["st"].replace("Z", "+00:00"))
        assert (expires_at - start).total_seconds() == 900 + 300  # ttl + start_skew
        assert start.timestamp() <= time.time() - 300

        odd = gw.get(ODD_KEY)
        assert odd.status_code == 307
        assert httpx.get(odd.headers["location"], timeout=10).content == b"odd name\n"


def test_azurite_refuses_a_tampered_signature(azurite: str) -> None:
    now = int(time.time())
    url = sign(azurite_signer(azurite), KEY, now, now + TTL)
    assert httpx.get(url, timeout=10).status_code == 200
    base, query = url.split("?", 1)
    params = dict(parse_qsl(query))
    sig = params["sig"]
    params["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    tampered = httpx.get(base, params=params, timeout=10)
    assert tampered.status_code == 403
    assert b"AuthorizationFailure" in tampered.content or b"AuthenticationFailed" in (
        tampered.content
    )
    # Widening the permission without re-signing is refused as well.
    widened = httpx.get(base, params={**dict(parse_qsl(query)), "sp": "rw"}, timeout=10)
    assert widened.status_code == 403


def test_azurite_refuses_an_expired_sas(azurite: str) -> None:
    now = int(time.time())
    signer = azurite_signer(azurite)
    expired = sign(signer, KEY, now - 2 * TTL, now - TTL)
    assert httpx.get(expired, timeout=10).status_code == 403
    valid = sign(signer, KEY, now, now + TTL)
    assert httpx.get(valid, timeout=10).status_code == 200


def test_azurite_refuses_another_blobs_sas(azurite: str) -> None:
    now = int(time.time())
    other = "firmware/acme-x1/1.0.1/app.bin"
    other_url = sign(azurite_signer(azurite), other, now, now + TTL)
    assert httpx.get(other_url, timeout=10).content == FILES[other]
    sas = other_url.split("?", 1)[1]
    response = httpx.get(f"{azurite}/{CONTAINER}/{KEY}?{sas}", timeout=10)
    assert response.status_code == 403


def test_azurite_refuses_a_write_with_the_read_sas(azurite: str) -> None:
    now = int(time.time())
    url = sign(azurite_signer(azurite), KEY, now, now + TTL)
    put = httpx.put(url, content=b"evil", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10)
    assert put.status_code == 403
    assert b"AuthorizationPermissionMismatch" in put.content
    delete = httpx.delete(url, timeout=10)
    assert delete.status_code == 403
    assert httpx.get(url, timeout=10).content == FILES[KEY]
