"""The ``s3`` backend, proved three independent ways.

1. Byte-equality with botocore's own presigner
   (``client.generate_presigned_url("get_object", ...)``) at a pinned clock,
   and with the worked example of the AWS document "Authenticating Requests:
   Using Query Parameters (AWS Signature Version 4)".
2. A SigV4 query-auth verifier written here from that AWS document
   (canonical request -> string to sign -> derived signing key), which accepts
   our URLs and rejects every tampered one.
3. Real downloads from s3rver, directly and through the gateway's redirect.

What s3rver 3.7.1 checks on a SigV4 presigned GET (lib/middleware/authentication.js):
the X-Amz-* parameters are present, X-Amz-Algorithm is AWS4-HMAC-SHA256,
X-Amz-Date is well formed, X-Amz-Expires <= 604800, X-Amz-Date + X-Amz-Expires
is not past (else 403 AccessDenied "Request has expired"), and the access key
id exists (else 403 InvalidAccessKeyId). It does NOT compute SigV4 signatures
("Signature version 4 calculation is unimplemented"): a tampered signature is
served with 200. Signatures are therefore proved by (1) and (2), not by s3rver.

Every test runs with the AWS environment emptied (no keys, no profile, no
instance metadata), so nothing here depends on, or reaches, a real AWS account.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime
import functools
import hashlib
import hmac
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

import botocore.config
import botocore.credentials
import botocore.session
import httpx
import pytest

from gateway.errors import BackendError, ConfigError
from gateway.settings import S3Backend, parse_settings
from gateway.signers import SignedURL, build_signer
from gateway.signers.s3 import (
    AWSCredentials,
    S3Signer,
    create,
    object_url_prefix,
)
from tests.stack import running_gateway
from tests.support import free_port, require_program, serve, stop_process, wait_for_port

FIELD = "regions.eu.backend"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY = "firmware/acme-x1/1.0.0/app.bin"
# Every character an object key may hold beyond letters, digits and "/._-":
# SigV4 wants + = , @ percent-encoded in the canonical URI, and ~ left alone.
ODD_KEY = "firmware/acme-x1/v1.0+build=7,rc@lab~2/app.bin"
PINNED = datetime.datetime(2026, 3, 14, 15, 9, 26)  # naive UTC, as botocore's clock returns
SIGNED_AT = calendar.timegm(PINNED.timetuple())

_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_STS",
)


@pytest.fixture(autouse=True)
def empty_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS credentials anywhere botocore looks; returns the (absent) config file path."""
    for name in _AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "aws" / "config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return config


def s3_settings(**backend: Any) -> S3Backend:
    values: dict[str, Any] = {
        "type": "s3",
        "bucket": "fw-eu",
        "region": "eu-central-1",
        "credentials": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
    }
    values.update(backend)
    return S3Backend.model_validate(values)


def sign(signer: S3Signer, key: str, signed_at: int, expires_at: int) -> SignedURL:
    return asyncio.run(signer.sign(key, signed_at, expires_at))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, strict_parsing=True).items()}


# --------------------------------------------------------------------------- the verifier

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """AWS ``UriEncode``: every byte but A-Z a-z 0-9 - . _ ~ as %XX (upper-case hex)."""
    return "".join(
        chr(byte) if byte in _UNRESERVED or (keep_slash and byte == 0x2F) else f"%{byte:02X}"
        for byte in text.encode()
    )


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class Rejected(AssertionError):
    pass


