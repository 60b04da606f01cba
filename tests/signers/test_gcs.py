"""The ``gcs`` backend: byte-equal to google-cloud-storage's V4 signer, and accepted by a
V4 verifier written here from Google's documented algorithm (no local server checks GCS
signatures, so the format is proved these two independent ways, and end to end through
the gateway against a loopback "bucket" that runs the verifier on every request)."""

from __future__ import annotations

import asyncio
import binascii
import calendar
import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import google.cloud.storage._signing as google_signing
import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import BackendError, ConfigError
from gateway.settings import GCSBackend
from gateway.signers.gcs import MAX_EXPIRES, GCSSigner, create
from tests.stack import FILES, KEY, running_gateway
from tests.support import serve

BUCKET = "acme-firmware"
EMAIL = "gateway-signer@acme-fleet.iam.gserviceaccount.com"
ODD_KEY = "firmware/acme-x1/1.0.0/a+b=c,d@e~f_g.-h.bin"
FIELD = "regions.eu.backend"
SIGNED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z
TTL = 900


# --------------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def account_info(key: rsa.RSAPrivateKey, **overrides: Any) -> dict[str, Any]:
    """A service-account key file as the IAM console downloads it (throwaway key)."""
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": "acme-fleet",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem(key),
        "client_email": EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(overrides)
    return {k: v for k, v in info.items() if v is not None}


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(account_info(rsa_key)))
    return path


def backend(key_file: Path, **overrides: Any) -> GCSBackend:
    values: dict[str, Any] = {"type": "gcs", "bucket": BUCKET, "service_account": str(key_file)}
    values.update(overrides)
    return GCSBackend.model_validate(values)


def sign(signer: GCSSigner, key: str, signed_at: int, expires_at: int) -> str:
    return asyncio.run(signer.sign(key, signed_at, expires_at)).url


# --------------------------------------------------------------------------- the reference


def google_signed_url(
    key: rsa.RSAPrivateKey, name: str, at: int, expires: int, endpoint: str | None = None
) -> str:
    """google-cloud-storage's V4 URL at a pinned clock; nothing touches the network."""
    credentials = service_account.Credentials.from_service_account_info(account_info(key))  # type: ignore[no-untyped-call]
    client = storage.Client(project="acme-fleet", credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    blob = client.bucket(BUCKET).blob(name)
    # The library reads "now" through _signing._NOW(_UTC) both for X-Goog-Date
    # and to turn a timedelta into X-Goog-Expires.
    with mock.patch.object(google_signing, "_NOW", lambda tz=None: datetime.fromtimestamp(at, UTC)):
        return str(
            blob.generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=expires),
                method="GET",
                credentials=credentials,
                api_access_endpoint=endpoint,
            )
        )


@pytest.mark.parametrize("name", [KEY, ODD_KEY])
@pytest.mark.parametrize(
    ("endpoint", "expected_base"),
    [
        (None, "https://storage.googleapis.com"),
        ("https://storage.googleapis.com", "https://storage.googleapis.com"),
        ("http://127.0.0.1:4443", "http://127.0.0.1:4443"),
    ],
)
@pytest.mark.parametrize("expires", [1, TTL, MAX_EXPIRES])
def test_url_is_byte_equal_to_google_cloud_storage(
    key_file: Path,
    rsa_key: rsa.RSAPrivateKey,
    name: str,
    endpoint: str | None,
    expected_base: str,
    expires: int,
) -> None:
    settings = backend(key_file) if endpoint is None else backend(key_file, endpoint=endpoint)
    ours = sign(create(settings, FIELD), name, SIGNED_AT, SIGNED_AT + expires)
    reference = google_signed_url(rsa_key, name, SIGNED_AT, expires, endpoint)
    assert ours == reference
    assert ours.startswith(
        f"{expected_base}/{BUCKET}/{quote(name, safe='/~')}?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        f"&X-Goog-Credential={quote(EMAIL, safe='')}%2F20260101%2Fauto%2Fstorage%2Fgoog4_request"
        f"&X-Goog-Date=20260101T000000Z&X-Goog-Expires={expires}"
        "&X-Goog-SignedHeaders=host&X-Goog-Signature="
    )


