"""The ``gcs`` backend: Google Cloud Storage V4 signed URLs (``GOOG4-RSA-SHA256``).

Format (Google Cloud docs, "V4 signing process with your own program",
"Canonical requests" and "Signatures")::

    {endpoint}/{bucket}/{object}?X-Goog-Algorithm=GOOG4-RSA-SHA256
        &X-Goog-Credential={client_email}%2F{YYYYMMDD}%2Fauto%2Fstorage%2Fgoog4_request
        &X-Goog-Date={YYYYMMDDThhmmssZ}&X-Goog-Expires={seconds}
        &X-Goog-SignedHeaders=host&X-Goog-Signature={hex}

Path-style URLs on ``endpoint`` (default ``https://storage.googleapis.com``),
only the ``host`` header signed, ``X-Goog-Date`` is ``signed_at`` and
``X-Goog-Expires`` is ``expires_at - signed_at`` (at most 604800, seven days).
The signature is RSASSA-PKCS1-v1_5 with SHA-256 by the service account's
private key, hex-encoded; the key comes from the service account's JSON key
file, read and checked once in :func:`create`.

The bytes are those of ``google-cloud-storage``'s
``Blob.generate_signed_url(version="v4")`` for the same inputs (the tests
check it).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from gateway.errors import BackendError, ConfigError
from gateway.signers import SignedURL

if TYPE_CHECKING:
    from gateway.settings import GCSBackend

ALGORITHM = "GOOG4-RSA-SHA256"
# "Signatures" / X-Goog-Expires: a V4 signed URL lives at most seven days.
MAX_EXPIRES = 604_800
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What signing needs from a service-account JSON key file."""

    client_email: str
    private_key: rsa.RSAPrivateKey


def load_service_account(path: str, field: str) -> ServiceAccount:
    """Read and check a service-account JSON key file.

    Raises :class:`ConfigError` with one ``{field}: why`` line per problem: an
    unreadable file, invalid JSON, a missing or empty ``client_email`` or
    ``private_key``, a key that is not a PEM RSA private key.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError([f"{field}: cannot read {path}: {exc.strerror}"]) from None
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError([f"{field}: {path} is not valid JSON{where}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{field}: {path} is not a JSON object (a service-account key file)"])
    problems: list[str] = []
    kind = data.get("type", "service_account")
    if kind != "service_account":
        problems.append(f"{field}: {path} has type {kind!r}; give a service-account JSON key")
    email = data.get("client_email")
    if not isinstance(email, str) or "@" not in email:
        problems.append(f"{field}.client_email: missing or not an email address in {path}")
    pem = data.get("private_key")
    key: rsa.RSAPrivateKey | None = None
    if not isinstance(pem, str) or not pem.strip():
        problems.append(f"{field}.private_key: missing in {path}")
    else:
        try:
            loaded = serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            problems.append(f"{field}.private_key: not an unencrypted PEM private key in {path}")
        else:
            if not isinstance(loaded, rsa.RSAPrivateKey):
                problems.append(
                    f"{field}.private_key: GOOG4-RSA-SHA256 needs an RSA key, "
                    f"found {_key_kind(loaded)} in {path}"
                )
            elif loaded.key_size < 2048:
                problems.append(
                    f"{field}.private_key: RSA key of {loaded.key_size} bits in {path}; "
                    "at least 2048 are needed"
                )
            else:
                key = loaded
    if problems or key is None or not isinstance(email, str):
        raise ConfigError(problems)
    return ServiceAccount(client_email=email, private_key=key)


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key ({key.curve.name})"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return "an EdDSA key"
    if isinstance(key, dsa.DSAPrivateKey):
        return "a DSA key"
    return "another key type"


def _endpoint(value: str, field: str) -> tuple[str, str]:
    """(base URL, host header value) of an endpoint that is a scheme and host only."""
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            [f"{field}.endpoint: give the scheme and host only (path-style URLs add /bucket/key)"]
        )
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal keeps its brackets in URLs and Host
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise ConfigError([f"{field}.endpoint: invalid port"]) from None
    # A client sends Host without the scheme's default port and with the host
    # in lower case, so the signed host header must look the same.
    netloc = host if port is None or port == _DEFAULT_PORTS[parts.scheme] else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}", netloc


def create(settings: GCSBackend, field: str) -> GCSSigner:
    """The signer for a ``gcs`` backend's settings; ConfigError for an unusable key file."""
    problems: list[str] = []
    try:
        account = load_service_account(settings.service_account, f"{field}.service_account")
    except ConfigError as exc:
        problems += exc.problems
    try:
        base, host = _endpoint(settings.endpoint, field)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return GCSSigner(
        bucket=settings.bucket,
        client_email=account.client_email,
        private_key=account.private_key,
        endpoint=base,
        host=host,
    )