def verify_presigned(
    url: str, secrets: Mapping[str, str], now: int | None = None
) -> dict[str, str]:
    """Check a presigned GET URL as S3 would, from the AWS document alone.

    "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)":
    canonical request = GET, canonical URI, canonical query string (every
    parameter but X-Amz-Signature, UriEncoded, sorted by name), the host
    header, "host", UNSIGNED-PAYLOAD; string to sign = "AWS4-HMAC-SHA256",
    X-Amz-Date, scope, hex SHA-256 of the canonical request; signing key =
    HMAC chain from "AWS4" + secret over date, region, "s3", "aws4_request".
    Returns the decoded parameters; raises :class:`Rejected` with the reason.
    """
    parts = urlsplit(url)
    pairs = [pair.partition("=") for pair in parts.query.split("&")]
    params = {unquote(name): unquote(value) for name, _, value in pairs}
    if len(params) != len(pairs):
        raise Rejected("a parameter is repeated")
    for name in ("Algorithm", "Credential", "Date", "Expires", "SignedHeaders", "Signature"):
        if f"X-Amz-{name}" not in params:
            raise Rejected(f"X-Amz-{name} is missing")
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        raise Rejected("unknown algorithm")
    access_key, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    amz_date = params["X-Amz-Date"]
    if service != "s3" or terminator != "aws4_request":
        raise Rejected("bad credential scope")
    if not re.fullmatch(r"\d{8}T\d{6}Z", amz_date) or amz_date[:8] != date:
        raise Rejected("bad X-Amz-Date")
    expires = int(params["X-Amz-Expires"])
    if not 1 <= expires <= 604800:
        raise Rejected("X-Amz-Expires out of range")
    if params["X-Amz-SignedHeaders"] != "host":
        raise Rejected("only the host header may be signed")
    if access_key not in secrets:
        raise Rejected("unknown access key id")
    canonical_uri = uri_encode(unquote(parts.path), keep_slash=True)
    canonical_query = "&".join(
        f"{name}={value}"
        for name, value in sorted(
            (uri_encode(name, keep_slash=False), uri_encode(value, keep_slash=False))
            for name, value in params.items()
            if name != "X-Amz-Signature"
        )
    )
    default_port = {"http": ":80", "https": ":443"}[parts.scheme]
    host = parts.netloc.removesuffix(default_port)
    canonical_request = "\n".join(
        ["GET", canonical_uri, canonical_query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    scope = f"{date}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secrets[access_key]).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        raise Rejected("signature does not match")
    if now is not None:
        start = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        if now > start + expires:
            raise Rejected("expired")
    return params


# --------------------------------------------------------------------------- botocore's presigner


@functools.cache
def _reference_session() -> Any:
    # One botocore session for every reference client: its first client loads
    # the S3 service model, later ones reuse it.
    return botocore.session.get_session()


def botocore_url(
    *,
    region: str,
    addressing: str,
    key: str,
    expires: int,
    bucket: str = "fw-eu",
    endpoint: str | None = None,
    token: str | None = None,
) -> str:
    """What botocore's own S3 client presigns at the PINNED clock."""
    s3: dict[str, str] = {"addressing_style": addressing}
    if region == "us-east-1":
        # botocore's default for us-east-1 is the legacy global s3.amazonaws.com;
        # we use the regional endpoint (S3 serves both), so ask botocore for it too.
        s3["us_east_1_regional_endpoint"] = "regional"
    client = _reference_session().create_client(
        "s3",
        region_name=region,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=token,
        config=botocore.config.Config(signature_version="s3v4", s3=s3),
        endpoint_url=endpoint,
    )
    try:
        # Patching botocore's clock pins the reference, not our code.
        with mock.patch("botocore.auth.get_current_datetime", return_value=PINNED):
            return str(
                client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
                )
            )
    finally:
        client.close()


CASES = {
    "virtual": dict(region="eu-central-1", addressing="virtual"),
    "path": dict(region="eu-central-1", addressing="path"),
    "us-east-1 virtual": dict(region="us-east-1", addressing="virtual"),
    "us-east-1 path": dict(region="us-east-1", addressing="path"),
    "china partition": dict(region="cn-north-1", addressing="virtual"),
    "endpoint path": dict(
        region="eu-central-1", addressing="path", endpoint="http://127.0.0.1:4569"
    ),
    "endpoint virtual, base path": dict(
        region="us-west-2", addressing="virtual", endpoint="https://minio.example.com:9000/s3"
    ),
    "endpoint path, default port": dict(
        region="eu-west-1", addressing="path", endpoint="https://objects.example.com:443"
    ),
    "session token": dict(region="eu-central-1", addressing="virtual", token="FQoG+/Zr=="),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("key", [KEY, ODD_KEY])
@pytest.mark.parametrize("expires", [900, 604800])
def test_url_is_byte_equal_to_botocore(case: str, key: str, expires: int) -> None:
    options: dict[str, Any] = dict(CASES[case])
    token = options.pop("token", None)
    credentials: dict[str, Any] = {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}
    if token is not None:
        credentials["session_token"] = token
    signer = create(s3_settings(**options, credentials=credentials), FIELD)

    signed = sign(signer, key, SIGNED_AT, SIGNED_AT + expires)

    assert signed.url == botocore_url(**options, key=key, expires=expires, token=token)
    assert signed.expires_at == SIGNED_AT + expires  # static keys: no cap
    assert verify_presigned(signed.url, {ACCESS_KEY: SECRET_KEY})


def test_aws_documented_example() -> None:
    """The worked example of the AWS document, to the last byte of its signature."""
    signer = create(
        s3_settings(
            bucket="examplebucket",
            region="us-east-1",
            endpoint="https://s3.amazonaws.com",  # the example uses the legacy global host
            addressing="virtual",
        ),
        FIELD,
    )
    signed_at = calendar.timegm((2013, 5, 24, 0, 0, 0))

    url = sign(signer, "test.txt", signed_at, signed_at + 86400).url

    assert url == (
        "https://examplebucket.s3.amazonaws.com/test.txt"
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )
    # ... and the verifier, written from the same document, agrees with AWS.
    assert verify_presigned(url, {ACCESS_KEY: SECRET_KEY})["X-Amz-Expires"] == "86400"


# --------------------------------------------------------------------------- verifier checks


def test_verifier_accepts_our_url_and_its_fields_are_the_window() -> None:
    signer = create(s3_settings(), FIELD)

    url = sign(signer, ODD_KEY, SIGNED_AT, SIGNED_AT + 900).url
    params = verify_presigned(url, {ACCESS_KEY: SECRET_KEY}, now=SIGNED_AT + 900)

    assert params["X-Amz-Date"] == "20260314T150926Z"  # signed_at, not the wall clock
    assert params["X-Amz-Expires"] == "900"  # expires_at - signed_at
    assert params["X-Amz-Credential"] == f"{ACCESS_KEY}/20260314/eu-central-1/s3/aws4_request"
    assert urlsplit(url).path == "/firmware/acme-x1/v1.0%2Bbuild%3D7%2Crc%40lab~2/app.bin"
    assert "X-Amz-Security-Token" not in params
    with pytest.raises(Rejected, match="expired"):
        verify_presigned(url, {ACCESS_KEY: SECRET_KEY}, now=SIGNED_AT + 901)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/app.bin?", "/app.bim?"),  # another object
        ("X-Amz-Expires=900", "X-Amz-Expires=901"),  # a longer life
        ("X-Amz-Date=20260314T150926Z", "X-Amz-Date=20260314T150927Z"),  # another start
        ("fw-eu.s3", "fw-us.s3"),  # another bucket
        ("eu-central-1%2Fs3", "eu-west-1%2Fs3"),  # another region in the scope
    ],
)
def test_verifier_rejects_a_tampered_url(old: str, new: str) -> None:
    url = sign(create(s3_settings(), FIELD), KEY, SIGNED_AT, SIGNED_AT + 900).url
    assert old in url
    with pytest.raises(Rejected, match="signature does not match"):
        verify_presigned(url.replace(old, new), {ACCESS_KEY: SECRET_KEY})