# --------------------------------------------------------------------------- the verifier


def canonical_path(raw_path: str) -> str:
    """The resource path as Cloud Storage canonicalizes it: percent-encoded, "/" kept."""
    return quote(unquote(raw_path), safe="/~")


def verify_v4(
    method: str,
    raw_path: str,
    raw_query: str,
    host: str,
    public_key: rsa.RSAPublicKey,
    now: float,
) -> str | None:
    """Why Cloud Storage would refuse this request, or None when it is valid.

    Google Cloud docs: "Canonical requests" (structure, resource path, canonical
    query string sorted by encoded name, canonical headers followed by an empty
    line, signed headers, UNSIGNED-PAYLOAD) and "Signatures" (string to sign:
    algorithm, X-Goog-Date, credential scope, hex SHA-256 of the canonical
    request; RSA PKCS#1 v1.5 with SHA-256, hex-encoded signature).
    """
    pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=True)
    params = dict(pairs)
    if len(params) != len(pairs):
        return "repeated query parameter"
    required = {
        "X-Goog-Algorithm",
        "X-Goog-Credential",
        "X-Goog-Date",
        "X-Goog-Expires",
        "X-Goog-SignedHeaders",
        "X-Goog-Signature",
    }
    if not required <= params.keys():
        return "missing parameter"
    if params["X-Goog-Algorithm"] != "GOOG4-RSA-SHA256":
        return "algorithm"
    date = params["X-Goog-Date"]
    try:
        signed = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return "date"
    email, _, scope = params["X-Goog-Credential"].partition("/")
    if scope != f"{date[:8]}/auto/storage/goog4_request" or "@" not in email:
        return "credential scope"
    expires = int(params["X-Goog-Expires"])
    if not 1 <= expires <= 604800:
        return "expires out of range"
    if not signed <= now <= signed + expires:
        return "expired or not yet valid"
    if params["X-Goog-SignedHeaders"] != "host":
        return "signed headers"
    query = "&".join(
        sorted(
            f"{quote(k, safe='~')}={quote(v, safe='~')}"
            for k, v in params.items()
            if k != "X-Goog-Signature"
        )
    )
    canonical_request = "\n".join(
        [
            method,
            canonical_path(raw_path),
            query,
            f"host:{host.lower()}",
            "",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    string_to_sign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    try:
        signature = binascii.unhexlify(params["X-Goog-Signature"])
        public_key.verify(signature, string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return "signature"
    return None


def verify_url(
    url: str, public_key: rsa.RSAPublicKey, now: float, method: str = "GET"
) -> str | None:
    parts = urlsplit(url)
    return verify_v4(method, parts.path, parts.query, parts.netloc, public_key, now)


@pytest.fixture
def signer(key_file: Path) -> GCSSigner:
    return create(backend(key_file), FIELD)


def test_verifier_accepts_our_urls(signer: GCSSigner, rsa_key: rsa.RSAPrivateKey) -> None:
    for name in (KEY, ODD_KEY):
        url = sign(signer, name, SIGNED_AT, SIGNED_AT + TTL)
        assert verify_url(url, rsa_key.public_key(), now=SIGNED_AT + 10) is None
        assert verify_url(url, rsa_key.public_key(), now=SIGNED_AT + TTL) is None


def _swap(url: str, old: str, new: str) -> str:
    assert old in url
    return url.replace(old, new, 1)


def test_verifier_rejects_tampering(signer: GCSSigner, rsa_key: rsa.RSAPrivateKey) -> None:
    public = rsa_key.public_key()
    url = sign(signer, KEY, SIGNED_AT, SIGNED_AT + TTL)
    sig = url.rsplit("=", 1)[1]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    now = SIGNED_AT + 10
    assert verify_url(_swap(url, sig, flipped), public, now) == "signature"
    assert verify_url(_swap(url, "X-Goog-Expires=900", "X-Goog-Expires=9000"), public, now) == (
        "signature"
    )
    assert verify_url(_swap(url, "1.0.0/app.bin", "1.0.1/app.bin"), public, now) == "signature"
    assert verify_url(_swap(url, BUCKET, "other-bucket"), public, now) == "signature"
    assert verify_url(_swap(url, "storage.googleapis.com", "evil.example"), public, now) == (
        "signature"
    )
    later = "X-Goog-Date=20260101T000100Z"
    assert verify_url(_swap(url, "X-Goog-Date=20260101T000000Z", later), public, now + 60) == (
        "signature"
    )
    assert verify_url(url, public, now=SIGNED_AT + TTL + 1) == "expired or not yet valid"
    assert verify_url(url, public, now=SIGNED_AT - 1) == "expired or not yet valid"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    assert verify_url(url, stranger, now) == "signature"
    # A write with the GET URL is another canonical request.
    assert verify_url(url, public, now, method="PUT") == "signature"


def test_sign_is_deterministic(signer: GCSSigner) -> None:
    first = sign(signer, KEY, SIGNED_AT, SIGNED_AT + TTL)
    assert first == sign(signer, KEY, SIGNED_AT, SIGNED_AT + TTL)
    assert first != sign(signer, KEY, SIGNED_AT + 1, SIGNED_AT + 1 + TTL)
    assert asyncio.run(signer.sign(KEY, SIGNED_AT, SIGNED_AT + TTL)).expires_at == SIGNED_AT + TTL


def test_more_than_seven_days_is_refused(signer: GCSSigner) -> None:
    url = sign(signer, KEY, SIGNED_AT, SIGNED_AT + MAX_EXPIRES)
    assert "X-Goog-Expires=604800&" in url
    with pytest.raises(BackendError, match="604800"):
        sign(signer, KEY, SIGNED_AT, SIGNED_AT + MAX_EXPIRES + 1)


def test_endpoint_host_is_normalized_as_clients_send_it(key_file: Path) -> None:
    signer = create(backend(key_file, endpoint="https://Storage.GoogleAPIs.com:443/"), FIELD)
    url = sign(signer, KEY, SIGNED_AT, SIGNED_AT + TTL)
    assert url.startswith(f"https://storage.googleapis.com/{BUCKET}/{KEY}?")


# --------------------------------------------------------------------------- bad key files


def _problems(key_file: Path, **overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        create(backend(key_file, **overrides), FIELD)
    return caught.value.problems


def write(path: Path, content: str | dict[str, Any]) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert _problems(missing) == [
        f"{FIELD}.service_account: cannot read {missing}: No such file or directory"
    ]


def test_bad_json_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "sa.json", '{"type": "service_account",\n oops}')
    assert _problems(path) == [f"{FIELD}.service_account: {path} is not valid JSON at line 2"]
    path = write(tmp_path / "list.json", "[1, 2]")
    assert _problems(path) == [
        f"{FIELD}.service_account: {path} is not a JSON object (a service-account key file)"
    ]


def test_missing_fields_are_each_a_line(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write(tmp_path / "sa.json", account_info(rsa_key, client_email=None, private_key=None))
    assert _problems(path) == [
        f"{FIELD}.service_account.client_email: missing or not an email address in {path}",
        f"{FIELD}.service_account.private_key: missing in {path}",
    ]


def test_a_user_credential_file_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write(tmp_path / "adc.json", account_info(rsa_key, type="authorized_user"))
    assert _problems(path) == [
        f"{FIELD}.service_account: {path} has type 'authorized_user'; "
        "give a service-account JSON key"
    ]


def test_key_that_is_not_pem_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write(tmp_path / "sa.json", account_info(rsa_key, private_key="-----BEGIN nonsense"))
    assert _problems(path) == [
        f"{FIELD}.service_account.private_key: not an unencrypted PEM private key in {path}"
    ]


def test_non_rsa_key_is_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = write(tmp_path / "sa.json", account_info(ec_key, private_key=pem(ec_key)))  # type: ignore[arg-type]
    assert _problems(path) == [
        f"{FIELD}.service_account.private_key: GOOG4-RSA-SHA256 needs an RSA key, "
        f"found an EC key (secp256r1) in {path}"
    ]


def test_short_rsa_key_is_refused(tmp_path: Path) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = write(tmp_path / "sa.json", account_info(short))
    assert _problems(path) == [
        f"{FIELD}.service_account.private_key: RSA key of 1024 bits in {path}; "
        "at least 2048 are needed"
    ]


def test_endpoint_with_a_path_is_refused(key_file: Path) -> None:
    assert _problems(key_file, endpoint="https://storage.googleapis.com/storage/v1") == [
        f"{FIELD}.endpoint: give the scheme and host only (path-style URLs add /bucket/key)"
    ]


def test_key_file_and_endpoint_problems_are_reported_together(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    assert _problems(missing, endpoint="https://storage.googleapis.com/x") == [
        f"{FIELD}.service_account: cannot read {missing}: No such file or directory",
        f"{FIELD}.endpoint: give the scheme and host only (path-style URLs add /bucket/key)",
    ]


# --------------------------------------------------------------------------- end to end


def verifying_bucket(public_key: rsa.RSAPublicKey, objects: dict[str, bytes]) -> Starlette:
    """A loopback stand-in for storage.googleapis.com: every GET is checked by
    :func:`verify_v4` on what actually arrived (raw path, raw query, Host) before
    the object's bytes are served; anything else is 403 like Cloud Storage."""

    async def handle(request: Request) -> Response:
        raw_path = request.scope["raw_path"].decode("ascii")
        why = verify_v4(
            request.method,
            raw_path,
            request.scope["query_string"].decode("ascii"),
            request.headers["host"],
            public_key,
            time.time(),
        )
        if why is not None:
            return Response(f"SignatureDoesNotMatch: {why}", status_code=403)
        bucket, _, name = unquote(raw_path).lstrip("/").partition("/")
        if bucket != BUCKET or name not in objects:
            return Response("NoSuchKey", status_code=404)
        return Response(objects[name], media_type="application/octet-stream")

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "PUT", "DELETE"])])


@pytest.fixture
def bucket(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    objects = {**FILES, ODD_KEY: b"odd name\n"}
    with serve(verifying_bucket(rsa_key.public_key(), objects)) as base:
        yield base


def test_gateway_redirect_is_a_valid_v4_url_for_the_window(
    tmp_path: Path, key_file: Path, bucket: str
) -> None:
    regions = {
        "eu": {
            "location": [50.11, 8.68],
            "backend": {
                "type": "gcs",
                "bucket": BUCKET,
                "service_account": f"file:{key_file}",
                "endpoint": bucket,
            },
        }
    }
    with running_gateway(tmp_path / "gw", regions, signing={"ttl": "15m"}) as gw:
        before = time.time()
        response = gw.get(KEY)
        assert response.status_code == 307
        location = response.headers["location"]
        assert location.startswith(f"{bucket}/{BUCKET}/{KEY}?X-Goog-Algorithm=GOOG4-RSA-SHA256&")
        download = httpx.get(location, timeout=10)
        assert download.status_code == 200
        assert download.content == FILES[KEY]

        info = httpx.get(
            f"{gw.base}/v1/urls/{KEY}",
            headers={"Authorization": f"Bearer {gw.token()}"},
            timeout=10,
        ).json()
        assert info["url"] == location
        assert info["backend"] == "gcs"
        params = dict(parse_qsl(urlsplit(location).query))
        signed_at = calendar.timegm(time.strptime(params["X-Goog-Date"], "%Y%m%dT%H%M%SZ"))
        assert int(params["X-Goog-Expires"]) == 900
        expires_at = datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00"))
        assert expires_at.timestamp() == signed_at + 900
        # The window started at most window (ttl/3) ago and never in the future,
        # and the URL has at least ttl - window >= min_remaining left.
        assert before - 300 <= signed_at <= time.time()

        odd = gw.get(ODD_KEY)
        assert httpx.get(odd.headers["location"], timeout=10).content == b"odd name\n"

        # The stand-in refuses what Cloud Storage would: a flipped signature,
        # and the URL of one object used for another.
        sig = params["X-Goog-Signature"]
        flipped = location.replace(sig, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
        assert httpx.get(flipped, timeout=10).status_code == 403
        other = location.replace("1.0.0/app.bin", "1.0.1/app.bin")
        assert httpx.get(other, timeout=10).status_code == 403
        assert httpx.put(location, content=b"evil", timeout=10).status_code == 403