def _quote(value: str) -> str:
    # "Canonical requests": query names and values are percent-encoded, every
    # byte except the RFC 3986 unreserved characters A-Z a-z 0-9 - . _ ~
    return quote(value, safe="~")


class GCSSigner:
    """Signs V4 URLs for objects in one bucket with one service account's key.

    ``sign`` is a pure function of its arguments. Rotating the key is a new
    JSON key file for the same (or another) service account and a config
    reload; URLs signed with the old key verify until it is deleted in IAM.
    """

    kind = "gcs"

    def __init__(
        self,
        *,
        bucket: str,
        client_email: str,
        private_key: rsa.RSAPrivateKey,
        endpoint: str = DEFAULT_ENDPOINT,
        host: str | None = None,
    ) -> None:
        self._bucket = bucket
        self._email = client_email
        self._key = private_key
        self._endpoint = endpoint.rstrip("/")
        self._host = host if host is not None else urlsplit(self._endpoint).netloc

    def signed_query(self, resource: str, signed_at: int, expires: int) -> str:
        """The query string (no ``?``) that signs a GET of ``resource`` (``/bucket/object``)."""
        timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
        scope = f"{timestamp[:8]}/auto/storage/goog4_request"
        params = {
            "X-Goog-Algorithm": ALGORITHM,
            "X-Goog-Credential": f"{self._email}/{scope}",
            "X-Goog-Date": timestamp,
            "X-Goog-Expires": str(expires),
            "X-Goog-SignedHeaders": "host",
        }
        # Canonical query string: encoded name=value pairs sorted by name.
        query = "&".join(sorted(f"{_quote(k)}={_quote(v)}" for k, v in params.items()))
        # Canonical request ("Canonical requests", Structure): verb, path,
        # query, the canonical headers each followed by a newline (hence the
        # empty line), the signed header names, and the payload, which a
        # signed URL leaves unsigned.
        canonical_request = "\n".join(
            ["GET", resource, query, f"host:{self._host}\n", "host", "UNSIGNED-PAYLOAD"]
        )
        # String to sign ("Signatures"): algorithm, request timestamp,
        # credential scope, hex SHA-256 of the canonical request.
        string_to_sign = "\n".join(
            [
                ALGORITHM,
                timestamp,
                scope,
                hashlib.sha256(canonical_request.encode("ascii")).hexdigest(),
            ]
        )
        signature = self._key.sign(
            string_to_sign.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{query}&X-Goog-Signature={binascii.hexlify(signature).decode('ascii')}"

    async def sign(self, key: str, signed_at: int, expires_at: int) -> SignedURL:
        expires = expires_at - signed_at
        if not 1 <= expires <= MAX_EXPIRES:
            # The config check keeps signing.ttl within seven days; this keeps
            # a URL that Cloud Storage would refuse from ever being issued.
            raise BackendError(f"a GCS signed URL lives 1 to {MAX_EXPIRES} s, not {expires} s")
        # Resource path: the object name percent-encoded except "/" and the
        # unreserved characters, after the bucket (path-style).
        resource = f"/{self._bucket}/{quote(key, safe='/~')}"
        query = self.signed_query(resource, signed_at, expires)
        return SignedURL(f"{self._endpoint}{resource}?{query}", expires_at)

    async def aclose(self) -> None:
        return None