def test_verifier_rejects_a_tampered_signature_and_a_wrong_secret() -> None:
    url = sign(create(s3_settings(), FIELD), KEY, SIGNED_AT, SIGNED_AT + 900).url
    last = url[-1]
    tampered = url[:-1] + ("0" if last != "0" else "1")
    with pytest.raises(Rejected, match="signature does not match"):
        verify_presigned(tampered, {ACCESS_KEY: SECRET_KEY})
    with pytest.raises(Rejected, match="signature does not match"):
        verify_presigned(url, {ACCESS_KEY: SECRET_KEY + "x"})


# --------------------------------------------------------------------------- determinism, lifetime


def test_same_inputs_give_the_same_url_in_every_signer() -> None:
    # Two signers stand for two workers or replicas built from one config.
    first = create(s3_settings(), FIELD)
    second = create(s3_settings(), FIELD)

    a = sign(first, KEY, SIGNED_AT, SIGNED_AT + 900)
    b = sign(second, KEY, SIGNED_AT, SIGNED_AT + 900)
    c = sign(first, KEY, SIGNED_AT + 1, SIGNED_AT + 901)

    assert a == b
    assert c.url != a.url
    assert query(c.url)["X-Amz-Date"] == "20260314T150927Z"


def test_more_than_seven_days_is_refused() -> None:
    signer = create(s3_settings(), FIELD)
    with pytest.raises(ValueError, match="7 days"):
        sign(signer, KEY, SIGNED_AT, SIGNED_AT + 604801)
    assert query(sign(signer, KEY, SIGNED_AT, SIGNED_AT + 604800).url)["X-Amz-Expires"] == "604800"


def _refreshable(expiry: float, refresh: Any, token: str = "session-token") -> Any:
    return botocore.credentials.RefreshableCredentials(
        access_key="ASIATEMPORARY",
        secret_key="temporary-secret",
        token=token,
        expiry_time=datetime.datetime.fromtimestamp(expiry, datetime.UTC),
        refresh_using=refresh,
        method="test",
    )


def _never(*_: Any) -> dict[str, str]:
    raise AssertionError("no refresh expected")


def test_temporary_credentials_cap_the_url_life() -> None:
    now = int(time.time())
    expiry = now + 1200  # 20 min: beyond botocore's 15-min refresh point, so no refresh
    signer = S3Signer(
        prefix=object_url_prefix("fw-eu", "eu-central-1", None, "virtual"),
        region="eu-central-1",
        credentials=AWSCredentials.fixed(_refreshable(expiry, _never)),
    )

    long = sign(signer, KEY, now, now + 3600)
    short = sign(signer, KEY, now, now + 900)

    # The URL says one hour, but it dies with the credentials.
    assert long.expires_at == expiry
    assert query(long.url)["X-Amz-Expires"] == "3600"
    assert query(long.url)["X-Amz-Security-Token"] == "session-token"
    assert short.expires_at == now + 900
    verify_presigned(long.url, {"ASIATEMPORARY": "temporary-secret"}, now=now)


def test_due_credentials_are_refreshed_once_in_a_thread_for_concurrent_signers() -> None:
    now = time.time()
    calls: list[str] = []
    new_expiry = int(now) + 3600

    def refresh() -> dict[str, str]:
        calls.append(threading.current_thread().name)
        time.sleep(0.2)  # a slow STS: every signer below waits for this one call
        return {
            "access_key": "ASIAREFRESHED",
            "secret_key": "refreshed-secret",
            "token": "refreshed-token",
            "expiry_time": datetime.datetime.fromtimestamp(new_expiry, datetime.UTC).isoformat(),
        }

    # 5 minutes left: inside botocore's mandatory refresh window (10 min).
    credentials = AWSCredentials.fixed(_refreshable(now + 300, refresh))
    signer = S3Signer(
        prefix=object_url_prefix("fw-eu", "eu-central-1", None, "path"),
        region="eu-central-1",
        credentials=credentials,
    )

    async def many() -> list[SignedURL]:
        return await asyncio.gather(
            *(signer.sign(KEY, int(now), int(now) + 900 + i) for i in range(5))
        )

    urls = asyncio.run(many())

    assert len(calls) == 1
    assert calls[0] != threading.main_thread().name  # never on the event loop's thread
    for signed in urls:
        params = verify_presigned(signed.url, {"ASIAREFRESHED": "refreshed-secret"})
        assert params["X-Amz-Security-Token"] == "refreshed-token"


def test_failed_refresh_is_a_502_and_is_not_retried_at_once() -> None:
    now = time.time()
    calls: list[float] = []

    def refresh() -> dict[str, str]:
        calls.append(time.monotonic())
        raise RuntimeError("STS is down")

    signer = S3Signer(
        prefix=object_url_prefix("fw-eu", "eu-central-1", None, "path"),
        region="eu-central-1",
        credentials=AWSCredentials.fixed(_refreshable(now + 60, refresh)),
    )

    async def twice() -> tuple[BackendError, BackendError]:
        errors = []
        for _ in range(2):
            with pytest.raises(BackendError) as caught:
                await signer.sign(KEY, int(now), int(now) + 900)
            errors.append(caught.value)
        return errors[0], errors[1]

    first, second = asyncio.run(twice())

    assert first.status == second.status == 502
    assert first.detail == second.detail == "cannot get AWS credentials"
    assert len(calls) == 1  # the second miss did not call STS again


# --------------------------------------------------------------------------- credential sources


def test_no_credentials_anywhere_is_a_502_at_signing_not_a_config_error() -> None:
    signer = create(s3_settings(credentials={}), FIELD)  # the default chain: nothing found
    with pytest.raises(BackendError) as caught:
        sign(signer, KEY, SIGNED_AT, SIGNED_AT + 900)
    assert caught.value.status == 502
    assert caught.value.detail == "no AWS credentials"


def test_default_chain_takes_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "environment-secret")
    signer = create(s3_settings(credentials={}), FIELD)

    url = sign(signer, KEY, SIGNED_AT, SIGNED_AT + 900).url

    verify_presigned(url, {"AKIAFROMENVIRONMENT": "environment-secret"})


def test_profile_from_the_shared_config(empty_aws_environment: Path) -> None:
    empty_aws_environment.parent.mkdir(parents=True)
    empty_aws_environment.write_text(
        "[profile fw-reader]\n"
        "aws_access_key_id = AKIAFROMPROFILE\n"
        "aws_secret_access_key = profile-secret\n"
    )
    signer = create(s3_settings(credentials={"profile": "fw-reader"}), FIELD)

    url = sign(signer, KEY, SIGNED_AT, SIGNED_AT + 900).url

    verify_presigned(url, {"AKIAFROMPROFILE": "profile-secret"})


def _config(backend: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth": {"jwks": "jwks.json", "issuer": "https://i.example", "audience": "a"},
        "access": [{"prefix": "firmware/{product}/"}],
        "regions": {"eu": {"location": [50.1, 8.7], "backend": backend}},
    }


def _problems(backend: dict[str, Any]) -> list[str]:
    settings = parse_settings(_config(backend))
    with pytest.raises(ConfigError) as caught:
        build_signer(settings.regions["eu"].backend, FIELD)
    return caught.value.problems


def test_missing_profile_is_one_config_line_with_the_field_path(
    empty_aws_environment: Path,
) -> None:
    problems = _problems(
        {
            "type": "s3",
            "bucket": "fw-eu",
            "region": "eu-central-1",
            "credentials": {"profile": "nope"},
        }
    )
    assert problems == [
        f"regions.eu.backend.credentials.profile: no AWS profile named 'nope' in "
        f"{empty_aws_environment} and {empty_aws_environment.parent / 'credentials'}"
    ]


def test_half_a_key_pair_in_a_profile_is_a_config_error(empty_aws_environment: Path) -> None:
    empty_aws_environment.parent.mkdir(parents=True)
    empty_aws_environment.write_text("[profile half]\naws_access_key_id = AKIAHALF\n")
    problems = _problems(
        {
            "type": "s3",
            "bucket": "fw-eu",
            "region": "eu-central-1",
            "credentials": {"profile": "half"},
        }
    )
    assert problems == [
        "regions.eu.backend.credentials.profile: profile 'half' gives only one of "
        "aws_access_key_id and aws_secret_access_key"
    ]


def test_impossible_virtual_addressing_is_a_config_error() -> None:
    ip = _problems(
        {
            "type": "s3",
            "bucket": "fw-eu",
            "region": "eu-central-1",
            "endpoint": "http://127.0.0.1:9000",
        }
    )
    dotted = _problems({"type": "s3", "bucket": "fw.eu", "region": "eu-central-1"})
    assert ip == [
        "regions.eu.backend.addressing: virtual needs a DNS name in endpoint, not 127.0.0.1; "
        "use addressing: path"
    ]
    assert dotted == [
        "regions.eu.backend.addressing: virtual-hosted https URLs cannot carry the dotted "
        "bucket name 'fw.eu' (the TLS certificate does not match it); use addressing: path"
    ]
    # Path-style works for both.
    for backend in (
        {"endpoint": "http://127.0.0.1:9000", "addressing": "path"},
        {"bucket": "fw.eu", "addressing": "path"},
    ):
        signer = create(s3_settings(**backend), FIELD)
        verify_presigned(sign(signer, KEY, SIGNED_AT, SIGNED_AT + 60).url, {ACCESS_KEY: SECRET_KEY})


# --------------------------------------------------------------------------- AssumeRole


@dataclass
class FakeSTS:
    """A tiny STS on loopback: answers AssumeRole, records what it was sent."""

    expiration: str = ""
    fail: bool = False

    def __post_init__(self) -> None:
        self.requests: list[tuple[dict[str, str], str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((form, headers.get("authorization", "")))
        if self.fail:
            status, xml = (
                403,
                (
                    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
                    "<Type>Sender</Type><Code>AccessDenied</Code>"
                    "<Message>not authorized to perform sts:AssumeRole</Message></Error>"
                    "<RequestId>r-1</RequestId></ErrorResponse>"
                ),
            )
        else:
            status, xml = (
                200,
                (
                    '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
                    "<AssumeRoleResult><AssumedRoleUser>"
                    f"<Arn>arn:aws:sts::123456789012:assumed-role/fw-reader/{form['RoleSessionName']}</Arn>"
                    "<AssumedRoleId>AROAEXAMPLE:gateway</AssumedRoleId></AssumedRoleUser>"
                    "<Credentials><AccessKeyId>ASIAASSUMEDROLE</AccessKeyId>"
                    "<SecretAccessKey>assumed-secret</SecretAccessKey>"
                    "<SessionToken>assumed+token/=</SessionToken>"
                    f"<Expiration>{self.expiration}</Expiration></Credentials>"
                    "</AssumeRoleResult><ResponseMetadata><RequestId>r-1</RequestId>"
                    "</ResponseMetadata></AssumeRoleResponse>"
                ),
            )
        payload = xml.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/xml"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


ROLE = "arn:aws:iam::123456789012:role/fw-reader"


def _role_settings(**credentials: Any) -> S3Backend:
    return s3_settings(
        credentials={
            "access_key_id": "AKIASOURCEKEY",
            "secret_access_key": "source-secret",
            "role_arn": ROLE,
            "external_id": "org-4711",
            **credentials,
        }
    )


def test_assume_role_sends_the_external_id_and_signs_with_the_temporary_keys() -> None:
    now = int(time.time())
    expiry = now + 1800  # 30 min: the one-hour URLs below must die with these credentials
    sts = FakeSTS(expiration=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry)))
    with serve(sts, lifespan="off") as endpoint:
        signer = create(_role_settings(), FIELD, sts_endpoint=endpoint)

        async def concurrent() -> list[SignedURL]:
            return await asyncio.gather(*(signer.sign(KEY, now, now + 3600) for _ in range(5)))

        urls = asyncio.run(concurrent())

    assert len(sts.requests) == 1  # five concurrent misses, one AssumeRole
    form, authorization = sts.requests[0]
    assert form == {
        "Action": "AssumeRole",
        "Version": "2011-06-15",
        "RoleArn": ROLE,
        "RoleSessionName": "gateway",
        "DurationSeconds": "3600",
        "ExternalId": "org-4711",
    }
    # The call itself is signed with the source keys, for STS in the bucket's region.
    assert "Credential=AKIASOURCEKEY/" in authorization
    assert "/eu-central-1/sts/aws4_request" in authorization
    assert len({signed.url for signed in urls}) == 1
    signed = urls[0]
    params = verify_presigned(signed.url, {"ASIAASSUMEDROLE": "assumed-secret"}, now=now)
    assert params["X-Amz-Security-Token"] == "assumed+token/="
    assert params["X-Amz-Expires"] == "3600"
    assert signed.expires_at == expiry


def test_assume_role_refused_by_sts_is_a_502() -> None:
    sts = FakeSTS(fail=True)
    with serve(sts, lifespan="off") as endpoint:
        signer = create(_role_settings(), FIELD, sts_endpoint=endpoint)
        with pytest.raises(BackendError) as caught:
            sign(signer, KEY, SIGNED_AT, SIGNED_AT + 900)
    assert caught.value.status == 502
    assert caught.value.detail == "cannot get AWS credentials"
    assert [form["ExternalId"] for form, _ in sts.requests] == ["org-4711"]


def test_assume_role_without_source_credentials_is_a_502() -> None:
    sts = FakeSTS(expiration="2030-01-01T00:00:00Z")
    with serve(sts, lifespan="off") as endpoint:
        signer = create(
            s3_settings(credentials={"role_arn": ROLE, "external_id": "org-4711"}),
            FIELD,
            sts_endpoint=endpoint,
        )
        with pytest.raises(BackendError) as caught:
            sign(signer, KEY, SIGNED_AT, SIGNED_AT + 900)
    assert caught.value.detail == "no AWS credentials"
    assert sts.requests == []


# --------------------------------------------------------------------------- s3rver

BUCKET = "firmware-eu"
OBJECTS = {
    KEY: b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(10_000)),
    ODD_KEY: b"odd but valid key\n",
}


@dataclass
class S3rver:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, url: str) -> httpx.Response:
        """GET ``url`` at this server, whatever host name the URL carries (kept as Host)."""
        netloc = urlsplit(url).netloc
        return httpx.get(
            url.replace(netloc, f"127.0.0.1:{self.port}", 1), headers={"Host": netloc}, timeout=10
        )


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3rver]:
    program = require_program("s3rver")
    port = free_port()
    workdir = tmp_path_factory.mktemp("s3rver")
    log = (workdir / "s3rver.log").open("wb")
    # --service-endpoint localhost: Host names "<bucket>.s3.localhost" are virtual-hosted.
    proc = subprocess.Popen(
        [
            program, "--directory", str(workdir / "data"), "--address", "127.0.0.1",
            "--port", str(port), "--silent", "--configure-bucket", BUCKET,
            "--service-endpoint", "localhost",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, 30, proc)
        client = botocore.session.get_session().create_client(
            "s3",
            region_name="eu-central-1",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="S3RVER",
            aws_secret_access_key="S3RVER",
            # Plain bodies: s3rver does not understand aws-chunked checksum trailers.
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        try:
            for key, data in OBJECTS.items():
                client.put_object(Bucket=BUCKET, Key=key, Body=data)
        finally:
            client.close()
        yield S3rver(port)
    finally:
        stop_process(proc, timeout=10)
        log.close()


def _s3rver_backend(server: S3rver, **overrides: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "type": "s3",
        "bucket": BUCKET,
        "region": "eu-central-1",
        "endpoint": server.endpoint,
        "addressing": "path",
        "credentials": {"access_key_id": "S3RVER", "secret_access_key": "S3RVER"},
    }
    backend.update(overrides)
    return backend


def test_gateway_redirect_downloads_from_s3rver(s3rver: S3rver, tmp_path: Path) -> None:
    regions = {"eu": {"location": [50.1, 8.7], "backend": _s3rver_backend(s3rver)}}
    with running_gateway(tmp_path, regions) as gateway:
        for key, data in OBJECTS.items():
            redirect = gateway.get(key)
            assert redirect.status_code == 307
            location = redirect.headers["location"]
            assert location.startswith(f"{s3rver.endpoint}/{BUCKET}/firmware/acme-x1/")
            assert "X-Amz-Signature=" in location
            # The same URL again within the window (deterministic, cached).
            assert gateway.get(key).headers["location"] == location
            download = httpx.get(location, timeout=10)
            assert download.status_code == 200
            assert download.content == data
            verify_presigned(location, {"S3RVER": "S3RVER"}, now=int(time.time()))


def test_gateway_without_aws_credentials_answers_502(s3rver: S3rver, tmp_path: Path) -> None:
    backend = _s3rver_backend(s3rver, credentials={})
    with running_gateway(tmp_path, {"eu": {"location": [50.1, 8.7], "backend": backend}}) as gw:
        before = gw.metric("gateway_signing_errors_total", backend="s3")
        response = gw.get(KEY)
        after = gw.metric("gateway_signing_errors_total", backend="s3")
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "no AWS credentials"
    assert (before, after) == (0, 1)  # the series exists from the start


def test_virtual_hosted_url_downloads_from_s3rver(s3rver: S3rver) -> None:
    signer = create(
        S3Backend.model_validate(
            _s3rver_backend(
                s3rver, endpoint=f"http://s3.localhost:{s3rver.port}", addressing="virtual"
            )
        ),
        FIELD,
    )
    now = int(time.time())

    url = sign(signer, ODD_KEY, now, now + 900).url

    assert url.startswith(f"http://{BUCKET}.s3.localhost:{s3rver.port}/firmware/acme-x1/")
    response = s3rver.get(url)
    assert response.status_code == 200
    assert response.content == OBJECTS[ODD_KEY]


def test_s3rver_refuses_an_expired_url_and_an_unknown_access_key(s3rver: S3rver) -> None:
    now = int(time.time())
    signer = create(S3Backend.model_validate(_s3rver_backend(s3rver)), FIELD)
    expired = sign(signer, KEY, now - 3600, now - 1800).url
    unknown = create(
        S3Backend.model_validate(
            _s3rver_backend(
                s3rver, credentials={"access_key_id": "AKIAUNKNOWN", "secret_access_key": "x"}
            )
        ),
        FIELD,
    )
    stranger = sign(unknown, KEY, now, now + 900).url

    response = s3rver.get(expired)
    assert response.status_code == 403
    assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in response.text
    response = s3rver.get(stranger)
    assert response.status_code == 403
    assert "<Code>InvalidAccessKeyId</Code>" in response.text
    # The control: the same signer, a live window.
    assert s3rver.get(sign(signer, KEY, now, now + 900).url).content == OBJECTS[KEY]
